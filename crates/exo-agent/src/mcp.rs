//! Which MCP servers a worker lets a task use.
//!
//! A task payload comes from whoever can write to the queue, and an MCP
//! tool object in it names a command to launch or a URL to call. The
//! embedding program therefore decides, through an [`McpPolicy`], which
//! commands may be launched and whether HTTP servers may be called. The
//! default policy allows nothing.

use exo_proto::McpServerConfig;

/// What a worker lets a payload launch or call as an MCP server.
///
/// **Commands** are whole launch specs: a payload's `command` and `args`
/// must equal an allowed entry's program and arguments exactly, so allowing
/// `npx -y @modelcontextprotocol/server-time` does not allow
/// `npx -y attacker-package` or `node -e ...`. An entry that ends with the
/// token `...` allows any further arguments after its fixed ones (an
/// explicit choice: `uvx ...` allows every package uvx can fetch). The entry
/// `*` allows every command with every argument; it makes whoever can write
/// to the queue able to run code on the worker.
///
/// **Environment.** Launched servers do not inherit the worker's
/// environment (which holds API keys): they get `HOME`, `LOGNAME`, `PATH`,
/// `SHELL`, `TERM` and `USER` from it, plus those variables of their
/// config's `env` whose names are allowed ([`McpPolicy::allow_env`]).
/// Variables that change what a program loads or which program runs
/// (`PATH`, `LD_*`, `DYLD_*`, `NODE_OPTIONS`, `PYTHON*`, ...) are refused
/// whatever the allowlist says. A config's `cwd` must be an allowed
/// directory.
///
/// **HTTP** servers are allowed by host (`mcp.example.com`, any port) or
/// host and port (`127.0.0.1:8080`); `*` allows every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpPolicy {
    /// Launch specs that may be run.
    pub commands: Vec<McpCommand>,
    /// Names of environment variables a config may set.
    pub env: Vec<String>,
    /// Working directories a config may choose.
    pub cwd: Vec<String>,
    /// Hosts (`host` or `host:port`, or `*`) that may be called over HTTP.
    pub http_hosts: Vec<String>,
}

/// One allowed launch: a program and its fixed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCommand {
    /// The program, as the payload names it (a name found on the worker's
    /// `PATH`, or a path); `*` for any.
    pub program: String,
    /// The arguments that must follow it.
    pub args: Vec<String>,
    /// True when any further arguments may follow.
    pub more_args: bool,
}

impl McpCommand {
    /// Parses a command line: words split on whitespace; a last word `...`
    /// allows further arguments; `*` alone allows anything.
    pub fn parse(line: &str) -> Self {
        let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let more_args = words.last().is_some_and(|word| word == "...");
        if more_args {
            words.pop();
        }
        let program = if words.is_empty() {
            String::new()
        } else {
            words.remove(0)
        };
        McpCommand {
            more_args: more_args || program == "*",
            program,
            args: words,
        }
    }

    fn allows(&self, program: &str, args: &[String]) -> bool {
        if self.program == "*" {
            return true;
        }
        if self.program != program || args.len() < self.args.len() {
            return false;
        }
        if !self.more_args && args.len() != self.args.len() {
            return false;
        }
        self.args
            .iter()
            .zip(args)
            .all(|(allowed, given)| allowed == given)
    }
}

impl std::fmt::Display for McpCommand {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.program)?;
        for arg in &self.args {
            write!(formatter, " {arg}")?;
        }
        if self.more_args && self.program != "*" {
            write!(formatter, " ...")?;
        }
        Ok(())
    }
}

/// Environment variables no payload may set for a launched server: they
/// choose which program runs or what it loads.
fn loader_variable(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYOPT",
        "RUBYLIB",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "PS4",
        "GCONV_PATH",
        "HOSTALIASES",
        "GIT_EXEC_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "CLASSPATH",
        "GEM_PATH",
        "GEM_HOME",
        "NPM_CONFIG_PREFIX",
        "UV_INDEX_URL",
        "PIP_INDEX_URL",
    ];
    let upper = name.to_ascii_uppercase();
    EXACT.contains(&upper.as_str())
        || ["LD_", "DYLD_", "PYTHON", "NODE_", "NPM_CONFIG_"]
            .iter()
            .any(|prefix| upper.starts_with(prefix))
}

impl McpPolicy {
    /// A policy that allows no MCP server at all.
    pub fn deny_all() -> Self {
        McpPolicy::default()
    }

    /// The same policy, also allowing this command line: words split on
    /// whitespace; a last word `...` allows further arguments; `*` alone
    /// allows anything.
    pub fn allow_command(mut self, line: impl AsRef<str>) -> Self {
        self.commands.push(McpCommand::parse(line.as_ref()));
        self
    }

