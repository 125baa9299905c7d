//! The supervisor actor: owns the tree and reconciles it. Its work is split by job:
//! `commands` (from the handle), `events` (exits, readiness, attaches), `failures`
//! (solver chains, intensity, strategies, escalation), `reconcile` (stepping each
//! container towards what it should be doing) and `durability` (the tree on disk).

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
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    CreateFlag, Definition, Failure, Intensity, Kind, LogDir, Policy, Reply, RestartType, State,
    StopMode, Strategy, SupervisedSnapshot, SupervisionConfig, SupervisionError,
    policy::{Action, error_type},
    ports::{Observed, Probe, Processes, Reservations, SpawnRequest},
    process::{Exit, ProcessId},
    store::{Store, StoredContainer},
};

mod commands;
mod durability;
mod events;
mod failures;
mod reconcile;

/// How often log sizes are checked for rotation.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How much of a log a start failure quotes.
const LOG_TAIL_BYTES: u64 = 600;

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
enum Event {
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
    fn kill(&mut self, os: &dyn Processes) {
        self.killed = true;
        os.signal(self.id, Signal::SIGKILL);
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

    fn answer_ready(&mut self, result: impl Fn() -> Result<bool, SupervisionError>) {
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            match waiter {
                Waiter::Ready(reply) => {
                    let _ = reply.send(result());
                }
                other => self.waiters.push(other),
            }
        }
    }
}

struct Actor {
    config: SupervisionConfig,
    reservations: Arc<dyn Reservations>,
    os: Arc<dyn Processes>,
    probe: Arc<dyn Probe>,
    logs: LogDir,
    store: Store,
    entries: BTreeMap<Alias, Entry>,
    root_intensity: Intensity,
    events: mpsc::UnboundedSender<Event>,
    next_order: u64,
    next_cycle: u64,
    dirty: bool,
    shutdown: Option<(Instant, Reply<()>)>,
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
    let stored = store.load()?;
    let (commands_tx, commands) = mpsc::channel(256);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (observed_tx, observed) = mpsc::unbounded_channel();
    reservations.observe(observed_tx);
    let mut actor = Actor {
        config,
        reservations,
        os,
        probe,
        logs,
        store,
        entries: BTreeMap::new(),
        root_intensity: Intensity::default(),
        events: events_tx,
        next_order: 0,
        next_cycle: 0,
        dirty: false,
        shutdown: None,
    };
    actor.restore(stored);
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
            if self.shutdown.is_some() && self.entries.values().all(|e| e.process.is_none()) {
                if let Some((_, reply)) = self.shutdown.take() {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                Some(event) = events.recv() => self.event(event),
                Some(seen) = observed.recv() => self.observed(seen),
                _ = tokio::time::sleep_until(wake) => {}
                _ = log_check.tick() => self.rotate_logs(),
            }
        }
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
    fn tree_order(&self) -> Vec<Alias> {
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

    fn next_wake(&self) -> Instant {
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
                        wake = wake.min(at + self.config.attach_timeout);
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

    fn publish(&self) {
        for entry in self.entries.values() {
            self.reservations
                .update(entry.snapshot(), self.holding(entry));
        }
    }

    fn lifecycle(&self, alias: &Alias, kind: EventKind, phase: Phase, reason: &str) {
        if let Some(entry) = self.entries.get(alias) {
            self.reservations
                .update(entry.snapshot(), self.holding(entry));
        }
        self.reservations.lifecycle(alias, kind, phase, reason);
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
        for alias in self.entries.keys() {
            if let Err(error) = self.logs.rotate_if_large(alias.as_str()) {
                tracing::warn!(%alias, %error, "cannot rotate the container log");
            }
        }
    }
}
