//! The routing core: what happens to each envelope a container sends.
//!
//! ```text
//!   container A ──Attach──▶ Inbound(A) ──SEND/REQUEST──▶ mailbox of B ──Attach──▶ B
//!                      ▲                                                        │
//!                      └──── mailbox of A ◀──REPLY/ERROR (by correlation) ◀─────┘
//! ```
//!
//! SEND and REQUEST pass the input rules, have a `group:NAME` destination resolved to
//! a member by the group's strategy, pass the output rules, and go to the mailbox of
//! their destination alias. A REQUEST is also
//! recorded in the caller's pending table with its deadline, so that REPLY / ERROR /
//! PROGRESS are accepted only from the callee and the caller hears DEADLINE_EXCEEDED
//! from the node when nobody answers. Whatever cannot be delivered is a dead letter and,
//! where someone is waiting, an ERROR to the sender.
//!
//! Every decision is synchronous: only a full mailbox makes the router wait (up to the
//! enqueue timeout), which is the backpressure a fast sender feels.

use std::{collections::HashMap, sync::Arc};

use reef_access::{Access, Action, Policies, Principal};
use reef_core::Alias;
use reef_frames::trace::{self, TRACE_TARGET, TRACEPARENT_HEADER, continue_trace};
use reef_proto::{Envelope, EnvelopeKind, Error as WireError, ErrorCode, Frame};
use reef_routing::{
    Availability, GROUP_PREFIX, Group, Overflow, Refusal, Routing, RuleSet, Stage, Strategy,
    TAP_HEADER,
};
use tokio::time::Instant;

use crate::{
    Attachment, Limits, NodeStats, Pending, PendingError, Registry, acks::NotQueued,
    raised::node_error, registry::HoldRefused,
};

mod delivery;
mod groups;
mod refusals;
mod requests;
#[cfg(test)]
mod tests;

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
    /// The registry's route changes when `routes` was last valid.
    routes_version: u64,
    routing: Arc<Routing>,
    /// The rules in force and their version, re-read only when the version moves.
    rules: Arc<RuleSet>,
    rules_version: u64,
    /// The access policies in force (`None`: open) and their version, likewise.
    access: Arc<Access>,
    policies: Option<Arc<Policies>>,
    policies_version: u64,
    /// Who the stream's sends are checked as.
    sender: Sender,
    /// `container:ORIGIN`, rebuilt per envelope without allocating.
    origin_principal: String,
    /// Copies (broadcasts, taps) that found a full mailbox: waited for before the next
    /// envelope, like the envelope itself, so that order per receiver holds.
    blocked: Vec<Blocked>,
    /// State of the RANDOM strategy's generator (xorshift).
    random: u64,
}

/// Who an attach stream's sends are checked as: the certificate that opened the stream
/// when it names a person (a client's sends are its own, an admin's are not checked),
/// else the container the envelope comes from.
enum Sender {
    Unchecked,
    Client(String),
    Origin,
}

/// An envelope waiting for room: in a full mailbox, a full acknowledgement log, or the
/// full hold of a restarting receiver.
struct Blocked {
    envelope: Envelope,
    fallback: Fallback,
    /// What it waits for.
    wait: Wait,
}

/// What a blocked envelope waits for.
enum Wait {
    /// Room in the receiver's mailbox.
    Mailbox(Arc<Attachment>),
    /// Acknowledgements that free the receiver's log.
    Acks(Arc<Attachment>),
    /// The receiver's next process (acknowledged mode: it waits rather than be refused
    /// while the receiver restarts with a full hold).
    Attach,
}

/// What to do with an envelope that cannot be queued.
#[derive(Clone, Copy)]
enum Fallback {
    /// Count a dead letter and tell the sender with an ERROR.
    Refuse,
    /// The same, after dropping the caller's pending entry for this request.
    RefuseRequest,
    /// Only count a dead letter (answers, errors for the sender itself, tap copies).
    DeadLetter,
}