    /// The same policy, also allowing `program` with exactly these
    /// arguments (for paths with spaces).
    pub fn allow_launch(mut self, program: impl Into<String>, args: &[&str]) -> Self {
        self.commands.push(McpCommand {
            program: program.into(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            more_args: false,
        });
        self
    }

    /// The same policy, letting configs set the variable `name` (loader
    /// variables stay refused).
    pub fn allow_env(mut self, name: impl Into<String>) -> Self {
        self.env.push(name.into());
        self
    }

    /// The same policy, letting configs run servers in `directory`.
    pub fn allow_cwd(mut self, directory: impl Into<String>) -> Self {
        self.cwd.push(directory.into());
        self
    }

    /// The same policy, also allowing HTTP servers on `host` (any port) or
    /// `host:port`; `*` allows every host.
    pub fn allow_http_host(mut self, host: impl Into<String>) -> Self {
        self.http_hosts.push(host.into());
        self
    }

    /// Checks that a server may be used; the error says why not.
    pub fn check(&self, server: &McpServerConfig) -> Result<(), String> {
        match transport(server) {
            Transport::Stdio => self.check_command(server),
            Transport::Http => self.check_http(server),
            Transport::Sse => {
                Err("the legacy `sse` transport is not supported; use `streamable_http`".to_owned())
            }
            Transport::Unknown(other) => Err(format!(
                "unknown MCP transport `{other}` (expected stdio or streamable_http)"
            )),
        }
    }

    fn check_command(&self, server: &McpServerConfig) -> Result<(), String> {
        let command = server
            .command
            .as_deref()
            .filter(|command| !command.trim().is_empty())
            .ok_or("its stdio config has no `command`")?;
        if !self
            .commands
            .iter()
            .any(|allowed| allowed.allows(command, &server.args))
        {
            let given = McpCommand {
                program: command.to_owned(),
                args: server.args.clone(),
                more_args: false,
            };
            return Err(format!(
                "the command `{given}` is not in this worker's MCP command allowlist ({})",
                if self.commands.is_empty() {
                    "which is empty".to_owned()
                } else {
                    let allowed: Vec<String> =
                        self.commands.iter().map(ToString::to_string).collect();
                    format!("allowed: {}", allowed.join(", "))
                }
            ));
        }
        for name in server.env.keys() {
            if loader_variable(name) {
                return Err(format!(
                    "its config sets `{name}`, which chooses what the server loads or runs; no payload may set it"
                ));
            }
            if !self.env.iter().any(|allowed| allowed == name) {
                return Err(format!(
                    "its config sets `{name}`, which this worker does not let payloads set"
                ));
            }
        }
        if let Some(cwd) = server.cwd.as_deref().filter(|cwd| !cwd.is_empty())
            && !self.cwd.iter().any(|allowed| allowed == cwd)
        {
            return Err(format!(
                "its config runs it in `{cwd}`, which is not an allowed working directory"
            ));
        }
        Ok(())
    }

    fn check_http(&self, server: &McpServerConfig) -> Result<(), String> {
        let url = server
            .url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .ok_or("its HTTP config has no `url`")?;
        let parsed =
            url::Url::parse(url).map_err(|error| format!("`{url}` is not a URL: {error}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http(s) URL"));
        }
        let host = parsed.host_str().unwrap_or_default();
        let port = parsed.port_or_known_default().unwrap_or(0);
        let host_port = format!("{host}:{port}");
        if self
            .http_hosts
            .iter()
            .any(|allowed| allowed == "*" || allowed == host || *allowed == host_port)
        {
            Ok(())
        } else if self.http_hosts.is_empty() {
            Err(format!(
                "this worker does not allow MCP servers over HTTP (url `{url}`)"
            ))
        } else {
            Err(format!(
                "the host `{host_port}` of `{url}` is not in this worker's MCP HTTP allowlist (allowed: {})",
                self.http_hosts.join(", ")
            ))
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
            let mut words = command.split_whitespace();
            value["command"] = words.next().unwrap_or_default().into();
            value["args"] = words.collect::<Vec<_>>().into();
        }
        if let Some(url) = url {
            value["url"] = url.into();
        }
        serde_json::from_value(value).unwrap()
    }

    fn with(mut config: McpServerConfig, env: &[&str], cwd: Option<&str>) -> McpServerConfig {
        for name in env {
            config.env.insert((*name).to_owned(), "x".to_owned());
        }
        config.cwd = cwd.map(str::to_owned);
        config
    }

    fn check(policy: &McpPolicy, config: McpServerConfig, expected: Result<(), &str>) {
        assert_eq!(policy.check(&config), expected.map_err(str::to_owned));
    }

