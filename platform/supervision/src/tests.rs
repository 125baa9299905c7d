//! The supervision actor against fake ports on paused time: no processes, no sockets,
//! and timers (backoff, grace periods, start timeouts) that take no wall-clock time.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::Duration,
};

use nix::sys::signal::Signal;
use parking_lot::Mutex;
use reef_core::{
    Alias,
    lifecycle::{DetachCause, EventKind, Phase},
};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    time::Instant,
};

use super::{
    CreateFlag, Definition, Environment, Exit, Kind, LogDir, Observed, Pending, Policy, Probe,
    ProcessId, ProcessSpec, Processes, Reservations, Solver, SpawnError, SpawnRequest, State,
    Strategy, SupervisedSnapshot, SupervisionConfig, SupervisionError, Taken, actor,
    policy::Action,
};

/// The registry side: what the actor published and reported.
#[derive(Default)]
struct FakeRegistry {
    observer: Mutex<Option<mpsc::UnboundedSender<Observed>>>,
    states: Mutex<HashMap<Alias, SupervisedSnapshot>>,
    events: Mutex<Vec<(Alias, EventKind, String)>>,
    changed: Notify,
}

impl Reservations for FakeRegistry {
    fn observe(&self, observer: mpsc::UnboundedSender<Observed>) {
        *self.observer.lock() = Some(observer);
    }

    fn is_registered(&self, _: &str) -> bool {
        false
    }

    fn reserve(&self, info: SupervisedSnapshot, _: &str) -> Result<(), Taken> {
        self.update(info, true);
        Ok(())
    }

    fn update(&self, info: SupervisedSnapshot, _: bool) {
        self.states
            .lock()
            .insert(info.definition.alias.clone(), info);
        self.changed.notify_waiters();
    }

    fn lifecycle(&self, alias: &Alias, kind: EventKind, _: Phase, reason: &str) {
        self.events
            .lock()
            .push((alias.clone(), kind, reason.to_owned()));
        self.changed.notify_waiters();
    }

    fn evict(&self, _: &Alias, _: &str) {}

    fn release_destroyed(&self, alias: &Alias) {
        self.states.lock().remove(alias);
        self.changed.notify_waiters();
    }

    fn endpoint(&self, _: &str) -> Option<String> {
        None
    }

    fn supervised(&self, alias: &str) -> Option<SupervisedSnapshot> {
        Alias::parse(alias)
            .ok()
            .and_then(|alias| self.states.lock().get(&alias).cloned())
    }
}

/// A process the fake OS started.
#[derive(Debug, Clone)]
struct Spawned {
    alias: String,
    pid: u32,
    at: Instant,
}

/// The OS side: processes are channels the test ends, and signals end them as a real
/// process's default handlers would.
struct FakeOs {
    next_pid: AtomicU32,
    running: Mutex<HashMap<u32, oneshot::Sender<Exit>>>,
    spawned: mpsc::UnboundedSender<Spawned>,
    signals: Mutex<Vec<(u32, Signal)>>,
}

impl FakeOs {
    /// Ends process `pid` as if it exited by itself.
    fn exit(&self, pid: u32, exit: Exit) {
        if let Some(process) = self.running.lock().remove(&pid) {
            let _ = process.send(exit);
        }
    }

    fn signals_to(&self, pid: u32) -> Vec<Signal> {
        self.signals
            .lock()
            .iter()
            .filter(|(to, _)| *to == pid)
            .map(|(_, signal)| *signal)
            .collect()
    }
}

impl Processes for FakeOs {
    fn resolve(&self, command: &str, _: Option<&Path>) -> Result<PathBuf, SpawnError> {
        match command {
            "missing" => Err(SpawnError::NotFound(command.to_owned())),
            _ => Ok(PathBuf::from(command)),
        }
    }

    fn spawn(&self, request: SpawnRequest<'_>) -> Result<(ProcessId, Pending<Exit>), SpawnError> {
        let pid = self.next_pid.fetch_add(1, Relaxed);
        let (exit, exited) = oneshot::channel();
        self.running.lock().insert(pid, exit);
        let _ = self.spawned.send(Spawned {
            alias: request.alias.to_owned(),
            pid,
            at: Instant::now(),
        });
        let id = ProcessId { pid, start_time: 1 };
        Ok((
            id,
            Box::pin(async move { exited.await.unwrap_or(Exit::Unknown) }),
        ))
    }

    fn adopt(&self, _: ProcessId) -> Option<Pending<Exit>> {
        None
    }

    fn signal(&self, id: ProcessId, signal: Signal) {
        self.signals.lock().push((id.pid, signal));
        self.exit(id.pid, Exit::Signal(signal as i32));
    }
}

