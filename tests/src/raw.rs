//! An attach stream driven frame by frame, for tests of the wire contract itself.

use super::*;

/// An attach stream driven by hand, bypassing the SDK, to send what the SDK never
/// would (oversized payloads, unknown kinds, forged origins) and to watch raw frames.
pub struct RawAttach {
    /// The registered alias.
    pub alias: String,
    /// The lease from registration.
    pub lease: String,
    /// What the node answered to the registration.
    pub registered: reef_proto::RegisterResponse,
    tx: tokio::sync::mpsc::Sender<reef_proto::Frame>,
    rx: tonic::Streaming<reef_proto::Frame>,
    /// Envelopes read from frames but not yet returned, in order.
    buffered: std::collections::VecDeque<reef_proto::Envelope>,
}

impl RawAttach {
    /// Registers `alias` on `node` and attaches by hand.
    pub async fn open(node: &TestNode, alias: &str) -> Self {
        Self::open_as(node, alias, node.options()).await
    }

    /// Registers `alias` on `node` as its administrator, and attaches by hand with
    /// `attach` (another certificate, or none: a container that proves its alias with
    /// the lease alone).
    pub async fn open_as(node: &TestNode, alias: &str, attach: ConnectOptions) -> Self {
        Self::open_with(node, alias, attach, &[]).await
    }

    /// Registers and attaches `alias` granting the node `credit` envelopes
    /// (`reef-credit`): further envelopes wait for [`RawAttach::grant`].
    pub async fn open_with_credit(node: &TestNode, alias: &str, credit: u32) -> Self {
        let credit = credit.to_string();
        Self::open_with(
            node,
            alias,
            node.options(),
            &[(reef_proto::CREDIT_METADATA, &credit)],
        )
        .await
    }

    /// Registers `alias` as the node's administrator and attaches with `attach` and
    /// extra attach `metadata`.
    pub async fn open_with(
        node: &TestNode,
        alias: &str,
        attach: ConnectOptions,
        metadata: &[(&'static str, &str)],
    ) -> Self {
        let admin = node.options().connect().await.expect("connect");
        let channel = attach.connect().await.expect("connect");
        let registered = SupervisorClient::new(admin)
            .register(reef_proto::RegisterRequest {
                alias: alias.to_owned(),
                name: "raw".to_owned(),
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner();
        let lease = registered.lease.clone();
        let (tx, frames) = tokio::sync::mpsc::channel(16);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(frames));
        request.metadata_mut().insert(
            reef_proto::ALIAS_METADATA,
            alias.parse().expect("ascii alias"),
        );
        request.metadata_mut().insert(
            reef_proto::LEASE_METADATA,
            lease.parse().expect("ascii lease"),
        );
        for (key, value) in metadata {
            request
                .metadata_mut()
                .insert(*key, value.parse().expect("ascii metadata"));
        }
        let rx = reef_proto::channel_client::ChannelClient::new(channel)
            .attach(request)
            .await
            .expect("attach")
            .into_inner();
        Self {
            alias: alias.to_owned(),
            lease,
            registered,
            tx,
            rx,
            buffered: Default::default(),
        }
    }

    /// Sends one frame holding `envelopes`.
    pub async fn send(&self, envelopes: Vec<reef_proto::Envelope>) {
        self.send_frame(reef_proto::Frame {
            envelopes,
            credit: 0,
        })
        .await;
    }

    /// Sends `frame` as it is.
    pub async fn send_frame(&self, frame: reef_proto::Frame) {
        self.tx.send(frame).await.expect("attach stream open");
    }

    /// Grants the node `credit` more envelopes (an empty frame carrying `Frame.credit`).
    pub async fn grant(&self, credit: u32) {
        self.send_frame(reef_proto::Frame {
            envelopes: Vec::new(),
            credit,
        })
        .await;
    }

    /// The next envelope that is not a heartbeat, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> reef_proto::Envelope {
        self.next_where(timeout, |e| e.kind() != reef_proto::EnvelopeKind::Heartbeat)
            .await
            .expect("an envelope within the timeout")
    }

    /// The next envelope but the node's own heartbeats (answers to ours included),
    /// within `timeout`.
    pub async fn next_answer(&mut self, timeout: Duration) -> reef_proto::Envelope {
        self.quiet(timeout)
            .await
            .expect("an envelope within the timeout")
    }

    /// Like [`RawAttach::next_answer`], but `None` if nothing comes within `timeout`:
    /// for checking that nothing (more) arrives.
    pub async fn quiet(&mut self, timeout: Duration) -> Option<reef_proto::Envelope> {
        self.next_where(timeout, |e| {
            !(e.kind() == reef_proto::EnvelopeKind::Heartbeat && e.correlation_id == 0)
        })
        .await
    }

    async fn next_where(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&reef_proto::Envelope) -> bool,
    ) -> Option<reef_proto::Envelope> {
        let read = async {
            loop {
                while let Some(envelope) = self.buffered.pop_front() {
                    if wanted(&envelope) {
                        return envelope;
                    }
                }
                let frame = self
                    .rx
                    .message()
                    .await
                    .expect("stream healthy")
                    .expect("stream open");
                self.buffered.extend(frame.envelopes);
            }
        };
        tokio::time::timeout(timeout, read).await.ok()
    }

    /// Reads until the node ends the stream and returns how it ended.
    pub async fn end(&mut self, timeout: Duration) -> Result<(), tonic::Status> {
        self.end_with_trailers(timeout).await.map(|_| ())
    }

    /// Reads until the node ends the stream and returns how it ended, with the trailers
    /// of a stream that ended well.
    pub async fn end_with_trailers(
        &mut self,
        timeout: Duration,
    ) -> Result<tonic::metadata::MetadataMap, tonic::Status> {
        tokio::time::timeout(timeout, async {
            loop {
                match self.rx.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        return Ok(self.rx.trailers().await?.unwrap_or_default());
                    }
                    Err(status) => return Err(status),
                }
            }
        })
        .await
        .expect("the node ends the stream within the timeout")
    }
}
