//! `reef top`: a live view of the node and its container tree — rates, queue depths,
//! restarts and request latency — from `Supervisor.Info` and `Supervisor.Tree` sampled
//! at an interval. Rates and latency quantiles are over the last interval.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use reef_platform::HistogramSnapshot;
use reef_proto::{
    ContainerInfo, ContainerNode, InfoRequest, LatencyHistogram, NodeInfo, TreeRequest,
    supervisor_client::SupervisorClient,
};
use reef_sdk::{ConnectOptions, Error};
use tonic::transport::Channel;

use super::ps::{state_of, uptime};

/// Arguments of `reef top`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How often to sample, and the window rates and latencies are measured over.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    interval: Duration,
    /// Stop after this many views (default: until interrupted).
    #[arg(long, short = 'n')]
    iterations: Option<u64>,
}

pub async fn run(args: Args, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let mut supervisor = SupervisorClient::new(options.connect().await?);
    // On a terminal each view replaces the last; piped, views follow each other (as
    // `top -b` does), so that they can be logged or parsed.
    let terminal = std::io::stdout().is_terminal();
    let mut previous = Sample::take(&mut supervisor).await?;
    let mut ticks = tokio::time::interval(args.interval);
    ticks.tick().await;
    let mut shown = 0;
    while args.iterations.is_none_or(|limit| shown < limit) {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let current = Sample::take(&mut supervisor).await?;
        let view = render(&previous, &current);
        let mut stdout = std::io::stdout().lock();
        match terminal {
            true => write!(stdout, "\x1b[H\x1b[2J{view}")?,
            false => writeln!(stdout, "{view}")?,
        }
        stdout.flush()?;
        previous = current;
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// What the node said at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    node: NodeInfo,
    tree: Vec<ContainerNode>,
}

impl Sample {
    async fn take(supervisor: &mut SupervisorClient<Channel>) -> Result<Self, Error> {
        let node = supervisor
            .info(InfoRequest {})
            .await
            .map_err(Error::Rejected)?
            .into_inner();
        let tree = supervisor
            .tree(TreeRequest {})
            .await
            .map_err(Error::Rejected)?
            .into_inner()
            .roots;
        Ok(Self {
            at: Instant::now(),
            node,
            tree,
        })
    }

    /// Every container in the tree, by alias.
    fn containers(&self) -> HashMap<&str, &ContainerInfo> {
        fn walk<'a>(nodes: &'a [ContainerNode], into: &mut HashMap<&'a str, &'a ContainerInfo>) {
            for node in nodes {
                if let Some(container) = &node.container {
                    into.insert(container.alias.as_str(), container);
                }
                walk(&node.children, into);
            }
        }
        let mut containers = HashMap::new();
        walk(&self.tree, &mut containers);
        containers
    }
}

/// The view of the interval from `previous` to `current`.
fn render(previous: &Sample, current: &Sample) -> String {
    let seconds = current
        .at
        .saturating_duration_since(previous.at)
        .as_secs_f64()
        .max(1e-3);
    let per_second = |now: u64, then: u64| rate(now, then, seconds);
    let (node, before) = (&current.node, &previous.node);
    let replied = interval(node.replied.as_ref(), before.replied.as_ref());
    let refused = interval(node.refused.as_ref(), before.refused.as_ref());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reef top · node {} · up {} · {} containers · over {seconds:.1}s",
        node.name,
        seconds_text(node.uptime_ms / 1000),
        node.containers,
    );
    let _ = writeln!(
        out,
        "routed {}/s · dead letters {}/s ({} total) · expired {} total · state ops {}/s",
        per_second(node.envelopes_routed, before.envelopes_routed),
        per_second(node.dead_letters, before.dead_letters),
        node.dead_letters,
        node.requests_expired,
        per_second(node.state_operations, before.state_operations),
    );
    let _ = writeln!(
        out,
        "requests {}/s p50 {} p99 {} · errors {}/s",
        rate_text(replied.count() as f64 / seconds),
        latency_text(replied.quantile(0.5)),
        latency_text(replied.quantile(0.99)),
        rate_text(refused.count() as f64 / seconds),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<28} {:<8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "ALIAS",
        "STATE",
        "PID",
        "RESTARTS",
        "IN/s",
        "OUT/s",
        "QUEUE",
        "ANSWER/s",
        "P50",
        "P99",
        "UPTIME"
    );
    let earlier = previous.containers();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for root in &current.tree {
        render_node(&mut out, root, 0, &earlier, seconds, now_ms);
    }
    out
}

