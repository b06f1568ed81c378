//! The scripted provider, chosen by model string as a worker started from
//! the command line chooses it: each case plays a few model calls of one
//! run and compares a summary of every chunk with the expected one.

use std::time::{Duration, Instant};

use exo_models::{
    Completion, ModelProvider, ModelRequest, Script, ScriptedProvider, StreamChunk, Turn,
    resolve_provider,
};
use exo_proto::{Message, Usage};
use futures::StreamExt;

fn describe(chunk: &StreamChunk) -> String {
    let mut parts = Vec::new();
    if !chunk.text.is_empty() {
        parts.push(format!("text={:?}", chunk.text));
    }
    if let Some(reasoning) = &chunk.reasoning {
        parts.push(format!("reasoning={reasoning:?}"));
    }
    for call in &chunk.tool_calls {
        parts.push(format!(
            "call[{}] {:?} {:?} {:?}",
            call.index, call.id, call.name, call.arguments
        ));
    }
    if let Some(reason) = &chunk.finish_reason {
        parts.push(format!("finish={}", reason.as_str()));
    }
    if let Some(usage) = &chunk.usage {
        parts.push(format!(
            "usage={}/{}/{}",
            usage.input_tokens, usage.output_tokens, usage.total_tokens
        ));
    }
    parts.join(" ")
}

/// Plays `calls` model calls of one run against `provider` and returns
/// one line per chunk, prefixed with the call number.
async fn play(provider: &dyn ModelProvider, input: &str, calls: usize) -> String {
    let mut messages = vec![Message::system("Be brief."), Message::user(input)];
    let mut lines = Vec::new();
    for call in 1..=calls {
        let mut completion = Completion::default();
        let mut stream = provider
            .stream(&ModelRequest::new(messages.clone()))
            .await
            .unwrap();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    lines.push(format!("{call}: {}", describe(&chunk)));
                    completion.push(&chunk);
                }
                Err(error) => {
                    lines.push(format!("{call}: error {}: {error}", error.error_type()));
                    break;
                }
            }
        }
        let tool_calls = completion.tool_calls();
        messages.push(Message::assistant(completion.text, tool_calls.clone()));
        for tool_call in tool_calls {
            messages.push(Message::Tool {
                tool_call_id: tool_call.id,
                tool_name: tool_call.name,
                content: "ok".into(),
                error: None,
            });
        }
    }
    lines.join("\n")
}

async fn check(model: &str, calls: usize, expected: &str) {
    let provider = resolve_provider(model).unwrap_or_else(|error| panic!("{model}: {error}"));
    let actual = play(provider.as_ref(), "hello world", calls).await;
    let expected: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(actual, expected.join("\n"), "{model}");
}

#[tokio::test]
async fn built_in_scripts() {
    check(
        "scripted:weather",
        3,
        r#"
        1: text="Let me check. "
        1: call[0] Some("call_1") Some("get_weather") "{\"city\": "
        1: call[0] None None "\"Paris\"}"
        1: finish=tool_calls usage=10/5/15
        2: text="It is sunny"
        2: text=" in Paris."
        2: finish=stop usage=20/6/26
        3: finish=stop
        "#,
    )
    .await;
    check("scripted:noop", 1, "1: finish=stop").await;
    check("scripted:", 1, "1: finish=stop").await;
    check(
        "mock:echo",
        1,
        r#"
        1: text="he"
        1: text="l"
        1: text="l"
        1: text="o"
        1: text=" "
        1: text="w"
        1: text="o"
        1: text="r"
        1: text="l"
        1: text="d"
        1: finish=stop usage=2/2/4
        "#,
    )
    .await;
    check("scripted:fail", 1, "1: error RuntimeError: provider down").await;
    check(
        "scripted:fail:quota exceeded",
        1,
        "1: error RuntimeError: quota exceeded",
    )
    .await;
}

#[tokio::test]
async fn inline_scripts() {
    check(
        r#"scripted:{"turns":[{"text":["a","b"],"tool_calls":[{"id":"c1","name":"panic","arguments":["{}"]}]},{"text":["done"]}]}"#,
        3,
        r#"
        1: text="a"
        1: text="b"
        1: call[0] Some("c1") Some("panic") "{}"
        1: finish=tool_calls
        2: text="done"
        2: finish=stop
        3: finish=stop
        "#,
    )
    .await;
    check(
        r#"scripted:[{"reasoning":"think","text":"x","usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3},"error":"cut off"}]"#,
        1,
        r#"
        1: reasoning="think"
        1: text="x"
        1: error RuntimeError: cut off
        "#,
    )
    .await;
    let error = resolve_provider(r#"scripted:{"turns":[{"texts":"a"}]}"#).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid scripted model script: unknown field `texts`"),
        "{error}"
    );
}

#[tokio::test]
async fn script_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.json");
    std::fs::write(&path, r#"{"turns": [{"text": "from a file"}]}"#).unwrap();
    let expected = r#"
        1: text="from a file"
        1: finish=stop
        "#;
    check(&format!("scripted:{}", path.display()), 1, expected).await;
    check(&format!("scripted:file={}", path.display()), 1, expected).await;
    let missing = resolve_provider("scripted:/nonexistent/script.json").unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("cannot read scripted model script /nonexistent/script.json"),
        "{missing}"
    );
    assert!(!missing.is_retryable());
    assert!(missing.is_config());
}

#[tokio::test]
async fn slow_waits_before_its_text() {
    let provider = resolve_provider("scripted:slow:150").unwrap();
    let started = Instant::now();
    let summary = play(provider.as_ref(), "x", 1).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        summary,
        "1: text=\"Done after 150 ms.\"\n1: finish=stop usage=1/4/5"
    );
}

#[tokio::test]
async fn one_instance_serves_concurrent_runs() {
    // Two runs at different steps share one provider: each gets the turn
    // of its own step.
    let provider = ScriptedProvider::new(Script::new(vec![
        Turn::text(&["first"]).with_tool_call("c", "echo", &["{}"]),
        Turn::text(&["second"]).with_usage(1, 1),
    ]));
    let fresh = vec![Message::user("a")];
    let later = vec![
        Message::user("b"),
        Message::assistant("first", vec![]),
        Message::Tool {
            tool_call_id: "c".into(),
            tool_name: "echo".into(),
            content: "ok".into(),
            error: None,
        },
    ];
    let (fresh, later) = (ModelRequest::new(fresh), ModelRequest::new(later));
    let (one, two) = tokio::join!(provider.complete(&fresh), provider.complete(&later));
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!(one.text, "first");
    assert_eq!(one.tool_calls()[0].name, "echo");
    assert_eq!(two.text, "second");
    assert!(two.tool_calls().is_empty());
    assert_eq!(
        two.usage,
        Some(Usage {
            input_tokens: 1,
            output_tokens: 1,
            total_tokens: 2
        })
    );
}

#[tokio::test]
async fn chunk_delays_are_honoured() {
    let provider = ScriptedProvider::new(Script::new(vec![
        Turn::text(&["a", "b", "c"]).with_chunk_delay_ms(40),
    ]));
    let started = Instant::now();
    let completion = provider
        .complete(&ModelRequest::new(vec![Message::user("x")]))
        .await
        .unwrap();
    assert_eq!(completion.text, "abc");
    assert!(started.elapsed() >= Duration::from_millis(80));
}
