//! What the actor's own tasks and the registry report: exits, readiness, health,
//! attaches and detaches.

use super::*;

impl Tree {
    pub(crate) fn event(&mut self, event: Event) {
        match event {
            Event::Exited {
                alias,
                generation,
                exit,
            } => self.exited(&alias, generation, exit),
            Event::Ready {
                alias,
                generation,
                result,
            } => self.ready(&alias, generation, result),
            Event::Unhealthy {
                alias,
                generation,
                message,
            } => {
                if self.current(&alias, generation) {
                    self.failure(
                        &alias,
                        Failure {
                            error_type: error_type::HEALTH.to_owned(),
                            message,
                            normal: false,
                        },
                    );
                }
            }
        }
    }

    pub(super) fn current(&self, alias: &Alias, generation: u64) -> bool {
        self.entries
            .get(alias)
            .and_then(|e| e.process.as_ref())
            .is_some_and(|p| p.generation == generation)
    }

    pub(super) fn exited(&mut self, alias: &Alias, generation: u64, exit: Exit) {
        if !self.current(alias, generation) {
            return;
        }
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        let process = entry.process.take().expect("current process");
        // Whatever the process left behind in its group goes with it.
        self.effects.push(Effect::Signal {
            id: process.id,
            signal: Signal::SIGKILL,
        });
        entry.last_exit = exit.to_string();
        // A restart already scheduled (a failed start kills its process first) stays
        // visible; any other activity was about this process.
        if entry.not_before.is_none() {
            entry.activity.clear();
        }
        self.dirty = true;
        self.effects.push(Effect::Evict {
            alias: alias.clone(),
            reason: "its process ended",
        });
        tracing::info!(%alias, pid = process.id.pid, %exit, "container process ended");
        let expected = process.retiring || process.term_sent.is_some() || process.killed;
        if expected {
            self.lifecycle(alias, EventKind::Stop, Phase::On, &exit.to_string());
            return;
        }
        if !process.ready {
            self.effects.push(Effect::QuoteLog {
                alias: alias.clone(),
                message: format!("exited ({exit}) before it answered"),
            });
            return;
        }
        let error_type = match exit {
            Exit::Signal(_) => error_type::SIGNAL,
            _ => error_type::EXIT,
        };
        self.failure(
            alias,
            Failure {
                error_type: error_type.to_owned(),
                message: exit.to_string(),
                normal: exit.is_normal(),
            },
        );
    }

    pub(super) fn ready(&mut self, alias: &Alias, generation: u64, result: Result<(), String>) {
        if !self.current(alias, generation) {
            return;
        }
        if let Err(message) = result {
            self.kill(alias);
            return self.start_failed(alias, message);
        }
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        let policy = entry.policy();
        if !policy.health_interval.is_zero() {
            self.effects.push(Effect::WatchHealth {
                alias: alias.clone(),
                generation,
                interval: policy.health_interval,
                failures: policy.health_failures.max(1),
            });
        }
        let first = !entry.ever_ready;
        let process = entry.process.as_mut().expect("current process");
        process.ready = true;
        entry.state = State::Started;
        entry.ever_ready = true;
        entry.cycle = None;
        entry.activity.clear();
        entry.last_ready_at = Some(Instant::now());
        self.dirty = true;
        // Events first: they publish the new state that the answered callers read.
        self.lifecycle(alias, EventKind::Start, Phase::After, "answering");
        if first {
            self.lifecycle(alias, EventKind::Create, Phase::After, "answering");
        }
        if let Some(entry) = self.entries.get_mut(alias) {
            entry.answer_ready(&mut self.effects, || Ok(true));
        }
    }

    pub(crate) fn observed(&mut self, seen: Observed) {
        match seen {
            Observed::Attached { alias, pid } => {
                let Some(entry) = self.entries.get_mut(&alias) else {
                    return;
                };
                let expected = entry.process.as_ref().map(|p| p.id.pid);
                match entry.process.as_mut() {
                    Some(process) if pid == Some(process.id.pid) && !process.retiring => {
                        process.attached = true;
                        process.detached_at = None;
                        if !process.ready {
                            // A container without an endpoint proves itself by attaching.
                            self.effects.push(Effect::CheckReady {
                                generation: process.generation,
                                timeout: entry.definition.policy.start_timeout,
                                alias,
                            });
                        }
                    }
                    _ => {
                        tracing::warn!(%alias, ?pid, ?expected, "an attach from a process the node does not run there; closing it");
                        self.effects.push(Effect::Evict {
                            alias,
                            reason: "this process is not the one the node runs",
                        });
                    }
                }
            }
            Observed::Detached { alias, cause } => {
                let Some(process) = self
                    .entries
                    .get_mut(&alias)
                    .and_then(|e| e.process.as_mut())
                else {
                    return;
                };
                process.attached = false;
                let leaving = process.retiring || process.term_sent.is_some() || process.killed;
                if leaving {
                    return;
                }
                if cause == DetachCause::Silent {
                    self.failure(
                        &alias,
                        Failure {
                            error_type: error_type::UNRESPONSIVE.to_owned(),
                            message: "missed heartbeats on its attach stream".to_owned(),
                            normal: false,
                        },
                    );
                } else {
                    // It may be ending (its exit follows) or reconnecting.
                    process.detached_at = Some(Instant::now());
                }
            }
        }
    }

    /// The health checks of process `generation` run until `guard` is dropped: with
    /// the process, or now if it is no longer the current one.
    pub(crate) fn health_started(
        &mut self,
        alias: &Alias,
        generation: u64,
        guard: oneshot::Sender<()>,
    ) {
        if let Some(process) = self.entries.get_mut(alias).and_then(|e| e.process.as_mut())
            && process.generation == generation
        {
            process._health = Some(guard);
        }
    }
}
