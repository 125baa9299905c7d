//! Task containers: many in-process containers hosted by one container process
//! (Kraken's threads), sharing its attach stream.
//!
//! Each task has its own alias, mailbox and handler. An idle task is a table entry, not
//! a running future: a drain runs only while its mailbox has envelopes. A handler that
//! panics is replaced from its factory (`on_start` runs again) and the envelopes behind
//! the one that panicked stay queued, so its siblings and its mailbox are untouched.
//! Past its restart intensity the task is stopped and the host reports the failure to
//! its node (error type [`TASK_INTENSITY_ERROR`]), whose solver chain decides.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use parking_lot::{Mutex, RwLock};
use reef_proto::{self as wire, Envelope, EnvelopeKind};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::{
    Client, Context, Error, Handler,
    client::error_envelope,
    handler::{Counters, handle},
};

mod cell;

/// The error type a host reports when a task exceeds its restart intensity.
pub const TASK_INTENSITY_ERROR: &str = "reef.task.intensity";
/// Envelopes queued for one task before more are refused.
const TASK_MAILBOX: usize = 8192;
/// Announcements sent to the node in one `Supervisor.Host` call.
const ANNOUNCE_BATCH: usize = 1024;

/// When a task is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Always (the default).
    #[default]
    Permanent,
    /// Only after a failure; a task can only end by failing, so like `Permanent`.
    Transient,
    /// Never: a task that fails is removed.
    Temporary,
}

/// How a task presents itself and is restarted.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Its alias.
    pub alias: String,
    /// Its behaviour's name.
    pub name: String,
    /// Its parent's alias; `None` = the host.
    pub parent: Option<String>,
    /// When it is restarted.
    pub restart: Restart,
    /// Restarts allowed within `period` before the host gives up on it.
    pub max_restarts: u32,
    /// The intensity window.
    pub period: Duration,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

impl TaskOptions {
    /// A permanent task `alias` (also its behaviour's name), 3 restarts in 5 s like an
    /// OTP supervisor's default intensity… times ten, since a task restarts in µs.
    pub fn new(alias: &str) -> Self {
        Self {
            alias: alias.to_owned(),
            name: alias.to_owned(),
            parent: None,
            restart: Restart::Permanent,
            max_restarts: 30,
            period: Duration::from_secs(5),
            labels: BTreeMap::new(),
        }
    }

    /// The same options with behaviour `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }
}

/// The task containers of this process. Get it from [`Context::tasks`].
///
/// ```no_run
/// use reef_sdk::{Context, Handler, HandlerError, Message, TaskOptions};
///
/// struct Worker;
/// impl Handler for Worker {
///     async fn on_request(&mut self, _: &Context, m: Message) -> Result<bytes::Bytes, HandlerError> {
///         Ok(m.payload)
///     }
/// }
///
/// struct Pool;
/// impl Handler for Pool {
///     async fn on_start(&mut self, ctx: &Context) -> Result<(), HandlerError> {
///         // The node may start more with `reef create ALIAS --task-host pool --name worker`.
///         ctx.tasks().define("worker", |_args| Worker);
///         for n in 0..100 {
///             let options = TaskOptions::new(&format!("pool/worker-{n}"));
///             ctx.tasks().spawn(options, || Worker).await.map_err(HandlerError::from)?;
///         }
///         Ok(())
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("running", &self.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// The host's current client (a new one after the node was lost and found again).
    host: Arc<RwLock<Option<Client>>>,
    table: RwLock<HashMap<Arc<str>, Arc<dyn Cell>>>,
    behaviours: RwLock<HashMap<String, Arc<dyn Behaviour>>>,
    announcer: mpsc::UnboundedSender<Announcement>,
    counters: Arc<Counters>,
}

/// What the host tells the node, with whom to tell when the node accepted it.
enum Announcement {
    Upsert(wire::HostedTask, Option<Accepted>),
    Remove(String, Option<Accepted>),
}

type Accepted = oneshot::Sender<Result<(), Error>>;

