//! A connection to a node: registration, the attach stream, sends and requests.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use parking_lot::Mutex;
use reef_frames::{Credit, FrameBatcher, FrameLimits};
use reef_proto::{
    ALIAS_METADATA, CREDIT_METADATA, DeregisterRequest, Envelope, EnvelopeKind, ErrorCode, Frame,
    LEASE_METADATA, RegisterRequest, channel_client::ChannelClient,
    supervisor_client::SupervisorClient,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Code, Streaming, metadata::MetadataValue, transport::Channel};
use tracing::Instrument as _;

use crate::{
    ConnectOptions, Error, Message, RequestOptions, SendOptions,
    request::{Admission, ServedRequests, propagate_deadline},
    trace,
};

mod dispatch;

/// Extra time the client waits beyond a request's deadline for the node's own
/// DEADLINE_EXCEEDED, which carries the better message.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);
/// Envelopes the client queues before `send` waits.
const OUTBOX_CAPACITY: usize = 8192;
/// The frame limit of a node that does not say its own (RegisterResponse.max_frame_bytes).
const DEFAULT_MAX_FRAME_BYTES: usize = 8 << 20;
/// Envelopes the node may send before the container has consumed them (credit-based
/// flow control): what a slow handler lets pile up in this process.
const INBOX_CREDIT: u32 = 8192;

/// What a container tells the node about itself when it registers.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The alias to claim.
    pub alias: String,
    /// The behaviour it runs.
    pub name: String,
    /// Its parent's alias.
    pub parent: Option<String>,
    /// Where it serves `reef.v1.Container` (`host:port`).
    pub endpoint: Option<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// The credential a node gives the processes it starts (REEF_TOKEN).
    pub token: Option<String>,
}

/// A certificate the node issued for the container's endpoint.
#[derive(Debug, Clone)]
pub(crate) struct EndpointCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    /// The node that issued it, the only caller of the endpoint's control calls.
    pub node: String,
}

/// A request's answer with its headers ([`Client::call`]).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The reply's payload.
    pub payload: Bytes,
    /// What the callee set with [`Message::set_reply_header`].
    pub headers: BTreeMap<String, String>,
}

/// A handle to an attached alias: send messages and make requests through the node.
///
/// Cheap to clone; the attach stream closes when the last clone is dropped or on
/// [`Client::close`].
///
/// ```no_run
/// # async fn demo() -> Result<(), reef_sdk::Error> {
/// use std::time::Duration;
/// use reef_sdk::{Client, ConnectOptions};
///
/// let client = Client::connect(&ConnectOptions::from_env()).await?;
/// client.send("counter", "tick").await?;
/// let reply = client.request("echo", "hello", Duration::from_secs(2)).await?;
/// assert_eq!(&reply[..], b"hello");
/// client.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// For a task container: its alias, the origin of what it sends through its host.
    task: Option<Arc<str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("alias", &self.alias())
            .finish_non_exhaustive()
    }
}

struct Shared {
    alias: String,
    lease: String,
    data: mpsc::Sender<Envelope>,
    dispatch: Arc<Dispatch>,
    next_id: AtomicU64,
    max_payload: usize,
    supervisor: SupervisorClient<Channel>,
    /// How this client reached its node (and reaches peers' endpoints).
    options: ConnectOptions,
    /// Where the handler loop takes deliveries (containers only): push streams feed it.
    /// Weak, so that the inbox closes when the reader ends: that is how the handler
    /// loop learns that the node is lost.
    inbox: Option<mpsc::WeakSender<Delivery>>,
}

/// Where the reader puts the answer to one request, and PROGRESS extensions (ms).
struct ReplySlot {
    answer: oneshot::Sender<Result<Envelope, Error>>,
    progress: Option<watch::Sender<u32>>,
}

