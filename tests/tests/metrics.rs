//! The node's Prometheus endpoint, scraped over plain HTTP as Prometheus would: the
//! node's counters and a series per container move with real traffic and restarts.

use std::time::Duration;

use reef_proto as wire;
use reef_sdk::{Client, state::StateClient};
use reef_tests::{STARTUP, TestNode, eventually, signal_pid};
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

/// The values of a histogram's `_bucket` series whose name and first labels are
/// `prefix`, in the order written (ascending `le`).
fn bucket_counts(body: &str, prefix: &str) -> Vec<u64> {
    body.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect()
}

/// The value of the series `series` (name and labels, as written), if present.
fn value(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_traffic_and_restarts() {
    let node = TestNode::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let echo = node.create_demo("echo", &["echo"]).await;

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

    // Every answered request is in the node's histogram and in the answering
    // container's, in buckets that add up to the count.
    let replied = r#"reef_request_duration_seconds_count{outcome="reply"}"#;
    assert!(value(&after, replied).unwrap() >= 10, "{after}");
    let answered = r#"reef_container_request_duration_seconds_count{alias="echo"}"#;
    assert!(value(&after, answered).unwrap() >= 10, "{after}");
    let buckets = bucket_counts(
        &after,
        r#"reef_container_request_duration_seconds_bucket{alias="echo","#,
    );
    assert_eq!(buckets.len(), 19, "18 bounds and +Inf: {buckets:?}");
    assert!(
        buckets.windows(2).all(|pair| pair[0] <= pair[1]),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().copied(), value(&after, answered));

    // A killed container is restarted; the counter says so.
    signal_pid(echo.pid, nix::sys::signal::Signal::SIGKILL);
    eventually("the restart in the metrics", STARTUP, || async {
        let (_, body) = scrape(&node).await;
        (value(&body, r#"reef_container_restarts_total{alias="echo"}"#) == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_operations_are_counted_by_outcome() {
    let node = TestNode::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let state = StateClient::connect(&node.options()).await.unwrap();
    let series = |op: &str, outcome: &str| {
        format!(r#"reef_state_operations_total{{op="{op}",outcome="{outcome}"}}"#)
    };
    let (_, before) = scrape(&node).await;
    assert_eq!(value(&before, &series("put", "ok")), Some(0), "{before}");

    let revision = state.put("metrics", "k", "1").await.unwrap();
    state.put_if("metrics", "k", "2", revision).await.unwrap();
    let stale = state
        .put_if("metrics", "k", "3", revision)
        .await
        .unwrap_err();
    assert!(stale.to_string().contains("revision"), "{stale}");
    state.get("Not A Namespace!", "k").await.unwrap_err();
    let mut watch = state
        .raw()
        .watch(wire::WatchKeysRequest {
            namespace: "metrics".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    watch
        .message()
        .await
        .unwrap()
        .expect("the watch is established");

    let (_, during) = scrape(&node).await;
    assert_eq!(value(&during, &series("put", "ok")), Some(2), "{during}");
    assert_eq!(value(&during, &series("put", "conflict")), Some(1));
    assert_eq!(value(&during, &series("get", "rejected")), Some(1));
    assert_eq!(value(&during, &series("watch", "ok")), Some(1));
    assert_eq!(
        value(
            &during,
            r#"reef_state_operation_duration_seconds_count{op="put"}"#
        ),
        Some(3)
    );
    assert_eq!(value(&during, "reef_state_watches_open"), Some(1));

    // A watch the client drops is no longer open once the node notices.
    drop(watch);
    eventually("the watch closed in the metrics", STARTUP, || async {
        let (_, body) = scrape(&node).await;
        (value(&body, "reef_state_watches_open") == Some(0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_for_a_restarting_container_count_in_its_queue_depth() {
    let node = TestNode::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let definition = wire::ContainerDefinition {
        alias: "echo".into(),
        kind: reef_tests::demo_process(&["echo"]),
        ..Default::default()
    };
    reef_tests::create_restarting(&node, definition).await;

    let client = Client::connect(&node.options()).await.unwrap();
    for n in 0..3 {
        client.send("echo", format!("held {n}")).await.unwrap();
    }
    client.flush(Duration::from_secs(5)).await.unwrap();
    let (_, body) = scrape(&node).await;
    assert_eq!(
        value(&body, r#"reef_container_queue_depth{alias="echo"}"#),
        Some(3),
        "{body}"
    );
    assert_eq!(value(&body, r#"reef_container_up{alias="echo"}"#), Some(0));
}
