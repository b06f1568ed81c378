//! What the gateway is told: where to listen, who may call it, which named
//! agents it offers.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde_json::{Map, Value};

use crate::{
    auth::TokenSpec,
    error::{Error, Result},
};

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Bearer tokens. Without any, the gateway serves loopback only.
    pub tokens: Vec<TokenSpec>,
    /// Origins allowed by CORS (`*` for any); none by default.
    pub cors_origins: Vec<String>,
    /// Agent configurations a submission can name with `agent`.
    pub agents: BTreeMap<String, Map<String, Value>>,
    /// Connections that follow event streams (each serves any number of
    /// clients).
    pub stream_readers: usize,
    /// How long a request other than an event stream may take.
    pub request_timeout: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long one event stream stays open at most; the client resumes
    /// with `Last-Event-ID` after that.
    pub max_stream: Duration,
    /// The interval of keep-alive comments on event streams.
    pub keep_alive: Duration,
    /// The interval of the queue samples behind `/v1/queue/history`.
    pub sample_interval: Duration,
}

impl GatewayConfig {
    /// The defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        GatewayConfig {
            addr,
            tokens: Vec::new(),
            cors_origins: Vec::new(),
            agents: BTreeMap::new(),
            stream_readers: 4,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            max_stream: Duration::from_secs(3600),
            keep_alive: Duration::from_secs(15),
            sample_interval: Duration::from_secs(10),
        }
    }

    /// Refuses settings that would expose the gateway without auth.
    pub fn validate(&self) -> Result<()> {
        if self.tokens.is_empty() && !self.addr.ip().is_loopback() {
            return Err(Error::Config(format!(
                "refusing to serve {} without tokens: anyone who can reach it could submit and cancel tasks; \
                 give tokens (--tokens-file or EXO_GATEWAY_TOKENS) or listen on a loopback address",
                self.addr
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for token in &self.tokens {
            if token.token.len() < 16 {
                return Err(Error::Config(format!(
                    "token `{}` is shorter than 16 characters",
                    token.name
                )));
            }
            if !seen.insert(token.token.as_str()) {
                return Err(Error::Config(format!(
                    "token `{}` repeats another token's secret",
                    token.name
                )));
            }
            if token.scopes.is_empty() {
                return Err(Error::Config(format!(
                    "token `{}` has no scopes",
                    token.name
                )));
            }
        }
        if self.stream_readers == 0 {
            return Err(Error::Config(
                "stream readers must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}
