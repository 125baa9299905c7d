//! The registry and an attachment's keeper, in memory and on paused time: no streams,
//! no sockets, no processes. (Registration starts its attach-timeout timer, so even
//! the synchronous cases run on a runtime.)

use std::{sync::Arc, time::Duration};

use reef_core::Alias;

use crate::{ContainerSpec, EventKind, Limits, NodeStats, Registry, RegistryError, keeper};

fn registry() -> Arc<Registry> {
    Registry::new(Limits::default(), Arc::new(NodeStats::default()))
}

#[tokio::test(start_paused = true)]
async fn an_alias_has_one_holder_and_only_its_lease_attaches_or_deregisters() {
    let registry = registry();
    let lease = registry
        .register(ContainerSpec::bare("echo"), None)
        .unwrap();
    assert!(matches!(
        registry.register(ContainerSpec::bare("echo"), None),
        Err(RegistryError::AlreadyRegistered(_))
    ));
    assert!(matches!(
        registry.attach("echo", "not the lease", None),
        Err(RegistryError::LeaseMismatch(_))
    ));
    let (attachment, _outbound) = registry.attach("echo", &lease, None).unwrap();
    assert!(matches!(
        registry.attach("echo", &lease, None),
        Err(RegistryError::AlreadyAttached(_))
    ));
    assert!(registry.lookup("echo").is_some());
    assert!(matches!(
        registry.deregister("echo", "not the lease"),
        Err(RegistryError::LeaseMismatch(_))
    ));
    registry.deregister("echo", &lease).unwrap();
    assert!(attachment.is_closed(), "deregistering closes the stream");
    assert!(registry.get("echo").is_none());
    assert!(registry.lookup("echo").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_child_is_listed_under_its_parent_and_its_owner_is_itself() {
    let registry = registry();
    registry.register(ContainerSpec::bare("a"), None).unwrap();
    let mut child = ContainerSpec::bare("a/b");
    child.parent = Some(Alias::parse("a").unwrap());
    registry.register(child, None).unwrap();
    let listed = registry.get("a/b").unwrap();
    assert_eq!(listed.spec.parent.as_ref().map(Alias::as_str), Some("a"));
    assert_eq!(
        registry.registered_owner("a/b").as_ref().map(Alias::as_str),
        Some("a/b")
    );
    assert_eq!(registry.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_registry_refuses_with_its_bound() {
    let registry = Registry::new(
        Limits {
            max_containers: 2,
            ..Limits::default()
        },
        Arc::new(NodeStats::default()),
    );
    registry.register(ContainerSpec::bare("a"), None).unwrap();
    registry.register(ContainerSpec::bare("b"), None).unwrap();
    assert!(matches!(
        registry.register(ContainerSpec::bare("c"), None),
        Err(RegistryError::Full(2))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_keeper_heartbeats_and_detaches_a_silent_container_after_the_timeout() {
    let registry = registry();
    let mut events = registry.subscribe();
    let lease = registry
        .register(ContainerSpec::bare("mute"), None)
        .unwrap();
    let (attachment, _outbound) = registry.attach("mute", &lease, None).unwrap();
    let started = tokio::time::Instant::now();
    let keeper = tokio::spawn(keeper::keep(
        registry.clone(),
        Arc::new(NodeStats::default()),
        attachment.clone(),
    ));
    keeper.await.unwrap();
    let silent_for = started.elapsed();
    let limits = Limits::default();
    // Detached at the first heartbeat tick past the timeout, not before.
    assert!(silent_for > limits.heartbeat_timeout, "{silent_for:?}");
    assert!(
        silent_for <= limits.heartbeat_timeout + limits.heartbeat_interval,
        "{silent_for:?}"
    );
    assert!(attachment.is_closed());
    let detached = loop {
        let event = events.recv().await.unwrap();
        if event.kind == EventKind::Detached {
            break event;
        }
    };
    assert!(
        detached.reason.contains("missed heartbeats"),
        "{}",
        detached.reason
    );
    // Not supervised, so nothing holds its alias for it: it is gone.
    assert!(registry.get("mute").is_none());
    assert!(registry.lookup("mute").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_container_that_is_heard_is_not_detached() {
    let registry = registry();
    let lease = registry
        .register(ContainerSpec::bare("chatty"), None)
        .unwrap();
    let (attachment, _outbound) = registry.attach("chatty", &lease, None).unwrap();
    let keeper = tokio::spawn(keeper::keep(
        registry.clone(),
        Arc::new(NodeStats::default()),
        attachment.clone(),
    ));
    // Thirty seconds on the paused clock, with the container heard every second.
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        attachment.heard(1);
    }
    assert!(!attachment.is_closed(), "heard every second for 30 s");
    attachment.close(None);
    keeper.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_alias_held_elsewhere_in_the_tree_is_routed_to_no_child_until_it_restarts() {
    let registry = registry();
    let link = Alias::parse("nodes/b").unwrap();
    let payments = Alias::parse("payments").unwrap();
    let lease = registry
        .join_link(ContainerSpec::bare("nodes/b"), "session-1")
        .unwrap();
    // Learned from the child's traffic, then refused by the tree above.
    registry.learn_route("payments", &link);
    assert_eq!(registry.owner("payments").as_ref(), Some(&link));
    registry.refuse_route(&link, &payments);
    assert!(registry.get("payments").is_none());
    // Neither its traffic nor its announcements bring the route back.
    registry.learn_route("payments", &link);
    assert!(registry.get("payments").is_none());
    let announced = crate::HostedTask {
        alias: payments.clone(),
        name: "counter".to_owned(),
        parent: None,
        restarts: 0,
        labels: Default::default(),
    };
    let outcome = registry
        .host_tasks(&link, &lease, vec![announced.clone()], Vec::new(), true)
        .unwrap();
    assert!(
        matches!(&outcome[..], [Err(RegistryError::HeldElsewhere(alias))] if alias == "payments"),
        "{outcome:?}"
    );
    // The same node linking again remembers; a restarted one starts afresh.
    let lease = registry
        .join_link(ContainerSpec::bare("nodes/b"), "session-1")
        .unwrap();
    registry.learn_route("payments", &link);
    assert!(registry.get("payments").is_none());
    let lease_after_restart = registry
        .join_link(ContainerSpec::bare("nodes/b"), "session-2")
        .unwrap();
    assert_ne!(lease, lease_after_restart);
    let outcome = registry
        .host_tasks(
            &link,
            &lease_after_restart,
            vec![announced],
            Vec::new(),
            true,
        )
        .unwrap();
    assert!(matches!(&outcome[..], [Ok(true)]), "{outcome:?}");
}