impl Probe for FakeOs {
    fn ping(&self, _: &Alias, _: String, _: String, _: Duration) -> Pending<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// One actor with fake ports.
struct Harness {
    commands: mpsc::Sender<actor::Command>,
    registry: Arc<FakeRegistry>,
    os: Arc<FakeOs>,
    spawned: mpsc::UnboundedReceiver<Spawned>,
    _data: tempfile::TempDir,
}

impl Harness {
    fn start(root_policy: Policy) -> Self {
        let data = tempfile::tempdir().unwrap();
        let (spawned_tx, spawned) = mpsc::unbounded_channel();
        let registry = Arc::new(FakeRegistry::default());
        let os = Arc::new(FakeOs {
            next_pid: AtomicU32::new(100),
            running: Mutex::default(),
            spawned: spawned_tx,
            signals: Mutex::default(),
        });
        let config = SupervisionConfig {
            data_dir: data.path().to_owned(),
            environment: Environment {
                node: "127.0.0.1:1".into(),
                ca: data.path().join("ca.pem"),
                insecure: true,
                trace_export: reef_telemetry::Export::default(),
                sandbox: None,
            },
            ca_pem: String::new(),
            credentials: None,
            root_policy,
            attach_timeout: Duration::from_secs(5),
        };
        let logs = LogDir::new(data.path()).unwrap();
        let commands =
            actor::spawn(config, registry.clone(), os.clone(), os.clone(), logs).unwrap();
        Self {
            commands,
            registry,
            os,
            spawned,
            _data: data,
        }
    }

    /// The next process started, which then attaches (as a healthy container would).
    async fn next_started(&mut self) -> Spawned {
        let spawned = self.next_spawn().await;
        self.attach(&spawned);
        spawned
    }

    async fn next_spawn(&mut self) -> Spawned {
        tokio::time::timeout(PATIENCE, self.spawned.recv())
            .await
            .expect("a process is started within the hour")
            .expect("the actor runs")
    }

    fn attach(&self, spawned: &Spawned) {
        let observer = self.registry.observer.lock().clone().expect("observing");
        let _ = observer.send(Observed::Attached {
            alias: alias(&spawned.alias),
            pid: Some(spawned.pid),
        });
    }

    fn detach(&self, name: &str, cause: DetachCause) {
        let observer = self.registry.observer.lock().clone().expect("observing");
        let _ = observer.send(Observed::Detached {
            alias: alias(name),
            cause,
        });
    }

    /// Creates a container and waits for it to answer (its process attaches).
    async fn create(&mut self, name: &str, parent: Option<&str>, policy: Policy) -> Spawned {
        let answer = self.send_create(name, parent, policy).await;
        let started = self.next_started().await;
        assert_eq!(started.alias, name);
        assert!(answer.await.unwrap().unwrap(), "{name} was created");
        started
    }

    async fn send_create(
        &self,
        name: &str,
        parent: Option<&str>,
        policy: Policy,
    ) -> oneshot::Receiver<Result<bool, SupervisionError>> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(actor::Command::Create {
                definition: Box::new(definition(name, parent, "worker", policy)),
                flag: CreateFlag::Default,
                reply,
            })
            .await
            .unwrap();
        answer
    }

    fn state(&self, name: &str) -> Option<State> {
        self.registry
            .states
            .lock()
            .get(&alias(name))
            .map(|s| s.state)
    }

    /// Waits (on paused time, so timers fire as soon as the actor is idle) until
    /// `done` holds for what the actor published.
    async fn until(&self, mut done: impl FnMut(&Self) -> bool) {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let changed = self.registry.changed.notified();
                if done(self) {
                    return;
                }
                changed.await;
            }
        });
        waited.await.expect("the actor gets there within the hour");
    }

    fn reported(&self, kind: EventKind, needle: &str) -> bool {
        self.registry
            .events
            .lock()
            .iter()
            .any(|(_, k, reason)| *k == kind && reason.contains(needle))
    }
}

/// How long (paused) a test waits for the actor: a bound, so that a test whose condition
/// never holds fails instead of spinning through virtual time.
const PATIENCE: Duration = Duration::from_secs(3600);

pub(crate) fn alias(name: &str) -> Alias {
    Alias::parse(name).unwrap()
}

/// A process container `name` running `command`.
pub(crate) fn definition(
    name: &str,
    parent: Option<&str>,
    command: &str,
    policy: Policy,
) -> Definition {
    Definition {
        alias: alias(name),
        parent: parent.map(alias),
        name: String::new(),
        kind: Kind::Process(ProcessSpec {
            command: command.into(),
            args: Vec::new(),
            env: Default::default(),
            working_dir: None,
            inherit_env: false,
        }),
        policy,
        labels: Default::default(),
    }
}

