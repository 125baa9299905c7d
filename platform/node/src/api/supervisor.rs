//! `reef.v1.Supervisor`: the control plane (registration, listing, events).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use reef_access::{Access, Action, Principal};
use reef_core::{Alias, unix_ms};
use reef_proto::{
    self as wire, ContainerEventKind, LifecyclePhase, container_client::ContainerClient,
    supervisor_client::SupervisorClient, supervisor_server,
};
use reef_routing::Routing;
use reef_supervision::{Failure, State, Supervision, SupervisionError};
use reef_tls::tls::NodeTls;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::{
    error::ApiError,
    identity::{self, Caller},
};
use crate::{
    ContainerSnapshot, ContainerSpec, EventKind, Phase, Registry, RegistryEvent,
    children::{ChildNodes, NodeEndpoint},
    metrics::Counters,
    probe::{connect_endpoint, endpoint_host, ping_endpoint},
    upstream::Upstream,
};
use reef_messaging::PushTickets;

mod containers;
mod convert;
mod hosting;
mod lifecycle;
mod links;
mod logs;
mod routing;
mod snapshots;
mod tasks;
mod views;

use self::{
    lifecycle::{batch_result, on_behalf_of, to_node_below},
    snapshots::{build_tree, container_event, container_info, seen_by, tree_seen_by},
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
    counters: Counters,
    tls: Arc<NodeTls>,
    supervision: Supervision,
    routing: Arc<Routing>,
    push_tickets: Arc<PushTickets>,
    node: NodeIdentity,
    children: Arc<ChildNodes>,
    access: Arc<Access>,
    task_grants: Arc<hosting::TaskGrants>,
    /// On a child node, where a child's new aliases are claimed before they are routed
    /// here (`None` on a root: it decides alone).
    upstream: Option<Upstream>,
}

impl SupervisorService {
    /// A supervisor over `registry`, issuing endpoint certificates from `tls`, its
    /// callers checked against `access`.
    pub fn new(
        registry: Arc<Registry>,
        counters: Counters,
        tls: Arc<NodeTls>,
        supervision: Supervision,
        routing: Arc<Routing>,
        node: NodeIdentity,
        access: Arc<Access>,
    ) -> Self {
        Self {
            registry,
            counters,
            tls,
            supervision,
            routing,
            push_tickets: Arc::default(),
            node,
            children: Arc::default(),
            access,
            task_grants: Arc::default(),
            upstream: None,
        }
    }

    /// The same on a child node, whose link at its parent `upstream` holds.
    pub(crate) fn with_upstream(self, upstream: Option<Upstream>) -> Self {
        Self { upstream, ..self }
    }

    /// Checks `caller` changing routing (`what`: `group:NAME`, `rule:ID`, `firewall`, an
    /// alias's overflow policy).
    fn check_configure<T>(&self, request: &Request<T>, what: &str) -> Result<(), ApiError> {
        identity::check_caller(&self.access, request, Action::Configure, what)
    }

    /// Whether `caller` may see `what` (`group:NAME`, `rule:ID`).
    fn may_read(&self, caller: &Principal, what: &str) -> bool {
        self.access.check(caller, Action::Read, what, &[]).is_ok()
    }
}

