//! The node's transport: TLS only, a plaintext port that serves only health, attach
//! streams that refuse strangers and malformed frames, heartbeats, watch, shutdown.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use nix::sys::signal::Signal;
use reef_proto::{
    ContainerEventKind, InfoRequest, ListRequest, WatchRequest, supervisor_client::SupervisorClient,
};
use reef_sdk::{Client, Code, ConnectOptions, Error};
use reef_tests::{RawAttach, TestNode, eventually};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Endpoint,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let node = TestNode::start();
    let other = tempfile::tempdir().unwrap();
    let stranger =
        reef_tls::Pki::load_or_create(other.path(), "other", &["localhost".to_owned()]).unwrap();
    let other_ca = other.path().join("ca.pem");
    assert_ne!(
        std::fs::read_to_string(&other_ca).unwrap(),
        stranger.server().cert_pem
    );
    let options = ConnectOptions {
        ca: other_ca,
        ..node.options()
    };
    let error = Client::connect(&options).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    let text = error.to_string();
    assert!(
        text.contains(&node.addr.to_string()),
        "names the node: {text}"
    );
    assert!(
        text.to_lowercase().contains("certificate"),
        "says why: {text}"
    );
}

#[tokio::test]
async fn plaintext_is_refused_on_the_tls_port() {
    let node = TestNode::start();
    let options = ConnectOptions {
        insecure: true,
        ..node.options()
    };
    // Either the HTTP/2 handshake or the first call fails; nothing is served.
    let result = match options.connect().await {
        Err(error) => Err(error.to_string()),
        Ok(channel) => SupervisorClient::new(channel)
            .info(InfoRequest {})
            .await
            .map(|_| ())
            .map_err(|status| status.to_string()),
    };
    assert!(result.is_err(), "plaintext call succeeded on the TLS port");
}

