//! `exo serve` over HTTP against a real redis-server and a real worker:
//! submit, follow over SSE, drop the connection and resume with
//! `Last-Event-ID` (nothing missed, nothing twice), wait, cancel, tokens
//! with scopes and tenants, and bad requests.

use std::time::Duration;

use exo_e2e::{Target, eventually};
use exo_testkit::TestRedis;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

/// An agent whose run streams `chunks` text chunks `every_ms` apart.
fn paced_agent(chunks: usize, every_ms: u64) -> Value {
    let text: Vec<String> = (0..chunks)
        .map(|index| format!("chunk {index}. "))
        .collect();
    let script = json!({"turns": [{"text": text, "chunk_delay_ms": every_ms}]});
    json!({"name": "paced", "model": format!("scripted:{script}")})
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads SSE events from a response until `stop` says so or the stream
/// ends; returns them (comments are skipped).
async fn read_sse(
    mut response: Response,
    mut stop: impl FnMut(&[SseEvent]) -> bool,
) -> Vec<SseEvent> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("an SSE chunk within 20 s")
            .expect("reading the SSE body");
        let Some(chunk) = chunk else { return events };
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = SseEvent {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut any = false;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    event.id = Some(value.trim_start().to_owned());
                    any = true;
                } else if let Some(value) = line.strip_prefix("event:") {
                    event.event = Some(value.trim_start().to_owned());
                    any = true;
                } else if let Some(value) = line.strip_prefix("data:") {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value.trim_start());
                    any = true;
                }
            }
            if any {
                events.push(event);
                if stop(&events) {
                    return events;
                }
            }
        }
    }
}

