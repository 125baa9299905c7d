//! `reefd`, the reef node daemon: parses flags, binds the node, serves until SIGTERM or
//! Ctrl-C, drains, exits 0. Everything else lives in `reef-node`.
//!
//! A library with one entry point, [`main`], so that the `reefd` binary and `reef node`
//! (the CLI, which `reef up` runs) are the same program.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use reef_node::{JoinConfig, Limits, Node, NodeConfig, StateBackend};
use reef_state::{EtcdConfig, EtcdTls};
use reef_supervision::{Policy, Strategy};
use reef_telemetry as telemetry;

/// First thing in `main` of every executable that runs a node (`reefd`, `reef`): the
/// node starts its own executable to confine a container (see [`reef_sandbox`]).
pub use reef_sandbox::run_if_launcher;

/// The reef node daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TLS gRPC address (Supervisor, Channel, health, reflection). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7400", env = "REEF_LISTEN")]
    listen: SocketAddr,
    /// Plaintext address serving only grpc.health.v1 (for Kubernetes probes).
    #[arg(long, default_value = "127.0.0.1:7401", env = "REEF_HEALTH_LISTEN")]
    health_listen: SocketAddr,
    /// Do not open the plaintext health port.
    #[arg(long)]
    no_health: bool,
    /// Plaintext address serving Prometheus metrics on `GET /metrics` (off by default).
    #[arg(long, env = "REEF_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// HTTPS address of the web dashboard (the node's certificate; log in with the token
    /// in DATA/dashboard.token or the admin client certificate). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7403", env = "REEF_DASHBOARD_LISTEN")]
    dashboard_listen: SocketAddr,
    /// Do not serve the dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Let dashboard logins restart, stop, start and destroy containers (default:
    /// read-only).
    #[arg(long)]
    dashboard_writes: bool,
    /// Export traces over OTLP/gRPC to this collector (`http://HOST:4317`, or `https://`
    /// with --otlp-ca); the containers the node spawns export there too. Off by default.
    #[arg(long, env = "REEF_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The CA certificate (PEM) of an `https://` OTLP collector.
    #[arg(long, env = "REEF_OTLP_CA", requires = "otlp_endpoint")]
    otlp_ca: Option<PathBuf>,
    /// Where the node keeps its CA, certificates and state.
    #[arg(long, default_value = ".reef", env = "REEF_DATA_DIR")]
    data_dir: PathBuf,
    /// Serve plaintext gRPC instead of TLS (never in production). No caller can then
    /// present a certificate, so this implies --allow-anonymous.
    #[arg(long)]
    insecure: bool,
    /// Let callers without a client certificate use every RPC (for development only:
    /// never set by default). Without --policy every caller may then do everything;
    /// with one, anonymous callers have what it gives `anonymous`. Without this flag
    /// only health, reflection and a minimal Info answer them.
    #[arg(long)]
    allow_anonymous: bool,
    /// Run process containers without the sandbox that keeps them out of DATA and the
    /// policy file (for kernels without Landlock only). Logs a warning at start.
    #[arg(long)]
    unconfined_containers: bool,
    /// Hide this path from process containers too, as DATA and the policy file are
    /// (repeatable): a CA key mounted beside the node, say.
    #[arg(long = "hide-from-containers", value_name = "PATH")]
    hide_from_containers: Vec<PathBuf>,
    /// Run process containers as this user (a name or a uid; reefd must be root).
    /// Without it they run as reefd's user, inside the sandbox.
    #[arg(long, env = "REEF_CONTAINER_USER")]
    container_user: Option<String>,
    /// The node's name.
    #[arg(long, default_value = "reef-node")]
    name: String,
    /// Extra DNS name or IP for the server certificate (repeatable).
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Largest payload routed, in bytes.
    #[arg(long, default_value_t = Limits::default().max_payload_bytes)]
    max_payload_bytes: usize,
    /// Heartbeat interval on attach streams, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// Silence after which a container is detached, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_timeout_ms: u64,
    /// Timeout of requests that set none, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    default_request_timeout_ms: u64,
    /// Envelopes queued per container before senders wait.
    #[arg(long, default_value_t = Limits::default().mailbox_capacity)]
    mailbox_capacity: usize,
    /// Runtime threads (default: one per CPU). One thread avoids cross-thread wake-ups,
    /// which pays off when the node shares a small machine with its containers.
    #[arg(long)]
    threads: Option<usize>,
    /// Restarts allowed among the node's own children within --restart-period-ms; one
    /// more and the failing subtree is stopped and marked FAILED.
    #[arg(long, default_value_t = Policy::default().max_restarts)]
    max_restarts: u32,
    /// The window of --max-restarts, in milliseconds.
    #[arg(long, default_value_t = Policy::default().period.as_millis() as u64)]
    restart_period_ms: u64,
    /// How the node's own children restart together.
    #[arg(long, value_enum, default_value_t = RootStrategy::OneForOne)]
    strategy: RootStrategy,
    /// How long a process may stay unattached (after spawn, registration or a lost
    /// stream) before it counts as unresponsive, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    attach_timeout_ms: u64,
    /// Containers (task containers included) the node registers at most.
    #[arg(long, default_value_t = Limits::default().max_containers)]
    max_containers: usize,
    /// Time containers get to stop when the node shuts down, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    stop_grace_ms: u64,
    /// Keep `reef.v1.State` in etcd at these client URLs (`http://HOST:PORT`, or
    /// `https://` with --etcd-ca; comma-separated) instead of the embedded store in the
    /// data dir.
    #[arg(long, env = "REEF_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The CA certificate (PEM) that signed etcd's server certificates.
    #[arg(long, env = "REEF_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd clusters that require one; with --etcd-key.
    #[arg(long, env = "REEF_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "REEF_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// The etcd key prefix under which reef keeps its state.
    #[arg(long, default_value = "/reef/state")]
    etcd_root: String,
    /// Revisions of state history the embedded store keeps for watches that resume.
    #[arg(long, default_value_t = 100_000)]
    state_history: u64,
    /// Link to this parent node (`host:port`): this node's containers become reachable
    /// from the whole tree, and aliases it does not know are routed up.
    #[arg(long, env = "REEF_JOIN")]
    join: Option<String>,
    /// The CA certificate (PEM) of the parent node, e.g. its `DATA/tls/ca.pem`.
    #[arg(long, env = "REEF_JOIN_CA", requires = "join")]
    join_ca: Option<PathBuf>,
    /// The `host:port` other nodes reach this node at (default: --listen, unless it is
    /// 0.0.0.0); the server certificate must cover the host (see --tls-name).
    #[arg(long, env = "REEF_ADVERTISE")]
    advertise: Option<String>,
    /// How long envelopes for a node whose link is down are held before they become
    /// dead letters, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    partition_tolerance_ms: u64,
    /// A policy file (TOML, `[[policy]]` rules) in place of the built-in policy (`reef
    /// policy default` prints it): who may send to whom, manage which subtree, read or
    /// write which state namespace. Read again when it changes.
    #[arg(long, env = "REEF_POLICY")]
    policy: Option<PathBuf>,
    /// Where reef.v1.Files keeps files: a directory, `memory`, or an S3-compatible bucket,
    /// `s3://BUCKET[/ROOT][?endpoint=URL&region=NAME]` (credentials from AWS_* variables)
    /// (default DATA/files).
    #[arg(long, env = "REEF_FILES")]
    files: Option<String>,
    /// The largest file reef.v1.Files accepts, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    files_max_bytes: u64,
    /// Stop, as on SIGTERM, when standard input reaches its end. `reef up` starts the
    /// node with a pipe that only it holds, so the node and its containers end with
    /// `reef up`, however `reef up` ends (a SIGKILL included).
    #[arg(long)]
    exit_with_stdin: bool,
}

