//! `reef.v1.Supervisor`: the control plane (registration, listing, events).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use reef_proto::{
    self as wire, ContainerEventKind, container_client::ContainerClient, supervisor_server,
};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{
    Request, Response, Status,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

use crate::{
    Alias, ContainerSnapshot, ContainerSpec, EventKind, NodeStats, Pki, Registry, RegistryEvent,
    status::{pki_status, registry_status},
};

/// Facts about the node that `Info` reports.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node's name.
    pub name: String,
    /// Its TLS gRPC address.
    pub listen: SocketAddr,
    /// When it started.
    pub started: Instant,
}

/// Serves `reef.v1.Supervisor`.
#[derive(Debug, Clone)]
pub struct SupervisorService {
    registry: Arc<Registry>,
    stats: Arc<NodeStats>,
    pki: Arc<Pki>,
    node: NodeIdentity,
}

impl SupervisorService {
    /// A supervisor over `registry`, issuing endpoint certificates from `pki`.
    pub fn new(
        registry: Arc<Registry>,
        stats: Arc<NodeStats>,
        pki: Arc<Pki>,
        node: NodeIdentity,
    ) -> Self {
        Self {
            registry,
            stats,
            pki,
            node,
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::ContainerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl supervisor_server::Supervisor for SupervisorService {
    async fn register(
        &self,
        request: Request<wire::RegisterRequest>,
    ) -> Result<Response<wire::RegisterResponse>, Status> {
        let spec = container_spec(request.into_inner())?;
        let certified = match &spec.endpoint {
            Some(endpoint) => {
                let host = endpoint_host(endpoint)?;
                Some(
                    self.pki
                        .issue(spec.alias.as_str(), &[host])
                        .map_err(pki_status)?,
                )
            }
            None => None,
        };
        let alias = spec.alias.clone();
        let lease = self.registry.register(spec).map_err(registry_status)?;
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
        }))
    }

    async fn deregister(
        &self,
        request: Request<wire::DeregisterRequest>,
    ) -> Result<Response<wire::DeregisterResponse>, Status> {
        let request = request.into_inner();
        self.registry
            .deregister(&request.alias, &request.lease)
            .map_err(registry_status)?;
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
        let answer = ping_endpoint(&endpoint, self.pki.ca_pem()).await?;
        Ok(Response::new(wire::PingContainerResponse {
            alias: answer.alias,
            round_trip_us: started.elapsed().as_micros() as u64,
        }))
    }
}

async fn ping_endpoint(endpoint: &str, ca_pem: &str) -> Result<wire::PingResponse, Status> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Status::unavailable(format!("container endpoint {endpoint} is unreachable: {e}"))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(endpoint_host(endpoint)?);
    let channel = Endpoint::from_shared(format!("https://{endpoint}"))
        .map_err(|e| unreachable(&e))?
        .tls_config(tls)
        .map_err(|e| unreachable(&e))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| unreachable(&e))?;
    let answer = ContainerClient::new(channel)
        .ping(wire::PingRequest { nonce: 1 })
        .await?;
    Ok(answer.into_inner())
}

fn container_spec(request: wire::RegisterRequest) -> Result<ContainerSpec, Status> {
    let invalid = |e: crate::InvalidAlias| Status::invalid_argument(e.to_string());
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

/// The host part of `host:port` (brackets around IPv6 removed).
fn endpoint_host(endpoint: &str) -> Result<String, Status> {
    let invalid = || Status::invalid_argument(format!("endpoint {endpoint:?} is not host:port"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(invalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid());
    }
    Ok(host.to_owned())
}

fn millis(duration: Duration) -> u32 {
    duration.as_millis().min(u32::MAX as u128) as u32
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn container_info(snapshot: ContainerSnapshot) -> wire::ContainerInfo {
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
    }
}

fn container_event(event: RegistryEvent) -> wire::ContainerEvent {
    let kind = match event.kind {
        EventKind::Registered => ContainerEventKind::Registered,
        EventKind::Attached => ContainerEventKind::Attached,
        EventKind::Detached => ContainerEventKind::Detached,
        EventKind::Deregistered => ContainerEventKind::Deregistered,
    };
    wire::ContainerEvent {
        kind: kind as i32,
        container: Some(container_info(event.container)),
        reason: event.reason,
        at_unix_ms: unix_ms(event.at),
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
