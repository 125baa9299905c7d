//! Task containers: in-process containers in a `reef-demo pool` host process, restarted
//! inside it after a panic without touching their siblings, created and destroyed by
//! the node through the host, and kept across the host's own restart.

use std::time::Duration;

use nix::sys::signal::Signal;
use reef_proto::{
    self as wire, ContainerInfo, DestroyRequest, ExistsRequest, ListRequest,
    supervisor_client::SupervisorClient,
};
use reef_sdk::{Client, Code};
use reef_tests::{STARTUP, TestNode, create, demo_process, eventually, signal_pid};
use tonic::transport::Channel;

const ANSWER: Duration = Duration::from_secs(10);

/// Creates the supervised task host `pool` with `tasks` workers and waits until they
/// are routed.
async fn start_pool(
    supervisor: &mut SupervisorClient<Channel>,
    tasks: usize,
    policy: Option<wire::SupervisionPolicy>,
) -> ContainerInfo {
    let definition = wire::ContainerDefinition {
        alias: "pool".to_owned(),
        kind: demo_process(&["pool", "--tasks", &tasks.to_string()]),
        policy,
        ..Default::default()
    };
    let pool = create(supervisor, definition)
        .await
        .expect("create the pool")
        .container
        .unwrap();
    for n in 0..tasks {
        wait_task(supervisor, &format!("pool/worker-{n}"), |_| true).await;
    }
    pool
}

async fn list(supervisor: &mut SupervisorClient<Channel>) -> Vec<ContainerInfo> {
    supervisor
        .list(ListRequest {})
        .await
        .expect("list")
        .into_inner()
        .containers
}

/// Waits until task `alias` is listed and `check` holds for it.
async fn wait_task(
    supervisor: &SupervisorClient<Channel>,
    alias: &str,
    check: impl Fn(&wire::SupervisedInfo) -> bool,
) -> ContainerInfo {
    let check = &check;
    eventually(&format!("task {alias}"), STARTUP, || {
        let mut supervisor = supervisor.clone();
        async move {
            let found = list(&mut supervisor)
                .await
                .into_iter()
                .find(|c| c.alias == alias)?;
            let supervised = found.supervised.as_ref()?;
            (supervised.kind == "task" && check(supervised)).then_some(found)
        }
    })
    .await
}

fn task_definition(alias: &str, host: &str, name: &str) -> wire::ContainerDefinition {
    wire::ContainerDefinition {
        alias: alias.to_owned(),
        name: name.to_owned(),
        kind: Some(wire::container_definition::Kind::Task(wire::TaskSpec {
            host: host.to_owned(),
            args: Vec::new(),
        })),
        ..Default::default()
    }
}

async fn count(client: &Client, alias: &str) -> String {
    let reply = client.request(alias, "count", ANSWER).await.unwrap();
    String::from_utf8(reply.to_vec()).unwrap()
}

#[tokio::test]
async fn a_panicking_task_is_restarted_without_disturbing_its_siblings() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let pool = start_pool(&mut supervisor, 3, None).await;
    let client = Client::connect(&node.options()).await.unwrap();
    for _ in 0..5 {
        client.send("pool/worker-0", "tick").await.unwrap();
        client.send("pool/worker-1", "tick").await.unwrap();
    }
    assert_eq!(count(&client, "pool/worker-0").await, "5");

    // The panic and the request behind it travel together: the second one waits in
    // the task's mailbox and is answered by the restarted handler.
    let (panicked, after) = tokio::join!(
        client.request("pool/worker-0", "panic", ANSWER),
        client.request("pool/worker-0", "count", ANSWER),
    );
    let error = panicked.expect_err("a panic answers with an error");
    assert_eq!(error.code(), Code::Internal, "{error}");
    assert!(error.to_string().contains("panicked"), "{error}");
    assert_eq!(&after.unwrap()[..], b"0", "a fresh handler answered");

    // Its sibling in the same process kept its state; the process is the same one.
    assert_eq!(count(&client, "pool/worker-1").await, "5");
    let restarted = wait_task(&supervisor, "pool/worker-0", |s| s.restarts == 1).await;
    assert_eq!(restarted.pid, pool.pid);
    assert_eq!(restarted.parent, "pool");
    let listed = list(&mut supervisor).await;
    let host = listed.iter().find(|c| c.alias == "pool").unwrap();
    assert_eq!(host.pid, pool.pid);
    assert_eq!(host.supervised.as_ref().unwrap().restarts, 0);
    let sibling = listed.iter().find(|c| c.alias == "pool/worker-1").unwrap();
    assert_eq!(sibling.supervised.as_ref().unwrap().restarts, 0);
}

