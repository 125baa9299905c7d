//! Synchronised state: a client for `reef.v1.State` and [`Replica`], a local copy of a
//! namespace kept current by a watch.
//!
//! ```no_run
//! # async fn demo(node: reef_sdk::ConnectOptions) -> Result<(), reef_sdk::Error> {
//! use reef_sdk::state::{Replica, StateClient};
//!
//! let state = StateClient::connect(&node).await?;
//! state.put("config", "mode", "fast").await?;
//! let replica = Replica::start(state, "config", "", |change| println!("{change:?}")).await?;
//! assert_eq!(replica.get("mode").map(|e| e.value), Some("fast".into()));
//! # Ok(()) }
//! ```

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use parking_lot::Mutex;
use reef_proto::{self as wire, state_client};
use tokio::{sync::watch, task::JoinHandle};
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};

use crate::{ConnectOptions, Error};

/// A key's value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// The revision of its last change.
    pub revision: u64,
    /// The revision that created it.
    pub created: u64,
    /// Writes since it was created.
    pub version: u64,
    /// The container it is bound to.
    pub owner: Option<String>,
}

impl From<wire::KeyValue> for Entry {
    fn from(kv: wire::KeyValue) -> Self {
        Self {
            value: kv.value,
            revision: kv.mod_revision as u64,
            created: kv.create_revision as u64,
            version: kv.version as u64,
            owner: (!kv.owner.is_empty()).then_some(kv.owner),
        }
    }
}

/// A change seen by a [`Replica`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was written.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        entry: Entry,
    },
    /// A key was deleted.
    Delete {
        /// The key.
        key: String,
        /// The deletion's revision.
        revision: u64,
    },
}

/// A client for `reef.v1.State`.
#[derive(Debug, Clone)]
pub struct StateClient {
    inner: state_client::StateClient<Channel>,
}

impl StateClient {
    /// Connects to the node.
    pub async fn connect(options: &ConnectOptions) -> Result<Self, Error> {
        Ok(Self::new(options.connect().await?))
    }

