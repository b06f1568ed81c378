//! Observability end to end with the real binaries: a worker's /metrics
//! while it drains a prefilled queue, a trace that crosses the queue from
//! `exo task submit` to the worker (received by a test OTLP collector), and
//! `exo alerts check` with its exit codes.

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use exo_e2e::{Target, agent_file, eventually};
use exo_testkit::{TestRedis, free_port, http_get};
use prost::Message;
use serde_json::json;

fn get(port: u16, path: &str) -> (u16, String) {
    http_get(port, path).expect("GET from the worker's HTTP port")
}

/// The value of the first sample of `name` whose line contains `filter`.
fn sample(text: &str, name: &str, filter: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name) && line.contains(filter))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_follow_a_prefilled_queue_down_to_zero() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "a", "model": "scripted:slow:40"}),
    );
    let tasks = 30;
    for index in 0..tasks {
        target.json(&[
            "task",
            "submit",
            "--agent",
            agent.to_str().unwrap(),
            "--input",
            &format!("{index}"),
        ]);
    }
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let worker = target.start_worker(&[
        "--concurrency",
        "1",
        "--metrics-addr",
        &address,
        "--stats-interval",
        "0.1",
    ]);
    assert_eq!(get(port, "/healthz").0, 200);
    let mut depths = Vec::new();
    eventually(Duration::from_secs(60), "the queue to drain", || {
        let (_, text) = get(port, "/metrics");
        if let Some(depth) = sample(&text, "exo_distributed_queue_depth", "")
            && depths.last() != Some(&depth)
        {
            depths.push(depth);
        }
        let completed = sample(&text, "exo_distributed_tasks_completed_total", "").unwrap_or(0.0);
        (completed as usize == tasks && depths.last() == Some(&0.0)).then_some(())
    });
    assert!(
        depths
            .first()
            .is_some_and(|first| *first >= (tasks / 2) as f64),
        "depth started high: {depths:?}"
    );
    assert!(
        depths.windows(2).all(|pair| pair[1] <= pair[0]),
        "depth only went down: {depths:?}"
    );
    let (_, text) = get(port, "/metrics");
    let count = |name: &str| sample(&text, name, "").unwrap_or(-1.0);
    assert_eq!(count("exo_distributed_tasks_completed_total"), tasks as f64);
    assert_eq!(
        count("exo_distributed_task_duration_seconds_count"),
        tasks as f64
    );
    assert_eq!(
        count("exo_distributed_task_wait_time_seconds_count"),
        tasks as f64
    );
    assert!(!text.contains("task_id="), "no task id is ever a label");
    assert_eq!(get(port, "/readyz").0, 200);
    worker.signal("TERM");
}

/// A test OTLP/HTTP collector: records the bodies of POST /v1/traces.
fn collector() -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let received = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let received = received.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut data = Vec::new();
                let mut buffer = [0u8; 65536];
                loop {
                    let head_end = data.windows(4).position(|window| window == b"\r\n\r\n");
                    if let Some(end) = head_end {
                        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|line| {
                                line.strip_prefix("content-length:")
                                    .map(|value| value.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            if head.starts_with("post /v1/traces") {
                                received
                                    .lock()
                                    .unwrap()
                                    .push(data[end + 4..end + 4 + length].to_vec());
                            }
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
                            data.drain(..end + 4 + length);
                            continue;
                        }
                    }
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(read) => data.extend_from_slice(&buffer[..read]),
                    }
                }
            });
        }
    });
    (port, bodies)
}

