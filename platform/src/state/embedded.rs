//! The embedded backend: a redb file in the node's data dir.
//!
//! One writer thread owns every write. It takes all the transactions waiting in its queue,
//! applies them in one redb write transaction (each with its own revision) and commits
//! once: a durable put costs one fsync shared by everyone who put at the same time (group
//! commit). Committed batches go to watchers through a broadcast channel; a watcher that
//! falls behind reads the events table, which keeps the last `history` revisions.

use std::{
    collections::BTreeSet,
    ops::Bound,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
    backends::InMemoryBackend,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Backend, Batch, BoxFuture, Event, EventKind, KeyValue, ListQuery, MAX_PAGE_BYTES, Namespace,
    Op, Page, Revision, StateError, Txn, TxnOutcome, Watching, codec,
};

/// `namespace \0 key` → record (see `codec::record`).
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// revision → the encoded batch of that revision.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `owner \0 namespace \0 key` → (): the keys bound to each container.
const OWNERS: TableDefinition<&[u8], ()> = TableDefinition::new("owners");
/// "revision", "compacted" (the newest revision whose history is gone).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most transactions committed together.
const MAX_GROUP: usize = 1024;
/// Transactions waiting for the writer before callers wait for room.
const QUEUE: usize = 4096;
/// Committed batches buffered for watchers before slow ones fall back to history.
const LIVE_BATCHES: usize = 4096;
/// Batches read from history at a time by a catching-up watcher.
const HISTORY_CHUNK: usize = 256;

/// Where and how the embedded store keeps its data.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The redb file; `None` keeps everything in memory (tests).
    pub path: Option<PathBuf>,
    /// Revisions of history kept for watches that resume.
    pub history: u64,
}

impl EmbeddedConfig {
    /// A store in `path` keeping the default 100,000 revisions of history.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
            history: 100_000,
        }
    }
}

/// The embedded store. Cheap to share: clones use the same writer.
#[derive(Debug, Clone)]
pub struct Embedded {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Write>,
}

#[derive(Debug)]
struct Shared {
    db: Database,
    /// The newest committed revision.
    revision: AtomicU64,
    live: broadcast::Sender<Arc<Batch>>,
}

enum Write {
    Txn(Txn, oneshot::Sender<Result<TxnOutcome, StateError>>),
    Release(String, oneshot::Sender<Result<u64, StateError>>),
    Compact(Revision, oneshot::Sender<Result<Revision, StateError>>),
}

fn internal(error: impl std::fmt::Display) -> StateError {
    StateError::Internal(error.to_string())
}

