//! Supervision with real processes: restarts after SIGKILL and SIGSTOP, strategies,
//! intensity and escalation, re-adoption after the node is killed, destroy without
//! orphans, refused definitions, the lifecycle RPCs.

use std::time::Duration;

use nix::sys::signal::Signal;
use reef_proto::{
    self as wire, ContainerEventKind, ContainerInfo, ContainerState, CreateRequest, DestroyRequest,
    ExistsRequest, ListRequest, RestartRequest, StartRequest, StopRequest, WatchRequest,
    supervisor_client::SupervisorClient,
};
use reef_sdk::{Client, Code};
use reef_tests::{
    STARTUP, TestNode, binary, container_processes, demo_process, eventually, group_members,
    process_alive, signal_pid,
};
use tonic::transport::Channel;

const ANSWER: Duration = Duration::from_secs(10);

fn definition(alias: &str, parent: &str, args: &[&str]) -> wire::ContainerDefinition {
    wire::ContainerDefinition {
        alias: alias.to_owned(),
        parent: parent.to_owned(),
        kind: demo_process(args),
        ..Default::default()
    }
}

async fn create(
    supervisor: &mut SupervisorClient<Channel>,
    definition: wire::ContainerDefinition,
) -> ContainerInfo {
    reef_tests::create(supervisor, definition)
        .await
        .expect("create succeeds")
        .container
        .expect("the created container")
}

/// Lifecycle and registry events from now on.
async fn watch(
    supervisor: &mut SupervisorClient<Channel>,
) -> tonic::Streaming<wire::ContainerEvent> {
    supervisor
        .watch(WatchRequest { snapshot: false })
        .await
        .expect("watch")
        .into_inner()
}

async fn info(supervisor: &mut SupervisorClient<Channel>, alias: &str) -> Option<ContainerInfo> {
    supervisor
        .list(ListRequest {})
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .find(|c| c.alias == alias)
}

fn state(info: &ContainerInfo) -> ContainerState {
    info.supervised
        .as_ref()
        .and_then(|s| ContainerState::try_from(s.state).ok())
        .unwrap_or(ContainerState::Unspecified)
}

/// Waits until `alias` runs a process other than `old_pid` and answers again.
async fn wait_restarted(node: &TestNode, alias: &str, old_pid: u32) -> ContainerInfo {
    let supervisor = node.supervisor().await;
    eventually(&format!("{alias} restarted"), STARTUP, || {
        let mut supervisor = supervisor.clone();
        async move {
            let now = info(&mut supervisor, alias).await?;
            (now.pid != 0 && now.pid != old_pid && state(&now) == ContainerState::Started)
                .then_some(now)
        }
    })
    .await
}

#[tokio::test]
async fn a_killed_process_is_restarted_and_what_was_sent_meanwhile_is_answered() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let echo = create(&mut supervisor, definition("echo", "", &["echo"])).await;
    assert_eq!(state(&echo), ContainerState::Started);
    let client = Client::connect(&node.options()).await.unwrap();
    let mut events = watch(&mut supervisor).await;

    signal_pid(echo.pid, Signal::SIGKILL);
    // Once the node knows the process is gone, what is sent to the container is held
    // for its next process, not refused.
    loop {
        let event = events.message().await.unwrap().unwrap();
        if event.kind() == ContainerEventKind::Fail {
            break;
        }
    }
    let reply = client
        .request("echo", "still there?", ANSWER)
        .await
        .unwrap();
    assert_eq!(&reply[..], b"still there?");

    let restarted = wait_restarted(&node, "echo", echo.pid).await;
    let supervised = restarted.supervised.unwrap();
    assert_eq!(supervised.restarts, 1);
    assert!(
        supervised.last_failure.contains("SIGKILL"),
        "{supervised:?}"
    );
    assert!(!process_alive(echo.pid));
}

#[tokio::test]
async fn a_stopped_process_misses_its_keepalive_and_is_restarted() {
    let node = TestNode::start_with(&[
        "--heartbeat-interval-ms",
        "100",
        "--heartbeat-timeout-ms",
        "600",
    ]);
    let mut supervisor = node.supervisor().await;
    let echo = create(&mut supervisor, definition("echo", "", &["echo"])).await;
    signal_pid(echo.pid, Signal::SIGSTOP);
    let restarted = wait_restarted(&node, "echo", echo.pid).await;
    assert!(
        restarted
            .supervised
            .unwrap()
            .last_failure
            .starts_with("unresponsive"),
    );
    eventually("the hung process is gone", STARTUP, || async {
        (!process_alive(echo.pid)).then_some(())
    })
    .await;
    let client = Client::connect(&node.options()).await.unwrap();
    assert_eq!(
        &client.request("echo", "hi", ANSWER).await.unwrap()[..],
        b"hi"
    );
}

