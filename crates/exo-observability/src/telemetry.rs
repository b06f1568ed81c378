//! [`install`]: the one place where a binary sets up logs, metrics and
//! traces for the whole process.

use std::{fmt, io::IsTerminal, str::FromStr, sync::mpsc, thread, time::Duration};

use tracing_subscriber::{EnvFilter, Layer, Registry, layer::Layered, layer::SubscriberExt};

use crate::{
    error::{Error, Result},
    prometheus::{MetricsHandle, MetricsRecorder},
    record,
};

/// How often histogram samples are moved into their buckets when nobody
/// scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The filter used when neither the config nor `RUST_LOG` gives one:
/// `info`, with the OpenTelemetry SDK's start-up chatter held back to
/// warnings (export failures still show).
pub const DEFAULT_LOG_FILTER: &str = "info,opentelemetry=warn";

/// How log lines are written (always to standard error, so that standard
/// output stays clean for `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Multi-line, coloured, for reading at a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
    /// One short line per event.
    #[default]
    Compact,
}

impl LogFormat {
    /// `pretty`, `json` or `compact`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
            LogFormat::Compact => "compact",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            "compact" => Ok(LogFormat::Compact),
            other => Err(format!(
                "unknown log format `{other}`; expected pretty, json or compact"
            )),
        }
    }
}

/// What [`install`] sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// The `service.name` of exported telemetry (`OTEL_SERVICE_NAME` wins
    /// when set).
    pub service_name: String,
    /// How log lines look.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info,exo_broker=debug`. `None` reads
    /// `RUST_LOG`, and falls back to [`DEFAULT_LOG_FILTER`].
    pub log_filter: Option<String>,
    /// Install the in-process metrics registry as the global `metrics`
    /// recorder, so that [`Telemetry::render_metrics`] and `/metrics` have
    /// something to show.
    pub metrics: bool,
    /// Export traces (and metrics, when `metrics` is on) over OTLP even if no
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variable is set. Export also starts
    /// when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Needs the `otlp`
    /// feature.
    pub otlp: bool,
    /// The OTLP/HTTP base URL, e.g. `http://collector:4318`; `/v1/traces`
    /// and `/v1/metrics` are appended. Setting it requests OTLP export.
    /// `None` uses the `OTEL_EXPORTER_OTLP_*` variables.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// Compact logs filtered by `RUST_LOG`, the metrics registry on, and OTLP
    /// as the environment says.
    pub fn new(service_name: impl Into<String>) -> Self {
        TelemetryConfig {
            service_name: service_name.into(),
            log_format: LogFormat::default(),
            log_filter: None,
            metrics: true,
            otlp: false,
            otlp_endpoint: None,
        }
    }

    /// True when OTLP export is asked for, by this config or by the standard
    /// environment variables (unless `OTEL_SDK_DISABLED=true`).
    pub fn otlp_requested(&self) -> bool {
        if env_flag("OTEL_SDK_DISABLED") {
            return false;
        }
        self.otlp
            || self.otlp_endpoint.is_some()
            || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    }
}

pub(crate) fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| !value.trim().is_empty())
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"))
}

/// The subscriber that the boxed layers sit on.
pub(crate) type Base = Layered<EnvFilter, Registry>;
/// A layer on [`Base`].
pub(crate) type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// What [`install`] set up. Keep it alive for the life of the process and
/// call [`Telemetry::shutdown`] before exiting, so that buffered spans and
/// metrics are flushed. Dropping it does the same, ignoring errors.
#[derive(Debug)]
pub struct Telemetry {
    metrics: Option<MetricsHandle>,
    upkeep: Option<Upkeep>,
    #[cfg(feature = "otlp")]
    otlp: Option<crate::otlp::Pipeline>,
}

impl Telemetry {
    /// The metrics registry, for `/metrics`; `None` when metrics are off.
    pub fn metrics(&self) -> Option<MetricsHandle> {
        self.metrics.clone()
    }

    /// Every metric in the Prometheus text format; empty when metrics are
    /// off.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .as_ref()
            .map(MetricsHandle::render)
            .unwrap_or_default()
    }

    /// True when traces (and metrics) are exported over OTLP.
    pub fn otlp_enabled(&self) -> bool {
        #[cfg(feature = "otlp")]
        {
            self.otlp.is_some()
        }
        #[cfg(not(feature = "otlp"))]
        {
            false
        }
    }

    /// Flushes and stops the exporters. With OTLP this blocks while the
    /// last batch is sent (a few seconds at most when the collector is
    /// unreachable), so call it at the very end of `main`.
    pub fn shutdown(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        if let Some(upkeep) = self.upkeep.take() {
            upkeep.stop();
        }
        #[cfg(feature = "otlp")]
        if let Some(mut pipeline) = self.otlp.take() {
            return pipeline.shutdown();
        }
        Ok(())
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Errors were already reported by `shutdown` when it was called;
        // here there is no one left to tell.
        let _ = self.close();
    }
}

