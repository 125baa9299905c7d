//! Routing through a real reefd process over TLS: sends, requests, and what happens
//! when they cannot be delivered.

use std::time::Duration;

use reef_proto::{Envelope, EnvelopeKind, ErrorCode, InfoRequest};
use reef_sdk::{
    Bytes, Client, Code, ContainerOptions, Context, Error, Handler, HandlerError, Message,
};
use reef_tests::{RawAttach, TestNode};

const WAIT: Duration = Duration::from_secs(10);

fn remote_code(error: &Error) -> Code {
    match error {
        Error::Remote { code, .. } => *code,
        other => panic!("expected an ERROR envelope, got {other:?}"),
    }
}

#[tokio::test]
async fn request_reply_through_an_echo_process() {
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let client = Client::connect(&node.options()).await.unwrap();
    let reply = client.request("echo", "hello", WAIT).await.unwrap();
    assert_eq!(&reply[..], b"hello");
    // Binary payloads pass untouched.
    let binary: Vec<u8> = (0..=255).collect();
    let reply = client.request("echo", binary.clone(), WAIT).await.unwrap();
    assert_eq!(reply.to_vec(), binary);
    client.close().await.unwrap();
}

#[tokio::test]
async fn sends_arrive_in_order_before_a_later_request() {
    let node = TestNode::start();
    let _counter = node.spawn_demo("counter", &["counter"]).await;
    let client = Client::connect(&node.options()).await.unwrap();
    for _ in 0..1000 {
        client.send("counter", "one").await.unwrap();
    }
    // FIFO per sender→receiver: the request is queued behind all 1000 sends.
    let count = client.request("counter", "count?", WAIT).await.unwrap();
    assert_eq!(&count[..], b"1000");
}

#[tokio::test]
async fn unknown_destination_is_not_found_and_a_dead_letter() {
    let node = TestNode::start();
    let client = Client::connect(&node.options()).await.unwrap();
    let error = client.request("nobody", "hi", WAIT).await.unwrap_err();
    assert_eq!(remote_code(&error), Code::NotFound);
    assert!(error.to_string().contains("nobody"), "{error}");

    client.send("nobody", "hi").await.unwrap();
    // The barrier returns after the node routed the send, so its ERROR has arrived.
    client.flush(WAIT).await.unwrap();
    assert_eq!(client.undelivered(), 1);
    let info = node
        .supervisor()
        .await
        .info(InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.dead_letters, 2);
}

/// Answers requests only after a pause, to miss short deadlines.
struct Slow(Duration);

impl Handler for Slow {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        tokio::time::sleep(self.0).await;
        Ok(request.payload)
    }
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_deadline_exceeded_from_the_node() {
    let node = TestNode::start();
    let slow = tokio::spawn(reef_sdk::run(
        ContainerOptions::new("slow", node.options()),
        Slow(Duration::from_millis(600)),
    ));
    node.wait_attached("slow").await;
    let client = Client::connect(&node.options()).await.unwrap();
    let error = client
        .request("slow", "late", Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(remote_code(&error), Code::DeadlineExceeded, "{error}");
    let mut supervisor = node.supervisor().await;
    assert_eq!(
        supervisor
            .info(InfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .requests_expired,
        1
    );
    // The reply that comes after the deadline is not delivered: it is a dead letter.
    node.wait_for_dead_letters(1).await;
    // The caller is still usable afterwards.
    let reply = client.request("slow", "ok", WAIT).await.unwrap();
    assert_eq!(&reply[..], b"ok");
    slow.abort();
}

#[tokio::test]
async fn invalid_and_duplicate_aliases_are_refused() {
    let node = TestNode::start();
    for bad in ["has space", "/lead", "group:x", ""] {
        let error = Client::connect_as(&node.options(), bad).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad:?}: {error}");
    }
    let _first = Client::connect_as(&node.options(), "taken").await.unwrap();
    let error = Client::connect_as(&node.options(), "taken")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "{error}");
}

