//! Commands from the handle (`Supervision`): create, destroy, start, stop, restart.

use super::*;

impl Tree {
    pub(crate) fn command(&mut self, command: Command) {
        match command {
            Command::Create {
                definition,
                flag,
                reply,
            } => self.create(*definition, flag, reply),
            Command::Destroy { alias, mode, reply } => self.destroy(alias, mode, reply),
            Command::Start { alias, reply } => self.start(alias, reply),
            Command::Stop { alias, mode, reply } => self.stop(alias, mode, reply),
            Command::Restart { alias, reply } => self.restart(alias, reply),
            Command::Fail {
                alias,
                failure,
                reply,
            } => {
                let known = self.entries.contains_key(&alias);
                if known {
                    self.failure(&alias, failure);
                }
                self.effects.push(answer(
                    reply,
                    match known {
                        true => Ok(()),
                        false => Err(SupervisionError::NotFound(alias.to_string())),
                    },
                ));
            }
            Command::Shutdown { grace, reply } => {
                tracing::info!(containers = self.entries.len(), "stopping every container");
                self.shutdown = Some((Instant::now() + grace, reply));
            }
        }
    }

    pub(super) fn refuse_while_shutting_down<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
    ) -> Option<Reply<T>> {
        if self.shutdown.is_some() {
            self.effects
                .push(answer(reply, Err(SupervisionError::ShuttingDown)));
            return None;
        }
        Some(reply)
    }

    /// The reply, if a call on `alias` can go ahead: the node is not shutting down and
    /// supervises `alias`. Otherwise the caller is answered why not.
    fn go_ahead<T: Send + 'static>(&mut self, alias: &Alias, reply: Reply<T>) -> Option<Reply<T>> {
        let reply = self.refuse_while_shutting_down(reply)?;
        if self.entries.contains_key(alias) {
            return Some(reply);
        }
        self.effects.push(answer(
            reply,
            Err(SupervisionError::NotFound(alias.to_string())),
        ));
        None
    }

    pub(super) fn create(&mut self, definition: Definition, flag: CreateFlag, reply: Reply<bool>) {
        let Some(reply) = self.refuse_while_shutting_down(reply) else {
            return;
        };
        if let Some(parent) = &definition.parent
            && self.entries.contains_key(&definition.alias)
            && self
                .subtree_deepest_first(&definition.alias)
                .contains(parent)
        {
            self.effects.push(answer(reply, Err(SupervisionError::Invalid(format!(
                "{} cannot be replaced under {parent}: that is inside its own subtree (a cycle of parents)",
                definition.alias
            )))));
            return;
        }
        if let Some(existing) = self.entries.get_mut(&definition.alias) {
            let mode = match flag {
                CreateFlag::Default => {
                    self.effects.push(answer(reply, Ok(false)));
                    return;
                }
                CreateFlag::ForceSoft => StopMode::Soft,
                CreateFlag::ForceHard => StopMode::Hard,
                CreateFlag::Force => StopMode::Force,
            };
            if existing.replacement.is_some() {
                self.effects.push(answer(
                    reply,
                    Err(SupervisionError::Overtaken(format!(
                        "{} is already being replaced",
                        definition.alias
                    ))),
                ));
                return;
            }
            existing.want = Want::Destroyed;
            existing.stop_mode = mode;
            existing.replacement = Some((definition, reply));
            return;
        }
        self.effects.push(Effect::Admit {
            definition: Box::new(definition),
            reply,
        });
    }

    /// Admits a new definition, given what the ports said about it ([`Effect::Admit`]):
    /// everything that can be known wrong about it is refused before it runs.
    pub(crate) fn admit(
        &mut self,
        definition: Definition,
        admission: Admission,
        reply: Reply<bool>,
    ) {
        match self.check_new(&definition, admission) {
            Ok(()) => self.insert(definition, reply),
            Err(error) => {
                self.effects.push(answer(reply, Err(error)));
            }
        }
    }

    fn check_new(
        &self,
        definition: &Definition,
        admission: Admission,
    ) -> Result<(), SupervisionError> {
        let alias = &definition.alias;
        if admission.registered {
            return Err(SupervisionError::AliasTaken(format!(
                "{alias} is registered by a container the node does not supervise"
            )));
        }
        if let Some(parent) = &definition.parent {
            match self.entries.get(parent) {
                None => {
                    return Err(SupervisionError::Invalid(format!(
                        "parent {parent} is not a container this node supervises"
                    )));
                }
                Some(entry) if entry.want == Want::Destroyed => {
                    return Err(SupervisionError::WrongState(format!(
                        "parent {parent} is being destroyed"
                    )));
                }
                Some(_) => {}
            }
        }
        admission.program.map_err(SupervisionError::Invalid)
    }

    /// Adds the entry and asks for its alias; it counts once [`Tree::reserved`].
    fn insert(&mut self, definition: Definition, reply: Reply<bool>) {
        let alias = definition.alias.clone();
        let order = self.next_order;
        self.next_order += 1;
        let mut entry = Entry::new(definition, order, reef_core::new_lease());
        entry.announce = true;
        entry.waiters.push(Waiter::Ready(reply));
        self.effects.push(Effect::Reserve {
            snapshot: entry.snapshot(),
            token: entry.token.clone(),
        });
        self.entries.insert(alias, entry);
    }

    /// The alias of a new or restored entry is its own.
    pub(crate) fn reserved(&mut self, alias: &Alias) {
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        self.dirty = true;
        if std::mem::take(&mut entry.announce) {
            self.lifecycle(alias, EventKind::Create, Phase::Before, "defined");
            self.lifecycle(alias, EventKind::Create, Phase::On, "state CREATED");
        }
    }

    /// Something else holds the alias of a new or restored entry: it is not kept, and a
    /// Create waiting for it hears why.
    pub(crate) fn refused(&mut self, alias: &Alias, reason: String) {
        let Some(mut entry) = self.entries.remove(alias) else {
            return;
        };
        if !entry.announce {
            tracing::error!(%alias, %reason, "cannot restore a supervised container");
        }
        entry.answer_ready(&mut self.effects, || {
            Err(SupervisionError::AliasTaken(reason.clone()))
        });
    }

    pub(super) fn destroy(&mut self, alias: Alias, mode: StopMode, reply: Reply<Vec<Alias>>) {
        let Some(reply) = self.go_ahead(&alias, reply) else {
            return;
        };
        let children = self.children(Some(&alias));
        if mode == StopMode::Keep && !children.is_empty() {
            let names: Vec<_> = children.iter().map(|c| c.as_str()).collect();
            self.effects.push(answer(
                reply,
                Err(SupervisionError::WrongState(format!(
                    "{alias} has children ({}); destroy them first or use FORCE",
                    names.join(", ")
                ))),
            ));
            return;
        }
        let subtree = self.subtree_deepest_first(&alias);
        for member in &subtree {
            if let Some(entry) = self.entries.get_mut(member) {
                entry.answer_ready(&mut self.effects, || {
                    Err(SupervisionError::Overtaken(format!(
                        "{member} was destroyed before it answered"
                    )))
                });
                entry.want = Want::Destroyed;
                entry.stop_mode = mode;
            }
        }
        self.lifecycle(
            &alias,
            EventKind::Destroy,
            Phase::Before,
            "destroy requested",
        );
        if let Some(entry) = self.entries.get_mut(&alias) {
            entry.waiters.push(Waiter::Gone(reply, subtree));
        }
    }

    pub(super) fn start(&mut self, alias: Alias, reply: Reply<bool>) {
        let Some(reply) = self.go_ahead(&alias, reply) else {
            return;
        };
        let entry = &self.entries[&alias];
        if entry.want == Want::Destroyed {
            self.effects.push(answer(
                reply,
                Err(SupervisionError::WrongState(format!(
                    "{alias} is being destroyed"
                ))),
            ));
            return;
        }
        if let Some(parent) = &entry.definition.parent
            && self
                .entries
                .get(parent)
                .is_some_and(|p| p.want != Want::Running)
        {
            self.effects.push(answer(
                reply,
                Err(SupervisionError::WrongState(format!(
                    "its parent {parent} is stopped; start the parent"
                ))),
            ));
            return;
        }
        if entry.want == Want::Running && entry.process.as_ref().is_some_and(|p| p.ready) {
            self.effects.push(answer(reply, Ok(false)));
            return;
        }
        for member in self.subtree_deepest_first(&alias) {
            if let Some(entry) = self.entries.get_mut(&member) {
                entry.want = Want::Running;
                entry.failed_by_node = false;
                entry.not_before = None;
                entry.consecutive = 0;
                entry.cycle = None;
            }
        }
        self.dirty = true;
        if let Some(entry) = self.entries.get_mut(&alias) {
            entry.waiters.push(Waiter::Ready(reply));
        }
    }

    pub(super) fn stop(&mut self, alias: Alias, mode: StopMode, reply: Reply<()>) {
        let Some(reply) = self.go_ahead(&alias, reply) else {
            return;
        };
        for member in self.subtree_deepest_first(&alias) {
            if let Some(entry) = self.entries.get_mut(&member) {
                entry.answer_ready(&mut self.effects, || {
                    Err(SupervisionError::Overtaken(format!(
                        "{member} was stopped before it answered"
                    )))
                });
                if entry.want == Want::Running {
                    entry.want = Want::Stopped;
                }
                entry.stop_mode = mode;
                entry.cycle = None;
            }
        }
        self.dirty = true;
        if let Some(entry) = self.entries.get_mut(&alias) {
            entry.waiters.push(Waiter::Down(reply));
        }
    }

    pub(super) fn restart(&mut self, alias: Alias, reply: Reply<bool>) {
        let running = self
            .entries
            .get(&alias)
            .is_some_and(|e| e.want == Want::Running);
        if !running {
            return self.start(alias, reply);
        }
        let Some(reply) = self.refuse_while_shutting_down(reply) else {
            return;
        };
        self.begin_cycle(std::slice::from_ref(&alias), None);
        if let Some(entry) = self.entries.get_mut(&alias) {
            entry.restarts += 1;
            entry.waiters.push(Waiter::Ready(reply));
        }
        self.lifecycle(
            &alias,
            EventKind::Restart,
            Phase::Before,
            "restart requested",
        );
    }
}