impl Fallback {
    fn for_kind(kind: EnvelopeKind) -> Self {
        match kind {
            EnvelopeKind::Request => Self::RefuseRequest,
            _ => Self::Refuse,
        }
    }
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
    pub fn new(
        registry: Arc<Registry>,
        stats: Arc<NodeStats>,
        routing: Arc<Routing>,
        access: Arc<Access>,
        caller: &Principal,
        from: Arc<Attachment>,
    ) -> Self {
        let sender = match caller {
            Principal::Admin(_) => Sender::Unchecked,
            // Checked at the node where they entered the tree, which knew the sender.
            _ if from.link().is_some() => Sender::Unchecked,
            Principal::Client(_) => Sender::Client(caller.to_string()),
            _ => Sender::Origin,
        };
        let routes_version = registry.route_changes();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self {
            registry,
            stats,
            from,
            routes: HashMap::new(),
            routes_version,
            rules: routing.rules(),
            rules_version: routing.rules_version(),
            routing,
            policies: access.policies(),
            policies_version: access.version(),
            access,
            sender,
            origin_principal: String::new(),
            blocked: Vec::new(),
            random: seed | 1,
        }
    }

    fn limits(&self) -> &Limits {
        self.registry.limits()
    }

    /// Routes every envelope of `frame`, in order.
    pub async fn route_frame(&mut self, frame: Frame) {
        let count = frame.envelopes.len() as u64;
        self.from.heard(count);
        self.from.grant(frame.credit);
        self.refresh_rules();
        let mut routed_through = 0;
        for mut envelope in frame.envelopes {
            // (An ACK's sequence is what it acknowledges, not its own number.)
            if let Some(link) = self.from.link()
                && envelope.sequence != 0
                && envelope.kind() != EnvelopeKind::Ack
            {
                // Numbered by the other end's log for this link: a redelivery after a
                // broken stream may repeat what was routed already.
                if !link.accept(envelope.sequence) {
                    continue;
                }
                routed_through = envelope.sequence;
                envelope.sequence = 0;
                envelope.redelivered = false;
            }
            let mut blocked = self.route(envelope);
            loop {
                while let Some(waiting) = blocked {
                    blocked = self.wait_for_room(waiting).await;
                }
                match self.blocked.pop() {
                    Some(copy) => blocked = Some(copy),
                    None => break,
                }
            }
        }
        if routed_through != 0 {
            // Tells the other end that everything up to here is routed.
            self.from.acknowledge_through(routed_through);
        }
        self.stats.add_frame(count);
    }

    fn route(&mut self, mut envelope: Envelope) -> Option<Blocked> {
        // The stream's alias is the origin, whatever the envelope claims, unless it
        // names a task container this stream's process hosts, or an alias that lives
        // behind this link to another node.
        if envelope.origin != self.from.alias().as_str()
            && (envelope.origin.is_empty() || !self.vouches_for(&envelope.origin))
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
        if kind == EnvelopeKind::Request && self.absorb_retry(&envelope) {
            return None;
        }
        if envelope.id == 0 && needs_id(&envelope) && self.from.link().is_none() {
            let message = format!(
                "{} needs a nonzero id: failures, replies and retries are matched by it",
                kind.as_str_name()
            );
            return self.refuse(&envelope, ErrorCode::InvalidArgument, message);
        }
        match kind {
            EnvelopeKind::Send | EnvelopeKind::Request => {
                let _hop = hop_span(&mut envelope, kind);
                self.route_message(envelope, kind)
            }
            EnvelopeKind::Reply | EnvelopeKind::Error | EnvelopeKind::Progress => {
                self.route_answer(envelope, kind)
            }
            EnvelopeKind::Heartbeat => self.answer_heartbeat(envelope),
            EnvelopeKind::Ack if envelope.sequence != 0 && self.from.link().is_some() => {
                self.from.acks().ack_through(envelope.sequence);
                None
            }
            EnvelopeKind::Ack => {
                self.from.acks().ack(envelope.correlation_id);
                None
            }
            EnvelopeKind::Cancel if self.from.link().is_some() => {
                // From a caller on another node, whose node kept the request: on to the
                // callee (or the next link towards it).
                match self.resolve_onward(&envelope.destination) {
                    Some(callee) => self.offer(callee, envelope, Fallback::DeadLetter),
                    None => None,
                }
            }
            EnvelopeKind::Cancel => {
                // Not under the pending lock: `cancel` takes the registry's.
                let pending = self.from.pending().forget(envelope.correlation_id);
                if let Some(pending) = pending {
                    self.registry.cancel(envelope.correlation_id, &pending);
                }
                None
            }
            EnvelopeKind::Unspecified => {
                let message = "envelope kind is unspecified or unknown".to_owned();
                self.refuse(&envelope, ErrorCode::InvalidArgument, message)
            }
        }
    }

