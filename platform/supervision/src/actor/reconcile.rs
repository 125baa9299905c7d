//! Reconciliation: each container is stepped from what its process is doing towards
//! what it should be doing (running, stopped, destroyed).

use super::*;

impl Actor {
    /// Steps every container, parents before children, until nothing changes.
    pub(super) fn reconcile(&mut self) {
        for _ in 0..64 {
            let mut changed = false;
            for alias in self.tree_order() {
                changed |= self.step(&alias);
            }
            self.publish();
            if !changed {
                return;
            }
        }
        tracing::warn!("supervision did not settle in 64 rounds");
    }

    pub(super) fn step(&mut self, alias: &Alias) -> bool {
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
                    let _ = reply.send(Ok(()));
                }
                Waiter::Ready(reply) if self.shutdown.is_some() => {
                    let _ = reply.send(Err(SupervisionError::ShuttingDown));
                }
                other => entry.waiters.push(other),
            }
        }
        changed
    }

    pub(super) fn step_run(&mut self, alias: &Alias) -> bool {
        let now = Instant::now();
        let attach_timeout = self.config.attach_timeout;
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
            process.kill(&*self.os);
            entry.activity = "killing".to_owned();
            return true;
        }
        let Some(sent) = process.term_sent else {
            process.term_sent = Some(now);
            self.os.signal(process.id, Signal::SIGTERM);
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
            process.kill(&*self.os);
            entry.activity = "killed after the grace period".to_owned();
            return true;
        }
        false
    }

    pub(super) fn spawn(&mut self, alias: &Alias) {
        let log = self.logs.path(alias.as_str());
        let entry = self.entries.get_mut(alias).expect("present");
        let Kind::Process(spec) = &entry.definition.kind;
        entry.generation += 1;
        let generation = entry.generation;
        let parent = entry.definition.parent.as_ref().map(|p| p.as_str());
        let credentials = match &self.config.credentials {
            None => None,
            Some(credentials) => match credentials.issue(alias.as_str()) {
                Ok(paths) => Some(paths),
                Err(error) => {
                    let reason = format!("cannot issue the container's certificate: {error}");
                    self.start_failed(alias, reason);
                    return;
                }
            },
        };
        let spawned = self.os.spawn(SpawnRequest {
            spec,
            alias: alias.as_str(),
            parent,
            token: &entry.token,
            credentials: credentials.as_ref(),
            environment: &self.config.environment,
            log: &log,
        });
        self.dirty = true;
        match spawned {
            Ok((id, exit)) => {
                entry.process = Some(Process::new(id, generation));
                entry.not_before = None;
                entry.activity = "starting".to_owned();
                let pid = id.pid;
                self.watch_exit(alias, generation, exit);
                self.lifecycle(
                    alias,
                    EventKind::Start,
                    Phase::On,
                    &format!("spawned pid {pid}"),
                );
            }
            Err(error) => self.start_failed(alias, error.to_string()),
        }
    }

    pub(super) fn remove(&mut self, alias: &Alias) {
        let Some(mut entry) = self.entries.remove(alias) else {
            return;
        };
        self.dirty = true;
        self.reservations.release_destroyed(alias);
        tracing::info!(%alias, "container destroyed");
        for waiter in entry.waiters.drain(..) {
            match waiter {
                Waiter::Gone(reply, subtree) => {
                    let _ = reply.send(Ok(subtree));
                }
                Waiter::Ready(reply) => {
                    let _ = reply.send(Err(SupervisionError::Overtaken(format!(
                        "{alias} was destroyed"
                    ))));
                }
                Waiter::Down(reply) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        if let Some((definition, reply)) = entry.replacement.take() {
            match self.check_new(&definition) {
                Ok(()) => self.insert(definition, Some(reply)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    pub(super) fn kill(&mut self, alias: &Alias) {
        if let Some(process) = self.entries.get_mut(alias).and_then(|e| e.process.as_mut()) {
            process.kill(&*self.os);
        }
    }
}
