//! What the supervision actor needs from the rest of the node and from the OS, as two
//! small traits. The node plugs in its registry and real processes; unit tests plug in
//! fakes and drive the actor on paused time (`supervision/tests.rs`).

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use nix::sys::signal::Signal;
use reef_core::Alias;
use tokio::sync::mpsc;

use super::{
    Environment, Exit, ProcessId, ProcessSpec, SpawnError, State, SupervisedSnapshot, process,
};
use crate::{EventKind, Registry, RegistryError, registry::Observed, registry::Phase};

/// A future the actor waits on in a task of its own.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The registry as supervision sees it: aliases reserved for supervised containers,
/// their published state and lifecycle events, and news of their attach streams.
pub trait Reservations: Send + Sync + 'static {
    /// Where attaches and detaches of reserved aliases are reported from now on.
    fn observe(&self, observer: mpsc::UnboundedSender<Observed>);
    /// Whether anything holds `alias` (a container the node does not supervise, say).
    fn is_registered(&self, alias: &str) -> bool;
    /// Reserves the alias of `info`: only a process holding `token` may register it, and
    /// envelopes for it are held while it is not attached.
    fn reserve(&self, info: SupervisedSnapshot, token: &str) -> Result<(), RegistryError>;
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

/// The OS as supervision sees it: processes to start, signal and wait for, and container
/// endpoints to ping.
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
    /// Pings a container's endpoint; the error says why it did not answer.
    fn ping(
        &self,
        endpoint: String,
        ca_pem: String,
        timeout: Duration,
    ) -> Pending<Result<(), String>>;
}

impl Reservations for Registry {
    fn observe(&self, observer: mpsc::UnboundedSender<Observed>) {
        self.set_observer(observer);
    }

    fn is_registered(&self, alias: &str) -> bool {
        self.get(alias).is_some()
    }

    fn reserve(&self, info: SupervisedSnapshot, token: &str) -> Result<(), RegistryError> {
        Registry::reserve(self, info, token)
    }

    fn update(&self, info: SupervisedSnapshot, holding: bool) {
        self.update_supervised(info, holding);
    }

    fn lifecycle(&self, alias: &Alias, kind: EventKind, phase: Phase, reason: &str) {
        self.emit_lifecycle(alias, kind, phase, reason);
    }

    fn evict(&self, alias: &Alias, reason: &str) {
        Registry::evict(self, alias, reason);
    }

    fn release_destroyed(&self, alias: &Alias) {
        let container = self.get(alias.as_str()).map(|mut container| {
            if let Some(info) = &mut container.supervised {
                info.state = State::Destroyed;
            }
            container
        });
        self.release(alias);
        if let Some(container) = container {
            self.emit_gone(container, EventKind::Destroy, "state DESTROYED");
        }
    }

    fn endpoint(&self, alias: &str) -> Option<String> {
        self.get(alias)
            .and_then(|container| container.spec.endpoint)
    }
}

/// Real processes, in process groups of their own, and pings over TLS.
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

    fn ping(
        &self,
        endpoint: String,
        ca_pem: String,
        timeout: Duration,
    ) -> Pending<Result<(), String>> {
        Box::pin(async move {
            crate::probe::ping_endpoint(&endpoint, &ca_pem, timeout)
                .await
                .map(drop)
                .map_err(|status| status.message().to_owned())
        })
    }
}
