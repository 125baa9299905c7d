//! The contract in `proto/reef/v1` as a client written from the `.proto` files alone
//! reads it: raw attach streams and raw gRPC calls, no SDK, checking that the node does
//! what the comments say.

use std::time::Duration;

use reef_proto::{Envelope, EnvelopeKind};
use reef_tests::{RawAttach, TestNode};

const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

fn barrier(id: u64) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Heartbeat as i32,
        id,
        ..Default::default()
    }
}

fn send(id: u64, to: &str, payload: &str) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Send as i32,
        id,
        destination: to.to_owned(),
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn barriers_and_their_answers_cost_no_credit() {
    let node = TestNode::start();
    let mut receiver = RawAttach::open_with_credit(&node, "metered", 3).await;
    let sender = RawAttach::open(&node, "sender").await;
    for id in 1..=3 {
        receiver.send(vec![barrier(id)]).await;
        let answer = receiver.next_answer(WAIT).await;
        assert_eq!(answer.kind(), EnvelopeKind::Heartbeat);
        assert_eq!(answer.correlation_id, id, "the barrier's answer");
    }
    // The three credits are all still there.
    for id in 1..=3 {
        sender.send(vec![send(id, "metered", "hi")]).await;
        let delivered = receiver.next(WAIT).await;
        assert_eq!(delivered.id, id);
    }
    sender.send(vec![send(4, "metered", "over")]).await;
    assert_eq!(receiver.quiet(QUIET).await, None, "no credit left");

    // At zero credit a barrier is answered once what is queued before it is sent.
    receiver.send(vec![barrier(10)]).await;
    assert_eq!(receiver.quiet(QUIET).await, None, "behind the held send");
    receiver.grant(1).await;
    assert_eq!(receiver.next_answer(WAIT).await.id, 4);
    let answer = receiver.next_answer(WAIT).await;
    assert_eq!(
        (answer.kind(), answer.correlation_id),
        (EnvelopeKind::Heartbeat, 10)
    );

    // A stream that granted nothing still gets its barrier answered.
    let mut closed = RawAttach::open_with_credit(&node, "closed", 0).await;
    closed.send(vec![barrier(7)]).await;
    assert_eq!(closed.next_answer(WAIT).await.correlation_id, 7);
}

