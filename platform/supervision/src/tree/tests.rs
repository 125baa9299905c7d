//! The tree's transitions on their own: a command, an event or time goes in, and what
//! comes out is the tree's state and the effects it asked for. No actor, no ports: the
//! test answers the effects itself, as the actor would.

use std::collections::HashMap;

use tokio::sync::oneshot::error::TryRecvError;

use super::*;
use crate::tests::{alias, definition, policy};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

/// A tree driven by hand. Spawns are answered with pids from 100 on.
struct Machine {
    tree: Tree,
    next_pid: u32,
    /// The current process of each container: pid and generation.
    processes: HashMap<Alias, (u32, u64)>,
}

impl Machine {
    fn new() -> Self {
        let mut tree = Tree::new(Policy::default(), ATTACH_TIMEOUT);
        tree.jitter = || 0.0;
        Self {
            tree,
            next_pid: 100,
            processes: HashMap::new(),
        }
    }

    /// The effects asked for since the last look, as text. Publishes are left out:
    /// they repeat the state the test reads from the tree.
    /// Answers to callers are sent on the way, as the actor sends them.
    fn effects(&mut self) -> Vec<String> {
        self.tree
            .take_effects()
            .into_iter()
            .filter_map(carry_out)
            .collect()
    }

    /// Sends a Create and answers its admission and reservation as ports with nothing
    /// against it would.
    fn create(
        &mut self,
        name: &str,
        parent: Option<&str>,
        policy: Policy,
    ) -> oneshot::Receiver<Result<bool, SupervisionError>> {
        let (reply, answer) = oneshot::channel();
        self.tree.command(Command::Create {
            definition: Box::new(definition(name, parent, "worker", policy)),
            flag: CreateFlag::Default,
            reply,
        });
        let [Effect::Admit { definition, reply }] = &mut self.tree.take_effects()[..] else {
            panic!("a Create of a new alias asks for its admission first");
        };
        let (definition, reply) = (definition.clone(), replace_reply(reply));
        self.tree.admit(*definition, admitted(), reply);
        let [Effect::Reserve { .. }] = &self.tree.take_effects()[..] else {
            panic!("an admitted definition asks for its alias");
        };
        self.tree.reserved(&alias(name));
        self.effects();
        answer
    }

    /// Steps every container once, parents first, as the actor's reconciliation does,
    /// and answers each spawn with a new pid.
    fn step(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        for alias in self.tree.tree_order() {
            self.tree.step(&alias);
            for effect in self.tree.take_effects() {
                seen.extend(describe(&effect));
                match effect {
                    Effect::Spawn {
                        definition,
                        generation,
                        ..
                    } => {
                        let pid = self.next_pid;
                        self.next_pid += 1;
                        self.processes
                            .insert(definition.alias.clone(), (pid, generation));
                        let id = ProcessId { pid, start_time: 1 };
                        self.tree.spawned(&definition.alias, generation, id);
                        seen.extend(self.effects());
                    }
                    Effect::Answer(send) => send(),
                    _ => {}
                }
            }
        }
        seen
    }

    /// The current process of `name` attaches and its ping answers.
    fn answer(&mut self, name: &str) -> Vec<String> {
        let (pid, generation) = self.processes[&alias(name)];
        self.tree.observed(Observed::Attached {
            alias: alias(name),
            pid: Some(pid),
        });
        let mut seen = self.effects();
        self.tree.event(Event::Ready {
            alias: alias(name),
            generation,
            result: Ok(()),
        });
        seen.extend(self.effects());
        seen
    }

    /// The current process of `name` ends by itself.
    fn exit(&mut self, name: &str, exit: Exit) -> Vec<String> {
        let (_, generation) = self.processes[&alias(name)];
        self.tree.event(Event::Exited {
            alias: alias(name),
            generation,
            exit,
        });
        self.effects()
    }

    /// Creates `name` and lets its first process answer.
    fn running(&mut self, name: &str, parent: Option<&str>, policy: Policy) {
        let mut answer = self.create(name, parent, policy);
        self.step();
        self.answer(name);
        assert!(answer.try_recv().unwrap().unwrap(), "{name} runs");
    }

    fn state(&self, name: &str) -> State {
        self.tree.entries[&alias(name)].state
    }
}

fn admitted() -> Admission {
    Admission {
        registered: false,
        program: Ok(()),
    }
}

/// Takes a reply out of an effect the test holds by reference.
fn replace_reply(reply: &mut Reply<bool>) -> Reply<bool> {
    std::mem::replace(reply, oneshot::channel().0)
}

/// Sends an answer, and describes any other effect.
fn carry_out(effect: Effect) -> Option<String> {
    match effect {
        Effect::Answer(send) => {
            send();
            None
        }
        other => describe(&other),
    }
}

