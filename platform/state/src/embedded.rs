//! The embedded backend: a redb file in the node's data dir, made durable by a
//! write-ahead log (see `wal.rs`).
//!
//! Writes are group-committed without a writer thread: a caller that finds no commit in
//! progress leads one, taking every write queued meanwhile, applying them in one redb
//! transaction (each with its own revision), appending them to the log with one
//! `fdatasync` and answering everyone. A lone writer so commits on its own task, without
//! a thread hop; under load, or when a checkpoint is due, the leader hands on to a
//! blocking thread that keeps committing while writes queue and runs the checkpoint. Committed batches go to watchers through a broadcast
//! channel; a watcher that falls behind reads the events table, which keeps the last
//! `history` revisions.

use std::{
    collections::BTreeSet,
    ops::Bound,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use parking_lot::Mutex;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
    backends::InMemoryBackend,
};
use tokio::sync::{Semaphore, broadcast, oneshot};
use tokio::time::Instant;

use super::{
    Backend, Batch, BoxFuture, Event, EventKind, EventStream, KeyValue, ListQuery, MAX_PAGE_BYTES,
    Namespace, Op, Page, Revision, StateError, Txn, TxnOutcome, Watching, codec, wal::Wal,
};

mod apply;

use self::apply::{apply_txn, compact, owned_keys, replay, trim_history};

/// `namespace \0 key` → record (see `codec::record`).
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// revision → the encoded batch of that revision.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `owner \0 namespace \0 key` → (): the keys bound to each container.
const OWNERS: TableDefinition<&[u8], ()> = TableDefinition::new("owners");
/// "revision", "compacted" (the newest revision whose history is gone).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most writes committed together.
const MAX_GROUP: usize = 1024;
/// Writes queued before callers wait for room.
const QUEUE: usize = 4096;
/// Committed batches buffered for watchers before slow ones fall back to history.
const LIVE_BATCHES: usize = 4096;
/// Batches read from history at a time by a catching-up watcher.
const HISTORY_CHUNK: usize = 256;
/// How often the log is folded into a durable redb commit…
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// …or sooner, once the log is this long: a checkpoint's work, and so the wait of a
/// write that arrives during it, grows with what it folds in (at 64 MiB a checkpoint
/// after a second of batched writes took ~90 ms).
const CHECKPOINT_BYTES: u64 = 16 << 20;

/// Where and how the embedded store keeps its data.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The redb file (the log sits beside it, `.wal`); `None` keeps everything in
    /// memory (tests).
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

/// The embedded store. Cheap to share: clones use the same database and queue.
#[derive(Debug, Clone)]
pub struct Embedded {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    db: Database,
    /// The newest committed revision.
    revision: AtomicU64,
    live: broadcast::Sender<Arc<Batch>>,
    /// Writes waiting for a commit, and whether one is being led.
    queue: Mutex<Queue>,
    /// Bounds the queue.
    room: Semaphore,
    /// The commit state; only the leader locks it.
    writer: Mutex<Writer>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<Write>,
    leading: bool,
}

#[derive(Debug)]
enum Write {
    Txn(Txn, oneshot::Sender<Result<TxnOutcome, StateError>>),
    Release(String, oneshot::Sender<Result<u64, StateError>>),
    Compact(Revision, oneshot::Sender<Result<Revision, StateError>>),
}

fn internal(error: impl std::fmt::Display) -> StateError {
    StateError::Internal(error.to_string())
}

