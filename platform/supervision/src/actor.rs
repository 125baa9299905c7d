//! The supervisor actor: one task that owns the [`Tree`] and carries out its effects
//! against the ports. It feeds the tree commands, the reports of its own tasks (exits,
//! readiness, health) and the registry's news of attach streams, and after each one
//! steps every container until nothing changes, then stores the tree if it changed.
//!
//! An effect with an outcome (a spawn, a reservation, an admission) is answered by
//! calling back into the tree at once, and what that answer asks for is carried out
//! before the effects queued after it, so effects happen in the order a transition
//! would have done them itself. Answers to callers are effects too: a caller hears
//! only after the state before its answer has been published.

use std::{sync::Arc, time::Duration};

use reef_core::Alias;
use tokio::sync::{mpsc, oneshot};

use super::{
    Definition, LogDir, SupervisionConfig,
    ports::{Observed, Pending, Probe, Processes, Reservations, SpawnRequest},
    process::Exit,
    store::Store,
    tree::{Admission, Effect, Event, Tree},
};

pub(super) use super::tree::Command;

/// How often log sizes are checked for rotation.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How much of a log a start failure quotes.
const LOG_TAIL_BYTES: u64 = 600;
/// How many rounds of steps a reconciliation may take before it gives up for now.
const RECONCILE_ROUNDS: usize = 64;

struct Actor {
    tree: Tree,
    config: SupervisionConfig,
    reservations: Arc<dyn Reservations>,
    os: Arc<dyn Processes>,
    probe: Arc<dyn Probe>,
    logs: LogDir,
    store: Store,
    events: mpsc::UnboundedSender<Event>,
}

