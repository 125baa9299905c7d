//! reef's synchronised state: versioned key-value in namespaces behind one [`Backend`] trait.
//!
//! Every write is a [`Txn`] (a put is a transaction of one operation, a compare-and-set
//! one with a compare) and takes the next store-wide revision, as in etcd. Two backends:
//! [`Embedded`] (a redb file in the node's data dir, group-committed) and [`Etcd`]. The
//! gRPC edge (`reef.v1.State`) is the node's `StateService`; [`Owners`] deletes the keys
//! bound to a container when it is gone, as a [`Liveness`] port reports it.

mod codec;
mod embedded;
mod etcd;
mod operations;
mod owners;
mod wal;

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use tokio_stream::Stream;

pub use self::{
    embedded::{Embedded, EmbeddedConfig},
    etcd::{Etcd, EtcdConfig, EtcdTls, pb as etcd_v3},
    operations::{OpenWatch, Outcome, StateOp, StateOperations},
    owners::{Departure, Departures, Liveness, Owners},
};

/// A store-wide revision: 0 before the first write.
pub type Revision = u64;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most compares + operations in one transaction (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Most bytes of keys and values in one transaction (under etcd's 1.5 MiB request limit).
pub const MAX_TXN_BYTES: usize = (1 << 20) + (1 << 18);
/// Most keys in one List page.
pub const MAX_PAGE_KEYS: usize = 1000;
/// A List page ends after this many bytes of keys and values.
pub const MAX_PAGE_BYTES: usize = 4 << 20;
/// Longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// A boxed future, so that [`Backend`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// Committed changes in revision order, or the error that ended the watch.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Arc<Batch>, StateError>> + Send>>;

/// A validated namespace name: 1–64 characters of `[a-z0-9._-]`, starting with a letter
/// or digit (so `_`-prefixed names stay free for the backends' own bookkeeping).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// Checks a namespace name.
    pub fn new(name: &str) -> Result<Self, StateError> {
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
        let starts_well = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if name.len() > MAX_NAMESPACE_LEN || !starts_well || !name.chars().all(valid_char) {
            return Err(StateError::Invalid(format!(
                "invalid namespace {name:?}: 1-{MAX_NAMESPACE_LEN} characters of [a-z0-9._-], starting with a letter or digit"
            )));
        }
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's current value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for a deletion event).
    pub value: Bytes,
    /// The revision that created it.
    pub create_revision: Revision,
    /// The revision of its last change (of the deletion, in a deletion event).
    pub mod_revision: Revision,
    /// Writes since it was created.
    pub version: u64,
    /// The container it is bound to.
    pub owner: Option<String>,
}

/// One change inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write a key, optionally bound to a container's life.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Bytes,
        /// The container the key is bound to.
        owner: Option<String>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
    /// Delete every key under a prefix.
    DeletePrefix {
        /// The prefix ("" = the whole namespace).
        prefix: String,
    },
}

/// A condition of a transaction: the key's mod_revision is `mod_revision` (0 = absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// The expected mod_revision.
    pub mod_revision: Revision,
}

/// Compares, then all of the operations or none, in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// Where.
    pub namespace: Namespace,
    /// Every compare must hold.
    pub compares: Vec<Compare>,
    /// Applied in order, under one revision.
    pub ops: Vec<Op>,
}

impl Txn {
    /// A transaction without compares.
    pub fn new(namespace: Namespace, ops: Vec<Op>) -> Self {
        Self {
            namespace,
            compares: Vec::new(),
            ops,
        }
    }

    /// Adds a compare.
    pub fn when(mut self, key: impl Into<String>, mod_revision: Revision) -> Self {
        self.compares.push(Compare {
            key: key.into(),
            mod_revision,
        });
        self
    }

    /// Refuses transactions beyond the limits, empty keys and oversized values.
    pub fn validate(&self) -> Result<(), StateError> {
        let parts = self.compares.len() + self.ops.len();
        if parts > MAX_TXN_OPS {
            return Err(StateError::Invalid(format!(
                "a transaction has at most {MAX_TXN_OPS} compares and operations; this one has {parts}"
            )));
        }
        self.refuse_overlaps()?;
        let mut bytes = 0;
        for compare in &self.compares {
            validate_key(&compare.key)?;
            bytes += compare.key.len();
        }
        for op in &self.ops {
            match op {
                Op::Put { key, value, .. } => {
                    validate_key(key)?;
                    if value.len() > MAX_VALUE_BYTES {
                        return Err(StateError::Invalid(format!(
                            "the value of {key:?} is {} bytes; the limit is {MAX_VALUE_BYTES}",
                            value.len()
                        )));
                    }
                    bytes += key.len() + value.len();
                }
                Op::Delete { key } => {
                    validate_key(key)?;
                    bytes += key.len();
                }
                Op::DeletePrefix { prefix } => {
                    validate_prefix(prefix)?;
                    bytes += prefix.len();
                }
            }
        }
        if bytes > MAX_TXN_BYTES {
            return Err(StateError::Invalid(format!(
                "a transaction carries at most {MAX_TXN_BYTES} bytes of keys and values; this one has {bytes}"
            )));
        }
        Ok(())
    }