/// Sets up the process's telemetry: a `tracing` subscriber writing to
/// standard error, the global `metrics` recorder, and, with the `otlp`
/// feature and when requested, OTLP export of traces and metrics with the
/// W3C TraceContext and Baggage propagators.
///
/// Only binaries call this, once, early in `main`. A second call fails with
/// [`Error::AlreadyInstalled`].
pub fn install(config: TelemetryConfig) -> Result<Telemetry> {
    let filter = log_filter(config.log_filter.as_deref())?;
    let otlp_requested = config.otlp_requested();

    #[cfg(not(feature = "otlp"))]
    if config.otlp || config.otlp_endpoint.is_some() {
        return Err(Error::OtlpUnavailable);
    }

    #[cfg(feature = "otlp")]
    let pipeline = if otlp_requested {
        Some(crate::otlp::Pipeline::build(&config)?)
    } else {
        None
    };

    #[cfg(feature = "otlp")]
    let otel_layer = pipeline
        .as_ref()
        .and_then(crate::otlp::Pipeline::tracing_layer);
    #[cfg(not(feature = "otlp"))]
    let otel_layer: Option<BoxedLayer> = None;
    let layers: Vec<BoxedLayer> = std::iter::once(fmt_layer(config.log_format))
        .chain(otel_layer)
        .collect();
    let subscriber = tracing_subscriber::registry().with(filter).with(layers);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| Error::AlreadyInstalled("tracing subscriber"))?;

    #[cfg(feature = "otlp")]
    if let Some(pipeline) = &pipeline {
        pipeline.install_globals();
    }

    let (metrics, upkeep) = if config.metrics {
        let recorder = MetricsRecorder::new();
        let handle = recorder.handle();
        #[cfg(feature = "otlp")]
        match pipeline
            .as_ref()
            .and_then(crate::otlp::Pipeline::metrics_recorder)
        {
            Some(otel) => metrics::set_global_recorder(
                metrics_util::layers::FanoutBuilder::default()
                    .add_recorder(recorder)
                    .add_recorder(otel)
                    .build(),
            )
            .map_err(|_| Error::AlreadyInstalled("metrics recorder"))?,
            None => metrics::set_global_recorder(recorder)
                .map_err(|_| Error::AlreadyInstalled("metrics recorder"))?,
        }
        #[cfg(not(feature = "otlp"))]
        metrics::set_global_recorder(recorder)
            .map_err(|_| Error::AlreadyInstalled("metrics recorder"))?;
        record::describe_metrics();
        let upkeep = Upkeep::start(handle.clone());
        (Some(handle), upkeep)
    } else {
        (None, None)
    };

    if otlp_requested && cfg!(not(feature = "otlp")) {
        tracing::warn!(
            "an OTEL_EXPORTER_OTLP_*ENDPOINT variable is set, but this build has no OTLP \
             support (feature `otlp`); traces and metrics stay local"
        );
    }
    tracing::debug!(
        service = %config.service_name,
        log_format = %config.log_format,
        metrics = config.metrics,
        otlp = otlp_requested && cfg!(feature = "otlp"),
        "telemetry installed"
    );

    Ok(Telemetry {
        metrics,
        upkeep,
        #[cfg(feature = "otlp")]
        otlp: pipeline,
    })
}

/// Parses a log filter: `configured` when given, else `RUST_LOG`, else
/// [`DEFAULT_LOG_FILTER`].
pub(crate) fn log_filter(configured: Option<&str>) -> Result<EnvFilter> {
    let from_env = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .filter(|value| !value.trim().is_empty());
    let filter = configured
        .map(str::to_owned)
        .or(from_env)
        .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned());
    EnvFilter::builder()
        .parse(&filter)
        .map_err(|error| Error::InvalidLogFilter {
            reason: error.to_string(),
            filter,
        })
}

fn fmt_layer(format: LogFormat) -> BoxedLayer {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Pretty => layer.pretty().boxed(),
        LogFormat::Json => layer
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Compact => layer.compact().boxed(),
    }
}

/// A thread that moves histogram samples into buckets every few seconds.
#[derive(Debug)]
struct Upkeep {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Upkeep {
    fn start(handle: MetricsHandle) -> Option<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned = thread::Builder::new()
            .name("exo-metrics-upkeep".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(UPKEEP_INTERVAL)
                {
                    handle.run_upkeep();
                }
            });
        match spawned {
            Ok(thread) => Some(Upkeep { stop, thread }),
            Err(error) => {
                // Rendering drains the samples too, so metrics still work;
                // they only pile up between scrapes.
                tracing::warn!(%error, "cannot start the metrics upkeep thread");
                None
            }
        }
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_and_print() {
        for format in [LogFormat::Pretty, LogFormat::Json, LogFormat::Compact] {
            assert_eq!(format.as_str().parse::<LogFormat>(), Ok(format));
        }
        let error = "yaml".parse::<LogFormat>().expect_err("unknown format");
        assert!(error.contains("pretty, json or compact"), "{error}");
    }

    #[test]
    fn log_filters_are_validated() {
        let cases = [
            (None, true),
            (Some(DEFAULT_LOG_FILTER), true),
            (Some("info"), true),
            (Some("warn,exo_broker=debug"), true),
            (Some("exo_broker=loud"), false),
        ];
        for (filter, valid) in cases {
            let result = log_filter(filter);
            assert_eq!(result.is_ok(), valid, "{filter:?}: {result:?}");
        }
        match log_filter(Some("exo_broker=loud")) {
            Err(Error::InvalidLogFilter { filter, .. }) => assert_eq!(filter, "exo_broker=loud"),
            other => panic!("expected InvalidLogFilter, got {other:?}"),
        }
    }

    #[cfg(not(feature = "otlp"))]
    #[test]
    fn otlp_without_the_feature_is_an_error() {
        let mut config = TelemetryConfig::new("exo-test");
        config.otlp = true;
        assert!(matches!(install(config), Err(Error::OtlpUnavailable)));
    }

    #[test]
    fn config_defaults() {
        let config = TelemetryConfig::new("exo-worker");
        assert_eq!(config.service_name, "exo-worker");
        assert_eq!(config.log_format, LogFormat::Compact);
        assert!(config.metrics);
        let mut explicit = config.clone();
        explicit.otlp_endpoint = Some("http://127.0.0.1:4318".into());
        assert!(explicit.otlp_requested() || env_flag("OTEL_SDK_DISABLED"));
    }
}
