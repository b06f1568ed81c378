//! The in-process registry, rendered in the Prometheus text format.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::record::{self, MetricKind, TASK_SECONDS_BUCKETS};

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A `metrics` recorder that keeps every metric in memory and renders it in
/// the Prometheus text format.
///
/// Names follow Prometheus conventions: dots become underscores, counters
/// end in `_total` and histograms in seconds end in `_seconds`
/// (`exo.distributed.task.duration` renders as
/// `exo_distributed_task_duration_seconds`). Histograms are real Prometheus
/// histograms with the buckets of [`record::METRICS`]; any other histogram
/// uses [`TASK_SECONDS_BUCKETS`].
///
/// [`install`](crate::install) installs one globally. Tests and tools can
/// use one locally with `metrics::with_local_recorder`.
#[derive(Debug)]
pub struct MetricsRecorder {
    inner: PrometheusRecorder,
}

impl MetricsRecorder {
    /// A recorder that already knows every exo metric's description and
    /// unit, so its names are right even before
    /// [`describe_metrics`](crate::record::describe_metrics) runs.
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets(TASK_SECONDS_BUCKETS)
            .expect("the default buckets are not empty");
        for spec in record::METRICS {
            if spec.kind == MetricKind::Histogram {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(spec.name.to_owned()), spec.buckets)
                    .expect("every histogram has buckets");
            }
        }
        let recorder = MetricsRecorder {
            inner: builder.build_recorder(),
        };
        metrics::with_local_recorder(&recorder.inner, record::describe_metrics);
        recorder
    }

    /// A handle that renders what this recorder holds.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            inner: self.inner.handle(),
        }
    }
}

impl Default for MetricsRecorder {
    fn default() -> Self {
        MetricsRecorder::new()
    }
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

/// A cheap, cloneable handle to a [`MetricsRecorder`]'s contents.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
}

impl MetricsHandle {
    /// Every metric in the Prometheus text format
    /// ([`PROMETHEUS_CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.inner.render()
    }

    /// Moves recorded histogram samples into their buckets. Rendering does
    /// this too; [`install`](crate::install) also runs it every few seconds
    /// so that samples do not pile up between scrapes.
    pub fn run_upkeep(&self) {
        self.inner.run_upkeep();
    }
}
