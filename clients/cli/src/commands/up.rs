//! `reef up [PROJECT.toml]`: start a node, have it create a project's containers (it
//! spawns and supervises them), print how to reach them, stop everything on Ctrl-C /
//! SIGTERM (the node stops its containers when it stops).

use std::{
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use reef_core::DataDirLock;
use reef_proto::{
    CreateRequest, PutRuleRequest, SetFirewallRequest, supervisor_client::SupervisorClient,
};
use reef_sdk::ConnectOptions;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, ChildStdout, Command},
    time::timeout,
};

use crate::{definition::process_definition, project::Project, routing::overflow_policy};

/// How long the node and the containers get to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node gets to exit after SIGTERM before it is killed.
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
    /// The node's web dashboard address (HTTPS).
    #[arg(long, default_value = "127.0.0.1:7403")]
    dashboard_listen: String,
    /// Let dashboard logins restart, stop, start and destroy containers.
    #[arg(long)]
    dashboard_writes: bool,
    /// Where the node keeps its certificates and state.
    #[arg(long, default_value = ".reef")]
    data_dir: PathBuf,
}

pub async fn run(args: Args, insecure: bool) -> anyhow::Result<ExitCode> {
    let project = Project::load(args.project.as_deref())?;
    if let Some(pid) = DataDirLock::holder(&args.data_dir) {
        bail!(
            "{} is in use by a running node (pid {pid}), perhaps another `reef up`; stop it, or give this one its own --data-dir",
            args.data_dir.display()
        );
    }
    // The node is this same executable (`reef node`): nothing else needs to be built.
    let exe = std::env::current_exe().context("cannot find the reef executable")?;
    let mut node = Command::new(exe);
    // It stops when its standard input ends: this process holds the only write end, so
    // the node ends with `reef up` even when `reef up` is killed.
    node.arg("node")
        .arg("--exit-with-stdin")
        .arg("--listen")
        .arg(&args.listen)
        .arg("--health-listen")
        .arg(&args.health_listen)
        .arg("--dashboard-listen")
        .arg(&args.dashboard_listen)
        .arg("--data-dir")
        .arg(&args.data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if insecure {
        node.arg("--insecure");
    }
    if args.dashboard_writes {
        node.arg("--dashboard-writes");
    }
    let mut node = node.spawn().context("cannot start the node (reef node)")?;
    // Held apart from `node`: `Child::wait` closes the child's stdin before it waits.
    let _node_lifeline = node.stdin.take();
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
        identity: ConnectOptions::admin_beside(&ca),
        ca: ca.clone(),
        insecure,
        ..ConnectOptions::default()
    };

    // In order, each one answering before the next is created (as OTP starts
    // children), so a container can count on the ones listed before it. The node
    // spawns and supervises them; `reef up` only asks.
    let mut supervisor = SupervisorClient::new(options.connect().await?);
    configure_routing(&mut supervisor, &project).await?;
    let mut containers = Vec::new();
    for def in project.containers() {
        let mut definition = process_definition(
            &def.alias,
            def.parent.as_deref(),
            &def.command,
            &def.env,
            def.inherit_env,
            &def.policy,
        )?;
        definition.groups.clone_from(&def.groups);
        if let Some(policy) = &def.overflow {
            definition.overflow = overflow_policy(policy)?;
        }
        let log = args
            .data_dir
            .join("logs")
            .join(format!("{}.log", def.alias.replace('/', "%")));
        let created = create_showing_progress(&mut supervisor, definition, &log).await;
        let created = match created {
            Ok(pid) => pid,
            Err(status) if def.optional => {
                eprintln!(
                    "reef up: optional container {:?} did not start, going on without it: {}",
                    def.alias,
                    status.message()
                );
                continue;
            }
            Err(status) => bail!("cannot create {:?}: {}", def.alias, status.message()),
        };
        containers.push(format!("{} (pid {created})", def.alias));
    }
    print_summary(&project, &ready, &ca, &containers, &args, insecure);

    let outcome = wait_for_signal(&mut node).await;
    terminate(&mut node);
    wait_or_kill(&mut node).await;
    outcome
}

/// After this long, `reef up` says which container it is waiting for, and again every
/// [`PROGRESS_EVERY`].
const SLOW_START: Duration = Duration::from_secs(2);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long `reef up` follows a container that is still starting after the node's own
/// bound on a call (30 s) ended the Create (its start timeout is the node's to enforce).
const FOLLOW_START: Duration = Duration::from_secs(600);