    /// A key written twice, or written and deleted, is refused (as etcd refuses it): the
    /// order of such operations would be the only thing deciding the outcome.
    fn refuse_overlaps(&self) -> Result<(), StateError> {
        let mut keys = std::collections::BTreeSet::new();
        let mut prefixes = Vec::new();
        for op in &self.ops {
            match op {
                Op::Put { key, .. } | Op::Delete { key } => {
                    if !keys.insert(key.as_str()) {
                        return Err(StateError::Invalid(format!(
                            "{key:?} appears twice in one transaction"
                        )));
                    }
                }
                Op::DeletePrefix { prefix } => prefixes.push(prefix.as_str()),
            }
        }
        let puts = self.ops.iter().filter_map(|op| match op {
            Op::Put { key, .. } => Some(key.as_str()),
            _ => None,
        });
        for key in puts {
            if let Some(prefix) = prefixes.iter().find(|p| key.starts_with(**p)) {
                return Err(StateError::Invalid(format!(
                    "{key:?} is both written and deleted (under the prefix {prefix:?}) in one transaction"
                )));
            }
        }
        Ok(())
    }

    /// The owners its puts bind keys to.
    pub fn owners(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().filter_map(|op| match op {
            Op::Put {
                owner: Some(owner), ..
            } => Some(owner.as_str()),
            _ => None,
        })
    }
}

/// Checks a key: 1 to [`MAX_KEY_BYTES`] bytes.
pub fn validate_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() {
        return Err(StateError::Invalid("a key cannot be empty".to_owned()));
    }
    validate_prefix(key)
}

/// Checks a prefix: at most [`MAX_KEY_BYTES`] bytes.
pub fn validate_prefix(prefix: &str) -> Result<(), StateError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(StateError::Invalid(format!(
            "a key is at most {MAX_KEY_BYTES} bytes; this one has {}",
            prefix.len()
        )));
    }
    Ok(())
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The compares held and every operation was applied.
    Committed {
        /// The transaction's revision (the store's, if it changed nothing).
        revision: Revision,
        /// For each operation in order: a put's previous key, or `None`.
        previous: Vec<Option<KeyValue>>,
        /// Keys deleted by all the operations.
        deleted: u64,
    },
    /// A compare failed; nothing was applied.
    Conflict {
        /// The store's revision.
        revision: Revision,
        /// The compared keys as they are, in compare order.
        current: Vec<Option<KeyValue>>,
    },
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A key was written.
    Put,
    /// A key was deleted.
    Delete,
}

/// One key's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The namespace.
    pub namespace: Namespace,
    /// The key after the change (its key and revisions only, for a deletion).
    pub kv: KeyValue,
}

/// The changes of one revision, as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Their revision.
    pub revision: Revision,
    /// The changes in the order they were made.
    pub events: Vec<Event>,
}

impl Batch {
    /// The events under `prefix` of `namespace`.
    pub fn matching<'a>(
        &'a self,
        namespace: &'a Namespace,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Event> {
        self.events
            .iter()
            .filter(move |e| &e.namespace == namespace && e.kv.key.starts_with(prefix))
    }
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys in order.
    pub kvs: Vec<KeyValue>,
    /// The last key when there may be more.
    pub next: Option<String>,
    /// The store's revision at the read.
    pub revision: Revision,
}

/// How to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Keys starting with this.
    pub prefix: String,
    /// Keys after this one (the previous page's last key).
    pub after: Option<String>,
    /// At most this many keys.
    pub limit: usize,
    /// Leave values out.
    pub keys_only: bool,
}

/// A watch in progress.
pub struct Watching {
    /// The revision just before the first one the watch delivers (the store's revision
    /// for a watch from now): every change up to it is one the watcher did not ask for,
    /// so a watcher that resumes from it + 1 misses nothing.
    pub revision: Revision,
    /// The changes from the start revision on, filtered to the watch's prefix.
    pub events: EventStream,
}

impl fmt::Debug for Watching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watching")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Why a state operation failed, by cause. The node maps it to a gRPC status once, at its
/// edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// A compare-and-set whose key moved on.
    #[error("{key:?} is at revision {actual}, not the expected {expected}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision asked for.
        expected: Revision,
        /// The key's revision (0: it does not exist).
        actual: Revision,
    },
    /// A revision the store has not reached.
    #[error("revision {requested} is ahead of the store, which is at revision {current}")]
    Future {
        /// The revision asked for.
        requested: Revision,
        /// The store's revision.
        current: Revision,
    },
    /// History before `first` was discarded.
    #[error(
        "revision {requested} was compacted: history starts at revision {first}; resynchronise (List, then watch from its revision + 1)"
    )]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision kept.
        first: Revision,
    },
    /// The owner of a bound key is not a live container.
    #[error("{0} is not a container on this node: a key can only be bound to a live container")]
    NoSuchOwner(String),
    /// The backend cannot be reached.
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    /// The backend failed.
    #[error("state backend failed: {0}")]
    Internal(String),
}

/// A store of namespaced, versioned keys.
pub trait Backend: Send + Sync + 'static {
    /// One key and the store's revision.
    fn get<'a>(
        &'a self,
        namespace: &'a Namespace,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(Option<KeyValue>, Revision), StateError>>;

    /// A page of keys under a prefix.
    fn list<'a>(
        &'a self,
        namespace: &'a Namespace,
        query: ListQuery,
    ) -> BoxFuture<'a, Result<Page, StateError>>;

    /// Compares, then applies all of the operations or none, durably.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StateError>>;

    /// Changes under a prefix from `start` (`None`: from the next revision).
    fn watch<'a>(
        &'a self,
        namespace: &'a Namespace,
        prefix: &'a str,
        start: Option<Revision>,
    ) -> BoxFuture<'a, Result<Watching, StateError>>;

    /// Discards history before `revision`; returns the oldest revision kept.
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<Revision, StateError>>;

    /// The containers that have keys bound to them.
    fn owners(&self) -> BoxFuture<'_, Result<Vec<String>, StateError>>;

    /// Deletes every key bound to `owner`, in one revision; returns how many.
    fn release<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<u64, StateError>>;
}
