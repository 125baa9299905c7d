//! The baseline: raw tonic over TLS in this process, no reef in the path.
//!
//! - bidi echo: one stream, every message its own gRPC message (what tonic gives a user
//!   who streams without batching), echoed by the server, unlimited in flight;
//! - unary: a trivial call, `in_flight` tasks sharing one channel, and one task for latency.

use std::{pin::Pin, time::Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use reef_proto::{
    Envelope, Frame,
    channel_client::ChannelClient,
    channel_server::{Channel, ChannelServer},
    container_client::ContainerClient,
    container_server::{Container, ContainerServer},
};
use reef_sdk::ConnectOptions;
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

use crate::{MEASUREMENT_TIMEOUT, report};

/// Echoes every frame back: directly as it arrives, or (`via_queue`) through the same
/// machinery as the node — a reader task puts each envelope in a bounded queue and a
/// `FrameBatcher` writes them back — to tell the cost of reef's queueing from routing.
#[derive(Clone, Copy)]
struct EchoFrames {
    via_queue: bool,
}

#[tonic::async_trait]
impl Channel for EchoFrames {
    type AttachStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

    async fn attach(
        &self,
        request: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        if !self.via_queue {
            return Ok(Response::new(Box::pin(request.into_inner())));
        }
        let (data, data_rx) = tokio::sync::mpsc::channel(8192);
        let (control, control_rx) = tokio::sync::mpsc::channel(1);
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            let _control = control;
            while let Ok(Some(frame)) = inbound.message().await {
                for envelope in frame.envelopes {
                    if reef_frames::enqueue(&data, envelope).await.is_err() {
                        return;
                    }
                }
            }
        });
        let frames = reef_frames::FrameBatcher::new(
            control_rx,
            data_rx,
            reef_frames::FrameLimits::default(),
        );
        Ok(Response::new(Box::pin(frames.map(Ok))))
    }
}

/// Answers Ping and nothing else.
struct PingOnly;

#[tonic::async_trait]
impl Container for PingOnly {
    type PushStream = Pin<Box<dyn Stream<Item = Result<reef_proto::Frame, Status>> + Send>>;

    async fn push(
        &self,
        _: Request<tonic::Streaming<reef_proto::Frame>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn ping(
        &self,
        request: Request<reef_proto::PingRequest>,
    ) -> Result<Response<reef_proto::PingResponse>, Status> {
        Ok(Response::new(reef_proto::PingResponse {
            nonce: request.into_inner().nonce,
            alias: String::new(),
        }))
    }

    async fn status(
        &self,
        _: Request<reef_proto::StatusRequest>,
    ) -> Result<Response<reef_proto::ContainerStatus>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn command(
        &self,
        _: Request<reef_proto::CommandRequest>,
    ) -> Result<Response<reef_proto::CommandResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn start_task(
        &self,
        _: Request<reef_proto::StartTaskRequest>,
    ) -> Result<Response<reef_proto::StartTaskResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn stop_task(
        &self,
        _: Request<reef_proto::StopTaskRequest>,
    ) -> Result<Response<reef_proto::StopTaskResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// Which echo server a bidi figure goes through.
#[derive(Debug, Clone, Copy)]
pub enum EchoServer {
    /// Frames straight back: raw tonic.
    Direct,
    /// Through a reader task, a bounded queue and a `FrameBatcher`, as in the node.
    ViaQueue,
}

/// A raw tonic TLS server in this process.
pub struct Baseline {
    options: ConnectOptions,
    /// The same server with [`EchoViaQueue`] as its channel.
    queued: ConnectOptions,
    _data: tempfile::TempDir,
}

impl Baseline {
    /// Serves the baseline services on an ephemeral loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let pki = reef_tls::Pki::load_or_create(
            data.path(),
            "baseline",
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
        )?;
        let identity = Identity::from_pem(&pki.server().cert_pem, &pki.server().key_pem);
        let serve = async |echo: EchoFrames| -> anyhow::Result<ConnectOptions> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let server = Server::builder()
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(8 << 20))
                .tls_config(ServerTlsConfig::new().identity(identity.clone()))?
                .add_service(ChannelServer::new(echo))
                .add_service(ContainerServer::new(PingOnly));
            tokio::spawn(
                server.serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
            );
            Ok(ConnectOptions {
                node: addr.to_string(),
                ca: data.path().join("ca.pem"),
                ..ConnectOptions::default()
            })
        };
        let options = serve(EchoFrames { via_queue: false }).await?;
        let queued = serve(EchoFrames { via_queue: true }).await?;
        Ok(Self {
            options,
            queued,
            _data: data,
        })
    }

    /// Messages per second through a bidi echo stream on `server`, `batch` envelopes
    /// per gRPC message, unlimited in flight.
    pub async fn bidi_echo(
        &self,
        server: EchoServer,
        messages: u64,
        payload: Bytes,
        batch: usize,
    ) -> anyhow::Result<f64> {
        let options = match server {
            EchoServer::Direct => &self.options,
            EchoServer::ViaQueue => &self.queued,
        };
        bidi_echo_on(options, messages, payload, batch).await
    }

    /// Unary calls per second with `in_flight` tasks on one channel.
    pub async fn unary(&self, calls: u64, in_flight: usize) -> anyhow::Result<f64> {
        let client = ContainerClient::new(self.options.connect().await?);
        let per_task = calls / in_flight as u64;
        let started = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    for nonce in 0..per_task {
                        client.ping(reef_proto::PingRequest { nonce }).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok((per_task * in_flight as u64) as f64 / started.elapsed().as_secs_f64())
    }

    /// Latency of sequential unary calls, in microseconds.
    pub async fn unary_latency(&self, samples: u64) -> anyhow::Result<Histogram<u64>> {
        let mut client = ContainerClient::new(self.options.connect().await?);
        for nonce in 0..samples.min(1000) {
            client.ping(reef_proto::PingRequest { nonce }).await?;
        }
        let mut histogram = report::histogram();
        for nonce in 0..samples {
            let started = Instant::now();
            client.ping(reef_proto::PingRequest { nonce }).await?;
            histogram.record(started.elapsed().as_micros() as u64)?;
        }
        Ok(histogram)
    }
}

async fn bidi_echo_on(
    options: &ConnectOptions,
    messages: u64,
    payload: Bytes,
    batch: usize,
) -> anyhow::Result<f64> {
    let channel = options.connect().await?;
    let frame = Frame {
        envelopes: vec![
            Envelope {
                kind: reef_proto::EnvelopeKind::Send as i32,
                destination: "sink".into(),
                payload,
                ..Default::default()
            };
            batch
        ],
        credit: 0,
    };
    let messages = messages / batch as u64;
    let outgoing = tokio_stream::iter((0..messages).map(move |_| frame.clone()));
    let started = Instant::now();
    let mut echoed = ChannelClient::new(channel)
        .attach(outgoing)
        .await?
        .into_inner();
    let mut received = 0;
    tokio::time::timeout(MEASUREMENT_TIMEOUT, async {
        while received < messages * batch as u64 {
            let frame = echoed.next().await.context("echo stream ended early")??;
            received += frame.envelopes.len() as u64;
        }
        anyhow::Ok(())
    })
    .await
    .context("baseline bidi echo timed out")??;
    Ok(received as f64 / started.elapsed().as_secs_f64())
}
