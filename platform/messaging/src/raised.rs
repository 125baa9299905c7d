//! Envelopes the node raises itself, rather than routes.

use reef_core::Alias;
use reef_proto::{Envelope, EnvelopeKind, Error as WireError, ErrorCode};

/// An ERROR from the node to `to`, answering `envelope`; its origin is the node's
/// (`node_origin`, see [`crate::Registry::node_origin`]), not the destination's.
pub(crate) fn node_error(
    envelope: &Envelope,
    to: &Alias,
    code: ErrorCode,
    message: String,
    node_origin: &str,
) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Error as i32,
        correlation_id: envelope.id,
        origin: node_origin.to_owned(),
        destination: to.to_string(),
        error: Some(Box::new(WireError {
            code: code as i32,
            r#type: String::new(),
            message,
        })),
        ..Default::default()
    }
}