/// Starts the actor with the stored tree and returns its command queue.
pub(super) fn spawn(
    config: SupervisionConfig,
    reservations: Arc<dyn Reservations>,
    os: Arc<dyn Processes>,
    probe: Arc<dyn Probe>,
    logs: LogDir,
) -> std::io::Result<mpsc::Sender<Command>> {
    let store = Store::new(&config.data_dir);
    let mut stored = store.load()?;
    let (commands_tx, commands) = mpsc::channel(256);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (observed_tx, observed) = mpsc::unbounded_channel();
    reservations.observe(observed_tx);
    let mut actor = Actor {
        tree: Tree::new(config.root_policy.clone(), config.attach_timeout),
        config,
        reservations,
        os,
        probe,
        logs,
        store,
        events: events_tx,
    };
    stored.sort_by_key(|saved| saved.order);
    for saved in stored {
        let alias = saved.definition.alias.clone();
        let adopted = saved.process.and_then(|id| Some((id, actor.os.adopt(id)?)));
        let (id, exit) = adopted.unzip();
        if actor.tree.restore(saved, id)
            && let Some(exit) = exit
        {
            actor.watch_exit(&alias, 1, exit);
        }
        actor.carry_out();
    }
    tokio::spawn(actor.run(commands, events, observed));
    Ok(commands_tx)
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut observed: mpsc::UnboundedReceiver<Observed>,
    ) {
        let mut log_check = tokio::time::interval(LOG_CHECK_INTERVAL);
        loop {
            self.reconcile();
            self.persist();
            if self.tree.finish_shutdown() {
                return;
            }
            let wake = self.tree.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.tree.command(command),
                    None => return,
                },
                Some(event) = events.recv() => self.tree.event(event),
                Some(seen) = observed.recv() => self.tree.observed(seen),
                _ = tokio::time::sleep_until(wake) => {}
                _ = log_check.tick() => self.rotate_logs(),
            }
            self.carry_out();
        }
    }

    /// Steps every container, parents before children, until nothing changes; each
    /// step's effects are carried out before the next step looks at the tree.
    fn reconcile(&mut self) {
        for _ in 0..RECONCILE_ROUNDS {
            let mut changed = false;
            for alias in self.tree.tree_order() {
                changed |= self.tree.step(&alias);
                self.carry_out();
            }
            for (snapshot, holding) in self.tree.snapshots() {
                self.reservations.update(snapshot, holding);
            }
            if !changed {
                return;
            }
        }
        tracing::warn!("supervision did not settle in {RECONCILE_ROUNDS} rounds");
    }

    /// Carries out the effects the tree queued, and what their answers queue, depth
    /// first.
    fn carry_out(&mut self) {
        for effect in self.tree.take_effects() {
            self.effect(effect);
            self.carry_out();
        }
    }

    fn effect(&mut self, effect: Effect) {
        match effect {
            Effect::Signal { id, signal } => self.os.signal(id, signal),
            Effect::Spawn {
                definition,
                generation,
                token,
            } => self.start_process(&definition, generation, &token),
            Effect::Admit { definition, reply } => {
                let admission = self.admission(&definition);
                self.tree.admit(*definition, admission, reply);
            }
            Effect::Reserve { snapshot, token } => {
                let alias = snapshot.definition.alias.clone();
                match self.reservations.reserve(snapshot, &token) {
                    Ok(()) => self.tree.reserved(&alias),
                    Err(taken) => self.tree.refused(&alias, taken.to_string()),
                }
            }
            Effect::Publish { snapshot, holding } => self.reservations.update(snapshot, holding),
            Effect::Lifecycle {
                alias,
                kind,
                phase,
                reason,
            } => self.reservations.lifecycle(&alias, kind, phase, &reason),
            Effect::Evict { alias, reason } => self.reservations.evict(&alias, reason),
            Effect::Release { alias } => self.reservations.release_destroyed(&alias),
            Effect::CheckReady {
                alias,
                generation,
                timeout,
            } => self.check_ready(alias, generation, timeout),
            Effect::WatchHealth {
                alias,
                generation,
                interval,
                failures,
            } => {
                if let Some(guard) = self.health_checks(&alias, generation, interval, failures) {
                    self.tree.health_started(&alias, generation, guard);
                }
            }
            Effect::Answer(send) => send(),
            Effect::QuoteLog { alias, message } => {
                let tail = self.log_tail(&alias);
                self.tree.start_failed(&alias, format!("{message}{tail}"));
            }
        }
    }

    /// What the ports say about a new definition.
    fn admission(&self, definition: &Definition) -> Admission {
        let super::Kind::Process(spec) = &definition.kind;
        Admission {
            registered: self.reservations.is_registered(definition.alias.as_str()),
            program: self
                .os
                .resolve(&spec.command, spec.working_dir.as_deref())
                .map(drop)
                .map_err(|error| error.to_string()),
        }
    }

    fn start_process(&mut self, definition: &Definition, generation: u64, token: &str) {
        let alias = &definition.alias;
        let super::Kind::Process(spec) = &definition.kind;
        let credentials = match &self.config.credentials {
            None => None,
            Some(credentials) => match credentials.issue(alias.as_str()) {
                Ok(paths) => Some(paths),
                Err(error) => {
                    let reason = format!("cannot issue the container's certificate: {error}");
                    return self.tree.start_failed(alias, reason);
                }
            },
        };
        let log = self.logs.path(alias.as_str());
        let spawned = self.os.spawn(SpawnRequest {
            spec,
            alias: alias.as_str(),
            parent: definition.parent.as_ref().map(|p| p.as_str()),
            token,
            credentials: credentials.as_ref(),
            environment: &self.config.environment,
            log: &log,
        });
        match spawned {
            Ok((id, exit)) => {
                self.watch_exit(alias, generation, exit);
                self.tree.spawned(alias, generation, id);
            }
            Err(error) => self.tree.start_failed(alias, error.to_string()),
        }
    }

    fn persist(&mut self) {
        if !self.tree.take_dirty() {
            return;
        }
        if let Err(error) = self.store.save(self.tree.stored()) {
            tracing::error!(%error, "cannot write the durable registry");
        }
    }

    /// Reports the end of process `generation` of `alias` when `exit` resolves.
    fn watch_exit(&self, alias: &Alias, generation: u64, exit: Pending<Exit>) {
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

    /// Reports whether process `generation` answers: a ping of its endpoint, or at once
    /// for a container without one (it proved itself by attaching).
    fn check_ready(&self, alias: Alias, generation: u64, timeout: Duration) {
        let ping = self.reservations.endpoint(alias.as_str()).map(|endpoint| {
            self.probe
                .ping(&alias, endpoint, self.config.ca_pem.clone(), timeout)
        });
        let events = self.events.clone();
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

    /// Pings a ready process's endpoint every `interval` and reports it unhealthy after
    /// `allowed` failures in a row, until the returned guard is dropped. A container
    /// without an endpoint has no health checks.
    fn health_checks(
        &self,
        alias: &Alias,
        generation: u64,
        interval: Duration,
        allowed: u32,
    ) -> Option<oneshot::Sender<()>> {
        let endpoint = self.reservations.endpoint(alias.as_str())?;
        let (stop, mut stopped) = oneshot::channel::<()>();
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
                match probe
                    .ping(&alias, endpoint.clone(), ca.clone(), interval)
                    .await
                {
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

    fn log_tail(&self, alias: &Alias) -> String {
        match super::tail(&self.logs.path(alias.as_str()), LOG_TAIL_BYTES) {
            Ok((bytes, _)) if !bytes.is_empty() => {
                format!(
                    "; its log ends with:\n{}",
                    String::from_utf8_lossy(&bytes).trim_end()
                )
            }
            _ => String::new(),
        }
    }

    fn rotate_logs(&self) {
        for alias in self.tree.aliases() {
            if let Err(error) = self.logs.rotate_if_large(alias.as_str()) {
                tracing::warn!(%alias, %error, "cannot rotate the container log");
            }
        }
    }
}