    #[test]
    fn whole_command_lines_are_allowed_never_just_programs() {
        let policy = McpPolicy::deny_all()
            .allow_command("mcp-server-time")
            .allow_command("npx -y @modelcontextprotocol/server-time")
            .allow_command("/opt/mcp/fs --root /data ...");
        let cases: &[(&str, Result<(), &str>)] = &[
            ("mcp-server-time", Ok(())),
            ("npx -y @modelcontextprotocol/server-time", Ok(())),
            ("/opt/mcp/fs --root /data", Ok(())),
            ("/opt/mcp/fs --root /data --read-only", Ok(())),
            (
                "mcp-server-time --evil",
                Err(
                    "the command `mcp-server-time --evil` is not in this worker's MCP command allowlist (allowed: mcp-server-time, npx -y @modelcontextprotocol/server-time, /opt/mcp/fs --root /data ...)",
                ),
            ),
            (
                "npx -y attacker-package",
                Err(
                    "the command `npx -y attacker-package` is not in this worker's MCP command allowlist (allowed: mcp-server-time, npx -y @modelcontextprotocol/server-time, /opt/mcp/fs --root /data ...)",
                ),
            ),
            (
                "/opt/mcp/fs --root /",
                Err(
                    "the command `/opt/mcp/fs --root /` is not in this worker's MCP command allowlist (allowed: mcp-server-time, npx -y @modelcontextprotocol/server-time, /opt/mcp/fs --root /data ...)",
                ),
            ),
            (
                "/tmp/mcp-server-time",
                Err(
                    "the command `/tmp/mcp-server-time` is not in this worker's MCP command allowlist (allowed: mcp-server-time, npx -y @modelcontextprotocol/server-time, /opt/mcp/fs --root /data ...)",
                ),
            ),
        ];
        for (command, expected) in cases {
            check(&policy, server("stdio", Some(command), None), *expected);
        }
        check(
            &McpPolicy::deny_all(),
            server("stdio", Some("sh"), None),
            Err("the command `sh` is not in this worker's MCP command allowlist (which is empty)"),
        );
        check(
            &McpPolicy::deny_all().allow_command("*"),
            server("stdio", Some("sh -c id"), None),
            Ok(()),
        );
        check(
            &policy,
            server("stdio", None, None),
            Err("its stdio config has no `command`"),
        );
    }

    #[test]
    fn environment_and_working_directory_are_the_operators() {
        let policy = McpPolicy::deny_all()
            .allow_command("mcp-server-time")
            .allow_env("TZ")
            .allow_env("PATH")
            .allow_cwd("/srv/mcp");
        let base = || server("stdio", Some("mcp-server-time"), None);
        check(&policy, with(base(), &["TZ"], Some("/srv/mcp")), Ok(()));
        check(
            &policy,
            with(base(), &["HOME2"], None),
            Err("its config sets `HOME2`, which this worker does not let payloads set"),
        );
        for loader in [
            "PATH",
            "LD_PRELOAD",
            "NODE_OPTIONS",
            "PYTHONPATH",
            "DYLD_INSERT_LIBRARIES",
            "BASH_ENV",
        ] {
            let error = policy.check(&with(base(), &[loader], None)).unwrap_err();
            assert!(error.contains("no payload may set it"), "{loader}: {error}");
        }
        check(
            &policy,
            with(base(), &[], Some("/")),
            Err("its config runs it in `/`, which is not an allowed working directory"),
        );
    }

    #[test]
    fn http_servers_are_allowed_by_host() {
        let policy = McpPolicy::deny_all()
            .allow_http_host("mcp.example.com")
            .allow_http_host("127.0.0.1:8080");
        let http = |url: &str| server("streamable_http", None, Some(url));
        check(&policy, http("https://mcp.example.com/mcp"), Ok(()));
        check(&policy, http("http://mcp.example.com:9000/mcp"), Ok(()));
        check(&policy, http("http://127.0.0.1:8080/mcp"), Ok(()));
        check(
            &policy,
            http("http://127.0.0.1:8081/mcp"),
            Err(
                "the host `127.0.0.1:8081` of `http://127.0.0.1:8081/mcp` is not in this worker's MCP HTTP allowlist (allowed: mcp.example.com, 127.0.0.1:8080)",
            ),
        );
        check(
            &policy,
            http("http://mcp.example.com@169.254.169.254/latest"),
            Err(
                "the host `169.254.169.254:80` of `http://mcp.example.com@169.254.169.254/latest` is not in this worker's MCP HTTP allowlist (allowed: mcp.example.com, 127.0.0.1:8080)",
            ),
        );
        check(
            &McpPolicy::deny_all(),
            http("http://127.0.0.1:1/mcp"),
            Err("this worker does not allow MCP servers over HTTP (url `http://127.0.0.1:1/mcp`)"),
        );
        check(
            &McpPolicy::deny_all().allow_http_host("*"),
            http("file:///etc/passwd"),
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