/// What the reader task needs: where answers go, and the control lane.
struct Dispatch {
    pending: Mutex<HashMap<u64, ReplySlot>>,
    /// Requests this container received: de-duplication and cancellation.
    served: ServedRequests,
    control: mpsc::Sender<Envelope>,
    /// Credit to return to the node as envelopes are consumed.
    grants: Arc<Credit>,
    undelivered: AtomicU64,
    /// Why the last undelivered send was refused.
    last_refusal: Mutex<Option<String>>,
    /// Why the stream ended, once it has: set once, read without a lock on every send.
    lost: OnceLock<String>,
}

impl Client {
    /// Connects as a plain client under a fresh `client/…` alias.
    pub async fn connect(options: &ConnectOptions) -> Result<Self, Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let alias = format!("client/{}-{nanos:x}", std::process::id());
        Self::connect_as(options, &alias).await
    }

    /// Connects as a plain client under `alias`. Requests sent to it are refused.
    pub async fn connect_as(options: &ConnectOptions, alias: &str) -> Result<Self, Error> {
        let registration = Registration {
            alias: alias.to_owned(),
            name: "client".to_owned(),
            ..Default::default()
        };
        let (client, _) = Self::attach(options, registration, None).await?;
        Ok(client)
    }

    /// Registers, attaches and starts the reader. Sends and requests for this alias go
    /// to `inbox` when given (containers) and are refused otherwise (plain clients).
    pub(crate) async fn attach(
        options: &ConnectOptions,
        registration: Registration,
        inbox: Option<mpsc::Sender<Delivery>>,
    ) -> Result<(Self, Option<EndpointCertificate>), Error> {
        let channel = options.connect().await?;
        let mut supervisor = SupervisorClient::new(channel.clone());
        let granted = supervisor
            .register(RegisterRequest {
                alias: registration.alias.clone(),
                name: registration.name,
                parent: registration.parent.unwrap_or_default(),
                endpoint: registration.endpoint.unwrap_or_default(),
                pid: std::process::id(),
                labels: registration.labels.into_iter().collect(),
                token: registration.token.unwrap_or_default(),
            })
            .await
            .map_err(Error::Rejected)?
            .into_inner();
        let (data, data_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (control, control_rx) = mpsc::channel(64);
        // Frames stay below the node's frame limit (a larger one ends the stream); one
        // envelope larger than the budget still travels, alone.
        let max_frame = match granted.max_frame_bytes {
            0 => DEFAULT_MAX_FRAME_BYTES,
            bytes => bytes as usize,
        };
        let limits = FrameLimits {
            max_bytes: (granted.max_payload_bytes as usize)
                .max(FrameLimits::default().max_bytes)
                .min(max_frame / 2),
            ..FrameLimits::default()
        };
        let grants = Credit::new(0);
        let frames = FrameBatcher::new(control_rx, data_rx, limits).with_grants(grants.clone());
        let mut request = tonic::Request::new(frames);
        let metadata = request.metadata_mut();
        metadata.insert(ALIAS_METADATA, ascii(&registration.alias)?);
        metadata.insert(LEASE_METADATA, ascii(&granted.lease)?);
        metadata.insert(CREDIT_METADATA, ascii(&INBOX_CREDIT.to_string())?);
        let frames = ChannelClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .attach(request)
            .await
            .map_err(Error::Rejected)?
            .into_inner();
        let dispatch = Arc::new(Dispatch {
            pending: Mutex::new(HashMap::new()),
            served: ServedRequests::default(),
            control,
            grants,
            undelivered: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            lost: OnceLock::new(),
        });
        // The node sends heartbeats every interval: silence past its timeout means the
        // node hangs or the network dropped us, even if the connection looks open.
        let silence = Duration::from_millis(granted.heartbeat_timeout_ms.max(1).into());
        let weak_inbox = inbox.as_ref().map(mpsc::Sender::downgrade);
        tokio::spawn(read(frames, dispatch.clone(), inbox, silence));
        let certificate = (!granted.endpoint_cert_pem.is_empty()).then_some(EndpointCertificate {
            cert_pem: granted.endpoint_cert_pem,
            key_pem: granted.endpoint_key_pem,
            node: granted.node,
        });
        let client = Self {
            shared: Arc::new(Shared {
                alias: registration.alias,
                lease: granted.lease,
                data,
                dispatch,
                // From the clock, so that a restarted process does not reuse the ids of
                // its previous life (callees de-duplicate by origin and id).
                next_id: AtomicU64::new(first_id()),
                max_payload: granted.max_payload_bytes as usize,
                supervisor,
                options: options.clone(),
                inbox: weak_inbox,
            }),
            task: None,
        };
        Ok((client, certificate))
    }

    /// The alias this client sends as: its own, or a task's.
    pub fn alias(&self) -> &str {
        self.task.as_deref().unwrap_or(&self.shared.alias)
    }

    /// The same connection, sending as task `alias` (which this process hosts).
    pub(crate) fn for_task(&self, alias: Arc<str>) -> Self {
        Self {
            shared: self.shared.clone(),
            task: Some(alias),
        }
    }

    /// The alias the attach stream belongs to (the host's, for a task).
    pub(crate) fn host_alias(&self) -> &str {
        &self.shared.alias
    }

    /// How this client reached its node.
    pub(crate) fn connect_options(&self) -> &ConnectOptions {
        &self.shared.options
    }

    /// The handler loop's inbox, for a container.
    pub(crate) fn inbox(&self) -> Option<mpsc::Sender<Delivery>> {
        self.shared.inbox.as_ref()?.upgrade()
    }

    /// A fresh envelope id.
    pub(crate) fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Relaxed)
    }

    /// The registration's lease.
    pub(crate) fn lease(&self) -> &str {
        &self.shared.lease
    }

    /// The node's control-plane API on the same connection.
    pub fn supervisor(&self) -> SupervisorClient<Channel> {
        self.shared.supervisor.clone()
    }

    /// Reports a failure of this container to its node, which applies the container's
    /// solver chain for `error_type` (e.g. "db.timeout"; "db" solvers match it too).
    pub async fn fail(&self, error_type: &str, message: &str) -> Result<(), Error> {
        self.supervisor()
            .fail(reef_proto::FailRequest {
                alias: self.shared.alias.clone(),
                lease: self.shared.lease.clone(),
                error_type: error_type.to_owned(),
                message: message.to_owned(),
            })
            .await
            .map_err(Error::Rejected)?;
        Ok(())
    }

    /// Sends `payload` to `to`, fire-and-forget. Returns once the envelope is queued;
    /// if the node cannot deliver it, [`Client::undelivered`] counts it.
    pub async fn send(&self, to: &str, payload: impl Into<Bytes>) -> Result<(), Error> {
        let envelope = self.envelope(EnvelopeKind::Send, to, payload.into())?;
        self.enqueue_traced(envelope).await
    }

    /// Sends `payload` to `to` in acknowledged mode: the node keeps it until the
    /// receiver's handler has handled it, and delivers it again, in order, to the
    /// receiver's next process if it dies first. Returns once the envelope is queued.
    /// The receiver sees [`Message::sequence`] and [`Message::redelivered`], by which it
    /// de-duplicates what it does.
    pub async fn send_acked(&self, to: &str, payload: impl Into<Bytes>) -> Result<(), Error> {
        let mut envelope = self.envelope(EnvelopeKind::Send, to, payload.into())?;
        envelope.acknowledged = true;
        self.enqueue_traced(envelope).await
    }

    /// Sends `payload` to `to` with headers, a content type, and optionally in
    /// acknowledged mode (see [`SendOptions`]).
    pub async fn send_with(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        options: &SendOptions,
    ) -> Result<(), Error> {
        let mut envelope = self.envelope(EnvelopeKind::Send, to, payload.into())?;
        envelope.headers.clone_from(&options.headers);
        envelope.content_type.clone_from(&options.content_type);
        envelope.acknowledged = options.acknowledged;
        self.enqueue_traced(envelope).await
    }

    /// Queues a SEND inside its own span (see [`crate::trace`]).
    async fn enqueue_traced(&self, mut envelope: Envelope) -> Result<(), Error> {
        if !reef_frames::trace::exporting() {
            return self.enqueue(envelope).await;
        }
        let span = trace::outgoing(&mut envelope);
        let sent = self.enqueue(envelope).instrument(span.clone()).await;
        if sent.is_err() {
            trace::failed(&span);
        }
        sent
    }

    /// Tells the node that acknowledged-mode envelope `sequence` was handled.
    pub(crate) async fn ack(&self, sequence: u64) {
        let ack = Envelope {
            kind: EnvelopeKind::Ack as i32,
            correlation_id: sequence,
            ..Default::default()
        };
        // A lost stream loses the ACK too: the node delivers the envelope again.
        let _ = self.enqueue(ack).await;
    }

    /// Sends a request and waits up to `timeout` for the reply's payload. Inside a
    /// handler answering a request, `timeout` is cut to what is left of that request's
    /// deadline.
    pub async fn request(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        self.request_with(to, payload, &RequestOptions::new(timeout))
            .await
    }

    /// Sends a request with headers and retries (see [`RequestOptions`]). Dropping the
    /// future, or running out of time, cancels the request: the callee's handler sees it
    /// through [`Message::cancellation`].
    pub async fn request_with(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        options: &RequestOptions,
    ) -> Result<Bytes, Error> {
        self.call(to, payload, options)
            .await
            .map(|reply| reply.payload)
    }

    /// [`Client::request_with`], answered with the reply's headers too (those the
    /// callee set with [`Message::set_reply_header`]).
    pub async fn call(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        options: &RequestOptions,
    ) -> Result<Reply, Error> {
        let mut envelope = self.envelope(EnvelopeKind::Request, to, payload.into())?;
        envelope.headers.clone_from(&options.headers);
        if !reef_frames::trace::exporting() {
            return self.attempt_all(envelope, to, options).await;
        }
        let span = trace::outgoing(&mut envelope);
        let reply = self
            .attempt_all(envelope, to, options)
            .instrument(span.clone())
            .await;
        if reply.is_err() {
            trace::failed(&span);
        }
        reply
    }

    /// Sends the request, and again while it fails in a way `options` retries.
    async fn attempt_all(
        &self,
        mut envelope: Envelope,
        to: &str,
        options: &RequestOptions,
    ) -> Result<Reply, Error> {
        let mut attempt = 0;
        loop {
            let timeout = propagate_deadline(options.timeout);
            envelope.deadline_ms = timeout.as_millis().clamp(1, u32::MAX as u128) as u32;
            if options.retries > 0 {
                let left = (options.retries - attempt).to_string();
                envelope
                    .headers
                    .insert(reef_proto::ATTEMPTS_LEFT_HEADER.to_owned(), left);
            }
            // The last attempt sends the envelope itself; earlier ones send copies.
            let attempt_envelope = match attempt < options.retries {
                true => envelope.clone(),
                false => std::mem::take(&mut envelope),
            };
            match self.await_answer(attempt_envelope, timeout, true).await {
                Ok(answer) => {
                    return Ok(Reply {
                        payload: answer.payload,
                        headers: answer.headers,
                    });
                }
                Err(error) if attempt < options.retries && retryable(&error) => {
                    attempt += 1;
                    tracing::debug!(%to, attempt, %error, "retrying the request");
                    tokio::time::sleep(options.retry_interval).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends `envelope` and waits for the envelope that answers its id. For a request
    /// (`progress`), PROGRESS from the callee moves the deadline.
    async fn await_answer(
        &self,
        envelope: Envelope,
        timeout: Duration,
        progress: bool,
    ) -> Result<Envelope, Error> {
        let id = envelope.id;
        let (answer_tx, mut answer) = oneshot::channel();
        let (progress_tx, mut extended) = watch::channel(0u32);
        let slot = ReplySlot {
            answer: answer_tx,
            progress: progress.then_some(progress_tx),
        };
        self.shared.dispatch.pending().insert(id, slot);
        // Cancels the request if this future is dropped or gives up before the answer.
        let mut waiting = Waiting {
            client: self,
            id,
            cancel: progress,
        };
        self.enqueue(envelope).await?;
        let mut deadline = tokio::time::Instant::now() + timeout + DEADLINE_GRACE;
        let outcome = loop {
            tokio::select! {
                answer = &mut answer => break match answer {
                    Ok(answer) => answer,
                    Err(_) => Err(self.disconnected()),
                },
                Ok(()) = extended.changed() => {
                    let budget = Duration::from_millis((*extended.borrow_and_update()).into());
                    deadline = tokio::time::Instant::now() + budget + DEADLINE_GRACE;
                }
                _ = tokio::time::sleep_until(deadline) => return Err(Error::Timeout(timeout)),
            }
        };
        waiting.cancel = false;
        outcome
    }

    /// Tells the caller of `request` that it is still being worked on: the node and the
    /// caller wait `more` from now (capped by the node's maximum request timeout).
    pub async fn progress(&self, request: &Message, more: Duration) -> Result<(), Error> {
        let envelope = Envelope {
            kind: EnvelopeKind::Progress as i32,
            correlation_id: request.id,
            destination: request.origin.clone(),
            deadline_ms: more.as_millis().clamp(1, u32::MAX as u128) as u32,
            ..Default::default()
        };
        self.enqueue(envelope).await
    }

    /// Waits until the node has routed everything this client sent before the call, so
    /// that any ERROR for those sends has arrived (see [`Client::undelivered`]).
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let barrier = self.envelope(EnvelopeKind::Heartbeat, "", Bytes::new())?;
        self.await_answer(barrier, timeout, false).await.map(drop)
    }

    /// Returns credit for `envelopes` the handler has consumed, so the node sends more.
    pub(crate) fn consumed(&self, envelopes: usize) {
        self.shared.dispatch.grants.add(envelopes as u64);
    }

    /// The callee side of requests: de-duplication and cancellation.
    pub(crate) fn served(&self) -> &ServedRequests {
        &self.shared.dispatch.served
    }

    /// Sends an already-built envelope (replies from handlers). The node sets the
    /// origin to the stream's alias, unless it names a task of this process.
    pub(crate) async fn enqueue(&self, mut envelope: Envelope) -> Result<(), Error> {
        if let Some(task) = &self.task
            && envelope.origin.is_empty()
        {
            envelope.origin = task.to_string();
        }
        if self.is_disconnected() {
            return Err(self.disconnected());
        }
        if envelope.payload.len() > self.shared.max_payload {
            return Err(Error::PayloadTooLarge {
                size: envelope.payload.len(),
                limit: self.shared.max_payload,
            });
        }
        reef_frames::enqueue(&self.shared.data, envelope)
            .await
            .map_err(|_| self.disconnected())
    }

    /// Sends that the node could not deliver (unknown or vanished destination, full
    /// mailbox, payload too large), as reported back by the node.
    pub fn undelivered(&self) -> u64 {
        self.shared.dispatch.undelivered.load(Relaxed)
    }

    /// Why the node refused the latest send it could not deliver, if any did.
    pub fn last_undelivered(&self) -> Option<String> {
        let last = &self.shared.dispatch.last_refusal;
        last.lock().clone()
    }

    /// Whether the attach stream has ended.
    pub fn is_disconnected(&self) -> bool {
        self.shared.dispatch.lost.get().is_some()
    }

    /// Releases the alias and closes the attach stream.
    pub async fn close(self) -> Result<(), Error> {
        let mut supervisor = self.shared.supervisor.clone();
        let result = supervisor
            .deregister(DeregisterRequest {
                alias: self.shared.alias.clone(),
                lease: self.shared.lease.clone(),
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already gone (e.g. the node detached us): nothing left to release.
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(Error::Rejected(status)),
        }
    }

    fn envelope(&self, kind: EnvelopeKind, to: &str, payload: Bytes) -> Result<Envelope, Error> {
        Ok(Envelope {
            kind: kind as i32,
            id: self.shared.next_id.fetch_add(1, Relaxed),
            destination: to.to_owned(),
            payload,
            ..Default::default()
        })
    }

    fn disconnected(&self) -> Error {
        let reason = self.shared.dispatch.lost.get();
        Error::Disconnected(
            reason.map_or_else(|| "the attach stream closed".to_owned(), Clone::clone),
        )
    }
}

/// A request in flight; dropped before its answer arrived, it is cancelled.
struct Waiting<'a> {
    client: &'a Client,
    id: u64,
    cancel: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.client.shared.dispatch.pending().remove(&self.id);
        if self.cancel {
            let cancel = Envelope {
                kind: EnvelopeKind::Cancel as i32,
                correlation_id: self.id,
                ..Default::default()
            };
            // Best effort: the node's deadline covers a cancel that finds no room.
            let _ = self.client.shared.data.try_send(cancel);
        }
    }
}

/// Failures a retry may put right: the callee was slow, restarting or overloaded.
fn retryable(error: &Error) -> bool {
    matches!(
        error.code(),
        Code::DeadlineExceeded | Code::Unavailable | Code::ResourceExhausted
    )
}

fn first_id() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        .max(1)
}