fn describe(effect: &Effect) -> Option<String> {
    Some(match effect {
        Effect::Signal { id, signal } => format!("{signal} to {}", id.pid),
        Effect::Spawn {
            definition,
            generation,
            ..
        } => format!("spawn {} (generation {generation})", definition.alias),
        Effect::Admit { definition, .. } => format!("admit {}", definition.alias),
        Effect::Reserve { snapshot, .. } => format!("reserve {}", snapshot.definition.alias),
        Effect::Publish { .. } => return None,
        Effect::Lifecycle {
            alias,
            kind,
            phase,
            reason,
        } => format!("{alias} {kind:?} {phase:?}: {reason}"),
        Effect::Evict { alias, reason } => format!("evict {alias}: {reason}"),
        Effect::Release { alias } => format!("release {alias}"),
        Effect::CheckReady {
            alias, generation, ..
        } => format!("ping {alias} (generation {generation})"),
        Effect::WatchHealth {
            alias, generation, ..
        } => format!("watch the health of {alias} (generation {generation})"),
        Effect::QuoteLog { alias, message } => format!("quote the log of {alias}: {message}"),
        Effect::Answer(_) => return None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_create_is_admitted_reserved_spawned_and_answered_in_that_order() {
    let mut machine = Machine::new();
    let (reply, mut answer) = oneshot::channel();
    machine.tree.command(Command::Create {
        definition: Box::new(definition("worker", None, "worker", policy())),
        flag: CreateFlag::Default,
        reply,
    });
    let mut effects = machine.tree.take_effects();
    let [Effect::Admit { definition, reply }] = &mut effects[..] else {
        panic!("admission comes first");
    };
    machine
        .tree
        .admit(*definition.clone(), admitted(), replace_reply(reply));
    assert_eq!(machine.effects(), ["reserve worker"]);
    machine.tree.reserved(&alias("worker"));
    assert_eq!(
        machine.effects(),
        [
            "worker Create Before: defined",
            "worker Create On: state CREATED"
        ]
    );
    assert_eq!(
        machine.step(),
        [
            "spawn worker (generation 1)",
            "worker Start On: spawned pid 100"
        ]
    );
    assert_eq!(
        machine.step(),
        Vec::<String>::new(),
        "one process at a time"
    );
    machine.tree.observed(Observed::Attached {
        alias: alias("worker"),
        pid: Some(100),
    });
    assert_eq!(machine.effects(), ["ping worker (generation 1)"]);
    assert!(matches!(answer.try_recv(), Err(TryRecvError::Empty)));
    machine.tree.event(Event::Ready {
        alias: alias("worker"),
        generation: 1,
        result: Ok(()),
    });
    // The caller hears only after the new state is published, so that what it reads
    // next (List, say) shows the container STARTED.
    let effects = machine.tree.take_effects();
    let published = effects.iter().position(
        |e| matches!(e, Effect::Publish { snapshot, .. } if snapshot.state == State::Started),
    );
    let answered = effects.iter().position(|e| matches!(e, Effect::Answer(_)));
    assert!(
        published.is_some() && published < answered,
        "published at {published:?}, answered at {answered:?}"
    );
    assert!(matches!(answer.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(
        effects
            .into_iter()
            .filter_map(carry_out)
            .collect::<Vec<_>>(),
        [
            "worker Start After: answering",
            "worker Create After: answering"
        ]
    );
    assert!(answer.try_recv().unwrap().unwrap());
    assert_eq!(machine.state("worker"), State::Started);
}

#[tokio::test(start_paused = true)]
async fn a_create_whose_alias_is_held_elsewhere_is_refused_and_leaves_nothing() {
    let mut machine = Machine::new();
    let (reply, mut answer) = oneshot::channel();
    let registered = Admission {
        registered: true,
        program: Ok(()),
    };
    machine.tree.admit(
        definition("held", None, "worker", policy()),
        registered,
        reply,
    );
    assert_eq!(
        machine.effects(),
        Vec::<String>::new(),
        "nothing but the answer"
    );
    assert!(matches!(
        answer.try_recv().unwrap(),
        Err(SupervisionError::AliasTaken(_))
    ));

    // The registry can still refuse the reservation the tree asks for.
    let (reply, mut answer) = oneshot::channel();
    machine.tree.admit(
        definition("raced", None, "worker", policy()),
        admitted(),
        reply,
    );
    assert_eq!(machine.effects(), ["reserve raced"]);
    machine.tree.refused(
        &alias("raced"),
        "raced is registered by another process".into(),
    );
    machine.effects();
    match answer.try_recv().unwrap() {
        Err(SupervisionError::AliasTaken(reason)) => assert!(reason.contains("another process")),
        other => panic!("expected AliasTaken, got {other:?}"),
    }
    assert_eq!(machine.tree.aliases().count(), 0);
    assert_eq!(machine.step(), Vec::<String>::new(), "nothing is spawned");
}

#[tokio::test(start_paused = true)]
async fn a_crash_kills_the_rest_of_the_group_and_restarts_at_once_then_after_the_backoff() {
    let mut machine = Machine::new();
    machine.running("worker", None, policy());

    let effects = machine.exit("worker", Exit::Code(1));
    assert_eq!(
        effects[..3],
        [
            "SIGKILL to 100",
            "evict worker: its process ended",
            "worker Fail On: exit: exit code 1",
        ]
    );
    assert!(effects.contains(&"worker Restart On: exit (restart 1)".to_owned()));
    assert!(
        machine
            .step()
            .contains(&"spawn worker (generation 2)".to_owned())
    );
    machine.answer("worker");

    // A second crash in a row waits for the backoff: 100 ms with no jitter.
    machine.exit("worker", Exit::Code(1));
    let crashed_at = Instant::now();
    assert_eq!(machine.step(), Vec::<String>::new());
    assert_eq!(
        machine.tree.next_wake(),
        crashed_at + Duration::from_millis(100)
    );
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_eq!(machine.step(), Vec::<String>::new());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(
        machine
            .step()
            .contains(&"spawn worker (generation 3)".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_sends_sigterm_then_sigkill_once_the_grace_period_ends() {
    let mut machine = Machine::new();
    machine.running("worker", None, policy());
    let (reply, mut answer) = oneshot::channel();
    machine.tree.command(Command::Stop {
        alias: alias("worker"),
        mode: StopMode::Force,
        reply,
    });
    assert_eq!(
        machine.step(),
        ["SIGTERM to 100", "worker Stop Before: SIGTERM sent"]
    );
    let grace = policy().stop_grace;
    assert_eq!(machine.tree.next_wake(), Instant::now() + grace);
    tokio::time::advance(grace - Duration::from_millis(1)).await;
    assert_eq!(machine.step(), Vec::<String>::new());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(machine.step(), ["SIGKILL to 100"]);
    assert!(matches!(answer.try_recv(), Err(TryRecvError::Empty)));

    let effects = machine.exit("worker", Exit::Signal(Signal::SIGKILL as i32));
    assert!(effects.contains(&"worker Stop On: killed by SIGKILL".to_owned()));
    assert_eq!(machine.step(), ["worker Stop After: stopped"]);
    assert!(answer.try_recv().unwrap().is_ok());
    assert_eq!(machine.state("worker"), State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_process_that_ends_before_it_answers_has_its_log_quoted_and_its_create_fails() {
    let mut machine = Machine::new();
    let mut answer = machine.create("worker", None, policy());
    machine.step();
    assert_eq!(
        machine.exit("worker", Exit::Code(2)),
        [
            "SIGKILL to 100",
            "evict worker: its process ended",
            "quote the log of worker: exited (exit code 2) before it answered",
        ]
    );
    machine.tree.start_failed(
        &alias("worker"),
        "exited (exit code 2) before it answered; its log ends with:\nno config".into(),
    );
    assert_eq!(
        machine.effects(),
        [
            "worker Fail On: start: exited (exit code 2) before it answered; its log ends with:\nno config"
        ]
    );
    match answer.try_recv().unwrap() {
        Err(SupervisionError::DidNotStart(reason)) => assert!(reason.ends_with("no config")),
        other => panic!("expected DidNotStart, got {other:?}"),
    }
    assert_eq!(machine.step(), ["release worker"]);
    assert_eq!(machine.tree.aliases().count(), 0, "Create leaves nothing");
}

#[tokio::test(start_paused = true)]
async fn one_for_all_stops_every_sibling_and_starts_them_again_one_after_the_other() {
    let mut machine = Machine::new();
    machine.running(
        "sup",
        None,
        Policy {
            strategy: Strategy::OneForAll,
            ..policy()
        },
    );
    machine.running("first", Some("sup"), policy());
    machine.running("second", Some("sup"), policy());
    let (first, second) = (
        machine.processes[&alias("first")].0,
        machine.processes[&alias("second")].0,
    );

    machine.exit("first", Exit::Code(1));
    // The failed child is gone; its sibling gets its grace period.
    assert_eq!(
        machine.step(),
        [
            format!("SIGTERM to {second}"),
            "second Stop Before: SIGTERM sent".to_owned()
        ]
    );
    assert_ne!(first, second);
    machine.exit("second", Exit::Signal(Signal::SIGTERM as i32));
    let effects = machine.step();
    assert!(effects.contains(&"spawn first (generation 2)".to_owned()));
    assert!(
        !effects.iter().any(|e| e.starts_with("spawn second")),
        "second waits for first to answer: {effects:?}"
    );
    machine.answer("first");
    assert!(
        machine
            .step()
            .contains(&"spawn second (generation 2)".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_restored_tree_adopts_running_processes_and_kills_those_of_stopped_containers() {
    let mut machine = Machine::new();
    let stored = |name: &str, running: bool, pid: u32| StoredContainer {
        definition: definition(name, None, "worker", policy()),
        order: u64::from(pid),
        token: "lease".into(),
        running,
        restarts: 2,
        process: Some(ProcessId { pid, start_time: 1 }),
    };
    let kept = stored("kept", true, 7);
    assert!(machine.tree.restore(kept.clone(), kept.process));
    let idle = stored("idle", false, 8);
    assert!(!machine.tree.restore(idle.clone(), idle.process));
    assert_eq!(
        machine.effects(),
        ["reserve kept", "SIGKILL to 8", "reserve idle"]
    );
    machine.tree.reserved(&alias("kept"));
    machine.tree.reserved(&alias("idle"));
    assert_eq!(
        machine.effects(),
        Vec::<String>::new(),
        "a restore is not a Create"
    );
    assert_eq!(machine.state("kept"), State::Started);
    assert_eq!(machine.state("idle"), State::Stopped);

    // The adopted process must attach again within the attach timeout.
    assert_eq!(machine.step(), Vec::<String>::new());
    tokio::time::advance(ATTACH_TIMEOUT).await;
    let mut effects = machine.step();
    effects.extend(machine.step());
    assert!(
        effects
            .iter()
            .any(|e| e.starts_with("kept Fail On: unresponsive")),
        "{effects:?}"
    );
    assert!(effects.contains(&"SIGKILL to 7".to_owned()), "{effects:?}");
}

#[tokio::test(start_paused = true)]
async fn a_start_that_times_out_kills_the_process_before_the_create_hears_it_failed() {
    let mut machine = Machine::new();
    let mut answer = machine.create("worker", None, policy());
    machine.step();
    tokio::time::advance(policy().start_timeout).await;
    machine.tree.step(&alias("worker"));
    let effects = machine.tree.take_effects();
    let killed = effects.iter().position(|e| {
        matches!(
            e,
            Effect::Signal {
                signal: Signal::SIGKILL,
                ..
            }
        )
    });
    let answered = effects.iter().position(|e| matches!(e, Effect::Answer(_)));
    assert!(
        killed.is_some() && killed < answered,
        "killed at {killed:?}, answered at {answered:?}"
    );
    effects
        .into_iter()
        .for_each(|effect| drop(carry_out(effect)));
    match answer.try_recv().unwrap() {
        Err(SupervisionError::DidNotStart(reason)) => {
            assert!(
                reason.contains("did not answer within 10000 ms"),
                "{reason}"
            )
        }
        other => panic!("expected DidNotStart, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_forced_create_kills_the_old_container_then_admits_the_new_definition() {
    let mut machine = Machine::new();
    machine.running("worker", None, policy());
    let (reply, mut answer) = oneshot::channel();
    machine.tree.command(Command::Create {
        definition: Box::new(definition("worker", None, "other", policy())),
        flag: CreateFlag::ForceHard,
        reply,
    });
    assert_eq!(machine.effects(), Vec::<String>::new());
    assert_eq!(machine.step(), ["SIGKILL to 100"]);
    machine.exit("worker", Exit::Signal(Signal::SIGKILL as i32));
    let effects = machine.tree.take_effects();
    assert!(effects.is_empty(), "the exit was expected");
    machine.tree.step(&alias("worker"));
    let mut effects = machine.tree.take_effects();
    assert_eq!(
        effects.iter().filter_map(describe).collect::<Vec<_>>(),
        ["release worker", "admit worker"]
    );
    let Some(Effect::Admit { definition, reply }) = effects.pop() else {
        panic!("the replacement is admitted last");
    };
    let crate::Kind::Process(spec) = &definition.kind;
    assert_eq!(spec.command, "other", "the new definition");
    machine.tree.admit(*definition, admitted(), reply);
    assert_eq!(machine.effects(), ["reserve worker"]);
    machine.tree.reserved(&alias("worker"));
    machine.effects();
    assert!(
        machine
            .step()
            .contains(&"spawn worker (generation 1)".to_owned())
    );
    machine.answer("worker");
    assert!(
        answer.try_recv().unwrap().unwrap(),
        "the new container runs"
    );
}
