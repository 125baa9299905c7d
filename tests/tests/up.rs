//! `reef up` when things go wrong around it: killed with SIGKILL, its node killed, a
//! second one on the same data dir, a second node that collides on a port.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use reef_tests::{
    ChildGuard, STARTUP, binary, container_processes, process_alive, reef_at, signal_pid,
    stdout_lines, unused_port, wait_for_line,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A project of one echo container, run by the `reef` executable itself (`reef demo`).
fn echo_project(dir: &Path) -> std::path::PathBuf {
    let project = dir.join("project.toml");
    std::fs::write(
        &project,
        "[project]\nname = 'one'\n\n[[container]]\nalias = 'echo'\ncommand = ['reef', 'demo', 'echo']\n",
    )
    .unwrap();
    project
}

/// `reef up PROJECT` on fixed ports (so that a second run finds the same addresses, as
/// a user's second `reef up` does) and `data`.
struct Up {
    process: ChildGuard,
    lines: mpsc::Receiver<String>,
}

fn up_command(project: &Path, data: &Path, grpc: SocketAddr) -> Command {
    let mut command = Command::new(binary("reef"));
    command
        .arg("up")
        .arg(project)
        .args(["--listen", &grpc.to_string()])
        .args(["--health-listen", "127.0.0.1:0"])
        .args(["--dashboard-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .env("REEF_LOG", "warn");
    command
}

impl Up {
    fn start(project: &Path, data: &Path, grpc: SocketAddr) -> Self {
        let child = up_command(project, data, grpc)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut process = ChildGuard(child);
        let lines = stdout_lines(&mut process.0);
        Self { process, lines }
    }

    /// Waits for the summary and returns the pid `reef up` printed for `echo`.
    fn wait_running(&self) -> u32 {
        wait_for_line(&self.lines, "reef up: project", STARTUP);
        let containers = wait_for_line(&self.lines, "  containers ", STARTUP);
        containers
            .split("echo (pid ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no echo pid in {containers:?}"))
    }
}

/// The node's pid, from the lock file it holds in its data dir.
fn node_pid(data: &Path) -> u32 {
    let text = std::fs::read_to_string(data.join("reefd.pid")).expect("the node's pid file");
    text.trim().parse().expect("a pid")
}

fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + STARTUP;
    while process_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where a test's `reef up` runs: a project of one echo container, a data dir, and a
/// gRPC address kept for the second run.
struct Site {
    _dir: tempfile::TempDir,
    project: std::path::PathBuf,
    data: std::path::PathBuf,
    grpc: SocketAddr,
    ca: std::path::PathBuf,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = echo_project(dir.path());
        let data = dir.path().join("data");
        let ca = data.join("tls/ca.pem");
        Self {
            _dir: dir,
            project,
            data,
            grpc: free_addr(),
            ca,
        }
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

#[test]
fn a_killed_reef_up_takes_its_node_and_containers_with_it_and_the_next_one_starts_clean() {
    let site = Site::new();
    let (project, data, grpc, ca) = (&site.project, &site.data, site.grpc, &site.ca);

    let mut first = Up::start(project, data, grpc);
    let echo = first.wait_running();
    let node = node_pid(data);

    // A second `reef up` on the same data dir says so at once, in one line naming the
    // node's pid, instead of failing on a port.
    let second = up_command(project, data, free_addr()).output().unwrap();
    let stderr = text(&second.stderr);
    assert!(!second.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains(&format!("pid {node}")),
        "{stderr}"
    );
    // So does a bare node on it.
    let bare = Command::new(binary("reefd"))
        .args(["--listen", "127.0.0.1:0", "--no-health", "--no-dashboard"])
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let stderr = text(&bare.stderr);
    assert!(!bare.status.success());
    assert!(stderr.contains(&format!("pid {node}")), "{stderr}");

    first.process.signal(Signal::SIGKILL);
    let _ = first.process.0.wait();
    wait_gone(node, "the node of a killed reef up");
    wait_gone(echo, "a container of a killed reef up");

    let mut again = Up::start(project, data, grpc);
    again.wait_running();
    let out = reef_at(&grpc.to_string(), ca, &["request", "echo", "hello"]);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    let processes = container_processes(grpc);
    assert_eq!(
        processes.len(),
        1,
        "exactly one process for echo: {processes:?}"
    );
    let echo_again = processes[0];
    assert_ne!(echo_again, echo);
    let status = again.process.terminate(STARTUP).expect("reef up stops");
    assert!(status.success(), "{status}");
    wait_gone(echo_again, "a container after reef up stopped");
}

#[test]
fn after_its_node_is_killed_the_next_reef_up_adopts_the_running_containers() {
    let site = Site::new();
    let (project, data, grpc, ca) = (&site.project, &site.data, site.grpc, &site.ca);

    let mut first = Up::start(project, data, grpc);
    let echo = first.wait_running();
    signal_pid(node_pid(data), Signal::SIGKILL);
    let status = first.process.0.wait().unwrap();
    assert!(
        !status.success(),
        "reef up reports its node's death: {status}"
    );
    assert!(process_alive(echo), "containers outlive a killed node");

    let mut again = Up::start(project, data, grpc);
    let echo_again = again.wait_running();
    assert_eq!(
        echo_again, echo,
        "the running process is adopted, not doubled"
    );
    let out = reef_at(&grpc.to_string(), ca, &["request", "echo", "hello"]);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    assert_eq!(container_processes(grpc), vec![echo]);
    let status = again.process.terminate(STARTUP).expect("reef up stops");
    assert!(status.success(), "{status}");
    wait_gone(echo, "an adopted container after reef up stopped");
}

#[test]
fn a_port_in_use_is_one_line_naming_the_flag_that_moves_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for (flag, others) in [
        (
            "--dashboard-listen",
            ["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"],
        ),
        (
            "--health-listen",
            [
                "--listen",
                "127.0.0.1:0",
                "--dashboard-listen",
                "127.0.0.1:0",
            ],
        ),
        (
            "--listen",
            [
                "--health-listen",
                "127.0.0.1:0",
                "--dashboard-listen",
                "127.0.0.1:0",
            ],
        ),
    ] {
        let out = Command::new(binary("reefd"))
            .args(others)
            .args([flag, &taken_addr])
            .arg("--data-dir")
            .arg(dir.path().join(flag.trim_start_matches('-')))
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{flag}: {stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.contains(&taken_addr) && last.contains(&format!("with {flag}")),
            "{flag}: {stderr}"
        );
    }
}