impl Dispatch {}

async fn read(
    mut frames: Streaming<Frame>,
    dispatch: Arc<Dispatch>,
    inbox: Option<mpsc::Sender<Delivery>>,
    silence: Duration,
) {
    let reason = loop {
        let Ok(frame) = tokio::time::timeout(silence, frames.message()).await else {
            break format!("the node has been silent for {} ms", silence.as_millis());
        };
        match frame {
            Ok(Some(frame)) => {
                // Heartbeats cost no credit: the node's own and its answers to ours.
                let data = frame
                    .envelopes
                    .iter()
                    .filter(|e| e.kind() != EnvelopeKind::Heartbeat)
                    .count();
                let for_handler = dispatch.dispatch_frame(frame, inbox.is_some());
                // What the reader handled itself is consumed; the handler returns the
                // credit for the rest as it takes them.
                dispatch.grants.add((data - for_handler.len()) as u64);
                let delivery = Delivery {
                    envelopes: for_handler,
                    answers: None,
                };
                if let Some(inbox) = &inbox
                    && !delivery.envelopes.is_empty()
                    && inbox.send(delivery).await.is_err()
                {
                    break "the container stopped handling messages".to_owned();
                }
            }
            Ok(None) => break "the node closed the attach stream".to_owned(),
            Err(status) => break format!("{:?}: {}", status.code(), status.message()),
        }
    };
    tracing::debug!(%reason, "attach stream ended");
    dispatch.fail_all(reason);
}

