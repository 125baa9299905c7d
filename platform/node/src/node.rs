//! A node: the registry and router behind one TLS gRPC port, plus a plaintext health
//! port for Kubernetes probes.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use reef_access::{Access, PolicyError};
use reef_core::{DataDirError, DataDirLock};
use reef_proto::{
    channel_server::ChannelServer, files_server::FilesServer, state_server::StateServer,
    supervisor_server::SupervisorServer,
};
use reef_routing::Routing;
use reef_state::{
    Backend, Embedded, EmbeddedConfig, Etcd, EtcdConfig, Owners, StateError, StateOperations,
};
use reef_supervision::{Environment, Policy, Sandbox, Supervision, SupervisionConfig};
use reef_tls::PkiError;
use reef_tls::tls::{self, ContainerCredentials, NodeTls};
use tokio::time::Instant;
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::StreamExt as _;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::{
    ChannelService, FILE_CHUNK, FilesBackend, FilesService, Limits, NodeIdentity, NodeStats,
    Registry, StateService, SupervisorService,
    api::identity::{Anonymous, Authenticated, IdentityLayer, ParentNode},
    liveness::RegistryLiveness,
    metrics::Counters,
    probe::PingProbe,
    uplink::{self, JoinConfig, Uplink},
    upstream::Upstream,
};

/// Picks up a new identity written by `reef ca issue`, and a changed policy file, while
/// the node runs.
async fn watch_files(tls: Arc<NodeTls>, access: Arc<Access>) {
    let mut tick = tokio::time::interval(tls::ROTATION_CHECK);
    loop {
        tick.tick().await;
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!("new TLS identity in force (reef ca issue)"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "the new TLS identity cannot be used yet"),
        }
        match access.reload_if_changed() {
            Ok(true) => tracing::info!("new policies in force"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "the policies in force stay: the file changed but cannot be used")
            }
        }
    }
}

