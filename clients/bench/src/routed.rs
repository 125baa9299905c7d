//! The routed figures: containers in this process, the node in a reefd process, every
//! envelope going container → node → container over TLS.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use reef_proto::{ListRequest, supervisor_client::SupervisorClient};
use reef_sdk::{Client, ContainerOptions, Context, Handler, HandlerError, Message};

use crate::{MEASUREMENT_TIMEOUT, node::BenchNode, report};

/// Counts messages; a request returns the count since the last request.
#[derive(Default)]
struct Sink {
    count: u64,
}

impl Handler for Sink {
    async fn on_message(&mut self, _: &Context, _: Message) {
        self.count += 1;
    }

    async fn on_request(&mut self, _: &Context, _: Message) -> Result<Bytes, HandlerError> {
        Ok(std::mem::take(&mut self.count).to_string().into())
    }
}

struct Echo;

impl Handler for Echo {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        Ok(request.payload)
    }
}

/// The containers and the client of the routed figures.
pub struct Routed {
    client: Client,
    sink: String,
    echo: String,
    containers: Vec<tokio::task::JoinHandle<Result<(), reef_sdk::Error>>>,
}

impl Routed {
    /// Attaches a sink and an echo container, and a client, to `node`.
    pub async fn start(node: &BenchNode) -> anyhow::Result<Self> {
        Self::start_across(node, node, "bench").await
    }

    /// Attaches the sink and echo containers to `node` and the client to `client_node`:
    /// with two nodes of one tree, every envelope crosses the links between them.
    /// The containers are `PREFIX-sink` and `PREFIX-echo`.
    pub async fn start_across(
        node: &BenchNode,
        client_node: &BenchNode,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let (sink, echo) = (format!("{prefix}-sink"), format!("{prefix}-echo"));
        let options = |alias: &str| ContainerOptions::new(alias, node.options.clone());
        let containers = vec![
            tokio::spawn(reef_sdk::run(options(&sink), Sink::default())),
            tokio::spawn(reef_sdk::run(options(&echo), Echo)),
        ];
        let mut supervisor = SupervisorClient::new(node.options.connect().await?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = supervisor
                .list(ListRequest {})
                .await?
                .into_inner()
                .containers;
            let attached = |alias: &str| listed.iter().any(|c| c.alias == alias && c.attached);
            if attached(&sink) && attached(&echo) {
                break;
            }
            if Instant::now() > deadline {
                bail!("bench containers did not attach");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = Client::connect(&client_node.options).await?;
        // Across nodes, the containers are reachable once their node announced them.
        while client
            .request(&echo, "", Duration::from_secs(1))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("bench containers are not reachable from the client's node");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            client,
            sink,
            echo,
            containers,
        })
    }

    /// The echo container's alias.
    pub fn echo(&self) -> &str {
        &self.echo
    }

    /// The node's counters.
    async fn node_info(&self) -> anyhow::Result<reef_proto::NodeInfo> {
        let info = self
            .client
            .supervisor()
            .info(reef_proto::InfoRequest {})
            .await?;
        Ok(info.into_inner())
    }

    /// Sends per second, client → node → sink. The clock stops when a request queued
    /// behind the last send is answered, so every send has been handled.
    pub async fn sends(&self, messages: u64, payload: Bytes) -> anyhow::Result<f64> {
        self.client
            .request(&self.sink, "", MEASUREMENT_TIMEOUT)
            .await?;
        let started = Instant::now();
        for _ in 0..messages {
            self.client.send(&self.sink, payload.clone()).await?;
        }
        let counted = self
            .client
            .request(&self.sink, "", MEASUREMENT_TIMEOUT)
            .await?;
        let elapsed = started.elapsed();
        let counted: u64 = std::str::from_utf8(&counted)?.parse()?;
        if counted != messages {
            bail!("the sink counted {counted} of {messages} messages");
        }
        Ok(messages as f64 / elapsed.as_secs_f64())
    }

    /// The same in acknowledged mode: the node numbers each send, keeps it until the
    /// sink's SDK acknowledges it after the handler, and the sender waits when the
    /// sink's log of unacknowledged sends is full.
    pub async fn acked_sends(&self, messages: u64, payload: Bytes) -> anyhow::Result<f64> {
        self.client
            .request(&self.sink, "", MEASUREMENT_TIMEOUT)
            .await?;
        let started = Instant::now();
        for _ in 0..messages {
            self.client.send_acked(&self.sink, payload.clone()).await?;
        }
        let counted = self
            .client
            .request(&self.sink, "", MEASUREMENT_TIMEOUT)
            .await?;
        let elapsed = started.elapsed();
        let counted: u64 = std::str::from_utf8(&counted)?.parse()?;
        if counted != messages {
            bail!("the sink counted {counted} of {messages} acknowledged messages");
        }
        Ok(messages as f64 / elapsed.as_secs_f64())
    }

    /// Sends per second on a direct push stream client → sink, bypassing the node; the
    /// closing request travels the same stream, behind the sends.
    pub async fn direct_sends(&self, messages: u64, payload: Bytes) -> anyhow::Result<f64> {
        let push = self.client.push(&self.sink).await?;
        push.request("", MEASUREMENT_TIMEOUT).await?;
        let started = Instant::now();
        for _ in 0..messages {
            push.send(payload.clone()).await?;
        }
        let counted = push.request("", MEASUREMENT_TIMEOUT).await?;
        let elapsed = started.elapsed();
        let counted: u64 = std::str::from_utf8(&counted)?.parse()?;
        if counted != messages {
            bail!("the sink counted {counted} of {messages} pushed messages");
        }
        Ok(messages as f64 / elapsed.as_secs_f64())
    }

