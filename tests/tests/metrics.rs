//! The node's Prometheus endpoint, scraped over plain HTTP as Prometheus would: the
//! node's counters and a series per container move with real traffic and restarts.

use std::time::Duration;

use reef_sdk::Client;
use reef_tests::{STARTUP, TestNode, binary, eventually, signal_pid, wait_for_container};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `GET /metrics`: the status line and the body.
async fn scrape(node: &TestNode) -> (String, String) {
    let addr = node.metrics.expect("started with --metrics-listen");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: reef\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the series `series` (name and labels, as written), if present.
fn value(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_traffic_and_restarts() {
    let node = TestNode::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let demo = binary("reef-demo").display().to_string();
    let created = node.reef(&["create", "echo", "--", &demo, "echo"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let supervisor = node.supervisor().await;
    let echo = wait_for_container(&supervisor, "echo", "attached", |c| c.attached).await;

    let (status, before) = scrape(&node).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        before.contains("# TYPE reef_envelopes_routed_total counter"),
        "{before}"
    );
    assert_eq!(
        value(&before, r#"reef_container_up{alias="echo"}"#),
        Some(1)
    );
    assert_eq!(
        value(&before, r#"reef_container_restarts_total{alias="echo"}"#),
        Some(0)
    );
    let routed_before = value(&before, "reef_envelopes_routed_total").unwrap();

    let client = Client::connect(&node.options()).await.unwrap();
    for _ in 0..10 {
        client
            .request("echo", "ping", Duration::from_secs(5))
            .await
            .unwrap();
    }
    client.send("nobody", "lost").await.unwrap();
    client.flush(Duration::from_secs(5)).await.unwrap();
    let (_, after) = scrape(&node).await;
    assert!(value(&after, "reef_envelopes_routed_total").unwrap() >= routed_before + 20);
    assert!(
        value(
            &after,
            r#"reef_container_envelopes_out_total{alias="echo"}"#
        )
        .unwrap()
            >= 10
    );
    assert!(value(&after, "reef_dead_letters_total").unwrap() >= 1);

    // A killed container is restarted; the counter says so.
    signal_pid(echo.pid, nix::sys::signal::Signal::SIGKILL);
    eventually("the restart in the metrics", STARTUP, || async {
        let (_, body) = scrape(&node).await;
        (value(&body, r#"reef_container_restarts_total{alias="echo"}"#) == Some(1)).then_some(())
    })
    .await;
}