fn request(id: u64, to: &str, payload: &str, deadline_ms: u32) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Request as i32,
        id,
        destination: to.to_owned(),
        payload: payload.as_bytes().to_vec().into(),
        deadline_ms,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_frame_over_the_limit_ends_the_stream_with_a_status_that_names_the_limit() {
    let node = TestNode::start();
    let mut raw = RawAttach::open(&node, "bulky").await;
    let limit = raw.registered.max_frame_bytes;
    assert_eq!(limit, 8 << 20, "RegisterResponse says the frame limit");
    // Nine envelopes of 1 MiB, each legal alone (the payload limit is 1 MiB).
    let payload = "x".repeat((1 << 20) - 64);
    let envelopes = (1..=9).map(|id| send(id, "nobody", &payload)).collect();
    raw.send(envelopes).await;
    let status = raw.end(WAIT).await.expect_err("the node ends the stream");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&limit.to_string()) && status.message().contains("frame"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_retry_of_a_request_in_flight_gets_one_answer_and_is_delivered_once() {
    let node = TestNode::start();
    let mut caller = RawAttach::open(&node, "caller").await;
    let mut callee = RawAttach::open(&node, "callee").await;
    caller.send(vec![request(5, "callee", "work", 5_000)]).await;
    let delivered = callee.next(WAIT).await;
    assert_eq!(delivered.id, 5);
    // The caller gives up waiting and retries with the same id, before the answer.
    caller.send(vec![request(5, "callee", "work", 5_000)]).await;
    assert_eq!(callee.quiet(QUIET).await, None, "not delivered twice");
    assert_eq!(
        caller.quiet(QUIET).await,
        None,
        "no answer but the callee's"
    );
    callee
        .send(vec![Envelope {
            kind: EnvelopeKind::Reply as i32,
            correlation_id: 5,
            destination: "caller".to_owned(),
            payload: "done".as_bytes().to_vec().into(),
            ..Default::default()
        }])
        .await;
    let answer = caller.next(WAIT).await;
    assert_eq!(
        (answer.kind(), answer.correlation_id),
        (EnvelopeKind::Reply, 5)
    );
    assert_eq!(caller.quiet(QUIET).await, None, "exactly one answer");
}

#[tokio::test]
async fn errors_the_node_raises_come_from_the_node_not_the_destination() {
    let node = TestNode::start_with(&["--name", "alpha"]);
    let mut caller = RawAttach::open(&node, "asker").await;
    let _silent = RawAttach::open(&node, "silent").await;
    caller.send(vec![request(1, "ghost", "hi", 5_000)]).await;
    let missing = caller.next(WAIT).await;
    assert_eq!(missing.kind(), EnvelopeKind::Error);
    assert_eq!(
        missing.error.as_ref().unwrap().code(),
        reef_proto::ErrorCode::NotFound
    );
    assert_eq!(missing.origin, "node:alpha");
    caller.send(vec![request(2, "silent", "hi", 100)]).await;
    let expired = caller.next(WAIT).await;
    assert_eq!(
        expired.error.as_ref().unwrap().code(),
        reef_proto::ErrorCode::DeadlineExceeded
    );
    assert_eq!(expired.origin, "node:alpha");
}

#[tokio::test]
async fn sends_requests_and_barriers_need_a_nonzero_id() {
    let node = TestNode::start();
    let mut raw = RawAttach::open(&node, "zero").await;
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    for envelope in [
        request(0, "echo", "hi", 5_000),
        send(0, "echo", "hi"),
        barrier(0),
    ] {
        let kind = envelope.kind();
        raw.send(vec![envelope]).await;
        let refused = raw.next_answer(WAIT).await;
        assert_eq!(refused.kind(), EnvelopeKind::Error, "{kind:?}");
        let error = refused.error.as_ref().unwrap();
        assert_eq!(
            error.code(),
            reef_proto::ErrorCode::InvalidArgument,
            "{kind:?}"
        );
        assert!(error.message.contains("nonzero id"), "{error:?}");
        assert_eq!(raw.quiet(QUIET).await, None, "{kind:?} was not routed");
    }
}

#[tokio::test]
async fn register_says_the_attach_timeout_and_deregister_says_why_the_stream_ends() {
    let node = TestNode::start_with(&["--attach-timeout-ms", "4321"]);
    let mut raw = RawAttach::open(&node, "leaving").await;
    assert_eq!(raw.registered.attach_timeout_ms, 4321);
    node.supervisor()
        .await
        .deregister(reef_proto::DeregisterRequest {
            alias: "leaving".to_owned(),
            lease: raw.lease.clone(),
        })
        .await
        .expect("deregister");
    let trailers = raw.end_with_trailers(WAIT).await.expect("a clean end");
    assert_eq!(
        trailers
            .get(reef_proto::CLOSE_REASON_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("deregistered"),
        "{trailers:?}"
    );
}

#[tokio::test]
async fn register_refuses_a_taken_alias_and_a_supervised_one_with_the_documented_codes() {
    let node = TestNode::start();
    let _plain = RawAttach::open(&node, "plain").await;
    node.create_demo("counted", &["counter"]).await;
    let mut supervisor = node.supervisor().await;
    let register = |alias: &str| reef_proto::RegisterRequest {
        alias: alias.to_owned(),
        name: "raw".to_owned(),
        ..Default::default()
    };
    let taken = supervisor.register(register("plain")).await.unwrap_err();
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");
    let supervised = supervisor.register(register("counted")).await.unwrap_err();
    assert_eq!(
        supervised.code(),
        tonic::Code::PermissionDenied,
        "{supervised:?}"
    );
    assert!(
        supervised.message().contains("REEF_TOKEN"),
        "{supervised:?}"
    );
}

#[tokio::test]
async fn status_and_commands_reach_a_container_through_the_node() {
    let node = TestNode::start();
    node.create_demo("counter", &["counter"]).await;
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    for _ in 0..3 {
        assert!(node.reef(&["send", "counter", "hi"]).status.success());
    }
    assert_eq!(text(&node.reef(&["request", "counter", "count"])), "3\n");
    let status = node.reef(&["status", "counter"]);
    let status = text(&status);
    assert!(
        status.starts_with("counter (counter): pid ")
            && status.contains("3 messages and 1 requests handled"),
        "{status}"
    );
    let reset = node.reef(&["command", "counter", "reset"]);
    assert_eq!(
        text(&reset),
        "0\n",
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert_eq!(text(&node.reef(&["request", "counter", "count"])), "0\n");

    let unknown = node.reef(&["command", "counter", "explode"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(stderr.contains("explode"), "{stderr}");
    let missing = node.reef(&["status", "nobody"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nobody"));

    // The wire call itself, as another language would make it.
    let answer = node
        .supervisor()
        .await
        .command_container(reef_proto::CommandContainerRequest {
            alias: "counter".to_owned(),
            command: "explode".to_owned(),
            args: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(answer.code(), tonic::Code::Unimplemented, "{answer:?}");
}
