//! A message or request as a handler (and a client answering PROGRESS) sees it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use reef_proto::Envelope;

use crate::Cancellation;

/// A message or request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Alias of the sender (set by the node, so it can be trusted).
    pub origin: String,
    /// The application data.
    pub payload: Bytes,
    /// MIME type of the payload, if the sender gave one.
    pub content_type: String,
    /// Metadata such as trace context.
    pub headers: BTreeMap<String, String>,
    /// For requests: the time left to answer. Requests the handler makes meanwhile
    /// get at most this much time (the deadline propagates).
    pub deadline: Option<Duration>,
    /// The envelope's id: for a request, what [`crate::Client::progress`] refers to.
    pub id: u64,
    /// For requests: whether the caller still waits.
    pub cancellation: Cancellation,
    /// Acknowledged mode ([`Client::send_acked`]): the message's number in this
    /// container's sequence, the same on every delivery of it; 0 otherwise.
    pub sequence: u64,
    /// Acknowledged mode: the message is delivered again because a previous process or
    /// stream of this container did not acknowledge it (it may have handled it).
    pub redelivered: bool,
    /// For requests: headers for the reply, shared with the dispatcher that sends it.
    pub(crate) reply_headers: Arc<parking_lot::Mutex<BTreeMap<String, String>>>,
}

impl Message {
    /// For requests: sets a header on the reply (the caller sees it with
    /// [`Client::call`]; `reef-gateway` takes `http.status` and `http.header.NAME` as the
    /// HTTP response's status and headers).
    pub fn set_reply_header(&self, key: impl Into<String>, value: impl Into<String>) {
        self.reply_headers.lock().insert(key.into(), value.into());
    }
}

impl From<Envelope> for Message {
    fn from(envelope: Envelope) -> Self {
        Self {
            deadline: (envelope.deadline_ms > 0)
                .then(|| Duration::from_millis(envelope.deadline_ms.into())),
            id: envelope.id,
            sequence: envelope.sequence,
            redelivered: envelope.redelivered,
            origin: envelope.origin,
            payload: envelope.payload,
            content_type: envelope.content_type,
            headers: envelope.headers,
            cancellation: Cancellation::default(),
            reply_headers: Arc::default(),
        }
    }
}