/// `--strategy` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RootStrategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

impl Args {
    fn trace_export(&self) -> telemetry::Export {
        telemetry::Export {
            endpoint: self.otlp_endpoint.clone(),
            // Absolute: the containers the node spawns run in other directories.
            ca: self
                .otlp_ca
                .as_ref()
                .map(|ca| std::path::absolute(ca).unwrap_or(ca.clone())),
        }
    }

    fn config(&self) -> Result<NodeConfig, String> {
        let mut config = NodeConfig::new(self.listen, &self.data_dir);
        config.name = self.name.clone();
        config.health_listen = (!self.no_health).then_some(self.health_listen);
        config.metrics_listen = self.metrics_listen;
        config.trace_export = self.trace_export();
        config.insecure = self.insecure;
        config.allow_anonymous = self.allow_anonymous;
        config.tls_names = self.tls_names.clone();
        // An envelope with a legal payload must fit in a frame, with room for its headers.
        let max_payload = Limits::default().max_frame_bytes / 2;
        if self.max_payload_bytes > max_payload {
            return Err(format!(
                "--max-payload-bytes {} is over {max_payload}, half the largest frame an attach stream carries",
                self.max_payload_bytes
            ));
        }
        config.limits = Limits {
            max_payload_bytes: self.max_payload_bytes,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            default_request_timeout: Duration::from_millis(self.default_request_timeout_ms),
            mailbox_capacity: self.mailbox_capacity.max(1),
            attach_timeout: Duration::from_millis(self.attach_timeout_ms),
            max_containers: self.max_containers,
            ..Limits::default()
        };
        config.root_policy = Policy {
            max_restarts: self.max_restarts,
            period: Duration::from_millis(self.restart_period_ms),
            strategy: match self.strategy {
                RootStrategy::OneForOne => Strategy::OneForOne,
                RootStrategy::OneForAll => Strategy::OneForAll,
                RootStrategy::RestForOne => Strategy::RestForOne,
            },
            ..Policy::default()
        };
        config.stop_grace = Duration::from_millis(self.stop_grace_ms);
        config.state = match self.etcd.is_empty() {
            false => StateBackend::Etcd(EtcdConfig {
                endpoints: self.etcd.clone(),
                root: self.etcd_root.clone(),
                tls: self.etcd_ca.clone().map(|ca| EtcdTls {
                    ca,
                    identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
                }),
            }),
            true => StateBackend::Embedded {
                history: self.state_history,
            },
        };
        config.advertise = self.advertise.clone();
        config.policy = self.policy.clone();
        config.files = self.files.as_deref().map(str::parse).transpose()?;
        config.files_max_bytes = self.files_max_bytes;
        self.sandbox(&mut config)?;
        config.partition_tolerance = Duration::from_millis(self.partition_tolerance_ms.max(1));
        if let Some(parent) = &self.join {
            let parent_ca_pem = match (&self.join_ca, self.insecure) {
                (Some(path), _) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("--join-ca {}: {e}", path.display()))?,
                ),
                (None, true) => None,
                (None, false) => {
                    return Err(
                        "--join needs --join-ca (the parent's CA certificate), or --insecure"
                            .to_owned(),
                    );
                }
            };
            config.join = Some(JoinConfig {
                parent: parent.clone(),
                parent_ca_pem,
                insecure: self.insecure,
            });
        }
        Ok(config)
    }
}

