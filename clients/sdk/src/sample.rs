//! What a node says about itself at one moment (`Supervisor.Info` and `Supervisor.Tree`),
//! and what two such samples say about the interval between them: rates, queue depths,
//! restarts and request latency per container. `reef top` prints it; the dashboard
//! sends it to browsers.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use reef_core::{HistogramSnapshot, unix_ms};
use reef_proto::{
    ContainerInfo, ContainerNode, ContainerState, InfoRequest, LatencyHistogram, NodeInfo,
    TreeRequest, supervisor_client::SupervisorClient,
};
use serde::Serialize;
use tonic::{Status, transport::Channel};

/// The node's counters and its container tree, read at `at`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the answers came.
    pub at: Instant,
    /// `Supervisor.Info`.
    pub node: NodeInfo,
    /// `Supervisor.Tree`'s roots.
    pub tree: Vec<ContainerNode>,
}

impl Sample {
    /// Asks the node.
    pub async fn take(supervisor: &mut SupervisorClient<Channel>) -> Result<Self, Status> {
        let node = supervisor.info(InfoRequest {}).await?.into_inner();
        let tree = supervisor.tree(TreeRequest {}).await?.into_inner().roots;
        Ok(Self {
            at: Instant::now(),
            node,
            tree,
        })
    }

    /// Every container in the tree, by alias.
    pub fn containers(&self) -> HashMap<&str, &ContainerInfo> {
        containers_in(&self.tree)
    }
}

/// Every container in a tree (`Supervisor.Tree`'s roots), by alias.
pub fn containers_in(tree: &[ContainerNode]) -> HashMap<&str, &ContainerInfo> {
    fn walk<'a>(nodes: &'a [ContainerNode], into: &mut HashMap<&'a str, &'a ContainerInfo>) {
        for node in nodes {
            if let Some(container) = &node.container {
                into.insert(container.alias.as_str(), container);
            }
            walk(&node.children, into);
        }
    }
    let mut containers = HashMap::new();
    walk(tree, &mut containers);
    containers
}

/// The node over one interval.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRates {
    /// Its name.
    pub name: String,
    /// How long it has served.
    pub uptime_ms: u64,
    /// Registrations it holds.
    pub containers: u32,
    /// The interval's length.
    pub window_ms: u64,
    /// Envelopes routed per second.
    pub routed_per_s: f64,
    /// Dead letters per second, and in all.
    pub dead_letters_per_s: f64,
    /// Dead letters since the node started.
    pub dead_letters: u64,
    /// Requests expired since the node started.
    pub requests_expired: u64,
    /// Calls of `reef.v1.State` per second.
    pub state_ops_per_s: f64,
    /// Requests answered with a REPLY per second.
    pub replies_per_s: f64,
    /// Requests answered with an ERROR per second.
    pub errors_per_s: f64,
    /// Median latency of the replies in the interval, if any.
    pub p50_us: Option<u64>,
    /// 99th percentile of the same.
    pub p99_us: Option<u64>,
}

/// One container over one interval, in tree order.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerRates {
    /// Its alias.
    pub alias: String,
    /// Its parent's alias; empty under the node.
    pub parent: String,
    /// How deep in the tree (0 = under the node).
    pub depth: usize,
    /// The node it lives on, for containers of other nodes; empty for this one.
    pub node: String,
    /// `STARTED`, `FAILED`…; `-` when not supervised.
    pub state: &'static str,
    /// `process` or `task`; empty when not supervised.
    pub kind: String,
    /// Its OS process id; 0 if unknown.
    pub pid: u32,
    /// Times it was restarted; `None` when not supervised.
    pub restarts: Option<u32>,
    /// Whether its attach stream is open.
    pub attached: bool,
    /// Since its last start (or registration).
    pub uptime_ms: Option<u64>,
    /// Envelopes waiting for it.
    pub queue: u64,
    /// Envelopes from it per second.
    pub in_per_s: f64,
    /// Envelopes to it per second.
    pub out_per_s: f64,
    /// Requests it answered per second.
    pub answers_per_s: f64,
    /// Median latency of those answers, if any.
    pub p50_us: Option<u64>,
    /// 99th percentile of the same.
    pub p99_us: Option<u64>,
    /// What the supervisor is doing about it.
    pub activity: String,
    /// Its last failure.
    pub last_failure: String,
}