impl Tasks {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        let host = Arc::new(RwLock::new(None));
        let (announcer, announcements) = mpsc::unbounded_channel();
        tokio::spawn(announce(host.clone(), announcements));
        Self {
            inner: Arc::new(Inner {
                host,
                table: RwLock::new(HashMap::new()),
                behaviours: RwLock::new(HashMap::new()),
                announcer,
                counters,
            }),
        }
    }

    /// The client of the host's current attach stream.
    pub(crate) fn host_client(&self) -> Option<Client> {
        self.inner.host.read().clone()
    }

    /// Uses `client` from now on and announces every task again (a node that was
    /// restarted knows none of them).
    pub(crate) fn attached(&self, client: Client) {
        *self.inner.host.write() = Some(client);
        let cells: Vec<_> = self.table().values().cloned().collect();
        for cell in cells {
            self.announce(Announcement::Upsert(cell.record(), None));
        }
    }

    /// Defines behaviour `name` for tasks the node starts (`Container.StartTask`);
    /// `factory` gets the task's arguments.
    pub fn define<H: Handler>(
        &self,
        name: &str,
        factory: impl Fn(&[String]) -> H + Send + Sync + 'static,
    ) {
        self.inner
            .behaviours
            .write()
            .insert(name.to_owned(), Arc::new(Defined(Arc::new(factory))));
    }

    /// Starts a task and returns once the node routes its alias here. `factory` makes
    /// its handler, again after each panic. Spawning an alias that runs here already
    /// under the same behaviour does nothing (`Ok(false)`).
    pub async fn spawn<H: Handler>(
        &self,
        options: TaskOptions,
        factory: impl Fn() -> H + Send + Sync + 'static,
    ) -> Result<bool, Error> {
        let factory: Arc<dyn Fn() -> H + Send + Sync> = Arc::new(factory);
        self.spawn_cell(options, factory).await
    }

    /// Starts many tasks with one factory, announcing them to the node in batches;
    /// one result per task, in order.
    pub async fn spawn_all<H: Handler>(
        &self,
        options: impl IntoIterator<Item = TaskOptions>,
        factory: impl Fn() -> H + Send + Sync + 'static,
    ) -> Vec<Result<bool, Error>> {
        let factory: Arc<dyn Fn() -> H + Send + Sync> = Arc::new(factory);
        let mut waiting = Vec::new();
        for options in options {
            waiting.push(self.start_local(options, factory.clone()).await);
        }
        let mut results = Vec::with_capacity(waiting.len());
        for started in waiting {
            results.push(settled(started).await);
        }
        results
    }

    /// Stops task `alias`: its `on_stop` runs, what is queued for it is refused, and
    /// this returns once the node no longer routes the alias here.
    pub async fn stop(&self, alias: &str) -> Result<(), Error> {
        let cell = self
            .table()
            .get(alias)
            .cloned()
            .ok_or_else(|| not_found(alias))?;
        let refusals = cell.clone().halt(self.clone()).await;
        self.refuse_all(refusals).await;
        self.remove_and_wait(alias).await
    }

    /// A client that sends as task `alias`, which runs here: what it sends carries the
    /// task's alias as its origin, so replies and pushes come back to the task.
    pub fn client(&self, alias: &str) -> Option<Client> {
        let alias = self.table().get_key_value(alias)?.0.clone();
        Some(self.host()?.for_task(alias))
    }

    /// How many tasks run here.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no task runs here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Times task `alias` was restarted, if it runs here.
    pub fn restarts(&self, alias: &str) -> Option<u32> {
        self.table().get(alias).map(|cell| cell.record().restarts)
    }

    /// Starts task `options.alias` as behaviour `options.name` defined with
    /// [`Tasks::define`] (the node's `StartTask`).
    pub(crate) async fn spawn_defined(
        &self,
        options: TaskOptions,
        args: Vec<String>,
    ) -> Result<bool, Status> {
        let behaviour = self.inner.behaviours.read().get(&options.name).cloned();
        let Some(behaviour) = behaviour else {
            return Err(Status::not_found(format!(
                "this host defines no task behaviour {:?}",
                options.name
            )));
        };
        behaviour
            .spawn(self, options, args)
            .await
            .map_err(|error| Status::new(error.code(), error.to_string()))
    }

    /// Hands `envelope` to the task it is addressed to; returns an ERROR to send back
    /// when it cannot be delivered.
    pub(crate) fn deliver(&self, envelope: Envelope) -> Option<Envelope> {
        let cell = self.table().get(envelope.destination.as_str()).cloned();
        match cell {
            Some(cell) => cell.deliver(envelope, self),
            None => {
                // The node still routes an alias this host no longer runs (e.g. this
                // process restarted): tell it, and refuse.
                let alias = envelope.destination.clone();
                self.announce(Announcement::Remove(alias.clone(), None));
                refusal(&envelope, Code::NotFound, &format!("no task {alias} here"))
            }
        }
    }

    async fn spawn_cell<H: Handler>(
        &self,
        options: TaskOptions,
        factory: Arc<dyn Fn() -> H + Send + Sync>,
    ) -> Result<bool, Error> {
        settled(self.start_local(options, factory).await).await
    }

    /// Starts the task here (its `on_start` runs) and queues its announcement; `None`
    /// when it runs already.
    async fn start_local<H: Handler>(
        &self,
        options: TaskOptions,
        factory: Arc<dyn Fn() -> H + Send + Sync>,
    ) -> Result<Option<oneshot::Receiver<Result<(), Error>>>, Error> {
        if let Some(existing) = self.table().get(options.alias.as_str()) {
            let record = existing.record();
            return match record.name == options.name {
                true => Ok(None),
                false => Err(Error::Rejected(Status::already_exists(format!(
                    "task {} runs here as {:?}",
                    options.alias, record.name
                )))),
            };
        }
        let cell = Arc::new(TaskCell::new(options, factory));
        let ctx = self.context(&cell.alias, &cell.name)?;
        let handler = cell.fresh_handler(&ctx).await.map_err(|failure| {
            Error::Config(format!("task {} failed to start: {failure}", cell.alias))
        })?;
        cell.lock().handler = Some(handler);
        let record = cell.record();
        {
            let mut table = self.table_mut();
            if table.contains_key(&cell.alias) {
                // Spawned concurrently under the same alias: the first one wins.
                return Ok(None);
            }
            table.insert(cell.alias.clone(), cell);
        }
        let (accepted, answer) = oneshot::channel();
        self.announce(Announcement::Upsert(record, Some(accepted)));
        Ok(Some(answer))
    }

    async fn remove_and_wait(&self, alias: &str) -> Result<(), Error> {
        self.table_mut().remove(alias);
        let (accepted, answer) = oneshot::channel();
        self.announce(Announcement::Remove(alias.to_owned(), Some(accepted)));
        accepted_by_node(answer).await
    }

    fn context(&self, alias: &Arc<str>, name: &Arc<str>) -> Result<Context, Error> {
        let host = self.inner.host.read();
        let client = host
            .as_ref()
            .ok_or_else(|| Error::Disconnected("the task host is not attached yet".to_owned()))?;
        Ok(Context {
            client: client.for_task(alias.clone()),
            name: name.clone(),
            tasks: self.clone(),
        })
    }

    /// The host's current client, once it attached.
    fn host(&self) -> Option<Client> {
        self.inner.host.read().clone()
    }

    async fn refuse_all(&self, refusals: Vec<Envelope>) {
        if let Some(host) = self.host() {
            for refusal in refusals {
                let _ = host.enqueue(refusal).await;
            }
        }
    }

    fn announce(&self, announcement: Announcement) {
        // The announcer lives as long as `inner`.
        let _ = self.inner.announcer.send(announcement);
    }

    fn table(&self) -> parking_lot::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<dyn Cell>>> {
        self.inner.table.read()
    }

    fn table_mut(&self) -> parking_lot::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<dyn Cell>>> {
        self.inner.table.write()
    }
}

