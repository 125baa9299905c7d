//! Requests and their answers: the caller's pending table, retries absorbed at the
//! node, answers accepted only from the callee, heartbeats as barriers.

use super::*;

impl Inbound {
    pub(super) fn route_request(&mut self, mut envelope: Envelope) -> Option<Blocked> {
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

    /// REPLY, ERROR and PROGRESS go back to the caller only while it waits for them.
    pub(super) fn route_answer(
        &mut self,
        envelope: Envelope,
        kind: EnvelopeKind,
    ) -> Option<Blocked> {
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
    pub(super) fn answer_heartbeat(&mut self, envelope: Envelope) -> Option<Blocked> {
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

    /// The time a REQUEST (or PROGRESS: the new budget) may take: its own deadline
    /// within the node's maximum, or the node's default.
    pub(super) fn budget(&self, envelope: &Envelope) -> std::time::Duration {
        let limits = self.limits();
        match envelope.deadline_ms {
            0 => limits.default_request_timeout,
            ms => std::time::Duration::from_millis(ms.into()).min(limits.max_request_timeout),
        }
    }

    /// Whether `request` retries one of this stream's requests still in flight (same
    /// id): then the first attempt's answer answers both, and this one goes no further
    /// (envelope.proto: "Retries"). Over a link the caller's own node keeps the request.
    pub(super) fn absorb_retry(&self, request: &Envelope) -> bool {
        if self.from.link().is_some() || request.id == 0 {
            return false;
        }
        let deadline = Instant::now() + self.budget(request);
        self.from
            .pending()
            .absorb_retry(request.id, deadline, !will_retry(request))
    }
}
