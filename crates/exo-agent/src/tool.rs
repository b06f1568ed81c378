//! Tools the embedding program compiles in, and the registry that names
//! them.

use std::{collections::BTreeMap, fmt, future::Future, pin::Pin, sync::Arc};

use async_trait::async_trait;
use exo_proto::ToolOutput;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// What a tool gets besides its arguments.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ToolContext {
    /// The agent that called the tool.
    pub agent_name: String,
    /// The model's id for this call.
    pub tool_call_id: String,
    /// Fires when the run is cancelled, times out or ends. The tool's
    /// future is dropped when the run is cancelled or times out, so a tool
    /// only needs this for work it runs outside its own future (a spawned
    /// task, a blocking thread).
    pub cancel: CancellationToken,
    /// The same for every run of this call, whichever attempt or worker
    /// runs it (`<task id>/<scope>/<model call>/<call id>`): pass it to an
    /// external system that deduplicates (an `Idempotency-Key` header, say)
    /// to cover what the step journal cannot (a worker killed after the
    /// tool's side effect and before its result was recorded).
    pub idempotency_key: String,
}

/// A tool the model can call.
///
/// `call` gets the arguments object (with the agent's injected arguments
/// already removed) and returns text or content blocks, or an error text.
/// An error is not a failure of the run: it goes back to the model as the
/// tool's result, marked as an error. A panic inside `call` is caught and
/// fails the run (see the crate docs). Tools must not block the thread;
/// use async I/O or `tokio::task::spawn_blocking`.
#[async_trait]
pub trait Tool: Send + Sync + fmt::Debug {
    /// The name the model calls it by.
    fn name(&self) -> &str;

    /// What it does, for the model.
    fn description(&self) -> &str;

    /// The JSON schema of its arguments object.
    fn parameters(&self) -> Value;

    /// Runs the tool.
    async fn call(
        &self,
        arguments: Map<String, Value>,
        context: &ToolContext,
    ) -> Result<ToolOutput, String>;
}

/// The future an [`FnTool`] returns.
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<ToolOutput, String>> + Send>>;

type ToolFn = dyn Fn(Map<String, Value>, ToolContext) -> ToolFuture + Send + Sync;

/// A tool made from a closure, for programs that do not want a type per
/// tool.
///
/// ```
/// use exo_agent::{FnTool, ToolRegistry};
/// use exo_proto::ToolOutput;
/// use serde_json::json;
///
/// let mut registry = ToolRegistry::new();
/// registry.register(FnTool::new(
///     "add",
///     "Adds two numbers.",
///     json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
///     |arguments, _context| {
///         Box::pin(async move {
///             let number = |key: &str| arguments.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
///             Ok(ToolOutput::Text((number("a") + number("b")).to_string()))
///         })
///     },
/// ));
/// assert!(registry.get("add").is_some());
/// ```
pub struct FnTool {
    name: String,
    description: String,
    parameters: Value,
    function: Box<ToolFn>,
}

impl FnTool {
    /// A tool named `name` that runs `function`.
    pub fn new<F>(name: &str, description: &str, parameters: Value, function: F) -> Self
    where
        F: Fn(Map<String, Value>, ToolContext) -> ToolFuture + Send + Sync + 'static,
    {
        FnTool {
            name: name.to_owned(),
            description: description.to_owned(),
            parameters,
            function: Box::new(function),
        }
    }
}

impl fmt::Debug for FnTool {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("FnTool")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Tool for FnTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        self.parameters.clone()
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        (self.function)(arguments, context.clone()).await
    }
}

/// The tools a worker offers, by name.
///
/// An agent's `tools` entry is looked up in this order: a tool registered
/// under exactly that name (e.g. the reference's import path
/// `app.tools.get_weather`, via [`ToolRegistry::register_as`]), an alias
/// with that name, then the entry's last `.` segment (`get_weather`) as a
/// name or alias. The model always sees the last segment as the tool's
/// name.
#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
    aliases: BTreeMap<String, String>,
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        ToolRegistry::default()
    }

    /// A registry with the demo and test tools of [`crate::builtin`].
    pub fn with_builtins() -> Self {
        let mut registry = ToolRegistry::new();
        crate::builtin::register_all(&mut registry);
        registry
    }

    /// Registers `tool` under its own name.
    pub fn register(&mut self, tool: impl Tool + 'static) -> &mut Self {
        let tool: Arc<dyn Tool> = Arc::new(tool);
        self.tools.insert(tool.name().to_owned(), tool);
        self
    }

    /// Registers `tool` under `name`, e.g. a full import path such as
    /// `app.tools.get_weather`.
    pub fn register_as(&mut self, name: &str, tool: impl Tool + 'static) -> &mut Self {
        self.tools.insert(name.to_owned(), Arc::new(tool));
        self
    }

    /// Registers an already shared tool under `name`.
    pub fn register_shared(&mut self, name: &str, tool: Arc<dyn Tool>) -> &mut Self {
        self.tools.insert(name.to_owned(), tool);
        self
    }

    /// Makes `alias` another name for the tool registered as `target`.
    pub fn alias(&mut self, alias: &str, target: &str) -> &mut Self {
        self.aliases.insert(alias.to_owned(), target.to_owned());
        self
    }

    /// The tool an agent's `tools` entry names (see the type docs for the
    /// lookup order).
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        let direct = |name: &str| {
            self.tools.get(name).cloned().or_else(|| {
                self.aliases
                    .get(name)
                    .and_then(|target| self.tools.get(target).cloned())
            })
        };
        direct(name).or_else(|| {
            let last = name.rsplit('.').next().unwrap_or(name);
            if last == name { None } else { direct(last) }
        })
    }

    /// Every registered name and alias, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tools
            .keys()
            .chain(self.aliases.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{Echo, GetWeather};

    fn check(registry: &ToolRegistry, name: &str, expected: Option<&str>) {
        let found = registry.get(name).map(|tool| tool.name().to_owned());
        assert_eq!(found.as_deref(), expected, "lookup of `{name}`");
    }

    #[test]
    fn lookup_by_full_name_alias_and_last_segment() {
        let mut registry = ToolRegistry::new();
        registry.register(GetWeather);
        registry.register_as("app.tools.shout", Echo);
        registry.alias("fixtools.tools.weather_now", "get_weather");
        check(&registry, "get_weather", Some("get_weather"));
        check(&registry, "fixtools.tools.get_weather", Some("get_weather"));
        check(&registry, "app.tools.shout", Some("echo"));
        check(&registry, "shout", None);
        check(&registry, "fixtools.tools.weather_now", Some("get_weather"));
        check(&registry, "other.weather_now", None);
        check(&registry, "missing", None);
        assert_eq!(
            registry.names(),
            [
                "app.tools.shout",
                "fixtools.tools.weather_now",
                "get_weather"
            ]
        );
    }
}