    /// Whether this stream may send on behalf of `origin`: a task its process hosts, or,
    /// for a link, any alias that does not belong to something else here (one behind
    /// the link may not be announced yet).
    fn vouches_for(&self, origin: &str) -> bool {
        if self.from.link().is_none() {
            return self.registry.is_hosted_by(origin, self.from.alias());
        }
        match self.registry.registered_owner(origin) {
            Some(owner) => &owner == self.from.alias(),
            None => {
                // Behind a child's link, and not announced yet (announcements lag
                // behind data): learn it now, so that its answers find their way back.
                if self.registry.parent() != Some(self.from.alias()) {
                    self.registry.learn_route(origin, self.from.alias());
                }
                true
            }
        }
    }

    /// Whether `receiver` is the link this envelope came in on: sending it back would
    /// loop (the other end routed it here because it does not know the alias).
    fn is_way_back(&self, receiver: &Arc<Attachment>) -> bool {
        self.from.link().is_some() && Arc::ptr_eq(receiver, &self.from)
    }

    fn refresh_rules(&mut self) {
        let version = self.routing.rules_version();
        if version != self.rules_version {
            self.rules = self.routing.rules();
            self.rules_version = version;
        }
        let version = self.access.version();
        if version != self.policies_version {
            self.policies = self.access.policies();
            self.policies_version = version;
        }
    }

    /// SEND and REQUEST: input rules, group resolution, then [`Inbound::deliver`].
    fn route_message(&mut self, mut envelope: Envelope, kind: EnvelopeKind) -> Option<Blocked> {
        if !self.rules.is_inert() {
            let rules = self.rules.clone();
            if !self.apply_rules(&rules, Stage::Input, &mut envelope) {
                return None;
            }
        }
        if envelope.destination.starts_with(GROUP_PREFIX) {
            return self.route_group(envelope, kind, Fallback::for_kind(kind));
        }
        self.deliver(envelope, kind)
    }

    /// Output rules, then the destination's mailbox.
    fn deliver(&mut self, mut envelope: Envelope, kind: EnvelopeKind) -> Option<Blocked> {
        if !self.rules.is_inert() {
            let rules = self.rules.clone();
            if !self.apply_rules(&rules, Stage::Output, &mut envelope) {
                return None;
            }
        }
        if self.policies.is_some() && !self.may_send(&envelope) {
            return None;
        }
        match kind {
            EnvelopeKind::Request => self.route_request(envelope),
            _ => self.route_send(envelope, Fallback::Refuse),
        }
    }

    /// Evaluates one stage: taps are sent, redirects applied. False when the envelope
    /// must not be delivered (dropped, or refused to its sender).
    fn apply_rules(&mut self, rules: &RuleSet, stage: Stage, envelope: &mut Envelope) -> bool {
        let registry = &self.registry;
        let verdict = rules.evaluate(stage, envelope, |origin| registry.name_of(origin));
        for (target, tapped) in verdict.copies {
            self.tap(envelope, target, tapped);
        }
        match verdict.refusal {
            None => return true,
            Some(Refusal::Drop(reason)) => self.stats.dead_letter(envelope, reason),
            Some(Refusal::Reject(reason)) => {
                self.stats.dead_letter(envelope, reason.clone());
                let refusal = self.refuse(envelope, ErrorCode::PermissionDenied, reason);
                self.blocked.extend(refusal);
            }
        }
        false
    }

