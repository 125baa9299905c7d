//! Restart latency: SIGKILL a supervised process → the next process answers a request.
//! Measured for reef (through the node: the request sent right after the kill is held
//! and answered by the restarted process) and, in the same run, for s6 supervising a
//! process that answers on a TCP port (the baseline).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use nix::{sys::signal::Signal, unistd::Pid};
use reef_proto::{self as wire, CreateRequest, ListRequest, supervisor_client::SupervisorClient};
use reef_sdk::Client;

use crate::{node::BenchNode, report};

/// How long s6-supervise wants a service up before it restarts it at once.
const S6_THROTTLE: Duration = Duration::from_millis(1050);

fn kill(pid: u32) -> anyhow::Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
        .with_context(|| format!("cannot kill {pid}"))
}

fn sibling(name: &str) -> anyhow::Result<String> {
    let path = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join(name))
        .filter(|p| p.is_file())
        .with_context(|| format!("{name} is not next to reef-bench; build the workspace"))?;
    Ok(path.display().to_string())
}

/// SIGKILL → answering, `restarts` times, for a reef process container.
pub async fn reef(node: &BenchNode, restarts: usize) -> anyhow::Result<Histogram<u64>> {
    let mut supervisor = SupervisorClient::new(node.options.connect().await?);
    let definition = wire::ContainerDefinition {
        alias: "victim".to_owned(),
        kind: Some(wire::container_definition::Kind::Process(
            wire::ProcessSpec {
                command: sibling("reef-demo")?,
                args: vec!["echo".to_owned()],
                env: [("REEF_LOG".to_owned(), "warn".to_owned())].into(),
                working_dir: String::new(),
                inherit_env: false,
            },
        )),
        policy: Some(wire::SupervisionPolicy {
            // Up for a millisecond counts as stable: every kill is a first failure, so
            // the restart is immediate instead of backing off.
            period_ms: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = supervisor
        .create(CreateRequest {
            definition: Some(definition),
            flags: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut pid = created.container.map_or(0, |c| c.pid);
    let client = Client::connect(&node.options).await?;
    let mut latencies = report::histogram();
    for _ in 0..restarts {
        let started = Instant::now();
        kill(pid)?;
        // A request that reached the dying process fails at once with UNAVAILABLE;
        // one sent after the node noticed is held for the next process.
        let reply = loop {
            match client
                .request("victim", "again?", Duration::from_secs(10))
                .await
            {
                Err(error) if error.code() == reef_sdk::Code::Unavailable => continue,
                other => break other?,
            }
        };
        latencies.record(started.elapsed().as_micros() as u64)?;
        anyhow::ensure!(&reply[..] == b"again?", "wrong reply");
        pid = answering_pid(&mut supervisor, pid).await?;
    }
    client.close().await?;
    Ok(latencies)
}

/// Waits until the supervisor reports a new, started process for the victim.
async fn answering_pid(
    supervisor: &mut SupervisorClient<tonic::transport::Channel>,
    old: u32,
) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let list = supervisor.list(ListRequest {}).await?.into_inner();
        if let Some(victim) = list.containers.iter().find(|c| c.alias == "victim") {
            let started = victim
                .supervised
                .as_ref()
                .is_some_and(|s| s.state == wire::ContainerState::Started as i32);
            if victim.pid != old && victim.pid != 0 && started {
                return Ok(victim.pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("the victim did not come back within 10 s")
}

/// The baseline's supervised process: answers every TCP connection with its pid.
pub fn serve_pid(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let answer = format!("{}\n", std::process::id());
    for stream in listener.incoming() {
        let mut stream = stream?;
        let _ = stream.write_all(answer.as_bytes());
    }
    Ok(())
}

fn ask_pid(addr: SocketAddr) -> Option<u32> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// s6-svscan with one service, killed with its process group on drop.
struct S6(Child);

impl Drop for S6 {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// SIGKILL → answering on its port, `restarts` times, under s6; `None` when s6 is not
/// installed.
pub async fn s6(restarts: usize) -> anyhow::Result<Option<Histogram<u64>>> {
    if !Path::new("/usr/bin/s6-svscan").is_file() {
        return Ok(None);
    }
    let scan = tempfile::tempdir()?;
    let service = scan.path().join("answer");
    std::fs::create_dir(&service)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let run = service.join("run");
    std::fs::write(
        &run,
        format!(
            "#!/bin/sh\nexec {} --serve-pid {addr}\n",
            sibling("reef-bench")?
        ),
    )?;
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let s6 = S6(Command::new("/usr/bin/s6-svscan")
        .arg(scan.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?);
    let mut latencies = report::histogram();
    let mut pid = wait_for_pid(addr, 0)?;
    // s6-supervise waits a second before restarting a service that ran for less than a
    // second: give each process that second, so the figure is its restart path, not
    // its throttle. That costs a second per restart, hence at most 50 of them.
    // (Debian's s6 2.11.3 still waited ~1 s per respawn on our VM, from a shell as
    // well; the figure is printed as measured.)
    for _ in 0..restarts.min(50) {
        std::thread::sleep(S6_THROTTLE);
        let started = Instant::now();
        kill(pid)?;
        pid = wait_for_pid(addr, pid)?;
        latencies.record(started.elapsed().as_micros() as u64)?;
    }
    // The service runs in a session of its own, out of s6-svscan's process group: stop
    // the supervisors first, then the service.
    drop(s6);
    let _ = kill(pid);
    Ok(Some(latencies))
}

/// Polls the port until a process other than `old` answers.
fn wait_for_pid(addr: SocketAddr, old: u32) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match ask_pid(addr) {
            Some(pid) if pid != old => return Ok(pid),
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    bail!("nothing answered on {addr} within 10 s")
}

/// The floor: a loop that waits for its child, spawns the next one at once and polls
/// its port, like the s6 figure but without a supervisor's bookkeeping.
fn bare_respawn(restarts: usize) -> anyhow::Result<Histogram<u64>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let program = sibling("reef-bench")?;
    let spawn = || {
        Command::new(&program)
            .arg("--serve-pid")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .spawn()
    };
    let mut child = spawn()?;
    let mut pid = wait_for_pid(addr, 0)?;
    let mut latencies = report::histogram();
    let outcome = (|| {
        for _ in 0..restarts {
            let started = Instant::now();
            kill(pid)?;
            child.wait()?;
            child = spawn()?;
            pid = wait_for_pid(addr, pid)?;
            latencies.record(started.elapsed().as_micros() as u64)?;
        }
        anyhow::Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    outcome.map(|()| latencies)
}

/// Runs reef and the baselines and prints the figures and their ratios.
pub async fn measure(node: &BenchNode, restarts: usize) -> anyhow::Result<()> {
    let reef = self::reef(node, restarts).await?;
    report::latency("restart_process", &reef);
    let floor = bare_respawn(restarts)?;
    report::latency("baseline_respawn_loop_restart", &floor);
    report::metric(
        "restart_process_p50_vs_respawn_loop_p50",
        reef.value_at_quantile(0.5) as f64 / floor.value_at_quantile(0.5).max(1) as f64,
        "ratio",
    );
    match s6(restarts).await? {
        Some(s6) => {
            report::latency("baseline_s6_restart", &s6);
            report::metric(
                "restart_process_p50_vs_s6_p50",
                reef.value_at_quantile(0.5) as f64 / s6.value_at_quantile(0.5).max(1) as f64,
                "ratio",
            );
        }
        None => println!("# s6 is not installed (apt-get install s6): no restart baseline"),
    }
    Ok(())
}
