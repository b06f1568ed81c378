//! The one error type of this crate.

/// Why a run could not be set up, or an MCP server could not be used.
///
/// Errors while a run is going (a model failure, a tool failure) do not
/// surface as this type: they become events and a failed
/// [`crate::RunOutcome`], or tool error results fed back to the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tool name in the agent's `tools` that no registered tool answers to.
    #[error(
        "agent `{agent}`: tool `{tool}` is not registered with this worker (registered: {registered})"
    )]
    ToolNotRegistered {
        /// The agent.
        agent: String,
        /// The name as configured, e.g. `app.tools.get_weather`.
        tool: String,
        /// The names this worker knows, comma separated.
        registered: String,
    },
    /// An MCP tool on a worker built without the `mcp` feature.
    #[error(
        "agent `{agent}`: tool `{tool}` is an MCP tool, but this worker was built without the `mcp` feature"
    )]
    McpDisabled {
        /// The agent.
        agent: String,
        /// The tool's name.
        tool: String,
    },
    /// An MCP server the worker's [`crate::McpPolicy`] does not allow.
    #[error("agent `{agent}`: MCP tool `{tool}` (server `{server}`) is refused: {reason}")]
    McpRefused {
        /// The agent.
        agent: String,
        /// The tool's name.
        tool: String,
        /// The server's name.
        server: String,
        /// Why, e.g. the command is not in the allowlist.
        reason: String,
    },
    /// Connecting to or talking to an MCP server failed.
    #[error("MCP server `{server}`: {message}")]
    Mcp {
        /// The server's name.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// The provider for an agent's model could not be built.
    #[error("agent `{agent}`: model `{model}`: {source}")]
    Model {
        /// The agent.
        agent: String,
        /// The model string.
        model: String,
        /// The provider's error.
        source: exo_models::Error,
    },
    /// An agent or swarm config that cannot run.
    #[error("{0}")]
    InvalidConfig(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
