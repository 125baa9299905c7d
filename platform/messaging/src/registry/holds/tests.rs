//! Holds for supervised containers that are not attached, on paused time: what waits for
//! a restarting container, in which order it reaches the next process, and what is
//! refused or dropped on the way.

use std::{sync::Arc, time::Duration};

use reef_core::Alias;
use reef_proto::{Envelope, EnvelopeKind};
use reef_supervision::{Definition, Kind, Policy, ProcessSpec, State, SupervisedSnapshot};
use tokio_stream::StreamExt as _;

use super::{HoldRefused, Outbound};
use crate::{Limits, NodeStats, Registry};

const TOKEN: &str = "the token the supervisor spawned it with";

fn registry(limits: Limits) -> Arc<Registry> {
    Registry::new(limits, Arc::new(NodeStats::default()))
}

/// A registry in which the supervisor reserved "worker", whose process has not attached.
fn restarting_worker(limits: Limits) -> Arc<Registry> {
    let registry = registry(limits);
    registry
        .reserve(supervised("worker", State::Created), TOKEN)
        .unwrap();
    registry
}

fn supervised(alias: &str, state: State) -> SupervisedSnapshot {
    SupervisedSnapshot {
        definition: Arc::new(Definition {
            alias: Alias::parse(alias).unwrap(),
            parent: None,
            name: String::new(),
            kind: Kind::Process(ProcessSpec {
                command: "worker".into(),
                args: Vec::new(),
                env: Default::default(),
                working_dir: None,
                inherit_env: false,
            }),
            policy: Policy::default(),
            labels: Default::default(),
        }),
        state,
        restarts: 0,
        started_at: None,
        pid: None,
        activity: String::new(),
        last_failure: String::new(),
        last_exit: String::new(),
    }
}

fn send(id: u64) -> Envelope {
    Envelope {
        id,
        destination: "worker".into(),
        ..Default::default()
    }
}

fn request(id: u64, deadline: Duration) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Request as i32,
        deadline_ms: deadline.as_millis() as u32,
        ..send(id)
    }
}

/// The worker's process registers with the supervisor's token and attaches.
fn attach(registry: &Arc<Registry>) -> Outbound {
    let spec = crate::ContainerSpec::bare("worker");
    let lease = registry.register(spec, Some(TOKEN)).unwrap();
    registry.attach("worker", &lease, None).unwrap().1
}

/// Everything delivered in the first frame written to the stream.
async fn first_frame(outbound: &mut Outbound) -> Vec<Envelope> {
    outbound.next().await.unwrap().unwrap().envelopes
}

/// The ids of what the first frame delivered, in order.
async fn first_ids(outbound: &mut Outbound) -> Vec<u64> {
    first_frame(outbound).await.iter().map(|e| e.id).collect()
}

#[tokio::test(start_paused = true)]
async fn what_waits_for_a_restarting_container_reaches_its_next_process_in_order() {
    let registry = restarting_worker(Limits::default());
    assert!(registry.is_holding("worker"));
    for id in 1..=3 {
        registry.hold("worker", send(id)).unwrap();
    }
    let mut outbound = attach(&registry);
    assert_eq!(first_ids(&mut outbound).await, [1, 2, 3]);
    assert!(matches!(
        registry.hold("worker", send(4)),
        Err((_, HoldRefused::Open(_)))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_full_hold_refuses_or_gives_up_its_oldest() {
    let registry = restarting_worker(Limits {
        mailbox_capacity: 2,
        ..Limits::default()
    });
    registry.hold("worker", send(1)).unwrap();
    registry.hold("worker", send(2)).unwrap();
    assert!(matches!(
        registry.hold("worker", send(3)),
        Err((refused, HoldRefused::Full(2))) if refused.id == 3
    ));
    let evicted = registry.hold_evicting_oldest("worker", send(3)).unwrap();
    assert_eq!(evicted.map(|e| e.id), Some(1));
    let mut outbound = attach(&registry);
    assert_eq!(first_ids(&mut outbound).await, [2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_held_request_keeps_only_the_time_left_of_its_deadline() {
    let registry = restarting_worker(Limits::default());
    registry
        .hold("worker", request(1, Duration::from_secs(1)))
        .unwrap();
    registry
        .hold("worker", request(2, Duration::from_secs(5)))
        .unwrap();
    // The restart takes two seconds on the paused clock.
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut outbound = attach(&registry);
    let delivered = first_frame(&mut outbound).await;
    assert_eq!(delivered.len(), 1, "the expired request is dropped");
    assert_eq!(delivered[0].id, 2);
    assert_eq!(delivered[0].deadline_ms, 3000);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_held_for_a_stopped_container_or_an_unknown_alias() {
    let registry = registry(Limits::default());
    assert!(matches!(
        registry.hold("worker", send(1)),
        Err((_, HoldRefused::Unknown))
    ));
    registry
        .reserve(supervised("worker", State::Created), TOKEN)
        .unwrap();
    registry.hold("worker", send(1)).unwrap();
    registry.update_supervised(supervised("worker", State::Stopped), false);
    assert!(!registry.is_holding("worker"));
    assert!(matches!(
        registry.hold("worker", send(2)),
        Err((_, HoldRefused::Stopped))
    ));
}

#[tokio::test(start_paused = true)]
async fn what_a_closed_stream_never_wrote_goes_back_ahead_of_newer_envelopes() {
    let registry = restarting_worker(Limits::default());
    registry.hold("worker", send(3)).unwrap();
    let worker = Alias::parse("worker").unwrap();
    let lost = registry.requeue(&worker, vec![send(1), send(2)]);
    assert!(lost.is_empty());
    let mut outbound = attach(&registry);
    assert_eq!(first_ids(&mut outbound).await, [1, 2, 3]);
}
