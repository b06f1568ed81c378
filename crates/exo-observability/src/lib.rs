//! Logs, metrics and traces for exo: the metric names and their recording
//! functions, the exporters a binary installs, a small `/metrics` +
//! `/healthz` + `/readyz` endpoint, the alert rules, worker health verdicts,
//! and W3C trace-context propagation through `metadata.trace_context`.
//!
//! Who depends on it: `exo-worker` (records task metrics, measures the
//! queue, serves the endpoint, continues the client's trace) and `exo-cli`
//! (installs telemetry, prints metrics, `exo alerts check`,
//! `exo worker health`). It sits beside `exo-broker` and must never know
//! about it, or about Redis: the callers read the broker and hand plain
//! values in ([`AlertSnapshot`], [`QueueSample`], `Option<WorkerHealth>`).
//! Besides the exporters it holds no global state, and it runs no agents.
//!
//! # Metrics go through the `metrics` facade
//!
//! Libraries record with the `metrics` crate, one macro per sample, through
//! the typed functions of [`record`], which own every metric name and label
//! set. Without an installed recorder a sample is a no-op, so library code
//! and tests pay next to nothing. Only a binary installs a recorder, with
//! [`install`]: the in-process Prometheus registry ([`MetricsRecorder`]),
//! which `/metrics` and the CLI render; with the `otlp` feature, a fan-out
//! (`metrics-util`) that also forwards every sample to OpenTelemetry
//! (`metrics-exporter-opentelemetry`) and on to an OTLP collector. The
//! facade keeps the recording side independent of where samples go:
//! Prometheus scraping works with no collector, OTLP works with no scraper,
//! and code that records never changes. Labels are bounded (queue, worker
//! id, task status, event type); a task id is never a label.
//!
//! Traces are `tracing` spans. With OTLP on, the `tracing-opentelemetry`
//! layer turns them into OpenTelemetry spans, exported in batches over
//! HTTP/protobuf, and [`propagation`] carries their context through the
//! task's metadata from the client's submit span to the worker's execute
//! span.
//!
//! Main items: [`install`] with [`TelemetryConfig`] returning
//! [`Telemetry`]; the [`record`] functions; [`serve_http`] with
//! [`Readiness`]; [`inject_trace_context`] and [`set_parent_from`];
//! [`default_rules`], [`evaluate`] and [`alerts_exit_code`];
//! [`worker_health`] and [`health_exit_code`].
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `otlp` | no | OTLP/HTTP (protobuf) export of traces and metrics, configured by the `OTEL_EXPORTER_OTLP_*` variables, and the W3C TraceContext + Baggage propagators. Pulls in the OpenTelemetry SDK, the OTLP exporter and a blocking HTTP client. |
//!
//! The OpenTelemetry API and `tracing-opentelemetry` are always compiled:
//! they are small, and they let [`propagation`] be called unconditionally.
//! Without `otlp` (or without OTLP turned on at run time) spans carry no
//! OpenTelemetry context, so propagation writes and reads nothing.

mod alerts;
mod error;
mod health;
mod http;
#[cfg(feature = "otlp")]
mod otlp;
mod prometheus;
pub mod propagation;
pub mod record;
mod telemetry;

pub use alerts::{
    AlertMetric, AlertRule, AlertSnapshot, Comparison, FiringAlert, Severity, alerts_exit_code,
    apply_overrides, default_rules, evaluate, failure_rate,
};
pub use error::{Error, Result};
pub use health::{format_health, health_exit_code, health_json, worker_health};
pub use http::{
    HttpServer, MAX_CONNECTIONS, READ_TIMEOUT, Readiness, ReadinessCheck, WRITE_TIMEOUT, serve_http,
};
pub use prometheus::{MetricsHandle, MetricsRecorder, PROMETHEUS_CONTENT_TYPE};
pub use propagation::{
    TRACE_CONTEXT_KEY, inject_span_context, inject_trace_context, set_parent_from,
};
pub use record::{QueueSample, TaskLabels, describe_metrics};
pub use telemetry::{DEFAULT_LOG_FILTER, LogFormat, Telemetry, TelemetryConfig, install};
