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
    registry::HoldRefused,
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
                    cancel(&self.registry, envelope.correlation_id, &pending);
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

    /// A `group:NAME` destination: one member by the group's strategy, or every member
    /// for a broadcast.
    fn route_group(
        &mut self,
        mut envelope: Envelope,
        kind: EnvelopeKind,
        fallback: Fallback,
    ) -> Option<Blocked> {
        let name = &envelope.destination[GROUP_PREFIX.len()..];
        let Some(group) = self.routing.group(name) else {
            let message = format!("no group is named {name:?}");
            return self.undeliverable_because(envelope, fallback, ErrorCode::NotFound, message);
        };
        if group.strategy() == Strategy::Broadcast {
            if kind == EnvelopeKind::Request {
                let message = format!(
                    "{:?} broadcasts: send to it, or request one member",
                    envelope.destination
                );
                return self.undeliverable_because(
                    envelope,
                    fallback,
                    ErrorCode::InvalidArgument,
                    message,
                );
            }
            return self.broadcast(envelope, &group, fallback);
        }
        let key = envelope
            .headers
            .get(group.hash_key())
            .unwrap_or(&envelope.origin)
            .clone();
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let random = self.random;
        let picked = group
            .pick(&key, random, |member| self.availability(member))
            .cloned();
        match picked {
            Some(member) => {
                envelope.destination.clear();
                envelope.destination.push_str(member.as_str());
                match fallback {
                    Fallback::DeadLetter => self.route_send(envelope, fallback),
                    _ => self.deliver(envelope, kind),
                }
            }
            None => {
                let message = format!("{:?} has no member that can take it", envelope.destination);
                self.undeliverable_because(envelope, fallback, ErrorCode::Unavailable, message)
            }
        }
    }

    fn broadcast(
        &mut self,
        envelope: Envelope,
        group: &Group,
        fallback: Fallback,
    ) -> Option<Blocked> {
        let mut reached = 0;
        for member in group.members() {
            if self.availability(member) == Availability::Absent {
                continue;
            }
            reached += 1;
            let mut copy = envelope.clone();
            copy.destination = member.to_string();
            let blocked = match fallback {
                Fallback::DeadLetter => self.route_send(copy, fallback),
                _ => self.deliver(copy, EnvelopeKind::Send),
            };
            self.blocked.extend(blocked);
        }
        if reached > 0 {
            return None;
        }
        let message = format!("{:?} has no member to broadcast to", envelope.destination);
        self.undeliverable_because(envelope, fallback, ErrorCode::Unavailable, message)
    }

    /// What a group strategy needs to know about `member`.
    fn availability(&mut self, member: &Alias) -> Availability {
        if let Some(attachment) = self.resolve(member.as_str()) {
            return Availability::Attached(attachment.queued());
        }
        match self.registry.is_holding(member.as_str()) {
            true => Availability::Held,
            false => Availability::Absent,
        }
    }

    fn route_send(&mut self, envelope: Envelope, fallback: Fallback) -> Option<Blocked> {
        match self.resolve_onward(&envelope.destination) {
            Some(receiver) => self.offer(receiver, envelope, fallback),
            None => self.hold(envelope, fallback),
        }
    }

    fn route_request(&mut self, mut envelope: Envelope) -> Option<Blocked> {
        let callee = self.resolve_onward(&envelope.destination);
        if self.from.link().is_some() {
            // The caller's own node keeps its deadline and hears its answer; here it is
            // only passed on.
            return match callee {
                Some(callee) => self.offer(callee, envelope, Fallback::Refuse),
                None => self.hold(envelope, Fallback::Refuse),
            };
        }
        let callee_alias = match &callee {
            Some(callee) => callee.alias().clone(),
            // Perhaps a supervised container that is restarting (or a task in one): the
            // request is held for it, under its deadline.
            None => match self.registry.owner(&envelope.destination) {
                Some(alias) => alias,
                None => {
                    return self.undeliverable(envelope, Fallback::Refuse, Undelivered::Unknown);
                }
            },
        };
        let budget = self.budget(&envelope);
        let origin = match envelope.origin == self.from.alias().as_str() {
            true => self.from.alias().clone(),
            // A task of this stream's host (checked in `route`).
            false => Alias::parse(&envelope.origin).unwrap_or_else(|_| self.from.alias().clone()),
        };
        let retried = will_retry(&envelope);
        let addressee =
            Alias::parse(&envelope.destination).unwrap_or_else(|_| callee_alias.clone());
        let asked = Instant::now();
        let pending = Pending {
            asked,
            deadline: asked + budget,
            callee: callee_alias,
            addressee,
            origin,
            cancel_on_expiry: !retried,
        };
        let tracked = self.from.pending().insert(envelope.id, pending);
        match tracked {
            Ok(true) => self.from.deadlines_changed(),
            Ok(false) => {}
            // A retry that raced past `route`'s check: the first attempt answers it.
            Err(PendingError::Duplicate) => return None,
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
            Err((envelope, HoldRefused::Open(receiver))) if self.is_way_back(&receiver) => {
                self.undeliverable(envelope, fallback, Undelivered::Unknown)
            }
            Err((envelope, HoldRefused::Open(receiver))) => {
                self.offer(receiver, envelope, fallback)
            }
            Err((envelope, HoldRefused::Unknown)) => {
                self.undeliverable(envelope, fallback, Undelivered::Unknown)
            }
            Err((envelope, HoldRefused::Stopped)) => {
                self.undeliverable(envelope, fallback, Undelivered::Stopped)
            }
            Err((envelope, HoldRefused::Full(_))) => self.hold_full(envelope, fallback),
        }
    }

    /// The hold of a restarting receiver is full: the receiver's overflow policy
    /// decides, as for a full mailbox. Acknowledged-mode envelopes always wait.
    fn hold_full(&mut self, envelope: Envelope, fallback: Fallback) -> Option<Blocked> {
        let policy = match (envelope.acknowledged, fallback) {
            (true, _) => Overflow::Block,
            // Taps and answers are never worth waiting for.
            (false, Fallback::DeadLetter) => Overflow::Reject,
            (false, _) => self
                .registry
                .owner(&envelope.destination)
                .map_or(Overflow::Block, |owner| self.routing.overflow(&owner)),
        };
        let full = format!(
            "{} is restarting and its mailbox is full",
            envelope.destination
        );
        match policy {
            Overflow::Block => Some(Blocked {
                envelope,
                fallback,
                wait: Wait::Attach,
            }),
            Overflow::DropNewest if envelope.kind() == EnvelopeKind::Send => {
                let reason = format!("{full} (overflow policy drop_newest)");
                self.stats.dead_letter(&envelope, reason);
                None
            }
            Overflow::Reject | Overflow::DropNewest => {
                self.undeliverable(envelope, fallback, Undelivered::HoldFull)
            }
            Overflow::DropOldest => {
                let destination = envelope.destination.clone();
                match self.registry.hold_evicting_oldest(&destination, envelope) {
                    Ok(evicted) => {
                        if let Some(oldest) = evicted {
                            let reason = format!("{full} (overflow policy drop_oldest)");
                            self.stats.dead_letter(&oldest, reason);
                        }
                        None
                    }
                    Err((envelope, HoldRefused::Open(receiver))) => {
                        self.offer(receiver, envelope, fallback)
                    }
                    Err((envelope, _)) => self.undeliverable(envelope, fallback, Undelivered::Gone),
                }
            }
        }
    }

    /// REPLY, ERROR and PROGRESS go back to the caller only while it waits for them.
    fn route_answer(&mut self, envelope: Envelope, kind: EnvelopeKind) -> Option<Blocked> {
        let Some(caller) = self.resolve_onward(&envelope.destination) else {
            tracing::debug!(to = %envelope.destination, "answer for a caller that is gone");
            self.stats.dead_letter(&envelope, "the caller is gone");
            return None;
        };
        if caller.link().is_some() {
            // The caller's own node checks that it waits for this answer.
            return self.offer(caller, envelope, Fallback::DeadLetter);
        }
        let callee = self.from.alias().as_str();
        let awaited = if kind == EnvelopeKind::Progress {
            let budget = self.budget(&envelope);
            caller
                .pending()
                .extend(envelope.correlation_id, callee, Instant::now() + budget)
        } else {
            let answered = caller.pending().complete(envelope.correlation_id, callee);
            if let Some(pending) = &answered {
                let latency = pending.asked.elapsed();
                self.from.answered().record(latency);
                self.stats.answered(kind == EnvelopeKind::Reply, latency);
            }
            answered.is_some()
                // A node further along refusing a SEND: nobody waits, but the sender
                // hears why, as it would from its own node.
                || (kind == EnvelopeKind::Error && self.from.link().is_some())
        };
        if !awaited {
            tracing::debug!(to = %envelope.destination, id = envelope.correlation_id, "late or unexpected answer");
            self.stats.dead_letter(
                &envelope,
                "late or unexpected answer: the caller no longer waits for it",
            );
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
        if self.from.link().is_some() {
            // Keepalive between nodes, not a barrier: on the control lane, so that it
            // never waits behind data the other end has not acknowledged yet (which
            // could be waiting for this very answer). A full lane means the other end
            // is not reading; its silence detection deals with that.
            let _ = self.from.control().try_send(answer);
            return None;
        }
        // Heartbeats cost no credit: once what was queued before it is sent, the answer
        // must not wait for a container that grants none.
        let blocked = self.offer(self.from.clone(), answer, Fallback::DeadLetter);
        self.from.pass_heartbeat();
        blocked
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

    /// Queues `envelope` for `receiver` if there is room; a full mailbox hands it back.
    fn offer(
        &mut self,
        receiver: Arc<Attachment>,
        envelope: Envelope,
        fallback: Fallback,
    ) -> Option<Blocked> {
        let (envelope, wait) = match receiver.try_queue(envelope) {
            Ok(()) => return None,
            Err(NotQueued::MailboxFull(envelope))
                if !envelope.acknowledged && !matches!(fallback, Fallback::DeadLetter) =>
            {
                return self.overflow(receiver, envelope, fallback);
            }
            Err(NotQueued::MailboxFull(envelope)) => (envelope, Wait::Mailbox(receiver)),
            Err(NotQueued::LogFull(envelope)) => (envelope, Wait::Acks(receiver)),
            Err(NotQueued::Closed(envelope)) => return self.redirect_closed(envelope, fallback),
        };
        Some(Blocked {
            envelope,
            fallback,
            wait,
        })
    }

    /// A full mailbox: what the receiver's overflow policy says.
    fn overflow(
        &mut self,
        receiver: Arc<Attachment>,
        mut envelope: Envelope,
        fallback: Fallback,
    ) -> Option<Blocked> {
        let policy = self.routing.overflow(receiver.alias());
        let full = format!("the mailbox of {} is full", receiver.alias());
        match policy {
            Overflow::Block => {}
            Overflow::DropNewest if envelope.kind() == EnvelopeKind::Send => {
                self.stats
                    .dead_letter(&envelope, format!("{full} (overflow policy drop_newest)"));
                return None;
            }
            Overflow::Reject | Overflow::DropNewest => {
                let message = format!("{full} (overflow policy reject)");
                return self.undeliverable_because(
                    envelope,
                    fallback,
                    ErrorCode::ResourceExhausted,
                    message,
                );
            }
            Overflow::DropOldest => {
                // Others may fill the room first: a few tries, then wait like BLOCK.
                for _ in 0..8 {
                    if let Some(oldest) = receiver.shed_oldest() {
                        let reason = format!("{full} (overflow policy drop_oldest)");
                        self.stats.dead_letter(&oldest, reason);
                    }
                    envelope = match receiver.try_queue(envelope) {
                        Ok(()) => return None,
                        Err(NotQueued::Closed(back)) => {
                            return self.redirect_closed(back, fallback);
                        }
                        Err(NotQueued::MailboxFull(back) | NotQueued::LogFull(back)) => back,
                    };
                }
            }
        }
        Some(Blocked {
            envelope,
            fallback,
            wait: Wait::Mailbox(receiver),
        })
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
            Err((envelope, HoldRefused::Full(_))) => self.hold_full(envelope, fallback),
            Err((envelope, _)) => self.undeliverable(envelope, fallback, Undelivered::Gone),
        }
    }

    /// Waits up to the enqueue timeout for room; what follows may block in turn. A
    /// receiver whose stream closes meanwhile is treated like one found closed: a
    /// supervised one's next process gets the envelope.
    async fn wait_for_room(&mut self, blocked: Blocked) -> Option<Blocked> {
        let deadline = tokio::time::Instant::now() + self.limits().enqueue_timeout;
        let Blocked {
            envelope,
            fallback,
            wait,
        } = blocked;
        let (receiver, mut acks) = match wait {
            Wait::Attach => return self.wait_for_attach(envelope, fallback, deadline).await,
            Wait::Mailbox(receiver) => (receiver, false),
            Wait::Acks(receiver) => (receiver, true),
        };
        let mut envelope = envelope;
        loop {
            let room = match acks {
                false => tokio::time::timeout_at(deadline, receiver.mailbox_room())
                    .await
                    .map(|room| room.is_ok()),
                true => {
                    tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            _ = receiver.acks().room() => true,
                            // Acknowledgements stop when the stream closes.
                            _ = receiver.data().closed() => false,
                        }
                    })
                    .await
                }
            };
            match room {
                Err(_) => return self.undeliverable(envelope, fallback, Undelivered::Full),
                Ok(false) => return self.redirect_closed(envelope, fallback),
                Ok(true) => {}
            }
            match receiver.try_queue(envelope) {
                Ok(()) => return None,
                // Another sender took the room first, or the other bound is reached.
                Err(NotQueued::MailboxFull(back)) => (envelope, acks) = (back, false),
                Err(NotQueued::LogFull(back)) => (envelope, acks) = (back, true),
                Err(NotQueued::Closed(back)) => return self.redirect_closed(back, fallback),
            }
        }
    }

    /// Waits for a restarting receiver with a full hold to attach (any registry event
    /// is a reason to look again), then delivers or holds the envelope.
    async fn wait_for_attach(
        &mut self,
        mut envelope: Envelope,
        fallback: Fallback,
        deadline: tokio::time::Instant,
    ) -> Option<Blocked> {
        let mut events = self.registry.subscribe();
        loop {
            let destination = envelope.destination.clone();
            match self.registry.hold(&destination, envelope) {
                Ok(()) => return None,
                Err((back, HoldRefused::Open(receiver))) => {
                    return self.offer(receiver, back, fallback);
                }
                Err((back, HoldRefused::Full(_))) => envelope = back,
                Err((back, _)) => return self.undeliverable(back, fallback, Undelivered::Gone),
            }
            if tokio::time::timeout_at(deadline, events.recv())
                .await
                .is_err()
            {
                return self.undeliverable(envelope, fallback, Undelivered::HoldFull);
            }
        }
    }

    fn undeliverable(
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
    fn undeliverable_because(
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
    fn refuse_oversized(&mut self, envelope: Envelope, kind: EnvelopeKind) -> Option<Blocked> {
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

    /// The time a REQUEST (or PROGRESS: the new budget) may take: its own deadline
    /// within the node's maximum, or the node's default.
    fn budget(&self, envelope: &Envelope) -> std::time::Duration {
        let limits = self.limits();
        match envelope.deadline_ms {
            0 => limits.default_request_timeout,
            ms => std::time::Duration::from_millis(ms.into()).min(limits.max_request_timeout),
        }
    }

    /// Whether `request` retries one of this stream's requests still in flight (same
    /// id): then the first attempt's answer answers both, and this one goes no further
    /// (envelope.proto: "Retries"). Over a link the caller's own node keeps the request.
    fn absorb_retry(&self, request: &Envelope) -> bool {
        if self.from.link().is_some() || request.id == 0 {
            return false;
        }
        let deadline = Instant::now() + self.budget(request);
        self.from
            .pending()
            .absorb_retry(request.id, deadline, !will_retry(request))
    }

    /// Answers `envelope`'s sender with an ERROR correlated to it.
    fn refuse(&mut self, envelope: &Envelope, code: ErrorCode, message: String) -> Option<Blocked> {
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

/// Tells the callee of request `id` that its caller gave up (deadline, CANCEL from the
/// caller, or the caller detached). Best effort: behind the request on the callee's data
/// lane, or nowhere if the callee is not attached.
pub(crate) fn cancel(registry: &Registry, id: u64, pending: &Pending) {
    let Some(callee) = registry.lookup(pending.callee.as_str()) else {
        return;
    };
    let cancel = Envelope {
        kind: EnvelopeKind::Cancel as i32,
        correlation_id: id,
        origin: pending.origin.to_string(),
        destination: pending.addressee.to_string(),
        ..Default::default()
    };
    let _ = callee.data().try_send(cancel);
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

/// An ERROR from the node to `to`, answering `envelope`; its origin is the node's
/// (`node_origin`, see [`Registry::node_origin`]), not the destination's.
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
