//! W3C trace context through `metadata.trace_context`.
//!
//! The carrier is a JSON object of strings, the same one the reference
//! writes with OpenTelemetry's `inject`: `traceparent`, `tracestate` when
//! there is one, and `baggage` when there is any. The client injects the
//! context of its submit span into the task's metadata; the worker makes its
//! execute span a child of that context, so one trace covers both sides.
//!
//! Both directions go through the globally installed OpenTelemetry
//! propagator ([`install`](crate::install) with OTLP sets TraceContext plus
//! Baggage). Without an OpenTelemetry pipeline, spans carry no OpenTelemetry
//! context and the propagator is a no-op, so injecting writes nothing and
//! setting a parent changes nothing; neither is an error.

use std::collections::BTreeMap;

use opentelemetry::{
    Context,
    baggage::BaggageExt,
    global,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use serde_json::{Map, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata key of the carrier.
pub const TRACE_CONTEXT_KEY: &str = "trace_context";

/// Writes the current span's trace context into `metadata["trace_context"]`.
///
/// Returns false, and leaves `metadata` untouched, when there is nothing to
/// propagate (no OpenTelemetry pipeline, or the span is disabled).
pub fn inject_trace_context(metadata: &mut Map<String, Value>) -> bool {
    inject_span_context(&tracing::Span::current(), metadata)
}

/// Writes `span`'s trace context into `metadata["trace_context"]`; see
/// [`inject_trace_context`].
pub fn inject_span_context(span: &tracing::Span, metadata: &mut Map<String, Value>) -> bool {
    let carrier = trace_context_carrier(&span.context());
    if carrier.is_empty() {
        return false;
    }
    let carrier = carrier
        .into_iter()
        .map(|(key, value)| (key, Value::String(value)))
        .collect();
    metadata.insert(TRACE_CONTEXT_KEY.to_owned(), Value::Object(carrier));
    true
}

/// The carrier for an OpenTelemetry context, as the global propagator
/// writes it.
pub fn trace_context_carrier(context: &Context) -> BTreeMap<String, String> {
    let mut carrier = BTreeMap::new();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut CarrierWriter(&mut carrier));
    });
    carrier
}

/// Makes `carrier`'s trace the parent of `span`, which must not have been
/// entered yet.
///
/// Returns true when the parent was set. It is false when the carrier holds
/// no valid context, when no OpenTelemetry layer is installed, or when the
/// span was already entered; the span then keeps its own parent.
pub fn set_parent_from(span: &tracing::Span, carrier: &BTreeMap<String, String>) -> bool {
    if carrier.is_empty() {
        return false;
    }
    let context =
        global::get_text_map_propagator(|propagator| propagator.extract(&CarrierReader(carrier)));
    if !context.span().span_context().is_valid() && context.baggage().is_empty() {
        return false;
    }
    span.set_parent(context).is_ok()
}

struct CarrierWriter<'a>(&'a mut BTreeMap<String, String>);

impl Injector for CarrierWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct CarrierReader<'a>(&'a BTreeMap<String, String>);

impl Extractor for CarrierReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // No pipeline is installed in the unit tests, so both directions must be
    // quiet no-ops.
    #[test]
    fn without_a_pipeline_nothing_is_injected_and_no_parent_is_set() {
        let span = tracing::info_span!("submit");
        let _entered = span.enter();
        let mut metadata = Map::new();
        metadata.insert("memory".into(), Value::Bool(true));
        assert!(!inject_trace_context(&mut metadata));
        assert_eq!(metadata.len(), 1, "metadata was changed: {metadata:?}");

        let carrier = BTreeMap::from([(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]);
        let execute = tracing::info_span!("execute");
        assert!(!set_parent_from(&execute, &carrier));
        assert!(!set_parent_from(&execute, &BTreeMap::new()));
    }
}