#[tokio::test]
async fn a_crash_loop_exceeds_intensity_and_escalates_to_the_parent_then_the_node() {
    // The node allows one restart of its own children; `sup` allows two of its own.
    let node = TestNode::start_with(&["--max-restarts", "1", "--restart-period-ms", "60000"]);
    let mut supervisor = node.supervisor().await;
    let mut events = watch(&mut supervisor).await;
    let mut sup = definition("sup", "", &["echo"]);
    sup.policy = Some(wire::SupervisionPolicy {
        max_restarts: 2,
        period_ms: 60_000,
        ..Default::default()
    });
    create(&mut supervisor, sup).await;
    let mut crashy = definition("crashy", "sup", &["crasher", "--after-ms", "300"]);
    crashy.policy = Some(wire::SupervisionPolicy {
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        ..Default::default()
    });
    create(&mut supervisor, crashy).await;

    let mut reasons = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.message().await.unwrap() {
            let alias = event.container.as_ref().unwrap().alias.clone();
            if event.kind() == ContainerEventKind::Solve {
                reasons.push(format!("{alias}: {}", event.reason));
                if event.reason.starts_with("escalated to the node") {
                    return;
                }
            }
        }
    })
    .await
    .expect("the failure reaches the node");
    let text = reasons.join("\n");
    assert!(
        text.contains("crashy: restart intensity of sup exceeded"),
        "{text}"
    );
    assert!(
        text.contains("sup: restart applied"),
        "sup restarted first:\n{text}"
    );
    assert!(
        text.contains("restart intensity of the node exceeded"),
        "{text}"
    );

    for alias in ["sup", "crashy"] {
        let failed = eventually(&format!("{alias} stopped"), STARTUP, || {
            let mut supervisor = supervisor.clone();
            async move {
                let now = info(&mut supervisor, alias).await?;
                (now.pid == 0).then_some(now)
            }
        })
        .await;
        assert_eq!(state(&failed), ContainerState::Failed, "{alias}");
    }
    assert!(container_processes(node.addr).is_empty());
}

/// Creates `parent` with `strategy` and children a, b, c under it; returns their pids.
async fn family(
    supervisor: &mut SupervisorClient<Channel>,
    parent: &str,
    strategy: wire::RestartStrategy,
) -> Vec<u32> {
    let mut definition = definition(parent, "", &["echo"]);
    definition.policy = Some(wire::SupervisionPolicy {
        strategy: strategy as i32,
        ..Default::default()
    });
    create(supervisor, definition).await;
    let mut pids = Vec::new();
    for child in ["a", "b", "c"] {
        let alias = format!("{parent}/{child}");
        pids.push(
            create(supervisor, self::definition(&alias, parent, &["echo"]))
                .await
                .pid,
        );
    }
    pids
}

/// Spawn events (START, phase ON) of `aliases` until each was spawned once.
async fn spawn_order(
    events: &mut tonic::Streaming<wire::ContainerEvent>,
    aliases: &[String],
) -> Vec<String> {
    let mut order = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while order.len() < aliases.len() {
            let event = events.message().await.unwrap().unwrap();
            let alias = event.container.clone().unwrap().alias;
            if event.kind() == ContainerEventKind::Start
                && event.phase() == wire::LifecyclePhase::On
                && aliases.contains(&alias)
            {
                order.push(alias);
            }
        }
    })
    .await
    .expect("the expected restarts");
    order
}

