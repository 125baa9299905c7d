//! Links to other nodes: this node's name and parent, child links and the aliases
//! behind them.

use super::*;

impl Registry {
    /// Records that `alias` lives behind `link` (a child node's link), as the child's
    /// next announcement will say. Nothing happens for an invalid or known alias.
    pub fn learn_route(&self, alias: &str, link: &Alias) {
        let Ok(alias) = Alias::parse(alias) else {
            return;
        };
        let task = HostedTask {
            alias,
            name: "remote".to_owned(),
            parent: None,
            restarts: 0,
            labels: BTreeMap::new(),
        };
        let learned = self.upsert_task(&mut self.write(), link, task);
        if let Ok((true, snapshot)) = learned {
            self.emit(EventKind::Registered, snapshot, "seen behind a node link");
        }
    }

    /// Records that the tree above this node holds `alias` elsewhere, so it does not live
    /// behind child link `link`: a route to it there goes, and neither the child's
    /// announcements nor its traffic make one again until that node restarts. Nothing
    /// happens if `link` is not a link.
    pub fn refuse_route(&self, link: &Alias, alias: &Alias) {
        let removed = {
            let mut entries = self.write();
            let max_held = self.limits.max_containers;
            let Some(entry) = entries.get_mut(link) else {
                return;
            };
            let Some(link_entry) = &mut entry.link else {
                return;
            };
            // Bounded: a hostile child could name any number of aliases.
            if link_entry.held_elsewhere.len() < max_held {
                link_entry.held_elsewhere.insert(alias.clone());
            }
            entry.tasks.remove(alias);
            let hosted_here = entries
                .get(alias)
                .and_then(|entry| entry.task.as_ref())
                .is_some_and(|task| &task.host == link);
            match hosted_here {
                true => entries.remove(alias),
                false => None,
            }
        };
        if let Some(entry) = removed {
            self.emit(
                EventKind::Deregistered,
                entry.snapshot(),
                "held elsewhere in the tree",
            );
        }
    }

    /// The node's name, for the origin of the errors it raises (see
    /// [`Registry::node_origin`]).
    pub fn set_node_name(&self, name: &str) {
        let _ = self.node_origin.set(format!("{NODE_ORIGIN_PREFIX}{name}"));
    }

    /// The `origin` of an ERROR the node raises itself, `node:NAME`: never an alias
    /// (':' is not allowed in one), so no container can be mistaken for the node.
    pub fn node_origin(&self) -> &str {
        self.node_origin
            .get()
            .map_or(NODE_ORIGIN_PREFIX, String::as_str)
    }

    /// Makes `link` (a link registration, see [`Registry::join_link`]) the route for
    /// aliases this node does not know: this node is a child of another.
    pub fn set_parent(&self, link: Alias) {
        let _ = self.parent.set(link);
    }

    /// The link to the parent node, on a child node.
    pub fn parent(&self) -> Option<&Alias> {
        self.parent.get()
    }

    /// Creates or renews the link registration `spec.alias` for the node at its other
    /// end, whose current session is `session`, and returns the lease of its next
    /// stream. A stream the link still has is closed first: the other end reconnected,
    /// so that stream is stale (a half-open connection after a partition). Envelopes for
    /// the link are held while it has no stream.
    pub fn join_link(&self, spec: ContainerSpec, session: &str) -> Result<String, RegistryError> {
        let alias = spec.alias.clone();
        let stale = self
            .read()
            .get(&alias)
            .filter(|entry| entry.link.is_some())
            .and_then(|entry| entry.attachment.clone());
        if let Some(stale) = stale {
            let reason = CloseReason::Replaced;
            self.detach(
                &stale,
                DetachCause::Closed,
                &reason.to_string(),
                Some(reason),
            );
        }
        let lease = reef_core::new_lease();
        let snapshot = {
            let mut entries = self.write();
            match entries.get_mut(&alias) {
                Some(entry) => {
                    let Some(link) = &mut entry.link else {
                        return Err(RegistryError::AlreadyRegistered(alias.to_string()));
                    };
                    if link.session.meet(session) {
                        tracing::info!(%alias, "the node at the other end of the link restarted");
                        link.held_elsewhere.clear();
                    }
                    entry.spec.endpoint = spec.endpoint;
                    entry.spec.labels = spec.labels;
                    entry.lease = Some(lease.clone());
                    None
                }
                None => {
                    if entries.len() >= self.limits.max_containers {
                        return Err(RegistryError::Full(entries.len()));
                    }
                    let session_state = Arc::new(LinkSession::default());
                    session_state.meet(session);
                    let mut registration = Registration::new(spec, Some(lease.clone()));
                    registration.reservation = Some(Reservation {
                        token: String::new(),
                        holding: true,
                        held: VecDeque::new(),
                        info: None,
                    });
                    registration.link = Some(LinkEntry {
                        session: session_state,
                        down_since: Some(Instant::now()),
                        held_elsewhere: HashSet::new(),
                    });
                    let snapshot = registration.snapshot();
                    entries.insert(alias, registration);
                    Some(snapshot)
                }
            }
        };
        if let Some(snapshot) = snapshot {
            self.emit(EventKind::Registered, snapshot, "a node linked");
        }
        Ok(lease)
    }

    /// Turns what waited longer than `tolerance` for a link that is down into dead
    /// letters: envelopes held for it, and, once the link has been down that long, those
    /// its last stream took and the other end never acknowledged.
    pub fn expire_link_holds(&self, tolerance: Duration) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut entries = self.write();
            for (alias, entry) in entries.iter_mut() {
                let (Some(link), Some(reservation)) = (&entry.link, &mut entry.reservation) else {
                    continue;
                };
                while reservation
                    .held
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) >= tolerance)
                {
                    if let Some((_, envelope)) = reservation.held.pop_front() {
                        expired.push((alias.clone(), envelope));
                    }
                }
                let down_too_long = link
                    .down_since
                    .is_some_and(|since| now.duration_since(since) >= tolerance);
                if down_too_long && let Some(acks) = &entry.acks {
                    expired.extend(acks.drain().into_iter().map(|e| (alias.clone(), e)));
                }
            }
        }
        for (alias, envelope) in expired {
            self.stats.dead_letter(
                &envelope,
                format!("the node behind link {alias} was unreachable for more than {tolerance:?}"),
            );
        }
    }
}
