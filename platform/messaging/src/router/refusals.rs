//! Envelopes the node cannot deliver: dead letters, and ERROR answers to their
//! senders.

use super::*;

impl Inbound {
    pub(super) fn undeliverable(
        &mut self,
        envelope: Envelope,
        fallback: Fallback,
        why: Undelivered,
    ) -> Option<Blocked> {
        let (code, message) = match why {
            Undelivered::Gone => (
                ErrorCode::NotFound,
                format!("{:?} detached before delivery", envelope.destination),
            ),
            Undelivered::Full => (
                ErrorCode::ResourceExhausted,
                format!(
                    "the mailbox of {:?} stayed full for {:?}",
                    envelope.destination,
                    self.limits().enqueue_timeout
                ),
            ),
            Undelivered::Unknown => (
                ErrorCode::NotFound,
                format!("no container is registered as {:?}", envelope.destination),
            ),
            Undelivered::Stopped => (
                ErrorCode::Unavailable,
                format!("container {:?} is stopped", envelope.destination),
            ),
            Undelivered::HoldFull => (
                ErrorCode::ResourceExhausted,
                format!(
                    "{:?} is restarting and its mailbox is full",
                    envelope.destination
                ),
            ),
        };
        self.undeliverable_because(envelope, fallback, code, message)
    }

    /// Records a dead letter and, unless `fallback` says not to, tells the sender.
    pub(super) fn undeliverable_because(
        &mut self,
        envelope: Envelope,
        fallback: Fallback,
        code: ErrorCode,
        message: String,
    ) -> Option<Blocked> {
        self.stats.dead_letter(&envelope, message.clone());
        match fallback {
            Fallback::DeadLetter => return None,
            Fallback::RefuseRequest => drop(self.from.pending().forget(envelope.id)),
            Fallback::Refuse => {}
        }
        self.refuse(&envelope, code, message)
    }

    /// An oversized SEND or REQUEST is refused to its sender; an oversized answer
    /// becomes an ERROR for the caller that waits for it.
    pub(super) fn refuse_oversized(
        &mut self,
        envelope: Envelope,
        kind: EnvelopeKind,
    ) -> Option<Blocked> {
        let message = format!(
            "payload of {} bytes exceeds the limit of {} bytes",
            envelope.payload.len(),
            self.limits().max_payload_bytes
        );
        self.stats.dead_letter(&envelope, message.clone());
        match kind {
            EnvelopeKind::Reply | EnvelopeKind::Error | EnvelopeKind::Progress => {
                let error = Envelope {
                    kind: EnvelopeKind::Error as i32,
                    correlation_id: envelope.correlation_id,
                    origin: self.registry.node_origin().to_owned(),
                    destination: envelope.destination,
                    error: Some(Box::new(WireError {
                        code: ErrorCode::ResourceExhausted as i32,
                        r#type: String::new(),
                        message,
                    })),
                    ..Default::default()
                };
                self.route_answer(error, EnvelopeKind::Error)
            }
            _ => self.refuse(&envelope, ErrorCode::ResourceExhausted, message),
        }
    }

    /// Answers `envelope`'s sender with an ERROR correlated to it.
    pub(super) fn refuse(
        &mut self,
        envelope: &Envelope,
        code: ErrorCode,
        message: String,
    ) -> Option<Blocked> {
        tracing::debug!(from = %self.from.alias(), to = %envelope.destination, ?code, %message, "refused");
        // Over a link, the sender is the origin behind it.
        let sender = match self.from.link() {
            Some(_) => Alias::parse(&envelope.origin).unwrap_or_else(|_| self.from.alias().clone()),
            None => self.from.alias().clone(),
        };
        let error = node_error(
            envelope,
            &sender,
            code,
            message,
            self.registry.node_origin(),
        );
        self.offer(self.from.clone(), error, Fallback::DeadLetter)
    }
}
