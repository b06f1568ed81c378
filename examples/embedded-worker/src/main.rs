//! Embeds an exo worker with a custom Rust tool, submits one task whose
//! agent calls that tool, waits for the result, and stops the worker.
//!
//! ```text
//! EXO_REDIS_URL=redis://127.0.0.1:6379 cargo run
//! ```
//!
//! The agent's model is the scripted provider (no API key needed): its first
//! turn calls `word_count`, its second answers. Replace the model with
//! `openai:gpt-4o-mini` (and set `OPENAI_API_KEY`) for a real one.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use exo_agent::{FnTool, ToolRegistry};
use exo_broker::{Broker, BrokerConfig};
use exo_proto::{Keys, TaskPayload, TaskStatus, ToolOutput};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url =
        std::env::var("EXO_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // A key prefix of its own, so the example never meets other tasks.
    let prefix = format!("embedded-{}:", std::process::id());
    let keys = Keys::with_prefix(prefix);

    // The custom tool: counts words, and counts its own calls.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut tools = ToolRegistry::new();
    tools.register(FnTool::new(
        "word_count",
        "Counts the words of a text.",
        json!({
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        }),
        move |arguments, _context| {
            let counted = counted.clone();
            Box::pin(async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let text = arguments.get("text").and_then(Value::as_str).unwrap_or("");
                Ok(ToolOutput::Text(text.split_whitespace().count().to_string()))
            })
        },
    ));

    let worker = exo_worker::Worker::builder(redis_url.clone())
        .keys(keys.clone())
        .concurrency(2)
        .tools(tools)
        .build()?;
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    // A client submits a task whose agent calls the tool.
    let broker = Broker::connect(BrokerConfig::new(redis_url).with_keys(keys)).await?;
    let script = json!({"turns": [
        {"tool_calls": [{
            "id": "call_1",
            "name": "word_count",
            "arguments": ["{\"text\": \"exo runs agents on Redis\"}"],
        }]},
        {"text": ["That text has five words."]},
    ]});
    let agent = json!({
        "name": "counter",
        "model": format!("scripted:{script}"),
        "tools": ["word_count"],
    });
    let Value::Object(agent) = agent else {
        unreachable!("a JSON object")
    };
    let task_id = format!("{:032x}", std::process::id());
    let payload = TaskPayload::new(task_id, agent, "How many words?");
    let handle = broker.client().submit(payload).await?;
    let result = handle.result().await?;

    shutdown.shutdown();
    running.await??;

    let output = result.output().unwrap_or_default().to_owned();
    println!(
        "task {} {}: {output:?} (word_count called {} time(s))",
        result.task_id,
        result.status,
        calls.load(Ordering::SeqCst)
    );
    if result.status != TaskStatus::Completed || calls.load(Ordering::SeqCst) != 1 {
        return Err(format!("the task did not run the tool as expected: {result:?}").into());
    }
    Ok(())
}
