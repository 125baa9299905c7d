//! W3C trace context in envelope headers: how one trace follows a message across hops.
//!
//! Every hop (the sender's SDK, each node that routes the envelope, the receiver's SDK)
//! opens a span under [`TRACE_TARGET`]; [`continue_trace`] makes it a child of the
//! context the envelope carries (`traceparent`, `tracestate`) and writes the span's own
//! context back, so the next hop's span is its child. The spans are made only where a
//! process exports traces ([`exporting`], set by `reef_telemetry::init`): elsewhere
//! the headers pass through untouched.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of reef's hop spans; exporting turns it on at TRACE level.
pub const TRACE_TARGET: &str = "reef::trace";
/// The W3C header that names the sender's span.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Whether this process exports traces; see [`exporting`].
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces. Hop spans are made only then: the check lets
/// hot paths skip even a disabled span and its future wrapper.
pub fn exporting() -> bool {
    EXPORTING.load(Relaxed)
}

/// Called by whatever installs the exporter (`reef_telemetry::init`).
pub fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Relaxed);
}

/// Makes `span` a child of the trace context in `headers` (when there is one; else it
/// stays a child of the current span), then puts the span's context into `headers`.
/// Does nothing to a disabled span.
pub fn continue_trace(span: &tracing::Span, headers: &mut BTreeMap<String, String>) {
    if span.is_disabled() {
        return;
    }
    follow(span, headers);
    TraceContextPropagator::new().inject_context(&span.context(), &mut Headers(headers));
}

/// Makes `span` a child of the trace context in `headers`, when there is one.
pub fn follow(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if span.is_disabled() || !headers.contains_key(TRACEPARENT_HEADER) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&ReadHeaders(headers));
    if parent.span().span_context().is_valid() {
        // Fails only for a span already started, which a fresh span is not.
        let _ = span.set_parent(parent);
    }
}

/// An envelope's headers as the propagator writes them.
struct Headers<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// An envelope's headers as the propagator reads them.
struct ReadHeaders<'a>(&'a BTreeMap<String, String>);

impl Extractor for ReadHeaders<'_> {
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

    #[test]
    fn a_disabled_span_leaves_the_headers_alone() {
        let mut headers = BTreeMap::from([(
            TRACEPARENT_HEADER.to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]);
        let before = headers.clone();
        continue_trace(&tracing::Span::none(), &mut headers);
        assert_eq!(headers, before);
    }
}
