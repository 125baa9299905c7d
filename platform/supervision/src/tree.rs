//! The supervision tree as a state machine. It holds what each container should be
//! doing (running, stopped, destroyed) and what its process is doing, and its
//! transitions follow commands, process events and time. A transition changes the
//! tree and queues [`Effect`]s; it does no I/O. The actor (`actor.rs`) carries the
//! effects out against the ports, and answers the effects that have an outcome (a
//! spawn, an admission, a reservation, a log quoted, health checks started) by calling
//! back into the tree.
//!
//! The transitions are split by job: `commands` (from the handle), `events` (exits,
//! readiness, attaches), `failures` (solver chains, intensity, strategies,
//! escalation), `reconcile` (stepping each container towards what it should be doing)
//! and `restore` (the tree as stored, and as read back at start).
//!
//! Time is tokio's clock, so that paused time drives backoff, grace periods and
//! timeouts in tests. Answers to callers are effects too, so that a caller hears only
//! after what was published before its answer.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use nix::sys::signal::Signal;
use reef_core::{
    Alias,
    lifecycle::{DetachCause, EventKind, Phase},
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    CreateFlag, Definition, Failure, Intensity, Policy, Reply, RestartType, State, StopMode,
    Strategy, SupervisedSnapshot, SupervisionError,
    policy::{Action, error_type},
    ports::Observed,
    process::{Exit, ProcessId},
    store::StoredContainer,
};

mod commands;
mod events;
mod failures;
mod reconcile;
mod restore;
#[cfg(test)]
mod tests;

/// What the handle asks of the actor.
pub(super) enum Command {
    Create {
        definition: Box<Definition>,
        flag: CreateFlag,
        reply: Reply<bool>,
    },
    Destroy {
        alias: Alias,
        mode: StopMode,
        reply: Reply<Vec<Alias>>,
    },
    /// Answered like Create, through the container's Ready waiter.
    Start {
        alias: Alias,
        reply: Reply<bool>,
    },
    Stop {
        alias: Alias,
        mode: StopMode,
        reply: Reply<()>,
    },
    Restart {
        alias: Alias,
        reply: Reply<bool>,
    },
    Fail {
        alias: Alias,
        failure: Failure,
        reply: Reply<()>,
    },
    Shutdown {
        grace: Duration,
        reply: Reply<()>,
    },
}

/// What the actor's own tasks report.
pub(super) enum Event {
    Exited {
        alias: Alias,
        generation: u64,
        exit: Exit,
    },
    Ready {
        alias: Alias,
        generation: u64,
        result: Result<(), String>,
    },
    Unhealthy {
        alias: Alias,
        generation: u64,
        message: String,
    },
}

