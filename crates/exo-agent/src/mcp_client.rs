//! MCP tools over stdio and streamable HTTP, through the official `rmcp`
//! SDK. One session per server per run: a server is connected at its first
//! tool call, shared by every later call of the run (all agents of a swarm
//! included), and closed when the run ends, whatever the outcome.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use async_trait::async_trait;
use exo_proto::{McpProgressEvent, McpServerConfig, McpToolSpec, StreamEvent, ToolOutput};
use futures::StreamExt;
use rmcp::{
    ClientHandler, Peer, RoleClient, ServiceExt,
    handler::client::progress::ProgressDispatcher,
    model::{
        CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, Request,
        ServerResult,
    },
    service::{NotificationContext, PeerRequestOptions, RunningService},
    transport::{
        StreamableHttpClientTransport, TokioChildProcess,
        streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Map, Value};
use tokio::{io::AsyncBufReadExt, sync::OnceCell};

use crate::{
    mcp::{Transport, transport},
    runner::RunContext,
    tool::{Tool, ToolContext},
};

/// The `_meta` key of a tool call's idempotency key.
pub(crate) const IDEMPOTENCY_META_KEY: &str = "exo/idempotency_key";

/// How long connecting and the MCP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing a session may take before it is abandoned (the child
/// process is killed either way).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The variables a launched server inherits from the worker.
const INHERITED_ENV: &[&str] = &["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

/// The client side of a session: forwards progress notifications to the
/// call that asked for them.
#[derive(Debug, Clone, Default)]
struct Handler {
    progress: ProgressDispatcher,
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.handle_notification(params).await;
    }
}

struct Session {
    peer: Peer<RoleClient>,
    progress: ProgressDispatcher,
    service: StdMutex<Option<RunningService<RoleClient, Handler>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Session").finish_non_exhaustive()
    }
}

type Slot = Arc<OnceCell<Result<Arc<Session>, String>>>;

/// The MCP sessions of one run.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    servers: tokio::sync::Mutex<HashMap<String, Slot>>,
}

/// A key that tells servers apart even when two configs share a name.
fn server_key(name: &str, config: &McpServerConfig) -> String {
    format!(
        "{name}\u{0}{}",
        serde_json::to_string(config).unwrap_or_default()
    )
}

impl Sessions {
    async fn session(&self, name: &str, config: &McpServerConfig) -> Result<Arc<Session>, String> {
        let slot = {
            let mut servers = self.servers.lock().await;
            Arc::clone(servers.entry(server_key(name, config)).or_default())
        };
        slot.get_or_init(|| async {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect(name, config)).await {
                Ok(result) => result.map(Arc::new),
                Err(_) => Err(format!(
                    "MCP server `{name}` did not finish its handshake within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )),
            }
        })
        .await
        .clone()
    }

    /// Calls `tool` on the server, connecting first if needed, and forwards
    /// its progress notifications as `mcp_progress` events when `progress`
    /// names the agent and tool to report them for.
    pub(crate) async fn call(
        &self,
        ctx: &RunContext,
        spec: &McpToolSpec,
        arguments: Map<String, Value>,
        progress: Option<&str>,
        idempotency_key: &str,
    ) -> Result<ToolOutput, String> {
        let server = if spec.server_name.is_empty() {
            "mcp"
        } else {
            spec.server_name.as_str()
        };
        let session = self.session(server, &spec.server_config).await?;
        let mut params = CallToolRequestParams::new(spec.server_tool_name().to_owned())
            .with_arguments(arguments);
        // The same key for every run of this call, whichever attempt makes
        // it: a server with side effects can deduplicate on it.
        let mut meta = Map::new();
        meta.insert(
            IDEMPOTENCY_META_KEY.to_owned(),
            Value::String(idempotency_key.to_owned()),
        );
        params.meta = Some(meta.into());
        let options = match spec.server_config.timeout {
            Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
                // A config's `timeout: 1e300` is capped, not a panic.
                PeerRequestOptions::with_timeout(
                    Duration::try_from_secs_f64(seconds)
                        .unwrap_or(MAX_CALL_TIMEOUT)
                        .min(MAX_CALL_TIMEOUT),
                )
            }
            _ => PeerRequestOptions::no_options(),
        };
        let handle = session
            .peer
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(params)),
                options,
            )
            .await
            .map_err(|error| format!("MCP server `{server}`: {error}"))?;
        let mut updates = session
            .progress
            .subscribe(handle.progress_token.clone())
            .await;
        let response = handle.await_response();
        tokio::pin!(response);
        let response = loop {
            tokio::select! {
                response = &mut response => break response,
                Some(update) = updates.next() => {
                    if let Some(agent_name) = progress {
                        ctx.emitter
                            .event(StreamEvent::McpProgress(McpProgressEvent {
                                tool_name: spec.name.clone(),
                                progress: update.progress,
                                total: update.total,
                                message: update.message.unwrap_or_default(),
                                agent_name: agent_name.to_owned(),
                            }))
                            .await;
                    }
                }
            }
        };
        match response {
            Ok(ServerResult::CallToolResult(result)) => tool_output(result),
            Ok(_) => Err(format!(
                "MCP server `{server}` answered tools/call with something other than a tool result"
            )),
            Err(error) => Err(format!("MCP server `{server}`: {error}")),
        }
    }

    /// Closes every session that was opened.
    pub(crate) async fn close_all(&self) {
        let slots: Vec<Slot> = self
            .servers
            .lock()
            .await
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            let Some(Ok(session)) = slot.get() else {
                continue;
            };
            let service = session
                .service
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(mut service) = service {
                match service.close_with_timeout(CLOSE_TIMEOUT).await {
                    Ok(Some(_)) => {}
                    Ok(None) => tracing::warn!("an MCP session did not close in time; dropping it"),
                    Err(error) => tracing::warn!(%error, "closing an MCP session failed"),
                }
            }
        }
    }
}