    /// Whether the policies let the sender send to the envelope's destination; a
    /// refusal is a dead letter and PERMISSION_DENIED to the sender, naming the policy.
    /// The node where an envelope enters the tree checks it; nodes it passes do not.
    fn may_send(&mut self, envelope: &Envelope) -> bool {
        let Some(policies) = &self.policies else {
            return true;
        };
        let who = match &self.sender {
            Sender::Unchecked => return true,
            Sender::Client(who) => who,
            Sender::Origin => {
                self.origin_principal.clear();
                self.origin_principal.push_str("container:");
                self.origin_principal.push_str(&envelope.origin);
                &self.origin_principal
            }
        };
        let Err(denial) = policies.decide_for(who, Action::Send, &envelope.destination, &[]) else {
            return true;
        };
        self.stats.dead_letter(envelope, denial.message.clone());
        let refusal = self.refuse(envelope, ErrorCode::PermissionDenied, denial.message);
        self.blocked.extend(refusal);
        false
    }

    /// Sends a copy of `envelope`, which was addressed to `tapped`, to `target` as a
    /// SEND that nobody hears about if it cannot be delivered (only the dead letters do).
    fn tap(&mut self, envelope: &Envelope, target: String, tapped: String) {
        let mut copy = envelope.clone();
        copy.kind = EnvelopeKind::Send as i32;
        copy.deadline_ms = 0;
        copy.destination = target;
        copy.headers.insert(TAP_HEADER.to_owned(), tapped);
        let blocked = match copy.destination.starts_with(GROUP_PREFIX) {
            true => self.route_group(copy, EnvelopeKind::Send, Fallback::DeadLetter),
            false => self.route_send(copy, Fallback::DeadLetter),
        };
        self.blocked.extend(blocked);
    }

    fn route_send(&mut self, envelope: Envelope, fallback: Fallback) -> Option<Blocked> {
        match self.resolve_onward(&envelope.destination) {
            Some(receiver) => self.offer(receiver, envelope, fallback),
            None => self.hold(envelope, fallback),
        }
    }

    /// [`Inbound::resolve`], except the link this envelope came in on.
    fn resolve_onward(&mut self, alias: &str) -> Option<Arc<Attachment>> {
        self.resolve(alias)
            .filter(|receiver| !self.is_way_back(receiver))
    }

    fn resolve(&mut self, alias: &str) -> Option<Arc<Attachment>> {
        let version = self.registry.route_changes();
        if version != self.routes_version {
            self.routes.clear();
            self.routes_version = version;
        }
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
}

/// This node's span of a traced SEND or REQUEST (one that carries a `traceparent`),
/// entered while it is routed: a child of the sender's span and the parent of the
/// receiver's (or the next node's). `None` when the node does not export traces.
fn hop_span(envelope: &mut Envelope, kind: EnvelopeKind) -> Option<tracing::span::EnteredSpan> {
    if !trace::exporting() || !envelope.headers.contains_key(TRACEPARENT_HEADER) {
        return None;
    }
    let span = tracing::trace_span!(
        target: TRACE_TARGET,
        "reef.route",
        otel.name = format!("route {}", envelope.destination),
        reef.kind = kind.as_str_name(),
        reef.id = envelope.id,
        reef.origin = %envelope.origin,
        reef.destination = %envelope.destination,
    );
    continue_trace(&span, &mut envelope.headers);
    Some(span.entered())
}

/// Whether the caller will retry `request` if this attempt expires (its
/// `reef-attempts-left` header is above 0): then the callee is not cancelled, since the
/// retry wants the answer of the run in progress.
fn will_retry(request: &Envelope) -> bool {
    request
        .headers
        .get(reef_proto::ATTEMPTS_LEFT_HEADER)
        .is_some_and(|left| left != "0")
}

/// Whether `envelope` must carry an id of its own: SEND, REQUEST and a container's
/// HEARTBEAT (a barrier, answered by that id). Answers (REPLY, ERROR, PROGRESS, CANCEL,
/// ACK, a HEARTBEAT answering one) are matched by `correlation_id` instead.
fn needs_id(envelope: &Envelope) -> bool {
    match envelope.kind() {
        EnvelopeKind::Send | EnvelopeKind::Request => true,
        EnvelopeKind::Heartbeat => envelope.correlation_id == 0,
        _ => false,
    }
}