/// Whether a task started here was new, once the node accepted it.
async fn settled(
    started: Result<Option<oneshot::Receiver<Result<(), Error>>>, Error>,
) -> Result<bool, Error> {
    match started? {
        Some(accepted) => accepted_by_node(accepted).await.map(|()| true),
        None => Ok(false),
    }
}

async fn accepted_by_node(answer: oneshot::Receiver<Result<(), Error>>) -> Result<(), Error> {
    answer
        .await
        .unwrap_or_else(|_| Err(Error::Disconnected("the task host stopped".to_owned())))
}

fn not_found(alias: &str) -> Error {
    Error::Rejected(Status::not_found(format!("no task {alias} runs here")))
}

/// An ERROR for a request or send that cannot be handled, as the node answers one it
/// cannot deliver: the sender counts it ([`Client::undelivered`]) rather than the
/// message vanishing.
fn refusal(envelope: &Envelope, code: Code, message: &str) -> Option<Envelope> {
    let refusable = matches!(envelope.kind(), EnvelopeKind::Request | EnvelopeKind::Send);
    refusable.then(|| {
        let mut error = error_envelope(envelope, code, "", message);
        error.origin = envelope.destination.clone();
        error
    })
}

/// A behaviour the node may start by name.
trait Behaviour: Send + Sync {
    fn spawn<'a>(
        &'a self,
        tasks: &'a Tasks,
        options: TaskOptions,
        args: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, Error>> + Send + 'a>>;
}