/// What happened between `previous` and `current` (two samples of the same node).
pub fn compare(previous: &Sample, current: &Sample) -> (NodeRates, Vec<ContainerRates>) {
    let window = current.at.saturating_duration_since(previous.at);
    let seconds = window.as_secs_f64().max(1e-3);
    let (node, before) = (&current.node, &previous.node);
    let replied = interval(node.replied.as_ref(), before.replied.as_ref());
    let refused = interval(node.refused.as_ref(), before.refused.as_ref());
    let node_rates = NodeRates {
        name: node.name.clone(),
        uptime_ms: node.uptime_ms,
        containers: node.containers,
        window_ms: window.as_millis() as u64,
        routed_per_s: rate(node.envelopes_routed, before.envelopes_routed, seconds),
        dead_letters_per_s: rate(node.dead_letters, before.dead_letters, seconds),
        dead_letters: node.dead_letters,
        requests_expired: node.requests_expired,
        state_ops_per_s: rate(node.state_operations, before.state_operations, seconds),
        replies_per_s: replied.count() as f64 / seconds,
        errors_per_s: refused.count() as f64 / seconds,
        p50_us: micros(replied.quantile(0.5)),
        p99_us: micros(replied.quantile(0.99)),
    };
    let earlier = previous.containers();
    let now_ms = unix_ms(SystemTime::now());
    let mut rows = Vec::new();
    let mut walk = vec![];
    walk.extend(current.tree.iter().rev().map(|node| (node, 0)));
    while let Some((tree_node, depth)) = walk.pop() {
        walk.extend(
            tree_node
                .children
                .iter()
                .rev()
                .map(|child| (child, depth + 1)),
        );
        let Some(container) = &tree_node.container else {
            continue;
        };
        let before = earlier.get(container.alias.as_str()).copied();
        rows.push(container_rates(container, before, depth, seconds, now_ms));
    }
    (node_rates, rows)
}

fn container_rates(
    container: &ContainerInfo,
    before: Option<&ContainerInfo>,
    depth: usize,
    seconds: f64,
    now_ms: u64,
) -> ContainerRates {
    // A container new in this interval counted from zero.
    let then = |field: fn(&ContainerInfo) -> u64| before.map_or(0, field);
    let answered = interval(
        container.answered.as_ref(),
        before.and_then(|b| b.answered.as_ref()),
    );
    let supervised = container.supervised.as_ref();
    let since = supervised.map_or(container.registered_at_unix_ms, |s| s.started_at_unix_ms);
    ContainerRates {
        alias: container.alias.clone(),
        parent: container.parent.clone(),
        depth,
        node: container
            .labels
            .get("reef.node")
            .cloned()
            .unwrap_or_default(),
        state: state_name(container),
        kind: supervised.map(|s| s.kind.clone()).unwrap_or_default(),
        pid: container.pid,
        restarts: supervised.map(|s| s.restarts),
        attached: container.attached,
        uptime_ms: (since != 0).then(|| now_ms.saturating_sub(since)),
        queue: container.queue_depth,
        in_per_s: rate(container.envelopes_in, then(|c| c.envelopes_in), seconds),
        out_per_s: rate(container.envelopes_out, then(|c| c.envelopes_out), seconds),
        answers_per_s: answered.count() as f64 / seconds,
        p50_us: micros(answered.quantile(0.5)),
        p99_us: micros(answered.quantile(0.99)),
        activity: supervised.map(|s| s.activity.clone()).unwrap_or_default(),
        last_failure: supervised
            .map(|s| s.last_failure.clone())
            .unwrap_or_default(),
    }
}

/// A container's lifecycle state as people read it (`STARTED`, `FAILED`…); `-` when
/// it is not supervised.
pub fn state_name(container: &ContainerInfo) -> &'static str {
    let state = container
        .supervised
        .as_ref()
        .and_then(|s| ContainerState::try_from(s.state).ok());
    match state {
        None | Some(ContainerState::Unspecified) => "-",
        Some(ContainerState::Created) => "CREATED",
        Some(ContainerState::Started) => "STARTED",
        Some(ContainerState::Stopped) => "STOPPED",
        Some(ContainerState::Failed) => "FAILED",
        Some(ContainerState::Destroyed) => "DESTROYED",
    }
}

