//! `reef-bench`: measures reef against raw tonic on the same machine, in the same run.
//!
//! Every figure is printed as `metric NAME VALUE UNIT`, ratios included, so runs can be
//! compared by tools. Each throughput figure is the median of `--runs` runs; a `#` line
//! after it shows every run, because tokio figures on a 2-core VM can be bimodal.

use std::{process::ExitCode, time::Duration};

use clap::Parser;

mod baseline;
mod gateway;
mod node;
mod report;
mod restart;
mod routed;
mod state;
mod tasks;
mod tree;

use baseline::EchoServer;

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
    /// Runtime threads for this process's clients and containers (1 = a single thread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Also print diagnostic figures: tonic with batched messages, the same through reef's
    /// queueing machinery in-process, and how full the node's frames are.
    #[arg(long)]
    diagnostics: bool,
    /// Run the node inside this process instead of as a reefd process.
    #[arg(long)]
    node_in_process: bool,
    /// Extra reefd flag for the node under test (repeatable), e.g. `--reefd-arg=--threads=1`.
    #[arg(long = "reefd-arg", allow_hyphen_values = true)]
    reefd_args: Vec<String>,
    /// Measure only the routed figures (skips the baseline; ratios are not printed).
    #[arg(long)]
    routed_only: bool,
    /// Process restarts timed for the restart figures (SIGKILL → answering).
    #[arg(long, default_value_t = 200)]
    restarts: usize,
    /// Only the restart figures.
    #[arg(long)]
    restarts_only: bool,
    /// Idle task containers spawned for the task spawn and memory figures.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Task panics timed for the task restart figures (panic → answering).
    #[arg(long, default_value_t = 10_000)]
    task_restarts: usize,
    /// Only the task container figures.
    #[arg(long)]
    tasks_only: bool,
    /// Only the state figures (reef's embedded store and etcd).
    #[arg(long)]
    state_only: bool,
    /// Only the node tree figures (same node beside across nodes).
    #[arg(long)]
    tree_only: bool,
    /// Only the HTTP gateway figures (beside a plain axum handler).
    #[arg(long)]
    gateway_only: bool,
    /// Internal: be the process the s6 baseline supervises (answers its pid on ADDR).
    #[arg(long, hide = true)]
    serve_pid: Option<std::net::SocketAddr>,
}

impl Args {
    fn effective(mut self) -> Self {
        if self.quick {
            self.messages = self.messages.min(20_000);
            self.requests = self.requests.min(5_000);
            self.latency_samples = self.latency_samples.min(500);
            self.restarts = self.restarts.min(20);
            self.tasks = self.tasks.min(10_000);
            self.task_restarts = self.task_restarts.min(1_000);
            self.runs = 1;
        }
        self.runs = self.runs.max(1);
        self
    }
}

