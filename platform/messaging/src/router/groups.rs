//! `group:NAME` destinations: one member by the group's strategy, or every member
//! (broadcast).

use super::*;

impl Inbound {
    /// A `group:NAME` destination: one member by the group's strategy, or every member
    /// for a broadcast.
    pub(super) fn route_group(
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

    pub(super) fn broadcast(
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
    pub(super) fn availability(&mut self, member: &Alias) -> Availability {
        if let Some(attachment) = self.resolve(member.as_str()) {
            return Availability::Attached(attachment.queued());
        }
        match self.registry.is_holding(member.as_str()) {
            true => Availability::Held,
            false => Availability::Absent,
        }
    }
}
