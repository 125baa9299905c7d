//! reef's supervision: the node runs containers as OS processes in a tree and puts their
//! failures right by policy (restart types, strategies, intensity, backoff, solver
//! chains), keeping the tree on disk so that a restarted node adopts what still runs.
//!
//! The tree (`tree.rs`) is a state machine: its transitions reconcile what each
//! container should be doing (running, stopped, destroyed) with what its process is
//! doing, after every command, process exit, attach/detach and timer, and queue the
//! effects that follow. One actor task (`actor.rs`) owns it and carries the effects out
//! against the ports; [`Supervision`] is its handle.

mod actor;
mod definition;
mod logs;
mod policy;
mod ports;
mod process;
mod store;
#[cfg(test)]
mod tests;
mod tree;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

pub use self::{
    definition::{Definition, Kind, ProcessSpec, State, SupervisedSnapshot},
    logs::{LogDir, read_from, tail},
    policy::{Action, Intensity, Policy, RestartType, Solver, Strategy, error_type},
    ports::{Observed, OsProcesses, Pending, Probe, Processes, Reservations, SpawnRequest, Taken},
    process::{Environment, Exit, ProcessId, Sandbox, SpawnError},
};
use reef_core::Alias;

/// How Create treats an alias that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFlag {
    /// Return the existing container unchanged.
    Default,
    /// Replace it after a soft stop.
    ForceSoft,
    /// Replace it after killing it.
    ForceHard,
    /// Replace it: soft, then hard after the grace period.
    Force,
}

/// How Destroy and Stop end processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM, then SIGKILL after the grace period.
    Force,
    /// Like Force, but refuse a container that has children.
    Keep,
    /// SIGTERM only; wait for the process to end.
    Soft,
    /// SIGKILL at once.
    Hard,
}

/// Why a supervision command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisionError {
    /// The definition or arguments are wrong; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// No supervised container has the alias.
    #[error("no supervised container is called {0:?}")]
    NotFound(String),
    /// The alias is held by a container the node does not supervise.
    #[error("{0}")]
    AliasTaken(String),
    /// The operation does not fit the state of the container or of its parent (being
    /// destroyed, stopped, has children).
    #[error("{0}")]
    WrongState(String),
    /// The container's process did not come up (it exited, did not answer in time, or
    /// its subtree was stopped by an escalation while it started).
    #[error("{0}")]
    DidNotStart(String),
    /// Another operation on the container overtook this one.
    #[error("{0}")]
    Overtaken(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// What the supervisor needs from the node.
#[derive(Debug, Clone)]
pub struct SupervisionConfig {
    /// The node's data directory (store and logs).
    pub data_dir: PathBuf,
    /// What spawned processes find in REEF_NODE, REEF_CA, REEF_INSECURE.
    pub environment: Environment,
    /// The node's CA, to ping container endpoints.
    pub ca_pem: String,
    /// Certificates for the processes it spawns (`None`: a plaintext node).
    pub credentials: Option<reef_tls::tls::ContainerCredentials>,
    /// Strategy and intensity for the node's own children.
    pub root_policy: Policy,
    /// How long a process may stay detached before it counts as unresponsive.
    pub attach_timeout: Duration,
}

/// A failure as the solver chains see it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The error type the chains match.
    pub error_type: String,
    /// For humans.
    pub message: String,
    /// An exit with code 0 (transient containers are not restarted after one).
    pub normal: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

/// The handle to a node's supervisor.
#[derive(Clone)]
pub struct Supervision {
    commands: mpsc::Sender<actor::Command>,
    reservations: Arc<dyn Reservations>,
    logs: LogDir,
    credentials: Option<reef_tls::tls::ContainerCredentials>,
}

impl std::fmt::Debug for Supervision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervision").finish_non_exhaustive()
    }
}

type Reply<T> = oneshot::Sender<Result<T, SupervisionError>>;

impl Supervision {
    /// Loads the durable registry from the data dir, adopts processes that still run,
    /// and starts the supervisor over real processes.
    pub fn start(
        config: SupervisionConfig,
        reservations: Arc<dyn Reservations>,
        probe: Arc<dyn Probe>,
    ) -> std::io::Result<Self> {
        let logs = LogDir::new(&config.data_dir)?;
        let credentials = config.credentials.clone();
        let commands = actor::spawn(
            config,
            reservations.clone(),
            OsProcesses::shared(),
            probe,
            logs.clone(),
        )?;
        Ok(Self {
            commands,
            reservations,
            logs,
            credentials,
        })
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> actor::Command,
    ) -> Result<T, SupervisionError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SupervisionError::ShuttingDown)?;
        answer.await.map_err(|_| SupervisionError::ShuttingDown)?
    }

    /// Creates and starts a container; answers once it answers a ping. `Ok(false)` when
    /// the alias existed and `flag` is Default.
    pub async fn create(
        &self,
        definition: Definition,
        flag: CreateFlag,
    ) -> Result<bool, SupervisionError> {
        self.call(|reply| actor::Command::Create {
            definition: Box::new(definition),
            flag,
            reply,
        })
        .await
    }

    /// Destroys a container and its subtree; returns the destroyed aliases, deepest first.
    pub async fn destroy(
        &self,
        alias: Alias,
        mode: StopMode,
    ) -> Result<Vec<Alias>, SupervisionError> {
        let destroyed = self
            .call(|reply| actor::Command::Destroy { alias, mode, reply })
            .await?;
        // Their certificates stop authenticating, whoever kept a copy.
        if let Some(credentials) = &self.credentials {
            for alias in &destroyed {
                if let Err(error) = credentials.destroyed(alias.as_str()) {
                    tracing::error!(%alias, %error, "cannot end a destroyed container's certificates");
                }
            }
        }
        Ok(destroyed)
    }

    /// Starts a stopped or failed container and its subtree.
    pub async fn start_container(&self, alias: Alias) -> Result<(), SupervisionError> {
        self.call(|reply| actor::Command::Start { alias, reply })
            .await
            .map(drop)
    }

    /// Stops a container and its subtree; it stays stopped until started.
    pub async fn stop(&self, alias: Alias, mode: StopMode) -> Result<(), SupervisionError> {
        self.call(|reply| actor::Command::Stop { alias, mode, reply })
            .await
    }

    /// Stops and starts a container and its subtree.
    pub async fn restart(&self, alias: Alias) -> Result<(), SupervisionError> {
        self.call(|reply| actor::Command::Restart { alias, reply })
            .await
            .map(drop)
    }

    /// The state of a supervised container, if the node supervises one by that alias.
    pub fn exists(&self, alias: &str) -> Option<State> {
        self.reservations.supervised(alias).map(|info| info.state)
    }

    /// A failure a container reported about itself.
    pub async fn fail(&self, alias: Alias, failure: Failure) -> Result<(), SupervisionError> {
        self.call(|reply| actor::Command::Fail {
            alias,
            failure,
            reply,
        })
        .await
    }

    /// Stops every container (SIGTERM, SIGKILL after `grace`) for a node shutdown; the
    /// durable registry still says which should run, so the next start brings them back.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self
            .call(|reply| actor::Command::Shutdown { grace, reply })
            .await;
    }

    /// The log file of a supervised container.
    pub fn log_path(&self, alias: &str) -> Option<PathBuf> {
        self.reservations
            .supervised(alias)
            .map(|_| self.logs.path(alias))
    }
}