/// What a transition asks the actor to do. Each one that has an outcome names the
/// call that answers it.
pub(super) enum Effect {
    /// Sends `signal` to the process group of `id`.
    Signal { id: ProcessId, signal: Signal },
    /// Starts process `generation` of a container; answered by [`Tree::spawned`] or
    /// [`Tree::start_failed`].
    Spawn {
        definition: Arc<Definition>,
        generation: u64,
        token: String,
    },
    /// Checks what the tree cannot know about a new definition (is the alias held
    /// elsewhere, does the program exist); answered by [`Tree::admit`].
    Admit {
        definition: Box<Definition>,
        reply: Reply<bool>,
    },
    /// Reserves the alias of a new or restored container; answered by
    /// [`Tree::reserved`] or [`Tree::refused`].
    Reserve {
        snapshot: SupervisedSnapshot,
        token: String,
    },
    /// Publishes a container's state; `holding` says whether its envelopes are held.
    Publish {
        snapshot: SupervisedSnapshot,
        holding: bool,
    },
    /// Reports a lifecycle event.
    Lifecycle {
        alias: Alias,
        kind: EventKind,
        phase: Phase,
        reason: String,
    },
    /// Closes a container's attach stream and forgets its lease.
    Evict { alias: Alias, reason: &'static str },
    /// Gives the alias of a destroyed container up.
    Release { alias: Alias },
    /// Asks the container whether it answers; answered by an [`Event::Ready`].
    CheckReady {
        alias: Alias,
        generation: u64,
        timeout: Duration,
    },
    /// Starts the health checks of a ready process that registered an endpoint; they
    /// report an
    /// [`Event::Unhealthy`], and the guard that ends them goes to
    /// [`Tree::health_started`].
    WatchHealth {
        alias: Alias,
        generation: u64,
        interval: Duration,
        failures: u32,
    },
    /// A process ended before it answered: the actor quotes the end of its log in
    /// `message`, and answers with [`Tree::start_failed`].
    QuoteLog { alias: Alias, message: String },
    /// Answers a caller. Queued like the rest, so that the caller hears only once the
    /// effects before it are carried out, and reads the state they published.
    Answer(Box<dyn FnOnce() + Send>),
}

/// The effect that answers `reply` with `result`.
fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, SupervisionError>) -> Effect {
    Effect::Answer(Box::new(move || {
        let _ = reply.send(result);
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Running,
    Stopped,
    Destroyed,
}

struct Process {
    id: ProcessId,
    generation: u64,
    spawned_at: Instant,
    started_at: SystemTime,
    attached: bool,
    ready: bool,
    /// To be stopped as part of a restart.
    retiring: bool,
    term_sent: Option<Instant>,
    killed: bool,
    detached_at: Option<Instant>,
    /// Dropping it ends the health checks of this process.
    _health: Option<oneshot::Sender<()>>,
}

impl Process {
    /// A process that has just been spawned (or adopted) and has not attached yet.
    fn new(id: ProcessId, generation: u64) -> Self {
        Self {
            id,
            generation,
            spawned_at: Instant::now(),
            started_at: SystemTime::now(),
            attached: false,
            ready: false,
            retiring: false,
            term_sent: None,
            killed: false,
            detached_at: None,
            _health: None,
        }
    }

    /// SIGKILL to its whole process group; its exit is then expected.
    fn kill(&mut self) -> Effect {
        self.killed = true;
        Effect::Signal {
            id: self.id,
            signal: Signal::SIGKILL,
        }
    }
}

enum Waiter {
    /// Answered when the container answers (Create, Start, Restart).
    Ready(Reply<bool>),
    /// Answered when it and its subtree have no processes (Stop).
    Down(Reply<()>),
    /// Answered when it is gone, with the subtree destroyed.
    Gone(Reply<Vec<Alias>>, Vec<Alias>),
}

struct Entry {
    definition: Arc<Definition>,
    order: u64,
    token: String,
    state: State,
    want: Want,
    stop_mode: StopMode,
    process: Option<Process>,
    generation: u64,
    not_before: Option<Instant>,
    cycle: Option<u64>,
    consecutive: u32,
    restarts: u32,
    last_ready_at: Option<Instant>,
    children_intensity: Intensity,
    last_failure: String,
    last_exit: String,
    activity: String,
    ever_ready: bool,
    /// Stopped by an escalation to the node: shown as FAILED, not STOPPED.
    failed_by_node: bool,
    /// Created by a command, so its reservation is announced (restored ones are not).
    announce: bool,
    waiters: Vec<Waiter>,
    replacement: Option<(Definition, Reply<bool>)>,
}

impl Entry {
    fn new(definition: Definition, order: u64, token: String) -> Self {
        Self {
            definition: Arc::new(definition),
            order,
            token,
            state: State::Created,
            want: Want::Running,
            stop_mode: StopMode::Force,
            process: None,
            generation: 0,
            not_before: None,
            cycle: None,
            consecutive: 0,
            restarts: 0,
            last_ready_at: None,
            children_intensity: Intensity::default(),
            last_failure: String::new(),
            last_exit: String::new(),
            activity: String::new(),
            ever_ready: false,
            failed_by_node: false,
            announce: false,
            waiters: Vec::new(),
            replacement: None,
        }
    }

    fn policy(&self) -> &Policy {
        &self.definition.policy
    }

    fn snapshot(&self) -> SupervisedSnapshot {
        SupervisedSnapshot {
            definition: self.definition.clone(),
            state: self.state,
            restarts: self.restarts,
            started_at: self.process.as_ref().map(|p| p.started_at),
            pid: self.process.as_ref().map(|p| p.id.pid),
            activity: self.activity.clone(),
            last_failure: self.last_failure.clone(),
            last_exit: self.last_exit.clone(),
        }
    }

    fn answer_ready(
        &mut self,
        effects: &mut Vec<Effect>,
        result: impl Fn() -> Result<bool, SupervisionError>,
    ) {
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            match waiter {
                Waiter::Ready(reply) => effects.push(answer(reply, result())),
                other => self.waiters.push(other),
            }
        }
    }
}

/// What the actor learns before it admits a definition: the answers of the ports.
pub(super) struct Admission {
    /// Something the node does not supervise holds the alias.
    pub(super) registered: bool,
    /// Whether its program was found, and why not.
    pub(super) program: Result<(), String>,
}

/// The tree and the effects its last transitions asked for.
pub(super) struct Tree {
    root_policy: Policy,
    attach_timeout: Duration,
    /// Backoff jitter in [-1, 1]; tests pin it.
    jitter: fn() -> f64,
    entries: BTreeMap<Alias, Entry>,
    root_intensity: Intensity,
    next_order: u64,
    next_cycle: u64,
    dirty: bool,
    shutdown: Option<(Instant, Reply<()>)>,
    effects: Vec<Effect>,
}

impl Tree {
    pub(super) fn new(root_policy: Policy, attach_timeout: Duration) -> Self {
        Self {
            root_policy,
            attach_timeout,
            jitter: failures::jitter,
            entries: BTreeMap::new(),
            root_intensity: Intensity::default(),
            next_order: 0,
            next_cycle: 0,
            dirty: false,
            shutdown: None,
            effects: Vec::new(),
        }
    }

    /// The effects queued since the last call, in the order they were asked for.
    pub(super) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Whether the tree changed since the last call (and should be stored).
    pub(super) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// True once a shutdown was asked for and no process is left; the shutdown's
    /// caller has then been answered.
    pub(super) fn finish_shutdown(&mut self) -> bool {
        if self.shutdown.is_none() || self.entries.values().any(|e| e.process.is_some()) {
            return false;
        }
        if let Some((_, reply)) = self.shutdown.take() {
            let _ = reply.send(Ok(()));
        }
        true
    }

    pub(super) fn aliases(&self) -> impl Iterator<Item = &Alias> {
        self.entries.keys()
    }

    /// What every container publishes: its state, and whether its envelopes are held.
    pub(super) fn snapshots(&self) -> impl Iterator<Item = (SupervisedSnapshot, bool)> + '_ {
        self.entries
            .values()
            .map(|entry| (entry.snapshot(), self.holding(entry)))
    }

    /// Whether envelopes for `entry` are held while it is not attached.
    fn holding(&self, entry: &Entry) -> bool {
        entry.want == Want::Running && self.shutdown.is_none()
    }

    fn children(&self, parent: Option<&Alias>) -> Vec<Alias> {
        let mut children: Vec<_> = self
            .entries
            .values()
            .filter(|e| e.definition.parent.as_ref() == parent)
            .map(|e| (e.order, e.definition.alias.clone()))
            .collect();
        children.sort();
        children.into_iter().map(|(_, alias)| alias).collect()
    }

    /// `alias` and its descendants, deepest (and newest) first.
    fn subtree_deepest_first(&self, alias: &Alias) -> Vec<Alias> {
        let mut order = vec![alias.clone()];
        let mut index = 0;
        while index < order.len() {
            let children = self.children(Some(&order[index]));
            order.extend(children);
            index += 1;
        }
        order.reverse();
        order
    }

    /// Parents before children, siblings in creation order.
    pub(super) fn tree_order(&self) -> Vec<Alias> {
        let mut order = Vec::with_capacity(self.entries.len());
        let mut seen = HashSet::new();
        let mut queue = self.children(None);
        // Entries whose parent vanished are roots too.
        for entry in self.entries.values() {
            if let Some(parent) = &entry.definition.parent
                && !self.entries.contains_key(parent)
            {
                queue.push(entry.definition.alias.clone());
            }
        }
        let mut index = 0;
        while index < queue.len() {
            let alias = queue[index].clone();
            index += 1;
            if seen.insert(alias.clone()) {
                queue.extend(self.children(Some(&alias)));
                order.push(alias);
            }
        }
        order
    }

    /// When the next timer of the tree is due: a grace period, a start or attach
    /// timeout, a backoff.
    pub(super) fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        let shutdown = self.shutdown.as_ref().map(|(deadline, _)| *deadline);
        for entry in self.entries.values() {
            let policy = entry.policy();
            match &entry.process {
                Some(process) => {
                    if let Some(sent) = process.term_sent
                        && !process.killed
                    {
                        wake = wake.min(sent + policy.stop_grace);
                        if let Some(deadline) = shutdown {
                            wake = wake.min(deadline);
                        }
                    }
                    if !process.ready {
                        wake = wake.min(process.spawned_at + policy.start_timeout);
                    }
                    if let Some(at) = process.detached_at {
                        wake = wake.min(at + self.attach_timeout);
                    }
                }
                None => {
                    if let Some(at) = entry.not_before {
                        wake = wake.min(at);
                    }
                }
            }
        }
        wake.max(now)
    }

    /// Publishes the container's state, then reports the event, so that whoever hears
    /// the event reads the state it led to.
    fn lifecycle(&mut self, alias: &Alias, kind: EventKind, phase: Phase, reason: &str) {
        if let Some(entry) = self.entries.get(alias) {
            self.effects.push(Effect::Publish {
                snapshot: entry.snapshot(),
                holding: self.holding(entry),
            });
        }
        self.effects.push(Effect::Lifecycle {
            alias: alias.clone(),
            kind,
            phase,
            reason: reason.to_owned(),
        });
    }
}
