//! A fast producer and a slow consumer for 30 s: credit-based flow control and bounded
//! mailboxes slow the producer down to the consumer's pace, and the node's memory stays
//! flat instead of buffering the difference.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use reef_sdk::{Client, ContainerOptions, Context, Handler, Message};
use reef_tests::TestNode;

const RUN: Duration = Duration::from_secs(30);

/// Takes about a millisecond per four messages.
struct SlowConsumer {
    handled: Arc<AtomicU64>,
}

impl Handler for SlowConsumer {
    async fn on_message(&mut self, _: &Context, _: Message) {
        if self.handled.fetch_add(1, Relaxed).is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_slows_its_producer_and_node_memory_stays_bounded() {
    let mut node = TestNode::start();
    let node_pid = node.process().pid();
    let handled = Arc::new(AtomicU64::new(0));
    tokio::spawn(reef_sdk::run(
        ContainerOptions::new("sink", node.options()),
        SlowConsumer {
            handled: handled.clone(),
        },
    ));
    node.wait_attached("sink").await;
    let producer = Client::connect(&node.options()).await.unwrap();
    let baseline = rss_kib(node_pid);

    let sent = Arc::new(AtomicU64::new(0));
    let sending = tokio::spawn({
        let (producer, sent) = (producer.clone(), sent.clone());
        async move {
            let payload = reef_sdk::Bytes::from(vec![b'x'; 100]);
            let started = Instant::now();
            while started.elapsed() < RUN {
                producer.send("sink", payload.clone()).await.unwrap();
                sent.fetch_add(1, Relaxed);
            }
        }
    });
    let mut peak = baseline;
    let mut most_ahead = 0;
    while !sending.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_kib(node_pid));
        most_ahead = most_ahead.max(sent.load(Relaxed).saturating_sub(handled.load(Relaxed)));
    }
    sending.await.unwrap();
    producer.flush(Duration::from_secs(60)).await.unwrap();
    let (sent, handled) = (sent.load(Relaxed), handled.load(Relaxed));
    println!(
        "sent {sent}, handled {handled}, producer at most {most_ahead} ahead, node RSS {baseline} KiB → peak {peak} KiB"
    );
    assert_eq!(
        producer.undelivered(),
        0,
        "the producer waited instead of losing sends"
    );
    assert!(handled > 10_000, "the consumer kept working: {handled}");
    // What can be in flight: the producer's outbox, its stream's HTTP/2 window, the
    // node's mailbox and the consumer's credit — tens of thousands, never the millions
    // an unthrottled producer sends in 30 s.
    assert!(most_ahead < 100_000, "the producer ran {most_ahead} ahead");
    assert!(
        peak < baseline + 64 * 1024,
        "node RSS grew from {baseline} KiB to {peak} KiB"
    );
}