/// Creates a container and waits until it answers, saying what it waits for when that
/// takes a while (a Python container's first start creates a venv). Returns its pid.
async fn create_showing_progress(
    supervisor: &mut SupervisorClient<tonic::transport::Channel>,
    definition: reef_proto::ContainerDefinition,
    log: &Path,
) -> Result<u32, tonic::Status> {
    let alias = definition.alias.clone();
    let began = tokio::time::Instant::now();
    let mut progress = tokio::time::interval_at(began + SLOW_START, PROGRESS_EVERY);
    let say_still_starting = |began: tokio::time::Instant| {
        eprintln!(
            "reef up: waiting for {alias} to start ({} s so far; its output: {})",
            began.elapsed().as_secs(),
            log.display()
        );
    };
    let mut lister = supervisor.clone();
    let create = supervisor.create(CreateRequest {
        definition: Some(definition),
        flags: 0,
        ..Default::default()
    });
    tokio::pin!(create);
    let created = loop {
        tokio::select! {
            created = &mut create => break created,
            _ = progress.tick() => say_still_starting(began),
        }
    };
    let pid = match created {
        Ok(created) => created.into_inner().container.map_or(0, |c| c.pid),
        // The node bounds every call; the container may still be on its way.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            ) =>
        {
            loop {
                tokio::select! {
                    _ = progress.tick() => say_still_starting(began),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                let listed = lister.list(reef_proto::ListRequest {}).await?.into_inner();
                let container = listed.containers.into_iter().find(|c| c.alias == alias);
                match container {
                    Some(c) if c.attached => break c.pid,
                    Some(c)
                        if c.supervised
                            .as_ref()
                            .is_some_and(|s| s.state() == reef_proto::ContainerState::Failed) =>
                    {
                        return Err(tonic::Status::aborted(format!("{alias} failed to start")));
                    }
                    _ if began.elapsed() > FOLLOW_START => return Err(status),
                    _ => {}
                }
            }
        }
        Err(status) => return Err(status),
    };
    if began.elapsed() >= SLOW_START {
        eprintln!(
            "reef up: {alias} started after {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
    Ok(pid)
}

/// Groups, rules and the firewall of `project`, in force before its containers start.
async fn configure_routing(
    supervisor: &mut SupervisorClient<tonic::transport::Channel>,
    project: &Project,
) -> anyhow::Result<()> {
    for group in project.groups() {
        supervisor
            .configure_group(group.to_wire()?)
            .await
            .map_err(|status| {
                anyhow::anyhow!(
                    "cannot configure group {:?}: {}",
                    group.name,
                    status.message()
                )
            })?;
    }
    for rule in project.rules() {
        supervisor
            .put_rule(PutRuleRequest {
                rule: Some(rule.to_wire()?),
                before: String::new(),
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!("cannot add rule {:?}: {}", rule.id, status.message())
            })?;
    }
    if project.routing.firewall {
        supervisor
            .set_firewall(SetFirewallRequest { enabled: true })
            .await
            .map_err(|status| {
                anyhow::anyhow!("cannot turn the firewall on: {}", status.message())
            })?;
    }
    Ok(())
}

/// Waits for Ctrl-C / SIGTERM; fails if reefd exits first.
async fn wait_for_signal(node: &mut Child) -> anyhow::Result<ExitCode> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        _ = terminate.recv() => Ok(ExitCode::SUCCESS),
        status = node.wait() => {
            bail!("reefd exited unexpectedly ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string()));
        }
    }
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
    dashboard: String,
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
            dashboard: field("dashboard").unwrap_or_else(|| "off".to_owned()),
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

fn print_summary(
    project: &Project,
    ready: &Ready,
    ca: &Path,
    containers: &[String],
    args: &Args,
    insecure: bool,
) {
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
        format!(" --addr {} --ca {}", ready.grpc, ca.display())
    };
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
    if ready.dashboard != "off" {
        let scheme = if insecure { "http" } else { "https" };
        println!(
            "  dashboard   {scheme}://{}/  (log in with the token in {}; {})",
            ready.dashboard,
            args.data_dir.join("dashboard.token").display(),
            if args.dashboard_writes {
                "actions allowed"
            } else {
                "read-only"
            }
        );
    }
    println!("  containers  {}", containers.join(", "));
    println!("  logs        {}/logs/", args.data_dir.display());
    println!();
    println!("Talk to it from another terminal:");
    println!("  {reef}{connect} request echo hello");
    println!("  {reef}{connect} send counter hi");
    println!("  {reef}{connect} request counter count");
    println!("  {reef}{connect} ps");
    println!("  {reef}{connect} logs -f ticker");
    println!("  {reef}{connect} watch");
    println!("  grpcurl -cacert {} {} list", ca.display(), ready.grpc);
    println!("Ctrl-C stops the project.");
}
