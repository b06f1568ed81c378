//! `install` as a binary uses it: global subscriber and recorder, no OTLP.
//!
//! Process-global state, so the test runs in a process of its own
//! ([`in_own_process`](crate::common::in_own_process)).

use std::{sync::Arc, time::Duration};

use exo_observability::{
    Error, LogFormat, Readiness, TaskLabels, TelemetryConfig, inject_trace_context, install,
    record, serve_http,
};
use exo_proto::TaskStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn install_once_then_record_render_and_serve() {
    if !crate::common::in_own_process("install::install_once_then_record_render_and_serve") {
        return;
    }
    let mut config = TelemetryConfig::new("exo-install-test");
    config.log_format = LogFormat::Json;
    config.log_filter = Some("warn".to_owned());
    config.otlp = false;
    let telemetry = install(config.clone()).expect("first install");
    assert!(!telemetry.otlp_enabled());

    // Recording goes to the global recorder now.
    let labels = TaskLabels::new("exo:tasks", "worker-9");
    for _ in 0..4 {
        record::task_finished(labels, TaskStatus::Failed, Duration::from_millis(20));
    }
    record::workers_alive(1);
    let text = telemetry.render_metrics();
    assert!(
        text.contains(
            "exo_distributed_tasks_failed_total{queue=\"exo:tasks\",worker_id=\"worker-9\"} 4"
        ),
        "{text}"
    );
    assert!(text.contains("exo_distributed_workers_alive 1"), "{text}");

    // Without OTLP nothing is propagated, and nothing fails.
    let mut metadata = serde_json::Map::new();
    tracing::warn_span!("submit").in_scope(|| assert!(!inject_trace_context(&mut metadata)));
    assert!(metadata.is_empty());

    // The endpoint serves the same registry.
    let handle = telemetry.metrics().expect("metrics are on");
    let server = serve_http(
        "127.0.0.1:0".parse().expect("address"),
        Some(handle),
        Arc::new(Readiness::ready),
    )
    .await
    .expect("serve");
    let mut stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("exo_distributed_tasks_failed_total"),
        "{answer}"
    );
    server.shutdown().await;

    // A second install is refused rather than silently replacing the first.
    match install(config) {
        Err(Error::AlreadyInstalled(what)) => assert_eq!(what, "tracing subscriber"),
        other => panic!("expected AlreadyInstalled, got {other:?}"),
    }
    telemetry.shutdown().expect("shutdown");
}
