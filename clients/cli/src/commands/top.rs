//! `reef top`: a live view of the node and its container tree — rates, queue depths,
//! restarts and request latency — from samples of `Supervisor.Info` and
//! `Supervisor.Tree` (`reef_sdk::sample`). Rates and quantiles are over the last
//! interval.

use std::{
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    time::Duration,
};

use reef_proto::supervisor_client::SupervisorClient;
use reef_sdk::sample::{ContainerRates, NodeRates, Sample, compare};
use reef_sdk::{ConnectOptions, Error};

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
    let mut previous = Sample::take(&mut supervisor)
        .await
        .map_err(Error::Rejected)?;
    let mut ticks = tokio::time::interval(args.interval);
    ticks.tick().await;
    let mut shown = 0;
    while args.iterations.is_none_or(|limit| shown < limit) {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let current = Sample::take(&mut supervisor)
            .await
            .map_err(Error::Rejected)?;
        let (node, containers) = compare(&previous, &current);
        let view = render(&node, &containers);
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

/// One view: the node's lines, then a row per container in tree order.
fn render(node: &NodeRates, containers: &[ContainerRates]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reef top · node {} · up {} · {} containers · over {:.1}s",
        node.name,
        crate::clock::seconds_text(node.uptime_ms / 1000),
        node.containers,
        node.window_ms as f64 / 1e3,
    );
    let _ = writeln!(
        out,
        "routed {}/s · dead letters {}/s ({} total) · expired {} total · state ops {}/s",
        rate_text(node.routed_per_s),
        rate_text(node.dead_letters_per_s),
        node.dead_letters,
        node.requests_expired,
        rate_text(node.state_ops_per_s),
    );
    let _ = writeln!(
        out,
        "requests {}/s p50 {} p99 {} · errors {}/s\n",
        rate_text(node.replies_per_s),
        latency_text(node.p50_us),
        latency_text(node.p99_us),
        rate_text(node.errors_per_s),
    );
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
    for row in containers {
        let _ = writeln!(
            out,
            "{:<28} {:<8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8}",
            fit(&format!("{}{}", "  ".repeat(row.depth), row.alias), 28),
            row.state,
            match row.pid {
                0 => "-".to_owned(),
                pid => pid.to_string(),
            },
            row.restarts.map_or("-".to_owned(), |r| r.to_string()),
            rate_text(row.in_per_s),
            rate_text(row.out_per_s),
            row.queue,
            rate_text(row.answers_per_s),
            latency_text(row.p50_us),
            latency_text(row.p99_us),
            row.uptime_ms
                .map_or("-".to_owned(), |ms| crate::clock::seconds_text(ms / 1000)),
        );
    }
    out
}

/// `text` cut to `width` characters, with an ellipsis where it was cut, so that a long
/// alias does not push the columns out of line.
fn fit(text: &str, width: usize) -> String {
    match text.chars().count() > width {
        true => text.chars().take(width - 1).chain(['…']).collect(),
        false => text.to_owned(),
    }
}

fn rate_text(per_second: f64) -> String {
    match per_second {
        0.0 => "0".to_owned(),
        r if r >= 100.0 => format!("{r:.0}"),
        r => format!("{r:.1}"),
    }
}

fn latency_text(micros: Option<u64>) -> String {
    match micros {
        None => "-".to_owned(),
        Some(us) if us < 1_000 => format!("{us}µs"),
        Some(us) if us < 1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        Some(us) => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_aliases_are_cut_and_latencies_read_in_their_unit() {
        assert_eq!(fit("short", 8), "short");
        assert_eq!(fit("client/27007-18ec777154386525", 10), "client/27…");
        assert_eq!(latency_text(None), "-");
        assert_eq!(latency_text(Some(420)), "420µs");
        assert_eq!(latency_text(Some(12_300)), "12.3ms");
        assert_eq!(latency_text(Some(2_500_000)), "2.50s");
        assert_eq!(rate_text(0.0), "0");
        assert_eq!(rate_text(2.25), "2.2");
        assert_eq!(rate_text(1234.4), "1234");
    }
}
