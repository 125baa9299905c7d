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
    error::ApiError, hosting, identity, routing as routing_api, supervision as convert,
};
use crate::{
    ContainerSnapshot, ContainerSpec, EventKind, Phase, Registry, RegistryEvent,
    children::{ChildNodes, NodeEndpoint},
    metrics::Counters,
    probe::{connect_endpoint, endpoint_host, ping_endpoint},
};
use reef_messaging::PushTickets;

mod lifecycle;
mod links;
mod logs;
mod snapshots;

use self::{
    lifecycle::{batch_result, on_behalf_of},
    snapshots::{build_tree, container_event, container_info},
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
        }
    }

    /// A client for `alias`'s own endpoint (reef.v1.Container), for `caller`, who must
    /// be allowed to send to it: asking a container something is as much as messaging
    /// it. The node presents its own certificate, as to a child node.
    async fn container_endpoint(
        &self,
        caller: &Principal,
        alias: &str,
        timeout: Duration,
    ) -> Result<ContainerClient<tonic::transport::Channel>, ApiError> {
        let alias = parse_alias(alias)?;
        self.access
            .check(caller, Action::Send, alias.as_str(), &[])
            .map_err(ApiError::from)?;
        let container = self
            .registry
            .get(alias.as_str())
            .ok_or_else(|| ApiError::Unknown(format!("no container is registered as {alias:?}")))?;
        if let Some(task) = &container.task {
            return Err(ApiError::Unfit(format!(
                "{alias} is a task container in {}: its host's endpoint speaks for the host",
                task.host
            )));
        }
        let endpoint = match (container.spec.endpoint, container.attached) {
            (Some(endpoint), true) => endpoint,
            (None, _) => {
                return Err(ApiError::Unfit(format!(
                    "{alias} registered no endpoint to ask"
                )));
            }
            (Some(_), false) => {
                return Err(ApiError::Unfit(format!(
                    "{alias} is not attached (starting, restarting or stopped)"
                )));
            }
        };
        let identity = Some(self.tls.pki().server().clone());
        let channel =
            connect_endpoint(&endpoint, self.tls.pki().ca_pem(), identity, timeout).await?;
        Ok(ContainerClient::new(channel))
    }

    /// Refuses a caller that does not hold `alias`'s lease.
    fn authenticate(&self, alias: &str, lease: &str) -> Result<(), ApiError> {
        match self.registry.holds_lease(alias, lease) {
            true => Ok(()),
            false => Err(ApiError::NotEntitled(format!(
                "{alias:?} is not registered with that lease"
            ))),
        }
    }

    /// Checks `caller` changing routing (`what`: `group:NAME`, `rule:ID`, `firewall`, an
    /// alias's overflow policy).
    fn check_configure<T>(&self, request: &Request<T>, what: &str) -> Result<(), ApiError> {
        identity::check_caller(&self.access, request, Action::Configure, what)
    }
}

fn parse_alias(raw: &str) -> Result<Alias, ApiError> {
    Alias::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<wire::LogChunk, Status>> + Send>>;

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::ContainerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl supervisor_server::Supervisor for SupervisorService {
    async fn register(
        &self,
        request: Request<wire::RegisterRequest>,
    ) -> Result<Response<wire::RegisterResponse>, Status> {
        self.serve_register(request).await
    }

    async fn join(
        &self,
        request: Request<wire::JoinRequest>,
    ) -> Result<Response<wire::JoinResponse>, Status> {
        self.serve_join(request).await
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
                    Err(RecvError::Lagged(missed)) => Err(ApiError::Exhausted(format!(
                        "watcher fell {missed} events behind; list again and re-watch"
                    ))
                    .into()),
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
            envelopes_routed: self.counters.messaging.routed(),
            dead_letters: self.counters.messaging.dead_letters(),
            requests_expired: self.counters.messaging.requests_expired(),
            frames_received: self.counters.messaging.frames(),
            frames_sent: self.counters.messaging.frames_sent(),
            replied: Some((&self.counters.messaging.replied().snapshot()).into()),
            refused: Some((&self.counters.messaging.refused().snapshot()).into()),
            state_operations: self.counters.state.total(),
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
            .ok_or_else(|| ApiError::Unknown(format!("no container is registered as {alias:?}")))?;
        let endpoint = container
            .spec
            .endpoint
            .ok_or_else(|| ApiError::Unfit(format!("{alias:?} registered no endpoint to ping")))?;
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
        Ok(Response::new(
            self.create_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn destroy(
        &self,
        request: Request<wire::DestroyRequest>,
    ) -> Result<Response<wire::DestroyResponse>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.destroy_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn start(
        &self,
        request: Request<wire::StartRequest>,
    ) -> Result<Response<wire::StartResponse>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.start_one(&caller, request.into_inner()).await?,
        ))
    }

    async fn stop(
        &self,
        request: Request<wire::StopRequest>,
    ) -> Result<Response<wire::StopResponse>, Status> {
        let caller = identity::caller(&request);
        Ok(Response::new(
            self.stop_one(&caller, request.into_inner()).await?,
        ))
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
        self.supervision
            .restart(alias.clone())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(wire::RestartResponse {
            container: Some(container_info(self.supervised(&alias)?)),
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
                _ if aborted => (String::new(), Err(ApiError::Skipped)),
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
                    Err(ApiError::BadRequest("empty batch operation".to_owned())),
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
            return Err(ApiError::NotEntitled(format!(
                "the lease does not match the registration of {alias}"
            ))
            .into());
        }
        if request.error_type.is_empty() {
            return Err(ApiError::BadRequest("FailRequest.error_type is empty".to_owned()).into());
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
                        .map_err(ApiError::from),
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
        let ring = self.counters.messaging.dead_letter_ring();
        Ok(Response::new(wire::DeadLettersResponse {
            letters: ring
                .recent(request.into_inner().limit as usize)
                .into_iter()
                .map(wire_dead_letter)
                .collect(),
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
            .ok_or_else(|| ApiError::Unknown(format!("no container is registered as {peer}")))?;
        if container.task.is_some() {
            return Err(ApiError::Unfit(format!(
                "{peer} is a task container: push to its host's alias or send through the node"
            ))
            .into());
        }
        let endpoint = match (&container.spec.endpoint, container.attached) {
            (Some(endpoint), true) => endpoint.clone(),
            _ => {
                return Err(
                    ApiError::Unfit(format!("{peer} is not attached with an endpoint")).into(),
                );
            }
        };
        let ticket = self
            .push_tickets
            .issue(origin, peer)
            .ok_or_else(|| ApiError::Exhausted("too many push tickets outstanding".to_owned()))?;
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
                ApiError::NotEntitled(
                    "the push ticket is unknown, used, expired or not yours".to_owned(),
                )
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
        self.serve_logs(request).await
    }
}

fn wire_dead_letter(letter: reef_messaging::DeadLetter) -> wire::DeadLetter {
    wire::DeadLetter {
        at_ms: reef_core::unix_ms(letter.at),
        kind: letter.kind,
        id: letter.id,
        correlation_id: letter.correlation_id,
        origin: letter.origin,
        destination: letter.destination,
        payload_bytes: u32::try_from(letter.payload_bytes).unwrap_or(u32::MAX),
        payload_preview: letter.payload_preview,
        reason: letter.reason,
    }
}
