//! The supervision bridge: aliases reserved for the containers the node supervises,
//! their published state, and the attaches and detaches supervision observes: the
//! registry's side of supervision's [`Reservations`] port.

use reef_supervision::{Reservations, State, Taken};

use super::*;

impl Registry {
    pub(super) fn observe(&self, observed: Observed) {
        let observer = self.observer.lock();
        if let Some(observer) = observer.as_ref() {
            let _ = observer.send(observed);
        }
    }

    /// Where the supervisor hears about attach and detach of the aliases it reserved.
    pub fn set_observer(&self, observer: mpsc::UnboundedSender<Observed>) {
        *self.observer.lock() = Some(observer);
    }

    /// Reserves `info`'s alias for a supervised container: only a process with `token`
    /// may register it, and envelopes for it are held while it is not attached.
    pub fn reserve(&self, info: SupervisedSnapshot, token: &str) -> Result<(), RegistryError> {
        let definition = info.definition.clone();
        let alias = definition.alias.clone();
        let mut entries = self.write();
        if entries.contains_key(&alias) {
            return Err(RegistryError::AlreadyRegistered(alias.to_string()));
        }
        if entries.len() >= self.limits.max_containers {
            return Err(RegistryError::Full(entries.len()));
        }
        let spec = ContainerSpec {
            alias: alias.clone(),
            name: definition.name.clone(),
            parent: definition.parent.clone(),
            endpoint: None,
            pid: info.pid,
            labels: definition.labels.clone(),
        };
        let mut registration = Registration::new(spec, None);
        registration.reservation = Some(Reservation {
            token: token.to_owned(),
            holding: true,
            held: VecDeque::new(),
            info: Some(info),
        });
        entries.insert(alias, registration);
        Ok(())
    }

    /// Publishes the supervisor's view of a reserved alias; `holding` says whether
    /// envelopes wait for it while it is not attached (held ones are dropped when not).
    pub fn update_supervised(&self, info: SupervisedSnapshot, holding: bool) {
        let alias = info.definition.alias.clone();
        let mut entries = self.write();
        let Some(entry) = entries.get_mut(&alias) else {
            return;
        };
        if entry.attachment.is_none() {
            entry.spec.pid = info.pid;
        }
        if let Some(reservation) = &mut entry.reservation {
            reservation.holding = holding;
            if !holding {
                for (_, envelope) in reservation.held.drain(..) {
                    self.stats.dead_letter(
                        &envelope,
                        format!("{alias} stopped before it was delivered"),
                    );
                }
            }
            reservation.info = Some(info);
        }
    }

    /// Closes the attach stream of a supervised alias (its process is being replaced);
    /// the reservation stays.
    pub fn evict(&self, alias: &Alias, reason: &str) {
        let attachment = {
            let mut entries = self.write();
            let Some(entry) = entries.get_mut(alias) else {
                return;
            };
            entry.lease = None;
            entry.attachment.clone()
        };
        if let Some(attachment) = attachment {
            self.detach(
                &attachment,
                DetachCause::Closed,
                reason,
                Some(CloseReason::Evicted(reason.to_owned())),
            );
        }
    }

    /// Forgets a supervised alias (destroyed): closes its stream, drops what was held.
    /// Its tasks go with it.
    pub fn release(&self, alias: &Alias) {
        let removed = remove_with_tasks(&mut self.write(), alias, &self.stats);
        let mut removed = removed.into_iter();
        let entry = removed.next();
        for task in removed {
            self.emit(
                EventKind::Deregistered,
                task.snapshot(),
                "its host was destroyed",
            );
        }
        if let Some(entry) = entry {
            if let Some(attachment) = &entry.attachment {
                attachment.close(Some(CloseReason::Destroyed));
            }
            for (_, envelope) in entry.reservation.iter().flat_map(|r| r.held.iter()) {
                self.stats.dead_letter(
                    envelope,
                    format!("{alias} was destroyed before it was delivered"),
                );
            }
        }
    }

    /// Whether `lease` is the current lease of `alias`.
    pub fn holds_lease(&self, alias: &str, lease: &str) -> bool {
        self.read()
            .get(alias)
            .is_some_and(|entry| entry.lease.as_deref() == Some(lease))
    }

    /// Sends a lifecycle event for a supervised container.
    pub fn emit_lifecycle(&self, alias: &Alias, kind: EventKind, phase: Phase, reason: &str) {
        let Some(container) = self.get(alias.as_str()) else {
            return;
        };
        let _ = self.events.send(RegistryEvent {
            kind,
            container,
            reason: reason.to_owned(),
            at: SystemTime::now(),
            phase: Some(phase),
        });
    }

    /// Sends a lifecycle event for a container already gone from the registry.
    pub fn emit_gone(&self, container: ContainerSnapshot, kind: EventKind, reason: &str) {
        let _ = self.events.send(RegistryEvent {
            kind,
            container,
            reason: reason.to_owned(),
            at: SystemTime::now(),
            phase: Some(Phase::After),
        });
    }
}

impl Reservations for Registry {
    fn observe(&self, observer: mpsc::UnboundedSender<Observed>) {
        self.set_observer(observer);
    }

    fn is_registered(&self, alias: &str) -> bool {
        self.get(alias).is_some()
    }

    fn reserve(&self, info: SupervisedSnapshot, token: &str) -> Result<(), Taken> {
        Registry::reserve(self, info, token).map_err(|error| Taken(error.to_string()))
    }

    fn update(&self, info: SupervisedSnapshot, holding: bool) {
        self.update_supervised(info, holding);
    }

    fn lifecycle(&self, alias: &Alias, kind: EventKind, phase: Phase, reason: &str) {
        self.emit_lifecycle(alias, kind, phase, reason);
    }

    fn evict(&self, alias: &Alias, reason: &str) {
        Registry::evict(self, alias, reason);
    }

    fn release_destroyed(&self, alias: &Alias) {
        let container = self.get(alias.as_str()).map(|mut container| {
            if let Some(info) = &mut container.supervised {
                info.state = State::Destroyed;
            }
            container
        });
        self.release(alias);
        if let Some(container) = container {
            self.emit_gone(container, EventKind::Destroy, "state DESTROYED");
        }
    }

    fn endpoint(&self, alias: &str) -> Option<String> {
        self.get(alias)
            .and_then(|container| container.spec.endpoint)
    }

    fn supervised(&self, alias: &str) -> Option<SupervisedSnapshot> {
        self.get(alias).and_then(|container| container.supervised)
    }
}
