//! Writing a container: implement [`Handler`], call [`run`].

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use reef_proto::{Envelope, EnvelopeKind, container_server::ContainerServer};
use tokio::{net::TcpListener, sync::mpsc};
use tonic::{
    Code,
    transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming},
};
use tracing::Instrument as _;

use crate::{
    Cancellation, Client, ConnectOptions, Error, HandlerError, Tasks,
    client::{EndpointCertificate, Registration, error_envelope},
    endpoint::{CommandCall, EndpointService},
    request::{ServedRequests, with_deadline},
    trace,
};

/// A message or request as a handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Alias of the sender (set by the node, so it can be trusted).
    pub origin: String,
    /// The application data.
    pub payload: Bytes,
    /// MIME type of the payload, if the sender gave one.
    pub content_type: String,
    /// Metadata such as trace context.
    pub headers: BTreeMap<String, String>,
    /// For requests: the time left to answer. Requests the handler makes meanwhile
    /// get at most this much time (the deadline propagates).
    pub deadline: Option<Duration>,
    /// The envelope's id: for a request, what [`crate::Client::progress`] refers to.
    pub id: u64,
    /// For requests: whether the caller still waits.
    pub cancellation: Cancellation,
    /// Acknowledged mode ([`Client::send_acked`]): the message's number in this
    /// container's sequence, the same on every delivery of it; 0 otherwise.
    pub sequence: u64,
    /// Acknowledged mode: the message is delivered again because a previous process or
    /// stream of this container did not acknowledge it (it may have handled it).
    pub redelivered: bool,
    /// For requests: headers for the reply, shared with the dispatcher that sends it.
    reply_headers: Arc<parking_lot::Mutex<BTreeMap<String, String>>>,
}

impl Message {
    /// For requests: sets a header on the reply (the caller sees it with
    /// [`Client::call`]; `reef-gateway` takes `http.status` and `http.header.NAME` as the
    /// HTTP response's status and headers).
    pub fn set_reply_header(&self, key: impl Into<String>, value: impl Into<String>) {
        self.reply_headers.lock().insert(key.into(), value.into());
    }
}

impl From<Envelope> for Message {
    fn from(envelope: Envelope) -> Self {
        Self {
            deadline: (envelope.deadline_ms > 0)
                .then(|| Duration::from_millis(envelope.deadline_ms.into())),
            id: envelope.id,
            sequence: envelope.sequence,
            redelivered: envelope.redelivered,
            origin: envelope.origin,
            payload: envelope.payload,
            content_type: envelope.content_type,
            headers: envelope.headers,
            cancellation: Cancellation::default(),
            reply_headers: Arc::default(),
        }
    }
}

/// An operator command sent to the container's `Container.Command` RPC.
#[derive(Debug, Clone)]
pub struct Command {
    /// The command's name.
    pub name: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// What a handler can use while it handles something.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) client: Client,
    pub(crate) name: Arc<str>,
    pub(crate) tasks: Tasks,
}

impl Context {
    /// The container's alias.
    pub fn alias(&self) -> &str {
        self.client.alias()
    }

    /// The behaviour's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends and requests on behalf of this container.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The task containers this process hosts.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }
}

/// A container's behaviour. Calls happen one at a time, in arrival order, like an
/// Erlang process's mailbox, so `&mut self` needs no locks.
///
/// ```no_run
/// use reef_sdk::{Context, ContainerOptions, Handler, HandlerError, Message};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn on_request(&mut self, _: &Context, request: Message) -> Result<bytes::Bytes, HandlerError> {
///         Ok(request.payload)
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), reef_sdk::Error> {
///     reef_sdk::run(ContainerOptions::from_env("echo"), Echo).await
/// }
/// ```
pub trait Handler: Send + 'static {
    /// Runs once, after the container is attached and before any message.
    fn on_start(&mut self, ctx: &Context) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles a fire-and-forget message.
    fn on_message(&mut self, ctx: &Context, message: Message) -> impl Future<Output = ()> + Send {
        let _ = (ctx, message);
        async {}
    }

    /// Handles a request; the result goes back to the requester as REPLY or ERROR.
    fn on_request(
        &mut self,
        ctx: &Context,
        request: Message,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        let _ = (ctx, request);
        async { Err(HandlerError::unimplemented("requests")) }
    }

    /// Handles an operator command from `Container.Command`.
    fn on_command(
        &mut self,
        ctx: &Context,
        command: Command,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        let _ = ctx;
        let what = format!("the command {:?}", command.name);
        async move { Err(HandlerError::unimplemented(&what)) }
    }

    /// Runs once when the container stops (signal or lost node).
    fn on_stop(&mut self, ctx: &Context) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

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

/// Counters the container's endpoint reports in `Container.Status`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages: AtomicU64,
    pub requests: AtomicU64,
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
    let service = EndpointService::new(
        client.alias(),
        &options.name,
        Instant::now(),
        counters.clone(),
        commands_tx,
        tasks.clone(),
    );
    // Small answers (pings) must not wait for Nagle and the peer's delayed ACK (40 ms).
    let mut server = Server::builder().tcp_nodelay(true);
    if let Some(certificate) = certificate {
        server = server
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(
                certificate.cert_pem,
                certificate.key_pem,
            )))
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

