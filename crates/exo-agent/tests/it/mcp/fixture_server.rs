//! A tiny MCP server over stdio, built on the `rmcp` server side. The MCP
//! tests launch their own test binary, filtered to the entry point that
//! calls [`serve`], as a real child process speaking MCP on stdin/stdout.
//!
//! Tools:
//!
//! | tool | arguments | result |
//! |---|---|---|
//! | `add` | `a`, `b` (numbers) | their sum as text |
//! | `count` | `n` | sends `n` progress notifications, then `counted to {n}` |
//! | `env` | `name` | the value of that environment variable, or `<unset>` |
//! | `pid` | none | the server's process id |
//! | `fail` | none | a tool result marked as an error: `it broke` |
//! | `sleep` | `ms` | sleeps, then `slept` |
//! | `header` | `name` | the value of that HTTP request header (over HTTP), or `<unset>` |
//!
//! [`serve`] speaks MCP on stdin/stdout; [`serve_http`] serves streamable
//! HTTP on a free loopback port.

use std::{sync::Arc, time::Duration};

use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
        PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
    },
    service::RequestContext,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fixture;

fn tool(name: &'static str, description: &'static str, properties: Value) -> Tool {
    let schema = json!({"type": "object", "properties": properties});
    let Value::Object(schema) = schema else {
        unreachable!("built as an object above")
    };
    Tool::new(name, description, Arc::new(schema))
}

fn number(arguments: &Map<String, Value>, key: &str) -> f64 {
    arguments.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![
            tool(
                "add",
                "Adds two numbers.",
                json!({"a": {"type": "number"}, "b": {"type": "number"}}),
            ),
            tool(
                "count",
                "Counts to n, reporting progress.",
                json!({"n": {"type": "integer"}}),
            ),
            tool(
                "env",
                "Reads an environment variable.",
                json!({"name": {"type": "string"}}),
            ),
            tool("pid", "The server's process id.", json!({})),
            tool("fail", "Always fails.", json!({})),
            tool(
                "sleep",
                "Sleeps for ms milliseconds.",
                json!({"ms": {"type": "integer"}}),
            ),
            tool(
                "header",
                "Reads an HTTP request header.",
                json!({"name": {"type": "string"}}),
            ),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = request.arguments.clone().unwrap_or_default();
        let text =
            |text: String| Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into());
        match request.name.as_ref() {
            "add" => text((number(&arguments, "a") + number(&arguments, "b")).to_string()),
            "count" => {
                let n = number(&arguments, "n") as u32;
                if let Some(token) = context.meta.get_progress_token() {
                    for step in 1..=n {
                        let _ = context
                            .peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), f64::from(step))
                                    .with_total(f64::from(n))
                                    .with_message(format!("step {step}")),
                            )
                            .await;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                text(format!("counted to {n}"))
            }
            "env" => {
                let name = arguments
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                text(std::env::var(name).unwrap_or_else(|_| "<unset>".to_owned()))
            }
            "pid" => text(std::process::id().to_string()),
            "fail" => Ok(CallToolResult::error(vec![ContentBlock::text("it broke")]).into()),
            "sleep" => {
                tokio::time::sleep(Duration::from_millis(number(&arguments, "ms") as u64)).await;
                text("slept".to_owned())
            }
            "header" => {
                let name = arguments
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let value = context
                    .extensions
                    .get::<hyper::http::request::Parts>()
                    .and_then(|parts| parts.headers.get(name))
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("<unset>");
                text(value.to_owned())
            }
            other => Err(ErrorData::invalid_params(
                format!("no tool named {other}"),
                None,
            )),
        }
    }
}

/// Serves MCP on stdin/stdout until the client goes away.
pub(crate) async fn serve() {
    let server = Fixture
        .serve(rmcp::transport::stdio())
        .await
        .expect("the MCP handshake succeeds");
    let _ = server.waiting().await;
}

/// Serves MCP over streamable HTTP on a free loopback port until the
/// returned token fires; returns the endpoint URL.
pub(crate) async fn serve_http() -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("the listener's address");
    let service = Arc::new(StreamableHttpService::new(
        || Ok(Fixture),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    ));
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => break,
                },
                () = stopped.cancelled() => break,
            };
            let service = Arc::clone(&service);
            tokio::spawn(async move {
                let handler = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let service = Arc::clone(&service);
                        async move { Ok::<_, std::convert::Infallible>(service.handle(request).await) }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    (format!("http://{address}/mcp"), stop)
}
