//! Which MCP servers a worker lets a task use.
//!
//! A task payload comes from whoever can write to the queue, and an MCP
//! tool object in it names a command to launch or a URL to call. The
//! embedding program therefore decides, through an [`McpPolicy`], which
//! commands may be launched and whether HTTP servers may be called. The
//! default policy allows nothing.

use exo_proto::McpServerConfig;

/// The commands a worker may launch for stdio MCP servers, and whether it
/// may call MCP servers over HTTP.
///
/// A command is allowed when it equals an entry exactly: `npx` allows the
/// payload command `npx` (found on `PATH`), but not `/tmp/x/npx`; the entry
/// `/usr/bin/uvx` allows exactly that path. The entry `*` allows every
/// command. Arguments are not checked, so allowing a launcher such as
/// `npx` or `uvx` allows every package it can run; prefer allowing the
/// server binaries themselves.
///
/// Launched servers do not inherit the worker's environment (which holds
/// API keys): they get `HOME`, `LOGNAME`, `PATH`, `SHELL`, `TERM` and `USER`
/// from it, plus the `env` of their config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpPolicy {
    /// Commands that may be launched (exact match, or `*` for any).
    pub commands: Vec<String>,
    /// Whether MCP servers may be called over streamable HTTP.
    pub http: bool,
}

impl McpPolicy {
    /// A policy that allows no MCP server at all.
    pub fn deny_all() -> Self {
        McpPolicy::default()
    }

    /// The same policy, also allowing `command`.
    pub fn allow_command(mut self, command: impl Into<String>) -> Self {
        self.commands.push(command.into());
        self
    }

    /// The same policy, allowing or refusing HTTP servers.
    pub fn allow_http(mut self, allowed: bool) -> Self {
        self.http = allowed;
        self
    }

    /// Checks that a server may be used; the error says why not.
    pub fn check(&self, server: &McpServerConfig) -> Result<(), String> {
        match transport(server) {
            Transport::Stdio => {
                let command = server
                    .command
                    .as_deref()
                    .filter(|command| !command.trim().is_empty())
                    .ok_or("its stdio config has no `command`")?;
                if self
                    .commands
                    .iter()
                    .any(|allowed| allowed == "*" || allowed == command)
                {
                    Ok(())
                } else {
                    Err(format!(
                        "the command `{command}` is not in this worker's MCP command allowlist ({})",
                        if self.commands.is_empty() {
                            "which is empty".to_owned()
                        } else {
                            format!("allowed: {}", self.commands.join(", "))
                        }
                    ))
                }
            }
            Transport::Http => {
                let url = server
                    .url
                    .as_deref()
                    .filter(|url| !url.trim().is_empty())
                    .ok_or("its HTTP config has no `url`")?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("`{url}` is not an http(s) URL"));
                }
                if self.http {
                    Ok(())
                } else {
                    Err(format!(
                        "this worker does not allow MCP servers over HTTP (url `{url}`)"
                    ))
                }
            }
            Transport::Sse => {
                Err("the legacy `sse` transport is not supported; use `streamable_http`".to_owned())
            }
            Transport::Unknown(other) => Err(format!(
                "unknown MCP transport `{other}` (expected stdio or streamable_http)"
            )),
        }
    }
}

pub(crate) enum Transport<'a> {
    Stdio,
    Http,
    Sse,
    Unknown(&'a str),
}

pub(crate) fn transport(server: &McpServerConfig) -> Transport<'_> {
    match server.transport.as_str() {
        "stdio" | "" => Transport::Stdio,
        "streamable_http" | "streamable-http" | "http" => Transport::Http,
        "sse" => Transport::Sse,
        other => Transport::Unknown(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(transport: &str, command: Option<&str>, url: Option<&str>) -> McpServerConfig {
        let mut value = serde_json::json!({"transport": transport});
        if let Some(command) = command {
            value["command"] = command.into();
        }
        if let Some(url) = url {
            value["url"] = url.into();
        }
        serde_json::from_value(value).unwrap()
    }

    fn check(policy: &McpPolicy, config: McpServerConfig, expected: Result<(), &str>) {
        assert_eq!(policy.check(&config), expected.map_err(str::to_owned));
    }

    #[test]
    fn commands_match_exactly_and_http_is_opt_in() {
        let policy = McpPolicy::deny_all()
            .allow_command("mcp-server-time")
            .allow_command("/opt/mcp/fs");
        check(
            &policy,
            server("stdio", Some("mcp-server-time"), None),
            Ok(()),
        );
        check(&policy, server("stdio", Some("/opt/mcp/fs"), None), Ok(()));
        check(
            &policy,
            server("stdio", Some("/tmp/mcp-server-time"), None),
            Err(
                "the command `/tmp/mcp-server-time` is not in this worker's MCP command allowlist (allowed: mcp-server-time, /opt/mcp/fs)",
            ),
        );
        check(
            &McpPolicy::deny_all(),
            server("stdio", Some("sh"), None),
            Err("the command `sh` is not in this worker's MCP command allowlist (which is empty)"),
        );
        check(
            &McpPolicy::deny_all().allow_command("*"),
            server("stdio", Some("sh"), None),
            Ok(()),
        );
        check(
            &policy,
            server("stdio", None, None),
            Err("its stdio config has no `command`"),
        );
        check(
            &policy,
            server("streamable_http", None, Some("http://127.0.0.1:1/mcp")),
            Err("this worker does not allow MCP servers over HTTP (url `http://127.0.0.1:1/mcp`)"),
        );
        check(
            &policy.clone().allow_http(true),
            server("streamable_http", None, Some("http://127.0.0.1:1/mcp")),
            Ok(()),
        );
        check(
            &policy.clone().allow_http(true),
            server("streamable_http", None, Some("file:///etc/passwd")),
            Err("`file:///etc/passwd` is not an http(s) URL"),
        );
        check(
            &policy,
            server("sse", None, Some("http://x/sse")),
            Err("the legacy `sse` transport is not supported; use `streamable_http`"),
        );
        check(
            &policy,
            server("websocket", None, None),
            Err("unknown MCP transport `websocket` (expected stdio or streamable_http)"),
        );
    }
}
