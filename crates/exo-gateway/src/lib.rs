//! The exo gateway: an HTTP API over the broker, with resumable event
//! streams and a live dashboard, for `exo serve`.
//!
//! - `POST /v1/tasks`, `GET /v1/tasks`, `GET /v1/tasks/{id}`,
//!   `POST /v1/tasks/{id}/cancel`, `GET /v1/tasks/{id}/wait`;
//! - `GET /v1/tasks/{id}/events`: Server-Sent Events whose ids are Redis
//!   stream ids, so `Last-Event-ID` resumes without loss or repetition;
//!   every stream is served by a few multiplexed connections
//!   ([`exo_broker::Follower`]), not one connection per client;
//! - the fleet, the queue and its history, dead letters and redrive, alerts;
//! - the OpenAPI document at `/v1/openapi.json`, generated from the
//!   handlers; the dashboard at `/`.
//!
//! Errors are `application/problem+json`. Bearer tokens carry scopes and an
//! optional tenant ([`auth`]); without tokens the gateway refuses to listen
//! on anything but loopback.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = exo_broker::Broker::connect(exo_broker::BrokerConfig::new("redis://localhost:6379")).await?;
//! let config = exo_gateway::GatewayConfig::new("127.0.0.1:8080".parse()?);
//! let gateway = exo_gateway::Gateway::bind(broker, config).await?;
//! println!("listening on http://{}", gateway.local_addr());
//! gateway.serve(std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{Json, Router, routing::get};
use exo_broker::Broker;
use tokio::net::TcpListener;

mod api;
pub mod auth;
mod config;
mod dashboard;
mod error;
mod history;

pub use api::fleet::alert_snapshot;
pub use auth::{Caller, Scope, TokenSpec, parse_tokens};
pub use config::GatewayConfig;
pub use error::{Error, Problem, Result};
pub use history::Sample;

/// A gateway bound to its address, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    sampler: tokio::task::JoinHandle<()>,
    local_addr: SocketAddr,
}

impl Gateway {
    /// Checks the configuration, starts the event readers and the queue
    /// sampler, and binds the address.
    pub async fn bind(broker: Broker, config: GatewayConfig) -> Result<Self> {
        config.validate()?;
        let follower = broker.follower(config.stream_readers).await?;
        let history = history::History::default();
        let sampler = tokio::spawn(history.clone().run(broker.clone(), config.sample_interval));
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Io {
                context: format!("listening on {}", config.addr),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the bound address".to_owned(),
            source,
        })?;
        let cors = api::cors(&config.cors_origins);
        let state = api::AppState {
            broker,
            follower,
            config: Arc::new(config),
            history,
        };
        let (api, openapi) = api::api(state);
        let openapi = Arc::new(openapi);
        let mut router = Router::new()
            .merge(api)
            .route(
                "/v1/openapi.json",
                get(move || {
                    let openapi = openapi.clone();
                    async move { Json(openapi.as_ref().clone()) }
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .merge(dashboard::routes());
        if let Some(cors) = cors {
            router = router.layer(cors);
        }
        Ok(Gateway {
            listener,
            router,
            sampler,
            local_addr,
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then lets open requests finish
    /// (event streams end at once).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let result = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        self.sampler.abort();
        result.map_err(|source| Error::Io {
            context: "serving HTTP".to_owned(),
            source,
        })
    }
}