/// The SDK error an ERROR envelope describes.
pub(crate) fn remote_error(envelope: &Envelope) -> Error {
    let error = envelope.error.clone().unwrap_or_default();
    Error::Remote {
        code: Code::from_i32(error.code),
        kind: error.r#type,
        message: error.message,
    }
}

/// An ERROR answering `request`.
pub(crate) fn error_envelope(
    request: &Envelope,
    code: Code,
    kind: &str,
    message: &str,
) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Error as i32,
        correlation_id: request.id,
        destination: request.origin.clone(),
        error: Some(Box::new(reef_proto::Error {
            code: code as i32,
            r#type: kind.to_owned(),
            message: message.to_owned(),
        })),
        ..Default::default()
    }
}

fn ascii(value: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, Error> {
    value
        .parse()
        .map_err(|_| Error::Config(format!("{value:?} cannot be sent as request metadata")))
}

// The wire code numbers are gRPC's; this keeps the two tables from drifting apart.
const _: () = assert!(ErrorCode::Unauthenticated as i32 == Code::Unauthenticated as i32);

/// What the handler loop takes from its inbox: envelopes from the node's stream
/// (`answers` = `None`: answers go back through the node, and the node's credit is
/// returned once they are handled) or from a push stream (answers go back on it).
pub(crate) struct Delivery {
    pub envelopes: Vec<Envelope>,
    pub answers: Option<mpsc::Sender<Envelope>>,
}