#[tokio::test]
async fn oversized_payloads_are_resource_exhausted() {
    let node = TestNode::start_with(&["--max-payload-bytes", "1024"]);
    let _echo = node.spawn_demo("echo", &["echo"]).await;

    // The SDK knows the node's limit and refuses before sending.
    let client = Client::connect(&node.options()).await.unwrap();
    let error = client
        .request("echo", vec![0u8; 2048], WAIT)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error}");

    // A client that ignores the limit gets an ERROR from the node, correlated to its id.
    let mut raw = RawAttach::open(&node, "raw").await;
    raw.send(vec![Envelope {
        kind: EnvelopeKind::Request as i32,
        id: 7,
        destination: "echo".into(),
        payload: vec![0u8; 2048].into(),
        ..Default::default()
    }])
    .await;
    let answer = raw.next(WAIT).await;
    assert_eq!(answer.kind(), EnvelopeKind::Error);
    assert_eq!(answer.correlation_id, 7);
    let error = answer.error.unwrap();
    assert_eq!(error.code(), ErrorCode::ResourceExhausted);
    assert!(error.message.contains("1024"), "{}", error.message);
}

#[tokio::test]
async fn unknown_kinds_are_refused_and_origins_cannot_be_forged() {
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let mut raw = RawAttach::open(&node, "raw").await;
    raw.send(vec![Envelope {
        kind: 42,
        id: 1,
        destination: "echo".into(),
        ..Default::default()
    }])
    .await;
    let answer = raw.next(WAIT).await;
    assert_eq!(answer.error.unwrap().code(), ErrorCode::InvalidArgument);

    // Claiming to be someone else does not work: the reply comes back to "raw".
    raw.send(vec![Envelope {
        kind: EnvelopeKind::Request as i32,
        id: 2,
        origin: "echo".into(),
        destination: "echo".into(),
        payload: "who am I".into(),
        ..Default::default()
    }])
    .await;
    let reply = raw.next(WAIT).await;
    assert_eq!(reply.kind(), EnvelopeKind::Reply);
    assert_eq!(reply.correlation_id, 2);
    assert_eq!(reply.destination, "raw");
    assert_eq!(reply.origin, "echo");
}

#[tokio::test]
async fn only_the_callee_can_answer_a_request() {
    let node = TestNode::start();
    let mut caller = RawAttach::open(&node, "caller").await;
    let mut callee = RawAttach::open(&node, "callee").await;
    let intruder = RawAttach::open(&node, "intruder").await;
    caller
        .send(vec![Envelope {
            kind: EnvelopeKind::Request as i32,
            id: 9,
            destination: "callee".into(),
            deadline_ms: 5_000,
            ..Default::default()
        }])
        .await;
    let request = callee.next(WAIT).await;
    assert_eq!(request.origin, "caller");
    assert!(request.deadline_ms > 0 && request.deadline_ms <= 5_000);
    let reply = |payload: &'static str| Envelope {
        kind: EnvelopeKind::Reply as i32,
        correlation_id: 9,
        destination: "caller".into(),
        payload: payload.into(),
        ..Default::default()
    };
    intruder.send(vec![reply("forged")]).await;
    callee.send(vec![reply("genuine")]).await;
    let answer = caller.next(WAIT).await;
    assert_eq!(&answer.payload[..], b"genuine");
    // The forged reply was dropped as a dead letter, not delivered later.
    node.wait_for_dead_letters(1).await;
}

#[tokio::test]
async fn flush_is_a_barrier_behind_earlier_sends() {
    let node = TestNode::start();
    let client = Client::connect(&node.options()).await.unwrap();
    for _ in 0..500 {
        client.send("nobody", "lost").await.unwrap();
    }
    client.flush(WAIT).await.unwrap();
    assert_eq!(
        client.undelivered(),
        500,
        "every ERROR arrived before the barrier's answer"
    );
}
