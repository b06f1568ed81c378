//! OTLP export of traces and metrics over HTTP/protobuf (feature `otlp`).
//!
//! The exporters read the standard variables themselves:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (and the per-signal
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`),
//! `OTEL_EXPORTER_OTLP_HEADERS` (and per signal), `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*` for the
//! span batch and `OTEL_METRIC_EXPORT_INTERVAL`. The protocol must be
//! `http/protobuf`, the only one built in; any other value of
//! `OTEL_EXPORTER_OTLP_PROTOCOL` is an error rather than a silent mismatch.
//! `OTEL_TRACES_EXPORTER=none` or `OTEL_METRICS_EXPORTER=none` turns one
//! signal off.
//!
//! The exporters use a blocking HTTP client on the SDK's own threads, so
//! export works whether or not a tokio runtime is running.

use std::{
    collections::HashMap,
    fmt,
    sync::{Mutex, PoisonError},
};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use opentelemetry::{
    KeyValue, global,
    metrics::MeterProvider as _,
    propagation::{TextMapCompositePropagator, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::SdkMeterProvider,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::SdkTracerProvider,
};
use tracing_subscriber::{Layer, filter};

use crate::{
    error::{Error, Result},
    telemetry::{BoxedLayer, TelemetryConfig, env_set},
};

/// The instrumentation scope of exo's spans and metrics.
const SCOPE: &str = "exo";

/// The tracer and meter providers of one process.
pub(crate) struct Pipeline {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Pipeline")
            .field("traces", &self.tracer_provider.is_some())
            .field("metrics", &self.meter_provider.is_some())
            .finish()
    }
}

impl Pipeline {
    pub(crate) fn build(config: &TelemetryConfig) -> Result<Self> {
        check_protocol()?;
        let resource = resource(&config.service_name);
        let tracer_provider = if signal_enabled("OTEL_TRACES_EXPORTER") {
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(base) = &config.otlp_endpoint {
                builder = builder.with_endpoint(signal_url(base, "v1/traces"));
            }
            let exporter = builder
                .build()
                .map_err(|error| Error::Otlp(error.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build(),
            )
        } else {
            None
        };
        let meter_provider = if config.metrics && signal_enabled("OTEL_METRICS_EXPORTER") {
            let mut builder = MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(base) = &config.otlp_endpoint {
                builder = builder.with_endpoint(signal_url(base, "v1/metrics"));
            }
            let exporter = builder
                .build()
                .map_err(|error| Error::Otlp(error.to_string()))?;
            Some(
                SdkMeterProvider::builder()
                    .with_periodic_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        } else {
            None
        };
        Ok(Pipeline {
            tracer_provider,
            meter_provider,
        })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub(crate) fn tracing_layer(&self) -> Option<BoxedLayer> {
        let provider = self.tracer_provider.as_ref()?;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(SCOPE))
                .with_filter(filter::filter_fn(|metadata| {
                    !is_export_machinery(metadata.target())
                }))
                .boxed(),
        )
    }

    /// A `metrics` recorder that forwards to the OTLP meter provider.
    pub(crate) fn metrics_recorder(&self) -> Option<OtelRecorder> {
        let provider = self.meter_provider.as_ref()?;
        Some(OtelRecorder::new(
            metrics_exporter_opentelemetry::Recorder::with_meter(provider.meter(SCOPE)),
        ))
    }

    /// Makes the providers and the W3C propagators global, for libraries
    /// that use the OpenTelemetry API directly and for
    /// [`crate::propagation`].
    pub(crate) fn install_globals(&self) {
        if let Some(provider) = &self.tracer_provider {
            global::set_tracer_provider(provider.clone());
        }
        if let Some(provider) = &self.meter_provider {
            global::set_meter_provider(provider.clone());
        }
        let propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ];
        global::set_text_map_propagator(TextMapCompositePropagator::new(propagators));
    }

    /// Exports what is buffered and stops both providers.
    pub(crate) fn shutdown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            errors.push(format!("traces: {error}"));
        }
        if let Some(provider) = self.meter_provider.take()
            && let Err(error) = provider.shutdown()
        {
            errors.push(format!("metrics: {error}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Shutdown(errors.join("; ")))
        }
    }
}

/// Spans and events of the exporter itself and its HTTP client stay out of
/// the exported traces, so that exporting never produces more to export.
fn is_export_machinery(target: &str) -> bool {
    const CRATES: [&str; 7] = [
        "opentelemetry",
        "reqwest",
        "hyper",
        "hyper_util",
        "h2",
        "tower",
        "rustls",
    ];
    CRATES.iter().any(|name| {
        target
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '_', '-']))
    })
}

fn resource(service_name: &str) -> Resource {
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if env_set("OTEL_SERVICE_NAME") {
        builder.build()
    } else {
        builder.with_service_name(service_name.to_owned()).build()
    }
}

/// `base` with the signal's path appended, as the OTLP spec does for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn signal_url(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

fn signal_enabled(variable: &str) -> bool {
    std::env::var(variable).map_or(true, |value| !value.trim().eq_ignore_ascii_case("none"))
}

fn check_protocol() -> Result<()> {
    for variable in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        if let Ok(value) = std::env::var(variable) {
            let value = value.trim();
            if !value.is_empty() && value != "http/protobuf" {
                return Err(Error::Otlp(format!(
                    "{variable}={value} is not supported; exo exports OTLP as http/protobuf \
                     (usually port 4318)"
                )));
            }
        }
    }
    Ok(())
}

/// Forwards `metrics` samples to OpenTelemetry instruments.
///
/// `metrics_exporter_opentelemetry::Recorder` builds a new instrument on
/// every registration and attaches a metric's description only to the first
/// one. Instruments of one name that disagree on their description become
/// separate streams in the SDK, so this wrapper repeats the description
/// before each registration and keeps the handle of each key, registering it
/// once.
pub(crate) struct OtelRecorder {
    inner: metrics_exporter_opentelemetry::Recorder,
    descriptions: Mutex<HashMap<KeyName, (Option<Unit>, SharedString)>>,
    counters: Mutex<HashMap<Key, Counter>>,
    gauges: Mutex<HashMap<Key, Gauge>>,
    histograms: Mutex<HashMap<Key, Histogram>>,
}

impl OtelRecorder {
    fn new(inner: metrics_exporter_opentelemetry::Recorder) -> Self {
        OtelRecorder {
            inner,
            descriptions: Mutex::default(),
            counters: Mutex::default(),
            gauges: Mutex::default(),
            histograms: Mutex::default(),
        }
    }

    fn remember(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (unit, description));
    }

    fn description(&self, key: &Key) -> Option<(KeyName, Option<Unit>, SharedString)> {
        let name = KeyName::from(key.name().to_owned());
        let descriptions = self
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (unit, description) = descriptions.get(&name)?;
        Some((name, *unit, description.clone()))
    }
}

fn cached<T: Clone>(cache: &Mutex<HashMap<Key, T>>, key: &Key, make: impl FnOnce() -> T) -> T {
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    cache.entry(key.clone()).or_insert_with(make).clone()
}

impl Recorder for OtelRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        cached(&self.counters, key, || {
            if let Some((name, unit, description)) = self.description(key) {
                self.inner.describe_counter(name, unit, description);
            }
            self.inner.register_counter(key, metadata)
        })
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        cached(&self.gauges, key, || {
            if let Some((name, unit, description)) = self.description(key) {
                self.inner.describe_gauge(name, unit, description);
            }
            self.inner.register_gauge(key, metadata)
        })
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        cached(&self.histograms, key, || {
            if let Some((name, unit, description)) = self.description(key) {
                self.inner.describe_histogram(name, unit, description);
            }
            self.inner.register_histogram(key, metadata)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_machinery_is_not_traced() {
        let cases = [
            ("opentelemetry_sdk", true),
            ("opentelemetry-otlp", true),
            ("opentelemetry", true),
            ("reqwest::blocking::client", true),
            ("hyper_util::client", true),
            ("exo_worker::claim", false),
            ("hyperion", false),
            ("towering", false),
        ];
        for (target, expected) in cases {
            assert_eq!(is_export_machinery(target), expected, "{target}");
        }
    }

    #[test]
    fn signal_urls_append_the_path_once() {
        let cases = [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://otel.example/otlp",
                "https://otel.example/otlp/v1/traces",
            ),
        ];
        for (base, expected) in cases {
            assert_eq!(signal_url(base, "v1/traces"), expected);
        }
    }
}