impl Args {
    /// Confines the node's process containers with its own executable as the launcher,
    /// unless told not to; refuses to start where the sandbox cannot be had.
    fn sandbox(&self, config: &mut NodeConfig) -> Result<(), String> {
        if self.unconfined_containers {
            if self.container_user.is_some() || !self.hide_from_containers.is_empty() {
                return Err(
                    "--container-user and --hide-from-containers need the sandbox: \
                     drop --unconfined-containers"
                        .into(),
                );
            }
            tracing::warn!(
                "--unconfined-containers: process containers can read and write everything \
                 reefd's user can, DATA's keys and the policy file included"
            );
            return Ok(());
        }
        if !reef_sandbox::landlock_available() {
            return Err(
                "this kernel does not enforce Landlock, which keeps containers out of DATA; \
                 start with --unconfined-containers to run them anyway"
                    .into(),
            );
        }
        if !reef_sandbox::signal_scoping_available() {
            tracing::warn!(
                "this kernel's Landlock cannot keep containers from signalling processes \
                 outside their sandbox (ABI 6, Linux 6.12): a container of reefd's user can \
                 signal reefd"
            );
        }
        config.hidden_from_containers = self.hide_from_containers.clone();
        // Not the path of the executable: a rebuild or an upgrade replaces that file
        // while the node runs, and its containers must still start. A forked child's
        // /proc/self/exe is the running executable, deleted or not.
        config.sandbox_launcher = Some(PathBuf::from("/proc/self/exe"));
        if let Some(user) = &self.container_user {
            let run_as =
                reef_sandbox::RunAs::lookup(user).map_err(|e| format!("--container-user: {e}"))?;
            let uid = reef_sandbox::effective_uid();
            if uid != 0 && uid != run_as.uid {
                return Err(format!(
                    "--container-user {user}: reefd runs as uid {uid}, not root, and cannot switch user"
                ));
            }
            // Its own user needs no switch (and could not drop its groups).
            config.container_user = (run_as.uid != uid).then_some(run_as);
        }
        Ok(())
    }
}

