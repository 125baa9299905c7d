//! Running a container: [`run`] attaches a [`Handler`] to the node, serves its endpoint
//! and feeds it envelopes until it stops.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use reef_proto::container_server::ContainerServer;
use tokio::{net::TcpListener, sync::mpsc};
use tonic::{
    Code,
    transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

use crate::{
    Client, ConnectOptions, Error, Handler, Tasks,
    client::{Delivery, EndpointCertificate, Registration},
    endpoint::{CommandCall, EndpointService, TheNode},
    handler::{Context, Counters, handle},
};

/// How a container presents itself.
#[derive(Debug, Clone)]
pub struct ContainerOptions {
    /// The alias to claim.
    pub alias: String,
    /// The behaviour's name.
    pub name: String,
    /// The parent's alias, if any.
    pub parent: Option<String>,
    /// How to reach the node.
    pub connect: ConnectOptions,
    /// The address the container's own endpoint binds (port chosen by the OS).
    pub endpoint_host: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// The credential of a container the node started (REEF_TOKEN).
    pub token: Option<String>,
    /// How long the container keeps trying to reach a lost node before it gives up and
    /// exits (Kraken's "parent unresponsive → destroy self"). A node that restarts
    /// within it adopts the container again.
    pub parent_timeout: Duration,
}

/// How long a container waits for a lost node by default.
pub const DEFAULT_PARENT_TIMEOUT: Duration = Duration::from_secs(30);

impl ContainerOptions {
    /// Options for container `alias` (also its behaviour's name) on the node `connect`
    /// describes, with its endpoint on 127.0.0.1.
    pub fn new(alias: &str, connect: ConnectOptions) -> Self {
        Self {
            alias: alias.to_owned(),
            name: alias.to_owned(),
            parent: None,
            connect,
            endpoint_host: "127.0.0.1".to_owned(),
            labels: BTreeMap::new(),
            token: None,
            parent_timeout: DEFAULT_PARENT_TIMEOUT,
        }
    }

    /// Options for behaviour `name` from the environment the node gives its children:
    /// `REEF_ALIAS` (default: `name`), `REEF_PARENT`, `REEF_NODE`, `REEF_CA`,
    /// `REEF_INSECURE`, `REEF_TOKEN`, `REEF_ENDPOINT_HOST` (default 127.0.0.1) and
    /// `REEF_PARENT_TIMEOUT_MS` (default 30 s).
    pub fn from_env(name: &str) -> Self {
        let var = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        Self {
            alias: var("REEF_ALIAS").unwrap_or_else(|| name.to_owned()),
            name: name.to_owned(),
            parent: var("REEF_PARENT"),
            connect: ConnectOptions::from_env(),
            endpoint_host: var("REEF_ENDPOINT_HOST").unwrap_or_else(|| "127.0.0.1".to_owned()),
            labels: BTreeMap::new(),
            token: var("REEF_TOKEN"),
            parent_timeout: var("REEF_PARENT_TIMEOUT_MS")
                .and_then(|ms| ms.parse().ok())
                .map_or(DEFAULT_PARENT_TIMEOUT, Duration::from_millis),
        }
    }
}

/// Runs `handler` as container `options.alias` until SIGTERM / Ctrl-C (returns `Ok`)
/// or until the node is lost (returns the error, so a supervisor restarts it).
pub async fn run<H: Handler>(options: ContainerOptions, mut handler: H) -> Result<(), Error> {
    let listener = TcpListener::bind((options.endpoint_host.as_str(), 0))
        .await
        .map_err(|e| {
            Error::Config(format!(
                "cannot bind the container endpoint on {}: {e}",
                options.endpoint_host
            ))
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("container endpoint has no address: {e}")))?
        .port();
    let endpoint = match options.endpoint_host.contains(':') {
        true => format!("[{}]:{port}", options.endpoint_host),
        false => format!("{}:{port}", options.endpoint_host),
    };
    let (client, certificate, mut inbox) = attach(&options, &endpoint).await?;

    let counters = Arc::new(Counters::default());
    let tasks = Tasks::new(counters.clone());
    tasks.attached(client.clone());
    let (commands_tx, mut commands) = mpsc::channel::<CommandCall>(16);
    // The CA the node's certificate chains to: what a caller of the endpoint is checked
    // against, and what tells which CA signed it.
    let ca = match &certificate {
        None => None,
        Some(_) => Some(std::fs::read(&options.connect.ca).map_err(|e| {
            Error::Config(format!(
                "cannot read the CA {}: {e}",
                options.connect.ca.display()
            ))
        })?),
    };
    let node = match (&certificate, &ca) {
        (Some(certificate), Some(ca)) => Some(TheNode::new(&certificate.node, ca)?),
        _ => None,
    };
    let service = EndpointService::new(
        client.alias(),
        &options.name,
        Instant::now(),
        counters.clone(),
        commands_tx,
        tasks.clone(),
        node,
    );
    // Small answers (pings) must not wait for Nagle and the peer's delayed ACK (40 ms).
    let mut server = Server::builder().tcp_nodelay(true);
    if let (Some(certificate), Some(ca)) = (certificate, ca) {
        // A caller's certificate is asked for and checked against the node's CA, but not
        // required: a pusher proves itself with a ticket, a ping needs no one. The
        // control calls check that it is the node's (`EndpointService`).
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                certificate.cert_pem,
                certificate.key_pem,
            ))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true);
        server = server
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("container endpoint TLS: {e}")))?;
    }
    let (stop_endpoint, endpoint_stopped) = tokio::sync::oneshot::channel::<()>();
    let endpoint_task = tokio::spawn(
        server
            .add_service(ContainerServer::new(service))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = endpoint_stopped.await;
                },
            ),
    );

    let mut ctx = Context {
        client: client.clone(),
        name: options.name.as_str().into(),
        tasks,
    };
    if let Err(error) = handler.on_start(&ctx).await {
        let _ = client.close().await;
        return Err(Error::Config(format!("on_start failed: {error}")));
    }
    tracing::info!(alias = %ctx.alias(), "container started");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            batch = inbox.recv() => match batch {
                Some(Delivery { envelopes, answers }) => {
                    let consumed = envelopes.len();
                    for envelope in envelopes {
                        if answers.is_none() && envelope.destination != ctx.alias() {
                            let sequence = envelope.sequence;
                            if let Some(refusal) = ctx.tasks.deliver(envelope) {
                                let _ = ctx.client.enqueue(refusal).await;
                                if sequence != 0 {
                                    ctx.client.ack(sequence).await;
                                }
                            }
                            continue;
                        }
                        handle(&mut handler, &ctx, &counters, envelope, answers.as_ref()).await;
                    }
                    if answers.is_none() {
                        ctx.client.consumed(consumed);
                    }
                }
                None => {
                    tracing::warn!(alias = %ctx.alias(), "lost the node; attaching again");
                    let reattached = tokio::select! {
                        reattached = reattach(&options, &endpoint) => reattached,
                        _ = &mut shutdown => break Ok(()),
                    };
                    match reattached {
                        Ok((client, new_inbox)) => {
                            tracing::info!(alias = %client.alias(), "attached again");
                            ctx.tasks.attached(client.clone());
                            ctx.client = client;
                            inbox = new_inbox;
                        }
                        Err(error) => break Err(error),
                    }
                }
            },
            Some(call) = commands.recv() => {
                let result = handler.on_command(&ctx, call.command).await;
                let _ = call.reply.send(result);
            }
            _ = &mut shutdown => break Ok(()),
        }
    };
    handler.on_stop(&ctx).await;
    let _ = stop_endpoint.send(());
    let _ = endpoint_task.await;
    if outcome.is_ok() {
        ctx.client.close().await?;
    }
    outcome
}

