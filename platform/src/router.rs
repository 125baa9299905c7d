//! The routing core: what happens to each envelope a container sends.
//!
//! ```text
//!   container A ──Attach──▶ Inbound(A) ──SEND/REQUEST──▶ mailbox of B ──Attach──▶ B
//!                      ▲                                                        │
//!                      └──── mailbox of A ◀──REPLY/ERROR (by correlation) ◀─────┘
//! ```
//!
//! SEND and REQUEST go to the mailbox of their destination alias. A REQUEST is also
//! recorded in the caller's pending table with its deadline, so that REPLY / ERROR /
//! PROGRESS are accepted only from the callee and the caller hears DEADLINE_EXCEEDED
//! from the node when nobody answers. Whatever cannot be delivered is a dead letter and,
//! where someone is waiting, an ERROR to the sender.
//!
//! Every decision is synchronous: only a full mailbox makes the router wait (up to the
//! enqueue timeout), which is the backpressure a fast sender feels.

use std::{collections::HashMap, sync::Arc, time::Instant};

use reef_proto::{Envelope, EnvelopeKind, Error as WireError, ErrorCode, Frame};
use tokio::sync::mpsc::error::TrySendError;

use crate::{
    Alias, Attachment, Limits, NodeStats, Pending, PendingError, Registry, registry::HoldRefused,
};

/// Cached routes per inbound stream before the cache is reset.
const MAX_CACHED_ROUTES: usize = 4096;

/// Routes the envelopes one attached container sends.
pub struct Inbound {
    registry: Arc<Registry>,
    stats: Arc<NodeStats>,
    from: Arc<Attachment>,
    /// Destination mailboxes this stream used recently: the registry's lock is taken
    /// only on a miss or after the cached attachment closed.
    routes: HashMap<String, Arc<Attachment>>,
}

/// An envelope waiting for room in a full mailbox.
struct Blocked {
    receiver: Arc<Attachment>,
    envelope: Envelope,
    fallback: Fallback,
}

/// What to do with an envelope that cannot be queued.
#[derive(Clone, Copy)]
enum Fallback {
    /// Count a dead letter and tell the sender with an ERROR.
    Refuse,
    /// The same, after dropping the caller's pending entry for this request.
    RefuseRequest,
    /// Only count a dead letter (answers, and errors for the sender itself).
    DeadLetter,
}

/// Why an envelope could not be queued.
enum Undelivered {
    /// The receiver's stream is gone.
    Gone,
    /// The receiver's mailbox stayed full for the enqueue timeout.
    Full,
    /// Nobody has the alias.
    Unknown,
    /// The alias belongs to a stopped container.
    Stopped,
    /// The container is restarting and as much is held for it as its mailbox takes.
    HoldFull,
}

impl Inbound {
    /// Routes for the container behind `from`.
    pub fn new(registry: Arc<Registry>, stats: Arc<NodeStats>, from: Arc<Attachment>) -> Self {
        Self {
            registry,
            stats,
            from,
            routes: HashMap::new(),
        }
    }

    fn limits(&self) -> &Limits {
        self.registry.limits()
    }

    /// Routes every envelope of `frame`, in order.
    pub async fn route_frame(&mut self, frame: Frame) {
        let count = frame.envelopes.len() as u64;
        self.from.heard(count);
        for envelope in frame.envelopes {
            let mut blocked = self.route(envelope);
            while let Some(waiting) = blocked {
                blocked = self.wait_for_room(waiting).await;
            }
        }
        self.stats.add_frame(count);
    }

    fn route(&mut self, mut envelope: Envelope) -> Option<Blocked> {
        // The stream's alias is the origin, whatever the envelope claims, unless it
        // names a task container this stream's process hosts.
        if envelope.origin != self.from.alias().as_str()
            && (envelope.origin.is_empty()
                || !self
                    .registry
                    .is_hosted_by(&envelope.origin, self.from.alias()))
        {
            envelope.origin.clear();
            envelope.origin.push_str(self.from.alias().as_str());
        }
        let kind = envelope.kind();
        if envelope.payload.len() > self.limits().max_payload_bytes
            && kind != EnvelopeKind::Heartbeat
        {
            return self.refuse_oversized(envelope, kind);
        }
        match kind {
            EnvelopeKind::Send => self.route_send(envelope),
            EnvelopeKind::Request => self.route_request(envelope),
            EnvelopeKind::Reply | EnvelopeKind::Error | EnvelopeKind::Progress => {
                self.route_answer(envelope, kind)
            }
            EnvelopeKind::Heartbeat => self.answer_heartbeat(envelope),
            EnvelopeKind::Unspecified => {
                let message = "envelope kind is unspecified or unknown".to_owned();
                self.refuse(&envelope, ErrorCode::InvalidArgument, message)
            }
        }
    }

