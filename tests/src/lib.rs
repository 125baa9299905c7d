//! Shared fixtures for reef's cross-process tests: real `reefd` processes on ephemeral
//! ports with their own data directories, demo containers as child processes, and
//! polling with a deadline instead of fixed sleeps.
//!
//! Binaries are taken from the cargo target directory the tests were built into, so
//! build them first (`scripts/test` does: `cargo build --release --bins`).

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

mod delay;
mod etcd;
mod gateway;
mod netns;
mod otlp;
mod raw;
mod s3;

pub use delay::DelayProxy;
pub use etcd::LocalEtcd;
pub use gateway::{Gateway, start_gateway, start_gateway_in};
pub use netns::NetLab;
pub use otlp::{CollectedSpan, Collector};
pub use raw::RawAttach;
use reef_proto::{
    ListRequest, container_client::ContainerClient, supervisor_client::SupervisorClient,
};
use reef_sdk::ConnectOptions;
pub use s3::LocalS3;
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long a fixture waits for a process to come up.
pub const STARTUP: Duration = Duration::from_secs(20);

/// The path of a workspace binary built alongside the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (scripts/test does `cargo build --release --bins`)",
        path.display()
    );
    path
}

/// The workspace root (for scripts, protos and the Python client).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `reef-demo ARGS…` as the process a container definition runs (quiet logs).
pub fn demo_process(args: &[&str]) -> Option<reef_proto::container_definition::Kind> {
    Some(reef_proto::container_definition::Kind::Process(
        reef_proto::ProcessSpec {
            command: binary("reef-demo").display().to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: [("REEF_LOG".to_owned(), "warn".to_owned())].into(),
            working_dir: String::new(),
            inherit_env: false,
        },
    ))
}