    /// Requests per second to the echo container with `in_flight` concurrent callers.
    pub async fn requests(
        &self,
        requests: u64,
        in_flight: usize,
        payload: Bytes,
    ) -> anyhow::Result<f64> {
        let per_task = requests / in_flight as u64;
        let started = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let client = self.client.clone();
                let payload = payload.clone();
                let echo = self.echo.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        client
                            .request(&echo, payload.clone(), MEASUREMENT_TIMEOUT)
                            .await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await.context("requester panicked")??;
        }
        Ok((per_task * in_flight as u64) as f64 / started.elapsed().as_secs_f64())
    }

    /// Latency of sequential requests, in microseconds.
    pub async fn request_latency(
        &self,
        samples: u64,
        payload: Bytes,
    ) -> anyhow::Result<Histogram<u64>> {
        for _ in 0..samples.min(1000) {
            self.client
                .request(&self.echo, payload.clone(), MEASUREMENT_TIMEOUT)
                .await?;
        }
        let mut histogram = report::histogram();
        for _ in 0..samples {
            let started = Instant::now();
            self.client
                .request(&self.echo, payload.clone(), MEASUREMENT_TIMEOUT)
                .await?;
            histogram.record(started.elapsed().as_micros() as u64)?;
        }
        Ok(histogram)
    }

    /// Stops the containers.
    pub async fn stop(self) {
        for container in self.containers {
            container.abort();
        }
    }
}

/// How full the node's frames were during each phase (diagnostics).
pub struct Batching {
    enabled: bool,
    last: reef_proto::NodeInfo,
}

impl Batching {
    /// Starts counting from the node's counters now.
    pub async fn new(routed: &Routed, enabled: bool) -> anyhow::Result<Self> {
        Ok(Self {
            enabled,
            last: routed.node_info().await?,
        })
    }

    /// Prints envelopes per frame received and sent since the last call.
    pub async fn report(&mut self, phase: &str, routed: &Routed) -> anyhow::Result<()> {
        let now = routed.node_info().await?;
        let envelopes = (now.envelopes_routed - self.last.envelopes_routed) as f64;
        let received = (now.frames_received - self.last.frames_received).max(1) as f64;
        let sent = (now.frames_sent - self.last.frames_sent).max(1) as f64;
        if self.enabled {
            report::metric(
                &format!("{phase}_envelopes_per_frame_in"),
                envelopes / received,
                "envelopes",
            );
            report::metric(
                &format!("{phase}_envelopes_per_frame_out"),
                envelopes / sent,
                "envelopes",
            );
        }
        self.last = now;
        Ok(())
    }
}

/// The node alone: pre-built frames of 512 envelopes from one raw attach stream to
/// another that only counts, no SDK on either side. Envelopes per second.
pub async fn raw_frames(
    options: &reef_sdk::ConnectOptions,
    messages: u64,
    payload: Bytes,
) -> anyhow::Result<f64> {
    use reef_proto::{
        Envelope, EnvelopeKind, Frame, RegisterRequest, channel_client::ChannelClient,
    };
    use tokio_stream::StreamExt as _;
    let attach = async |alias: &str,
                        outgoing: tokio::sync::mpsc::Receiver<Frame>|
           -> anyhow::Result<tonic::Streaming<Frame>> {
        let channel = options.connect().await?;
        let lease = SupervisorClient::new(channel.clone())
            .register(RegisterRequest {
                alias: alias.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .lease;
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        request
            .metadata_mut()
            .insert(reef_proto::ALIAS_METADATA, alias.parse()?);
        request
            .metadata_mut()
            .insert(reef_proto::LEASE_METADATA, lease.parse()?);
        Ok(ChannelClient::new(channel)
            .attach(request)
            .await?
            .into_inner())
    };
    // The receiver sends nothing but an empty frame every second, which the node counts
    // as a sign of life.
    let (alive, liveness) = tokio::sync::mpsc::channel(1);
    let mut incoming = attach("bench-raw-out", liveness).await?;
    let keepalive = tokio::spawn(async move {
        while alive.send(Frame::default()).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let (frames, outgoing) = tokio::sync::mpsc::channel(64);
    let _replies = attach("bench-raw-in", outgoing).await?;
    // Ids need only be nonzero for a SEND (envelope.proto): the same frame is resent.
    let frame = Frame {
        envelopes: (1..=512)
            .map(|id| Envelope {
                kind: EnvelopeKind::Send as i32,
                id,
                destination: "bench-raw-out".into(),
                payload: payload.clone(),
                ..Default::default()
            })
            .collect(),
        credit: 0,
    };
    let started = Instant::now();
    let batches = messages.div_ceil(512);
    tokio::spawn(async move {
        for _ in 0..batches {
            if frames.send(frame.clone()).await.is_err() {
                return;
            }
        }
    });
    let mut received = 0;
    while received < batches * 512 {
        let frame = incoming.next().await.context("raw stream ended")??;
        received += frame
            .envelopes
            .iter()
            .filter(|e| e.kind() == EnvelopeKind::Send)
            .count() as u64;
    }
    keepalive.abort();
    Ok(received as f64 / started.elapsed().as_secs_f64())
}