impl Embedded {
    /// Opens (or creates) the store and applies what its log holds past the last
    /// checkpoint.
    pub fn open(config: EmbeddedConfig) -> Result<Self, StateError> {
        let (db, wal) = match &config.path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(internal)?;
                }
                let db = Database::create(path).map_err(|e| {
                    StateError::Internal(format!("cannot open {}: {e}", path.display()))
                })?;
                (db, Some(Wal::open(&path.with_extension("wal"))?))
            }
            None => {
                let db = Database::builder()
                    .create_with_backend(InMemoryBackend::new())
                    .map_err(internal)?;
                (db, None)
            }
        };
        let write = db.begin_write().map_err(internal)?;
        let mut revision = {
            write.open_table(KV).map_err(internal)?;
            write.open_table(EVENTS).map_err(internal)?;
            write.open_table(OWNERS).map_err(internal)?;
            let meta = write.open_table(META).map_err(internal)?;
            read_meta(&meta, "revision")?
        };
        let wal = match wal {
            Some((mut wal, logged)) => {
                let checkpointed = revision;
                let replayed = logged.iter().filter(|b| b.revision > checkpointed).count();
                for batch in logged.into_iter().filter(|b| b.revision > checkpointed) {
                    if batch.revision != revision + 1 {
                        return Err(StateError::Internal(format!(
                            "the state log jumps from revision {revision} to {}",
                            batch.revision
                        )));
                    }
                    replay(&write, &batch)?;
                    revision = batch.revision;
                }
                // The history kept is the same after a crash as without one.
                trim_history(&write, revision, config.history.max(1))?;
                write
                    .open_table(META)
                    .map_err(internal)?
                    .insert("revision", revision)
                    .map_err(internal)?;
                write.commit().map_err(internal)?;
                wal.reset()?;
                if replayed > 0 {
                    tracing::info!(replayed, revision, "state: applied the log after a crash");
                }
                Some(wal)
            }
            None => {
                write.commit().map_err(internal)?;
                None
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                revision: AtomicU64::new(revision),
                live: broadcast::channel(LIVE_BATCHES).0,
                queue: Mutex::default(),
                room: Semaphore::new(QUEUE),
                writer: Mutex::new(Writer {
                    wal,
                    history: config.history.max(1),
                    checkpointed: Instant::now(),
                    checkpoint_now: false,
                    poisoned: None,
                }),
            }),
        })
    }

    /// Queues a write and waits for its commit, leading the commit if nobody is.
    async fn submit<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<T, StateError>>) -> Write,
    ) -> Result<T, StateError> {
        let _room = self
            .shared
            .room
            .acquire()
            .await
            .map_err(|_| StateError::Unavailable("the state store closed".into()))?;
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.shared.queue.lock();
            queue.pending.push(write(reply));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            // The first group (which holds this write) is committed here; if more
            // writes queued meanwhile, or a checkpoint is due, a blocking thread goes on
            // leading.
            if self.shared.lead_one_group(Leader::Caller) {
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(
                    move || {
                        while shared.lead_one_group(Leader::BlockingThread) {}
                    },
                );
            }
        }
        answer
            .await
            .map_err(|_| StateError::Internal("the state commit was abandoned".into()))?
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
            let watcher = Watcher {
                shared: self.shared.clone(),
                namespace: namespace.clone(),
                prefix: prefix.to_owned(),
                next,
                live,
                backlog: Default::default(),
                catching_up: true,
                ended: false,
            };
            Ok(Watching {
                revision: next - 1,
                events: watcher.into_stream(),
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

/// One watch: history until it is level with the store, then live batches; back to
/// history whenever it falls behind the broadcast. Polled by the watch's response
/// stream itself, so a live batch costs one task wake-up per watcher.
struct Watcher {
    shared: Arc<Shared>,
    namespace: Namespace,
    prefix: String,
    /// The next revision to deliver.
    next: Revision,
    live: broadcast::Receiver<Arc<Batch>>,
    /// Batches read from history, not yet delivered.
    backlog: std::collections::VecDeque<Arc<Batch>>,
    catching_up: bool,
    ended: bool,
}

impl Watcher {
    fn into_stream(self) -> EventStream {
        Box::pin(futures_util::stream::unfold(
            self,
            |mut watcher| async move {
                let next = watcher.next_batch().await?;
                Some((next, watcher))
            },
        ))
    }

    /// The next batch with matching events, or the error that ends the watch.
    async fn next_batch(&mut self) -> Option<Result<Arc<Batch>, StateError>> {
        while !self.ended {
            if let Some(batch) = self.backlog.pop_front() {
                if let Some(matching) = self.matching(batch) {
                    return Some(Ok(matching));
                }
                continue;
            }
            if self.catching_up {
                if self.next > self.shared.revision.load(Ordering::Acquire) {
                    self.catching_up = false;
                    continue;
                }
                let shared = self.shared.clone();
                let from = self.next;
                let read = tokio::task::spawn_blocking(move || shared.history(from))
                    .await
                    .map_err(internal)
                    .and_then(|read| read);
                match read {
                    Ok(batches) if batches.is_empty() => self.catching_up = false,
                    Ok(batches) => self.backlog.extend(batches),
                    Err(error) => {
                        self.ended = true;
                        return Some(Err(error));
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) if batch.revision < self.next => {}
                Ok(batch) if batch.revision == self.next => self.backlog.push_back(batch),
                // A gap or a lag: the missing revisions are in history.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.ended = true;
                    return Some(Err(StateError::Unavailable(
                        "the state store closed".into(),
                    )));
                }
            }
        }
        None
    }

    /// The batch's events under the watch's prefix, if any; moves `next` past it.
    fn matching(&mut self, batch: Arc<Batch>) -> Option<Arc<Batch>> {
        self.next = batch.revision + 1;
        let matching = batch.matching(&self.namespace, &self.prefix).count();
        match matching {
            0 => None,
            n if n == batch.events.len() => Some(batch),
            _ => Some(Arc::new(Batch {
                revision: batch.revision,
                events: batch
                    .matching(&self.namespace, &self.prefix)
                    .cloned()
                    .collect(),
            })),
        }
    }
}

/// The commit state, owned by whoever leads.
#[derive(Debug)]
struct Writer {
    /// `None` for an in-memory store.
    wal: Option<Wal>,
    history: u64,
    checkpointed: Instant,
    /// A compaction asks for a checkpoint without waiting for the interval.
    checkpoint_now: bool,
    /// Set when a commit failed half-way: the store refuses writes until restarted.
    poisoned: Option<String>,
}

/// What one write produced inside a group.
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

impl Applied {
    fn answer(self) {
        match self {
            Applied::Txn(reply, outcome) => drop(reply.send(outcome)),
            Applied::Release(reply, outcome) => drop(reply.send(outcome)),
            Applied::Compact(reply, outcome) => drop(reply.send(outcome)),
        }
    }

    fn fail(self, error: &StateError) {
        match self {
            Applied::Txn(reply, _) => drop(reply.send(Err(error.clone()))),
            Applied::Release(reply, _) => drop(reply.send(Err(error.clone()))),
            Applied::Compact(reply, _) => drop(reply.send(Err(error.clone()))),
        }
    }
}

impl Write {
    fn refuse(self, error: &StateError) {
        match self {
            Write::Txn(_, reply) => drop(reply.send(Err(error.clone()))),
            Write::Release(_, reply) => drop(reply.send(Err(error.clone()))),
            Write::Compact(_, reply) => drop(reply.send(Err(error.clone()))),
        }
    }
}

/// Who leads a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// A writer's own task, on a runtime worker: it commits its group and no more.
    Caller,
    /// A blocking thread, which also runs checkpoints (up to ~100 ms of I/O).
    BlockingThread,
}

impl Shared {
    /// Commits the writes queued now, and a due checkpoint if `leader` may block; returns
    /// whether there is more to do (the leader goes on) or gives up the lead.
    fn lead_one_group(&self, leader: Leader) -> bool {
        let group: Vec<Write> = {
            let mut queue = self.queue.lock();
            let take = queue.pending.len().min(MAX_GROUP);
            queue.pending.drain(..take).collect()
        };
        if !group.is_empty() {
            let mut writer = self.writer.lock();
            // This blocks the caller's worker for one fsync (~0.15 ms). `block_in_place`
            // would hand the worker's other tasks to another thread first, but that
            // hand-off costs as much as the fsync on a small VM; under load the groups
            // after the first run on a blocking thread anyway.
            self.commit_group(&mut writer, group);
        }
        let checkpoint_due = {
            let mut writer = self.writer.lock();
            match leader {
                Leader::Caller => writer.checkpoint_due(),
                Leader::BlockingThread => {
                    if let Err(error) = self.checkpoint_if_due(&mut writer) {
                        tracing::error!(%error, "state checkpoint failed; the log keeps growing until one succeeds");
                    }
                    false
                }
            }
        };
        let mut queue = self.queue.lock();
        queue.leading = !queue.pending.is_empty() || checkpoint_due;
        queue.leading
    }

    /// Applies every write of the group in one redb transaction, logs it durably,
    /// commits and answers.
    fn commit_group(&self, writer: &mut Writer, group: Vec<Write>) {
        if let Some(why) = &writer.poisoned {
            let error = StateError::Internal(why.clone());
            group.into_iter().for_each(|write| write.refuse(&error));
            return;
        }
        // A compaction is not in the log: make it durable at the next checkpoint, now.
        writer.checkpoint_now |= group
            .iter()
            .any(|write| matches!(write, Write::Compact(..)));
        let mut batches = Vec::new();
        let mut applied = Vec::with_capacity(group.len());
        let mut group = group.into_iter();
        let staged = (|| -> Result<(WriteTransaction, Revision), StateError> {
            let mut write = self.db.begin_write().map_err(internal)?;
            write.set_durability(Durability::None).map_err(internal)?;
            let mut revision = self.revision.load(Ordering::Acquire);
            for request in group.by_ref() {
                applied.push(writer.apply(&write, request, &mut revision, &mut batches)?);
            }
            trim_history(&write, revision, writer.history)?;
            write
                .open_table(META)
                .map_err(internal)?
                .insert("revision", revision)
                .map_err(internal)?;
            Ok((write, revision))
        })();
        let staged = staged.and_then(|(write, revision)| {
            // Durable first: once the log holds the group, a crash replays it.
            if let Some(wal) = &mut writer.wal {
                wal.append(&batches)?;
            }
            Ok((write, revision))
        });
        let (write, revision) = match staged {
            Ok(staged) => staged,
            Err(error) => {
                tracing::error!(%error, "state commit failed; nothing of this group was applied");
                applied.into_iter().for_each(|done| done.fail(&error));
                group.for_each(|write| write.refuse(&error));
                return;
            }
        };
        if let Err(error) = write.commit() {
            // The log has the group but redb does not: only a restart (which replays
            // the log) makes the two agree again.
            let why = format!(
                "the state store could not commit revision {revision} after logging it ({error}); restart the node to recover"
            );
            tracing::error!("{why}");
            let error = StateError::Internal(why.clone());
            applied.into_iter().for_each(|done| done.fail(&error));
            writer.poisoned = Some(why);
            return;
        }
        self.revision.store(revision, Ordering::Release);
        for batch in batches {
            let _ = self.live.send(Arc::new(batch));
        }
        applied.into_iter().for_each(Applied::answer);
    }

    /// Folds the log into a durable redb commit if one is due.
    fn checkpoint_if_due(&self, writer: &mut Writer) -> Result<(), StateError> {
        if !writer.checkpoint_due() {
            return Ok(());
        }
        // An empty durable commit makes every earlier non-durable one durable.
        let write = self.db.begin_write().map_err(internal)?;
        write.commit().map_err(internal)?;
        if let Some(wal) = &mut writer.wal {
            wal.reset()?;
        }
        writer.checkpointed = Instant::now();
        writer.checkpoint_now = false;
        Ok(())
    }
}

impl Writer {
    /// Whether the log should be folded into redb now: it is a second old or 16 MiB
    /// long, or a compaction asked.
    fn checkpoint_due(&self) -> bool {
        let Some(wal) = &self.wal else {
            return false;
        };
        self.checkpoint_now
            || (wal.len() > 0
                && (self.checkpointed.elapsed() >= CHECKPOINT_INTERVAL
                    || wal.len() >= CHECKPOINT_BYTES))
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
                let mut deleted = 0;
                for (namespace, ops) in owned_keys(write, &owner)? {
                    if let TxnOutcome::Committed { deleted: n, .. } =
                        apply_txn(write, &Txn::new(namespace, ops), revision, batches)?
                    {
                        deleted += n;
                    }
                }
                Applied::Release(reply, Ok(deleted))
            }
            Write::Compact(target, reply) => match compact(write, target, *revision) {
                Err(StateError::Internal(error)) => return Err(StateError::Internal(error)),
                outcome => Applied::Compact(reply, outcome),
            },
        })
    }
}

type KvTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;
type OwnersTable<'t> = redb::Table<'t, &'static [u8], ()>;

#[cfg(test)]
mod tests;