type Inbox = mpsc::Receiver<Delivery>;

/// Registers the container with its endpoint and opens the attach stream.
async fn attach(
    options: &ContainerOptions,
    endpoint: &str,
) -> Result<(Client, Option<EndpointCertificate>, Inbox), Error> {
    // One entry per frame: the reader hands over whole batches, not single envelopes.
    let (inbox_tx, inbox) = mpsc::channel::<Delivery>(64);
    let registration = Registration {
        alias: options.alias.clone(),
        name: options.name.clone(),
        parent: options.parent.clone(),
        endpoint: Some(endpoint.to_owned()),
        labels: options.labels.clone(),
        token: options.token.clone(),
    };
    let (client, certificate) =
        Client::attach(&options.connect, registration, Some(inbox_tx)).await?;
    Ok((client, certificate, inbox))
}

/// Attaches again after the node was lost (it may be restarting), retrying with
/// backoff for the parent timeout. The endpoint keeps serving with its certificate:
/// a restarted node keeps its CA.
async fn reattach(options: &ContainerOptions, endpoint: &str) -> Result<(Client, Inbox), Error> {
    let deadline = tokio::time::Instant::now() + options.parent_timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        match attach(options, endpoint).await {
            Ok((client, _, inbox)) => return Ok((client, inbox)),
            // The node answered and said no: retrying cannot help.
            Err(Error::Rejected(status))
                if matches!(
                    status.code(),
                    Code::PermissionDenied | Code::InvalidArgument | Code::AlreadyExists
                ) =>
            {
                return Err(Error::Rejected(status));
            }
            Err(error) if tokio::time::Instant::now() + delay >= deadline => {
                return Err(Error::Disconnected(format!(
                    "the node stayed unreachable for {:?} ({error}); giving up",
                    options.parent_timeout
                )));
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
