//! What the supervision actor needs from the rest of the node and from the OS, as three
//! small traits. The node plugs in its registry, real processes and a gRPC ping; unit
//! tests plug in fakes and drive the actor on paused time (`tests.rs`).

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use nix::sys::signal::Signal;
use reef_core::{
    Alias,
    lifecycle::{DetachCause, EventKind, Phase},
};
use tokio::sync::mpsc;

use super::{Environment, Exit, ProcessId, ProcessSpec, SpawnError, SupervisedSnapshot, process};

/// A future the actor waits on in a task of its own.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the supervisor hears from the registry about the containers it runs.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A supervised alias attached; `pid` is what its process registered with.
    Attached {
        /// The container.
        alias: Alias,
        /// The registered process id.
        pid: Option<u32>,
    },
    /// Its attach stream closed.
    Detached {
        /// The container.
        alias: Alias,
        /// Why.
        cause: DetachCause,
    },
}

/// Why an alias could not be reserved (something else holds it), for humans.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Taken(pub String);

/// The registry as supervision sees it: aliases reserved for supervised containers,
/// their published state and lifecycle events, and news of their attach streams.
pub trait Reservations: Send + Sync + 'static {
    /// Where attaches and detaches of reserved aliases are reported from now on.
    fn observe(&self, observer: mpsc::UnboundedSender<Observed>);
    /// Whether anything holds `alias` (a container the node does not supervise, say).
    fn is_registered(&self, alias: &str) -> bool;
    /// Reserves the alias of `info`: only a process holding `token` may register it, and
    /// envelopes for it are held while it is not attached.
    fn reserve(&self, info: SupervisedSnapshot, token: &str) -> Result<(), Taken>;
    /// Publishes the container's state; `holding` says whether its envelopes are held.
    fn update(&self, info: SupervisedSnapshot, holding: bool);
    /// Reports a lifecycle event of the container.
    fn lifecycle(&self, alias: &Alias, kind: EventKind, phase: Phase, reason: &str);
    /// Closes the container's attach stream and forgets its lease.
    fn evict(&self, alias: &Alias, reason: &str);
    /// Gives the alias up: the container was destroyed.
    fn release_destroyed(&self, alias: &Alias);
    /// The endpoint the container's process registered, if any.
    fn endpoint(&self, alias: &str) -> Option<String>;
    /// What the registry publishes of a supervised container, if it holds one.
    fn supervised(&self, alias: &str) -> Option<SupervisedSnapshot>;
}

/// What to start: one process of container `alias`.
pub struct SpawnRequest<'a> {
    /// The program and its arguments.
    pub spec: &'a ProcessSpec,
    /// The container.
    pub alias: &'a str,
    /// Its supervision parent.
    pub parent: Option<&'a str>,
    /// The token it registers with.
    pub token: &'a str,
    /// Its certificate and key, on a TLS node.
    pub credentials: Option<&'a (PathBuf, PathBuf)>,
    /// What every container finds in its environment.
    pub environment: &'a Environment,
    /// Where its stdout and stderr go.
    pub log: &'a Path,
}

/// The OS as supervision sees it: processes to start, signal and wait for.
pub trait Processes: Send + Sync + 'static {
    /// Finds the program a definition names (checked at Create, before anything runs).
    fn resolve(&self, command: &str, working_dir: Option<&Path>) -> Result<PathBuf, SpawnError>;
    /// Starts a process; the future resolves when it ends.
    fn spawn(&self, request: SpawnRequest<'_>) -> Result<(ProcessId, Pending<Exit>), SpawnError>;
    /// Waits for a process the node did not start (found running after its own restart);
    /// `None` if it no longer runs.
    fn adopt(&self, id: ProcessId) -> Option<Pending<Exit>>;
    /// Signals the process's group.
    fn signal(&self, id: ProcessId, signal: Signal);
}

/// How supervision asks a container whether it answers: a ping of its endpoint (over
/// gRPC, in the node).
pub trait Probe: Send + Sync + 'static {
    /// Pings container `alias`'s endpoint (its certificate must name the alias); the
    /// error says why it did not answer.
    fn ping(
        &self,
        alias: &Alias,
        endpoint: String,
        ca_pem: String,
        timeout: Duration,
    ) -> Pending<Result<(), String>>;
}

/// Real processes, in process groups of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsProcesses;

impl OsProcesses {
    /// The port, shared.
    pub fn shared() -> Arc<dyn Processes> {
        Arc::new(Self)
    }
}

impl Processes for OsProcesses {
    fn resolve(&self, command: &str, working_dir: Option<&Path>) -> Result<PathBuf, SpawnError> {
        process::resolve(command, working_dir)
    }

    fn spawn(&self, request: SpawnRequest<'_>) -> Result<(ProcessId, Pending<Exit>), SpawnError> {
        let spawned = process::spawn(
            request.spec,
            request.alias,
            request.parent,
            request.token,
            request.credentials,
            request.environment,
            request.log,
        )?;
        Ok((spawned.id, Box::pin(process::wait_spawned(spawned.wait))))
    }

    fn adopt(&self, id: ProcessId) -> Option<Pending<Exit>> {
        id.is_alive()
            .then(|| Box::pin(process::wait_adopted(id)) as Pending<Exit>)
    }

    fn signal(&self, id: ProcessId, signal: Signal) {
        process::signal_group(id.pid, signal);
    }
}
