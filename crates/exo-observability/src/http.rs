//! A small HTTP/1.1 endpoint for the worker: `/metrics`, `/healthz` and
//! `/readyz`.
//!
//! It answers `GET` and `HEAD` only, one request per connection
//! (`Connection: close`), which is all that Prometheus and Kubernetes probes
//! need. Each connection runs in its own task with a deadline for reading
//! the request and one for writing the answer, so a client that connects and
//! stays silent holds one of a bounded number of slots for a few seconds and
//! delays nobody else.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinHandle,
};

use crate::{
    error::{Error, Result},
    prometheus::{MetricsHandle, PROMETHEUS_CONTENT_TYPE},
};

/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing an answer may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed straight away.
pub const MAX_CONNECTIONS: usize = 128;
/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// What `/readyz` reports: the worker is ready when it is connected to Redis
/// and not draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The Redis connection is up.
    pub redis_connected: bool,
    /// The worker is shutting down and takes no new tasks.
    pub draining: bool,
}

impl Readiness {
    /// Connected and not draining.
    pub fn ready() -> Self {
        Readiness {
            redis_connected: true,
            draining: false,
        }
    }

    /// Why the worker is not ready, or `None` when it is.
    pub fn reason(&self) -> Option<&'static str> {
        match (self.redis_connected, self.draining) {
            (true, false) => None,
            (_, true) => Some("draining"),
            (false, false) => Some("not connected to Redis"),
        }
    }
}

/// The callback `/readyz` asks on every request.
pub type ReadinessCheck = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// The running endpoint. Dropping it, or calling [`HttpServer::shutdown`],
/// stops accepting connections; requests in flight still get their answer.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(self) {
        let HttpServer { stop, task, .. } = self;
        drop(stop);
        // The loop only ends by returning; a panic there has nothing to
        // report beyond what the panic hook printed.
        let _ = task.await;
    }
}

/// Listens on `addr` and serves `/metrics` from `metrics` (404 when `None`),
/// `/healthz` (always 200 `ok`) and `/readyz` (200, or 503 with the reason
/// from `readiness`). Must run inside a tokio runtime.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Option<MetricsHandle>,
    readiness: ReadinessCheck,
) -> Result<HttpServer> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let (stop, stopped) = watch::channel(());
    let routes = Arc::new(Routes { metrics, readiness });
    let task = tokio::spawn(accept_loop(listener, routes, stopped));
    tracing::info!(%local_addr, "serving /metrics, /healthz and /readyz");
    Ok(HttpServer {
        local_addr,
        stop,
        task,
    })
}

struct Routes {
    metrics: Option<MetricsHandle>,
    readiness: ReadinessCheck,
}

async fn accept_loop(listener: TcpListener, routes: Arc<Routes>, mut stopped: watch::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!(%peer, "too many connections; closing this one");
                    continue;
                };
                let routes = Arc::clone(&routes);
                tokio::spawn(async move {
                    if let Err(error) = serve_connection(stream, &routes).await {
                        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Err(error) => {
                // Usually out of file descriptors; back off instead of
                // spinning.
                tracing::warn!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_elapsed) => Response::text(408, "Request Timeout", "request timeout\n"),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        Ok(Ok(Head::Complete(head))) => routes.answer(&head),
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response.into_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "writing the response"))?
}

enum Head {
    Complete(String),
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(if buffer.is_empty() {
                Head::Closed
            } else {
                // A head cut short; answer what is there, which is a 400
                // unless the request line is complete.
                Head::Complete(String::from_utf8_lossy(&buffer).into_owned())
            });
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = find_head_end(&buffer) {
            return Ok(Head::Complete(
                String::from_utf8_lossy(&buffer[..end]).into_owned(),
            ));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .or_else(|| buffer.windows(2).position(|window| window == b"\n\n"))
}

impl Routes {
    fn answer(&self, head: &str) -> Response {
        let request_line = head.lines().next().unwrap_or_default();
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Response::text(400, "Bad Request", "malformed request line\n");
        };
        if !version.starts_with("HTTP/1.") {
            return Response::text(505, "HTTP Version Not Supported", "use HTTP/1.1\n");
        }
        let path = target.split(['?', '#']).next().unwrap_or_default();
        let response = match path {
            "/metrics" | "/healthz" | "/readyz" if !matches!(method, "GET" | "HEAD") => {
                Response::text(405, "Method Not Allowed", "method not allowed\n")
                    .with_header("Allow", "GET, HEAD")
            }
            "/metrics" => match &self.metrics {
                Some(metrics) => Response {
                    content_type: PROMETHEUS_CONTENT_TYPE,
                    ..Response::text(200, "OK", metrics.render())
                },
                None => Response::text(404, "Not Found", "metrics are not enabled\n"),
            },
            "/healthz" => Response::text(200, "OK", "ok\n"),
            "/readyz" => match (self.readiness)().reason() {
                None => Response::text(200, "OK", "ready\n"),
                Some(reason) => {
                    Response::text(503, "Service Unavailable", format!("not ready: {reason}\n"))
                }
            },
            _ => Response::text(404, "Not Found", "not found\n"),
        };
        if method == "HEAD" {
            response.without_body()
        } else {
            response
        }
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: Vec::new(),
            body: body.into().into_bytes(),
            head_only: false,
        }
    }

    fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.extra_headers.push((name, value));
        self
    }

    /// The answer to `HEAD`: the same headers, including the length the body
    /// would have, and no body.
    fn without_body(mut self) -> Self {
        self.head_only = true;
        self
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra_headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}