/// Checks links to other nodes for envelopes that waited out the partition tolerance.
async fn expire_link_holds(registry: Arc<Registry>, tolerance: Duration) {
    let mut tick = tokio::time::interval(
        (tolerance / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    );
    loop {
        tick.tick().await;
        registry.expire_link_holds(tolerance);
    }
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// The TLS gRPC address (port 0 = any free port).
    pub listen: SocketAddr,
    /// The plaintext health address, if any.
    pub health_listen: Option<SocketAddr>,
    /// The plaintext Prometheus address (`GET /metrics`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the node's containers export traces (the node's own export is set up by
    /// [`reef_telemetry::init`]).
    pub trace_export: reef_telemetry::Export,
    /// Where certificates and state live.
    pub data_dir: PathBuf,
    /// Serve plaintext gRPC instead of TLS. Only for explicit `--insecure`.
    pub insecure: bool,
    /// Let callers without a client certificate past the door (`--allow-anonymous`, for
    /// development); they then have what the policies give `anonymous`. Implied by
    /// `insecure`, where no caller has a certificate.
    pub allow_anonymous: bool,
    /// Extra DNS names or IPs the server certificate must cover.
    pub tls_names: Vec<String>,
    /// Sizes, queues and timeouts.
    pub limits: Limits,
    /// How long to wait for streams to end after a shutdown signal.
    pub drain_timeout: Duration,
    /// Strategy and restart intensity for the node's own children.
    pub root_policy: Policy,
    /// How long supervised containers get to stop when the node shuts down.
    pub stop_grace: Duration,
    /// Where `reef.v1.State` keeps its keys.
    pub state: StateBackend,
    /// The parent node to link to, if this node is a child.
    pub join: Option<JoinConfig>,
    /// The address other nodes reach this one at (`host:port`), told to the parent for
    /// the calls it forwards here; by default the listen address, unless that is
    /// unspecified (0.0.0.0).
    pub advertise: Option<String>,
    /// How long envelopes wait for a link to another node that is down before they
    /// become dead letters.
    pub partition_tolerance: Duration,
    /// The policy file (`None`: the built-in policy, `reef_access::DEFAULT_POLICY`; on a
    /// node that lets anonymous callers in, every caller may do everything but
    /// impersonate).
    pub policy: Option<PathBuf>,
    /// Where `reef.v1.Files` keeps files (`None`: `DATA/files`).
    pub files: Option<FilesBackend>,
    /// The largest file `reef.v1.Files` accepts, in bytes.
    pub files_max_bytes: u64,
    /// The executable that confines process containers (reefd or reef itself, see
    /// [`reef_sandbox`]); `None`: they run unconfined (`--unconfined-containers`).
    pub sandbox_launcher: Option<PathBuf>,
    /// Who process containers run as (`--container-user`); `None`: the node's user.
    pub container_user: Option<reef_sandbox::RunAs>,
    /// What the sandbox hides besides what the node knows to be its own
    /// (`--hide-from-containers`).
    pub hidden_from_containers: Vec<PathBuf>,
}

/// The store behind `reef.v1.State`.
#[derive(Debug, Clone)]
pub enum StateBackend {
    /// A redb file, `DATA/state.redb`, keeping this many revisions of history.
    Embedded {
        /// Revisions of history kept for watches that resume.
        history: u64,
    },
    /// An etcd cluster.
    Etcd(EtcdConfig),
}

impl Default for StateBackend {
    fn default() -> Self {
        Self::Embedded { history: 100_000 }
    }
}

impl NodeConfig {
    /// Defaults for a node listening on `listen` with data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: "reef-node".to_owned(),
            listen,
            health_listen: None,
            metrics_listen: None,
            trace_export: Default::default(),
            data_dir: data_dir.into(),
            insecure: false,
            allow_anonymous: false,
            tls_names: Vec::new(),
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(5),
            root_policy: Policy::default(),
            stop_grace: Duration::from_secs(5),
            state: StateBackend::default(),
            join: None,
            advertise: None,
            partition_tolerance: Duration::from_secs(30),
            policy: None,
            files: None,
            files_max_bytes: 1 << 30,
            sandbox_launcher: None,
            container_user: None,
            hidden_from_containers: Vec::new(),
        }
    }

    /// How containers are confined: kept out of everything the node keeps secret or
    /// trusts (its data, the policy file, the files directory, etcd's credentials).
    fn sandbox(&self) -> Option<Sandbox> {
        let launcher = self.sandbox_launcher.clone()?;
        let mut hidden = vec![self.data_dir.clone()];
        hidden.extend(self.hidden_from_containers.iter().cloned());
        hidden.extend(self.policy.clone());
        if let Some(FilesBackend::Dir(dir)) = &self.files {
            hidden.push(dir.clone());
            hidden.push(PathBuf::from(format!("{}.partial", dir.display())));
        }
        if let StateBackend::Etcd(EtcdConfig { tls: Some(tls), .. }) = &self.state {
            hidden.extend(
                tls.identity
                    .iter()
                    .flat_map(|(cert, key)| [cert.clone(), key.clone()]),
            );
        }
        let hidden = hidden
            .into_iter()
            .map(|path| std::path::absolute(&path).unwrap_or(path))
            .collect();
        Some(Sandbox {
            launcher,
            hidden,
            run_as: self.container_user,
        })
    }

    /// What the node's door does with callers that present no certificate.
    pub fn anonymous(&self) -> Anonymous {
        match self.allow_anonymous || self.insecure {
            true => Anonymous::Allowed,
            false => Anonymous::Refused,
        }
    }

    /// The CA certificate clients must trust: `DATA/tls/ca.pem`.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Another node runs on the data dir, or it cannot be locked.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A listening address is taken or not permitted.
    #[error("cannot listen on {addr}: {source} (choose another address with {flag})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reefd flag that sets it.
        flag: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificates could not be created or loaded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Server reflection could not be set up from the descriptors.
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The durable registry or the log directory could not be read.
    #[error("supervision state in the data dir: {0}")]
    Supervision(std::io::Error),
    /// The state store could not be opened.
    #[error("state store: {0}")]
    State(#[from] StateError),
    /// The node's name cannot be used.
    #[error("--name: {0}")]
    Name(String),
    /// The file store cannot be opened.
    #[error("file store: {0}")]
    Files(std::io::Error),
    /// The policy file cannot be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A node whose ports are bound; [`Node::run`] serves them.
pub struct Node {
    config: NodeConfig,
    /// Held while the node lives: one node per data dir.
    _data_dir: DataDirLock,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    tls: Arc<NodeTls>,
    registry: Arc<Registry>,
    stats: Arc<NodeStats>,
    /// What the State service did, for `Supervisor.Info` and metrics.
    state_operations: Arc<StateOperations>,
    supervision: Supervision,
    routing: Arc<Routing>,
    state: Arc<dyn Backend>,
    access: Arc<Access>,
    files: FilesService,
    /// Random for each start (see `JoinRequest.session`).
    session: String,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.config)
            .field("listen", &self.local_addr())
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, flag, source })
}