#[tokio::test]
async fn one_for_all_and_rest_for_one_restart_exactly_the_expected_siblings_in_order() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let all = family(&mut supervisor, "all", wire::RestartStrategy::OneForAll).await;
    let rest = family(&mut supervisor, "rest", wire::RestartStrategy::RestForOne).await;
    let mut events = watch(&mut supervisor).await;

    signal_pid(all[1], Signal::SIGKILL);
    let expected: Vec<String> = ["all/a", "all/b", "all/c"].map(String::from).into();
    assert_eq!(spawn_order(&mut events, &expected).await, expected);
    for (child, old) in ["all/a", "all/b", "all/c"].iter().zip(&all) {
        wait_restarted(&node, child, *old).await;
    }

    signal_pid(rest[1], Signal::SIGKILL);
    let expected: Vec<String> = ["rest/b", "rest/c"].map(String::from).into();
    assert_eq!(spawn_order(&mut events, &expected).await, expected);
    wait_restarted(&node, "rest/c", rest[2]).await;
    let first = info(&mut supervisor, "rest/a").await.unwrap();
    assert_eq!(
        first.pid, rest[0],
        "rest_for_one leaves earlier siblings alone"
    );
    assert_eq!(first.supervised.unwrap().restarts, 0);
    // one_for_one among the node's children: the parents were never touched.
    assert_eq!(
        info(&mut supervisor, "all")
            .await
            .unwrap()
            .supervised
            .unwrap()
            .restarts,
        0
    );
}

#[tokio::test]
async fn a_killed_node_adopts_its_running_processes_instead_of_starting_new_ones() {
    let mut node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let echo = create(&mut supervisor, definition("echo", "", &["echo"])).await;
    let counter = create(&mut supervisor, definition("counter", "", &["counter"])).await;
    drop(supervisor);

    node.process().signal(Signal::SIGKILL);
    let _ = node.process().0.wait();
    assert!(process_alive(echo.pid) && process_alive(counter.pid));
    node.restart();

    let supervisor = node.supervisor().await;
    for (alias, pid) in [("echo", echo.pid), ("counter", counter.pid)] {
        let adopted = eventually(&format!("{alias} adopted"), STARTUP, || {
            let mut supervisor = supervisor.clone();
            async move {
                let now = info(&mut supervisor, alias).await?;
                (now.attached && state(&now) == ContainerState::Started).then_some(now)
            }
        })
        .await;
        assert_eq!(adopted.pid, pid, "{alias} keeps its process");
    }
    let client = Client::connect(&node.options()).await.unwrap();
    assert_eq!(
        &client.request("echo", "back", ANSWER).await.unwrap()[..],
        b"back"
    );
    let mut running = container_processes(node.addr);
    running.sort();
    let mut expected = vec![echo.pid, counter.pid];
    expected.sort();
    assert_eq!(running, expected, "no duplicate processes");
    // The adopted processes are still supervised.
    signal_pid(echo.pid, Signal::SIGKILL);
    wait_restarted(&node, "echo", echo.pid).await;
}

