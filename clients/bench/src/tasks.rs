//! Task containers: spawning many (time, memory per task in the host and in the node)
//! and restart after a panic, against a hand-written tokio equivalent in the same run
//! (a task per actor with an mpsc mailbox; a supervisor loop that respawns it).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use reef_sdk::{
    Client, ContainerOptions, Context, Handler, HandlerError, Message, TaskOptions, Tasks,
};
use tokio::sync::{mpsc, oneshot};

use crate::{MEASUREMENT_TIMEOUT, node::BenchNode, report};

/// The process's resident memory, from /proc.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS missing from /proc status")?;
    Ok(kib * 1024)
}

/// Hands the bench the host's task table once it is attached.
struct Host {
    ready: Option<oneshot::Sender<(Tasks, Client)>>,
}

impl Handler for Host {
    async fn on_start(&mut self, ctx: &Context) -> Result<(), HandlerError> {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send((ctx.tasks().clone(), ctx.client().clone()));
        }
        Ok(())
    }
}

/// A task that does nothing: what an idle task costs.
struct Idle;

impl Handler for Idle {}

/// When the last panic happened, and how long each restarted task took to answer.
#[derive(Default)]
struct Restarts {
    panicked_at: Option<Instant>,
    histogram: Option<Histogram<u64>>,
}

/// Panics on `panic`; on anything else records the time since the last panic.
struct Crashy(Arc<Mutex<Restarts>>);

impl Handler for Crashy {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        let mut restarts = self.0.lock();
        if request.payload == "panic" {
            restarts.panicked_at = Some(Instant::now());
            drop(restarts);
            panic!("asked to");
        }
        if let Some(at) = restarts.panicked_at.take()
            && let Some(histogram) = restarts.histogram.as_mut()
        {
            histogram.saturating_record(at.elapsed().as_nanos() as u64);
        }
        Ok(Bytes::new())
    }
}

/// Spawns `count` idle tasks and times `restarts` panic → answering cycles.
pub async fn measure(node: &BenchNode, count: usize, restarts: usize) -> anyhow::Result<()> {
    let (ready, host) = oneshot::channel();
    let options = ContainerOptions::new("bench-host", node.options.clone());
    let hosting = tokio::spawn(reef_sdk::run(options, Host { ready: Some(ready) }));
    let (tasks, _) = tokio::time::timeout(MEASUREMENT_TIMEOUT, host)
        .await
        .context("the task host did not start")??;

    restart_latency(&tasks, node, restarts).await?;
    spawn_many(&tasks, node, count).await?;

    hosting.abort();
    Ok(())
}

async fn spawn_many(tasks: &Tasks, node: &BenchNode, count: usize) -> anyhow::Result<()> {
    let me = std::process::id();
    let node_pid = node
        .pid()
        .context("the task figures need reefd as a process")?;
    let (host_before, node_before) = (rss_bytes(me)?, rss_bytes(node_pid)?);
    let started = Instant::now();
    let options = (0..count).map(|n| TaskOptions::new(&format!("idle/{n}")));
    let results = tokio::time::timeout(MEASUREMENT_TIMEOUT, tasks.spawn_all(options, || Idle))
        .await
        .context("spawning tasks timed out")?;
    let elapsed = started.elapsed();
    if let Some(error) = results.into_iter().find_map(Result::err) {
        bail!("spawning a task failed: {error}");
    }
    let per_task = |after: u64, before: u64| after.saturating_sub(before) as f64 / count as f64;
    let host_per_task = per_task(rss_bytes(me)?, host_before);
    let node_per_task = per_task(rss_bytes(node_pid)?, node_before);
    report::metric("task_spawn_time", elapsed.as_secs_f64() * 1e3, "ms");
    report::metric(
        "task_spawn_rate",
        count as f64 / elapsed.as_secs_f64(),
        "tasks/s",
    );
    report::metric("task_memory_host", host_per_task, "bytes/task");
    report::metric("task_memory_node", node_per_task, "bytes/task");

    let (baseline_time, baseline_memory) = tokio_actors(count).await?;
    report::metric("baseline_tokio_spawn_time", baseline_time * 1e3, "ms");
    report::metric("baseline_tokio_memory", baseline_memory, "bytes/actor");
    report::metric(
        "task_memory_host_vs_tokio",
        host_per_task / baseline_memory.max(1.0),
        "ratio",
    );
    println!("# task_spawn_time counts announcing every alias to the node (Supervisor.Host)");
    Ok(())
}

