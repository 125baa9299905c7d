//! `reef.v1.Supervisor`: the control plane (registration, listing, events).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use reef_access::{Access, Action, Principal};
use reef_core::{Alias, check_node_name, link_alias, millis, unix_ms};
use reef_proto::{
    self as wire, ContainerEventKind, LifecyclePhase, container_client::ContainerClient,
    supervisor_client::SupervisorClient, supervisor_server,
};
use reef_routing::Routing;
use reef_tls::certificate_names;
use reef_tls::tls::NodeTls;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    ContainerSnapshot, ContainerSpec, EventKind, NodeStats, Phase, Registry, RegistryEvent,
    error::ApiError,
    hosting, identity,
    link::{ChildNodes, NodeEndpoint},
    probe::{connect_endpoint, endpoint_host, ping_endpoint},
    push::PushTickets,
    routing_api,
    supervision::{Failure, State, Supervision},
    supervision_wire as convert,
};

/// How long a container may take to answer Container.Status for a caller.
const CONTAINER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a container may take to run a command for a caller (the SDKs give a
/// command handler 10 s).
const CONTAINER_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a call forwarded to another node may take (a Create waits for its start).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Log bytes sent first by `Logs` when the request does not say.
const DEFAULT_LOG_TAIL: u64 = 64 << 10;
/// How often a followed log is checked for new bytes.
const LOG_POLL: Duration = Duration::from_millis(100);
/// Largest log chunk per message.
const LOG_CHUNK: usize = 256 << 10;

/// Facts about the node that `Info` reports.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node's name.
    pub name: String,
    /// Its TLS gRPC address.
    pub listen: SocketAddr,
    /// When it started.
    pub started: Instant,
    /// Random for each start: what linked nodes compare to notice a restart.
    pub session: String,
    /// Serving plaintext: no certificates to check.
    pub insecure: bool,
}

/// Serves `reef.v1.Supervisor`.
#[derive(Debug, Clone)]
pub struct SupervisorService {
    registry: Arc<Registry>,
    stats: Arc<NodeStats>,
    tls: Arc<NodeTls>,
    supervision: Supervision,
    routing: Arc<Routing>,
    push_tickets: Arc<PushTickets>,
    node: NodeIdentity,
    children: Arc<ChildNodes>,
    access: Arc<Access>,
}

impl SupervisorService {
    /// A supervisor over `registry`, issuing endpoint certificates from `tls`, its
    /// callers checked against `access`.
    pub fn new(
        registry: Arc<Registry>,
        stats: Arc<NodeStats>,
        tls: Arc<NodeTls>,
        supervision: Supervision,
        routing: Arc<Routing>,
        node: NodeIdentity,
        access: Arc<Access>,
    ) -> Self {
        Self {
            registry,
            stats,
            tls,
            supervision,
            routing,
            push_tickets: Arc::default(),
            node,
            children: Arc::default(),
            access,
        }
    }

    /// A client for child node `child` at `hop`, presenting this node's certificate.
    async fn child_node(
        &self,
        child: &str,
        hop: &NodeEndpoint,
    ) -> Result<SupervisorClient<tonic::transport::Channel>, Status> {
        let identity = Some(self.tls.pki().server().clone());
        let channel = connect_endpoint(&hop.endpoint, &hop.ca_pem, identity, FORWARD_TIMEOUT)
            .await
            .map_err(|status| Status::unavailable(format!("node {child}: {}", status.message())))?;
        Ok(SupervisorClient::new(channel))
    }

    /// A client for `alias`'s own endpoint (reef.v1.Container), for `caller`, who must
    /// be allowed to send to it: asking a container something is as much as messaging
    /// it. The node presents its own certificate, as to a child node.
    async fn container_endpoint(
        &self,
        caller: &Principal,
        alias: &str,
        timeout: Duration,
    ) -> Result<ContainerClient<tonic::transport::Channel>, Status> {
        let alias = parse_alias(alias)?;
        self.access
            .check(caller, Action::Send, alias.as_str(), &[])
            .map_err(ApiError::from)?;
        let container = self
            .registry
            .get(alias.as_str())
            .ok_or_else(|| Status::not_found(format!("no container is registered as {alias:?}")))?;
        if let Some(task) = &container.task {
            return Err(Status::failed_precondition(format!(
                "{alias} is a task container in {}: its host's endpoint speaks for the host",
                task.host
            )));
        }
        let endpoint = match (container.spec.endpoint, container.attached) {
            (Some(endpoint), true) => endpoint,
            (None, _) => {
                return Err(Status::failed_precondition(format!(
                    "{alias} registered no endpoint to ask"
                )));
            }
            (Some(_), false) => {
                return Err(Status::failed_precondition(format!(
                    "{alias} is not attached (starting, restarting or stopped)"
                )));
            }
        };
        let identity = Some(self.tls.pki().server().clone());
        let channel =
            connect_endpoint(&endpoint, self.tls.pki().ca_pem(), identity, timeout).await?;
        Ok(ContainerClient::new(channel))
    }

