//! A child node's side of its link to the parent (`reefd --join`).
//!
//! ```text
//!   child node                                         parent node
//!   Inbound(nodes/parent) ◀── frames ───────────── Outbound(nodes/CHILD)
//!   Outbound(nodes/parent) ── frames ─────────────▶ Inbound(nodes/CHILD)
//!   registry events ── Supervisor.Host(replace) ──▶ aliases hosted by nodes/CHILD
//! ```
//!
//! The link to the parent is a local registration (`nodes/parent`, see [`crate::link`])
//! whose attach stream is the gRPC stream to the parent instead of a container's: what
//! the child's router sends to it goes up, what comes down is routed by the child. Both
//! ends heartbeat the link like a container's stream, so a silent parent
//! (ParentUnresponsive) or child (ChildUnresponsive) is detached and the child dials
//! again, with backoff, for as long as it runs.

use std::{sync::Arc, time::Duration};

use reef_access::{Access, Principal};
use reef_core::{Alias, PARENT_LINK};
use reef_proto::{
    self as wire, ALIAS_METADATA, LEASE_METADATA, channel_client::ChannelClient,
    supervisor_client::SupervisorClient,
};
use reef_routing::Routing;
use reef_tls::tls::NodeTls;
use tokio::sync::{broadcast::error::RecvError, watch};
use tokio_stream::StreamExt as _;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    ContainerSnapshot, ContainerSpec, DetachCause, Inbound, NodeStats, Registry,
    api::identity::ParentNode, probe::endpoint_host, upstream::Upstream,
};

/// First pause before dialling the parent again; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long dialling the parent may take. Short: during a partition the SYNs are lost,
/// and a fresh dial after it heals beats waiting out the kernel's SYN backoff.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Registry changes that arrive this close together are announced once.
const ANNOUNCE_COALESCE: Duration = Duration::from_millis(20);

/// How a node joins its parent.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The parent's address, `host:port`.
    pub parent: String,
    /// The CA (PEM) that signed the parent's server certificate; `None` with
    /// `insecure`.
    pub parent_ca_pem: Option<String>,
    /// Dial the parent in plaintext.
    pub insecure: bool,
}

/// Everything the uplink needs from its node.
pub(crate) struct Uplink {
    pub join: JoinConfig,
    pub node: String,
    pub session: String,
    /// Where this node serves, for calls the parent forwards.
    pub endpoint: Option<String>,
    /// This node's certificates: its CA is sent to the parent, its own certificate
    /// presented (the one in force at each dial).
    pub tls: Arc<NodeTls>,
    pub registry: Arc<Registry>,
    pub stats: Arc<NodeStats>,
    pub routing: Arc<Routing>,
    pub access: Arc<Access>,
    /// Told the parent's name when it answers the Join: the node whose forwarded calls
    /// (`reef-on-behalf-of`) are believed.
    pub parent: ParentNode,
    /// Told this node's link at the parent while linked: where a child's new aliases are
    /// claimed.
    pub upstream: Upstream,
}

/// The registration that stands for the parent, made before the first dial so that
/// what is sent up meanwhile is held.
pub(crate) fn parent_link_spec(parent_name: &str) -> ContainerSpec {
    ContainerSpec {
        alias: Alias::parse(PARENT_LINK).expect("a valid alias"),
        name: "node".to_owned(),
        parent: None,
        endpoint: None,
        pid: None,
        labels: [("reef.node".to_owned(), parent_name.to_owned())].into(),
    }
}

impl Uplink {
    /// Keeps the link up until `stopped` turns true.
    pub(crate) async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let began = tokio::time::Instant::now();
            tokio::select! {
                outcome = self.link_once() => match outcome {
                    Ok(()) => tracing::info!(parent = %self.join.parent, "link to the parent node closed"),
                    Err(reason) => tracing::warn!(parent = %self.join.parent, %reason, "link to the parent node is down"),
                },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            if began.elapsed() > 10 * MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Dials, joins, announces and relays until the link breaks.
    async fn link_once(&self) -> Result<(), String> {
        let channel = self.dial().await?;
        let mut supervisor = SupervisorClient::new(channel.clone());
        let joined = supervisor
            .join(wire::JoinRequest {
                node: self.node.clone(),
                session: self.session.clone(),
                endpoint: self.endpoint.clone().unwrap_or_default(),
                ca_pem: self.tls.pki().ca_pem().to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
                    format!("the parent refused to link: {}", status.message())
                }
                // A handshake the parent rejected shows up as a transport error.
                _ => format!(
                    "no link with the parent: {} (a node joins with a certificate from the cluster CA: reef ca issue)",
                    error_chain(&status)
                ),
            })?
            .into_inner();
        let local_lease = self
            .registry
            .join_link(parent_link_spec(&joined.node), &joined.session)
            .map_err(|e| e.to_string())?;
        let (attachment, outbound) = self
            .registry
            .attach(PARENT_LINK, &local_lease, None)
            .map_err(|e| e.to_string())?;
        tracing::info!(parent = %joined.node, alias = %joined.alias, "linked to the parent node");
        self.parent.set(&joined.node);
        self.upstream
            .linked(supervisor.clone(), &joined.alias, &joined.lease);
        tokio::spawn(reef_messaging::keeper::keep(
            self.registry.clone(),
            self.stats.clone(),
            attachment.clone(),
        ));
        let announcer = tokio::spawn(announce(
            self.registry.clone(),
            supervisor,
            self.node.clone(),
            joined.alias.clone(),
            joined.lease.clone(),
        ));
        let mut up = Request::new(outbound.map_while(Result::ok));
        up.metadata_mut()
            .insert(ALIAS_METADATA, metadata_value(&joined.alias)?);
        up.metadata_mut()
            .insert(LEASE_METADATA, metadata_value(&joined.lease)?);
        let limits = self.registry.limits();
        let relayed = async {
            let mut down = ChannelClient::new(channel)
                .max_decoding_message_size(limits.max_frame_bytes)
                .max_encoding_message_size(limits.max_frame_bytes)
                .attach(up)
                .await
                .map_err(|status| {
                    format!("the parent refused the link stream: {}", status.message())
                })?
                .into_inner();
            let mut inbound = Inbound::new(
                self.registry.clone(),
                self.stats.clone(),
                self.routing.clone(),
                self.access.clone(),
                &Principal::Node(joined.node.clone()),
                attachment.clone(),
            );
            let mut closed = attachment.subscribe_closed();
            loop {
                tokio::select! {
                    frame = down.message() => match frame {
                        Ok(Some(frame)) => inbound.route_frame(frame).await,
                        Ok(None) => return Ok(()),
                        Err(status) => return Err(format!("link stream failed: {}", status.message())),
                    },
                    _ = closed.changed() => return Err("the parent went silent (missed heartbeats)".to_owned()),
                }
            }
        };
        let outcome = relayed.await;
        self.upstream.unlinked();
        announcer.abort();
        let reason = match &outcome {
            Ok(()) => "the parent closed the link".to_owned(),
            Err(reason) => reason.clone(),
        };
        self.registry
            .detach(&attachment, DetachCause::Ended, &reason, None);
        outcome
    }