impl Embedded {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(config: EmbeddedConfig) -> Result<Self, StateError> {
        let db = match &config.path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(internal)?;
                }
                Database::create(path).map_err(|e| {
                    StateError::Internal(format!("cannot open {}: {e}", path.display()))
                })?
            }
            None => Database::builder()
                .create_with_backend(InMemoryBackend::new())
                .map_err(internal)?,
        };
        let write = db.begin_write().map_err(internal)?;
        let revision = {
            write.open_table(KV).map_err(internal)?;
            write.open_table(EVENTS).map_err(internal)?;
            write.open_table(OWNERS).map_err(internal)?;
            let meta = write.open_table(META).map_err(internal)?;
            read_meta(&meta, "revision")?
        };
        write.commit().map_err(internal)?;
        let shared = Arc::new(Shared {
            db,
            revision: AtomicU64::new(revision),
            live: broadcast::channel(LIVE_BATCHES).0,
        });
        let (writes, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            shared: shared.clone(),
            history: config.history.max(1),
        };
        std::thread::Builder::new()
            .name("reef-state-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(internal)?;
        Ok(Self { shared, writes })
    }

    async fn submit<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, StateError>>) -> Write,
    ) -> Result<T, StateError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StateError::Unavailable("the state writer has stopped".to_owned());
        self.writes
            .send(write(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn read_meta(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StateError> {
    Ok(meta.get(name).map_err(internal)?.map_or(0, |v| v.value()))
}

fn kv_key(namespace: &Namespace, key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(namespace.as_str().len() + 1 + key.len());
    bytes.extend_from_slice(namespace.as_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn owner_key(owner: &str, namespace: &Namespace, key: &str) -> Vec<u8> {
    let mut bytes = owner.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&kv_key(namespace, key));
    bytes
}

/// The range of encoded keys that start with `start`.
fn prefix_range(start: &[u8]) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (Bound::Included(start), Bound::Unbounded)
}

impl Backend for Embedded {
    fn get<'a>(
        &'a self,
        namespace: &'a Namespace,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(Option<KeyValue>, Revision), StateError>> {
        Box::pin(async move {
            let read = self.shared.db.begin_read().map_err(internal)?;
            let meta = read.open_table(META).map_err(internal)?;
            let kv = read.open_table(KV).map_err(internal)?;
            let found = kv
                .get(kv_key(namespace, key).as_slice())
                .map_err(internal)?
                .map(|record| codec::record(key.to_owned(), record.value(), true))
                .transpose()?;
            Ok((found, read_meta(&meta, "revision")?))
        })
    }

    fn list<'a>(
        &'a self,
        namespace: &'a Namespace,
        query: ListQuery,
    ) -> BoxFuture<'a, Result<Page, StateError>> {
        Box::pin(async move {
            let read = self.shared.db.begin_read().map_err(internal)?;
            let meta = read.open_table(META).map_err(internal)?;
            let table = read.open_table(KV).map_err(internal)?;
            let prefix = kv_key(namespace, &query.prefix);
            let start = match &query.after {
                Some(after) => Bound::Excluded(kv_key(namespace, after)),
                None => Bound::Included(prefix.clone()),
            };
            let start = match &start {
                Bound::Included(s) => Bound::Included(s.as_slice()),
                Bound::Excluded(s) => Bound::Excluded(s.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            };
            let skip = namespace.as_str().len() + 1;
            let mut kvs = Vec::new();
            let mut bytes = 0;
            let mut more = false;
            for entry in table
                .range::<&[u8]>((start, Bound::Unbounded))
                .map_err(internal)?
            {
                let (key, record) = entry.map_err(internal)?;
                let key = key.value();
                if !key.starts_with(&prefix) {
                    break;
                }
                if kvs.len() == query.limit || bytes >= MAX_PAGE_BYTES {
                    more = true;
                    break;
                }
                let key = String::from_utf8(key[skip..].to_vec()).map_err(internal)?;
                let kv = codec::record(key, record.value(), !query.keys_only)?;
                bytes += kv.key.len() + kv.value.len();
                kvs.push(kv);
            }
            Ok(Page {
                next: more.then(|| kvs.last().map(|kv| kv.key.clone())).flatten(),
                kvs,
                revision: read_meta(&meta, "revision")?,
            })
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnOutcome, StateError>> {
        Box::pin(self.submit(|reply| Write::Txn(txn, reply)))
    }

    fn watch<'a>(
        &'a self,
        namespace: &'a Namespace,
        prefix: &'a str,
        start: Option<Revision>,
    ) -> BoxFuture<'a, Result<Watching, StateError>> {
        Box::pin(async move {
            // Subscribe before reading the revision: nothing committed after it is missed.
            let live = self.shared.live.subscribe();
            let current = self.shared.revision.load(Ordering::Acquire);
            let next = match start {
                None | Some(0) => current + 1,
                Some(start) if start > current + 1 => {
                    return Err(StateError::Future {
                        requested: start,
                        current,
                    });
                }
                Some(start) => {
                    let first = self.shared.first_revision()?;
                    if start < first {
                        return Err(StateError::Compacted {
                            requested: start,
                            first,
                        });
                    }
                    start
                }
            };
            let (events, stream) = mpsc::channel(16);
            let watcher = Watcher {
                shared: self.shared.clone(),
                namespace: namespace.clone(),
                prefix: prefix.to_owned(),
                next,
                events,
            };
            tokio::spawn(watcher.run(live));
            Ok(Watching {
                revision: current,
                events: Box::pin(ReceiverStream::new(stream)),
            })
        })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<Revision, StateError>> {
        Box::pin(self.submit(move |reply| Write::Compact(revision, reply)))
    }

    fn owners(&self) -> BoxFuture<'_, Result<Vec<String>, StateError>> {
        Box::pin(async move {
            let read = self.shared.db.begin_read().map_err(internal)?;
            let table = read.open_table(OWNERS).map_err(internal)?;
            let mut owners = BTreeSet::new();
            for entry in table.iter().map_err(internal)? {
                let (key, _) = entry.map_err(internal)?;
                let key = key.value();
                let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
                owners.insert(String::from_utf8_lossy(&key[..end]).into_owned());
            }
            Ok(owners.into_iter().collect())
        })
    }

    fn release<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<u64, StateError>> {
        Box::pin(self.submit(|reply| Write::Release(owner.to_owned(), reply)))
    }
}

impl Shared {
    /// The oldest revision whose events are still kept.
    fn first_revision(&self) -> Result<Revision, StateError> {
        let read = self.db.begin_read().map_err(internal)?;
        let meta = read.open_table(META).map_err(internal)?;
        Ok(read_meta(&meta, "compacted")? + 1)
    }

    /// Up to [`HISTORY_CHUNK`] committed batches from `from` on.
    fn history(&self, from: Revision) -> Result<Vec<Arc<Batch>>, StateError> {
        let read = self.db.begin_read().map_err(internal)?;
        let meta = read.open_table(META).map_err(internal)?;
        let first = read_meta(&meta, "compacted")? + 1;
        if from < first {
            return Err(StateError::Compacted {
                requested: from,
                first,
            });
        }
        let events = read.open_table(EVENTS).map_err(internal)?;
        let mut batches = Vec::new();
        for entry in events.range(from..).map_err(internal)?.take(HISTORY_CHUNK) {
            let (revision, encoded) = entry.map_err(internal)?;
            batches.push(Arc::new(codec::batch(revision.value(), encoded.value())?));
        }
        Ok(batches)
    }
}

/// Feeds one watch: history until it is level with the writer, then live batches;
/// back to history whenever it falls behind the broadcast.
struct Watcher {
    shared: Arc<Shared>,
    namespace: Namespace,
    prefix: String,
    /// The next revision to deliver.
    next: Revision,
    events: mpsc::Sender<Result<Arc<Batch>, StateError>>,
}

impl Watcher {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<Batch>>) {
        loop {
            if let Err(error) = self.catch_up().await {
                let _ = self.events.send(Err(error)).await;
                return;
            }
            loop {
                match live.recv().await {
                    Ok(batch) if batch.revision < self.next => continue,
                    Ok(batch) if batch.revision == self.next => {
                        if !self.deliver(batch).await {
                            return;
                        }
                    }
                    // A gap or a lag: the missing revisions are in history.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        let stopped = StateError::Unavailable("the state store closed".into());
                        let _ = self.events.send(Err(stopped)).await;
                        return;
                    }
                }
            }
        }
    }

    async fn catch_up(&mut self) -> Result<(), StateError> {
        while self.next <= self.shared.revision.load(Ordering::Acquire) {
            let shared = self.shared.clone();
            let from = self.next;
            let batches = tokio::task::spawn_blocking(move || shared.history(from))
                .await
                .map_err(internal)??;
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                if !self.deliver(batch).await {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Sends the batch's matching events; false once the watcher has gone.
    async fn deliver(&mut self, batch: Arc<Batch>) -> bool {
        self.next = batch.revision + 1;
        let matching = batch.matching(&self.namespace, &self.prefix).count();
        if matching == 0 {
            return !self.events.is_closed();
        }
        let batch = match matching == batch.events.len() {
            true => batch,
            false => Arc::new(Batch {
                revision: batch.revision,
                events: batch
                    .matching(&self.namespace, &self.prefix)
                    .cloned()
                    .collect(),
            }),
        };
        self.events.send(Ok(batch)).await.is_ok()
    }
}

/// The single writer.
struct Writer {
    shared: Arc<Shared>,
    history: u64,
}

/// What one write request produced inside a group.
enum Applied {
    Txn(
        oneshot::Sender<Result<TxnOutcome, StateError>>,
        Result<TxnOutcome, StateError>,
    ),
    Release(
        oneshot::Sender<Result<u64, StateError>>,
        Result<u64, StateError>,
    ),
    Compact(
        oneshot::Sender<Result<Revision, StateError>>,
        Result<Revision, StateError>,
    ),
}

impl Writer {
    fn run(self, mut queue: mpsc::Receiver<Write>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = queue.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(write) => group.push(write),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group);
        }
    }

    /// Applies every write of the group in one redb transaction and commits once.
    fn commit_group(&self, group: &mut Vec<Write>) {
        let mut batches = Vec::new();
        let mut applied = Vec::with_capacity(group.len());
        let result = (|| -> Result<Revision, StateError> {
            let write = self.shared.db.begin_write().map_err(internal)?;
            let mut revision = self.shared.revision.load(Ordering::Acquire);
            for request in group.drain(..) {
                applied.push(self.apply(&write, request, &mut revision, &mut batches)?);
            }
            self.trim_history(&write, revision)?;
            write
                .open_table(META)
                .map_err(internal)?
                .insert("revision", revision)
                .map_err(internal)?;
            write.commit().map_err(internal)?;
            Ok(revision)
        })();
        match result {
            Ok(revision) => {
                self.shared.revision.store(revision, Ordering::Release);
                for batch in batches {
                    let _ = self.shared.live.send(Arc::new(batch));
                }
                for done in applied {
                    match done {
                        Applied::Txn(reply, outcome) => drop(reply.send(outcome)),
                        Applied::Release(reply, outcome) => drop(reply.send(outcome)),
                        Applied::Compact(reply, outcome) => drop(reply.send(outcome)),
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "state commit failed; nothing of this group was applied");
                // Requests not yet drained are dropped with the group: their callers see
                // the writer's answer channel close.
                group.clear();
                for done in applied {
                    match done {
                        Applied::Txn(reply, _) => drop(reply.send(Err(error.clone()))),
                        Applied::Release(reply, _) => drop(reply.send(Err(error.clone()))),
                        Applied::Compact(reply, _) => drop(reply.send(Err(error.clone()))),
                    }
                }
            }
        }
    }

    fn apply(
        &self,
        write: &WriteTransaction,
        request: Write,
        revision: &mut Revision,
        batches: &mut Vec<Batch>,
    ) -> Result<Applied, StateError> {
        Ok(match request {
            Write::Txn(txn, reply) => {
                let outcome = apply_txn(write, &txn, revision, batches);
                // Storage errors fail the whole group; a refusal answers only this one.
                match outcome {
                    Err(StateError::Internal(error)) => return Err(StateError::Internal(error)),
                    outcome => Applied::Txn(reply, outcome),
                }
            }
            Write::Release(owner, reply) => {
                let txn = owned_keys(write, &owner)?;
                let deleted = match txn.is_empty() {
                    true => 0,
                    false => {
                        let mut deleted = 0;
                        for (namespace, ops) in txn {
                            match apply_txn(write, &Txn::new(namespace, ops), revision, batches)? {
                                TxnOutcome::Committed { deleted: n, .. } => deleted += n,
                                TxnOutcome::Conflict { .. } => {}
                            }
                        }
                        deleted
                    }
                };
                Applied::Release(reply, Ok(deleted))
            }
            Write::Compact(target, reply) => {
                let outcome = compact(write, target, *revision);
                match outcome {
                    Err(StateError::Internal(error)) => return Err(StateError::Internal(error)),
                    outcome => Applied::Compact(reply, outcome),
                }
            }
        })
    }

    /// Keeps the events table to about `history` revisions, trimming in steps of an
    /// eighth so that a busy store does not delete one row per commit.
    fn trim_history(&self, write: &WriteTransaction, revision: Revision) -> Result<(), StateError> {
        let mut meta = write.open_table(META).map_err(internal)?;
        let compacted = read_meta(&meta, "compacted")?;
        if revision.saturating_sub(compacted) <= self.history + self.history / 8 {
            return Ok(());
        }
        let upto = revision - self.history;
        let mut events = write.open_table(EVENTS).map_err(internal)?;
        events.retain_in(..=upto, |_, _| false).map_err(internal)?;
        meta.insert("compacted", upto).map_err(internal)?;
        Ok(())
    }
}

/// The keys bound to `owner`, as one delete transaction per namespace.
fn owned_keys(
    write: &WriteTransaction,
    owner: &str,
) -> Result<Vec<(Namespace, Vec<Op>)>, StateError> {
    let owners = write.open_table(OWNERS).map_err(internal)?;
    let mut start = owner.as_bytes().to_vec();
    start.push(0);
    let mut by_namespace: Vec<(Namespace, Vec<Op>)> = Vec::new();
    for entry in owners
        .range::<&[u8]>(prefix_range(&start))
        .map_err(internal)?
    {
        let (key, _) = entry.map_err(internal)?;
        let key = key.value();
        let Some(rest) = key.strip_prefix(start.as_slice()) else {
            break;
        };
        let split = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| internal("bad owner row"))?;
        let namespace = Namespace::new(std::str::from_utf8(&rest[..split]).map_err(internal)?)?;
        let key = String::from_utf8(rest[split + 1..].to_vec()).map_err(internal)?;
        match by_namespace.last_mut() {
            Some((last, ops)) if *last == namespace => ops.push(Op::Delete { key }),
            _ => by_namespace.push((namespace, vec![Op::Delete { key }])),
        }
    }
    Ok(by_namespace)
}

fn compact(
    write: &WriteTransaction,
    target: Revision,
    revision: Revision,
) -> Result<Revision, StateError> {
    if target > revision {
        return Err(StateError::Future {
            requested: target,
            current: revision,
        });
    }
    let mut meta = write.open_table(META).map_err(internal)?;
    let compacted = read_meta(&meta, "compacted")?;
    let upto = target.saturating_sub(1);
    if upto > compacted {
        let mut events = write.open_table(EVENTS).map_err(internal)?;
        events.retain_in(..=upto, |_, _| false).map_err(internal)?;
        meta.insert("compacted", upto).map_err(internal)?;
    }
    Ok(upto.max(compacted) + 1)
}

/// Applies one transaction at the next revision, or refuses it with no effect.
fn apply_txn(
    write: &WriteTransaction,
    txn: &Txn,
    revision: &mut Revision,
    batches: &mut Vec<Batch>,
) -> Result<TxnOutcome, StateError> {
    let mut kv = write.open_table(KV).map_err(internal)?;
    let namespace = &txn.namespace;
    let current =
        |kv: &redb::Table<&[u8], &[u8]>, key: &str| -> Result<Option<KeyValue>, StateError> {
            kv.get(kv_key(namespace, key).as_slice())
                .map_err(internal)?
                .map(|record| codec::record(key.to_owned(), record.value(), true))
                .transpose()
        };
    if let Some(ahead) = txn.compares.iter().find(|c| c.mod_revision > *revision) {
        return Err(StateError::Future {
            requested: ahead.mod_revision,
            current: *revision,
        });
    }
    let mut holds = true;
    for compare in &txn.compares {
        let actual = current(&kv, &compare.key)?.map_or(0, |kv| kv.mod_revision);
        holds &= actual == compare.mod_revision;
    }
    if !holds {
        let current = txn
            .compares
            .iter()
            .map(|c| current(&kv, &c.key))
            .collect::<Result<_, _>>()?;
        return Ok(TxnOutcome::Conflict {
            revision: *revision,
            current,
        });
    }

    let mut owners = write.open_table(OWNERS).map_err(internal)?;
    let next = *revision + 1;
    let mut events = Vec::new();
    let mut previous = Vec::with_capacity(txn.ops.len());
    let mut deleted = 0;
    let delete = |kv: &mut redb::Table<&[u8], &[u8]>,
                  owners: &mut redb::Table<&[u8], ()>,
                  events: &mut Vec<Event>,
                  key: String|
     -> Result<bool, StateError> {
        let Some(old) = kv
            .remove(kv_key(namespace, &key).as_slice())
            .map_err(internal)?
        else {
            return Ok(false);
        };
        let old = codec::record(key, old.value(), false)?;
        if let Some(owner) = &old.owner {
            owners
                .remove(owner_key(owner, namespace, &old.key).as_slice())
                .map_err(internal)?;
        }
        events.push(Event {
            kind: EventKind::Delete,
            namespace: namespace.clone(),
            kv: KeyValue {
                key: old.key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: next,
                version: 0,
                owner: None,
            },
        });
        Ok(true)
    };
    for op in &txn.ops {
        match op {
            Op::Put { key, value, owner } => {
                let old = current(&kv, key)?;
                let new = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: old.as_ref().map_or(next, |o| o.create_revision),
                    mod_revision: next,
                    version: old.as_ref().map_or(1, |o| o.version + 1),
                    owner: owner.clone(),
                };
                if let Some(old_owner) = old.as_ref().and_then(|o| o.owner.as_ref())
                    && Some(old_owner) != owner.as_ref()
                {
                    owners
                        .remove(owner_key(old_owner, namespace, key).as_slice())
                        .map_err(internal)?;
                }
                if let Some(owner) = owner {
                    owners
                        .insert(owner_key(owner, namespace, key).as_slice(), ())
                        .map_err(internal)?;
                }
                kv.insert(
                    kv_key(namespace, key).as_slice(),
                    codec::encode_record(&new).as_slice(),
                )
                .map_err(internal)?;
                events.push(Event {
                    kind: EventKind::Put,
                    namespace: namespace.clone(),
                    kv: new,
                });
                previous.push(old);
            }
            Op::Delete { key } => {
                deleted += u64::from(delete(&mut kv, &mut owners, &mut events, key.clone())?);
                previous.push(None);
            }
            Op::DeletePrefix { prefix } => {
                let start = kv_key(namespace, prefix);
                let skip = namespace.as_str().len() + 1;
                let mut keys = Vec::new();
                for entry in kv.range::<&[u8]>(prefix_range(&start)).map_err(internal)? {
                    let (key, _) = entry.map_err(internal)?;
                    let key = key.value();
                    if !key.starts_with(&start) {
                        break;
                    }
                    keys.push(String::from_utf8(key[skip..].to_vec()).map_err(internal)?);
                }
                for key in keys {
                    deleted += u64::from(delete(&mut kv, &mut owners, &mut events, key)?);
                }
                previous.push(None);
            }
        }
    }
    if events.is_empty() {
        return Ok(TxnOutcome::Committed {
            revision: *revision,
            previous,
            deleted,
        });
    }
    *revision = next;
    let batch = Batch {
        revision: next,
        events,
    };
    write
        .open_table(EVENTS)
        .map_err(internal)?
        .insert(next, codec::encode_batch(&batch).as_slice())
        .map_err(internal)?;
    batches.push(batch);
    Ok(TxnOutcome::Committed {
        revision: next,
        previous,
        deleted,
    })
}
