//! The registry: which aliases are claimed, by whom, and which are attached.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use parking_lot::{Mutex, RwLock};
use reef_core::{Alias, HistogramSnapshot, InvalidAlias};
use reef_proto::{Envelope, EnvelopeKind};
use tokio::sync::{broadcast, mpsc, mpsc::error::TrySendError};
use tokio::time::Instant;

pub use reef_core::lifecycle::{DetachCause, EventKind, Phase};
use reef_supervision::{Observed, SupervisedSnapshot};

use crate::{
    AckLog, Attachment, CloseReason, Limits, NodeStats, Outbound, Pending, link::LinkSession,
};

mod holds;
mod links;
mod supervised;
mod tasks;
#[cfg(test)]
mod tests;

/// What a container says about itself when it claims an alias.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Its address.
    pub alias: Alias,
    /// The behaviour it runs.
    pub name: String,
    /// Its parent container, if any.
    pub parent: Option<Alias>,
    /// Where it serves `reef.v1.Container`, if anywhere.
    pub endpoint: Option<String>,
    /// Its OS process id, if known.
    pub pid: Option<u32>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
impl ContainerSpec {
    /// A container that says nothing about itself but its alias (unit tests).
    pub(crate) fn bare(alias: &str) -> Self {
        Self {
            alias: Alias::parse(alias).unwrap(),
            name: String::new(),
            parent: None,
            endpoint: None,
            pid: None,
            labels: Default::default(),
        }
    }
}

/// A registered container as seen at one moment.
#[derive(Debug, Clone)]
pub struct ContainerSnapshot {
    /// What it registered with.
    pub spec: ContainerSpec,
    /// When it registered.
    pub registered_at: SystemTime,
    /// Whether its attach stream is open.
    pub attached: bool,
    /// Envelopes routed from it.
    pub envelopes_in: u64,
    /// Envelopes delivered to it.
    pub envelopes_out: u64,
    /// Envelopes waiting for it: queued for its stream and not yet written, or held
    /// while it is (re)starting.
    pub queued: u64,
    /// The requests its stream answered and how long they took.
    pub answered: HistogramSnapshot,
    /// What the supervisor knows, for containers the node runs.
    pub supervised: Option<SupervisedSnapshot>,
    /// For task containers: what their host reports.
    pub task: Option<TaskSnapshot>,
}

/// A task container as its host reports it.
#[derive(Debug, Clone)]
pub struct TaskSnapshot {
    /// The process that runs it; its alias routes to the host's stream.
    pub host: Alias,
    /// Times the host restarted it.
    pub restarts: u32,
    /// When it last (re)started, as far as the node heard.
    pub started_at: SystemTime,
}

/// A task container a host announces (`Supervisor.Host`).
#[derive(Debug, Clone)]
pub struct HostedTask {
    /// Its alias.
    pub alias: Alias,
    /// The behaviour it runs.
    pub name: String,
    /// Its parent; `None` = the host.
    pub parent: Option<Alias>,
    /// Times the host restarted it.
    pub restarts: u32,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// Why an envelope for an unattached alias was not held for it.
#[derive(Debug)]
pub enum HoldRefused {
    /// Nobody has or reserves the alias.
    Unknown,
    /// The alias belongs to a stopped container.
    Stopped,
    /// The hold queue is full.
    Full(usize),
    /// The alias attached meanwhile: deliver to it.
    Open(Arc<Attachment>),
}

/// A change in the registry, for `Supervisor.Watch`.
#[derive(Debug, Clone)]
pub struct RegistryEvent {
    /// What happened.
    pub kind: EventKind,
    /// The container, as it was.
    pub container: ContainerSnapshot,
    /// Why, for humans.
    pub reason: String,
    /// When.
    pub at: SystemTime,
    /// For lifecycle events: where in the transition.
    pub phase: Option<Phase>,
}

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The alias (or parent alias) is malformed.
    #[error(transparent)]
    InvalidAlias(#[from] InvalidAlias),
    /// Someone holds the alias.
    #[error("alias {0:?} is already registered")]
    AlreadyRegistered(String),
    /// Nobody holds the alias.
    #[error("alias {0:?} is not registered")]
    NotRegistered(String),
    /// The caller does not hold the alias's lease.
    #[error("the lease does not match the registration of {0:?}")]
    LeaseMismatch(String),
    /// The alias already has an open attach stream.
    #[error("alias {0:?} is already attached")]
    AlreadyAttached(String),
    /// The parent chain would lead back to the alias itself.
    #[error("registering {0:?} under that parent would make a cycle of parents")]
    ParentCycle(String),
    /// The node holds as many registrations as it may.
    #[error("the node already holds {0} registrations")]
    Full(usize),
    /// The alias belongs to a supervised container and the token does not match.
    #[error(
        "alias {0:?} belongs to a container the node supervises; only its process (with REEF_TOKEN) may register it"
    )]
    Reserved(String),
    /// A child node claimed an alias that the tree above this node holds elsewhere.
    #[error(
        "alias {0:?} belongs to another part of the tree (the parent node refused it), so it is not routed to this link"
    )]
    HeldElsewhere(String),
}

