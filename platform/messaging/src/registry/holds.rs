//! Envelopes held for supervised containers that are not attached (restarting,
//! starting, detached), and what a closed stream leaves behind.

use super::*;

#[cfg(test)]
mod tests;

impl Registry {
    /// Moves held envelopes into a new attachment, in arrival order, before anything
    /// else can reach it (the caller holds the write lock). Requests keep only the time
    /// left of their deadline; expired ones are dropped (their callers hear
    /// DEADLINE_EXCEEDED from their own keeper).
    pub(super) fn deliver_held(&self, reservation: &mut Reservation, attachment: &Attachment) {
        for (held_at, mut envelope) in reservation.held.drain(..) {
            if envelope.kind() == EnvelopeKind::Request && envelope.deadline_ms > 0 {
                let waited = held_at.elapsed();
                let budget = Duration::from_millis(envelope.deadline_ms.into());
                if waited >= budget {
                    self.stats
                        .dead_letter(&envelope, "request expired while its receiver restarted");
                    continue;
                }
                envelope.deadline_ms = (budget - waited).as_millis().max(1) as u32;
            }
            if let Err(envelope) = attachment.queue_held(envelope) {
                self.stats.dead_letter(
                    &envelope,
                    "no room in the mailbox of the restarted receiver",
                );
            }
        }
    }

    /// Keeps `envelope` for a supervised container that is (re)starting, so nothing
    /// sent while it restarts is lost. Bounded by the mailbox capacity.
    // The envelope comes back by value on refusal (a slow path): boxing it would cost
    // an allocation on every hold instead.
    #[allow(clippy::result_large_err)]
    pub fn hold(&self, alias: &str, envelope: Envelope) -> Result<(), (Envelope, HoldRefused)> {
        self.hold_with(alias, envelope, false).map(drop)
    }

    /// [`Registry::hold`], making room in a full hold by taking out its oldest envelope,
    /// which is returned (overflow policy "drop oldest").
    #[allow(clippy::result_large_err)]
    pub fn hold_evicting_oldest(
        &self,
        alias: &str,
        envelope: Envelope,
    ) -> Result<Option<Envelope>, (Envelope, HoldRefused)> {
        self.hold_with(alias, envelope, true)
    }

    #[allow(clippy::result_large_err)]
    pub(super) fn hold_with(
        &self,
        alias: &str,
        envelope: Envelope,
        evict: bool,
    ) -> Result<Option<Envelope>, (Envelope, HoldRefused)> {
        let mut entries = self.write();
        // A task's envelopes wait with its host's.
        let Some(owner) = owner_in(&entries, self.parent.get(), alias) else {
            return Err((envelope, HoldRefused::Unknown));
        };
        let Some(entry) = entries.get_mut(&owner) else {
            return Err((envelope, HoldRefused::Unknown));
        };
        if let Some(attachment) = &entry.attachment
            && !attachment.is_closed()
        {
            return Err((envelope, HoldRefused::Open(attachment.clone())));
        }
        let Some(reservation) = &mut entry.reservation else {
            return Err((envelope, HoldRefused::Unknown));
        };
        if !reservation.holding {
            return Err((envelope, HoldRefused::Stopped));
        }
        let mut evicted = None;
        if reservation.held.len() >= self.limits.mailbox_capacity {
            if !evict {
                return Err((envelope, HoldRefused::Full(reservation.held.len())));
            }
            evicted = reservation.held.pop_front().map(|(_, oldest)| oldest);
        }
        reservation.held.push_back((Instant::now(), envelope));
        Ok(evicted)
    }

    /// Whether envelopes for `alias` are held for it now (it is supervised, not
    /// attached, and not stopped).
    pub fn is_holding(&self, alias: &str) -> bool {
        let entries = self.read();
        owner_in(&entries, self.parent.get(), alias)
            .and_then(|owner| entries.get(&owner))
            .and_then(|entry| entry.reservation.as_ref())
            .is_some_and(|reservation| reservation.holding)
    }

    /// Answers requests that `callee`'s closed stream had already written, and so will
    /// never be answered, with UNAVAILABLE at once instead of at their deadline. Requests
    /// held for its next process are kept; if that process attached already, nothing
    /// is failed (the callers fall back on their deadlines).
    pub fn fail_in_flight(&self, callee: &Alias) {
        let (callers, held) = {
            let entries = self.read();
            // Request ids held for the callee's next process, by caller.
            let mut held: HashMap<String, std::collections::HashSet<u64>> = HashMap::new();
            if let Some(entry) = entries.get(callee) {
                if entry.attachment.as_ref().is_some_and(|a| !a.is_closed()) {
                    return;
                }
                for (_, envelope) in entry.reservation.iter().flat_map(|r| r.held.iter()) {
                    held.entry(envelope.origin.clone())
                        .or_default()
                        .insert(envelope.id);
                }
            }
            let callers: Vec<Arc<Attachment>> = entries
                .values()
                .filter_map(|entry| entry.attachment.clone())
                .filter(|attachment| !attachment.is_closed())
                .collect();
            (callers, held)
        };
        let message = format!(
            "{callee} ended before it answered (its process died or its stream closed); the request may or may not have been handled"
        );
        for caller in callers {
            let kept = held.get(caller.alias().as_str());
            let ids = caller
                .pending()
                .take_for_callee(callee.as_str(), |id| kept.is_some_and(|k| k.contains(&id)));
            for id in ids {
                let request = Envelope {
                    id,
                    destination: callee.to_string(),
                    ..Default::default()
                };
                let error = crate::raised::node_error(
                    &request,
                    caller.alias(),
                    reef_proto::ErrorCode::Unavailable,
                    message.clone(),
                    self.node_origin(),
                );
                if let Err(error) = caller.data().try_send(error) {
                    self.stats
                        .dead_letter(&error.into_inner(), "the caller's mailbox is full");
                }
            }
        }
    }

    /// Takes back what a closed attach stream never wrote: held, ahead of anything
    /// newer, for a supervised container's next process. Returns those that were lost
    /// (not supervised, stopped, or no room).
    pub fn requeue(&self, alias: &Alias, mut unsent: Vec<Envelope>) -> Vec<Envelope> {
        let mut entries = self.write();
        let Some(entry) = entries.get_mut(alias) else {
            return unsent;
        };
        let Some(reservation) = entry.reservation.as_mut().filter(|r| r.holding) else {
            return unsent;
        };
        if let Some(attachment) = entry.attachment.as_ref().filter(|a| !a.is_closed()) {
            // The next process attached already.
            return unsent
                .into_iter()
                .filter_map(|envelope| attachment.data().try_send(envelope).err())
                .map(TrySendError::into_inner)
                .collect();
        }
        let room = self
            .limits
            .mailbox_capacity
            .saturating_sub(reservation.held.len());
        let lost = unsent.split_off(room.min(unsent.len()));
        let now = Instant::now();
        for envelope in unsent.into_iter().rev() {
            reservation.held.push_front((now, envelope));
        }
        lost
    }
}