    /// A client for the child node below which container `alias` lives, if it lives
    /// below this node: lifecycle calls and logs for it go there, hop by hop.
    async fn node_below(
        &self,
        alias: &str,
    ) -> Result<Option<SupervisorClient<tonic::transport::Channel>>, Status> {
        match self.children.below(&self.registry, alias) {
            None => Ok(None),
            Some((child, hop)) => self.child_node(&child, &hop).await.map(Some),
        }
    }

    /// Sends `request` for another node down the tree, towards that node.
    async fn forward_create(
        &self,
        caller: &Principal,
        request: wire::CreateRequest,
    ) -> Result<wire::CreateResponse, Status> {
        let (child, hop) = self
            .children
            .next_hop(&self.registry, &request.node)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no node named {:?} is linked below node {:?}",
                    request.node, self.node.name
                ))
            })?;
        let mut node = self.child_node(&child, &hop).await?;
        Ok(node
            .create(on_behalf_of(caller, request)?)
            .await?
            .into_inner())
    }

    /// Refuses a caller that does not hold `alias`'s lease.
    fn authenticate(&self, alias: &str, lease: &str) -> Result<(), Status> {
        match self.registry.holds_lease(alias, lease) {
            true => Ok(()),
            false => Err(Status::permission_denied(format!(
                "{alias:?} is not registered with that lease"
            ))),
        }
    }

    /// Joins a created container to the groups its definition names.
    fn join_groups(&self, alias: &str, groups: &[String]) -> Result<(), Status> {
        for group in groups {
            routing_api::join_group(
                &self.routing,
                &self.registry,
                wire::JoinGroupRequest {
                    group: group.clone(),
                    aliases: vec![alias.to_owned()],
                },
            )?;
        }
        Ok(())
    }

    async fn create_one(
        &self,
        caller: &Principal,
        request: wire::CreateRequest,
    ) -> Result<wire::CreateResponse, Status> {
        if !request.node.is_empty() && request.node != self.node.name {
            return self.forward_create(caller, request).await;
        }
        let raw = request
            .definition
            .ok_or_else(|| Status::invalid_argument("CreateRequest.definition is missing"))?;
        let parent = (!raw.parent.is_empty()).then_some(raw.parent.as_str());
        self.check_subtree(caller, Action::Create, &raw.alias, parent)?;
        let groups = raw.groups.clone();
        let alias = raw.alias.clone();
        let policy = raw.overflow;
        let created = self.create_container(raw, request.flags).await?;
        self.join_groups(&alias, &groups)?;
        if policy != 0 {
            routing_api::set_overflow(&self.routing, wire::SetOverflowRequest { alias, policy })?;
        }
        Ok(created)
    }

    async fn create_container(
        &self,
        raw: wire::ContainerDefinition,
        flags: i32,
    ) -> Result<wire::CreateResponse, Status> {
        if let Some(task) = convert::task_definition(&raw)? {
            let (container, created) =
                hosting::start_task(&self.registry, self.tls.pki().ca_pem(), task).await?;
            return Ok(wire::CreateResponse {
                container: Some(container_info(container)),
                created,
            });
        }
        let definition = convert::definition(raw)?;
        let flag = convert::create_flag(flags)?;
        let (container, created) = self
            .supervision
            .create(definition, flag)
            .await
            .map_err(ApiError::from)?;
        Ok(wire::CreateResponse {
            container: Some(container_info(container)),
            created,
        })
    }

    async fn destroy_one(
        &self,
        caller: &Principal,
        request: wire::DestroyRequest,
    ) -> Result<wire::DestroyResponse, Status> {
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return Ok(node
                .destroy(on_behalf_of(caller, request)?)
                .await?
                .into_inner());
        }
        self.check_subtree(caller, Action::Destroy, alias.as_str(), None)?;
        let mode = convert::stop_mode(request.flags)?;
        if let Some(task) = self.registry.get(alias.as_str()).and_then(|c| c.task) {
            hosting::stop_task(&self.registry, self.tls.pki().ca_pem(), &alias, &task.host).await?;
            self.routing.forget_member(&alias);
            return Ok(wire::DestroyResponse {
                destroyed: vec![alias.to_string()],
            });
        }
        let destroyed = self
            .supervision
            .destroy(alias, mode)
            .await
            .map_err(ApiError::from)?;
        for alias in &destroyed {
            self.routing.forget_member(alias);
        }
        Ok(wire::DestroyResponse {
            destroyed: destroyed.into_iter().map(String::from).collect(),
        })
    }

    /// Start, Stop and Restart act on processes; a task's host restarts it.
    fn refuse_task(&self, alias: &Alias, what: &str) -> Result<(), Status> {
        match self.registry.get(alias.as_str()).and_then(|c| c.task) {
            Some(task) => Err(Status::failed_precondition(format!(
                "{alias} is a task container in {}: it cannot be {what} on its own (its host restarts it after a panic); destroy and create it instead",
                task.host
            ))),
            None => Ok(()),
        }
    }

    /// Checks `caller` doing `action` to `alias`, which rules on its supervision
    /// ancestors cover too (from `parent` on, for one not registered yet).
    fn check_subtree(
        &self,
        caller: &Principal,
        action: Action,
        alias: &str,
        parent: Option<&str>,
    ) -> Result<(), ApiError> {
        Ok(self
            .access
            .check_subtree(&*self.registry, caller, action, alias, parent)?)
    }

    /// Checks `caller` changing routing (`what`: `group:NAME`, `rule:ID`, `firewall`, an
    /// alias's overflow policy).
    fn check_configure<T>(&self, request: &Request<T>, what: &str) -> Result<(), ApiError> {
        identity::check_caller(&self.access, request, Action::Configure, what)
    }

    async fn start_one(
        &self,
        caller: &Principal,
        request: wire::StartRequest,
    ) -> Result<wire::StartResponse, Status> {
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return Ok(node
                .start(on_behalf_of(caller, request)?)
                .await?
                .into_inner());
        }
        self.check_subtree(caller, Action::Start, alias.as_str(), None)?;
        self.refuse_task(&alias, "started")?;
        let container = self
            .supervision
            .start_container(alias)
            .await
            .map_err(ApiError::from)?;
        Ok(wire::StartResponse {
            container: Some(container_info(container)),
        })
    }

    async fn stop_one(
        &self,
        caller: &Principal,
        request: wire::StopRequest,
    ) -> Result<wire::StopResponse, Status> {
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return Ok(node
                .stop(on_behalf_of(caller, request)?)
                .await?
                .into_inner());
        }
        self.check_subtree(caller, Action::Stop, alias.as_str(), None)?;
        self.refuse_task(&alias, "stopped")?;
        let mode = convert::stop_mode(request.flags)?;
        let container = self
            .supervision
            .stop(alias, mode)
            .await
            .map_err(ApiError::from)?;
        Ok(wire::StopResponse {
            container: Some(container_info(container)),
        })
    }
}