/// `Supervisor.Create` with default flags.
pub async fn create(
    supervisor: &mut SupervisorClient<Channel>,
    definition: reef_proto::ContainerDefinition,
) -> Result<reef_proto::CreateResponse, tonic::Status> {
    supervisor
        .create(reef_proto::CreateRequest {
            definition: Some(definition),
            flags: 0,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Creates a supervised container from `definition` with a minute's restart back-off,
/// and kills it twice (the first restart is immediate), so that it stays down, waiting
/// to restart, while the test looks: what is sent to it meanwhile is held.
pub async fn create_restarting(node: &TestNode, mut definition: reef_proto::ContainerDefinition) {
    let policy = definition.policy.get_or_insert_default();
    policy.backoff_initial_ms = 60_000;
    policy.backoff_max_ms = 60_000;
    let alias = definition.alias.clone();
    let mut supervisor = node.supervisor().await;
    let created = create(&mut supervisor, definition)
        .await
        .expect("create")
        .container
        .expect("the created container");
    node.wait_attached(&alias).await;
    signal_pid(created.pid, nix::sys::signal::Signal::SIGKILL);
    let second = wait_for_container(&supervisor, &alias, "restarted", |c| {
        c.attached && c.pid != created.pid
    })
    .await
    .pid;
    signal_pid(second, nix::sys::signal::Signal::SIGKILL);
    wait_for_container(&supervisor, &alias, "waiting to restart", |c| {
        !c.attached
            && c.supervised
                .as_ref()
                .is_some_and(|s| s.activity.starts_with("restarting in"))
    })
    .await;
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        signal_pid(self.0.id(), signal);
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `child`'s stdout on a thread and returns the lines as they come.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    lines_of(child.stdout.take().expect("stdout was piped"))
}

/// Reads `output` (a child's stdout or stderr) on a thread and returns the lines as
/// they come.
pub fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line starting with `prefix`, up to `timeout`.
pub fn wait_for_line(lines: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no line starting with {prefix:?} within {timeout:?}"),
        }
    }
}

/// The value of `key=` in a `k=v k=v` line.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// How long a browser step may take (Chromium starts slowly on a busy machine).
pub const BROWSER_STEP: Duration = Duration::from_secs(90);

/// A Playwright script from `tests/browser` run with Node.js: it prints a line per
/// step and waits for lines on its stdin where the test acts in between.
pub struct BrowserScript {
    lines: mpsc::Receiver<String>,
    stdin: std::process::ChildStdin,
    _process: ChildGuard,
}

impl BrowserScript {
    /// Runs `tests/browser/SCRIPT ARGS…`; panics naming what is missing when
    /// `scripts/test` did not install playwright-core.
    pub fn start(script: &str, args: &[&std::ffi::OsStr]) -> Self {
        let browser = workspace_root().join("tests/browser");
        assert!(
            browser.join("node_modules/playwright-core").is_dir(),
            "playwright-core is not installed in {}: run scripts/test, which installs it",
            browser.display()
        );
        let mut process = Command::new("node")
            .arg(browser.join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (Node.js is on the machine)");
        let lines = stdout_lines(&mut process);
        let stdin = process.stdin.take().expect("a piped stdin");
        Self {
            lines,
            stdin,
            _process: ChildGuard(process),
        }
    }

    /// The next line the script prints (within [`BROWSER_STEP`]).
    pub fn next_line(&self) -> String {
        wait_for_line(&self.lines, "", BROWSER_STEP)
    }

    /// Tells the script the test did its part.
    pub fn tell(&mut self, line: &str) {
        use std::io::Write as _;
        writeln!(self.stdin, "{line}").expect("the browser script reads its stdin");
    }
}

/// A real `reefd` process on ephemeral ports, with its own data directory.
pub struct TestNode {
    /// The TLS gRPC address.
    pub addr: SocketAddr,
    /// The plaintext health address.
    pub health: SocketAddr,
    /// The Prometheus address, when started with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    /// The dashboard's HTTPS address, when started with `--dashboard-listen`.
    pub dashboard: Option<SocketAddr>,
    /// The CA clients trust.
    pub ca: PathBuf,
    process: ChildGuard,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    data: TempDir,
    /// The network namespace it runs in, if not the test's own.
    netns: Option<String>,
    /// Who reefd runs as, if not the test's user, and the executable it runs from.
    user: Option<NodeUser>,
}

/// An unprivileged user a node runs as: a copy of reefd it may execute (the build
/// directory may sit where it cannot), and the uid and gid.
struct NodeUser {
    uid: u32,
    gid: u32,
    binary: PathBuf,
    _dir: TempDir,
}

impl Drop for TestNode {
    /// Kills the node, then every container process it started (found by their
    /// environment, so also those of an earlier node on the same address). A graceful
    /// stop would wait for this test's own connections, which cannot close while the
    /// test's runtime is blocked in this drop.
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        for pid in container_processes(self.addr) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Sends `signal` to process `pid`, which must exist.
pub fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .unwrap_or_else(|e| panic!("cannot signal process {pid}: {e}"));
}

/// Live processes started for the node at `addr` (their environment says
/// `REEF_NODE=addr`), found in /proc.
pub fn container_processes(addr: SocketAddr) -> Vec<u32> {
    let needle = format!("REEF_NODE={addr}");
    all_pids()
        .filter(|pid| process_alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|var| var == needle.as_bytes())
            })
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name (state first), or `None` when
/// the process is gone or a zombie.
fn live_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<String> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (fields.first()? != "Z").then_some(fields)
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    live_stat(pid).is_some()
}

/// Live processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all_pids()
        .filter(|pid| {
            live_stat(*pid)
                .is_some_and(|fields| fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid))
        })
        .collect()
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