#[test]
fn the_execute_span_is_a_child_of_the_submit_span() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let (port, bodies) = collector();
    let endpoint = format!("http://127.0.0.1:{port}");
    let redis = TestRedis::new();
    let target = Target::of(&redis)
        .with_env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .with_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "a", "model": "scripted:echo"}),
    );
    let mut worker = target.start_worker(&[]);
    let task_id = target.submit(&agent, "trace me");
    target.wait_for_status(&task_id, "completed", Duration::from_secs(20));
    worker.signal("TERM");
    worker.wait(Duration::from_secs(20));
    let spans = eventually(
        Duration::from_secs(20),
        "both spans at the collector",
        || {
            let mut spans = Vec::new();
            for body in bodies.lock().unwrap().iter() {
                let request = ExportTraceServiceRequest::decode(body.as_slice()).ok()?;
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
            }
            let submit = spans
                .iter()
                .find(|span| span.name == "exo.task.submit")
                .cloned()?;
            let execute = spans
                .iter()
                .find(|span| span.name == "exo.task.execute")
                .cloned()?;
            let model = spans
                .iter()
                .find(|span| span.name == "exo.model.call")
                .cloned()?;
            Some((submit, execute, model))
        },
    );
    let (submit, execute, model) = spans;
    assert_eq!(
        model.parent_span_id, execute.span_id,
        "the model call is inside the execute span"
    );
    assert_eq!(
        execute.trace_id, submit.trace_id,
        "one trace crosses the queue"
    );
    assert_eq!(
        execute.parent_span_id, submit.span_id,
        "the worker's execute span is a child of the client's submit span"
    );
}

#[test]
fn alerts_check_fires_and_sets_its_exit_code() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    // No workers, nothing queued: the fleet is empty, which is critical.
    let output = target.run(&["alerts", "check"]);
    assert_eq!(output.status.code(), Some(2));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("worker_count_zero"), "{shown}");

    // 600 queued tasks: both queue-depth rules fire.
    let broker_url = redis.url().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = exo_broker::Broker::connect(
            exo_broker::BrokerConfig::new(broker_url)
                .with_keys(exo_proto::Keys::new(redis.prefix(), redis.queue())),
        )
        .await
        .unwrap();
        let config = json!({"name": "a", "model": "scripted:noop"});
        for index in 0..600 {
            let payload = exo_proto::TaskPayload::new(
                format!("{index:032x}"),
                config.as_object().unwrap().clone(),
                "x",
            );
            broker.client().submit(payload).await.unwrap();
        }
    });
    let output = target
        .command()
        .args(["alerts", "check", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "critical alerts exit 2");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let firing: Vec<&str> = report["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["rule"].as_str().unwrap())
        .collect();
    for rule in [
        "queue_depth_critical",
        "queue_depth_high",
        "worker_count_zero",
    ] {
        assert!(firing.contains(&rule), "{rule} not firing: {report}");
    }
    assert_eq!(report["exit_code"], 2);

    // A live worker with the thresholds raised: nothing fires.
    let worker = target.start_worker(&["--concurrency", "8"]);
    eventually(Duration::from_secs(60), "the queue to drain", || {
        (target.json(&["queue", "stats"])["depth"] == 0).then_some(())
    });
    let output = target.run(&["alerts", "check"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // One failed task among 600: a failure-rate threshold of 0.1% fires a
    // warning only, exit 1.
    let failing = agent_file(
        dir.path(),
        "fail.json",
        &json!({"name": "a", "model": "scripted:fail"}),
    );
    let submitted = target.json(&[
        "task",
        "submit",
        "--agent",
        failing.to_str().unwrap(),
        "--input",
        "x",
        "--max-retries",
        "0",
    ]);
    let failed_id = submitted["task_id"].as_str().unwrap().to_owned();
    target.wait_for_status(&failed_id, "failed", Duration::from_secs(20));
    let output = target
        .command()
        .args([
            "alerts",
            "check",
            "--json",
            "--threshold",
            "task_failure_rate_high=0.1%",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let firing: Vec<&str> = report["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["rule"].as_str().unwrap())
        .collect();
    assert_eq!(firing, ["task_failure_rate_high"]);
    drop(worker);
}

#[test]
fn without_an_exporter_sigusr1_prints_the_in_memory_registry() {
    let redis = TestRedis::new();
    let target = Target::of(&redis);
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_file(
        dir.path(),
        "agent.json",
        &json!({"name": "a", "model": "scripted:noop"}),
    );
    let worker = target.start_worker(&[]);
    let task_id = target.submit(&agent, "x");
    target.wait_for_status(&task_id, "completed", Duration::from_secs(20));
    worker.signal("USR1");
    let printed = eventually(Duration::from_secs(10), "the registry on stderr", || {
        let stderr = worker.stderr();
        stderr
            .contains("exo_distributed_tasks_completed_total")
            .then_some(stderr)
    });
    assert!(
        sample(&printed, "exo_distributed_tasks_completed_total", "")
            .is_some_and(|count| count >= 1.0),
        "{printed}"
    );
}