/// Policies may name a container's supervision ancestors.
impl reef_access::Ancestry for Registry {
    fn parent_of(&self, alias: &str) -> Option<String> {
        self.get(alias)
            .and_then(|container| container.spec.parent.map(String::from))
    }
}

struct Registration {
    spec: ContainerSpec,
    /// `None` while a supervised container's alias waits for its process.
    lease: Option<String>,
    registered_at: SystemTime,
    attachment: Option<Arc<Attachment>>,
    reservation: Option<Reservation>,
    /// For a task container: its host.
    task: Option<TaskSnapshot>,
    /// For a task host: the tasks it runs (they go when it goes).
    tasks: HashSet<Alias>,
    /// Acknowledged-mode envelopes delivered and not yet acknowledged, across its
    /// attach streams; created on the first attach.
    acks: Option<Arc<AckLog>>,
    /// For a link to another node: what it remembers across streams.
    link: Option<LinkEntry>,
}

/// A link registration's own state.
struct LinkEntry {
    session: Arc<LinkSession>,
    /// When its last stream closed, while it has none.
    down_since: Option<Instant>,
    /// Aliases the child at the other end claimed and the tree above holds elsewhere
    /// (see [`Registry::refuse_route`]); forgotten when that node restarts.
    held_elsewhere: HashSet<Alias>,
}

/// An alias the supervisor keeps for a container it runs, across restarts.
struct Reservation {
    token: String,
    /// Whether envelopes are held while the container is not attached (false when
    /// it is stopped).
    holding: bool,
    /// Envelopes that arrived while it was not attached, with their arrival time.
    held: VecDeque<(Instant, Envelope)>,
    /// The supervisor's view; `None` for a link to another node.
    info: Option<SupervisedSnapshot>,
}

/// Whether `alias` is `start` or one of its registered ancestors.
fn ancestors_include(entries: &HashMap<Alias, Registration>, start: &Alias, alias: &Alias) -> bool {
    let mut current = Some(start);
    // Bounded by the number of entries, so a corrupt chain cannot loop forever.
    for _ in 0..=entries.len() {
        match current {
            Some(ancestor) if ancestor == alias => return true,
            Some(ancestor) => current = entries.get(ancestor).and_then(|e| e.spec.parent.as_ref()),
            None => return false,
        }
    }
    true
}

impl Registration {
    fn snapshot(&self) -> ContainerSnapshot {
        let attachment = self.attachment.as_ref();
        let (envelopes_in, envelopes_out) =
            attachment.map_or((0, 0), |attachment| attachment.counters());
        ContainerSnapshot {
            spec: self.spec.clone(),
            registered_at: self.registered_at,
            attached: self.attachment.is_some(),
            envelopes_in,
            envelopes_out,
            queued: attachment.map_or(0, |attachment| attachment.queued() as u64)
                + self.reservation.as_ref().map_or(0, |r| r.held.len() as u64),
            answered: attachment.map_or_else(HistogramSnapshot::default, |attachment| {
                attachment.answered().snapshot()
            }),
            supervised: self.reservation.as_ref().and_then(|r| r.info.clone()),
            task: self.task.clone(),
        }
    }