#[tokio::test]
async fn the_node_creates_and_destroys_tasks_through_their_host() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    start_pool(&mut supervisor, 0, None).await;
    let client = Client::connect(&node.options()).await.unwrap();

    let created = create(&mut supervisor, task_definition("extra", "pool", "worker"))
        .await
        .expect("create a task");
    assert!(created.created);
    let info = created.container.unwrap();
    assert_eq!(info.supervised.as_ref().unwrap().kind, "task");
    assert_eq!(info.parent, "pool");
    client.send("extra", "tick").await.unwrap();
    assert_eq!(count(&client, "extra").await, "1");
    let exists = supervisor
        .exists(ExistsRequest {
            alias: "extra".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(exists.exists);

    // Creating it again is idempotent; another behaviour under the alias is refused.
    let again = create(&mut supervisor, task_definition("extra", "pool", "worker"))
        .await
        .unwrap();
    assert!(!again.created);
    let clash = create(&mut supervisor, task_definition("extra", "pool", "other"))
        .await
        .expect_err("another behaviour");
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");

    let destroyed = supervisor
        .destroy(DestroyRequest {
            alias: "extra".to_owned(),
            flags: 0,
        })
        .await
        .expect("destroy the task")
        .into_inner();
    assert_eq!(destroyed.destroyed, ["extra"]);
    let gone = client
        .request("extra", "count", ANSWER)
        .await
        .expect_err("destroyed");
    assert_eq!(gone.code(), Code::NotFound, "{gone}");
    assert!(
        !list(&mut supervisor)
            .await
            .iter()
            .any(|c| c.alias == "extra")
    );
}

#[tokio::test]
async fn bad_task_definitions_get_clear_errors_and_change_nothing() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    start_pool(&mut supervisor, 1, None).await;
    let before = list(&mut supervisor).await.len();

    let cases = [
        (
            task_definition("t", "pool", "no-such-behaviour"),
            Code::NotFound,
            "no task behaviour",
        ),
        (
            task_definition("t", "nobody", "worker"),
            Code::NotFound,
            "not registered",
        ),
        (
            task_definition("t", "pool", ""),
            Code::InvalidArgument,
            "name",
        ),
        (
            task_definition("bad alias!", "pool", "worker"),
            Code::InvalidArgument,
            "alias",
        ),
        (
            task_definition("t", "t", "worker"),
            Code::InvalidArgument,
            "itself",
        ),
    ];
    for (definition, code, words) in cases {
        let error = create(&mut supervisor, definition.clone())
            .await
            .expect_err("refused");
        assert_eq!(error.code(), code, "{definition:?}: {error:?}");
        assert!(error.message().contains(words), "{error:?}");
    }
    assert_eq!(list(&mut supervisor).await.len(), before);

    // Lifecycle calls meant for processes name what to do instead.
    let error = supervisor
        .restart(wire::RestartRequest {
            alias: "pool/worker-0".to_owned(),
        })
        .await
        .expect_err("a task is not restarted on its own");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("destroy and create"), "{error:?}");
}

#[tokio::test]
async fn a_task_past_its_intensity_makes_the_node_restart_its_host() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let pool = start_pool(&mut supervisor, 1, None).await;
    let mut definition = task_definition("fragile", "pool", "worker");
    definition.policy = Some(wire::SupervisionPolicy {
        max_restarts: 1,
        period_ms: 60_000,
        ..Default::default()
    });
    create(&mut supervisor, definition)
        .await
        .expect("create the task");
    let client = Client::connect(&node.options()).await.unwrap();
    for _ in 0..2 {
        let error = client
            .request("fragile", "panic", ANSWER)
            .await
            .expect_err("panics");
        assert_eq!(error.code(), Code::Internal, "{error}");
    }
    // The second panic is past 1 restart per minute: the host reports it, and the
    // default solver for reef.task.intensity restarts the host (OTP: a supervisor
    // that gives up is restarted by its own), which starts its own workers again.
    let old_pid = pool.pid;
    let restarted = eventually("the pool restarted", STARTUP, || {
        let mut supervisor = supervisor.clone();
        async move {
            let pool = list(&mut supervisor)
                .await
                .into_iter()
                .find(|c| c.alias == "pool")?;
            let supervised = pool.supervised.as_ref()?;
            (supervised.restarts == 1 && pool.attached && pool.pid != old_pid).then_some(pool)
        }
    })
    .await;
    assert_ne!(restarted.pid, pool.pid);
    assert!(
        restarted
            .supervised
            .unwrap()
            .last_failure
            .contains("reef.task.intensity")
    );
    assert_eq!(count(&client, "pool/worker-0").await, "0");
}

#[tokio::test]
async fn tasks_keep_their_mail_while_their_host_process_restarts() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let pool = start_pool(&mut supervisor, 2, None).await;
    let client = Client::connect(&node.options()).await.unwrap();
    assert_eq!(count(&client, "pool/worker-1").await, "0");

    let mut events = supervisor
        .watch(wire::WatchRequest { snapshot: false })
        .await
        .unwrap()
        .into_inner();
    signal_pid(pool.pid, Signal::SIGKILL);
    loop {
        let event = events.message().await.unwrap().unwrap();
        if event.kind() == wire::ContainerEventKind::Fail {
            break;
        }
    }
    // Sent while the host is down: held, then answered by the restarted host's task.
    client.send("pool/worker-1", "tick").await.unwrap();
    let reply = client.request("pool/worker-1", "count", ANSWER).await;
    assert_eq!(&reply.unwrap()[..], b"1");
    let after = wait_task(&supervisor, "pool/worker-1", |_| true).await;
    assert_ne!(after.pid, pool.pid);
}
