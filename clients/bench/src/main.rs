//! `reef-bench`: measures reef against raw tonic on the same machine, in the same run.
//!
//! Every figure is printed as `metric NAME VALUE UNIT`, ratios included, so runs can be
//! compared by tools. Each throughput figure is the median of `--runs` runs; a `#` line
//! after it shows every run, because tokio figures on a 2-core VM can be bimodal.

use std::{process::ExitCode, time::Duration};

use clap::Parser;

mod baseline;
mod node;
mod report;
mod routed;

/// Load generator and benchmark for reef.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Messages per throughput run (sends and the bidi baseline).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Requests per throughput run (64 in flight).
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Sequential requests timed for the latency figures.
    #[arg(long, default_value_t = 20_000)]
    latency_samples: u64,
    /// Concurrent requesters for the request-rate figures.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Runs per throughput figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A small, fast run that checks every path works (for CI).
    #[arg(long)]
    quick: bool,
    /// Measure only the routed figures (skips the baseline; ratios are not printed).
    #[arg(long)]
    routed_only: bool,
}

impl Args {
    fn effective(mut self) -> Self {
        if self.quick {
            self.messages = self.messages.min(20_000);
            self.requests = self.requests.min(5_000);
            self.latency_samples = self.latency_samples.min(500);
            self.runs = 1;
        }
        self.runs = self.runs.max(1);
        self
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse().effective();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reef-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; args.payload]);
    println!(
        "# reef-bench: {} messages, {} requests ({} in flight), {} latency samples, {} B payloads, {} runs",
        args.messages, args.requests, args.in_flight, args.latency_samples, args.payload, args.runs
    );

    let baseline = if args.routed_only {
        None
    } else {
        let baseline = baseline::Baseline::start().await?;
        let bidi = report::median_of(args.runs, || {
            baseline.bidi_echo(args.messages, payload.clone())
        })
        .await?;
        report::rate("baseline_tonic_bidi_rate", &bidi, "msg/s");
        if std::env::var_os("REEF_BENCH_BATCHED").is_some() {
            for batch in [16, 64, 512] {
                let rate = baseline
                    .bidi_echo_batched(args.messages, payload.clone(), batch)
                    .await?;
                report::metric(
                    &format!("baseline_tonic_bidi_batch{batch}_rate"),
                    rate,
                    "msg/s",
                );
                let rate = baseline
                    .bidi_echo_queued(args.messages, payload.clone(), batch)
                    .await?;
                report::metric(
                    &format!("baseline_queued_bidi_batch{batch}_rate"),
                    rate,
                    "msg/s",
                );
            }
        }
        let unary =
            report::median_of(args.runs, || baseline.unary(args.requests, args.in_flight)).await?;
        report::rate("baseline_tonic_unary_rate", &unary, "req/s");
        let unary_latency = baseline.unary_latency(args.latency_samples).await?;
        report::latency("baseline_tonic_unary", &unary_latency);
        Some((bidi, unary, unary_latency))
    };

    let node = if std::env::var("REEF_BENCH_IN_PROCESS").is_ok_and(|v| v == "1") {
        node::BenchNode::start_in_process().await?
    } else {
        node::BenchNode::start()?
    };
    let routed = routed::Routed::start(&node).await?;
    let (_, envelopes_before_raw, sent_before_raw) = routed.node_counters().await?;
    let raw = report::median_of(args.runs, || {
        routed::raw_frames(&node.options, args.messages, payload.clone())
    })
    .await?;
    report::rate("node_raw_frame_rate", &raw, "msg/s");
    let (frames_before, envelopes_before, sent_before) = routed.node_counters().await?;
    report::metric(
        "node_raw_envelopes_per_frame_sent",
        (envelopes_before - envelopes_before_raw) as f64
            / (sent_before - sent_before_raw).max(1) as f64,
        "envelopes",
    );
    let sends =
        report::median_of(args.runs, || routed.sends(args.messages, payload.clone())).await?;
    report::rate("routed_send_rate", &sends, "msg/s");
    let (frames, envelopes, sent) = routed.node_counters().await?;
    report::metric(
        "routed_send_envelopes_per_frame_sent",
        (envelopes - envelopes_before) as f64 / (sent - sent_before).max(1) as f64,
        "envelopes",
    );
    report::metric(
        "routed_send_envelopes_per_frame",
        (envelopes - envelopes_before) as f64 / (frames - frames_before).max(1) as f64,
        "envelopes",
    );
    let requests = report::median_of(args.runs, || {
        routed.requests(args.requests, args.in_flight, payload.clone())
    })
    .await?;
    report::rate("routed_request_rate", &requests, "req/s");
    let latency = routed
        .request_latency(args.latency_samples, payload.clone())
        .await?;
    report::latency("routed_request", &latency);
    if let Some((bidi, unary, unary_latency)) = baseline {
        report::ratio("routed_send_vs_tonic_bidi", &sends, &bidi);
        report::ratio("routed_request_vs_tonic_unary", &requests, &unary);
        report::metric(
            "routed_request_p50_vs_tonic_unary_p50",
            latency.value_at_quantile(0.5) as f64
                / unary_latency.value_at_quantile(0.5).max(1) as f64,
            "ratio",
        );
    }
    routed.stop().await;
    Ok(())
}

/// How long any single measurement may take before the benchmark gives up.
pub const MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(120);
