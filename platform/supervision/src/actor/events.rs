//! What the actor's own tasks and the registry report: exits, readiness, health,
//! attaches and detaches; and the tasks that watch for them.

use super::*;

impl Actor {
    pub(super) fn event(&mut self, event: Event) {
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
        self.os.signal(process.id, Signal::SIGKILL);
        entry.last_exit = exit.to_string();
        // A restart already scheduled (a failed start kills its process first) stays
        // visible; any other activity was about this process.
        if entry.not_before.is_none() {
            entry.activity.clear();
        }
        self.dirty = true;
        self.reservations.evict(alias, "its process ended");
        tracing::info!(%alias, pid = process.id.pid, %exit, "container process ended");
        let expected = process.retiring || process.term_sent.is_some() || process.killed;
        if expected {
            self.lifecycle(alias, EventKind::Stop, Phase::On, &exit.to_string());
            return;
        }
        if !process.ready {
            let tail = self.log_tail(alias);
            return self.start_failed(alias, format!("exited ({exit}) before it answered{tail}"));
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
        let health = self.health_checks(alias, generation);
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        let first = !entry.ever_ready;
        let process = entry.process.as_mut().expect("current process");
        process.ready = true;
        process._health = health;
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
            entry.answer_ready(|| Ok(true));
        }
    }

    pub(super) fn observed(&mut self, seen: Observed) {
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
                            let generation = process.generation;
                            self.check_ready(&alias, generation);
                        }
                    }
                    _ => {
                        tracing::warn!(%alias, ?pid, ?expected, "an attach from a process the node does not run there; closing it");
                        self.reservations
                            .evict(&alias, "this process is not the one the node runs");
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

    /// Reports the end of process `generation` of `alias` when `exit` resolves.
    pub(super) fn watch_exit(
        &self,
        alias: &Alias,
        generation: u64,
        exit: impl std::future::Future<Output = Exit> + Send + 'static,
    ) {
        let events = self.events.clone();
        let alias = alias.clone();
        tokio::spawn(async move {
            let exit = exit.await;
            let _ = events.send(Event::Exited {
                alias,
                generation,
                exit,
            });
        });
    }

    pub(super) fn check_ready(&self, alias: &Alias, generation: u64) {
        let endpoint = self.reservations.endpoint(alias.as_str());
        let events = self.events.clone();
        let alias = alias.clone();
        let timeout = self.entries[&alias].policy().start_timeout;
        // A container without an endpoint proves itself by attaching.
        let ping = endpoint.map(|endpoint| {
            self.probe
                .ping(endpoint, self.config.ca_pem.clone(), timeout)
        });
        tokio::spawn(async move {
            let result = match ping {
                None => Ok(()),
                Some(ping) => ping
                    .await
                    .map_err(|why| format!("its endpoint did not answer a ping: {why}")),
            };
            let _ = events.send(Event::Ready {
                alias,
                generation,
                result,
            });
        });
    }

    /// Starts the health checks of a process that became ready, when its policy asks.
    pub(super) fn health_checks(
        &self,
        alias: &Alias,
        generation: u64,
    ) -> Option<oneshot::Sender<()>> {
        let policy = self.entries.get(alias)?.policy();
        if policy.health_interval.is_zero() {
            return None;
        }
        let endpoint = self.reservations.endpoint(alias.as_str())?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let interval = policy.health_interval;
        let allowed = policy.health_failures.max(1);
        let events = self.events.clone();
        let alias = alias.clone();
        let ca = self.config.ca_pem.clone();
        let probe = self.probe.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = ticks.tick() => {}
                }
                match probe.ping(endpoint.clone(), ca.clone(), interval).await {
                    Ok(()) => failures = 0,
                    Err(why) => {
                        failures += 1;
                        if failures >= allowed {
                            let message = format!("{failures} health checks failed, last: {why}");
                            let _ = events.send(Event::Unhealthy {
                                alias,
                                generation,
                                message,
                            });
                            return;
                        }
                    }
                }
            }
        });
        Some(stop)
    }
}
