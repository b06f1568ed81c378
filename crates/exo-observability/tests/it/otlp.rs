//! OTLP export end to end, against a collector that runs in this test.
//!
//! The pipeline is process-global (tracing subscriber, metrics recorder,
//! OpenTelemetry providers and propagator), so this file holds one test,
//! which runs in a process of its own
//! ([`in_own_process`](crate::common::in_own_process)).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use exo_observability::{
    DEFAULT_LOG_FILTER, TaskLabels, TelemetryConfig, inject_trace_context, install, propagation,
    record, set_parent_from,
};
use exo_proto::{TaskPayload, TaskStatus};
use opentelemetry::{Context, KeyValue, baggage::BaggageExt};
use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    metrics::v1::metric::Data,
    trace::v1::Span,
};
use prost::Message;
use serde_json::Map;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// One request the collector received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// A minimal OTLP/HTTP collector: accepts any POST, records it, answers 200
/// with an empty (valid) protobuf response.
struct Collector {
    base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        let base_url = format!("http://{}", listener.local_addr().expect("local address"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = Arc::clone(&sink);
                thread::spawn(move || serve(stream, &sink));
            }
        });
        Collector { base_url, received }
    }

    fn requests(&self, path: &str) -> Vec<Received> {
        let received = self.received.lock().expect("collector lock");
        received
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }
}

fn serve(stream: TcpStream, sink: &Mutex<Vec<Received>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut reader = BufReader::new(stream);
    // Clients may send several requests on one connection.
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut content_length = 0;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        sink.lock().expect("collector lock").push(Received {
            path,
            content_type,
            body,
        });
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if reader.get_mut().write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn spans(collector: &Collector) -> Vec<Span> {
    collector
        .requests("/v1/traces")
        .iter()
        .flat_map(|request| {
            assert_eq!(request.content_type, "application/x-protobuf");
            ExportTraceServiceRequest::decode(request.body.as_slice())
                .expect("a valid ExportTraceServiceRequest")
                .resource_spans
        })
        .flat_map(|resource| resource.scope_spans)
        .flat_map(|scope| scope.spans)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

// The worker and the CLI install telemetry inside a tokio runtime; the
// blocking HTTP client must cope with that, so this test runs in one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_the_queue_and_reaches_the_collector() {
    if !crate::common::in_own_process("otlp::a_trace_crosses_the_queue_and_reaches_the_collector") {
        return;
    }
    let collector = Collector::start();
    let mut config = TelemetryConfig::new("exo-otlp-test");
    config.log_filter = Some(DEFAULT_LOG_FILTER.to_owned());
    config.otlp_endpoint = Some(collector.base_url.clone());
    let telemetry = install(config).expect("install telemetry");
    assert!(telemetry.otlp_enabled());

    // The client: a submit span whose context goes into the payload.
    let mut payload = TaskPayload::new("0123456789abcdef0123456789abcdef", Map::new(), "hi");
    let submit = tracing::info_span!("submit", queue = "exo:tasks");
    submit.in_scope(|| assert!(inject_trace_context(&mut payload.metadata)));
    drop(submit);

    // The wire: through JSON, as the queue carries it.
    let received = TaskPayload::from_json(payload.to_json().as_bytes()).expect("payload");
    let mut carrier = received.trace_context();
    let traceparent = carrier.get("traceparent").cloned().expect("a traceparent");
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-01"),
        "{traceparent}"
    );

    // A reference client may add baggage to the same carrier.
    let baggage = propagation::trace_context_carrier(
        &Context::new().with_baggage([KeyValue::new("tenant", "acme")]),
    );
    assert_eq!(
        baggage,
        BTreeMap::from([("baggage".to_owned(), "tenant=acme".to_owned())])
    );
    carrier.extend(baggage);

    // The worker: an execute span continuing the client's trace.
    let execute = tracing::info_span!("execute", queue = "exo:tasks");
    assert!(set_parent_from(&execute, &carrier));
    execute.in_scope(|| {
        let context = tracing::Span::current().context();
        assert_eq!(
            context
                .baggage()
                .get("tenant")
                .map(|value| value.as_str().to_owned()),
            Some("acme".to_owned())
        );
        record::task_finished(
            TaskLabels::new("exo:tasks", "worker-1"),
            TaskStatus::Completed,
            Duration::from_millis(1500),
        );
    });
    drop(execute);

    // Metrics go to the Prometheus registry too.
    assert!(telemetry.render_metrics().contains(
        "exo_distributed_tasks_completed_total{queue=\"exo:tasks\",worker_id=\"worker-1\"} 1"
    ));

    telemetry.shutdown().expect("flush and shut down");

    let spans = spans(&collector);
    let find = |name: &str| {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no `{name}` span among {:?}",
                    spans.iter().map(|span| &span.name).collect::<Vec<_>>()
                )
            })
    };
    let submit = find("submit");
    let execute = find("execute");
    assert_eq!(execute.trace_id, submit.trace_id, "one trace");
    assert_eq!(
        execute.parent_span_id, submit.span_id,
        "execute is a child of submit"
    );
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", hex(&submit.trace_id), hex(&submit.span_id))
    );

    // The metrics bridge exported the counter with its description.
    let metrics: Vec<_> = collector
        .requests("/v1/metrics")
        .iter()
        .flat_map(|request| {
            ExportMetricsServiceRequest::decode(request.body.as_slice())
                .expect("a valid ExportMetricsServiceRequest")
                .resource_metrics
        })
        .flat_map(|resource| resource.scope_metrics)
        .flat_map(|scope| scope.metrics)
        .collect();
    let completed: Vec<_> = metrics
        .iter()
        .filter(|metric| metric.name == record::TASKS_COMPLETED)
        .collect();
    assert!(
        !completed.is_empty(),
        "no {} among {metrics:#?}",
        record::TASKS_COMPLETED
    );
    for metric in completed {
        assert_eq!(metric.description, "Tasks that finished with a result.");
        let Some(Data::Sum(sum)) = &metric.data else {
            panic!("{} is not a sum: {metric:?}", record::TASKS_COMPLETED);
        };
        let total: u64 = sum
            .data_points
            .iter()
            .map(|point| match point.value {
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                    value,
                )) => value as u64,
                other => panic!("unexpected value {other:?}"),
            })
            .sum();
        assert_eq!(total, 1);
    }
    let durations: Vec<_> = metrics
        .iter()
        .filter(|metric| metric.name == record::TASK_DURATION)
        .collect();
    assert!(
        durations.iter().all(|metric| metric.unit == "s"),
        "{durations:?}"
    );
    assert!(!durations.is_empty());
}