fn parse_alias(raw: &str) -> Result<Alias, ApiError> {
    Alias::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<wire::LogChunk, Status>> + Send>>;

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::ContainerEvent, Status>> + Send>>;

/// Each RPC is a shim: it reads the caller and the message, and calls the method of
/// the module that does the job (`links`, `lifecycle`, `containers`, `tasks`, `views`,
/// `logs`, or the routing edge), whose `ApiError` becomes the call's status here.
#[tonic::async_trait]
impl supervisor_server::Supervisor for SupervisorService {
    async fn register(
        &self,
        request: Request<wire::RegisterRequest>,
    ) -> Result<Response<wire::RegisterResponse>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.register_container(&caller, request.into_inner())?,
        ))
    }

    async fn join(
        &self,
        request: Request<wire::JoinRequest>,
    ) -> Result<Response<wire::JoinResponse>, Status> {
        let chain = identity::peer_chain(&request);
        Ok(Response::new(self.join_node(chain, request.into_inner())?))
    }

    async fn deregister(
        &self,
        request: Request<wire::DeregisterRequest>,
    ) -> Result<Response<wire::DeregisterResponse>, Status> {
        let caller = identity::caller(&request);
        self.deregister_container(&caller, request.into_inner())?;
        Ok(Response::new(wire::DeregisterResponse {}))
    }

    async fn list(
        &self,
        request: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, Status> {
        Ok(Response::new(self.containers(&identity::caller(&request))))
    }

    async fn tree(
        &self,
        request: Request<wire::TreeRequest>,
    ) -> Result<Response<wire::TreeResponse>, Status> {
        Ok(Response::new(
            self.container_tree(&identity::caller(&request)),
        ))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<wire::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.events(caller, request.into_inner().snapshot),
        ))
    }

    async fn info(
        &self,
        request: Request<wire::InfoRequest>,
    ) -> Result<Response<wire::NodeInfo>, Status> {
        let info = self.node_info();
        Ok(Response::new(match identity::open_route_only(&request) {
            // Enough to tell that a reef node answers here, and which.
            true => wire::NodeInfo {
                name: info.name,
                version: info.version,
                ..Default::default()
            },
            false => info,
        }))
    }

    async fn ping_container(
        &self,
        request: Request<wire::PingContainerRequest>,
    ) -> Result<Response<wire::PingContainerResponse>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.ping_one(&caller, &request.into_inner().alias).await?,
        ))
    }

    async fn get_container_status(
        &self,
        request: Request<wire::GetContainerStatusRequest>,
    ) -> Result<Response<wire::ContainerStatus>, Status> {
        let caller = identity::acting(&request);
        Ok(self.container_status(&caller, request.into_inner()).await?)
    }

    async fn command_container(
        &self,
        request: Request<wire::CommandContainerRequest>,
    ) -> Result<Response<wire::CommandResponse>, Status> {
        let caller = identity::acting(&request);
        Ok(self.run_command(&caller, request.into_inner()).await?)
    }

    async fn create(
        &self,
        request: Request<wire::CreateRequest>,
    ) -> Result<Response<wire::CreateResponse>, Status> {
        let caller = identity::acting(&request);
        Ok(Response::new(
            self.create_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn destroy(
        &self,
        request: Request<wire::DestroyRequest>,
    ) -> Result<Response<wire::DestroyResponse>, Status> {
        let caller = identity::acting(&request);
        Ok(Response::new(
            self.destroy_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn start(
        &self,
        request: Request<wire::StartRequest>,
    ) -> Result<Response<wire::StartResponse>, Status> {
        let caller = identity::acting(&request);
        Ok(Response::new(
            self.start_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn stop(
        &self,
        request: Request<wire::StopRequest>,
    ) -> Result<Response<wire::StopResponse>, Status> {
        let caller = identity::acting(&request);
        Ok(Response::new(
            self.stop_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn restart(
        &self,
        request: Request<wire::RestartRequest>,
    ) -> Result<Response<wire::RestartResponse>, Status> {
        let caller = identity::acting(&request);
        Ok(Response::new(
            self.restart_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn exists(
        &self,
        request: Request<wire::ExistsRequest>,
    ) -> Result<Response<wire::ExistsResponse>, Status> {
        Ok(Response::new(self.existence(&request.into_inner().alias)))
    }

    async fn batch(
        &self,
        request: Request<wire::BatchRequest>,
    ) -> Result<Response<wire::BatchResponse>, Status> {
        let caller = identity::acting(&request);
        Ok(Response::new(
            self.run_batch(&caller, request.into_inner()).await,
        ))
    }

    async fn fail(
        &self,
        request: Request<wire::FailRequest>,
    ) -> Result<Response<wire::FailResponse>, Status> {
        self.fail_container(request.into_inner()).await?;
        Ok(Response::new(wire::FailResponse {}))
    }

    async fn host(
        &self,
        request: Request<wire::HostRequest>,
    ) -> Result<Response<wire::HostResponse>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.host_tasks(&caller, request.into_inner()).await?,
        ))
    }

    async fn configure_group(
        &self,
        request: Request<wire::ConfigureGroupRequest>,
    ) -> Result<Response<wire::ConfigureGroupResponse>, Status> {
        self.check_configure(&request, &format!("group:{}", request.get_ref().name))?;
        Ok(Response::new(routing::configure_group(
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
        Ok(Response::new(routing::join_group(
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
        Ok(Response::new(routing::leave_group(
            &self.routing,
            &self.registry,
            request.into_inner(),
        )?))
    }

    async fn list_groups(
        &self,
        request: Request<wire::ListGroupsRequest>,
    ) -> Result<Response<wire::ListGroupsResponse>, Status> {
        let caller = identity::caller(&request);
        let mut listed = routing::list_groups(&self.routing, &self.registry);
        listed
            .groups
            .retain(|group| self.may_read(&caller, &format!("group:{}", group.name)));
        Ok(Response::new(listed))
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
        Ok(Response::new(routing::put_rule(
            &self.routing,
            request.into_inner(),
        )?))
    }

    async fn delete_rule(
        &self,
        request: Request<wire::DeleteRuleRequest>,
    ) -> Result<Response<wire::DeleteRuleResponse>, Status> {
        self.check_configure(&request, &format!("rule:{}", request.get_ref().id))?;
        Ok(Response::new(routing::delete_rule(
            &self.routing,
            request.into_inner(),
        )?))
    }

    async fn list_rules(
        &self,
        request: Request<wire::ListRulesRequest>,
    ) -> Result<Response<wire::ListRulesResponse>, Status> {
        let caller = identity::caller(&request);
        let mut listed = routing::list_rules(&self.routing);
        listed
            .rules
            .retain(|rule| self.may_read(&caller, &format!("rule:{}", rule.id)));
        Ok(Response::new(listed))
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
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.recent_dead_letters(&caller, request.into_inner().limit),
        ))
    }

    async fn set_overflow(
        &self,
        request: Request<wire::SetOverflowRequest>,
    ) -> Result<Response<wire::SetOverflowResponse>, Status> {
        self.check_configure(&request, &request.get_ref().alias)?;
        Ok(Response::new(routing::set_overflow(
            &self.routing,
            request.into_inner(),
        )?))
    }

    async fn open_push(
        &self,
        request: Request<wire::OpenPushRequest>,
    ) -> Result<Response<wire::OpenPushResponse>, Status> {
        Ok(Response::new(self.issue_push_ticket(request.into_inner())?))
    }

    async fn check_push(
        &self,
        request: Request<wire::CheckPushRequest>,
    ) -> Result<Response<wire::CheckPushResponse>, Status> {
        Ok(Response::new(
            self.redeem_push_ticket(request.into_inner())?,
        ))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        request: Request<wire::LogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let caller = identity::acting(&request);
        Ok(Response::new(
            self.log_stream(&caller, request.into_inner()).await?,
        ))
    }
}
