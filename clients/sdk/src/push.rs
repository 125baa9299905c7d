//! Direct push: a stream from this container straight to a peer's endpoint
//! (`Container.Push`), bypassing the node's router, with the same envelopes.
//!
//! The node only introduces the two: [`Client::push`] asks it for the peer's endpoint
//! and a single-use ticket; the peer redeems the ticket with its own node to learn who
//! is pushing, and stamps that alias as the origin of everything on the stream.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use parking_lot::Mutex;
use reef_frames::{FrameBatcher, FrameLimits};
use reef_proto::{
    CheckPushRequest, Envelope, EnvelopeKind, Frame, OpenPushRequest, PUSH_TICKET_METADATA,
    container_client::ContainerClient,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Status, Streaming};

use crate::{
    Client, Error,
    client::{Delivery, error_envelope, remote_error},
};

/// Envelopes a push stream queues before `send` waits.
const PUSH_OUTBOX: usize = 8192;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Envelope, Error>>>>>;

/// A direct stream to one peer container. Cheap to clone; the stream closes when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Push {
    client: Client,
    peer: Arc<str>,
    data: mpsc::Sender<Envelope>,
    waiting: Waiting,
    lost: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens a direct stream to `peer` (a process container with an endpoint). Sends
    /// and requests on it skip the node's router: no rules, groups, mailbox or
    /// acknowledged mode, and nothing is held while the peer restarts.
    pub async fn push(&self, peer: &str) -> Result<Push, Error> {
        let opened = self
            .supervisor()
            .open_push(OpenPushRequest {
                alias: self.host_alias().to_owned(),
                lease: self.lease().to_owned(),
                peer: peer.to_owned(),
            })
            .await
            .map_err(Error::Rejected)?
            .into_inner();
        let channel = self
            .connect_options()
            .connect_to_peer(&opened.endpoint, &reef_tls::container_identity(peer))
            .await?;
        let (data, data_rx) = mpsc::channel(PUSH_OUTBOX);
        let (_control, control_rx) = mpsc::channel(1);
        let mut request = tonic::Request::new(FrameBatcher::new(
            control_rx,
            data_rx,
            FrameLimits::default(),
        ));
        let ticket = opened
            .ticket
            .parse()
            .map_err(|_| Error::Config("the node sent a ticket that is not text".into()))?;
        request.metadata_mut().insert(PUSH_TICKET_METADATA, ticket);
        let answers = ContainerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .push(request)
            .await
            .map_err(Error::Rejected)?
            .into_inner();
        let push = Push {
            client: self.clone(),
            peer: peer.into(),
            data,
            waiting: Arc::default(),
            lost: Arc::default(),
        };
        tokio::spawn(read_answers(
            answers,
            push.waiting.clone(),
            push.lost.clone(),
        ));
        Ok(push)
    }
}

impl Push {
    /// The peer's alias.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends `payload` to the peer, fire-and-forget.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<(), Error> {
        let envelope = self.envelope(EnvelopeKind::Send, payload.into());
        self.enqueue(envelope).await
    }

    /// Sends a request to the peer and waits up to `timeout` for the reply's payload.
    pub async fn request(
        &self,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        let mut envelope = self.envelope(EnvelopeKind::Request, payload.into());
        envelope.deadline_ms = timeout.as_millis().clamp(1, u32::MAX as u128) as u32;
        let id = envelope.id;
        let (slot, answer) = oneshot::channel();
        self.waiting().insert(id, slot);
        if let Err(error) = self.enqueue(envelope).await {
            self.waiting().remove(&id);
            return Err(error);
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer.map(|envelope| envelope.payload),
            Ok(Err(_)) => Err(self.disconnected()),
            Err(_) => {
                self.waiting().remove(&id);
                Err(Error::Timeout(timeout))
            }
        }
    }

    fn envelope(&self, kind: EnvelopeKind, payload: Bytes) -> Envelope {
        Envelope {
            kind: kind as i32,
            id: self.client.next_id(),
            destination: self.peer.to_string(),
            payload,
            ..Default::default()
        }
    }

    async fn enqueue(&self, envelope: Envelope) -> Result<(), Error> {
        if self.lost.get().is_some() {
            return Err(self.disconnected());
        }
        reef_frames::enqueue(&self.data, envelope)
            .await
            .map_err(|_| self.disconnected())
    }

    fn waiting(
        &self,
    ) -> parking_lot::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Envelope, Error>>>> {
        self.waiting.lock()
    }

    fn disconnected(&self) -> Error {
        let why = self
            .lost
            .get()
            .cloned()
            .unwrap_or_else(|| "the stream closed".into());
        Error::Disconnected(format!("push stream to {}: {why}", self.peer))
    }
}