/// What a counter did per second; a counter that went down restarted from zero.
fn rate(now: u64, then: u64, seconds: f64) -> f64 {
    now.checked_sub(then).unwrap_or(now) as f64 / seconds
}

/// The observations between two readings of a histogram; nothing when the node did
/// not send one or it has buckets this build does not know.
fn interval(now: Option<&LatencyHistogram>, then: Option<&LatencyHistogram>) -> HistogramSnapshot {
    let read = |wire: Option<&LatencyHistogram>| {
        wire.and_then(|wire| HistogramSnapshot::try_from(wire).ok())
            .unwrap_or_default()
    };
    read(now).since(&read(then))
}

fn micros(latency: Option<Duration>) -> Option<u64> {
    latency.map(|d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_core::Histogram;
    use reef_proto::SupervisedInfo;

    fn histogram(latencies_ms: &[u64]) -> Option<LatencyHistogram> {
        let histogram = Histogram::default();
        for &ms in latencies_ms {
            histogram.record(Duration::from_millis(ms));
        }
        Some((&histogram.snapshot()).into())
    }

    fn container(alias: &str, envelopes_in: u64, restarts: u32, answered: &[u64]) -> ContainerNode {
        ContainerNode {
            container: Some(ContainerInfo {
                alias: alias.to_owned(),
                pid: 42,
                envelopes_in,
                queue_depth: 7,
                answered: histogram(answered),
                supervised: Some(SupervisedInfo {
                    restarts,
                    state: ContainerState::Started as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            children: Vec::new(),
        }
    }

    fn sample(at: Instant, routed: u64, tree: Vec<ContainerNode>) -> Sample {
        Sample {
            at,
            node: NodeInfo {
                name: "n1".into(),
                envelopes_routed: routed,
                ..Default::default()
            },
            tree,
        }
    }

    #[test]
    fn rates_and_latency_are_over_the_interval() {
        let start = Instant::now();
        let before = sample(start, 1_000, vec![container("echo", 100, 0, &[50; 10])]);
        let mut parent = container("echo", 300, 0, &[&[50; 10][..], &[2; 20]].concat());
        parent.children.push(container("child", 0, 0, &[]));
        let after = sample(start + Duration::from_secs(2), 3_000, vec![parent]);
        let (node, rows) = compare(&before, &after);
        assert_eq!(node.routed_per_s, 1_000.0);
        assert_eq!(node.window_ms, 2_000);
        let echo = &rows[0];
        assert_eq!((echo.alias.as_str(), echo.depth), ("echo", 0));
        assert_eq!(echo.state, "STARTED");
        assert_eq!(echo.in_per_s, 100.0, "(300 - 100) / 2 s");
        assert_eq!(echo.queue, 7);
        assert_eq!(echo.answers_per_s, 10.0, "20 answers in 2 s");
        // Only the 2 ms answers fell in the interval, not the earlier 50 ms ones.
        let p99 = echo.p99_us.unwrap();
        assert!((1_000..=2_500).contains(&p99), "{p99}");
        assert_eq!((rows[1].alias.as_str(), rows[1].depth), ("child", 1));
    }

    #[test]
    fn a_restarted_container_counts_from_zero() {
        let start = Instant::now();
        let before = sample(start, 0, vec![container("echo", 500, 0, &[5; 50])]);
        let after = sample(
            start + Duration::from_secs(1),
            0,
            vec![
                container("echo", 30, 1, &[5; 3]),
                container("newcomer", 10, 0, &[]),
            ],
        );
        let (_, rows) = compare(&before, &after);
        assert_eq!(rows[0].restarts, Some(1));
        assert_eq!(rows[0].in_per_s, 30.0, "not a negative rate");
        assert_eq!(rows[0].answers_per_s, 3.0);
        assert_eq!(rows[1].in_per_s, 10.0);
        assert_eq!(rows[1].p50_us, None, "no answers, no latency");
    }
}
