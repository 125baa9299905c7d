//! `reef up [PROJECT.toml]`: start a node and a project's containers as child
//! processes, print how to reach them, stop everything on Ctrl-C / SIGTERM.

use std::{
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use reef_proto::{ListRequest, supervisor_client::SupervisorClient};
use reef_sdk::ConnectOptions;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, ChildStdout, Command},
    time::{Instant, sleep, timeout},
};

use crate::project::Project;

/// How long the node and the containers get to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long children get to exit after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `reef up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The project file; without it, the demo project shipped with reef runs.
    project: Option<PathBuf>,
    /// The node's TLS gRPC address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// The node's plaintext health address.
    #[arg(long, default_value = "127.0.0.1:7401")]
    health_listen: String,
    /// Where the node keeps its certificates and state.
    #[arg(long, default_value = ".reef")]
    data_dir: PathBuf,
}

struct Running {
    alias: String,
    child: Child,
}

pub async fn run(args: Args, insecure: bool) -> anyhow::Result<ExitCode> {
    let project = Project::load(args.project.as_deref())?;
    let mut node = Command::new(sibling_or_path("reefd"));
    node.arg("--listen")
        .arg(&args.listen)
        .arg("--health-listen")
        .arg(&args.health_listen)
        .arg("--data-dir")
        .arg(&args.data_dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if insecure {
        node.arg("--insecure");
    }
    let mut node = node
        .spawn()
        .context("cannot start reefd (build it with `cargo build --release`)")?;
    let stdout = node.stdout.take().context("reefd has no stdout")?;
    let ready = timeout(STARTUP_TIMEOUT, read_ready_line(stdout))
        .await
        .map_err(|_| anyhow::anyhow!("reefd did not report ready within {STARTUP_TIMEOUT:?}"));
    let ready = match ready.and_then(|r| r) {
        Ok(ready) => ready,
        Err(error) => {
            let status = node.try_wait().ok().flatten();
            match status {
                Some(status) => {
                    bail!("reefd exited ({status}) before it was ready; see its error above")
                }
                None => return Err(error),
            }
        }
    };
    let ca = std::path::absolute(&ready.ca).unwrap_or_else(|_| ready.ca.clone());
    let options = ConnectOptions {
        node: ready.grpc.clone(),
        ca: ca.clone(),
        insecure,
        ..ConnectOptions::default()
    };

    let mut containers = Vec::new();
    for def in &project.containers {
        let program = if def.command[0].contains('/') {
            PathBuf::from(&def.command[0])
        } else {
            sibling_or_path(&def.command[0])
        };
        let mut command = Command::new(&program);
        command
            .args(&def.command[1..])
            .envs(&def.env)
            .env("REEF_NODE", &ready.grpc)
            .env("REEF_CA", &ca)
            .env("REEF_ALIAS", &def.alias)
            .env("REEF_PARENT", def.parent.as_deref().unwrap_or(""))
            .kill_on_drop(true);
        if insecure {
            command.env("REEF_INSECURE", "1");
        }
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start container {:?} ({})",
                def.alias,
                program.display()
            )
        })?;
        containers.push(Running {
            alias: def.alias.clone(),
            child,
        });
        // In order, each one attached before the next starts (as OTP starts children),
        // so a container can count on the ones listed before it.
        wait_until_attached(&options, &mut containers).await?;
    }
    print_summary(&project, &ready, &ca, &containers, &args);

    let outcome = supervise(&mut node, &mut containers).await;
    stop(&mut node, &mut containers).await;
    outcome
}

/// Waits for a signal while reporting children that exit. Restarting them by policy is
/// the node's job (supervision), not the CLI's.
async fn supervise(node: &mut Child, containers: &mut [Running]) -> anyhow::Result<ExitCode> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reported = vec![false; containers.len()];
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = terminate.recv() => return Ok(ExitCode::SUCCESS),
            status = node.wait() => {
                bail!("reefd exited unexpectedly ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string()));
            }
            _ = poll.tick() => {
                for (running, reported) in containers.iter_mut().zip(reported.iter_mut()) {
                    if let (false, Ok(Some(status))) = (*reported, running.child.try_wait()) {
                        eprintln!("reef up: container {:?} exited ({status})", running.alias);
                        *reported = true;
                    }
                }
            }
        }
    }
}