/// The tokio idiom: one task per actor awaiting its mailbox.
async fn tokio_actors(count: usize) -> anyhow::Result<(f64, f64)> {
    let before = rss_bytes(std::process::id())?;
    let started = Instant::now();
    let mut mailboxes = Vec::with_capacity(count);
    let mut actors = Vec::with_capacity(count);
    for _ in 0..count {
        let (tx, mut rx) = mpsc::channel::<reef_proto::Envelope>(16);
        actors.push(tokio::spawn(
            async move { while rx.recv().await.is_some() {} },
        ));
        mailboxes.push(tx);
    }
    // Let every actor reach its first await, as an idle actor would be.
    tokio::task::yield_now().await;
    let elapsed = started.elapsed().as_secs_f64();
    let memory = rss_bytes(std::process::id())?.saturating_sub(before) as f64 / count as f64;
    drop(mailboxes);
    for actor in actors {
        let _ = actor.await;
    }
    Ok((elapsed, memory))
}

async fn restart_latency(tasks: &Tasks, node: &BenchNode, restarts: usize) -> anyhow::Result<()> {
    let shared = Arc::new(Mutex::new(Restarts {
        panicked_at: None,
        histogram: Some(report::histogram_ns()),
    }));
    let mut options = TaskOptions::new("crashy");
    options.max_restarts = u32::MAX;
    let crashy = shared.clone();
    tasks
        .spawn(options, move || Crashy(crashy.clone()))
        .await
        .context("spawn the crashing task")?;
    let client = Client::connect(&node.options).await?;
    // Thousands of panics would print thousands of messages.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut cycles = report::histogram();
    let outcome = async {
        for _ in 0..restarts {
            let started = Instant::now();
            let timeout = Duration::from_secs(10);
            let (panicked, answered) = tokio::join!(
                client.request("crashy", "panic", timeout),
                client.request("crashy", "ping", timeout),
            );
            if panicked.is_ok() {
                bail!("the panicking request was answered");
            }
            answered.context("the restarted task did not answer")?;
            cycles.saturating_record(started.elapsed().as_micros() as u64);
        }
        Ok(())
    }
    .await;
    std::panic::set_hook(hook);
    outcome?;
    let histogram = shared
        .lock()
        .histogram
        .take()
        .context("restart histogram")?;
    report::latency_ns("task_restart", &histogram);
    report::latency("task_restart_cycle", &cycles);
    println!(
        "# task_restart: panic → the restarted handler answers the request queued behind it, inside the host; task_restart_cycle: both requests through the node"
    );
    let baseline = tokio_restarts(restarts).await?;
    report::latency_ns("baseline_tokio_restart", &baseline);
    report::metric(
        "task_restart_p50_vs_tokio",
        histogram.value_at_quantile(0.5) as f64 / baseline.value_at_quantile(0.5).max(1) as f64,
        "ratio",
    );
    client.close().await?;
    Ok(())
}

/// The tokio idiom: a supervisor loop respawns the actor task when its JoinHandle
/// reports a panic; the mailbox outlives the task behind a mutex.
async fn tokio_restarts(restarts: usize) -> anyhow::Result<Histogram<u64>> {
    let (tx, rx) = mpsc::channel::<(bool, oneshot::Sender<()>)>(16);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let panicked_at = Arc::new(Mutex::new(None::<Instant>));
    let histogram = Arc::new(Mutex::new(report::histogram_ns()));
    let supervisor = {
        let (panicked_at, histogram) = (panicked_at.clone(), histogram.clone());
        tokio::spawn(async move {
            loop {
                let (rx, panicked_at, histogram) =
                    (rx.clone(), panicked_at.clone(), histogram.clone());
                let actor = tokio::spawn(async move {
                    while let Some((panic, reply)) = rx.lock().await.recv().await {
                        if panic {
                            *panicked_at.lock() = Some(Instant::now());
                            panic!("asked to");
                        }
                        let at = panicked_at.lock().take();
                        if let Some(at) = at {
                            histogram
                                .lock()
                                .saturating_record(at.elapsed().as_nanos() as u64);
                        }
                        let _ = reply.send(());
                    }
                });
                match actor.await {
                    Err(error) if error.is_panic() => continue,
                    _ => return,
                }
            }
        })
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..restarts {
        let (dropped, _) = oneshot::channel();
        let (reply, answered) = oneshot::channel();
        tx.send((true, dropped)).await?;
        tx.send((false, reply)).await?;
        answered.await?;
    }
    std::panic::set_hook(hook);
    drop(tx);
    supervisor.await?;
    let histogram = histogram.lock().clone();
    Ok(histogram)
}