type DefinedFactory<H> = Arc<dyn Fn(&[String]) -> H + Send + Sync>;

struct Defined<H>(DefinedFactory<H>);

impl<H: Handler> Behaviour for Defined<H> {
    fn spawn<'a>(
        &'a self,
        tasks: &'a Tasks,
        options: TaskOptions,
        args: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, Error>> + Send + 'a>> {
        let make = self.0.clone();
        let factory: Arc<dyn Fn() -> H + Send + Sync> = Arc::new(move || make(&args));
        Box::pin(tasks.spawn_cell(options, factory))
    }
}

/// One task, type-erased so one table holds every behaviour.
trait Cell: Send + Sync {
    /// Queues `envelope`, starting a drain if none runs; returns a refusal to send.
    fn deliver(self: Arc<Self>, envelope: Envelope, tasks: &Tasks) -> Option<Envelope>;
    /// Stops the task (runs `on_stop` unless a drain will) and returns refusals for
    /// what was queued.
    fn halt(self: Arc<Self>, tasks: Tasks) -> Pin<Box<dyn Future<Output = Vec<Envelope>> + Send>>;
    /// What the node is told about it.
    fn record(&self) -> wire::HostedTask;
}

struct TaskCell<H> {
    alias: Arc<str>,
    name: Arc<str>,
    parent: Option<Box<str>>,
    labels: BTreeMap<String, String>,
    restart: Restart,
    max_restarts: u32,
    period: Duration,
    factory: Arc<dyn Fn() -> H + Send + Sync>,
    state: Mutex<CellState<H>>,
}

struct CellState<H> {
    queue: VecDeque<Envelope>,
    /// `None` while a drain holds it (or before the first start).
    handler: Option<H>,
    /// Whether a drain runs.
    draining: bool,
    stopped: bool,
    restarts: u32,
    /// Restarts within the intensity period.
    recent: VecDeque<Instant>,
}

impl<H: Handler> TaskCell<H> {}

impl<H: Handler> Cell for TaskCell<H> {
    fn deliver(self: Arc<Self>, envelope: Envelope, tasks: &Tasks) -> Option<Envelope> {
        let mut state = self.lock();
        if state.stopped {
            return refusal(&envelope, Code::Unavailable, "the task stopped");
        }
        if state.queue.len() >= TASK_MAILBOX {
            let message = format!("the mailbox of {} is full ({TASK_MAILBOX})", self.alias);
            return refusal(&envelope, Code::ResourceExhausted, &message);
        }
        state.queue.push_back(envelope);
        if !state.draining {
            state.draining = true;
            drop(state);
            tokio::spawn(self.clone().drain(tasks.clone()));
        }
        None
    }

