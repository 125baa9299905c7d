//! The node tree figures: a root node and two children (`reefd --join`), all reefd
//! processes on loopback over TLS, with identities from one cluster CA. The same routed
//! measurements run three times in one run: client and containers on child `a` (same
//! node); the client on `a` and the containers on `root` (one link, PEERS.md's two-node
//! definition); the client on `b` and the containers on `a`, so every envelope goes
//! b → root → a (two links). A fourth node, with a policy file of ten rules whose last
//! lets everyone do everything, measures what checking every send costs (same node).

use bytes::Bytes;

use crate::{node::BenchNode, report, routed::Routed};

/// Nine rules that never match the bench's senders (`container:…`), then one that lets
/// everyone do everything: each send walks all ten.
fn bench_policy() -> String {
    let mut text = String::new();
    for i in 0..9 {
        text.push_str(&format!(
            "[[policy]]\nname = \"team-{i}\"\nwho = [\"client:team-{i}\", \"container:worker-{i}*\"]\nmay = [\"send\", \"manage\"]\non = [\"svc-{i}/*\"]\n"
        ));
    }
    text.push_str("[[policy]]\nname = \"everyone\"\nwho = [\"*\"]\nmay = [\"*\"]\non = [\"*\"]\n");
    text
}

/// Sizes of one run.
pub struct Sizes {
    pub messages: u64,
    pub requests: u64,
    pub in_flight: usize,
    pub latency_samples: u64,
    pub runs: usize,
}

/// What `node` could not deliver, and why (the newest few), for a figure that came out
/// short.
async fn dead_letters(node: &BenchNode) -> anyhow::Result<String> {
    let mut supervisor =
        reef_proto::supervisor_client::SupervisorClient::new(node.options.connect().await?);
    let letters = supervisor
        .dead_letters(reef_proto::DeadLettersRequest { limit: 5 })
        .await?
        .into_inner();
    let reasons: Vec<_> = letters
        .letters
        .iter()
        .map(|l| format!("{:?} → {}: {}", l.kind, l.destination, l.reason))
        .collect();
    Ok(format!("{} in all; {}", letters.total, reasons.join("; ")))
}

pub async fn run(sizes: &Sizes, payload: Bytes) -> anyhow::Result<()> {
    let cluster = tempfile::tempdir()?;
    reef_tls::init_cluster_ca(cluster.path())?;
    let node = |name: &str, extra: &[String]| {
        let mut args = vec!["--name".to_owned(), name.to_owned()];
        args.extend_from_slice(extra);
        BenchNode::start_prepared(&args, |data| {
            Ok(reef_tls::issue_node_ca(
                cluster.path(),
                name,
                &data.join("tls"),
            )?)
        })
    };
    let root = node("root", &[])?;
    let child = |name: &str| {
        node(
            name,
            &[
                "--join".to_owned(),
                root.options.node.clone(),
                "--join-ca".to_owned(),
                root.options.ca.display().to_string(),
            ],
        )
    };
    let a = child("a")?;
    let b = child("b")?;
    let policy = cluster.path().join("policy.toml");
    std::fs::write(&policy, bench_policy())?;
    let policed = node(
        "policed",
        &["--policy".to_owned(), policy.display().to_string()],
    )?;
    // (shape, node of the sink and echo containers, node of the client)
    let shapes = [
        ("same_node", &a, &a),
        ("one_link", &root, &a),
        ("two_links", &a, &b),
        ("same_node_policed", &policed, &policed),
    ];
    let mut same_node = None;
    for (shape, containers, client_node) in shapes {
        let routed = Routed::start_across(containers, client_node, shape).await?;
        let sends =
            report::median_of(sizes.runs, || routed.sends(sizes.messages, payload.clone())).await;
        if sends.is_err() {
            for (name, node) in [("root", &root), ("a", &a), ("b", &b)] {
                eprintln!("# dead letters on {name}: {}", dead_letters(node).await?);
            }
        }
        let sends = sends?;
        report::rate(&format!("tree_{shape}_send_rate"), &sends, "msg/s");
        let requests = report::median_of(sizes.runs, || {
            routed.requests(sizes.requests, sizes.in_flight, payload.clone())
        })
        .await?;
        report::rate(&format!("tree_{shape}_request_rate"), &requests, "req/s");
        let latency = routed
            .request_latency(sizes.latency_samples, payload.clone())
            .await?;
        report::latency(&format!("tree_{shape}_request"), &latency);
        routed.stop().await;
        // Every shape beside the same-node one, measured in this run.
        match &same_node {
            None => same_node = Some((sends, requests, latency)),
            Some((same_sends, same_requests, same_latency)) => {
                report::ratio(
                    &format!("tree_{shape}_vs_same_node_send"),
                    &sends,
                    same_sends,
                );
                report::ratio(
                    &format!("tree_{shape}_vs_same_node_request"),
                    &requests,
                    same_requests,
                );
                for (quantile, name) in [(0.5, "p50"), (0.99, "p99")] {
                    report::metric(
                        &format!("tree_{shape}_vs_same_node_request_{name}"),
                        latency.value_at_quantile(quantile) as f64
                            / same_latency.value_at_quantile(quantile).max(1) as f64,
                        "ratio",
                    );
                }
            }
        }
    }
    Ok(())
}