/// What the handler loop takes from its inbox: envelopes from the node's stream
/// (`answers` = `None`: answers go back through the node, and the node's credit is
/// returned once they are handled) or from a push stream (answers go back on it).
pub(crate) struct Delivery {
    pub envelopes: Vec<Envelope>,
    pub answers: Option<mpsc::Sender<Envelope>>,
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

pub(crate) async fn handle<H: Handler>(
    handler: &mut H,
    ctx: &Context,
    counters: &Counters,
    envelope: Envelope,
    answers: Option<&mpsc::Sender<Envelope>>,
) {
    if !reef_frames::trace::exporting() {
        handle_in_span(handler, ctx, counters, envelope, answers).await;
        return;
    }
    let span = trace::incoming(&envelope);
    let handled = handle_in_span(handler, ctx, counters, envelope, answers);
    if !handled.instrument(span.clone()).await {
        trace::failed(&span);
    }
}

/// [`handle`]; false when the handler failed the request.
async fn handle_in_span<H: Handler>(
    handler: &mut H,
    ctx: &Context,
    counters: &Counters,
    envelope: Envelope,
    answers: Option<&mpsc::Sender<Envelope>>,
) -> bool {
    match envelope.kind() {
        EnvelopeKind::Send => {
            counters.messages.fetch_add(1, Relaxed);
            let sequence = envelope.sequence;
            handler.on_message(ctx, Message::from(envelope)).await;
            if sequence != 0 {
                ctx.client.ack(sequence).await;
            }
            true
        }
        EnvelopeKind::Request => {
            counters.requests.fetch_add(1, Relaxed);
            let id = envelope.id;
            let origin = envelope.origin.clone();
            let served = ctx.client.served();
            let mut request = Message::from(envelope);
            request.cancellation = served.token(&origin, id);
            if request.cancellation.is_cancelled() {
                // The caller gave up while this waited in the mailbox.
                served.abandon(&origin, id);
                return true;
            }
            // Forgets the request if the handler panics, so that a retry runs it again.
            let unanswered = Unanswered {
                served,
                origin: &origin,
                id,
            };
            let deadline = request
                .deadline
                .map(|left| tokio::time::Instant::now() + left);
            let reply_headers = request.reply_headers.clone();
            let outcome = with_deadline(deadline, handler.on_request(ctx, request)).await;
            unanswered.disarm();
            let answered = outcome.is_ok();
            let answer = match outcome {
                Ok(payload) => Envelope {
                    kind: EnvelopeKind::Reply as i32,
                    correlation_id: id,
                    destination: origin.clone(),
                    payload,
                    headers: std::mem::take(&mut *reply_headers.lock()),
                    ..Default::default()
                },
                Err(error) => {
                    let request = Envelope {
                        id,
                        origin: origin.clone(),
                        ..Default::default()
                    };
                    error_envelope(&request, error.code, &error.kind, &error.message)
                }
            };
            served.answered(&answer.destination, id, &answer);
            let sent = match answers {
                // Straight back on the push stream it came by.
                Some(answers) => reef_frames::enqueue(answers, answer)
                    .await
                    .map_err(|_| Error::Disconnected("the push stream closed".into())),
                None => ctx.client.enqueue(answer).await,
            };
            if let Err(error) = sent {
                tracing::warn!(%error, "could not send the answer");
            }
            answered
        }
        _ => true,
    }
}

/// A request being handled; dropped while unwinding from a panic, it is forgotten.
struct Unanswered<'a> {
    served: &'a ServedRequests,
    origin: &'a str,
    id: u64,
}

impl Unanswered<'_> {
    /// The handler returned: its answer will be remembered instead.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.served.abandon(self.origin, self.id);
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