impl Node {
    /// Binds the node's ports and loads (or creates) its certificates.
    pub async fn bind(config: NodeConfig) -> Result<Self, NodeError> {
        // First: a second node on this data dir is told so, not refused a port.
        let data_dir = DataDirLock::acquire(&config.data_dir)?;
        let listener = bind(config.listen, "--listen").await?;
        let health_listener = match config.health_listen {
            Some(addr) => Some(bind(addr, "--health-listen").await?),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr, "--metrics-listen").await?),
            None => None,
        };
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let ip = config.listen.ip();
        if !ip.is_unspecified() && !ip.is_loopback() {
            names.push(ip.to_string());
        }
        names.extend(config.tls_names.iter().cloned());
        reef_core::check_node_name(&config.name).map_err(NodeError::Name)?;
        if config.anonymous() == Anonymous::Allowed {
            tracing::warn!(
                insecure = config.insecure,
                "callers without a client certificate may use every RPC (--allow-anonymous or --insecure): for development only"
            );
        }
        let access = match &config.policy {
            // A development node, open to everyone: nothing to decide by.
            None if config.anonymous() == Anonymous::Allowed => Access::open(),
            None => Access::builtin(),
            // Policies name callers by their certificates: plaintext has none.
            Some(file) if config.insecure => {
                return Err(NodeError::Policy(PolicyError {
                    path: file.display().to_string(),
                    reason: "policies need TLS client certificates to name callers; they cannot be used with --insecure".to_owned(),
                }));
            }
            Some(file) => Access::from_file(file)?,
        };
        let tls = NodeTls::load(&config.data_dir.join("tls"), &config.name, &names)?;
        let stats = Arc::new(NodeStats::default());
        let registry = Registry::new(config.limits.clone(), stats.clone());
        registry.set_node_name(&config.name);
        if config.join.is_some() {
            // Held from the start: what is sent up before the first link is not lost.
            let link = uplink::parent_link_spec("");
            registry.set_parent(link.alias.clone());
            registry
                .join_link(link, "")
                .map_err(|e| NodeError::Supervision(std::io::Error::other(e.to_string())))?;
        }
        let local = listener.local_addr().unwrap_or(config.listen);
        // Children reach the node on loopback when it listens on every interface.
        let reachable = match local.ip().is_unspecified() {
            true => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port()),
            false => local,
        };
        let ca_path = std::path::absolute(config.ca_path()).unwrap_or_else(|_| config.ca_path());
        let supervision = Supervision::start(
            SupervisionConfig {
                data_dir: config.data_dir.clone(),
                environment: Environment {
                    node: reachable.to_string(),
                    ca: ca_path,
                    insecure: config.insecure,
                    trace_export: config.trace_export.clone(),
                    sandbox: config.sandbox(),
                },
                ca_pem: tls.pki().ca_pem().to_owned(),
                credentials: (!config.insecure).then(|| {
                    ContainerCredentials::new(
                        tls.clone(),
                        config.data_dir.join("tls").join("containers"),
                    )
                }),
                root_policy: config.root_policy.clone(),
                attach_timeout: config.limits.attach_timeout,
            },
            registry.clone(),
            Arc::new(PingProbe(tls.clone())),
        )
        .map_err(NodeError::Supervision)?;
        let state: Arc<dyn Backend> = match &config.state {
            StateBackend::Embedded { history } => Arc::new(Embedded::open(EmbeddedConfig {
                path: Some(config.data_dir.join("state.redb")),
                history: *history,
            })?),
            StateBackend::Etcd(etcd) => Arc::new(Etcd::connect(etcd.clone())?),
        };
        let files = FilesService::open(
            &config
                .files
                .clone()
                .unwrap_or_else(|| FilesBackend::Dir(config.data_dir.join("files"))),
            config.files_max_bytes,
            access.clone(),
        )
        .map_err(NodeError::Files)?;
        Ok(Self {
            config,
            _data_dir: data_dir,
            listener,
            health_listener,
            metrics_listener,
            tls,
            registry,
            stats,
            state_operations: Arc::default(),
            supervision,
            routing: Routing::new(),
            state,
            access,
            files,
            session: reef_core::new_lease(),
        })
    }

    /// The bound TLS gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The bound plaintext health address, if any.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The bound Prometheus address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The node's certificates (for serving HTTPS beside gRPC with the same identity).
    pub fn tls(&self) -> &Arc<NodeTls> {
        &self.tls
    }

    /// The registry, for embedding a node in-process.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Groups and router rules, for embedding a node in-process.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    /// The supervisor, for embedding a node in-process.
    pub fn supervision(&self) -> &Supervision {
        &self.supervision
    }

    fn counters(&self) -> Counters {
        Counters {
            messaging: self.stats.clone(),
            state: self.state_operations.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, closes every attach
    /// stream with UNAVAILABLE and waits up to the drain timeout for streams to end.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let listen = self.local_addr();
        let counters = self.counters();
        let limits = &self.config.limits;
        let (health, health_service) = tonic_health::server::health_reporter();
        // A child node claims its children's aliases at its parent (crate::upstream).
        let upstream = self.config.join.is_some().then(Upstream::default);
        let supervisor = SupervisorServer::new(
            SupervisorService::new(
                self.registry.clone(),
                counters.clone(),
                self.tls.clone(),
                self.supervision.clone(),
                self.routing.clone(),
                NodeIdentity {
                    name: self.config.name.clone(),
                    listen,
                    started: Instant::now(),
                    session: self.session.clone(),
                    insecure: self.config.insecure,
                },
                self.access.clone(),
            )
            .with_upstream(upstream.clone()),
        )
        .max_decoding_message_size(1 << 20);
        let channel = ChannelServer::new(ChannelService::new(
            self.registry.clone(),
            self.stats.clone(),
            self.routing.clone(),
            self.access.clone(),
        ))
        .max_decoding_message_size(limits.max_frame_bytes)
        .max_encoding_message_size(limits.max_frame_bytes);
        let reaper = tokio::spawn(expire_link_holds(
            self.registry.clone(),
            self.config.partition_tolerance,
        ));
        let owners = Owners::new(
            Arc::new(RegistryLiveness(self.registry.clone())),
            self.state.clone(),
        );
        let sweeper = tokio::spawn(owners.clone().run());
        let state = StateServer::new(StateService::new(
            self.state.clone(),
            owners,
            self.access.clone(),
            self.state_operations.clone(),
        ))
        // A transaction's limit (1.25 MiB of keys and values) plus framing.
        .max_decoding_message_size(2 << 20)
        // A List page's limit (4 MiB of keys and values) plus framing.
        .max_encoding_message_size(6 << 20);
        let files = FilesServer::new(self.files.clone())
            // A chunk plus framing each way.
            .max_decoding_message_size(2 * FILE_CHUNK)
            .max_encoding_message_size(2 * FILE_CHUNK);
        // Reflection lists what this server answers, by name: the descriptor set also
        // holds reef.v1.Container, which each container serves on its own endpoint.
        let reflection = || {
            [
                reef_proto::supervisor_server::SERVICE_NAME,
                reef_proto::channel_server::SERVICE_NAME,
                reef_proto::state_server::SERVICE_NAME,
                reef_proto::files_server::SERVICE_NAME,
                tonic_health::pb::health_server::SERVICE_NAME,
                tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
                tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
            ]
            .into_iter()
            .fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(reef_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(name),
            )
        };
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_serving::<SupervisorServer<SupervisorService>>()
            .await;
        health.set_serving::<ChannelServer<ChannelService>>().await;
        health.set_serving::<StateServer<StateService>>().await;
        health.set_serving::<FilesServer<FilesService>>().await;

        // Learned by the uplink when the parent answers; until then no node acts for anyone.
        let parent = ParentNode::default();
        let mut server = Server::builder()
            // First, so that every route sees who is calling (`identity::caller`).
            .layer(IdentityLayer::new(
                self.config.anonymous(),
                parent.clone(),
                self.tls.clone(),
            ))
            // Only applies to listeners tonic binds itself: ours get TCP_NODELAY through
            // `TcpIncoming` below, or small writes wait for Nagle and the peer's delayed
            // ACK (40 ms) whenever a unary call shares the connection with a stream.
            .tcp_nodelay(true)
            // Room for many full frames in flight per attach stream, so a fast sender is
            // not held back by window updates.
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            // Unary calls get a bounded time to answer; streams are bounded by heartbeats.
            .timeout(Duration::from_secs(30))
            // Finds dead peers whose TCP connection never closed.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(1024));
        let router = server
            .add_service(health_service.clone())
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(supervisor)
            .add_service(channel)
            .add_service(state)
            .add_service(files);

        let (stop, stopped) = watch::channel(false);
        if let Some(join) = self.config.join.clone() {
            let uplink = Uplink {
                join,
                node: self.config.name.clone(),
                session: self.session.clone(),
                endpoint: self
                    .config
                    .advertise
                    .clone()
                    .or_else(|| (!listen.ip().is_unspecified()).then(|| listen.to_string())),
                tls: self.tls.clone(),
                registry: self.registry.clone(),
                stats: self.stats.clone(),
                routing: self.routing.clone(),
                access: self.access.clone(),
                parent,
                upstream: upstream.clone().unwrap_or_default(),
            };
            tokio::spawn(uplink.run(stopped.clone()));
        }
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let mut main = match self.config.insecure {
            true => tokio::spawn(router.serve_with_incoming_shutdown(
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                until_stopped(stopped.clone()),
            )),
            // TLS terminated here, with certificates that may change while serving.
            false => tokio::spawn(router.serve_with_incoming_shutdown(
                // Each connection's client identity is read once, here.
                tls::incoming(self.listener, self.tls.acceptor()?).map({
                    let tls = self.tls.clone();
                    move |stream| stream.map(|stream| Authenticated::new(stream, &tls))
                }),
                until_stopped(stopped.clone()),
            )),
        };
        let rotation = tokio::spawn(watch_files(self.tls.clone(), self.access.clone()));
        let health_task = self.health_listener.map(|listener| {
            tokio::spawn(
                Server::builder()
                    .add_service(health_service)
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        until_stopped(stopped.clone()),
                    ),
            )
        });
        let metrics_task = self.metrics_listener.map(|listener| {
            let served = crate::metrics::serve(
                listener,
                self.registry.clone(),
                counters,
                until_stopped(stopped.clone()),
            );
            tokio::spawn(async move {
                if let Err(error) = served.await {
                    tracing::warn!(%error, "the metrics endpoint stopped");
                }
            })
        });
        tracing::info!(%listen, tls = !self.config.insecure, "node serving");

        tokio::select! {
            _ = shutdown => {}
            result = &mut main => {
                return match result {
                    Ok(served) => served.map_err(NodeError::from),
                    Err(panic) => {
                        tracing::error!(%panic, "gRPC server task ended");
                        Ok(())
                    }
                };
            }
        }
        tracing::info!("shutting down: stopping containers, draining attach streams");
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.supervision.shutdown(self.config.stop_grace).await;
        let _ = stop.send(true);
        self.registry.close_all();
        let drained = tokio::time::timeout(self.config.drain_timeout, async {
            let _ = (&mut main).await;
            if let Some(health_task) = health_task {
                let _ = health_task.await;
            }
        })
        .await;
        sweeper.abort();
        reaper.abort();
        rotation.abort();
        if let Some(metrics_task) = metrics_task {
            metrics_task.abort();
        }
        if drained.is_err() {
            tracing::warn!(timeout = ?self.config.drain_timeout, "drain timed out; closing remaining connections");
            main.abort();
        }
        Ok(())
    }
}
