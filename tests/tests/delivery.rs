//! Acknowledged delivery: 100,000 messages sent in acknowledged mode to a supervised
//! receiver that is SIGKILLed five times on the way. The node keeps what the receiver
//! has not acknowledged and delivers it again, in order, to the next process; the
//! receiver (`reef-demo ledger`) skips by sequence what it recorded before it died.
//! Every message must be recorded exactly once, in the order sent.

use std::{path::Path, time::Duration};

use nix::sys::signal::Signal;
use reef_proto::{self as wire, supervisor_client::SupervisorClient};
use reef_sdk::Client;
use reef_tests::{
    STARTUP, TestNode, create, demo_process, eventually, signal_pid, wait_for_container,
};
use tonic::transport::Channel;

const MESSAGES: u64 = 100_000;
const KILLS: u64 = 5;

/// The ledger's pid while it is attached.
async fn attached_pid(supervisor: &SupervisorClient<Channel>) -> u32 {
    wait_for_container(supervisor, "ledger", "attached", |c| c.attached)
        .await
        .pid
}

fn recorded_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_five_sigkills_exactly_once_in_order() {
    let node = TestNode::start();
    // Not in DATA: the node's sandbox keeps its containers out of there.
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger_file = ledger_dir.path().join("ledger.txt");
    let mut supervisor = node.supervisor().await;
    let definition = wire::ContainerDefinition {
        alias: "ledger".into(),
        kind: demo_process(&["ledger", "--file", &ledger_file.display().to_string()]),
        policy: Some(wire::SupervisionPolicy {
            max_restarts: 100,
            period_ms: 60_000,
            backoff_initial_ms: 1,
            backoff_max_ms: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    create(&mut supervisor, definition)
        .await
        .expect("create the ledger");
    let mut pid = attached_pid(&supervisor).await;

    let client = Client::connect(&node.options()).await.unwrap();
    let sending = tokio::spawn({
        let client = client.clone();
        async move {
            for n in 0..MESSAGES {
                client.send_acked("ledger", n.to_string()).await.unwrap();
            }
            client.flush(Duration::from_secs(60)).await.unwrap();
        }
    });

    // Kill the receiver five times while the messages flow, each time once it has
    // recorded another sixth of them, and wait for the next process each time.
    for kill in 1..=KILLS {
        let mark = (MESSAGES * kill / (KILLS + 1)) as usize;
        eventually(
            &format!("{mark} recorded"),
            Duration::from_secs(120),
            || async { (recorded_lines(&ledger_file) >= mark).then_some(()) },
        )
        .await;
        signal_pid(pid, Signal::SIGKILL);
        println!(
            "kill {kill}: {} recorded, sender {}",
            recorded_lines(&ledger_file),
            if sending.is_finished() {
                "done"
            } else {
                "still sending"
            }
        );
        let killed = pid;
        pid = eventually("a new ledger process", STARTUP, || {
            let supervisor = supervisor.clone();
            async move {
                let next = attached_pid(&supervisor).await;
                (next != killed).then_some(next)
            }
        })
        .await;
    }
    sending.await.unwrap();
    eventually(
        "every message recorded",
        Duration::from_secs(120),
        || async { (recorded_lines(&ledger_file) >= MESSAGES as usize).then_some(()) },
    )
    .await;

    let text = std::fs::read_to_string(&ledger_file).unwrap();
    let payloads: Vec<u64> = text
        .lines()
        .map(|line| line.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(payloads.len() as u64, MESSAGES, "no message recorded twice");
    let out_of_order = payloads.iter().enumerate().find(|(i, n)| *i as u64 != **n);
    assert_eq!(out_of_order, None, "every message once, in the order sent");
    assert_eq!(client.undelivered(), 0, "the node refused none");
    let letters = reef_tests::dead_letters(&supervisor).await;
    assert!(
        letters
            .letters
            .iter()
            .all(|l| !l.destination.starts_with("ledger")),
        "nothing for the ledger was lost: {:?}",
        letters.letters
    );
}
