//! What the node shows of its containers: the list, the tree, the stream of their
//! events, the node's own figures, whether one exists, and recent dead letters.

use super::*;

impl SupervisorService {
    pub(super) fn containers(&self, caller: &Principal) -> wire::ListResponse {
        wire::ListResponse {
            containers: self
                .visible_to(caller)
                .into_iter()
                .map(|snapshot| seen_by(caller, container_info(snapshot)))
                .collect(),
        }
    }

    /// The containers `caller` may see; one whose parent it may not see is a root of
    /// its tree.
    pub(super) fn container_tree(&self, caller: &Principal) -> wire::TreeResponse {
        wire::TreeResponse {
            roots: tree_seen_by(caller, build_tree(self.visible_to(caller))),
        }
    }

    /// The registered containers `caller` may inspect.
    fn visible_to(&self, caller: &Principal) -> Vec<ContainerSnapshot> {
        let mut containers = self.registry.list();
        containers.retain(|container| may_see(&self.access, &self.registry, caller, container));
        containers
    }

    /// Refuses `caller` looking at container `alias` (its log, a ping).
    pub(super) fn check_inspect(&self, caller: &Principal, alias: &str) -> Result<(), ApiError> {
        Ok(self
            .access
            .check_inspect(&*self.registry, caller, alias, None)?)
    }

    /// Registry events from now on, after a snapshot of every container if asked. A
    /// watcher that falls behind hears RESOURCE_EXHAUSTED and must list again.
    pub(super) fn events(&self, caller: Principal, snapshot: bool) -> EventStream {
        // Subscribe before the snapshot so that nothing falls between the two.
        let mut events = self.registry.subscribe();
        let snapshot: Vec<_> = if snapshot {
            self.registry
                .list()
                .into_iter()
                .map(|container| RegistryEvent {
                    kind: EventKind::Registered,
                    container,
                    reason: "snapshot".to_owned(),
                    at: SystemTime::now(),
                    phase: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let (access, registry) = (self.access.clone(), self.registry.clone());
        // Events about containers the caller may not see are left out.
        let seen = move |event: RegistryEvent| {
            if !may_see(&access, &registry, &caller, &event.container) {
                return None;
            }
            let mut event = container_event(event);
            event.container = event.container.map(|info| seen_by(&caller, info));
            Some(event)
        };
        tokio::spawn(async move {
            for event in snapshot.into_iter().filter_map(&seen) {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let item = match events.recv().await {
                    Ok(event) => match seen(event) {
                        Some(event) => Ok(event),
                        None => continue,
                    },
                    Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(missed)) => Err(ApiError::Exhausted(format!(
                        "watcher fell {missed} events behind; list again and re-watch"
                    ))
                    .into()),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    pub(super) fn node_info(&self) -> wire::NodeInfo {
        let messaging = &self.counters.messaging;
        wire::NodeInfo {
            name: self.node.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.node.started.elapsed().as_millis() as u64,
            listen: self.node.listen.to_string(),
            containers: self.registry.len() as u32,
            envelopes_routed: messaging.routed(),
            dead_letters: messaging.dead_letters(),
            requests_expired: messaging.requests_expired(),
            frames_received: messaging.frames(),
            frames_sent: messaging.frames_sent(),
            replied: Some((&messaging.replied().snapshot()).into()),
            refused: Some((&messaging.refused().snapshot()).into()),
            state_operations: self.counters.state.total(),
        }
    }

    /// Whether `alias` is a supervised container, or a task whose host is attached.
    pub(super) fn existence(&self, alias: &str) -> wire::ExistsResponse {
        let state = self.supervision.exists(alias).or_else(|| {
            let task = self.registry.get(alias)?.task?;
            Some(State::Started).filter(|_| self.registry.lookup(task.host.as_str()).is_some())
        });
        wire::ExistsResponse {
            exists: state.is_some(),
            state: state.map_or(wire::ContainerState::Unspecified, convert::state_to_wire) as i32,
        }
    }

    /// The newest `limit` dead letters (all kept when 0) that `caller` may see: those to
    /// or from a container it may inspect.
    pub(super) fn recent_dead_letters(
        &self,
        caller: &Principal,
        limit: u32,
    ) -> wire::DeadLettersResponse {
        let ring = self.counters.messaging.dead_letter_ring();
        let may_see = |alias: &str| {
            self.access
                .check_inspect(&*self.registry, caller, alias, None)
                .is_ok()
        };
        let mut letters: Vec<_> = ring
            .recent(0)
            .into_iter()
            .filter(|letter| may_see(&letter.destination) || may_see(&letter.origin))
            .map(wire_dead_letter)
            .collect();
        if limit != 0 {
            letters.drain(..letters.len().saturating_sub(limit as usize));
        }
        wire::DeadLettersResponse {
            letters,
            total: ring.total(),
        }
    }
}

/// Whether `caller` may see `container` (its parent is in the snapshot: an event may be
/// about one the registry no longer holds).
fn may_see(
    access: &Access,
    registry: &Registry,
    caller: &Principal,
    container: &ContainerSnapshot,
) -> bool {
    let parent = container.spec.parent.as_ref().map(Alias::as_str);
    access
        .check_inspect(registry, caller, container.spec.alias.as_str(), parent)
        .is_ok()
}

fn wire_dead_letter(letter: reef_messaging::DeadLetter) -> wire::DeadLetter {
    wire::DeadLetter {
        at_ms: reef_core::unix_ms(letter.at),
        kind: letter.kind,
        id: letter.id,
        correlation_id: letter.correlation_id,
        origin: letter.origin,
        destination: letter.destination,
        payload_bytes: u32::try_from(letter.payload_bytes).unwrap_or(u32::MAX),
        payload_preview: letter.payload_preview,
        reason: letter.reason,
    }
}
