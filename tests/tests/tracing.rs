//! Traces across hops, exported over OTLP to a collector inside the test: a request
//! from a client (the CLI) through one or two nodes to a container is one trace, each
//! hop's span a child of the one before.

use std::process::Command;

use reef_tests::{
    CollectedSpan, Collector, STARTUP, TestNode, binary, eventually, http_client, start_gateway_in,
    wait_for_container,
};

/// Export batches every 100 ms instead of 5 s, so the test waits less.
const QUICK_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Runs `reef request ALIAS TEXT` against `node` with trace export to `collector`.
fn traced_request(node: &TestNode, collector: &Collector, alias: &str) -> std::process::Output {
    Command::new(binary("reef"))
        .args(["--addr", &node.addr.to_string(), "--ca"])
        .arg(&node.ca)
        .args(["request", alias, "hello", "--timeout", "2s"])
        .env("REEF_OTLP_ENDPOINT", &collector.endpoint)
        .env(QUICK_EXPORT.0, QUICK_EXPORT.1)
        .output()
        .expect("reef runs")
}

/// Creates an echo container on `node`, with extra `reef create` flags.
async fn create_echo(node: &TestNode, extra: &[&str]) {
    let demo = binary("reef-demo").display().to_string();
    // A container does not inherit the node's environment: it is told to export soon.
    let quick = format!("{}={}", QUICK_EXPORT.0, QUICK_EXPORT.1);
    let mut args = vec!["create", "echo", "--env", &quick];
    args.extend(extra);
    args.extend(["--", &demo, "echo"]);
    let created = node.reef(&args);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    wait_for_container(&node.supervisor().await, "echo", "attached", |c| c.attached).await;
}

/// Waits until the collector holds a span that `find` picks.
async fn span(
    collector: &Collector,
    what: &str,
    find: impl Fn(&CollectedSpan) -> bool,
) -> CollectedSpan {
    eventually(what, STARTUP, || async {
        collector.spans().into_iter().find(|span| find(span))
    })
    .await
}

/// The CLI's root span of `request ALIAS`.
async fn client_span(collector: &Collector, alias: &str) -> CollectedSpan {
    let name = format!("request {alias}");
    let span = span(collector, &name, |s| {
        s.service == "reef-cli" && s.name == name
    })
    .await;
    assert_eq!(span.kind, CLIENT);
    assert!(
        span.parent_span_id.is_empty(),
        "the client starts the trace"
    );
    span
}

/// The span of node `instance` routing an envelope to `alias`, under `parent`.
async fn route_span(
    collector: &Collector,
    instance: &str,
    alias: &str,
    parent: &CollectedSpan,
) -> CollectedSpan {
    let name = format!("route {alias}");
    span(collector, &format!("{name} on {instance}"), |s| {
        s.service == "reefd" && s.instance == instance && s.name == name && s.is_child_of(parent)
    })
    .await
}

/// The echo container's span of handling the request, under `parent`.
async fn handle_span(collector: &Collector, parent: &CollectedSpan) -> CollectedSpan {
    let span = span(collector, "handle echo", |s| {
        s.service == "echo" && s.name == "handle echo" && s.is_child_of(parent)
    })
    .await;
    assert_eq!(span.kind, SERVER);
    assert!(!span.failed);
    span
}

/// Node `solo`, exporting to `collector`, with an echo container it spawned (which
/// exports to the node's collector too).
async fn exporting_node_with_echo(collector: &Collector) -> TestNode {
    let node = TestNode::start_with_env(
        &["--name", "solo", "--otlp-endpoint", &collector.endpoint],
        &[QUICK_EXPORT],
    );
    create_echo(&node, &[]).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_from_the_client_through_the_node_to_the_container() {
    let collector = Collector::start().await;
    let node = exporting_node_with_echo(&collector).await;

    let output = traced_request(&node, &collector, "echo");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "hello");
    let client = client_span(&collector, "echo").await;
    let route = route_span(&collector, "solo", "echo", &client).await;
    handle_span(&collector, &route).await;

    // A request nobody can answer is a failed client span, still routed by the node.
    let output = traced_request(&node, &collector, "nobody");
    assert!(!output.status.success());
    let failed = client_span(&collector, "nobody").await;
    assert!(failed.failed, "{failed:?}");
    route_span(&collector, "solo", "nobody", &failed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_a_request_from_node_to_node() {
    let collector = Collector::start().await;
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let start = |name: &str, parent: Option<&TestNode>| {
        let mut flags = vec![
            "--name".to_owned(),
            name.to_owned(),
            "--otlp-endpoint".to_owned(),
            collector.endpoint.clone(),
        ];
        flags.extend(parent.map(TestNode::join_flags).unwrap_or_default());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        TestNode::start_prepared_with_env(&flags, &[QUICK_EXPORT], |data| {
            reef_tls::issue_node_ca(cluster.path(), name, &data.join("tls")).unwrap();
        })
    };
    let core = start("core", None);
    let edge = start("edge", Some(&core));
    create_echo(&core, &[]).await;
    wait_for_container(&core.supervisor().await, "nodes/edge", "linked", |c| {
        c.attached
    })
    .await;

    // Asked at the edge, answered at the core.
    let output = traced_request(&edge, &collector, "echo");
    assert!(output.status.success(), "{output:?}");
    let client = client_span(&collector, "echo").await;
    let at_edge = route_span(&collector, "edge", "echo", &client).await;
    let at_core = route_span(&collector, "core", "echo", &at_edge).await;
    handle_span(&collector, &at_core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_export_passes_the_trace_context_through() {
    let collector = Collector::start().await;
    let node = TestNode::start_with(&["--name", "quiet"]);
    let endpoint = format!("REEF_OTLP_ENDPOINT={}", collector.endpoint);
    create_echo(&node, &["--env", &endpoint]).await;

    let output = traced_request(&node, &collector, "echo");
    assert!(output.status.success(), "{output:?}");
    // No span of the node's between the client's and the container's.
    let client = client_span(&collector, "echo").await;
    handle_span(&collector, &client).await;
    assert!(
        collector.spans().iter().all(|span| span.service != "reefd"),
        "a node without --otlp-endpoint exports nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_s_trace_continues_through_the_gateway() {
    let collector = Collector::start().await;
    let node = exporting_node_with_echo(&collector).await;
    let config =
        "[[http]]\nlisten = \"127.0.0.1:0\"\n[[http.route]]\npath = \"/echo\"\nto = \"echo\"\n";
    let gateway = start_gateway_in(
        &node,
        config,
        &[("REEF_OTLP_ENDPOINT", &collector.endpoint), QUICK_EXPORT],
        |_| {},
    );

    // The HTTP caller's own trace and span.
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let reply = http_client()
        .post(format!("{}/echo", gateway.http[0]))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body("traced")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let gateway_span = span(&collector, "the gateway's request echo", |s| {
        s.service == "gateway" && s.name == "request echo"
    })
    .await;
    assert_eq!(hex(&gateway_span.trace_id), trace_id);
    assert_eq!(hex(&gateway_span.parent_span_id), caller_span);
    let route = route_span(&collector, "solo", "echo", &gateway_span).await;
    handle_span(&collector, &route).await;
}