    async fn dial(&self) -> Result<Channel, String> {
        let parent = &self.join.parent;
        let scheme = if self.join.insecure { "http" } else { "https" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{parent}"))
            .map_err(|e| format!("parent address {parent:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20));
        if !self.join.insecure {
            let pki = self.tls.pki();
            let identity = pki.server();
            let ca = self.join.parent_ca_pem.as_deref().unwrap_or_default();
            let host = endpoint_host(parent).map_err(|error| error.to_string())?;
            endpoint = endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
                        .domain_name(host),
                )
                .map_err(|e| format!("TLS for the parent: {e}"))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach the parent at {parent}: {}", error_chain(&e)))
    }
}

/// An error and its causes, "a: b: c" (tonic's own display stops at the first).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn metadata_value(text: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
    text.parse()
        .map_err(|_| format!("{text:?} cannot be sent as request metadata"))
}

/// Tells the parent every alias this node knows (except the parent's own link), and
/// again after each change, so that the parent routes them down here.
async fn announce(
    registry: Arc<Registry>,
    mut parent: SupervisorClient<Channel>,
    node: String,
    alias: String,
    lease: String,
) {
    let mut events = registry.subscribe();
    loop {
        let upsert: Vec<_> = registry
            .list()
            .into_iter()
            .filter(|container| {
                container.spec.alias.as_str() != PARENT_LINK
                    && container
                        .task
                        .as_ref()
                        .is_none_or(|task| task.host.as_str() != PARENT_LINK)
            })
            .map(|container| hosted(container, &node))
            .collect();
        let count = upsert.len();
        let request = wire::HostRequest {
            alias: alias.clone(),
            lease: lease.clone(),
            upsert,
            remove: Vec::new(),
            replace: true,
        };
        match parent.host(request).await {
            Ok(answer) => {
                let results = answer.into_inner().results;
                forget_held_elsewhere(&registry, &results);
                let refused: Vec<_> = results
                    .into_iter()
                    .filter(|result| result.code != 0)
                    .map(|result| format!("{}: {}", result.alias, result.message))
                    .collect();
                if !refused.is_empty() {
                    tracing::warn!(
                        ?refused,
                        "the parent refused some of this node's aliases: other nodes cannot reach them"
                    );
                }
                tracing::debug!(count, "announced this node's containers to the parent");
            }
            // The link stream fails too; its end restarts everything.
            Err(status) => tracing::warn!(%status, "announcing containers to the parent failed"),
        }
        match events.recv().await {
            Err(RecvError::Closed) => return,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
        }
        tokio::time::sleep(ANNOUNCE_COALESCE).await;
        while events.try_recv().is_ok() {}
    }
}

/// Drops the routes to a child of this node for aliases the parent says belong to
/// another part of the tree: learned from the child's traffic, or taken while the link to
/// the parent was down (see [`crate::upstream`]). This node's own containers stay: they
/// are reachable from its subtree, and the warning says the rest of the tree cannot
/// reach them.
fn forget_held_elsewhere(registry: &Registry, results: &[wire::BatchResult]) {
    let held_elsewhere = results
        .iter()
        .filter(|result| result.code == tonic::Code::AlreadyExists as i32);
    for result in held_elsewhere {
        let Some(host) = registry
            .get(&result.alias)
            .and_then(|c| c.task)
            .map(|t| t.host)
        else {
            continue;
        };
        if host.as_str() != PARENT_LINK
            && let Ok(alias) = Alias::parse(&result.alias)
        {
            registry.refuse_route(&host, &alias);
        }
    }
}

/// A container of this node as the parent hosts it.
fn hosted(container: ContainerSnapshot, node: &str) -> wire::HostedTask {
    let restarts = match (&container.supervised, &container.task) {
        (Some(supervised), _) => supervised.restarts,
        (None, Some(task)) => task.restarts,
        (None, None) => 0,
    };
    let mut labels = container.spec.labels;
    labels
        .entry("reef.node".to_owned())
        .or_insert_with(|| node.to_owned());
    wire::HostedTask {
        alias: container.spec.alias.to_string(),
        name: container.spec.name,
        parent: container.spec.parent.map(String::from).unwrap_or_default(),
        restarts,
        labels: labels.into_iter().collect(),
    }
}
