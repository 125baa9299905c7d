//! The reader of a client's attach stream: answers matched to their requests, pushes
//! and commands handed on, and what is owed when the stream ends.

use super::*;

impl Dispatch {
    pub(super) fn pending(&self) -> parking_lot::MutexGuard<'_, HashMap<u64, ReplySlot>> {
        self.pending.lock()
    }

    /// Handles what the reader can handle itself and returns the sends and requests
    /// that are for the container's handler.
    pub(super) fn dispatch_frame(&self, frame: Frame, has_handler: bool) -> Vec<Envelope> {
        let mut for_handler = Vec::new();
        for envelope in frame.envelopes {
            if let Some(envelope) = self.dispatch(envelope, has_handler) {
                for_handler.push(envelope);
            }
        }
        for_handler
    }

    pub(super) fn dispatch(&self, envelope: Envelope, has_handler: bool) -> Option<Envelope> {
        match envelope.kind() {
            EnvelopeKind::Reply => {
                self.answer(envelope.correlation_id, Ok(envelope));
            }
            EnvelopeKind::Error => {
                let correlation_id = envelope.correlation_id;
                let error = remote_error(&envelope);
                if !self.answer(correlation_id, Err(error)) {
                    self.undelivered.fetch_add(1, Relaxed);
                    let why = remote_error(&envelope).to_string();
                    *self.last_refusal.lock() = Some(why);
                    tracing::warn!(to = %envelope.origin, error = ?envelope.error, "message not delivered");
                }
            }
            // The answer to a barrier (`flush`).
            EnvelopeKind::Heartbeat if envelope.correlation_id != 0 => {
                self.answer(envelope.correlation_id, Ok(envelope));
            }
            EnvelopeKind::Heartbeat => {
                let answer = Envelope {
                    kind: EnvelopeKind::Heartbeat as i32,
                    correlation_id: envelope.id,
                    ..Default::default()
                };
                let _ = self.control.try_send(answer);
            }
            EnvelopeKind::Request if has_handler => match self.served.admit(&envelope) {
                Admission::Handle => return Some(envelope),
                Admission::Running => {
                    tracing::debug!(from = %envelope.origin, id = envelope.id, "retry of a request still running");
                }
                Admission::Answered(answer) => {
                    let _ = self.control.try_send(answer);
                }
            },
            EnvelopeKind::Send if has_handler => return Some(envelope),
            EnvelopeKind::Send | EnvelopeKind::Request => {
                if envelope.sequence != 0 {
                    let ack = Envelope {
                        kind: EnvelopeKind::Ack as i32,
                        correlation_id: envelope.sequence,
                        ..Default::default()
                    };
                    let _ = self.control.try_send(ack);
                }
                if envelope.kind() == EnvelopeKind::Request {
                    let refusal = error_envelope(
                        &envelope,
                        Code::Unimplemented,
                        "",
                        "this alias is a plain client and handles no requests",
                    );
                    let _ = self.control.try_send(refusal);
                } else {
                    tracing::debug!(from = %envelope.origin, "plain client dropped a message");
                }
            }
            EnvelopeKind::Progress => {
                if let Some(progress) = self
                    .pending()
                    .get(&envelope.correlation_id)
                    .and_then(|slot| slot.progress.as_ref())
                {
                    progress.send_replace(envelope.deadline_ms);
                }
            }
            EnvelopeKind::Cancel => self
                .served
                .cancel(&envelope.origin, envelope.correlation_id),
            EnvelopeKind::Ack | EnvelopeKind::Unspecified => {}
        }
        None
    }

    /// Completes request `id`; false when nobody waits for it.
    pub(super) fn answer(&self, id: u64, result: Result<Envelope, Error>) -> bool {
        match self.pending().remove(&id) {
            Some(slot) => {
                let _ = slot.answer.send(result);
                true
            }
            None => false,
        }
    }

    pub(super) fn fail_all(&self, reason: String) {
        let _ = self.lost.set(reason.clone());
        for (_, slot) in self.pending().drain() {
            let _ = slot.answer.send(Err(Error::Disconnected(reason.clone())));
        }
    }
}