/// Completes requests with the answers the peer sends back.
async fn read_answers(
    mut answers: Streaming<Frame>,
    waiting: Waiting,
    lost: Arc<OnceLock<String>>,
) {
    let why = loop {
        match answers.message().await {
            Ok(Some(frame)) => {
                for envelope in frame.envelopes {
                    let id = envelope.correlation_id;
                    let answer = match envelope.kind() {
                        EnvelopeKind::Reply => Ok(envelope),
                        EnvelopeKind::Error => Err(remote_error(&envelope)),
                        _ => continue,
                    };
                    let slot = waiting.lock().remove(&id);
                    if let Some(slot) = slot {
                        let _ = slot.send(answer);
                    }
                }
            }
            Ok(None) => break "the peer closed it".to_owned(),
            Err(status) => break format!("{:?}: {}", status.code(), status.message()),
        }
    };
    let _ = lost.set(why.clone());
    for (_, slot) in waiting.lock().drain() {
        let _ = slot.send(Err(Error::Disconnected(why.clone())));
    }
}

/// The response stream of `Container.Push`: answers to the pusher's requests.
pub(crate) type Answers = std::pin::Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

/// Serves a push stream opened on this container's endpoint: redeems `ticket` with the
/// node, then hands what arrives to the handler loop, with a way back for answers.
pub(crate) async fn serve(
    client: Client,
    ticket: &str,
    mut frames: Streaming<Frame>,
) -> Result<Answers, Status> {
    let pusher = client
        .supervisor()
        .check_push(CheckPushRequest {
            alias: client.host_alias().to_owned(),
            lease: client.lease().to_owned(),
            ticket: ticket.to_owned(),
        })
        .await?
        .into_inner()
        .origin;
    // Weak: an open push stream must not keep the handler loop from noticing that the
    // node's stream ended. After a re-attach this stream ends; the pusher opens another.
    let inbox = client
        .inbox()
        .ok_or_else(|| Status::failed_precondition("this alias handles no messages"))?
        .downgrade();
    let (answers, answers_rx) = mpsc::channel(PUSH_OUTBOX);
    let (_control, control_rx) = mpsc::channel(1);
    let me = client.host_alias().to_owned();
    tokio::spawn(async move {
        while let Ok(Some(frame)) = frames.message().await {
            let mut envelopes = Vec::with_capacity(frame.envelopes.len());
            for mut envelope in frame.envelopes {
                envelope.origin.clone_from(&pusher);
                match envelope.kind() {
                    EnvelopeKind::Send | EnvelopeKind::Request if envelope.destination == me => {
                        envelope.sequence = 0;
                        envelopes.push(envelope);
                    }
                    EnvelopeKind::Request => {
                        let message =
                            format!("this stream reaches {me}, not {}", envelope.destination);
                        let refusal = error_envelope(&envelope, Code::NotFound, "", &message);
                        if reef_frames::enqueue(&answers, refusal).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
            let delivery = Delivery {
                envelopes,
                answers: Some(answers.clone()),
            };
            if delivery.envelopes.is_empty() {
                continue;
            }
            let Some(inbox) = inbox.upgrade() else {
                return;
            };
            if inbox.send(delivery).await.is_err() {
                return;
            }
        }
    });
    let stream = FrameBatcher::new(control_rx, answers_rx, FrameLimits::default()).map(Ok);
    Ok(Box::pin(stream))
}