    fn new(spec: ContainerSpec, lease: Option<String>) -> Self {
        Self {
            spec,
            lease,
            registered_at: SystemTime::now(),
            attachment: None,
            reservation: None,
            task: None,
            tasks: HashSet::new(),
            acks: None,
            link: None,
        }
    }
}

/// The alias that answers for `alias`: its host for a task, itself for a registered
/// alias, the link to the parent node (`parent`) for an unknown one.
fn owner_in(
    entries: &HashMap<Alias, Registration>,
    parent: Option<&Alias>,
    alias: &str,
) -> Option<Alias> {
    match entries.get(alias) {
        Some(entry) => match &entry.task {
            Some(task) => Some(task.host.clone()),
            None => Some(entry.spec.alias.clone()),
        },
        None => {
            let alias = Alias::parse(alias).ok()?;
            Some(parent.cloned().unwrap_or(alias))
        }
    }
}

/// `entry` as seen now: a task is attached while its host is.
fn snapshot_in(entries: &HashMap<Alias, Registration>, entry: &Registration) -> ContainerSnapshot {
    let mut snapshot = entry.snapshot();
    if let Some(task) = &entry.task {
        snapshot.attached = entries
            .get(&task.host)
            .and_then(|host| host.attachment.as_ref())
            .is_some_and(|attachment| !attachment.is_closed());
    }
    snapshot
}

/// Removes `alias` and the tasks it hosts; returns what was removed, the alias first.
/// What it had not acknowledged is a dead letter.
fn remove_with_tasks(
    entries: &mut HashMap<Alias, Registration>,
    alias: &Alias,
    stats: &NodeStats,
) -> Vec<Registration> {
    let Some(mut entry) = entries.remove(alias) else {
        return Vec::new();
    };
    for envelope in entry.acks.iter().flat_map(|acks| acks.drain()) {
        stats.dead_letter(
            &envelope,
            format!("{alias} went away before acknowledging it"),
        );
    }
    let tasks = std::mem::take(&mut entry.tasks);
    let mut removed = vec![entry];
    removed.extend(tasks.iter().filter_map(|task| entries.remove(task)));
    removed
}

/// How the `origin` of an ERROR the node raised itself begins: `node:NAME`.
pub const NODE_ORIGIN_PREFIX: &str = "node:";