async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status, "{:?}", response.url());
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{:?}",
        response.url()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty())
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follow_drop_resume_wait_and_cancel_over_http() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let _worker = target.start_worker(&["--concurrency", "4"]);
    let (_gateway, base) = target.start_gateway(&[]);
    let http = Client::new();

    // Submit a reference-shaped payload (the task payload's own fields).
    let response = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({
            "agent_config": paced_agent(40, 40),
            "input": "go",
            "messages": [],
            "detailed": false,
            "metadata": {"source": "e2e"},
            "timeout_seconds": 60.0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let task_id = response.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Follow, drop the connection after 10 events, resume after the last id.
    let events_url = format!("{base}/v1/tasks/{task_id}/events");
    let first = read_sse(http.get(&events_url).send().await.unwrap(), |events| {
        events.len() >= 10
    })
    .await;
    assert!(first.iter().all(|event| event.id.is_some()));
    let last_id = first.last().unwrap().id.clone().unwrap();
    let response = http
        .get(&events_url)
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let second = read_sse(response, |_| false).await;
    let end = second.last().unwrap();
    assert_eq!(
        end.event.as_deref(),
        Some("end"),
        "the stream ends with `end`"
    );
    let resumed: Vec<SseEvent> = first
        .iter()
        .chain(second.iter())
        .filter(|event| event.event.is_none())
        .cloned()
        .collect();

    // The whole stream, replayed: the two halves are exactly it.
    let replay: Vec<SseEvent> = read_sse(
        http.get(format!("{events_url}?from=beginning"))
            .send()
            .await
            .unwrap(),
        |_| false,
    )
    .await
    .into_iter()
    .filter(|event| event.event.is_none())
    .collect();
    assert_eq!(resumed, replay, "nothing missed, nothing repeated");
    let texts = replay
        .iter()
        .filter_map(|event| serde_json::from_str::<Value>(&event.data).ok())
        .filter(|event| event["type"] == "text")
        .count();
    assert_eq!(texts, 40);
    let terminal: Value = serde_json::from_str(&replay.last().unwrap().data).unwrap();
    assert_eq!(terminal["type"], "status");
    assert_eq!(terminal["status"], "completed");

    // `from=latest` on an ended task: only the end.
    let latest = read_sse(
        http.get(format!("{events_url}?from=latest"))
            .send()
            .await
            .unwrap(),
        |_| false,
    )
    .await;
    assert!(latest.len() <= 2, "{latest:?}");

    // Read, wait, list.
    let task: Value = http
        .get(format!("{base}/v1/tasks/{task_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["agent_name"], "paced");
    let response = http
        .get(format!("{base}/v1/tasks/{task_id}/wait?timeout=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = http
        .get(format!("{base}/v1/tasks?status=completed&agent=paced"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["tasks"][0]["task_id"], task_id.as_str());

    // The same Idempotency-Key gives the first task back.
    let submit = |key: &str| {
        http.post(format!("{base}/v1/tasks"))
            .header("Idempotency-Key", key)
            .json(&json!({"agent_config": paced_agent(1, 0), "input": "once"}))
    };
    let first = submit("order-17").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = submit("order-17").send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["task_id"], first["task_id"]);
    assert_eq!(again["created"], false);

    // Wait on a running task until it ends; cancel a running task.
    let response = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"agent_config": {"name": "sleepy", "model": "scripted:slow:30000"}, "input": "x"}))
        .send()
        .await
        .unwrap();
    let slow_id = response.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status_of = |id: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}/v1/tasks/{id}"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    for _ in 0..200 {
        if status_of(slow_id.clone()).await == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(slow_id.clone()).await, "running");
    let response = http
        .get(format!("{base}/v1/tasks/{slow_id}/wait?timeout=0.5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "still running");
    let waiter = tokio::spawn(
        http.get(format!("{base}/v1/tasks/{slow_id}/wait?timeout=20"))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled: Value = http
        .post(format!("{base}/v1/tasks/{slow_id}/cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["outcome"], "cancelling");
    let waited = waiter.await.unwrap().unwrap();
    assert_eq!(waited.status(), StatusCode::OK);
    let waited: Value = waited.json().await.unwrap();
    assert_eq!(waited["status"], "cancelled");
    let again: Value = http
        .post(format!("{base}/v1/tasks/{slow_id}/cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["outcome"], "already_finished");
    assert_eq!(again["status"], "cancelled");

    // The fleet, the queue, alerts, dead letters, the caller.
    let workers: Value = http
        .get(format!("{base}/v1/workers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(workers["workers"][0]["alive"], true);
    let worker_id = workers["workers"][0]["worker_id"].as_str().unwrap();
    let health: Value = http
        .get(format!("{base}/v1/workers/{worker_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["verdict"], "healthy");
    for path in [
        "/v1/queue",
        "/v1/queue/history",
        "/v1/alerts",
        "/v1/dead-letters",
        "/v1/me",
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let me: Value = http
        .get(format!("{base}/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["auth"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_and_the_openapi_document_lists_every_route() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let (_gateway, base) = target.start_gateway(&[
        "--max-body-bytes",
        "65536",
        "--cors-origin",
        "https://app.example.com",
    ]);
    let http = Client::new();

    // CORS: the configured origin only.
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://evil.example", false),
    ] {
        let response = http
            .request(reqwest::Method::OPTIONS, format!("{base}/v1/tasks"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        let header = response
            .headers()
            .get("access-control-allow-origin")
            .map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(header.as_deref(), allowed.then_some(origin), "{origin}");
    }
    let post = |body: &'static str| {
        http.post(format!("{base}/v1/tasks"))
            .header("content-type", "application/json")
            .body(body)
    };
    let agent = r#"{"name": "a", "model": "scripted:echo"}"#;
    // (request, status, a word the detail must contain)
    let cases: Vec<(RequestBuilder, StatusCode, &str)> = vec![
        (post("{not json"), StatusCode::BAD_REQUEST, "JSON"),
        (
            post(r#"{"inptu": "x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "inptu",
        ),
        (
            post(r#"{"input": "x"}"#),
            StatusCode::BAD_REQUEST,
            "agent_config",
        ),
        (
            post(r#"{"agent": "nobody", "input": "x"}"#),
            StatusCode::BAD_REQUEST,
            "nobody",
        ),
        (
            post(
                r#"{"agent_config": {"name": "a", "model": "scripted:echo"}, "messages": [{"role": "wizard", "content": "x"}]}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wizard",
        ),
        (
            post(
                r#"{"agent_config": {"name": "a", "model": "scripted:echo"}, "task_id": "bad id with spaces"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "task_id",
        ),
        (
            http.post(format!("{base}/v1/tasks"))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"agent_config": {agent}, "input": "{}"}}"#,
                    "x".repeat(100 * 1024)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
        (
            http.post(format!("{base}/v1/tasks"))
                .header("content-type", "text/plain")
                .body("hello"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "",
        ),
        (
            http.get(format!("{base}/v1/tasks?status=done")),
            StatusCode::BAD_REQUEST,
            "done",
        ),
        (
            http.get(format!("{base}/v1/tasks?limit=many")),
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            http.get(format!("{base}/v1/tasks/nope")),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            http.post(format!("{base}/v1/tasks/nope/cancel")),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            http.get(format!("{base}/v1/tasks/nope/events")),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            http.get(format!("{base}/v1/workers/nobody")),
            StatusCode::NOT_FOUND,
            "nobody",
        ),
        (
            http.post(format!("{base}/v1/dead-letters/1-1/redrive")),
            StatusCode::NOT_FOUND,
            "",
        ),
    ];
    for (request, status, word) in cases {
        let body = problem(request.send().await.unwrap(), status).await;
        assert!(
            body["detail"].as_str().unwrap().contains(word),
            "{status}: {body}"
        );
    }
    // A bad `from` on an existing task.
    let created: Value = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"agent_config": {"name": "a", "model": "scripted:echo"}, "input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_id = created["task_id"].as_str().unwrap();
    let response = http
        .get(format!("{base}/v1/tasks/{task_id}/events?from=yesterday"))
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::BAD_REQUEST).await;

    let document: Value = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    for (path, method) in [
        ("/v1/tasks", "post"),
        ("/v1/tasks", "get"),
        ("/v1/tasks/{task_id}", "get"),
        ("/v1/tasks/{task_id}/cancel", "post"),
        ("/v1/tasks/{task_id}/wait", "get"),
        ("/v1/tasks/{task_id}/events", "get"),
        ("/v1/workers", "get"),
        ("/v1/workers/{worker_id}", "get"),
        ("/v1/queue", "get"),
        ("/v1/queue/history", "get"),
        ("/v1/dead-letters", "get"),
        ("/v1/dead-letters/{entry_id}/redrive", "post"),
        ("/v1/alerts", "get"),
        ("/v1/me", "get"),
    ] {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_and_tenant_isolation() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"name": "reader", "token": "reader-token-000001", "scopes": ["read"]},
            {"name": "acme", "token": "acme-token-00000001", "scopes": ["read", "submit", "cancel"], "tenant": "acme"},
            {"name": "beta", "token": "beta-token-00000001", "scopes": ["read", "submit", "cancel"], "tenant": "beta"},
            {"name": "root", "token": "root-token-00000001", "scopes": ["admin"]},
        ]})
        .to_string(),
    )
    .unwrap();
    let (_gateway, base) = target.start_gateway(&["--tokens-file", tokens.to_str().unwrap()]);
    let http = Client::new();
    let agent = json!({"name": "a", "model": "scripted:echo"});
    let submit = |token: &str, key: Option<&str>| {
        let mut request = http
            .post(format!("{base}/v1/tasks"))
            .bearer_auth(token)
            .json(&json!({"agent_config": agent, "input": "hi", "metadata": {"tenant": "someone-else"}}));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request
    };

    // No token, a wrong token.
    let response = http.get(format!("{base}/v1/tasks")).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    problem(response, StatusCode::UNAUTHORIZED).await;
    let response = http
        .get(format!("{base}/v1/tasks"))
        .bearer_auth("acme-token-00000002")
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::UNAUTHORIZED).await;
    // The page and the document need no token; the data does.
    assert_eq!(
        http.get(&base).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(format!("{base}/v1/openapi.json"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Scopes.
    problem(
        submit("reader-token-000001", None).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    let acme: Value = submit("acme-token-00000001", Some("k1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acme_id = acme["task_id"].as_str().unwrap().to_owned();
    let beta: Value = submit("beta-token-00000001", Some("k1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let beta_id = beta["task_id"].as_str().unwrap().to_owned();
    assert_ne!(acme_id, beta_id, "idempotency keys are per tenant");
    let response = http
        .post(format!("{base}/v1/tasks/{acme_id}/cancel"))
        .bearer_auth("reader-token-000001")
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::FORBIDDEN).await;

    // The tenant comes from the token, whatever the payload says.
    let task: Value = http
        .get(format!("{base}/v1/tasks/{acme_id}"))
        .bearer_auth("root-token-00000001")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["tenant"], "acme");

    // Beta sees nothing of acme's, by any route.
    for request in [
        http.get(format!("{base}/v1/tasks/{acme_id}")),
        http.get(format!("{base}/v1/tasks/{acme_id}/events")),
        http.get(format!("{base}/v1/tasks/{acme_id}/wait?timeout=0")),
        http.post(format!("{base}/v1/tasks/{acme_id}/cancel")),
    ] {
        let response = request
            .bearer_auth("beta-token-00000001")
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::NOT_FOUND).await;
    }
    let listed = |token: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let page: Value = http
                .get(format!("{base}/v1/tasks"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut ids: Vec<String> = page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|task| task["task_id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        listed("acme-token-00000001").await,
        std::slice::from_ref(&acme_id)
    );
    assert_eq!(
        listed("beta-token-00000001").await,
        std::slice::from_ref(&beta_id)
    );
    let mut both = vec![acme_id.clone(), beta_id.clone()];
    both.sort();
    assert_eq!(listed("root-token-00000001").await, both);
    assert_eq!(listed("reader-token-000001").await, both);

    // Fleet views are for tokens without a tenant.
    for path in ["/v1/workers", "/v1/queue", "/v1/dead-letters", "/v1/alerts"] {
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth("acme-token-00000001")
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::FORBIDDEN).await;
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth("reader-token-000001")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let response = http
        .post(format!("{base}/v1/dead-letters/1-1/redrive"))
        .bearer_auth("reader-token-000001")
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::FORBIDDEN).await;

    // Acme cancels its own task; the event stream takes the token in the
    // query, as a browser's EventSource must.
    let cancelled: Value = http
        .post(format!("{base}/v1/tasks/{acme_id}/cancel"))
        .bearer_auth("acme-token-00000001")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["outcome"], "cancelled");
    let events = read_sse(
        http.get(format!(
            "{base}/v1/tasks/{acme_id}/events?access_token=acme-token-00000001"
        ))
        .send()
        .await
        .unwrap(),
        |_| false,
    )
    .await;
    assert_eq!(events.last().unwrap().event.as_deref(), Some("end"));
    let me: Value = http
        .get(format!("{base}/v1/me"))
        .bearer_auth("acme-token-00000001")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        json!({"auth": true, "name": "acme", "scopes": ["read", "submit", "cancel"], "tenant": "acme"})
    );
}

#[test]
fn refuses_to_listen_beyond_loopback_without_tokens() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let output = target
        .command()
        .args(["serve", "--addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without tokens"), "{stderr}");
    // With a token file it starts.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        r#"[{"name": "ops", "token": "ops-token-000000001", "scopes": ["admin"]}]"#,
    )
    .unwrap();
    let mut command = target.command();
    command.args([
        "serve",
        "--addr",
        "0.0.0.0:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let mut process = exo_testkit::TestProcess::start("exo serve", command);
    eventually(Duration::from_secs(20), "the gateway to listen", || {
        process
            .stdout()
            .contains("exo gateway listening on")
            .then_some(())
    });
    process.terminate();
    assert!(process.wait(Duration::from_secs(10)).success());
}

/// Runs tests/reference/reference_client.py (standard library only) against
/// the test's Redis.
fn reference_client(target: &Target, command: &str, argument: &str) -> String {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/reference_client.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args([
            &target.redis_url,
            &target.prefix,
            &target.queue,
            command,
            argument,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "reference_client.py {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_client_reads_http_tasks_and_its_tasks_show_over_http() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let _worker = target.start_worker(&["--concurrency", "2"]);
    let (_gateway, base) = target.start_gateway(&[]);
    let http = Client::new();

    // Submitted over HTTP, read by the reference's wire format.
    let created: Value = http
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"agent_config": {"name": "echoer", "model": "scripted:echo"}, "input": "hello there", "detailed": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_owned();
    let waited: Value = http
        .get(format!("{base}/v1/tasks/{task_id}/wait?timeout=20"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waited["status"], "completed");
    let hash: Value = serde_json::from_str(&reference_client(&target, "status", &task_id)).unwrap();
    assert_eq!(hash["status"], "completed");
    assert_eq!(hash["task_id"], task_id.as_str());
    assert_eq!(hash["result"]["output"], "hello there");
    let events: Vec<Value> = reference_client(&target, "events", &task_id)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.last().unwrap()["status"], "completed");

    // Submitted by the reference client (a bare XADD), seen over HTTP and
    // in the list the dashboard shows.
    let payload = json!({"agent_config": {"name": "legacy", "model": "scripted:echo"}, "input": "from python"});
    let python_id = reference_client(&target, "submit", &payload.to_string())
        .trim()
        .to_owned();
    // The hash is the worker's to write: it appears once a worker claims it.
    let mut visible = false;
    for _ in 0..200 {
        let response = http
            .get(format!("{base}/v1/tasks/{python_id}"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            visible = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        visible,
        "the reference client's task never showed over HTTP"
    );
    let task: Value = http
        .get(format!("{base}/v1/tasks/{python_id}/wait?timeout=20"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"]["output"], "from python");
    let page: Value = http
        .get(format!("{base}/v1/tasks?agent=legacy"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["tasks"][0]["task_id"], python_id.as_str());
}