pub(crate) fn policy() -> Policy {
    Policy {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..Policy::default()
    }
}

fn supervisor(strategy: Strategy) -> Policy {
    Policy {
        strategy,
        ..policy()
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_restarts_at_once_then_backs_off_doubling_to_the_cap() {
    let mut node = Harness::start(Policy {
        max_restarts: 100,
        ..Policy::default()
    });
    let mut process = node.create("worker", None, policy()).await;
    let mut delays = Vec::new();
    for _ in 0..6 {
        let crashed_at = Instant::now();
        node.os.exit(process.pid, Exit::Code(1));
        process = node.next_started().await;
        delays.push(process.at - crashed_at);
    }
    // The first failure in a row restarts at once; then 100, 200, 400, 800 ms, capped at
    // 1 s, each ±20 %.
    assert_eq!(delays[0], Duration::ZERO);
    for (delay, base) in delays[1..].iter().zip([100u64, 200, 400, 800, 1000]) {
        let base = Duration::from_millis(base);
        assert!(
            *delay >= base.mul_f64(0.8) && *delay <= base.mul_f64(1.2),
            "{delay:?} is not {base:?} ± 20 %"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn too_many_restarts_in_the_period_escalate_to_the_node_which_stops_the_container() {
    let mut node = Harness::start(Policy {
        max_restarts: 2,
        period: Duration::from_secs(60),
        ..Policy::default()
    });
    let mut process = node.create("worker", None, policy()).await;
    for _ in 0..2 {
        node.os.exit(process.pid, Exit::Code(1));
        process = node.next_started().await;
    }
    node.os.exit(process.pid, Exit::Code(1));
    node.until(|node| node.state("worker") == Some(State::Failed))
        .await;
    node.until(|node| node.reported(EventKind::Solve, "escalated to the node"))
        .await;
    assert!(node.reported(EventKind::Solve, "restart intensity of the node exceeded"));
    // Stopped for good: no process is started again, however long the node waits. (On
    // paused time this sleep moves the clock once every task is idle: it is the window
    // under test, not a wait for another task.)
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(node.spawned.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn restarts_older_than_the_period_do_not_count() {
    let mut node = Harness::start(Policy {
        max_restarts: 1,
        period: Duration::from_secs(10),
        ..Policy::default()
    });
    let mut process = node.create("worker", None, policy()).await;
    for _ in 0..3 {
        // Past the period on the paused clock, so the last restart no longer counts.
        tokio::time::sleep(Duration::from_secs(11)).await;
        node.os.exit(process.pid, Exit::Code(1));
        process = node.next_started().await;
        node.until(|node| node.state("worker") == Some(State::Started))
            .await;
    }
    assert!(!node.reported(EventKind::Solve, "intensity"));
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_every_sibling_in_order() {
    let mut node = Harness::start(Policy::default());
    node.create("sup", None, supervisor(Strategy::OneForAll))
        .await;
    let a = node.create("sup/a", Some("sup"), policy()).await;
    let b = node.create("sup/b", Some("sup"), policy()).await;
    let c = node.create("sup/c", Some("sup"), policy()).await;
    node.os.exit(b.pid, Exit::Code(1));
    let order: Vec<String> = [
        node.next_started().await,
        node.next_started().await,
        node.next_started().await,
    ]
    .into_iter()
    .map(|spawned| spawned.alias)
    .collect();
    assert_eq!(order, ["sup/a", "sup/b", "sup/c"]);
    // The siblings that had not failed were asked to stop, not killed.
    assert_eq!(node.os.signals_to(a.pid)[0], Signal::SIGTERM);
    assert_eq!(node.os.signals_to(c.pid)[0], Signal::SIGTERM);
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_failed_child_and_those_created_after_it() {
    let mut node = Harness::start(Policy::default());
    node.create("sup", None, supervisor(Strategy::RestForOne))
        .await;
    let a = node.create("sup/a", Some("sup"), policy()).await;
    let b = node.create("sup/b", Some("sup"), policy()).await;
    let c = node.create("sup/c", Some("sup"), policy()).await;
    node.os.exit(b.pid, Exit::Code(1));
    let order: Vec<String> = [node.next_started().await, node.next_started().await]
        .into_iter()
        .map(|spawned| spawned.alias)
        .collect();
    assert_eq!(order, ["sup/b", "sup/c"]);
    assert!(
        node.os.signals_to(a.pid).is_empty(),
        "the older sibling runs on"
    );
    assert_eq!(node.os.signals_to(c.pid)[0], Signal::SIGTERM);
}

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_failed_child() {
    let mut node = Harness::start(Policy::default());
    node.create("sup", None, supervisor(Strategy::OneForOne))
        .await;
    let a = node.create("sup/a", Some("sup"), policy()).await;
    let b = node.create("sup/b", Some("sup"), policy()).await;
    node.os.exit(b.pid, Exit::Code(1));
    assert_eq!(node.next_started().await.alias, "sup/b");
    assert!(node.os.signals_to(a.pid).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_solver_chain_decides_what_a_failure_of_its_type_does() {
    let mut node = Harness::start(Policy::default());
    let stop_on_exit = Policy {
        solvers: vec![Solver {
            error_type: "exit".into(),
            actions: vec![Action::Log, Action::Stop],
        }],
        ..policy()
    };
    let process = node.create("worker", None, stop_on_exit).await;
    node.os.exit(process.pid, Exit::Code(3));
    node.until(|node| node.reported(EventKind::Solve, "stop applied"))
        .await;
    // It stays FAILED (what happened to it) and is not started again.
    assert_eq!(node.state("worker"), Some(State::Failed));
    assert!(node.reported(EventKind::Solve, "log applied"));
    assert!(node.reported(EventKind::Solve, "stop applied"));
    // A minute on the paused clock: no restart in it.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(node.spawned.try_recv().is_err(), "stopped, not restarted");
}

#[tokio::test(start_paused = true)]
async fn a_child_over_its_intensity_escalates_and_its_parent_restarts_with_its_subtree() {
    let mut node = Harness::start(Policy {
        max_restarts: 10,
        ..Policy::default()
    });
    let strict = Policy {
        max_restarts: 1,
        period: Duration::from_secs(60),
        ..supervisor(Strategy::OneForOne)
    };
    let sup = node.create("sup", None, strict).await;
    let mut child = node.create("sup/child", Some("sup"), policy()).await;
    node.os.exit(child.pid, Exit::Code(1));
    child = node.next_started().await;
    // The second restart within the minute is one too many for sup: it fails itself,
    // and its own supervisor (the node) restarts it and its subtree.
    node.os.exit(child.pid, Exit::Code(1));
    let restarted: Vec<String> = [node.next_started().await, node.next_started().await]
        .into_iter()
        .map(|spawned| spawned.alias)
        .collect();
    assert_eq!(restarted, ["sup", "sup/child"]);
    assert!(node.reported(EventKind::Fail, "escalation"));
    assert_eq!(node.os.signals_to(sup.pid)[0], Signal::SIGKILL);
}

#[tokio::test(start_paused = true)]
async fn a_process_that_never_attaches_fails_its_create_and_leaves_nothing() {
    let mut node = Harness::start(Policy::default());
    let answer = node
        .send_create(
            "mute",
            None,
            Policy {
                start_timeout: Duration::from_secs(3),
                ..policy()
            },
        )
        .await;
    let spawned = node.next_spawn().await;
    let created_at = Instant::now();
    let error = answer.await.unwrap().unwrap_err();
    assert!(matches!(error, SupervisionError::DidNotStart(_)), "{error}");
    assert!(
        error.to_string().contains("did not answer within 3000 ms"),
        "{error}"
    );
    assert_eq!(Instant::now() - created_at, Duration::from_secs(3));
    // Killed, with whatever it left in its process group.
    let signals = node.os.signals_to(spawned.pid);
    assert!(!signals.is_empty() && signals.iter().all(|s| *s == Signal::SIGKILL));
    node.until(|node| node.state("mute").is_none()).await;
}

#[tokio::test(start_paused = true)]
async fn silence_on_the_attach_stream_is_a_failure_and_restarts_the_container() {
    let mut node = Harness::start(Policy::default());
    let process = node.create("worker", None, policy()).await;
    node.detach("worker", DetachCause::Silent);
    let restarted = node.next_started().await;
    assert_eq!(node.os.signals_to(process.pid)[0], Signal::SIGKILL);
    assert_ne!(restarted.pid, process.pid);
    assert!(node.reported(EventKind::Fail, "missed heartbeats"));
}

#[tokio::test(start_paused = true)]
async fn a_create_of_a_program_that_does_not_exist_is_refused_before_anything_runs() {
    let node = Harness::start(Policy::default());
    let (reply, answer) = oneshot::channel();
    node.commands
        .send(actor::Command::Create {
            definition: Box::new(definition("ghost", None, "missing", policy())),
            flag: CreateFlag::Default,
            reply,
        })
        .await
        .unwrap();
    let error = answer.await.unwrap().unwrap_err();
    assert!(matches!(error, SupervisionError::Invalid(_)), "{error}");
    assert!(node.state("ghost").is_none());
}