    fn halt(self: Arc<Self>, tasks: Tasks) -> Pin<Box<dyn Future<Output = Vec<Envelope>> + Send>> {
        Box::pin(async move {
            let idle_handler = {
                let mut state = self.lock();
                state.stopped = true;
                match state.draining {
                    true => None,
                    false => state.handler.take(),
                }
            };
            if let (Some(mut handler), Ok(ctx)) =
                (idle_handler, tasks.context(&self.alias, &self.name))
            {
                let _ = CatchUnwind(Box::pin(handler.on_stop(&ctx))).await;
            }
            self.take_queue(&format!("task {} was stopped", self.alias))
        })
    }

    fn record(&self) -> wire::HostedTask {
        wire::HostedTask {
            alias: self.alias.to_string(),
            name: self.name.to_string(),
            parent: self.parent.as_deref().unwrap_or_default().to_owned(),
            restarts: self.lock().restarts,
            labels: self.labels.clone().into_iter().collect(),
        }
    }
}

/// Sends announcements in batches: whatever queued while the previous call was in
/// flight goes in the next one.
async fn announce(
    host: Arc<RwLock<Option<Client>>>,
    mut announcements: mpsc::UnboundedReceiver<Announcement>,
) {
    let mut batch = Vec::new();
    while announcements.recv_many(&mut batch, ANNOUNCE_BATCH).await > 0 {
        let mut pending: VecDeque<Announcement> = batch.drain(..).collect();
        while !pending.is_empty() {
            let sent = next_call(&mut pending);
            let client = host.read().clone();
            send_call(client, sent).await;
        }
    }
}

/// Takes announcements for one call: the node applies removes before upserts, so a
/// remove of an alias upserted earlier in the batch waits for the next call.
fn next_call(pending: &mut VecDeque<Announcement>) -> Vec<Announcement> {
    let mut call = Vec::new();
    let mut upserted = std::collections::HashSet::new();
    while let Some(next) = pending.front() {
        match next {
            Announcement::Remove(alias, _) if upserted.contains(alias) => break,
            Announcement::Upsert(task, _) => {
                upserted.insert(task.alias.clone());
            }
            Announcement::Remove(..) => {}
        }
        call.extend(pending.pop_front());
    }
    call
}

async fn send_call(client: Option<Client>, call: Vec<Announcement>) {
    let mut upsert = Vec::new();
    let mut remove = Vec::new();
    let mut upsert_waiters = Vec::new();
    let mut remove_waiters = Vec::new();
    for announcement in call {
        match announcement {
            Announcement::Upsert(task, waiter) => {
                upsert.push(task);
                upsert_waiters.push(waiter);
            }
            Announcement::Remove(alias, waiter) => {
                remove.push(alias);
                remove_waiters.extend(waiter);
            }
        }
    }
    let Some(client) = client else {
        let lost = || {
            Err(Error::Disconnected(
                "the task host is not attached".to_owned(),
            ))
        };
        upsert_waiters
            .into_iter()
            .flatten()
            .for_each(|w| drop(w.send(lost())));
        remove_waiters
            .into_iter()
            .for_each(|w| drop(w.send(lost())));
        return;
    };
    let request = wire::HostRequest {
        alias: client.host_alias().to_owned(),
        lease: client.lease().to_owned(),
        upsert,
        remove,
        replace: false,
    };
    match client.supervisor().host(request).await {
        Ok(response) => {
            let results = response.into_inner().results;
            for (waiter, result) in upsert_waiters.into_iter().zip(results) {
                let outcome = match Code::from_i32(result.code) {
                    Code::Ok => Ok(()),
                    code => Err(Error::Rejected(Status::new(code, result.message))),
                };
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome);
                }
            }
            remove_waiters
                .into_iter()
                .for_each(|w| drop(w.send(Ok(()))));
        }
        Err(status) => {
            tracing::warn!(%status, "the node refused the task announcement");
            let refused = || Err(Error::Rejected(status.clone()));
            upsert_waiters
                .into_iter()
                .flatten()
                .for_each(|w| drop(w.send(refused())));
            remove_waiters
                .into_iter()
                .for_each(|w| drop(w.send(refused())));
        }
    }
}

/// Polls a future, turning a panic inside it into an error with the panic's message.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
