//! Reconciliation: each container is stepped from what its process is doing towards
//! what it should be doing (running, stopped, destroyed).

use super::*;

impl Tree {
    /// Steps one container towards what it should be doing; true if anything changed.
    pub(crate) fn step(&mut self, alias: &Alias) -> bool {
        let Some(entry) = self.entries.get(alias) else {
            return false;
        };
        let want = match entry.want {
            Want::Running if self.shutdown.is_some() => Want::Stopped,
            want => want,
        };
        match want {
            Want::Destroyed => self.step_destroy(alias),
            Want::Stopped => self.step_stop(alias),
            Want::Running => self.step_run(alias),
        }
    }

    pub(super) fn step_destroy(&mut self, alias: &Alias) -> bool {
        let mode = self.entries[alias].stop_mode;
        let children = self.children(Some(alias));
        let mut changed = false;
        for child in &children {
            let entry = self.entries.get_mut(child).expect("listed");
            if entry.want != Want::Destroyed {
                entry.want = Want::Destroyed;
                entry.stop_mode = mode;
                changed = true;
            }
        }
        if !children.is_empty() {
            return changed;
        }
        if self.entries[alias].process.is_some() {
            return self.ensure_stopping(alias);
        }
        self.remove(alias);
        true
    }

    pub(super) fn step_stop(&mut self, alias: &Alias) -> bool {
        let mode = self.entries[alias].stop_mode;
        let mut changed = false;
        let mut children_running = false;
        for child in self.children(Some(alias)) {
            let entry = self.entries.get_mut(&child).expect("listed");
            if entry.want == Want::Running && self.shutdown.is_none() {
                entry.want = Want::Stopped;
                entry.stop_mode = mode;
                changed = true;
            }
            children_running |= entry.process.is_some();
        }
        if children_running {
            return changed;
        }
        if self.entries[alias].process.is_some() {
            return self.ensure_stopping(alias) || changed;
        }
        let entry = self.entries.get_mut(alias).expect("present");
        let state = if entry.failed_by_node {
            State::Failed
        } else {
            State::Stopped
        };
        if entry.state != state && entry.state != State::Failed {
            entry.state = state;
            entry.activity.clear();
            changed = true;
            self.dirty = true;
            self.lifecycle(alias, EventKind::Stop, Phase::After, "stopped");
        }
        let entry = self.entries.get_mut(alias).expect("present");
        let waiters = std::mem::take(&mut entry.waiters);
        for waiter in waiters {
            match waiter {
                Waiter::Down(reply) => {
                    self.effects.push(answer(reply, Ok(())));
                }
                Waiter::Ready(reply) if self.shutdown.is_some() => {
                    self.effects
                        .push(answer(reply, Err(SupervisionError::ShuttingDown)));
                }
                other => entry.waiters.push(other),
            }
        }
        changed
    }

    pub(super) fn step_run(&mut self, alias: &Alias) -> bool {
        let now = Instant::now();
        let attach_timeout = self.attach_timeout;
        let entry = &self.entries[alias];
        if let Some(process) = &entry.process {
            if process.retiring {
                return self.ensure_stopping(alias);
            }
            if !process.ready && now >= process.spawned_at + entry.policy().start_timeout {
                let message = format!(
                    "did not answer within {} ms",
                    entry.policy().start_timeout.as_millis()
                );
                self.kill(alias);
                self.start_failed(alias, message);
                return true;
            }
            if process
                .detached_at
                .is_some_and(|at| now >= at + attach_timeout)
            {
                if let Some(process) = self.entries.get_mut(alias).and_then(|e| e.process.as_mut())
                {
                    process.detached_at = None;
                }
                self.failure(
                    alias,
                    Failure {
                        error_type: error_type::UNRESPONSIVE.to_owned(),
                        message: format!(
                            "detached and did not attach again within {} ms",
                            attach_timeout.as_millis()
                        ),
                        normal: false,
                    },
                );
                return true;
            }
            return false;
        }
        if let Some(cycle) = entry.cycle {
            let blocked = self.entries.values().any(|other| {
                other.cycle == Some(cycle)
                    && (other.process.as_ref().is_some_and(|p| p.retiring)
                        || (other.definition.parent == entry.definition.parent
                            && other.order < entry.order
                            && other.want == Want::Running))
            });
            if blocked {
                return false;
            }
        }
        if let Some(parent) = &entry.definition.parent {
            let parent_ready = self.entries.get(parent).is_some_and(|p| {
                p.want == Want::Running
                    && p.process.as_ref().is_some_and(|p| p.ready && !p.retiring)
            });
            if !parent_ready {
                return false;
            }
        }
        if entry.not_before.is_some_and(|at| now < at) {
            return false;
        }
        self.spawn(alias);
        true
    }

