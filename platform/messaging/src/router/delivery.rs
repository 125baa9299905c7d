//! Putting an envelope in a receiver's mailbox: holds for restarting containers,
//! overflow policies, waiting for room or for an attach.

use super::*;

impl Inbound {
    /// For an alias with no open stream: held if a supervised container owns it (it is
    /// starting or restarting), refused otherwise.
    pub(super) fn hold(&mut self, envelope: Envelope, fallback: Fallback) -> Option<Blocked> {
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
    pub(super) fn hold_full(&mut self, envelope: Envelope, fallback: Fallback) -> Option<Blocked> {
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

    /// Queues `envelope` for `receiver` if there is room; a full mailbox hands it back.
    pub(super) fn offer(
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
    pub(super) fn overflow(
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
    pub(super) fn redirect_closed(
        &mut self,
        envelope: Envelope,
        fallback: Fallback,
    ) -> Option<Blocked> {
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
    pub(super) async fn wait_for_room(&mut self, blocked: Blocked) -> Option<Blocked> {
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
    pub(super) async fn wait_for_attach(
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
}