    fn route_send(&mut self, envelope: Envelope) -> Option<Blocked> {
        match self.resolve(&envelope.destination) {
            Some(receiver) => self.offer(receiver, envelope, Fallback::Refuse),
            None => self.hold(envelope, Fallback::Refuse),
        }
    }

    fn route_request(&mut self, mut envelope: Envelope) -> Option<Blocked> {
        let callee = self.resolve(&envelope.destination);
        let callee_alias = match &callee {
            Some(callee) => callee.alias().clone(),
            // Perhaps a supervised container that is restarting (or a task in one): the
            // request is held for it, under its deadline.
            None => match self.registry.owner(&envelope.destination) {
                Some(alias) => alias,
                None => return self.dead_letter_unknown(envelope),
            },
        };
        let limits = self.limits();
        let budget = match envelope.deadline_ms {
            0 => limits.default_request_timeout,
            ms => std::time::Duration::from_millis(ms.into()).min(limits.max_request_timeout),
        };
        let pending = Pending {
            deadline: Instant::now() + budget,
            callee: callee_alias,
        };
        let tracked = self.from.pending().insert(envelope.id, pending);
        match tracked {
            Ok(true) => self.from.deadlines_changed(),
            Ok(false) => {}
            Err(PendingError::Duplicate) => {
                let message = format!("request id {} is already in flight", envelope.id);
                return self.refuse(&envelope, ErrorCode::InvalidArgument, message);
            }
            Err(PendingError::Full) => {
                let message = format!(
                    "too many requests in flight (limit {})",
                    self.limits().max_pending_requests
                );
                return self.refuse(&envelope, ErrorCode::ResourceExhausted, message);
            }
        }
        envelope.deadline_ms = budget.as_millis().min(u32::MAX as u128) as u32;
        match callee {
            Some(callee) => self.offer(callee, envelope, Fallback::RefuseRequest),
            None => self.hold(envelope, Fallback::RefuseRequest),
        }
    }

    /// For an alias with no open stream: held if a supervised container owns it (it is
    /// starting or restarting), refused otherwise.
    fn hold(&mut self, envelope: Envelope, fallback: Fallback) -> Option<Blocked> {
        let destination = envelope.destination.clone();
        match self.registry.hold(&destination, envelope) {
            Ok(()) => None,
            Err((envelope, HoldRefused::Open(receiver))) => {
                self.offer(receiver, envelope, fallback)
            }
            Err((envelope, HoldRefused::Unknown)) => {
                self.undeliverable(envelope, fallback, Undelivered::Unknown)
            }
            Err((envelope, HoldRefused::Stopped)) => {
                self.undeliverable(envelope, fallback, Undelivered::Stopped)
            }
            Err((envelope, HoldRefused::Full(_))) => {
                self.undeliverable(envelope, fallback, Undelivered::HoldFull)
            }
        }
    }

    /// REPLY, ERROR and PROGRESS go back to the caller only while it waits for them.
    fn route_answer(&mut self, envelope: Envelope, kind: EnvelopeKind) -> Option<Blocked> {
        let Some(caller) = self.resolve(&envelope.destination) else {
            tracing::debug!(to = %envelope.destination, "answer for a caller that is gone");
            self.stats.add_dead_letters(1);
            return None;
        };
        let callee = self.from.alias().as_str();
        let awaited = if kind == EnvelopeKind::Progress {
            caller.pending().awaits(envelope.correlation_id, callee)
        } else {
            caller
                .pending()
                .complete(envelope.correlation_id, callee)
                .is_some()
        };
        if !awaited {
            tracing::debug!(to = %envelope.destination, id = envelope.correlation_id, "late or unexpected answer");
            self.stats.add_dead_letters(1);
            return None;
        }
        self.offer(caller, envelope, Fallback::DeadLetter)
    }

    /// A container-initiated heartbeat (correlation 0) is answered on the data lane, in
    /// order behind everything already queued for the container, so it doubles as a
    /// barrier (`Client::flush`). An answer to the node's own heartbeat needs nothing:
    /// hearing it was the point.
    fn answer_heartbeat(&mut self, envelope: Envelope) -> Option<Blocked> {
        if envelope.correlation_id != 0 {
            return None;
        }
        let answer = Envelope {
            kind: EnvelopeKind::Heartbeat as i32,
            correlation_id: envelope.id,
            destination: envelope.origin,
            ..Default::default()
        };
        self.offer(self.from.clone(), answer, Fallback::DeadLetter)
    }

    fn resolve(&mut self, alias: &str) -> Option<Arc<Attachment>> {
        if let Some(cached) = self.routes.get(alias) {
            if !cached.is_closed() {
                return Some(cached.clone());
            }
            self.routes.remove(alias);
        }
        let found = self.registry.lookup(alias)?;
        if self.routes.len() >= MAX_CACHED_ROUTES {
            self.routes.clear();
        }
        self.routes.insert(alias.to_owned(), found.clone());
        Some(found)
    }

