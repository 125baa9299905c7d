//! The SDK's hop spans: one around each SEND or REQUEST this process makes, one around
//! each it handles, made only when the process exports traces
//! ([`reef_frames::trace::exporting`]). They join the trace the envelope carries (see
//! [`reef_frames::trace`]).

use reef_frames::trace::{TRACE_TARGET, continue_trace, follow};
use reef_proto::{Envelope, EnvelopeKind};
use tracing::{Span, field::Empty};

/// The span of sending `envelope` (a SEND or REQUEST): a child of the current span, or
/// of the trace context the caller put in its headers; its context goes into them.
pub(crate) fn outgoing(envelope: &mut Envelope) -> Span {
    let request = envelope.kind() == EnvelopeKind::Request;
    let span = tracing::trace_span!(
        target: TRACE_TARGET,
        "reef.call",
        otel.name = format!("{} {}", if request { "request" } else { "send" }, envelope.destination),
        otel.kind = if request { "client" } else { "producer" },
        otel.status_code = Empty,
        reef.destination = %envelope.destination,
    );
    continue_trace(&span, &mut envelope.headers);
    span
}

/// The span of handling `envelope` (a SEND or REQUEST that arrived): a child of the
/// span of the node that routed it, when it carries a trace context.
pub(crate) fn incoming(envelope: &Envelope) -> Span {
    let request = envelope.kind() == EnvelopeKind::Request;
    let span = tracing::trace_span!(
        target: TRACE_TARGET,
        "reef.handle",
        otel.name = format!("handle {}", envelope.destination),
        otel.kind = if request { "server" } else { "consumer" },
        otel.status_code = Empty,
        reef.origin = %envelope.origin,
    );
    follow(&span, &envelope.headers);
    span
}

/// Marks `span` as failed.
pub(crate) fn failed(span: &Span) {
    span.record("otel.status_code", "error");
}