#[tokio::test]
async fn the_plaintext_port_serves_health_and_nothing_else() {
    let node = TestNode::start();
    let channel = Endpoint::from_shared(format!("http://{}", node.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let status = SupervisorClient::new(channel)
        .info(InfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    // The TLS port reports each service too.
    let tls = node.options().connect().await.unwrap();
    let supervisor = HealthClient::new(tls)
        .check(HealthCheckRequest {
            service: "reef.v1.Supervisor".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(supervisor.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn attaching_needs_a_registration_and_its_lease() {
    let node = TestNode::start();
    let channel = node.options().connect().await.unwrap();
    let attach = |alias: Option<&str>, lease: Option<&str>| {
        let channel = channel.clone();
        let (alias, lease) = (alias.map(str::to_owned), lease.map(str::to_owned));
        async move {
            let (_tx, rx) = tokio::sync::mpsc::channel::<reef_proto::Frame>(1);
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            if let Some(alias) = alias {
                request
                    .metadata_mut()
                    .insert(reef_proto::ALIAS_METADATA, alias.parse().unwrap());
            }
            if let Some(lease) = lease {
                request
                    .metadata_mut()
                    .insert(reef_proto::LEASE_METADATA, lease.parse().unwrap());
            }
            reef_proto::channel_client::ChannelClient::new(channel)
                .attach(request)
                .await
                .map(|_| ())
                .unwrap_err()
                .code()
        }
    };
    assert_eq!(attach(None, None).await, Code::Unauthenticated);
    assert_eq!(attach(Some("ghost"), Some("x")).await, Code::NotFound);
    let holder = RawAttach::open(&node, "held").await;
    assert_eq!(
        attach(Some("held"), Some("not-the-lease")).await,
        Code::PermissionDenied
    );
    assert_eq!(
        attach(Some("held"), Some(&holder.lease)).await,
        Code::AlreadyExists
    );
}

/// Sends and receives undecoded bytes, to put garbage on the attach stream.
#[derive(Debug, Clone, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn a_malformed_frame_closes_the_stream_with_invalid_argument_and_frees_the_alias() {
    let node = TestNode::start();
    let channel = node.options().connect().await.unwrap();
    let lease = SupervisorClient::new(channel.clone())
        .register(reef_proto::RegisterRequest {
            alias: "garbled".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .lease;
    let garbage = tokio_stream::iter(vec![vec![0xffu8; 12]]);
    let mut request = tonic::Request::new(garbage);
    request
        .metadata_mut()
        .insert(reef_proto::ALIAS_METADATA, "garbled".parse().unwrap());
    request
        .metadata_mut()
        .insert(reef_proto::LEASE_METADATA, lease.parse().unwrap());
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/reef.v1.Channel/Attach");
    let mut stream = grpc
        .streaming(request, path, RawBytes)
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended cleanly after a malformed frame"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut supervisor = node.supervisor().await;
    let list = supervisor.list(ListRequest {}).await.unwrap().into_inner();
    assert!(list.containers.iter().all(|c| c.alias != "garbled"));
    // The node is unharmed.
    let client = Client::connect(&node.options()).await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_silent_container_is_detached_after_its_heartbeat_timeout() {
    let node = TestNode::start_with(&[
        "--heartbeat-interval-ms",
        "50",
        "--heartbeat-timeout-ms",
        "300",
    ]);
    // RawAttach never answers heartbeats and sends nothing.
    let mut silent = RawAttach::open(&node, "silent").await;
    let status = silent.end(WAIT).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("heartbeat"),
        "{}",
        status.message()
    );

    // An SDK client answers heartbeats, so it stays attached through many intervals.
    let client = Client::connect_as(&node.options(), "lively").await.unwrap();
    let mut supervisor = node.supervisor().await;
    let mut events = supervisor
        .watch(WatchRequest { snapshot: false })
        .await
        .unwrap()
        .into_inner();
    // Twelve heartbeats go by; no DETACHED event arrives for "lively".
    let quiet = tokio::time::timeout(Duration::from_millis(600), events.message()).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
    assert!(!client.is_disconnected());
}

#[tokio::test]
async fn watch_streams_registry_events_after_a_snapshot() {
    let node = TestNode::start();
    let _early = Client::connect_as(&node.options(), "early").await.unwrap();
    let mut supervisor = node.supervisor().await;
    let mut events = supervisor
        .watch(WatchRequest { snapshot: true })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        let event = tokio::time::timeout(WAIT, events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        (event.kind(), event.container.unwrap().alias)
    };
    assert_eq!(
        next().await,
        (ContainerEventKind::Registered, "early".to_owned())
    );
    let late = Client::connect_as(&node.options(), "late").await.unwrap();
    assert_eq!(
        next().await,
        (ContainerEventKind::Registered, "late".to_owned())
    );
    assert_eq!(
        next().await,
        (ContainerEventKind::Attached, "late".to_owned())
    );
    late.close().await.unwrap();
    assert_eq!(
        next().await,
        (ContainerEventKind::Deregistered, "late".to_owned())
    );
}

#[tokio::test]
async fn a_client_gives_up_on_a_node_that_stops_answering() {
    let mut node = TestNode::start_with(&[
        "--heartbeat-interval-ms",
        "50",
        "--heartbeat-timeout-ms",
        "300",
    ]);
    let client = Client::connect(&node.options()).await.unwrap();
    // A receiver that never answers, so the request can only end by the node's silence.
    let _mute = RawAttach::open(&node, "mute").await;
    let pid = node.process().pid();
    node.process().signal(Signal::SIGSTOP);
    eventually("reefd stopped", WAIT, || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state == "T").then_some(())
    })
    .await;
    // The request's own timeout is long: the error must come from the missing
    // heartbeats, not from the request timing out.
    let error = client
        .request("mute", "x", Duration::from_secs(60))
        .await
        .unwrap_err();
    node.process().signal(Signal::SIGCONT);
    assert!(
        matches!(&error, Error::Disconnected(reason) if reason.contains("silent")),
        "{error:?}"
    );
    let error = client.send("anyone", "x").await.unwrap_err();
    assert!(matches!(error, Error::Disconnected(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_attached_clients_and_exits_zero() {
    let mut node = TestNode::start();
    let client = Client::connect(&node.options()).await.unwrap();
    let status = tokio::task::block_in_place(|| node.process().terminate(WAIT));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "reefd exit status");
    eventually("the client noticed the shutdown", WAIT, || async {
        client.is_disconnected().then_some(())
    })
    .await;
    let error = client.request("anyone", "x", WAIT).await.unwrap_err();
    assert!(matches!(error, Error::Disconnected(_)), "{error:?}");
}