fn main() -> ExitCode {
    let args = Args::parse().effective();
    if let Some(addr) = args.serve_pid {
        return match restart::serve_pid(addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let runtime = match reef_telemetry::runtime::build(Some(args.threads)) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reef-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
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

    if args.restarts_only {
        let node = node::BenchNode::start(&restart_node_args(args))?;
        return restart::measure(&node, args.restarts).await;
    }
    if args.tasks_only {
        return measure_tasks(args).await;
    }
    let tree_sizes = tree::Sizes {
        messages: args.messages / 4,
        requests: args.requests / 4,
        in_flight: args.in_flight,
        latency_samples: args.latency_samples / 4,
        runs: args.runs,
    };
    if args.tree_only {
        return tree::run(&tree_sizes, payload).await;
    }
    let gateway_sizes = gateway::Sizes {
        requests: args.requests,
        in_flight: args.in_flight,
        latency_samples: args.latency_samples,
        runs: args.runs,
        ws_messages: args.messages / 4,
        ws_connections: 16,
    };
    if args.gateway_only {
        let node = node::BenchNode::start(&args.reefd_args)?;
        return gateway::run(&node, &gateway_sizes, payload).await;
    }
    if args.state_only {
        let node = node::BenchNode::start(&args.reefd_args)?;
        return state::run(&node, state::Sizes::new(args.quick), args.runs).await;
    }
    let baseline = if args.routed_only {
        None
    } else {
        let baseline = baseline::Baseline::start().await?;
        let bidi = report::median_of(args.runs, || {
            baseline.bidi_echo(EchoServer::Direct, args.messages, payload.clone(), 1)
        })
        .await?;
        report::rate("baseline_tonic_bidi_rate", &bidi, "msg/s");
        if args.diagnostics {
            let servers = [
                (EchoServer::Direct, "tonic"),
                (EchoServer::ViaQueue, "queued"),
            ];
            for batch in [16, 64, 512] {
                for (server, name) in servers {
                    let rate = baseline
                        .bidi_echo(server, args.messages, payload.clone(), batch)
                        .await?;
                    let metric = format!("baseline_{name}_bidi_batch{batch}_rate");
                    report::metric(&metric, rate, "msg/s");
                }
            }
        }
        let unary =
            report::median_of(args.runs, || baseline.unary(args.requests, args.in_flight)).await?;
        report::rate("baseline_tonic_unary_rate", &unary, "req/s");
        let unary_latency = baseline.unary_latency(args.latency_samples).await?;
        report::latency("baseline_tonic_unary", &unary_latency);
        Some((bidi, unary, unary_latency))
    };

    let node = if args.node_in_process {
        node::BenchNode::start_in_process().await?
    } else {
        node::BenchNode::start(&args.reefd_args)?
    };
    let routed = routed::Routed::start(&node).await?;
    let mut batching = routed::Batching::new(&routed, args.diagnostics).await?;
    let raw = report::median_of(args.runs, || {
        routed::raw_frames(&node.options, args.messages, payload.clone())
    })
    .await?;
    report::rate("node_raw_frame_rate", &raw, "msg/s");
    batching.report("node_raw", &routed).await?;
    let sends =
        report::median_of(args.runs, || routed.sends(args.messages, payload.clone())).await?;
    report::rate("routed_send_rate", &sends, "msg/s");
    batching.report("routed_send", &routed).await?;
    let acked = report::median_of(args.runs, || {
        routed.acked_sends(args.messages, payload.clone())
    })
    .await?;
    report::rate("acked_send_rate", &acked, "msg/s");
    let direct = report::median_of(args.runs, || {
        routed.direct_sends(args.messages, payload.clone())
    })
    .await?;
    report::rate("direct_send_rate", &direct, "msg/s");
    let requests = report::median_of(args.runs, || {
        routed.requests(args.requests, args.in_flight, payload.clone())
    })
    .await?;
    report::rate("routed_request_rate", &requests, "req/s");
    batching.report("routed_request", &routed).await?;
    let latency = routed
        .request_latency(args.latency_samples, payload.clone())
        .await?;
    report::latency("routed_request", &latency);
    if let Some((bidi, unary, unary_latency)) = baseline {
        report::ratio("routed_send_vs_tonic_bidi", &sends, &bidi);
        report::ratio("acked_send_vs_tonic_bidi", &acked, &bidi);
        report::ratio("direct_send_vs_tonic_bidi", &direct, &bidi);
        report::ratio("routed_request_vs_tonic_unary", &requests, &unary);
        report::metric(
            "routed_request_p50_vs_tonic_unary_p50",
            latency.value_at_quantile(0.5) as f64
                / unary_latency.value_at_quantile(0.5).max(1) as f64,
            "ratio",
        );
    }
    routed.stop().await;
    gateway::run(&node, &gateway_sizes, payload.clone()).await?;
    state::run(&node, state::Sizes::new(args.quick), args.runs).await?;
    drop(node);
    tree::run(&tree_sizes, payload.clone()).await?;
    let node = node::BenchNode::start(&restart_node_args(args))?;
    restart::measure(&node, args.restarts).await?;
    drop(node);
    measure_tasks(args).await
}

async fn measure_tasks(args: &Args) -> anyhow::Result<()> {
    let mut extra = args.reefd_args.clone();
    extra.extend([
        "--max-containers".to_owned(),
        (args.tasks + 100).to_string(),
    ]);
    let node = node::BenchNode::start(&extra)?;
    tasks::measure(&node, args.tasks, args.task_restarts).await
}

/// A node that allows as many restarts as the benchmark makes.
fn restart_node_args(args: &Args) -> Vec<String> {
    let mut extra = args.reefd_args.clone();
    extra.extend(["--max-restarts".to_owned(), "1000000".to_owned()]);
    extra
}

/// How long any single measurement may take before the benchmark gives up.
pub const MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(120);