/// One operation's outcome, as Batch and Host report it.
fn batch_result(alias: String, outcome: Result<(), Status>) -> wire::BatchResult {
    let (code, message) = match outcome {
        Ok(()) => (0, String::new()),
        Err(status) => (status.code() as i32, status.message().to_owned()),
    };
    wire::BatchResult {
        alias,
        code,
        message,
    }
}

/// `message` as a call a node forwards on behalf of `caller`, whose rights the node that
/// acts checks (see `reef_proto::ON_BEHALF_OF_METADATA`).
fn on_behalf_of<T>(caller: &Principal, message: T) -> Result<Request<T>, Status> {
    let acting_for = tonic::metadata::MetadataValue::try_from(caller.to_string())
        .map_err(|_| Status::invalid_argument(format!("{caller} cannot go in metadata")))?;
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(reef_proto::ON_BEHALF_OF_METADATA, acting_for);
    Ok(request)
}

fn parse_alias(raw: &str) -> Result<Alias, Status> {
    Alias::parse(raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<wire::LogChunk, Status>> + Send>>;

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::ContainerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl supervisor_server::Supervisor for SupervisorService {
    async fn register(
        &self,
        request: Request<wire::RegisterRequest>,
    ) -> Result<Response<wire::RegisterResponse>, Status> {
        let caller = identity::caller(&request);
        let request = request.into_inner();
        let token = (!request.token.is_empty()).then(|| request.token.clone());
        let spec = container_spec(request)?;
        reef_access::check_claim(&caller, spec.alias.as_str()).map_err(ApiError::from)?;
        // A supervised container's alias is claimed with its token (checked by the
        // registry); any other registration creates a container.
        if self
            .registry
            .get(spec.alias.as_str())
            .is_none_or(|existing| existing.supervised.is_none())
        {
            let parent = spec.parent.as_ref().map(|p| p.as_str());
            self.check_subtree(&caller, Action::Create, spec.alias.as_str(), parent)?;
        }
        let certified = match &spec.endpoint {
            Some(endpoint) => {
                let host = endpoint_host(endpoint)?;
                Some(
                    self.tls
                        .pki()
                        .issue(
                            spec.alias.as_str(),
                            &[host],
                            &reef_tls::container_identity(spec.alias.as_str()),
                        )
                        .map_err(ApiError::from)?,
                )
            }
            None => None,
        };
        let alias = spec.alias.clone();
        let lease = self
            .registry
            .register(spec, token.as_deref())
            .map_err(ApiError::from)?;
        tracing::info!(%alias, "registered");
        let limits = self.registry.limits();
        let (endpoint_cert_pem, endpoint_key_pem) =
            certified.map_or_else(Default::default, |c| (c.cert_pem, c.key_pem));
        Ok(Response::new(wire::RegisterResponse {
            lease,
            heartbeat_interval_ms: millis(limits.heartbeat_interval),
            heartbeat_timeout_ms: millis(limits.heartbeat_timeout),
            max_payload_bytes: limits.max_payload_bytes as u32,
            node: self.node.name.clone(),
            endpoint_cert_pem,
            endpoint_key_pem,
            max_frame_bytes: limits.max_frame_bytes as u32,
            attach_timeout_ms: millis(limits.attach_timeout),
        }))
    }

    async fn join(
        &self,
        request: Request<wire::JoinRequest>,
    ) -> Result<Response<wire::JoinResponse>, Status> {
        let leaf = identity::peer_leaf(&request);
        let request = request.into_inner();
        check_node_name(&request.node).map_err(Status::invalid_argument)?;
        // Only a node holding a certificate for its name may link under it (the TLS
        // handshake already checked that the cluster's CA signed it).
        let identity = reef_tls::node_identity(&request.node);
        if !self.node.insecure && !leaf.is_some_and(|leaf| certificate_names(&leaf, &identity)) {
            return Err(Status::permission_denied(format!(
                "joining as node {:?} needs a client certificate naming {identity} from this cluster's CA (reef ca issue)",
                request.node
            )));
        }
        if request.node == self.node.name {
            return Err(Status::invalid_argument(format!(
                "node {:?} cannot join a node of the same name",
                request.node
            )));
        }
        if request.session.is_empty() || request.session.len() > 64 {
            return Err(Status::invalid_argument(
                "JoinRequest.session must be 1-64 characters, new for each start of the node",
            ));
        }
        let endpoint = match request.endpoint.is_empty() {
            true => None,
            false => {
                endpoint_host(&request.endpoint)?;
                Some(request.endpoint.clone())
            }
        };
        let alias = Alias::parse(&link_alias(&request.node))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let spec = ContainerSpec {
            alias: alias.clone(),
            name: "node".to_owned(),
            parent: None,
            endpoint: endpoint.clone(),
            pid: None,
            labels: [("reef.node".to_owned(), request.node.clone())].into(),
        };
        let lease = self
            .registry
            .join_link(spec, &request.session)
            .map_err(ApiError::from)?;
        if let Some(endpoint) = endpoint {
            self.children.record(
                &request.node,
                NodeEndpoint {
                    endpoint,
                    ca_pem: request.ca_pem,
                },
            );
        }
        tracing::info!(node = %request.node, "a child node joined");
        Ok(Response::new(wire::JoinResponse {
            alias: alias.to_string(),
            lease,
            node: self.node.name.clone(),
            session: self.node.session.clone(),
        }))
    }

    async fn deregister(
        &self,
        request: Request<wire::DeregisterRequest>,
    ) -> Result<Response<wire::DeregisterResponse>, Status> {
        reef_access::check_claim(&identity::caller(&request), &request.get_ref().alias)
            .map_err(ApiError::from)?;
        let request = request.into_inner();
        self.registry
            .deregister(&request.alias, &request.lease)
            .map_err(ApiError::from)?;
        Ok(Response::new(wire::DeregisterResponse {}))
    }

    async fn list(
        &self,
        _: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, Status> {
        let containers = self
            .registry
            .list()
            .into_iter()
            .map(container_info)
            .collect();
        Ok(Response::new(wire::ListResponse { containers }))
    }

    async fn tree(
        &self,
        _: Request<wire::TreeRequest>,
    ) -> Result<Response<wire::TreeResponse>, Status> {
        Ok(Response::new(wire::TreeResponse {
            roots: build_tree(self.registry.list()),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<wire::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        // Subscribe before the snapshot so that nothing falls between the two.
        let mut events = self.registry.subscribe();
        let snapshot: Vec<_> = if request.into_inner().snapshot {
            self.registry
                .list()
                .into_iter()
                .map(|container| RegistryEvent {
                    kind: EventKind::Registered,
                    container,
                    reason: "snapshot".to_owned(),
                    at: SystemTime::now(),
                    phase: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            for event in snapshot {
                if tx.send(Ok(container_event(event))).await.is_err() {
                    return;
                }
            }
            loop {
                let item = match events.recv().await {
                    Ok(event) => Ok(container_event(event)),
                    Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(missed)) => Err(Status::resource_exhausted(format!(
                        "watcher fell {missed} events behind; list again and re-watch"
                    ))),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn info(
        &self,
        _: Request<wire::InfoRequest>,
    ) -> Result<Response<wire::NodeInfo>, Status> {
        Ok(Response::new(wire::NodeInfo {
            name: self.node.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.node.started.elapsed().as_millis() as u64,
            listen: self.node.listen.to_string(),
            containers: self.registry.len() as u32,
            envelopes_routed: self.stats.routed(),
            dead_letters: self.stats.dead_letters(),
            requests_expired: self.stats.requests_expired(),
            frames_received: self.stats.frames(),
            frames_sent: self.stats.frames_sent(),
            replied: Some((&self.stats.replied().snapshot()).into()),
            refused: Some((&self.stats.refused().snapshot()).into()),
            state_operations: self.stats.state().total(),
        }))
    }

    async fn ping_container(
        &self,
        request: Request<wire::PingContainerRequest>,
    ) -> Result<Response<wire::PingContainerResponse>, Status> {
        let alias = request.into_inner().alias;
        let container = self
            .registry
            .get(&alias)
            .ok_or_else(|| Status::not_found(format!("no container is registered as {alias:?}")))?;
        let endpoint = container.spec.endpoint.ok_or_else(|| {
            Status::failed_precondition(format!("{alias:?} registered no endpoint to ping"))
        })?;
        let started = Instant::now();
        let answer =
            ping_endpoint(&endpoint, self.tls.pki().ca_pem(), Duration::from_secs(5)).await?;
        Ok(Response::new(wire::PingContainerResponse {
            alias: answer.alias,
            round_trip_us: started.elapsed().as_micros() as u64,
        }))
    }

    async fn get_container_status(
        &self,
        request: Request<wire::GetContainerStatusRequest>,
    ) -> Result<Response<wire::ContainerStatus>, Status> {
        let caller = identity::caller(&request);
        let request = request.into_inner();
        if let Some(mut node) = self.node_below(&request.alias).await? {
            return node
                .get_container_status(on_behalf_of(&caller, request)?)
                .await;
        }
        let mut container = self
            .container_endpoint(&caller, &request.alias, CONTAINER_STATUS_TIMEOUT)
            .await?;
        container
            .status(on_behalf_of(&caller, wire::StatusRequest {})?)
            .await
    }

    async fn command_container(
        &self,
        request: Request<wire::CommandContainerRequest>,
    ) -> Result<Response<wire::CommandResponse>, Status> {
        let caller = identity::caller(&request);
        let request = request.into_inner();
        if let Some(mut node) = self.node_below(&request.alias).await? {
            return node
                .command_container(on_behalf_of(&caller, request)?)
                .await;
        }
        let mut container = self
            .container_endpoint(&caller, &request.alias, CONTAINER_COMMAND_TIMEOUT)
            .await?;
        let command = wire::CommandRequest {
            command: request.command,
            args: request.args,
        };
        container.command(on_behalf_of(&caller, command)?).await
    }

    async fn create(
        &self,
        request: Request<wire::CreateRequest>,
    ) -> Result<Response<wire::CreateResponse>, Status> {
        let caller = identity::caller(&request);
        self.create_one(&caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn destroy(
        &self,
        request: Request<wire::DestroyRequest>,
    ) -> Result<Response<wire::DestroyResponse>, Status> {
        let caller = identity::caller(&request);
        self.destroy_one(&caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn start(
        &self,
        request: Request<wire::StartRequest>,
    ) -> Result<Response<wire::StartResponse>, Status> {
        let caller = identity::caller(&request);
        self.start_one(&caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop(
        &self,
        request: Request<wire::StopRequest>,
    ) -> Result<Response<wire::StopResponse>, Status> {
        let caller = identity::caller(&request);
        self.stop_one(&caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn restart(
        &self,
        request: Request<wire::RestartRequest>,
    ) -> Result<Response<wire::RestartResponse>, Status> {
        let caller = identity::caller(&request);
        let request = request.into_inner();
        let alias = parse_alias(&request.alias)?;
        if let Some(mut node) = self.node_below(alias.as_str()).await? {
            return node.restart(on_behalf_of(&caller, request)?).await;
        }
        self.check_subtree(&caller, Action::Restart, alias.as_str(), None)?;
        self.refuse_task(&alias, "restarted")?;
        let container = self
            .supervision
            .restart(alias)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(wire::RestartResponse {
            container: Some(container_info(container)),
        }))
    }

    async fn exists(
        &self,
        request: Request<wire::ExistsRequest>,
    ) -> Result<Response<wire::ExistsResponse>, Status> {
        let alias = request.into_inner().alias;
        let state = self.supervision.exists(&alias).or_else(|| {
            let task = self.registry.get(&alias)?.task?;
            Some(State::Started).filter(|_| self.registry.lookup(task.host.as_str()).is_some())
        });
        Ok(Response::new(wire::ExistsResponse {
            exists: state.is_some(),
            state: state.map_or(wire::ContainerState::Unspecified, convert::state_to_wire) as i32,
        }))
    }

    async fn batch(
        &self,
        request: Request<wire::BatchRequest>,
    ) -> Result<Response<wire::BatchResponse>, Status> {
        use wire::batch_operation::Operation;
        let caller = identity::caller(&request);
        let request = request.into_inner();
        let mut results = Vec::with_capacity(request.operations.len());
        let mut aborted = false;
        for operation in request.operations {
            let (alias, outcome) = match operation.operation {
                _ if aborted => (
                    String::new(),
                    Err(Status::aborted("an earlier operation failed")),
                ),
                Some(Operation::Create(create)) => {
                    let alias = create
                        .definition
                        .as_ref()
                        .map(|d| d.alias.clone())
                        .unwrap_or_default();
                    (alias, self.create_one(&caller, create).await.map(drop))
                }
                Some(Operation::Destroy(destroy)) => (
                    destroy.alias.clone(),
                    self.destroy_one(&caller, destroy).await.map(drop),
                ),
                Some(Operation::Start(start)) => (
                    start.alias.clone(),
                    self.start_one(&caller, start).await.map(drop),
                ),
                Some(Operation::Stop(stop)) => (
                    stop.alias.clone(),
                    self.stop_one(&caller, stop).await.map(drop),
                ),
                None => (
                    String::new(),
                    Err(Status::invalid_argument("empty batch operation")),
                ),
            };
            aborted |= outcome.is_err() && request.stop_on_error;
            results.push(batch_result(alias, outcome));
        }
        Ok(Response::new(wire::BatchResponse { results }))
    }

    async fn fail(
        &self,
        request: Request<wire::FailRequest>,
    ) -> Result<Response<wire::FailResponse>, Status> {
        let request = request.into_inner();
        let alias = parse_alias(&request.alias)?;
        if !self.registry.holds_lease(alias.as_str(), &request.lease) {
            return Err(Status::permission_denied(format!(
                "the lease does not match the registration of {alias}"
            )));
        }
        if request.error_type.is_empty() {
            return Err(Status::invalid_argument("FailRequest.error_type is empty"));
        }
        let failure = Failure {
            error_type: request.error_type,
            message: request.message,
            normal: false,
        };
        self.supervision
            .fail(alias, failure)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(wire::FailResponse {}))
    }

    async fn host(
        &self,
        request: Request<wire::HostRequest>,
    ) -> Result<Response<wire::HostResponse>, Status> {
        reef_access::check_claim(&identity::caller(&request), &request.get_ref().alias)
            .map_err(ApiError::from)?;
        let request = request.into_inner();
        let host = parse_alias(&request.alias)?;
        // Each upsert's alias, and why it was refused before reaching the registry.
        let mut order = Vec::with_capacity(request.upsert.len());
        let mut upsert = Vec::with_capacity(request.upsert.len());
        for task in request.upsert {
            let alias = task.alias.clone();
            match convert::hosted_task(task) {
                Ok(task) => {
                    upsert.push(task);
                    order.push((alias, None));
                }
                Err(status) => order.push((alias, Some(status))),
            }
        }
        let remove = request
            .remove
            .iter()
            .map(|alias| parse_alias(alias))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outcomes = self
            .registry
            .host_tasks(&host, &request.lease, upsert, remove, request.replace)
            .map_err(ApiError::from)?
            .into_iter();
        let results = order
            .into_iter()
            .map(|(alias, refused)| {
                let outcome = match refused {
                    Some(status) => Err(status),
                    // One registry outcome per task that reached it, in order.
                    None => outcomes
                        .next()
                        .unwrap_or(Ok(false))
                        .map(drop)
                        .map_err(|error| ApiError::from(error).into()),
                };
                batch_result(alias, outcome)
            })
            .collect();
        Ok(Response::new(wire::HostResponse { results }))
    }

    async fn configure_group(
        &self,
        request: Request<wire::ConfigureGroupRequest>,
    ) -> Result<Response<wire::ConfigureGroupResponse>, Status> {
        self.check_configure(&request, &format!("group:{}", request.get_ref().name))?;
        Ok(Response::new(routing_api::configure_group(
            &self.routing,
            &self.registry,
            request.into_inner(),
        )?))
    }

    async fn join_group(
        &self,
        request: Request<wire::JoinGroupRequest>,
    ) -> Result<Response<wire::JoinGroupResponse>, Status> {
        self.check_configure(&request, &format!("group:{}", request.get_ref().group))?;
        Ok(Response::new(routing_api::join_group(
            &self.routing,
            &self.registry,
            request.into_inner(),
        )?))
    }

    async fn leave_group(
        &self,
        request: Request<wire::LeaveGroupRequest>,
    ) -> Result<Response<wire::LeaveGroupResponse>, Status> {
        self.check_configure(&request, &format!("group:{}", request.get_ref().group))?;
        Ok(Response::new(routing_api::leave_group(
            &self.routing,
            &self.registry,
            request.into_inner(),
        )?))
    }

    async fn list_groups(
        &self,
        _: Request<wire::ListGroupsRequest>,
    ) -> Result<Response<wire::ListGroupsResponse>, Status> {
        Ok(Response::new(routing_api::list_groups(
            &self.routing,
            &self.registry,
        )))
    }

    async fn put_rule(
        &self,
        request: Request<wire::PutRuleRequest>,
    ) -> Result<Response<wire::PutRuleResponse>, Status> {
        let id = request
            .get_ref()
            .rule
            .as_ref()
            .map_or("", |rule| rule.id.as_str());
        self.check_configure(&request, &format!("rule:{id}"))?;
        Ok(Response::new(routing_api::put_rule(
            &self.routing,
            request.into_inner(),
        )?))
    }

    async fn delete_rule(
        &self,
        request: Request<wire::DeleteRuleRequest>,
    ) -> Result<Response<wire::DeleteRuleResponse>, Status> {
        self.check_configure(&request, &format!("rule:{}", request.get_ref().id))?;
        Ok(Response::new(routing_api::delete_rule(
            &self.routing,
            request.into_inner(),
        )?))
    }

    async fn list_rules(
        &self,
        _: Request<wire::ListRulesRequest>,
    ) -> Result<Response<wire::ListRulesResponse>, Status> {
        Ok(Response::new(routing_api::list_rules(&self.routing)))
    }

    async fn set_firewall(
        &self,
        request: Request<wire::SetFirewallRequest>,
    ) -> Result<Response<wire::SetFirewallResponse>, Status> {
        self.check_configure(&request, "firewall")?;
        self.routing.set_firewall(request.into_inner().enabled);
        Ok(Response::new(wire::SetFirewallResponse {}))
    }

    async fn dead_letters(
        &self,
        request: Request<wire::DeadLettersRequest>,
    ) -> Result<Response<wire::DeadLettersResponse>, Status> {
        let ring = self.stats.dead_letter_ring();
        Ok(Response::new(wire::DeadLettersResponse {
            letters: ring.recent(request.into_inner().limit as usize),
            total: ring.total(),
        }))
    }

    async fn set_overflow(
        &self,
        request: Request<wire::SetOverflowRequest>,
    ) -> Result<Response<wire::SetOverflowResponse>, Status> {
        self.check_configure(&request, &request.get_ref().alias)?;
        Ok(Response::new(routing_api::set_overflow(
            &self.routing,
            request.into_inner(),
        )?))
    }

    async fn open_push(
        &self,
        request: Request<wire::OpenPushRequest>,
    ) -> Result<Response<wire::OpenPushResponse>, Status> {
        let request = request.into_inner();
        self.authenticate(&request.alias, &request.lease)?;
        let origin = parse_alias(&request.alias)?;
        let peer = parse_alias(&request.peer)?;
        // A push is a send that bypasses the router: the same policies hold.
        self.access
            .check(
                &Principal::Container(origin.to_string()),
                Action::Send,
                peer.as_str(),
                &[],
            )
            .map_err(ApiError::from)?;
        let container = self
            .registry
            .get(peer.as_str())
            .ok_or_else(|| Status::not_found(format!("no container is registered as {peer}")))?;
        if container.task.is_some() {
            return Err(Status::failed_precondition(format!(
                "{peer} is a task container: push to its host's alias or send through the node"
            )));
        }
        let endpoint = match (&container.spec.endpoint, container.attached) {
            (Some(endpoint), true) => endpoint.clone(),
            _ => {
                return Err(Status::failed_precondition(format!(
                    "{peer} is not attached with an endpoint"
                )));
            }
        };
        let ticket = self
            .push_tickets
            .issue(origin, peer)
            .ok_or_else(|| Status::resource_exhausted("too many push tickets outstanding"))?;
        Ok(Response::new(wire::OpenPushResponse { endpoint, ticket }))
    }

    async fn check_push(
        &self,
        request: Request<wire::CheckPushRequest>,
    ) -> Result<Response<wire::CheckPushResponse>, Status> {
        let request = request.into_inner();
        self.authenticate(&request.alias, &request.lease)?;
        let origin = self
            .push_tickets
            .redeem(&request.ticket, &request.alias)
            .ok_or_else(|| {
                Status::permission_denied("the push ticket is unknown, used, expired or not yours")
            })?;
        Ok(Response::new(wire::CheckPushResponse {
            origin: origin.to_string(),
        }))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        request: Request<wire::LogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let request = request.into_inner();
        if let Some(mut node) = self.node_below(&request.alias).await? {
            let chunks = node.logs(request).await?.into_inner();
            return Ok(Response::new(Box::pin(chunks)));
        }
        let path = self.supervision.log_path(&request.alias).ok_or_else(|| {
            Status::not_found(format!(
                "no supervised container is called {:?}",
                request.alias
            ))
        })?;
        let tail = match request.tail_bytes {
            0 => DEFAULT_LOG_TAIL,
            bytes => bytes,
        };
        let (first, mut offset) = match crate::supervision::tail(&path, tail) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
            Err(error) => return Err(Status::internal(format!("cannot read the log: {error}"))),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let supervision = self.supervision.clone();
        let alias = request.alias;
        tokio::spawn(async move {
            if !first.is_empty()
                && tx
                    .send(Ok(wire::LogChunk { data: first.into() }))
                    .await
                    .is_err()
            {
                return;
            }
            while request.follow && supervision.log_path(&alias).is_some() {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(LOG_POLL) => {}
                }
                let Ok((bytes, next)) = crate::supervision::read_from(&path, offset, LOG_CHUNK)
                else {
                    continue;
                };
                offset = next;
                if !bytes.is_empty()
                    && tx
                        .send(Ok(wire::LogChunk { data: bytes.into() }))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

fn container_spec(request: wire::RegisterRequest) -> Result<ContainerSpec, Status> {
    let invalid = |e: reef_core::InvalidAlias| Status::invalid_argument(e.to_string());
    let alias = Alias::parse(&request.alias).map_err(invalid)?;
    let parent = match request.parent.as_str() {
        "" => None,
        raw => Some(Alias::parse(raw).map_err(invalid)?),
    };
    if parent.as_ref() == Some(&alias) {
        return Err(Status::invalid_argument(format!(
            "{alias} cannot be its own parent"
        )));
    }
    let endpoint = match request.endpoint.as_str() {
        "" => None,
        raw => {
            endpoint_host(raw)?;
            Some(raw.to_owned())
        }
    };
    Ok(ContainerSpec {
        alias,
        name: request.name,
        parent,
        endpoint,
        pid: (request.pid != 0).then_some(request.pid),
        labels: request.labels.into_iter().collect(),
    })
}

fn container_info(snapshot: ContainerSnapshot) -> wire::ContainerInfo {
    let supervised = match (&snapshot.supervised, &snapshot.task) {
        (Some(supervised), _) => Some(convert::supervised_info(supervised)),
        (None, Some(task)) => Some(convert::task_info(&snapshot.spec, task)),
        (None, None) => None,
    };
    let spec = snapshot.spec;
    wire::ContainerInfo {
        alias: spec.alias.to_string(),
        name: spec.name,
        parent: spec.parent.map(|p| p.to_string()).unwrap_or_default(),
        endpoint: spec.endpoint.unwrap_or_default(),
        pid: spec.pid.unwrap_or(0),
        labels: spec.labels.into_iter().collect(),
        attached: snapshot.attached,
        registered_at_unix_ms: unix_ms(snapshot.registered_at),
        envelopes_in: snapshot.envelopes_in,
        envelopes_out: snapshot.envelopes_out,
        supervised,
        queue_depth: snapshot.queued,
        answered: Some((&snapshot.answered).into()),
    }
}

fn container_event(event: RegistryEvent) -> wire::ContainerEvent {
    let kind = match event.kind {
        EventKind::Registered => ContainerEventKind::Registered,
        EventKind::Attached => ContainerEventKind::Attached,
        EventKind::Detached => ContainerEventKind::Detached,
        EventKind::Deregistered => ContainerEventKind::Deregistered,
        EventKind::Create => ContainerEventKind::Create,
        EventKind::Start => ContainerEventKind::Start,
        EventKind::Stop => ContainerEventKind::Stop,
        EventKind::Fail => ContainerEventKind::Fail,
        EventKind::Destroy => ContainerEventKind::Destroy,
        EventKind::Restart => ContainerEventKind::Restart,
        EventKind::Solve => ContainerEventKind::Solve,
    };
    let phase = match event.phase {
        None => LifecyclePhase::Unspecified,
        Some(Phase::Before) => LifecyclePhase::Before,
        Some(Phase::On) => LifecyclePhase::On,
        Some(Phase::After) => LifecyclePhase::After,
    };
    wire::ContainerEvent {
        kind: kind as i32,
        container: Some(container_info(event.container)),
        reason: event.reason,
        at_unix_ms: unix_ms(event.at),
        phase: phase as i32,
    }
}

/// Nests containers under their parents; a container whose parent is not registered is
/// a root, so nothing is hidden.
fn build_tree(containers: Vec<ContainerSnapshot>) -> Vec<wire::ContainerNode> {
    let known: std::collections::HashSet<String> = containers
        .iter()
        .map(|c| c.spec.alias.to_string())
        .collect();
    let mut children: HashMap<String, Vec<ContainerSnapshot>> = HashMap::new();
    let mut roots = Vec::new();
    for container in containers {
        match &container.spec.parent {
            Some(parent) if known.contains(parent.as_str()) => children
                .entry(parent.to_string())
                .or_default()
                .push(container),
            _ => roots.push(container),
        }
    }
    fn nest(
        container: ContainerSnapshot,
        children: &mut HashMap<String, Vec<ContainerSnapshot>>,
    ) -> wire::ContainerNode {
        let below = children
            .remove(container.spec.alias.as_str())
            .unwrap_or_default();
        wire::ContainerNode {
            container: Some(container_info(container)),
            children: below.into_iter().map(|c| nest(c, children)).collect(),
        }
    }
    roots.into_iter().map(|c| nest(c, &mut children)).collect()
}