    /// Queues `envelope` for `receiver` if there is room; a full mailbox hands it back.
    fn offer(
        &mut self,
        receiver: Arc<Attachment>,
        envelope: Envelope,
        fallback: Fallback,
    ) -> Option<Blocked> {
        match receiver.data().try_send(envelope) {
            Ok(()) => None,
            Err(TrySendError::Full(envelope)) => Some(Blocked {
                receiver,
                envelope,
                fallback,
            }),
            Err(TrySendError::Closed(envelope)) => self.redirect_closed(envelope, fallback),
        }
    }

    /// The receiver's stream closed under us: a SEND or REQUEST for a supervised
    /// container waits for its next process; anything else is undeliverable.
    fn redirect_closed(&mut self, envelope: Envelope, fallback: Fallback) -> Option<Blocked> {
        if let Fallback::DeadLetter = fallback {
            return self.undeliverable(envelope, fallback, Undelivered::Gone);
        }
        let destination = envelope.destination.clone();
        match self.registry.hold(&destination, envelope) {
            Ok(()) => None,
            Err((envelope, HoldRefused::Open(receiver))) => {
                self.offer(receiver, envelope, fallback)
            }
            Err((envelope, _)) => self.undeliverable(envelope, fallback, Undelivered::Gone),
        }
    }

    /// Waits up to the enqueue timeout for room; what follows may block in turn.
    async fn wait_for_room(&mut self, blocked: Blocked) -> Option<Blocked> {
        let deadline = tokio::time::Instant::now() + self.limits().enqueue_timeout;
        let Blocked {
            receiver,
            mut envelope,
            fallback,
        } = blocked;
        loop {
            let room =
                tokio::time::timeout_at(deadline, reef_proto::room_for_batch(receiver.data()))
                    .await;
            let why = match room {
                Ok(Ok(())) => match receiver.data().try_send(envelope) {
                    Ok(()) => return None,
                    // Another sender took the room first: wait again.
                    Err(TrySendError::Full(back)) => {
                        envelope = back;
                        continue;
                    }
                    Err(TrySendError::Closed(back)) => {
                        envelope = back;
                        Undelivered::Gone
                    }
                },
                Ok(Err(_)) => Undelivered::Gone,
                Err(_) => Undelivered::Full,
            };
            return self.undeliverable(envelope, fallback, why);
        }
    }

    fn undeliverable(
        &mut self,
        envelope: Envelope,
        fallback: Fallback,
        why: Undelivered,
    ) -> Option<Blocked> {
        self.stats.add_dead_letters(1);
        if let Fallback::DeadLetter = fallback {
            return None;
        }
        if let Fallback::RefuseRequest = fallback {
            self.from.pending().forget(envelope.id);
        }
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
        self.refuse(&envelope, code, message)
    }

    fn dead_letter_unknown(&mut self, envelope: Envelope) -> Option<Blocked> {
        self.stats.add_dead_letters(1);
        let message = format!("no container is registered as {:?}", envelope.destination);
        self.refuse(&envelope, ErrorCode::NotFound, message)
    }

    /// An oversized SEND or REQUEST is refused to its sender; an oversized answer
    /// becomes an ERROR for the caller that waits for it.
    fn refuse_oversized(&mut self, envelope: Envelope, kind: EnvelopeKind) -> Option<Blocked> {
        self.stats.add_dead_letters(1);
        let message = format!(
            "payload of {} bytes exceeds the limit of {} bytes",
            envelope.payload.len(),
            self.limits().max_payload_bytes
        );
        match kind {
            EnvelopeKind::Reply | EnvelopeKind::Error | EnvelopeKind::Progress => {
                let error = Envelope {
                    kind: EnvelopeKind::Error as i32,
                    correlation_id: envelope.correlation_id,
                    origin: envelope.origin,
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
    fn refuse(&mut self, envelope: &Envelope, code: ErrorCode, message: String) -> Option<Blocked> {
        tracing::debug!(from = %self.from.alias(), to = %envelope.destination, ?code, %message, "refused");
        let error = node_error(envelope, self.from.alias(), code, message);
        self.offer(self.from.clone(), error, Fallback::DeadLetter)
    }
}

/// An ERROR from the node to `to`, answering `envelope`.
pub(crate) fn node_error(
    envelope: &Envelope,
    to: &Alias,
    code: ErrorCode,
    message: String,
) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Error as i32,
        correlation_id: envelope.id,
        origin: envelope.destination.clone(),
        destination: to.to_string(),
        error: Some(Box::new(WireError {
            code: code as i32,
            r#type: String::new(),
            message,
        })),
        ..Default::default()
    }
}
