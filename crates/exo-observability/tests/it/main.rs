//! Integration tests of exo-observability, in one test binary: the HTTP
//! endpoints, installing the subscriber, metrics, OTLP export to a test
//! collector and the Prometheus alert rules.

mod common;
mod http;
mod install;
mod metrics;
#[cfg(feature = "otlp")]
mod otlp;
mod prometheus_rules;