impl TestNode {
    /// Starts a node with default limits.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a node with extra reefd flags.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in(None, "127.0.0.1", extra)
    }

    /// Starts a node with extra reefd flags in network namespace `netns` (see
    /// [`NetLab`]), listening on `ip` (a free port).
    pub fn start_in(netns: Option<&str>, ip: &str, extra: &[&str]) -> Self {
        Self::start_prepared(netns, ip, extra, |_| {})
    }

    /// [`TestNode::start_in`], after `prepare` put what it needs in the data dir (a
    /// cluster identity, say).
    pub fn start_prepared(
        netns: Option<&str>,
        ip: &str,
        extra: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Self {
        Self::start_full(netns, None, ip, extra, &[], prepare)
    }

    /// Starts a node with extra reefd flags and environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full(None, None, "127.0.0.1", extra, env, |_| {})
    }

    /// [`TestNode::start_prepared`] on loopback, with environment variables too.
    pub fn start_prepared_with_env(
        extra: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Self {
        Self::start_full(None, None, "127.0.0.1", extra, env, prepare)
    }

    fn start_full(
        netns: Option<&str>,
        user: Option<NodeUser>,
        ip: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        prepare(data.path());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let netns = netns.map(str::to_owned);
        let (process, addr, health, metrics, dashboard) = spawn_reefd(
            netns.as_deref(),
            user.as_ref(),
            data.path(),
            &format!("{ip}:0"),
            "127.0.0.1:0",
            &extra,
            &env,
        );
        Self {
            addr,
            health,
            metrics,
            dashboard,
            ca: data.path().join("tls/ca.pem"),
            process,
            extra,
            env,
            data,
            netns,
            user,
        }
    }

    /// Starts a node as user `uid` (group `gid`), which owns its data directory: what
    /// an operator gets who does not run reefd as root.
    pub fn start_as_user(uid: u32, gid: u32, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let binary = dir.path().join("reefd");
        std::fs::copy(self::binary("reefd"), &binary).expect("copy reefd");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let user = NodeUser {
            uid,
            gid,
            binary,
            _dir: dir,
        };
        Self::start_full(None, Some(user), "127.0.0.1", extra, &[], |data| {
            std::os::unix::fs::chown(data, Some(uid), Some(gid)).expect("chown data dir");
        })
    }

    /// The executable reefd runs from: a copy of its own for [`Self::start_as_user`].
    pub fn executable(&self) -> PathBuf {
        self.user
            .as_ref()
            .map_or_else(|| binary("reefd"), |user| user.binary.clone())
    }

    /// The pid of reefd itself.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Starts reefd again on the same addresses and data dir, after the test stopped
    /// or killed it.
    pub fn restart(&mut self) {
        let (process, _, _, metrics, _) = spawn_reefd(
            self.netns.as_deref(),
            self.user.as_ref(),
            self.data.path(),
            &self.addr.to_string(),
            &self.health.to_string(),
            &self.extra,
            &self.env,
        );
        self.process = process;
        self.metrics = metrics;
    }

    /// Starts node `name` on loopback with an identity from the cluster CA in `cluster`
    /// (as `reef ca issue` leaves it), joined to `parent` if given, with extra flags.
    pub fn start_in_cluster(
        cluster: &Path,
        name: &str,
        parent: Option<&TestNode>,
        extra: &[&str],
    ) -> Self {
        let mut flags = vec!["--name".to_owned(), name.to_owned()];
        flags.extend(extra.iter().map(|flag| flag.to_string()));
        flags.extend(parent.map(TestNode::join_flags).unwrap_or_default());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Self::start_prepared(None, "127.0.0.1", &flags, |data| {
            reef_tls::issue_node_ca(cluster, name, &data.join("tls")).unwrap();
        })
    }

    /// The reefd flags that make a node join this one as its child.
    pub fn join_flags(&self) -> Vec<String> {
        vec![
            "--join".to_owned(),
            self.addr.to_string(),
            "--join-ca".to_owned(),
            self.ca.display().to_string(),
        ]
    }

    /// Runs `reef --addr NODE --ca CA ARGS…` (as the node's admin, whose certificate
    /// the CLI finds beside the CA, unless ARGS say otherwise).
    pub fn reef(&self, args: &[&str]) -> std::process::Output {
        reef_at(&self.addr.to_string(), &self.ca, args)
    }

    /// `reef create ALIAS -- reef-demo ARGS…`: a supervised demo process, once it is
    /// attached.
    pub async fn create_demo(&self, alias: &str, args: &[&str]) -> reef_proto::ContainerInfo {
        let demo = binary("reef-demo").display().to_string();
        let mut create = vec!["create", alias, "--", &demo];
        create.extend(args);
        let created = self.reef(&create);
        assert!(
            created.status.success(),
            "reef create {alias}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let supervisor = self.supervisor().await;
        wait_for_container(&supervisor, alias, "attached", |c| c.attached).await
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Options that reach this node over TLS as its administrator (the certificate
    /// the node keeps beside its CA, as the CLI finds it).
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            identity: ConnectOptions::admin_beside(&self.ca),
            ..self.options_as(None)
        }
    }

    /// Options that reach this node over TLS presenting `identity` (certificate and key
    /// files), or no certificate at all.
    pub fn options_as(&self, identity: Option<(PathBuf, PathBuf)>) -> ConnectOptions {
        ConnectOptions {
            node: self.addr.to_string(),
            ca: self.ca.clone(),
            identity,
            ..ConnectOptions::default()
        }
    }

    /// The node's process.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }

    /// A client for container `alias`'s own endpoint (`reef.v1.Container`), presenting
    /// `identity`: a caller that goes around the node.
    pub async fn endpoint_as(
        &self,
        alias: &str,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> ContainerClient<Channel> {
        let supervisor = self.supervisor().await;
        let info = wait_for_container(&supervisor, alias, "attached", |c| c.attached).await;
        let channel = self
            .options_as(identity)
            .connect_to_peer(&info.endpoint, &reef_tls::container_identity(alias))
            .await
            .expect("connect to the endpoint");
        ContainerClient::new(channel)
    }

    /// The node's control plane.
    pub async fn supervisor(&self) -> SupervisorClient<Channel> {
        SupervisorClient::new(self.options().connect().await.expect("connect to node"))
    }

    /// Polls the node until it has counted `expected` dead letters.
    pub async fn wait_for_dead_letters(&self, expected: u64) {
        let supervisor = self.supervisor().await;
        eventually(&format!("{expected} dead letters"), STARTUP, || {
            let mut supervisor = supervisor.clone();
            async move {
                let info = supervisor.info(reef_proto::InfoRequest {}).await.ok()?;
                (info.into_inner().dead_letters == expected).then_some(())
            }
        })
        .await;
    }

    /// A certificate naming container `alias` (`reef://container/ALIAS`) from the node's
    /// CA, as the node gives the processes it spawns: its certificate and key files.
    pub fn container_certificate(&self, alias: &str) -> (PathBuf, PathBuf) {
        self.certificate(&reef_tls::container_identity(alias))
    }

    /// A certificate naming `identity` (a `reef://KIND/NAME` URI) from the node's CA:
    /// its certificate and key files.
    pub fn certificate(&self, identity: &str) -> (PathBuf, PathBuf) {
        let tls = self.data_dir().join("tls");
        let certified = match tls.join("issuer.pem").is_file() {
            false => reef_tls::issue_client(&tls, identity),
            // A node of a cluster signs with its intermediate, and presents it too.
            true => {
                let issuer = tempfile::tempdir().unwrap();
                std::fs::copy(tls.join("issuer.pem"), issuer.path().join("ca.pem")).unwrap();
                std::fs::copy(tls.join("issuer-key.pem"), issuer.path().join("ca-key.pem"))
                    .unwrap();
                reef_tls::issue_client(issuer.path(), identity).map(|mut certified| {
                    let chain = std::fs::read_to_string(tls.join("issuer.pem")).unwrap();
                    certified.cert_pem.push_str(&chain);
                    certified
                })
            }
        }
        .expect("the node's CA issues a certificate");
        let dir = self.data_dir().join("test-certificates");
        std::fs::create_dir_all(&dir).unwrap();
        let stem = identity.trim_start_matches("reef://").replace('/', "~");
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        certified.write(&cert, &key).unwrap();
        (cert, key)
    }

    /// What a process started outside the node needs to reach it as container `alias`:
    /// `REEF_NODE`, `REEF_CA`, `REEF_ALIAS`, and the alias's certificate
    /// ([`TestNode::container_certificate`]) as `REEF_CERT` and `REEF_KEY`.
    pub fn container_env(&self, alias: &str) -> Vec<(&'static str, std::ffi::OsString)> {
        let (cert, key) = self.container_certificate(alias);
        vec![
            ("REEF_NODE", self.addr.to_string().into()),
            ("REEF_CA", self.ca.clone().into()),
            ("REEF_ALIAS", alias.into()),
            ("REEF_CERT", cert.into()),
            ("REEF_KEY", key.into()),
        ]
    }

    /// Starts `reef-demo ARGS…` as container `alias` and waits until it is attached.
    pub async fn spawn_demo(&self, alias: &str, args: &[&str]) -> ChildGuard {
        let child = Command::new(binary("reef-demo"))
            .args(args)
            .envs(self.container_env(alias))
            .env("REEF_LOG", "warn")
            .spawn()
            .expect("reef-demo starts");
        let guard = ChildGuard(child);
        self.wait_attached(alias).await;
        guard
    }

    /// Polls the registry until `alias` is attached.
    pub async fn wait_attached(&self, alias: &str) {
        let supervisor = self.supervisor().await;
        wait_for_container(&supervisor, alias, "attached", |c| c.attached).await;
    }
}

/// Every dead letter `supervisor`'s node keeps, and the total.
pub async fn dead_letters(
    supervisor: &SupervisorClient<Channel>,
) -> reef_proto::DeadLettersResponse {
    supervisor
        .clone()
        .dead_letters(reef_proto::DeadLettersRequest { limit: 0 })
        .await
        .expect("DeadLetters")
        .into_inner()
}

/// Polls `List` until container `alias` is listed and `check` holds for it; `what`
/// names the wait in the timeout message.
pub async fn wait_for_container(
    supervisor: &SupervisorClient<Channel>,
    alias: &str,
    what: &str,
    check: impl Fn(&reef_proto::ContainerInfo) -> bool,
) -> reef_proto::ContainerInfo {
    let check = &check;
    eventually(&format!("{alias} {what}"), STARTUP, || {
        let mut supervisor = supervisor.clone();
        async move {
            let list = supervisor.list(ListRequest {}).await.ok()?.into_inner();
            list.containers
                .into_iter()
                .find(|c| c.alias == alias && check(c))
        }
    })
    .await
}

fn spawn_reefd(
    netns: Option<&str>,
    user: Option<&NodeUser>,
    data: &Path,
    listen: &str,
    health: &str,
    extra: &[String],
    env: &[(String, String)],
) -> (
    ChildGuard,
    SocketAddr,
    SocketAddr,
    Option<SocketAddr>,
    Option<SocketAddr>,
) {
    let mut command = match netns {
        // `ip netns exec` execs reefd: the child's pid is reefd's.
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(binary("reefd"));
            command
        }
        None => match user {
            None => Command::new(binary("reefd")),
            Some(user) => {
                let mut command = Command::new(&user.binary);
                command.uid(user.uid).gid(user.gid);
                command
            }
        },
    };
    // The dashboard only where a test asks for it: its default port is fixed.
    if !extra.iter().any(|flag| flag == "--dashboard-listen") {
        command.arg("--no-dashboard");
    }
    let mut child = command
        .args(["--listen", listen, "--health-listen", health, "--data-dir"])
        .arg(data)
        .args(extra)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .env("REEF_LOG", node_log_filter())
        .stdout(Stdio::piped())
        .spawn()
        .expect("reefd starts");
    let lines = stdout_lines(&mut child);
    let process = ChildGuard(child);
    let ready = wait_for_line(&lines, "reefd ready", STARTUP);
    let parse = |key| {
        field(&ready, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("ready line {ready:?} lacks {key}"))
    };
    let metrics = field(&ready, "metrics").and_then(|v| v.parse().ok());
    let dashboard = field(&ready, "dashboard").and_then(|v| v.parse().ok());
    (process, parse("grpc"), parse("health"), metrics, dashboard)
}

/// reefd's log filter in tests: `warn`, or `REEF_TEST_LOG` when set, to look into a
/// failing test (`REEF_TEST_LOG=info,reef_messaging=debug`).
fn node_log_filter() -> String {
    std::env::var("REEF_TEST_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// Runs `reef --addr ADDRESS --ca CA ARGS…`.
pub fn reef_at(address: &str, ca: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary("reef"))
        .args(["--addr", address, "--ca"])
        .arg(ca)
        .args(args)
        .output()
        .expect("reef runs")
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A local port nobody listens on (bound, then released).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// A TLS connector that trusts the CA certificates in the PEM file `ca`.
pub fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_file_iter(ca).expect("the CA file reads") {
        roots
            .add(root.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A tool in the Python venv that `scripts/test` creates: `REEF_VENV`, else `.venv` in
/// the workspace.
pub fn venv_bin(tool: &str) -> PathBuf {
    let venv =
        std::env::var_os("REEF_VENV").map_or_else(|| workspace_root().join(".venv"), PathBuf::from);
    let path = venv.join("bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test, which creates the Python venv (grpcio, grpcurl, moto)",
        path.display()
    );
    path
}

/// An HTTP client. reqwest is built without a crypto provider of its own: this installs
/// rustls' ring provider first, which otherwise only some other TLS use in the process
/// would have done.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
