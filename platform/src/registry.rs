//! The registry: which aliases are claimed, by whom, and which are attached.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use tokio::sync::broadcast;
use tonic::Status;

use crate::{Alias, Attachment, InvalidAlias, Limits, NodeStats, Outbound};

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
}

/// What happened to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An alias was claimed.
    Registered,
    /// Its attach stream opened.
    Attached,
    /// Its attach stream closed; the alias is released with it.
    Detached,
    /// The alias was released by its holder or expired.
    Deregistered,
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
}

struct Registration {
    spec: ContainerSpec,
    lease: String,
    registered_at: SystemTime,
    attachment: Option<Arc<Attachment>>,
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
        let (envelopes_in, envelopes_out) = self
            .attachment
            .as_ref()
            .map_or((0, 0), |attachment| attachment.counters());
        ContainerSnapshot {
            spec: self.spec.clone(),
            registered_at: self.registered_at,
            attached: self.attachment.is_some(),
            envelopes_in,
            envelopes_out,
        }
    }
}

/// The aliases a node knows, their leases and their attachments.
pub struct Registry {
    entries: RwLock<HashMap<Alias, Registration>>,
    events: broadcast::Sender<RegistryEvent>,
    limits: Limits,
    stats: Arc<NodeStats>,
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
            events: broadcast::channel(1024).0,
            limits,
            stats,
        })
    }

    /// The limits the node runs with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Claims `spec.alias` and returns the lease that attaches to it. A registration
    /// that is not attached within the attach timeout expires.
    pub fn register(self: &Arc<Self>, spec: ContainerSpec) -> Result<String, RegistryError> {
        let lease = crate::lease::new_lease();
        let alias = spec.alias.clone();
        let registration = Registration {
            spec,
            lease: lease.clone(),
            registered_at: SystemTime::now(),
            attachment: None,
        };
        let snapshot = registration.snapshot();
        {
            let mut entries = self.write();
            if entries.contains_key(&alias) {
                return Err(RegistryError::AlreadyRegistered(alias.to_string()));
            }
            if let Some(parent) = &registration.spec.parent
                && ancestors_include(&entries, parent, &alias)
            {
                return Err(RegistryError::ParentCycle(alias.to_string()));
            }
            if entries.len() >= self.limits.max_containers {
                return Err(RegistryError::Full(entries.len()));
            }
            entries.insert(alias.clone(), registration);
        }
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
    pub fn attach(
        &self,
        alias: &str,
        lease: &str,
    ) -> Result<(Arc<Attachment>, Outbound), RegistryError> {
        let alias = Alias::parse(alias)?;
        let (attachment, outbound, snapshot) = {
            let mut entries = self.write();
            let entry = entries
                .get_mut(&alias)
                .ok_or_else(|| RegistryError::NotRegistered(alias.to_string()))?;
            if entry.lease != lease {
                return Err(RegistryError::LeaseMismatch(alias.to_string()));
            }
            if entry.attachment.is_some() {
                return Err(RegistryError::AlreadyAttached(alias.to_string()));
            }
            let (attachment, outbound) =
                Attachment::open(alias.clone(), &self.limits, self.stats.clone());
            entry.attachment = Some(attachment.clone());
            (attachment, outbound, entry.snapshot())
        };
        self.emit(EventKind::Attached, snapshot, "attach stream opened");
        Ok((attachment, outbound))
    }

    /// Closes `attachment` and releases its alias, if the alias still belongs to it.
    pub fn detach(&self, attachment: &Arc<Attachment>, reason: &str, status: Option<Status>) {
        attachment.close(status);
        let removed = {
            let mut entries = self.write();
            match entries.get(attachment.alias()) {
                Some(entry)
                    if entry
                        .attachment
                        .as_ref()
                        .is_some_and(|current| Arc::ptr_eq(current, attachment)) =>
                {
                    entries.remove(attachment.alias())
                }
                _ => None,
            }
        };
        if let Some(entry) = removed {
            tracing::info!(alias = %attachment.alias(), reason, "detached");
            self.emit(EventKind::Detached, entry.snapshot(), reason);
        }
    }

    /// Releases `alias` for the holder of `lease`, closing its stream cleanly.
    pub fn deregister(&self, alias: &str, lease: &str) -> Result<(), RegistryError> {
        let alias = Alias::parse(alias)?;
        let entry = {
            let mut entries = self.write();
            match entries.get(&alias) {
                None => return Err(RegistryError::NotRegistered(alias.to_string())),
                Some(entry) if entry.lease != lease => {
                    return Err(RegistryError::LeaseMismatch(alias.to_string()));
                }
                Some(_) => entries.remove(&alias),
            }
        };
        if let Some(entry) = entry {
            let snapshot = entry.snapshot();
            if let Some(attachment) = entry.attachment {
                attachment.close(None);
            }
            tracing::info!(%alias, "deregistered");
            self.emit(
                EventKind::Deregistered,
                snapshot,
                "deregistered by its holder",
            );
        }
        Ok(())
    }

    fn expire_unattached(&self, alias: &Alias, lease: &str) {
        let entry = {
            let mut entries = self.write();
            match entries.get(alias) {
                Some(entry) if entry.lease == lease && entry.attachment.is_none() => {
                    entries.remove(alias)
                }
                _ => None,
            }
        };
        if let Some(entry) = entry {
            tracing::info!(%alias, "registration expired before it attached");
            self.emit(
                EventKind::Deregistered,
                entry.snapshot(),
                "expired: never attached",
            );
        }
    }

    /// The open attachment of `alias`, if any.
    pub fn lookup(&self, alias: &str) -> Option<Arc<Attachment>> {
        self.read()
            .get(alias)
            .and_then(|entry| entry.attachment.clone())
    }

    /// The registration of `alias`, if any.
    pub fn get(&self, alias: &str) -> Option<ContainerSnapshot> {
        self.read().get(alias).map(Registration::snapshot)
    }

    /// Every registration, sorted by alias.
    pub fn list(&self) -> Vec<ContainerSnapshot> {
        let mut all: Vec<_> = self.read().values().map(Registration::snapshot).collect();
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

    /// Closes every attach stream with `status` (used when the node shuts down).
    pub fn close_all(&self, status: Status) {
        let attachments: Vec<_> = self
            .read()
            .values()
            .filter_map(|entry| entry.attachment.clone())
            .collect();
        for attachment in attachments {
            attachment.close(Some(status.clone()));
        }
    }

    fn emit(&self, kind: EventKind, container: ContainerSnapshot, reason: &str) {
        // No subscriber is not an error: events are only for watchers.
        let _ = self.events.send(RegistryEvent {
            kind,
            container,
            reason: reason.to_owned(),
            at: SystemTime::now(),
        });
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Alias, Registration>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Alias, Registration>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}