fn render_node(
    out: &mut String,
    node: &ContainerNode,
    depth: usize,
    earlier: &HashMap<&str, &ContainerInfo>,
    seconds: f64,
    now_ms: u64,
) {
    let Some(container) = &node.container else {
        return;
    };
    let before = earlier.get(container.alias.as_str()).copied();
    // A container new in this interval counted from zero.
    let then = |field: fn(&ContainerInfo) -> u64| before.map_or(0, field);
    let answered = interval(
        container.answered.as_ref(),
        before.and_then(|b| b.answered.as_ref()),
    );
    let supervised = container.supervised.as_ref();
    let _ = writeln!(
        out,
        "{:<28} {:<8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8}",
        fit(&format!("{}{}", "  ".repeat(depth), container.alias), 28),
        state_of(container),
        match container.pid {
            0 => "-".to_owned(),
            pid => pid.to_string(),
        },
        supervised.map_or("-".to_owned(), |s| s.restarts.to_string()),
        rate(container.envelopes_in, then(|c| c.envelopes_in), seconds),
        rate(container.envelopes_out, then(|c| c.envelopes_out), seconds),
        container.queue_depth,
        rate_text(answered.count() as f64 / seconds),
        latency_text(answered.quantile(0.5)),
        latency_text(answered.quantile(0.99)),
        uptime(
            supervised.map_or(container.registered_at_unix_ms, |s| s.started_at_unix_ms),
            now_ms
        ),
    );
    for child in &node.children {
        render_node(out, child, depth + 1, earlier, seconds, now_ms);
    }
}

/// `text` cut to `width` characters, with an ellipsis where it was cut, so that a long
/// alias does not push the columns out of line.
fn fit(text: &str, width: usize) -> String {
    match text.chars().count() > width {
        true => text.chars().take(width - 1).chain(['…']).collect(),
        false => text.to_owned(),
    }
}

/// What a counter did per second; a counter that went down restarted from zero.
fn rate(now: u64, then: u64, seconds: f64) -> String {
    let delta = match now.checked_sub(then) {
        Some(delta) => delta,
        None => now,
    };
    rate_text(delta as f64 / seconds)
}

fn rate_text(per_second: f64) -> String {
    match per_second {
        0.0 => "0".to_owned(),
        r if r >= 100.0 => format!("{r:.0}"),
        r => format!("{r:.1}"),
    }
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

fn latency_text(latency: Option<Duration>) -> String {
    match latency {
        None => "-".to_owned(),
        Some(d) if d < Duration::from_millis(1) => format!("{}µs", d.as_micros()),
        Some(d) if d < Duration::from_secs(1) => format!("{:.1}ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2}s", d.as_secs_f64()),
    }
}

fn seconds_text(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_platform::Histogram;
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

    fn row<'a>(view: &'a str, alias: &str) -> Vec<&'a str> {
        view.lines()
            .find(|line| line.split_whitespace().next() == Some(alias))
            .unwrap_or_else(|| panic!("no row for {alias} in\n{view}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn rates_and_latency_are_over_the_interval() {
        let start = Instant::now();
        let before = sample(start, 1_000, vec![container("echo", 100, 0, &[50; 10])]);
        let after = sample(
            start + Duration::from_secs(2),
            3_000,
            vec![container(
                "echo",
                300,
                0,
                &[&[50; 10][..], &[2; 20]].concat(),
            )],
        );
        let view = render(&before, &after);
        assert!(view.contains("routed 1000/s"), "{view}");
        let echo = row(&view, "echo");
        // ALIAS STATE PID RESTARTS IN/s OUT/s QUEUE ANSWER/s P50 P99 UPTIME
        assert_eq!(echo[4], "100", "(300 - 100) / 2 s: {view}");
        assert_eq!(echo[6], "7", "queue depth as reported");
        assert_eq!(echo[7], "10.0", "20 answers in 2 s");
        // Only the 2 ms answers fell in the interval, not the earlier 50 ms ones.
        assert!(
            echo[9].ends_with("ms") && echo[9].starts_with('2'),
            "{view}"
        );
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
        let view = render(&before, &after);
        let echo = row(&view, "echo");
        assert_eq!(echo[3], "1", "restarts: {view}");
        assert_eq!(echo[4], "30.0", "not a negative rate: {view}");
        assert_eq!(echo[7], "3.0");
        let newcomer = row(&view, "newcomer");
        assert_eq!(newcomer[4], "10.0");
        assert_eq!(newcomer[8], "-", "no answers, no latency: {view}");
    }
}
