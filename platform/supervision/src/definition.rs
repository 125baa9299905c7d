//! What a supervised container is: its definition and lifecycle state.

use std::{collections::BTreeMap, path::PathBuf, time::SystemTime};

use reef_core::Alias;
use serde::{Deserialize, Serialize};

use super::Policy;

/// How to create a supervised container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// Its address.
    pub alias: Alias,
    /// Its parent; `None` = a child of the node.
    pub parent: Option<Alias>,
    /// The behaviour it runs (informational).
    pub name: String,
    /// What runs.
    pub kind: Kind,
    /// How its failures are put right.
    pub policy: Policy,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// What runs in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An OS process the node spawns.
    Process(ProcessSpec),
}

impl Kind {
    /// "process" or "task".
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Process(_) => "process",
        }
    }
}

/// An OS process to spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// A path, or a name looked up next to reefd, then on PATH.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` = reefd's.
    pub working_dir: Option<PathBuf>,
    /// Whether it starts from reefd's environment; otherwise from `PATH` alone. `env`
    /// and the `REEF_*` variables are added either way.
    #[serde(default)]
    pub inherit_env: bool,
}

/// The five lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Defined, not (yet) answering.
    Created,
    /// Running and answering.
    Started,
    /// Stopped on purpose or ended normally.
    Stopped,
    /// Failed and not (yet) put right.
    Failed,
    /// Gone (only in events).
    Destroyed,
}

/// The supervisor's view of one container, published for List, Tree and Watch.
#[derive(Debug, Clone)]
pub struct SupervisedSnapshot {
    /// Its definition.
    pub definition: std::sync::Arc<Definition>,
    /// Its state.
    pub state: State,
    /// Restarts so far.
    pub restarts: u32,
    /// When the running process started.
    pub started_at: Option<SystemTime>,
    /// The process id, while one runs.
    pub pid: Option<u32>,
    /// What is in progress, for humans.
    pub activity: String,
    /// Last failure: "type: message".
    pub last_failure: String,
    /// How the process ended last time.
    pub last_exit: String,
}