/// SIGTERM to the containers, then to the node; SIGKILL to whatever outlives the
/// stop timeout.
async fn stop(node: &mut Child, containers: &mut [Running]) {
    for running in containers.iter_mut() {
        terminate(&mut running.child);
    }
    for running in containers.iter_mut() {
        wait_or_kill(&mut running.child).await;
    }
    terminate(node);
    wait_or_kill(node).await;
}

fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

async fn wait_or_kill(child: &mut Child) {
    if timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

struct Ready {
    grpc: String,
    health: String,
    ca: PathBuf,
}

/// Reads reefd's stdout up to its `reefd ready k=v…` line, then keeps forwarding it.
async fn read_ready_line(stdout: ChildStdout) -> anyhow::Result<Ready> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        let Some(fields) = line.strip_prefix("reefd ready ") else {
            println!("{line}");
            continue;
        };
        let field = |key: &str| {
            fields
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        let ready = Ready {
            grpc: field("grpc").context("reefd's ready line has no grpc=")?,
            health: field("health").unwrap_or_else(|| "off".to_owned()),
            ca: field("ca").context("reefd's ready line has no ca=")?.into(),
        };
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{line}");
            }
        });
        return Ok(ready);
    }
    bail!("reefd closed its output before it was ready")
}

/// Polls the node until every container is attached, failing fast if one exits.
async fn wait_until_attached(
    options: &ConnectOptions,
    containers: &mut [Running],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut supervisor = SupervisorClient::new(options.connect().await?);
    loop {
        for running in containers.iter_mut() {
            if let Some(status) = running.child.try_wait()? {
                bail!(
                    "container {:?} exited ({status}) during startup; see its error above",
                    running.alias
                );
            }
        }
        let listed = supervisor
            .list(ListRequest {})
            .await?
            .into_inner()
            .containers;
        let missing: Vec<_> = containers
            .iter()
            .filter(|r| !listed.iter().any(|c| c.alias == r.alias && c.attached))
            .map(|r| r.alias.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "containers not attached after {STARTUP_TIMEOUT:?}: {}",
                missing.join(", ")
            );
        }
        sleep(Duration::from_millis(50)).await;
    }
}

fn print_summary(project: &Project, ready: &Ready, ca: &Path, containers: &[Running], args: &Args) {
    let reef = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let cwd = std::env::current_dir().ok()?;
            exe.strip_prefix(&cwd).ok().map(Path::to_path_buf)
        })
        .map_or_else(|| "reef".to_owned(), |p| p.display().to_string());
    let defaults = ready.grpc == reef_sdk::DEFAULT_NODE && args.data_dir == Path::new(".reef");
    let connect = if defaults {
        String::new()
    } else {
        format!(" --node {} --ca {}", ready.grpc, ca.display())
    };
    let list: Vec<String> = containers
        .iter()
        .map(|r| format!("{} (pid {})", r.alias, r.child.id().unwrap_or(0)))
        .collect();
    println!("reef up: project {:?} is running", project.project.name);
    println!(
        "  node        https://{}  (TLS, CA {})",
        ready.grpc,
        ca.display()
    );
    println!(
        "  health      {}  (plaintext grpc.health.v1, for probes)",
        ready.health
    );
    println!("  containers  {}", list.join(", "));
    println!();
    println!("Talk to it from another terminal:");
    println!("  {reef}{connect} request echo hello");
    println!("  {reef}{connect} send counter hi");
    println!("  {reef}{connect} request counter count");
    println!("  {reef}{connect} ps");
    println!("  grpcurl -cacert {} {} list", ca.display(), ready.grpc);
    println!("Ctrl-C stops the project.");
}

/// A program next to the running `reef` executable, else the bare name for PATH.
fn sibling_or_path(program: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(program)))
        .filter(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}