/// The tool's result as text (when every block is text) or content blocks;
/// a result marked as an error becomes a tool error.
fn tool_output(result: CallToolResult) -> Result<ToolOutput, String> {
    let texts: Option<Vec<String>> = result
        .content
        .iter()
        .map(|block| block.as_text().map(|text| text.text.clone()))
        .collect();
    let output = match texts {
        Some(texts) if !texts.is_empty() => ToolOutput::Text(texts.join("\n")),
        _ if result.content.is_empty() => ToolOutput::Text(
            result
                .structured_content
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
        ),
        _ => ToolOutput::Blocks(
            result
                .content
                .iter()
                .filter_map(|block| serde_json::to_value(block).ok())
                .collect(),
        ),
    };
    if result.is_error == Some(true) {
        return Err(match output {
            ToolOutput::Text(text) if !text.is_empty() => text,
            ToolOutput::Text(_) => "the MCP tool reported an error".to_owned(),
            ToolOutput::Blocks(blocks) => Value::Array(blocks).to_string(),
        });
    }
    Ok(output)
}

/// The longest an MCP tool call may be given.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

async fn connect(name: &str, config: &McpServerConfig) -> Result<Session, String> {
    let handler = Handler::default();
    let progress = handler.progress.clone();
    let service = match transport(config) {
        Transport::Stdio => {
            let program = config.command.clone().unwrap_or_default();
            let mut command = tokio::process::Command::new(&program);
            command.args(&config.args).env_clear();
            for variable in INHERITED_ENV {
                if let Ok(value) = std::env::var(variable) {
                    command.env(variable, value);
                }
            }
            command.envs(&config.env);
            if let Some(cwd) = config.cwd.as_deref().filter(|cwd| !cwd.is_empty()) {
                command.current_dir(cwd);
            }
            let (child, stderr) = TokioChildProcess::builder(command)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|error| {
                    format!("could not start MCP server `{name}` (`{program}`): {error}")
                })?;
            if let Some(stderr) = stderr {
                let server = name.to_owned();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(server = %server, "{line}");
                    }
                });
            }
            handler
                .serve(child)
                .await
                .map_err(|error| format!("MCP server `{name}` failed its handshake: {error}"))?
        }
        Transport::Http => {
            let url = config.url.clone().unwrap_or_default();
            let mut headers = HashMap::new();
            for (header, value) in &config.headers {
                let header = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|error| format!("MCP server `{name}`: header `{header}`: {error}"))?;
                let value = reqwest::header::HeaderValue::from_str(value)
                    .map_err(|error| format!("MCP server `{name}`: header `{header}`: {error}"))?;
                headers.insert(header, value);
            }
            let transport = StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(headers),
            );
            handler.serve(transport).await.map_err(|error| {
                format!("MCP server `{name}` at {url} failed its handshake: {error}")
            })?
        }
        Transport::Sse | Transport::Unknown(_) => {
            return Err(format!(
                "MCP server `{name}`: transport `{}` is not supported",
                config.transport
            ));
        }
    };
    Ok(Session {
        peer: service.peer().clone(),
        progress,
        service: StdMutex::new(Some(service)),
    })
}

/// An MCP tool as the model sees it: name, description and schema come
/// from the task's tool object; calls go to its server.
#[derive(Debug)]
pub(crate) struct McpTool {
    pub(crate) spec: McpToolSpec,
    pub(crate) ctx: Arc<RunContext>,
    pub(crate) emit_progress: bool,
}

#[async_trait]
impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn description(&self) -> &str {
        &self.spec.description
    }

    fn parameters(&self) -> Value {
        self.spec.parameters.clone()
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        let progress = self.emit_progress.then_some(context.agent_name.as_str());
        self.ctx
            .sessions
            .call(
                &self.ctx,
                &self.spec,
                arguments,
                progress,
                &context.idempotency_key,
            )
            .await
    }
}
