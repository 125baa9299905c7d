//! The supervisor actor: owns the tree and reconciles it.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use nix::sys::signal::Signal;
use reef_core::Alias;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    CreateFlag, Definition, Failure, Intensity, Kind, LogDir, Policy, Reply, RestartType, State,
    StopMode, Strategy, SupervisedSnapshot, SupervisionConfig, SupervisionError,
    policy::{Action, error_type},
    ports::{Processes, Reservations, SpawnRequest},
    process::{Exit, ProcessId},
    store::{Store, StoredContainer},
};
use crate::{EventKind, registry::Observed, registry::Phase};

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

    // ----- commands -------------------------------------------------------------

    fn command(&mut self, command: Command) {
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
                let _ = reply.send(match known {
                    true => Ok(()),
                    false => Err(SupervisionError::NotFound(alias.to_string())),
                });
            }
            Command::Shutdown { grace, reply } => {
                tracing::info!(containers = self.entries.len(), "stopping every container");
                self.shutdown = Some((Instant::now() + grace, reply));
            }
        }
    }

    fn refuse_while_shutting_down<T>(&self, reply: Reply<T>) -> Option<Reply<T>> {
        if self.shutdown.is_some() {
            let _ = reply.send(Err(SupervisionError::ShuttingDown));
            return None;
        }
        Some(reply)
    }

    fn create(&mut self, definition: Definition, flag: CreateFlag, reply: Reply<bool>) {
        let Some(reply) = self.refuse_while_shutting_down(reply) else {
            return;
        };
        if let Some(parent) = &definition.parent
            && self.entries.contains_key(&definition.alias)
            && self
                .subtree_deepest_first(&definition.alias)
                .contains(parent)
        {
            let _ = reply.send(Err(SupervisionError::Invalid(format!(
                "{} cannot be replaced under {parent}: that is inside its own subtree (a cycle of parents)",
                definition.alias
            ))));
            return;
        }
        if let Some(existing) = self.entries.get_mut(&definition.alias) {
            let mode = match flag {
                CreateFlag::Default => {
                    let _ = reply.send(Ok(false));
                    return;
                }
                CreateFlag::ForceSoft => StopMode::Soft,
                CreateFlag::ForceHard => StopMode::Hard,
                CreateFlag::Force => StopMode::Force,
            };
            if existing.replacement.is_some() {
                let _ = reply.send(Err(SupervisionError::Aborted(format!(
                    "{} is already being replaced",
                    definition.alias
                ))));
                return;
            }
            existing.want = Want::Destroyed;
            existing.stop_mode = mode;
            existing.replacement = Some((definition, reply));
            return;
        }
        if let Err(error) = self.check_new(&definition) {
            let _ = reply.send(Err(error));
            return;
        }
        self.insert(definition, Some(reply));
    }

    /// Everything that can be known wrong about a new definition before it runs.
    fn check_new(&self, definition: &Definition) -> Result<(), SupervisionError> {
        let alias = &definition.alias;
        if self.reservations.is_registered(alias.as_str()) {
            return Err(SupervisionError::AlreadyExists(format!(
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
                    return Err(SupervisionError::Precondition(format!(
                        "parent {parent} is being destroyed"
                    )));
                }
                Some(_) => {}
            }
        }
        match &definition.kind {
            Kind::Process(spec) => {
                self.os
                    .resolve(&spec.command, spec.working_dir.as_deref())
                    .map_err(|e| SupervisionError::Invalid(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn insert(&mut self, definition: Definition, reply: Option<Reply<bool>>) {
        let alias = definition.alias.clone();
        let order = self.next_order;
        self.next_order += 1;
        let mut entry = Entry::new(definition, order, reef_core::new_lease());
        if let Err(error) = self.reservations.reserve(entry.snapshot(), &entry.token) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(SupervisionError::AlreadyExists(error.to_string())));
            }
            return;
        }
        if let Some(reply) = reply {
            entry.waiters.push(Waiter::Ready(reply));
        }
        self.entries.insert(alias.clone(), entry);
        self.dirty = true;
        self.lifecycle(&alias, EventKind::Create, Phase::Before, "defined");
        self.lifecycle(&alias, EventKind::Create, Phase::On, "state CREATED");
    }

    fn destroy(&mut self, alias: Alias, mode: StopMode, reply: Reply<Vec<Alias>>) {
        let Some(reply) = self.refuse_while_shutting_down(reply) else {
            return;
        };
        if !self.entries.contains_key(&alias) {
            let _ = reply.send(Err(SupervisionError::NotFound(alias.to_string())));
            return;
        }
        let children = self.children(Some(&alias));
        if mode == StopMode::Keep && !children.is_empty() {
            let names: Vec<_> = children.iter().map(|c| c.as_str()).collect();
            let _ = reply.send(Err(SupervisionError::Precondition(format!(
                "{alias} has children ({}); destroy them first or use FORCE",
                names.join(", ")
            ))));
            return;
        }
        let subtree = self.subtree_deepest_first(&alias);
        for member in &subtree {
            if let Some(entry) = self.entries.get_mut(member) {
                entry.answer_ready(|| {
                    Err(SupervisionError::Aborted(format!(
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

    fn start(&mut self, alias: Alias, reply: Reply<bool>) {
        let Some(reply) = self.refuse_while_shutting_down(reply) else {
            return;
        };
        let Some(entry) = self.entries.get(&alias) else {
            let _ = reply.send(Err(SupervisionError::NotFound(alias.to_string())));
            return;
        };
        if entry.want == Want::Destroyed {
            let _ = reply.send(Err(SupervisionError::Precondition(format!(
                "{alias} is being destroyed"
            ))));
            return;
        }
        if let Some(parent) = &entry.definition.parent
            && self
                .entries
                .get(parent)
                .is_some_and(|p| p.want != Want::Running)
        {
            let _ = reply.send(Err(SupervisionError::Precondition(format!(
                "its parent {parent} is stopped; start the parent"
            ))));
            return;
        }
        if entry.want == Want::Running && entry.process.as_ref().is_some_and(|p| p.ready) {
            let _ = reply.send(Ok(false));
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

    fn stop(&mut self, alias: Alias, mode: StopMode, reply: Reply<()>) {
        let Some(reply) = self.refuse_while_shutting_down(reply) else {
            return;
        };
        if !self.entries.contains_key(&alias) {
            let _ = reply.send(Err(SupervisionError::NotFound(alias.to_string())));
            return;
        }
        for member in self.subtree_deepest_first(&alias) {
            if let Some(entry) = self.entries.get_mut(&member) {
                entry.answer_ready(|| {
                    Err(SupervisionError::Aborted(format!(
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

    fn restart(&mut self, alias: Alias, reply: Reply<bool>) {
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

    // ----- events ---------------------------------------------------------------

    fn event(&mut self, event: Event) {
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

    fn current(&self, alias: &Alias, generation: u64) -> bool {
        self.entries
            .get(alias)
            .and_then(|e| e.process.as_ref())
            .is_some_and(|p| p.generation == generation)
    }

    fn exited(&mut self, alias: &Alias, generation: u64, exit: Exit) {
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

    fn ready(&mut self, alias: &Alias, generation: u64, result: Result<(), String>) {
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

    fn observed(&mut self, seen: Observed) {
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
                if cause == crate::DetachCause::Silent {
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

    // ----- failures and solvers -------------------------------------------------

    /// Applies the container's solver chain to `failure`.
    fn failure(&mut self, alias: &Alias, failure: Failure) {
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        if entry.want != Want::Running || self.shutdown.is_some() {
            return;
        }
        entry.state = State::Failed;
        entry.last_failure = failure.to_string();
        let chain = entry.policy().chain(&failure.error_type);
        self.dirty = true;
        tracing::warn!(%alias, error_type = %failure.error_type, message = %failure.message, ?chain, "container failed");
        self.lifecycle(alias, EventKind::Fail, Phase::On, &failure.to_string());
        for action in chain {
            let applied = self.apply(alias, action, &failure);
            let outcome = if applied { "applied" } else { "failed" };
            self.lifecycle(
                alias,
                EventKind::Solve,
                Phase::On,
                &format!("{} {outcome}", action_name(action)),
            );
            if !applied {
                break;
            }
        }
    }

    fn apply(&mut self, alias: &Alias, action: Action, failure: &Failure) -> bool {
        match action {
            Action::Log => {
                tracing::error!(%alias, error_type = %failure.error_type, message = %failure.message, "solver: log");
                true
            }
            Action::Continue => {
                if let Some(entry) = self.entries.get_mut(alias)
                    && entry.process.as_ref().is_some_and(|p| p.ready)
                {
                    entry.state = State::Started;
                }
                true
            }
            Action::Restart => self.restart_after_failure(alias, failure),
            Action::Stop => self.set_want(alias, Want::Stopped, StopMode::Force),
            Action::DestroySoft => self.set_want(alias, Want::Destroyed, StopMode::Force),
            Action::DestroyHard => self.set_want(alias, Want::Destroyed, StopMode::Hard),
            Action::Escalate => {
                let parent = self
                    .entries
                    .get(alias)
                    .and_then(|e| e.definition.parent.clone());
                self.escalate(
                    parent,
                    alias,
                    &format!("{}: {}", failure.error_type, failure.message),
                );
                true
            }
        }
    }

    fn set_want(&mut self, alias: &Alias, want: Want, mode: StopMode) -> bool {
        match self.entries.get_mut(alias) {
            Some(entry) => {
                entry.want = want;
                entry.stop_mode = mode;
                entry.cycle = None;
                self.dirty = true;
                true
            }
            None => false,
        }
    }

    /// The `restart` action: restart type, the parent's intensity and strategy, backoff.
    fn restart_after_failure(&mut self, alias: &Alias, failure: &Failure) -> bool {
        let Some(entry) = self.entries.get_mut(alias) else {
            return false;
        };
        match entry.policy().restart {
            RestartType::Temporary => {
                entry.want = Want::Destroyed;
                entry.stop_mode = StopMode::Hard;
                entry.activity = "temporary: not restarted".to_owned();
                return false;
            }
            RestartType::Transient if failure.normal => {
                entry.want = Want::Stopped;
                entry.state = State::Stopped;
                entry.activity = "transient: ended normally".to_owned();
                return true;
            }
            _ => {}
        }
        let parent = entry.definition.parent.clone();
        let (strategy, max, period) = {
            let policy = match &parent {
                Some(parent) => self.entries.get(parent).map(|p| p.policy()),
                None => None,
            }
            .unwrap_or(&self.config.root_policy);
            (policy.strategy, policy.max_restarts, policy.period)
        };
        let now = Instant::now();
        let allowed = match &parent {
            Some(parent) => self
                .entries
                .get_mut(parent)
                .is_some_and(|p| p.children_intensity.allow(now, max, period)),
            None => self.root_intensity.allow(now, max, period),
        };
        if !allowed {
            let supervisor = parent
                .as_ref()
                .map_or("the node".to_owned(), |p| p.to_string());
            let reason = format!(
                "restart intensity of {supervisor} exceeded ({max} restarts in {} ms)",
                period.as_millis()
            );
            self.lifecycle(alias, EventKind::Solve, Phase::On, &reason);
            self.escalate(parent, alias, &reason);
            return false;
        }
        let entry = self.entries.get_mut(alias).expect("checked above");
        let stable = entry
            .last_ready_at
            .is_some_and(|at| at.elapsed() > entry.definition.policy.period);
        entry.consecutive = if stable { 1 } else { entry.consecutive + 1 };
        entry.restarts += 1;
        let delay = entry.policy().backoff(entry.consecutive, jitter());
        entry.not_before = Some(now + delay);
        entry.activity = format!("restarting in {} ms", delay.as_millis());
        let siblings = self.children(parent.as_ref());
        let order = self.entries[alias].order;
        let group: Vec<Alias> = match strategy {
            Strategy::OneForOne => vec![alias.clone()],
            Strategy::OneForAll => siblings,
            Strategy::RestForOne => siblings
                .into_iter()
                .filter(|s| self.entries[s].order >= order)
                .collect(),
        };
        self.begin_cycle(&group, Some(alias));
        self.lifecycle(
            alias,
            EventKind::Restart,
            Phase::On,
            &format!(
                "{} (restart {})",
                failure.error_type, self.entries[alias].restarts
            ),
        );
        true
    }

    /// Stops `group` and their subtrees, to start them again in order. The `failed`
    /// member is killed at once; the others get their grace period.
    fn begin_cycle(&mut self, group: &[Alias], failed: Option<&Alias>) {
        self.next_cycle += 1;
        let cycle = self.next_cycle;
        for member in group {
            for alias in self.subtree_deepest_first(member) {
                let hard = Some(&alias) == failed;
                let Some(entry) = self.entries.get_mut(&alias) else {
                    continue;
                };
                if entry.want != Want::Running {
                    continue;
                }
                entry.cycle = Some(cycle);
                entry.children_intensity.reset();
                entry.stop_mode = if hard {
                    StopMode::Hard
                } else {
                    StopMode::Force
                };
                if let Some(process) = &mut entry.process {
                    process.retiring = true;
                }
                if Some(&alias) != failed && entry.process.is_some() {
                    entry.activity = "restarting with a sibling".to_owned();
                }
            }
        }
        self.dirty = true;
    }

    /// Hands a failure up: to the parent as its own failure, or, at the top, the node
    /// stops the subtree and marks it FAILED.
    fn escalate(&mut self, parent: Option<Alias>, from: &Alias, reason: &str) {
        match parent {
            Some(parent) => self.failure(
                &parent,
                Failure {
                    error_type: error_type::ESCALATION.to_owned(),
                    message: format!("from {from}: {reason}"),
                    normal: false,
                },
            ),
            None => {
                tracing::error!(alias = %from, reason, "escalated to the node: stopping the subtree and marking it FAILED");
                for member in self.subtree_deepest_first(from) {
                    if let Some(entry) = self.entries.get_mut(&member) {
                        entry.want = Want::Stopped;
                        entry.stop_mode = StopMode::Force;
                        entry.cycle = None;
                        entry.failed_by_node = true;
                        entry.state = State::Failed;
                        entry.activity = "failed: escalated to the node".to_owned();
                        entry.answer_ready(|| {
                            Err(SupervisionError::Precondition(format!(
                                "{member} failed and was stopped by escalation: {reason}"
                            )))
                        });
                    }
                }
                self.lifecycle(
                    from,
                    EventKind::Solve,
                    Phase::After,
                    &format!("escalated to the node: subtree stopped and FAILED ({reason})"),
                );
            }
        }
    }

    /// A process that did not come up. A Create (or Start) waiting for it fails; a
    /// Create leaves nothing behind. Otherwise it is a failure of type "start".
    fn start_failed(&mut self, alias: &Alias, message: String) {
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        let waited = entry.waiters.iter().any(|w| matches!(w, Waiter::Ready(_)));
        if waited && !entry.ever_ready {
            let text = format!("{alias} did not start: {message}");
            entry.answer_ready(|| Err(SupervisionError::Precondition(text.clone())));
        }
        if !entry.ever_ready {
            // A container that never answered is not kept: Create changes nothing.
            entry.want = Want::Destroyed;
            entry.stop_mode = StopMode::Hard;
            entry.state = State::Failed;
            entry.last_failure = format!("start: {message}");
            self.lifecycle(
                alias,
                EventKind::Fail,
                Phase::On,
                &format!("start: {message}"),
            );
            return;
        }
        self.failure(
            alias,
            Failure {
                error_type: error_type::START.to_owned(),
                message,
                normal: false,
            },
        );
        // A Start waiting for it hears the outcome when it answers or fails for good.
    }

    // ----- reconciliation ---------------------------------------------------------

    /// Steps every container, parents before children, until nothing changes.
    fn reconcile(&mut self) {
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

    fn step(&mut self, alias: &Alias) -> bool {
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

    fn step_destroy(&mut self, alias: &Alias) -> bool {
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

    fn step_stop(&mut self, alias: &Alias) -> bool {
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

    fn step_run(&mut self, alias: &Alias) -> bool {
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
    fn ensure_stopping(&mut self, alias: &Alias) -> bool {
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

    fn spawn(&mut self, alias: &Alias) {
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

    fn remove(&mut self, alias: &Alias) {
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
                    let _ = reply.send(Err(SupervisionError::Aborted(format!(
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

    // ----- helpers ----------------------------------------------------------------

    fn kill(&mut self, alias: &Alias) {
        if let Some(process) = self.entries.get_mut(alias).and_then(|e| e.process.as_mut()) {
            process.kill(&*self.os);
        }
    }

    /// Reports the end of process `generation` of `alias` when `exit` resolves.
    fn watch_exit(
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

    /// Whether envelopes for `entry` are held while it is not attached.
    fn holding(&self, entry: &Entry) -> bool {
        entry.want == Want::Running && self.shutdown.is_none()
    }

    fn check_ready(&self, alias: &Alias, generation: u64) {
        let endpoint = self.reservations.endpoint(alias.as_str());
        let events = self.events.clone();
        let alias = alias.clone();
        let timeout = self.entries[&alias].policy().start_timeout;
        // A container without an endpoint proves itself by attaching.
        let ping =
            endpoint.map(|endpoint| self.os.ping(endpoint, self.config.ca_pem.clone(), timeout));
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
    fn health_checks(&self, alias: &Alias, generation: u64) -> Option<oneshot::Sender<()>> {
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
        let os = self.os.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = ticks.tick() => {}
                }
                match os.ping(endpoint.clone(), ca.clone(), interval).await {
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

    // ----- durability -------------------------------------------------------------

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let stored = self
            .entries
            .values()
            .map(|entry| StoredContainer {
                definition: (*entry.definition).clone(),
                order: entry.order,
                token: entry.token.clone(),
                running: entry.want == Want::Running,
                restarts: entry.restarts,
                process: entry.process.as_ref().map(|p| p.id),
            })
            .collect();
        if let Err(error) = self.store.save(stored) {
            tracing::error!(%error, "cannot write the durable registry");
        }
    }

    /// Rebuilds the tree from the store; processes that still run are adopted and must
    /// attach again, the others start afresh.
    fn restore(&mut self, mut stored: Vec<StoredContainer>) {
        stored.sort_by_key(|s| s.order);
        for saved in stored {
            let alias = saved.definition.alias.clone();
            self.next_order = self.next_order.max(saved.order + 1);
            let mut entry = Entry::new(saved.definition, saved.order, saved.token);
            entry.restarts = saved.restarts;
            entry.want = if saved.running {
                Want::Running
            } else {
                Want::Stopped
            };
            entry.state = if saved.running {
                State::Created
            } else {
                State::Stopped
            };
            entry.ever_ready = true;
            if let Some((id, exit)) = saved.process.and_then(|id| Some((id, self.os.adopt(id)?))) {
                if saved.running {
                    entry.generation = 1;
                    entry.state = State::Started;
                    entry.activity = "adopted: waiting for it to attach".to_owned();
                    // It must attach again within the attach timeout.
                    let mut process = Process::new(id, 1);
                    process.detached_at = Some(process.spawned_at);
                    entry.process = Some(process);
                    self.watch_exit(&alias, 1, exit);
                    tracing::info!(%alias, pid = id.pid, "adopted a running container process");
                } else {
                    self.os.signal(id, Signal::SIGKILL);
                }
            }
            if let Err(error) = self.reservations.reserve(entry.snapshot(), &entry.token) {
                tracing::error!(%alias, %error, "cannot restore a supervised container");
                continue;
            }
            self.entries.insert(alias, entry);
        }
        self.dirty = true;
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Continue => "continue",
        Action::Restart => "restart",
        Action::Stop => "stop",
        Action::DestroySoft => "destroy_soft",
        Action::DestroyHard => "destroy_hard",
        Action::Escalate => "escalate",
        Action::Log => "log",
    }
}

/// A number in [-1, 1] for backoff jitter.
fn jitter() -> f64 {
    use ring::rand::{SecureRandom as _, SystemRandom};
    let mut bytes = [0u8; 2];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX) * 2.0 - 1.0
}