/// The aliases a node knows, their leases and their attachments.
pub struct Registry {
    entries: RwLock<HashMap<Alias, Registration>>,
    events: broadcast::Sender<RegistryEvent>,
    observer: Mutex<Option<mpsc::UnboundedSender<Observed>>>,
    limits: Limits,
    stats: Arc<NodeStats>,
    /// On a child node: the link to its parent, where unknown aliases go.
    parent: OnceLock<Alias>,
    /// `node:NAME`: the origin of the errors this node raises itself.
    node_origin: OnceLock<String>,
    /// Counts registrations and removals: a route cached before the count changed may
    /// be wrong although its stream is open (a host's task stopped; an alias that went
    /// to the parent registered here).
    route_changes: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: Limits, stats: Arc<NodeStats>) -> Arc<Self> {
        Arc::new(Self {
            entries: RwLock::new(HashMap::new()),
            events: broadcast::channel(4096).0,
            observer: Mutex::new(None),
            limits,
            stats,
            parent: OnceLock::new(),
            node_origin: OnceLock::new(),
            route_changes: AtomicU64::new(0),
        })
    }

    /// The limits the node runs with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Claims `spec.alias` and returns the lease that attaches to it. A registration
    /// that is not attached within the attach timeout expires.
    /// The alias of a supervised container is claimed with its `token`; the
    /// supervisor's parent wins over the one the process names.
    pub fn register(
        self: &Arc<Self>,
        mut spec: ContainerSpec,
        token: Option<&str>,
    ) -> Result<String, RegistryError> {
        let lease = reef_core::new_lease();
        let alias = spec.alias.clone();
        let snapshot = {
            let mut entries = self.write();
            match entries.get_mut(&alias) {
                Some(entry) if entry.reservation.is_some() => {
                    let token_matches = entry
                        .reservation
                        .as_ref()
                        .is_some_and(|r| token == Some(r.token.as_str()));
                    if !token_matches {
                        return Err(RegistryError::Reserved(alias.to_string()));
                    }
                    if entry.attachment.is_some() {
                        return Err(RegistryError::AlreadyAttached(alias.to_string()));
                    }
                    spec.parent = entry.spec.parent.clone();
                    entry.spec = spec;
                    entry.lease = Some(lease.clone());
                    entry.registered_at = SystemTime::now();
                    entry.snapshot()
                }
                Some(_) => return Err(RegistryError::AlreadyRegistered(alias.to_string())),
                None => {
                    if let Some(parent) = &spec.parent
                        && ancestors_include(&entries, parent, &alias)
                    {
                        return Err(RegistryError::ParentCycle(alias.to_string()));
                    }
                    if entries.len() >= self.limits.max_containers {
                        return Err(RegistryError::Full(entries.len()));
                    }
                    let registration = Registration::new(spec, Some(lease.clone()));
                    let snapshot = registration.snapshot();
                    entries.insert(alias.clone(), registration);
                    snapshot
                }
            }
        };
        self.emit(EventKind::Registered, snapshot, "registered");
        let registry = Arc::downgrade(self);
        let timeout = self.limits.attach_timeout;
        let expiring = lease.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(registry) = registry.upgrade() {
                registry.expire_unattached(&alias, &expiring);
            }
        });
        Ok(lease)
    }

    /// Binds a new attach stream to a registration.
    /// `credit`: what the container grants at the start (credit-based flow control),
    /// or `None` to be sent to without limit.
    pub fn attach(
        self: &Arc<Self>,
        alias: &str,
        lease: &str,
        credit: Option<u64>,
    ) -> Result<(Arc<Attachment>, Outbound), RegistryError> {
        let alias = Alias::parse(alias)?;
        let (attachment, outbound, snapshot) = {
            let mut entries = self.write();
            let entry = entries
                .get_mut(&alias)
                .ok_or_else(|| RegistryError::NotRegistered(alias.to_string()))?;
            if entry.lease.as_deref() != Some(lease) {
                return Err(RegistryError::LeaseMismatch(alias.to_string()));
            }
            if entry.attachment.is_some() {
                return Err(RegistryError::AlreadyAttached(alias.to_string()));
            }
            let acks = entry
                .acks
                .get_or_insert_with(|| Arc::new(AckLog::new(self.limits.unacked_capacity)))
                .clone();
            let link = entry.link.as_mut().map(|link| {
                link.down_since = None;
                link.session.clone()
            });
            let (attachment, outbound) = Attachment::open(
                alias.clone(),
                &self.limits,
                credit,
                link,
                acks.clone(),
                self.stats.clone(),
                Arc::downgrade(self),
            );
            // What the previous stream delivered and nobody acknowledged comes first.
            for envelope in acks.redeliver(attachment.data()) {
                self.stats
                    .dead_letter(&envelope, "no room to deliver it again after a restart");
            }
            if let Some(reservation) = &mut entry.reservation {
                self.deliver_held(reservation, &attachment);
                self.observe(Observed::Attached {
                    alias: alias.clone(),
                    pid: entry.spec.pid,
                });
            }
            entry.attachment = Some(attachment.clone());
            (attachment, outbound, entry.snapshot())
        };
        self.emit(EventKind::Attached, snapshot, "attach stream opened");
        Ok((attachment, outbound))
    }

    /// Closes `attachment` and releases its alias, if the alias still belongs to it.
    /// A supervised container's alias stays reserved; the supervisor hears why.
    pub fn detach(
        &self,
        attachment: &Arc<Attachment>,
        cause: DetachCause,
        reason: &str,
        close: Option<CloseReason>,
    ) {
        attachment.close(close);
        let detached = {
            let mut entries = self.write();
            let alias = attachment.alias();
            match entries.get_mut(alias) {
                Some(entry)
                    if entry
                        .attachment
                        .as_ref()
                        .is_some_and(|current| Arc::ptr_eq(current, attachment)) =>
                {
                    if entry.reservation.is_some() {
                        let snapshot = entry.snapshot();
                        entry.attachment = None;
                        entry.lease = None;
                        if let Some(link) = &mut entry.link {
                            link.down_since = Some(Instant::now());
                        }
                        self.observe(Observed::Detached {
                            alias: alias.clone(),
                            cause,
                        });
                        vec![snapshot]
                    } else {
                        remove_with_tasks(&mut entries, alias, &self.stats)
                            .iter()
                            .map(Registration::snapshot)
                            .collect()
                    }
                }
                _ => Vec::new(),
            }
        };
        let mut detached = detached.into_iter();
        if let Some(snapshot) = detached.next() {
            tracing::info!(alias = %attachment.alias(), reason, "detached");
            self.emit(EventKind::Detached, snapshot, reason);
        }
        for task in detached {
            self.emit(EventKind::Deregistered, task, "its host detached");
        }
    }

    /// Releases `alias` for the holder of `lease`, closing its stream cleanly (OK, with
    /// the reason in the `reef-close-reason` trailer).
    pub fn deregister(&self, alias: &str, lease: &str) -> Result<(), RegistryError> {
        let alias = Alias::parse(alias)?;
        let (supervised, attachment) = {
            let entries = self.read();
            match entries.get(&alias) {
                None => return Err(RegistryError::NotRegistered(alias.to_string())),
                Some(entry) if entry.lease.as_deref() != Some(lease) => {
                    return Err(RegistryError::LeaseMismatch(alias.to_string()));
                }
                Some(entry) => (entry.reservation.is_some(), entry.attachment.clone()),
            }
        };
        if supervised {
            // A supervised container leaving on its own: the reservation stays and the
            // supervisor decides (its process is about to end).
            match attachment {
                Some(attachment) => self.detach(
                    &attachment,
                    DetachCause::Ended,
                    &CloseReason::Deregistered.to_string(),
                    Some(CloseReason::Deregistered),
                ),
                None => self.with_entry(&alias, |entry| entry.lease = None),
            }
            return Ok(());
        }
        let removed = {
            let mut entries = self.write();
            match entries.get(&alias) {
                Some(entry) if entry.lease.as_deref() == Some(lease) => {
                    remove_with_tasks(&mut entries, &alias, &self.stats)
                }
                _ => Vec::new(),
            }
        };
        if !removed.is_empty() {
            tracing::info!(%alias, "deregistered");
        }
        for entry in removed {
            if let Some(attachment) = &entry.attachment {
                attachment.close(Some(CloseReason::Deregistered));
            }
            self.emit(
                EventKind::Deregistered,
                entry.snapshot(),
                "deregistered by its holder (or its host)",
            );
        }
        Ok(())
    }

    fn expire_unattached(&self, alias: &Alias, lease: &str) {
        let entry = {
            let mut entries = self.write();
            match entries.get_mut(alias) {
                Some(entry)
                    if entry.lease.as_deref() == Some(lease) && entry.attachment.is_none() =>
                {
                    if entry.reservation.is_some() {
                        // The supervisor notices a process that never attaches.
                        entry.lease = None;
                        None
                    } else {
                        Some(remove_with_tasks(&mut entries, alias, &self.stats))
                    }
                }
                _ => None,
            }
        };
        if let Some(removed) = entry {
            tracing::info!(%alias, "registration expired before it attached");
            for entry in removed {
                self.emit(
                    EventKind::Deregistered,
                    entry.snapshot(),
                    "expired: never attached",
                );
            }
        }
    }

    /// The open attachment of `alias`, if any (one that is closing does not count).
    /// A task's attachment is its host's.
    pub fn lookup(&self, alias: &str) -> Option<Arc<Attachment>> {
        let entries = self.read();
        let entry = match entries.get(alias) {
            Some(entry) => entry,
            None => entries.get(self.parent.get()?)?,
        };
        let entry = match &entry.task {
            Some(task) => entries.get(&task.host)?,
            None => entry,
        };
        entry
            .attachment
            .clone()
            .filter(|attachment| !attachment.is_closed())
    }

    /// Tells the callee of request `id` that its caller gave up (deadline, CANCEL from the
    /// caller, or the caller detached). Best effort: behind the request on the callee's data
    /// lane, or nowhere if the callee is not attached.
    pub(crate) fn cancel(&self, id: u64, pending: &Pending) {
        let Some(callee) = self.lookup(pending.callee.as_str()) else {
            return;
        };
        let cancel = Envelope {
            kind: EnvelopeKind::Cancel as i32,
            correlation_id: id,
            origin: pending.origin.to_string(),
            destination: pending.addressee.to_string(),
            ..Default::default()
        };
        let _ = callee.data().try_send(cancel);
    }

    /// The alias that answers for `alias`: its host for a task, itself otherwise
    /// (`None` when it is not a valid alias).
    pub fn owner(&self, alias: &str) -> Option<Alias> {
        owner_in(&self.read(), self.parent.get(), alias)
    }

    /// [`Registry::owner`] of a registered alias; `None` for one that is not.
    pub fn registered_owner(&self, alias: &str) -> Option<Alias> {
        let entries = self.read();
        entries
            .contains_key(alias)
            .then(|| owner_in(&entries, None, alias))?
    }

    /// The behaviour name of `alias`, if registered.
    pub fn name_of(&self, alias: &str) -> Option<String> {
        self.read().get(alias).map(|entry| entry.spec.name.clone())
    }

    /// The registration of `alias`, if any.
    pub fn get(&self, alias: &str) -> Option<ContainerSnapshot> {
        let entries = self.read();
        entries.get(alias).map(|entry| snapshot_in(&entries, entry))
    }

    /// Every registration, sorted by alias.
    pub fn list(&self) -> Vec<ContainerSnapshot> {
        let entries = self.read();
        let mut all: Vec<_> = entries
            .values()
            .map(|entry| snapshot_in(&entries, entry))
            .collect();
        drop(entries);
        all.sort_by(|a, b| a.spec.alias.cmp(&b.spec.alias));
        all
    }

    /// How many aliases are registered.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no alias is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Future registry events.
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// Closes every attach stream because the node is shutting down.
    pub fn close_all(&self) {
        let attachments: Vec<_> = self
            .read()
            .values()
            .filter_map(|entry| entry.attachment.clone())
            .collect();
        for attachment in attachments {
            attachment.close(Some(CloseReason::ShuttingDown));
        }
    }

    /// How many times an alias was registered or removed: routes cached under another
    /// count may be stale.
    pub fn route_changes(&self) -> u64 {
        self.route_changes.load(Ordering::Acquire)
    }

    fn emit(&self, kind: EventKind, container: ContainerSnapshot, reason: &str) {
        if matches!(kind, EventKind::Registered | EventKind::Deregistered) {
            self.route_changes.fetch_add(1, Ordering::Release);
        }
        // No subscriber is not an error: events are only for watchers.
        let _ = self.events.send(RegistryEvent {
            kind,
            container,
            reason: reason.to_owned(),
            at: SystemTime::now(),
            phase: None,
        });
    }

    fn with_entry(&self, alias: &Alias, change: impl FnOnce(&mut Registration)) {
        if let Some(entry) = self.write().get_mut(alias) {
            change(entry);
        }
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, HashMap<Alias, Registration>> {
        self.entries.read()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, HashMap<Alias, Registration>> {
        self.entries.write()
    }
}
