//! The router on paused time, between attachments in memory: no streams, no sockets.

use std::{sync::Arc, time::Duration};

use reef_access::Access;
use reef_core::Principal;
use reef_proto::{Envelope, EnvelopeKind, ErrorCode, Frame};
use reef_routing::Routing;
use tokio_stream::StreamExt as _;

use super::Inbound;
use crate::{ContainerSpec, Limits, NodeStats, Outbound, Registry};

/// A node's registry and the router of container "a"'s stream.
struct Node {
    registry: Arc<Registry>,
    stats: Arc<NodeStats>,
    a: Inbound,
    a_out: Outbound,
}

impl Node {
    fn new(limits: Limits) -> Self {
        let stats = Arc::new(NodeStats::default());
        let registry = Registry::new(limits, stats.clone());
        let (from, a_out) = attach(&registry, "a");
        let a = Inbound::new(
            registry.clone(),
            stats.clone(),
            Routing::new(),
            Access::open(),
            &Principal::Container("a".into()),
            from,
        );
        Self {
            registry,
            stats,
            a,
            a_out,
        }
    }

    async fn send(&mut self, envelopes: Vec<Envelope>) {
        self.a
            .route_frame(Frame {
                envelopes,
                credit: 0,
            })
            .await;
    }
}

fn attach(registry: &Arc<Registry>, alias: &str) -> (Arc<crate::Attachment>, Outbound) {
    let spec = ContainerSpec::bare(alias);
    let lease = registry.register(spec, None).unwrap();
    registry.attach(alias, &lease, None).unwrap()
}

fn send(id: u64, to: &str) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Send as i32,
        id,
        destination: to.into(),
        ..Default::default()
    }
}

async fn next(outbound: &mut Outbound) -> Vec<Envelope> {
    outbound.next().await.unwrap().unwrap().envelopes
}

#[tokio::test(start_paused = true)]
async fn the_origin_is_the_stream_s_alias_whatever_the_envelope_claims() {
    let mut node = Node::new(Limits::default());
    let (_b, mut b_out) = attach(&node.registry, "b");
    let forged = Envelope {
        origin: "mallory".into(),
        ..send(1, "b")
    };
    node.send(vec![forged, send(2, "b")]).await;
    let delivered = next(&mut b_out).await;
    let seen: Vec<(u64, &str)> = delivered
        .iter()
        .map(|e| (e.id, e.origin.as_str()))
        .collect();
    assert_eq!(seen, [(1, "a"), (2, "a")]);
    assert_eq!(node.stats.routed(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_send_to_nobody_is_a_dead_letter_and_an_error_for_its_sender() {
    let mut node = Node::new(Limits::default());
    node.send(vec![send(7, "nobody")]).await;
    let answer = next(&mut node.a_out).await;
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].kind(), EnvelopeKind::Error);
    assert_eq!(answer[0].correlation_id, 7, "the error names what failed");
    let error = answer[0].error.as_ref().unwrap();
    assert_eq!(error.code(), ErrorCode::NotFound);
    assert!(error.message.contains("nobody"), "{}", error.message);
    assert_eq!(node.stats.dead_letters(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_without_an_id_is_refused_as_invalid() {
    let mut node = Node::new(Limits::default());
    let (_b, _b_out) = attach(&node.registry, "b");
    node.send(vec![send(0, "b")]).await;
    let answer = next(&mut node.a_out).await;
    let error = answer[0].error.as_ref().unwrap();
    assert_eq!(error.code(), ErrorCode::InvalidArgument);
    assert!(error.message.contains("nonzero id"), "{}", error.message);
}

#[tokio::test(start_paused = true)]
async fn a_mailbox_that_stays_full_refuses_after_the_enqueue_timeout() {
    let limits = Limits {
        mailbox_capacity: 1,
        enqueue_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let mut node = Node::new(limits);
    // b never reads: its mailbox takes one envelope.
    let (_b, _b_out) = attach(&node.registry, "b");
    let started = tokio::time::Instant::now();
    node.send(vec![send(1, "b"), send(2, "b")]).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    let answer = next(&mut node.a_out).await;
    assert_eq!(answer[0].correlation_id, 2);
    let error = answer[0].error.as_ref().unwrap();
    assert_eq!(error.code(), ErrorCode::ResourceExhausted);
}