#[tokio::test]
async fn destroying_a_subtree_stops_it_deepest_first_and_leaves_no_process() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    // Each container also starts a grandchild process of its own.
    let shell = |alias: &str, parent: &str| wire::ContainerDefinition {
        alias: alias.to_owned(),
        parent: parent.to_owned(),
        kind: Some(wire::container_definition::Kind::Process(
            wire::ProcessSpec {
                command: "/bin/sh".to_owned(),
                args: vec![
                    "-c".to_owned(),
                    format!("sleep 600 & exec {} echo", binary("reef-demo").display()),
                ],
                env: [("REEF_LOG".to_owned(), "warn".to_owned())].into(),
                working_dir: String::new(),
                inherit_env: false,
            },
        )),
        ..Default::default()
    };
    let top = create(&mut supervisor, shell("top", "")).await;
    let middle = create(&mut supervisor, shell("top/middle", "top")).await;
    let leaf = create(&mut supervisor, shell("top/middle/leaf", "top/middle")).await;
    let other = create(&mut supervisor, definition("other", "", &["echo"])).await;
    for pid in [top.pid, middle.pid, leaf.pid] {
        assert_eq!(group_members(pid).len(), 2, "the container and its sleep");
    }

    let destroyed = supervisor
        .destroy(DestroyRequest {
            alias: "top".to_owned(),
            flags: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .destroyed;
    assert_eq!(destroyed, ["top/middle/leaf", "top/middle", "top"]);
    for pid in [top.pid, middle.pid, leaf.pid] {
        assert!(
            group_members(pid).is_empty(),
            "process group {pid} is empty"
        );
    }
    assert_eq!(container_processes(node.addr), [other.pid]);
    let exists = supervisor
        .exists(ExistsRequest {
            alias: "top/middle".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!exists.exists);
}

#[tokio::test]
async fn bad_definitions_get_clear_errors_and_change_nothing() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let refused = |definition: wire::ContainerDefinition| {
        let mut supervisor = supervisor.clone();
        async move {
            supervisor
                .create(CreateRequest {
                    definition: Some(definition),
                    flags: 0,
                    ..Default::default()
                })
                .await
                .expect_err("refused")
        }
    };
    let mut unknown = definition("x", "", &[]);
    unknown.kind = Some(wire::container_definition::Kind::Process(
        wire::ProcessSpec {
            command: "no-such-program-anywhere".to_owned(),
            ..Default::default()
        },
    ));
    let status = refused(unknown).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("no-such-program-anywhere"),
        "{status:?}"
    );

    let status = refused(definition("bad alias!", "", &["echo"])).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = refused(definition("loop", "loop", &["echo"])).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = refused(definition("orphan", "nobody", &["echo"])).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("nobody"), "{status:?}");

    // A program that exits before it answers: the Create fails with its exit and log.
    let mut dies = definition("dies", "", &[]);
    dies.kind = Some(wire::container_definition::Kind::Process(
        wire::ProcessSpec {
            command: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), "echo cannot start >&2; exit 7".to_owned()],
            ..Default::default()
        },
    ));
    let status = refused(dies).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("exit code 7"), "{status:?}");
    assert!(status.message().contains("cannot start"), "{status:?}");

    // A parent cycle through a replacement.
    create(&mut supervisor, definition("p", "", &["echo"])).await;
    create(&mut supervisor, definition("p/c", "p", &["echo"])).await;
    let status = supervisor
        .create(CreateRequest {
            definition: Some(definition("p", "p/c", &["echo"])),
            flags: wire::CreateFlag::Force as i32,
            ..Default::default()
        })
        .await
        .expect_err("a cycle");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("cycle"), "{status:?}");

    let listed: Vec<_> = supervisor
        .list(ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.alias)
        .collect();
    assert_eq!(listed, ["p", "p/c"]);
}

#[tokio::test]
async fn lifecycle_calls_are_idempotent_and_stopped_containers_refuse_messages() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let mut events = watch(&mut supervisor).await;
    let first = create(&mut supervisor, definition("echo", "", &["echo"])).await;
    let again = supervisor
        .create(CreateRequest {
            definition: Some(definition("echo", "", &["counter"])),
            flags: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.container.unwrap().pid, first.pid);

    let mut phases = Vec::new();
    while phases.len() < 3 {
        let event = events.message().await.unwrap().unwrap();
        if event.kind() == ContainerEventKind::Create {
            phases.push(event.phase());
        }
    }
    use wire::LifecyclePhase::*;
    assert_eq!(phases, [Before, On, After]);

    let stopped = supervisor
        .stop(StopRequest {
            alias: "echo".to_owned(),
            flags: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(state(&stopped), ContainerState::Stopped);
    assert!(!process_alive(first.pid));
    let client = Client::connect(&node.options()).await.unwrap();
    let error = client.request("echo", "hi", ANSWER).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");

    let started = supervisor
        .start(StartRequest {
            alias: "echo".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(state(&started), ContainerState::Started);
    assert_eq!(
        &client.request("echo", "hi", ANSWER).await.unwrap()[..],
        b"hi"
    );

    let restarted = supervisor
        .restart(RestartRequest {
            alias: "echo".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_ne!(restarted.pid, started.pid);
    assert_eq!(state(&restarted), ContainerState::Started);

    let exists = supervisor
        .exists(ExistsRequest {
            alias: "echo".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(exists.exists);
    assert_eq!(exists.state(), ContainerState::Started);
}

#[tokio::test]
async fn a_transient_container_that_ends_normally_stays_stopped() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let mut done = definition("done", "", &["crasher", "--after-ms", "200", "--code", "0"]);
    done.policy = Some(wire::SupervisionPolicy {
        restart: wire::RestartType::Transient as i32,
        ..Default::default()
    });
    create(&mut supervisor, done).await;
    let stopped = eventually("done stopped", STARTUP, || {
        let mut supervisor = supervisor.clone();
        async move {
            let now = info(&mut supervisor, "done").await?;
            (state(&now) == ContainerState::Stopped).then_some(now)
        }
    })
    .await;
    let supervised = stopped.supervised.unwrap();
    assert_eq!(supervised.restarts, 0);
    assert_eq!(supervised.last_exit, "exit code 0");
}
