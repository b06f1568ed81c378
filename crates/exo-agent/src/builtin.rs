//! Demo and test tools: deterministic, no network.
//!
//! | name | arguments | does |
//! |---|---|---|
//! | `get_weather` | `city` | returns `sunny in {city}` (the reference fixture's tool) |
//! | `sleep` | `seconds` | sleeps, then returns `slept {seconds}s`; stops at once on cancel or deadline |
//! | `echo` | `text` | returns `text` |
//! | `panic` | `message` (optional) | panics, which fails the run (see the crate docs) |
//! | `fail` | `message` (optional) | returns an error result to the model |

use std::time::Duration;

use async_trait::async_trait;
use exo_proto::ToolOutput;
use serde_json::{Map, Value, json};

use crate::tool::{Tool, ToolContext, ToolRegistry};

/// Registers every tool of this module under its own name.
pub fn register_all(registry: &mut ToolRegistry) {
    registry
        .register(GetWeather)
        .register(Sleep)
        .register(Echo)
        .register(Panic)
        .register(Fail);
}

fn string_argument<'a>(arguments: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    arguments.get(key).and_then(Value::as_str)
}

/// `get_weather(city)`: always sunny.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetWeather;

#[async_trait]
impl Tool for GetWeather {
    fn name(&self) -> &str {
        "get_weather"
    }

    fn description(&self) -> &str {
        "Get the current weather of a city."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city."}},
            "required": ["city"],
        })
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        _context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        let city = string_argument(&arguments, "city")
            .ok_or("get_weather needs a string argument `city`")?;
        Ok(ToolOutput::Text(format!("sunny in {city}")))
    }
}

/// `sleep(seconds)`: waits, cancellably.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

#[async_trait]
impl Tool for Sleep {
    fn name(&self) -> &str {
        "sleep"
    }

    fn description(&self) -> &str {
        "Sleep for a number of seconds."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"seconds": {"type": "number", "description": "How long to sleep."}},
            "required": ["seconds"],
        })
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        let seconds = arguments
            .get("seconds")
            .and_then(Value::as_f64)
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            .ok_or("sleep needs a non-negative number `seconds`")?;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs_f64(seconds.min(86_400.0))) => {
                Ok(ToolOutput::Text(format!("slept {seconds}s")))
            }
            () = context.cancel.cancelled() => Err("sleep was cancelled".to_owned()),
        }
    }
}

/// `echo(text)`: returns its argument.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

#[async_trait]
impl Tool for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn description(&self) -> &str {
        "Return the given text unchanged."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"text": {"type": "string", "description": "The text to return."}},
            "required": ["text"],
        })
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        _context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        Ok(ToolOutput::Text(
            string_argument(&arguments, "text")
                .unwrap_or_default()
                .to_owned(),
        ))
    }
}

/// `panic(message)`: panics, to prove that a panicking tool fails its run
/// and not the worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Panic;

#[async_trait]
impl Tool for Panic {
    fn name(&self) -> &str {
        "panic"
    }

    fn description(&self) -> &str {
        "Panic (for testing failure handling)."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"message": {"type": "string", "description": "The panic message."}},
        })
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        _context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        let message = string_argument(&arguments, "message").unwrap_or("the panic tool panicked");
        panic!("{message}");
    }
}

/// `fail(message)`: returns an error result.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fail;

#[async_trait]
impl Tool for Fail {
    fn name(&self) -> &str {
        "fail"
    }

    fn description(&self) -> &str {
        "Fail with an error (for testing tool errors)."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"message": {"type": "string", "description": "The error message."}},
        })
    }

    async fn call(
        &self,
        arguments: Map<String, Value>,
        _context: &ToolContext,
    ) -> Result<ToolOutput, String> {
        Err(string_argument(&arguments, "message")
            .unwrap_or("the fail tool failed")
            .to_owned())
    }
}