/// Runs the node daemon with command-line `args` (the first is the program's name, as
/// in `std::env::args_os`).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = Args::parse_from(args);
    let threads = args.threads;
    reef_telemetry::runtime::run_main("reefd", threads, serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let service = telemetry::Service {
        name: "reefd".to_owned(),
        instance: args.name.clone(),
    };
    let _telemetry = match telemetry::init(&service, "info", &args.trace_export()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("reefd: {error}");
            return ExitCode::from(2);
        }
    };
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("reefd: {error}");
            return ExitCode::from(2);
        }
    };
    let ca = config.ca_path();
    let node = match Node::bind(config).await {
        Ok(node) => node,
        Err(error) => {
            eprintln!("reefd: {error}");
            return ExitCode::FAILURE;
        }
    };
    let dashboard = match args.no_dashboard {
        true => None,
        false => match start_dashboard(&args, &node, &ca).await {
            Ok(dashboard) => Some(dashboard),
            Err(error) => {
                eprintln!("reefd: dashboard: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    // One line on stdout, readable by people and by `reef up` / tests (key=value).
    println!(
        "reefd ready grpc={} health={} metrics={} dashboard={} tls={} ca={}",
        node.local_addr(),
        node.health_addr()
            .map_or("off".to_owned(), |a| a.to_string()),
        node.metrics_addr()
            .map_or("off".to_owned(), |a| a.to_string()),
        dashboard
            .as_ref()
            .map_or("off".to_owned(), |(addr, _)| addr.to_string()),
        if args.insecure { "off" } else { "on" },
        ca.display()
    );
    // The dashboard goes first: its streams from the node would hold up the drain.
    let exit_with_stdin = args.exit_with_stdin;
    let shutdown = async move {
        shutdown_signal(exit_with_stdin).await;
        if let Some((_, dashboard)) = dashboard {
            dashboard.abort();
        }
    };
    match node.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reefd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Binds the dashboard and serves it beside the node, as a client of the node's own API
/// with its admin certificate.
async fn start_dashboard(
    args: &Args,
    node: &Node,
    ca: &std::path::Path,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind(args.dashboard_listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e} (choose another address with --dashboard-listen, or turn it off with --no-dashboard)",
                args.dashboard_listen
            )
        })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let token_path = reef_dashboard::token_path(&args.data_dir);
    let token = reef_dashboard::load_or_create_token(&token_path)
        .map_err(|e| format!("token {}: {e}", token_path.display()))?;
    let tls = match args.insecure {
        true => None,
        false => {
            let acceptor = node.tls().https_acceptor().map_err(|e| e.to_string())?;
            Some((acceptor, node.tls().clone()))
        }
    };
    // The node as its own clients reach it: loopback when it listens on every address.
    let mut grpc = node.local_addr();
    if grpc.ip().is_unspecified() {
        grpc.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let dashboard = reef_dashboard::Dashboard {
        node: reef_sdk::ConnectOptions {
            node: grpc.to_string(),
            ca: ca.to_owned(),
            insecure: args.insecure,
            identity: reef_sdk::ConnectOptions::admin_beside(ca),
            ..Default::default()
        },
        token,
        writes: args.dashboard_writes,
    };
    let served = tokio::spawn(reef_dashboard::serve(listener, tls, dashboard));
    Ok((addr, served))
}

/// SIGTERM, Ctrl-C, or (with `--exit-with-stdin`) the end of standard input.
async fn shutdown_signal(exit_with_stdin: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let stdin_closed = async {
        match exit_with_stdin {
            true => stdin_end().await,
            false => std::future::pending().await,
        }
    };
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = stdin_closed => tracing::info!("standard input closed: stopping"),
            }
        }
        Err(_) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = stdin_closed => tracing::info!("standard input closed: stopping"),
            }
        }
    }
}

/// Resolves when standard input reaches its end (or fails). Read on a thread of its
/// own rather than tokio's blocking pool: the runtime waits for its blocking tasks when
/// it shuts down, and this read may never end.
async fn stdin_end() {
    let (closed, wait) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("reefd-stdin".to_owned())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = wait.await;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch standard input; --exit-with-stdin is off");
            std::future::pending::<()>().await;
        }
    }
}