    /// Sends SIGTERM (or SIGKILL) as the stop mode says; SIGKILL once the grace ends.
    pub(super) fn ensure_stopping(&mut self, alias: &Alias) -> bool {
        let now = Instant::now();
        let shutdown_deadline = self.shutdown.as_ref().map(|(deadline, _)| *deadline);
        let entry = self.entries.get_mut(alias).expect("present");
        let grace = entry.policy().stop_grace;
        let mode = entry.stop_mode;
        let process = entry.process.as_mut().expect("has a process");
        if process.killed {
            return false;
        }
        if mode == StopMode::Hard {
            self.effects.push(process.kill());
            entry.activity = "killing".to_owned();
            return true;
        }
        let Some(sent) = process.term_sent else {
            process.term_sent = Some(now);
            self.effects.push(Effect::Signal {
                id: process.id,
                signal: Signal::SIGTERM,
            });
            entry.activity = "stopping".to_owned();
            self.lifecycle(alias, EventKind::Stop, Phase::Before, "SIGTERM sent");
            return true;
        };
        let deadline = match shutdown_deadline {
            Some(deadline) => deadline.min(sent + grace),
            None if mode == StopMode::Soft => return false,
            None => sent + grace,
        };
        if now >= deadline {
            self.effects.push(process.kill());
            entry.activity = "killed after the grace period".to_owned();
            return true;
        }
        false
    }

    /// Asks for the next process of `alias`; it counts once [`Tree::spawned`].
    fn spawn(&mut self, alias: &Alias) {
        let entry = self.entries.get_mut(alias).expect("present");
        entry.generation += 1;
        self.dirty = true;
        self.effects.push(Effect::Spawn {
            definition: entry.definition.clone(),
            generation: entry.generation,
            token: entry.token.clone(),
        });
    }

    /// Process `generation` of `alias` runs as `id`.
    pub(crate) fn spawned(&mut self, alias: &Alias, generation: u64, id: ProcessId) {
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        entry.process = Some(Process::new(id, generation));
        entry.not_before = None;
        entry.activity = "starting".to_owned();
        self.lifecycle(
            alias,
            EventKind::Start,
            Phase::On,
            &format!("spawned pid {}", id.pid),
        );
    }

    pub(super) fn remove(&mut self, alias: &Alias) {
        let Some(mut entry) = self.entries.remove(alias) else {
            return;
        };
        self.dirty = true;
        self.effects.push(Effect::Release {
            alias: alias.clone(),
        });
        tracing::info!(%alias, "container destroyed");
        for waiter in entry.waiters.drain(..) {
            match waiter {
                Waiter::Gone(reply, subtree) => {
                    self.effects.push(answer(reply, Ok(subtree)));
                }
                Waiter::Ready(reply) => {
                    self.effects.push(answer(
                        reply,
                        Err(SupervisionError::Overtaken(format!(
                            "{alias} was destroyed"
                        ))),
                    ));
                }
                Waiter::Down(reply) => {
                    self.effects.push(answer(reply, Ok(())));
                }
            }
        }
        if let Some((definition, reply)) = entry.replacement.take() {
            self.effects.push(Effect::Admit {
                definition: Box::new(definition),
                reply,
            });
        }
    }

    pub(super) fn kill(&mut self, alias: &Alias) {
        if let Some(process) = self.entries.get_mut(alias).and_then(|e| e.process.as_mut()) {
            self.effects.push(process.kill());
        }
    }
}