    /// Uses an open channel to the node.
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: state_client::StateClient::new(channel).max_decoding_message_size(8 << 20),
        }
    }

    /// The generated client, for transactions and everything else.
    pub fn raw(&self) -> state_client::StateClient<Channel> {
        self.inner.clone()
    }

    /// One key.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>, Error> {
        let response = self
            .raw()
            .get(wire::GetRequest {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
            })
            .await
            .map_err(Error::Rejected)?;
        Ok(response.into_inner().kv.map(Entry::from))
    }

    /// Writes a key; returns the write's revision.
    pub async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<u64, Error> {
        self.put_request(wire::PutRequest {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    /// Writes a key if its revision is `expected` (0: if it does not exist). A key that
    /// moved on is `Err` with code ABORTED.
    pub async fn put_if(
        &self,
        namespace: &str,
        key: &str,
        value: impl Into<Bytes>,
        expected: u64,
    ) -> Result<u64, Error> {
        self.put_request(wire::PutRequest {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value: value.into(),
            expected_revision: Some(expected as i64),
            ..Default::default()
        })
        .await
    }

    /// Writes any put request; returns the write's revision.
    pub async fn put_request(&self, request: wire::PutRequest) -> Result<u64, Error> {
        let response = self.raw().put(request).await.map_err(Error::Rejected)?;
        Ok(response.into_inner().revision as u64)
    }

    /// Deletes a key; returns whether it existed.
    pub async fn delete(&self, namespace: &str, key: &str) -> Result<bool, Error> {
        let response = self
            .raw()
            .delete(wire::DeleteRequest {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(Error::Rejected)?;
        Ok(response.into_inner().deleted > 0)
    }

    /// Every key under a prefix, page by page, and the revision of the first page.
    pub async fn list_all(
        &self,
        namespace: &str,
        prefix: &str,
    ) -> Result<(BTreeMap<String, Entry>, u64), Error> {
        let mut entries = BTreeMap::new();
        let mut first_revision = None;
        let mut page_token = String::new();
        loop {
            let page = self
                .raw()
                .list(wire::ListKeysRequest {
                    namespace: namespace.to_owned(),
                    prefix: prefix.to_owned(),
                    page_token,
                    ..Default::default()
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            first_revision.get_or_insert(page.revision as u64);
            entries.extend(
                page.kvs
                    .into_iter()
                    .map(|kv| (kv.key.clone(), Entry::from(kv))),
            );
            if page.next_page_token.is_empty() {
                return Ok((entries, first_revision.unwrap_or_default()));
            }
            page_token = page.next_page_token;
        }
    }
}

/// A local copy of the keys under a prefix of a namespace: a snapshot, then every change
/// from a watch. It resumes from its last revision after a lost connection or a node
/// restart, and takes a new snapshot (reporting the differences as changes) when the
/// history it needs was compacted.
#[derive(Debug)]
pub struct Replica {
    shared: Arc<Shared>,
    revision: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Shared {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Why the replica stopped following, once it has.
    stopped: Mutex<Option<String>>,
    /// New snapshots taken because the history to resume from was compacted.
    resynchronised: std::sync::atomic::AtomicU64,
}

type OnChange = Box<dyn FnMut(&Change) + Send>;

impl Replica {
    /// Takes the snapshot (returning once it is in place), then follows the changes in
    /// the background, calling `on_change` for each, in revision order.
    pub async fn start(
        client: StateClient,
        namespace: &str,
        prefix: &str,
        on_change: impl FnMut(&Change) + Send + 'static,
    ) -> Result<Self, Error> {
        let (entries, revision) = client.list_all(namespace, prefix).await?;
        let shared = Arc::new(Shared {
            entries: Mutex::new(entries),
            ..Shared::default()
        });
        let (revision_tx, revision_rx) = watch::channel(revision);
        let follower = Follower {
            client,
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
            shared: shared.clone(),
            revision: revision_tx,
            on_change: Box::new(on_change),
        };
        let task = tokio::spawn(follower.run());
        Ok(Self {
            shared,
            revision: revision_rx,
            task,
        })
    }

    /// A key's current value in the replica.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.shared.entries.lock().get(key).cloned()
    }

    /// Every key in the replica.
    pub fn snapshot(&self) -> BTreeMap<String, Entry> {
        self.shared.entries.lock().clone()
    }

    /// The store revision the replica is current with.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits until the replica has applied the change made at `revision` (a revision
    /// returned by a write to this namespace and prefix).
    pub async fn wait_for(&self, revision: u64) -> Result<(), Error> {
        let mut current = self.revision.clone();
        current
            .wait_for(|r| *r >= revision)
            .await
            .map(|_| ())
            .map_err(|_| Error::Disconnected(self.stopped().unwrap_or_default()))
    }

    /// How many times the replica took a new snapshot because the history it needed to
    /// resume from had been compacted.
    pub fn resynchronisations(&self) -> u64 {
        self.shared
            .resynchronised
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the replica stopped following (a refused namespace, say), if it has.
    pub fn stopped(&self) -> Option<String> {
        self.shared.stopped.lock().clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Follower {
    client: StateClient,
    namespace: String,
    prefix: String,
    shared: Arc<Shared>,
    revision: watch::Sender<u64>,
    on_change: OnChange,
}

/// Waits between reconnection attempts, doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Follower {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let error = match self.follow().await {
                Ok(()) => Status::unavailable("the watch ended"),
                Err(status) => status,
            };
            match error.code() {
                Code::OutOfRange if error.metadata().get("reef-first-revision").is_some() => {
                    if let Err(status) = self.resynchronise().await {
                        tracing::debug!(%status, "replica: resynchronising failed; retrying");
                        tokio::time::sleep(backoff).await;
                    }
                }
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
                    tracing::debug!(%error, "replica: watch lost; resuming");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                _ => {
                    *self.shared.stopped.lock() = Some(error.to_string());
                    return;
                }
            }
            backoff = Duration::from_millis(50);
        }
    }

    /// Watches from the revision after the replica's, applying every change.
    async fn follow(&mut self) -> Result<(), Status> {
        let start = *self.revision.borrow() + 1;
        let mut stream = self
            .client
            .raw()
            .watch(wire::WatchKeysRequest {
                namespace: self.namespace.clone(),
                prefix: self.prefix.clone(),
                start_revision: start as i64,
            })
            .await?
            .into_inner();
        while let Some(response) = stream.next().await {
            let response = response?;
            let has_events = !response.events.is_empty();
            for event in response.events {
                let kind = event.kind();
                let Some(kv) = event.kv else { continue };
                let change = match kind {
                    wire::watch_event::Kind::Put => Change::Put {
                        key: kv.key.clone(),
                        entry: Entry::from(kv),
                    },
                    wire::watch_event::Kind::Delete => Change::Delete {
                        key: kv.key,
                        revision: kv.mod_revision as u64,
                    },
                };
                self.apply(change);
            }
            // The first response (no events) only says where the store is: the events
            // up to there may still be on their way.
            if has_events {
                let revision = response.revision as u64;
                self.revision.send_if_modified(|r| {
                    let newer = revision > *r;
                    *r = (*r).max(revision);
                    newer
                });
            }
        }
        Ok(())
    }

    fn apply(&mut self, change: Change) {
        {
            let mut entries = self.shared.entries.lock();
            match &change {
                Change::Put { key, entry } => {
                    entries.insert(key.clone(), entry.clone());
                }
                Change::Delete { key, .. } => {
                    entries.remove(key);
                }
            }
        }
        (self.on_change)(&change);
    }

    /// A new snapshot; the differences from the replica become changes.
    async fn resynchronise(&mut self) -> Result<(), Status> {
        let (fresh, revision) = self
            .client
            .list_all(&self.namespace, &self.prefix)
            .await
            .map_err(|e| Status::new(e.code(), e.to_string()))?;
        let old = self.shared.entries.lock().clone();
        for (key, entry) in &old {
            if !fresh.contains_key(key) {
                self.apply(Change::Delete {
                    key: key.clone(),
                    revision: entry.revision.max(revision),
                });
            }
        }
        for (key, entry) in fresh {
            if old.get(&key) != Some(&entry) {
                self.apply(Change::Put { key, entry });
            }
        }
        self.shared
            .resynchronised
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.revision.send_replace(revision);
        Ok(())
    }
}
