//! The durable registry: the supervision tree in `DATA/supervision.toml`, rewritten
//! atomically (temp file + rename) after every change, so a killed node finds its
//! containers, their credentials and their processes again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Definition, ProcessId};

/// One supervised container as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredContainer {
    /// Its definition.
    pub definition: Definition,
    /// Creation order among all containers (rest_for_one needs it).
    pub order: u64,
    /// The credential its processes register with.
    pub token: String,
    /// Whether it should run (false after Stop).
    pub running: bool,
    /// Restarts so far.
    pub restarts: u32,
    /// Its process when the node last looked, if one ran.
    pub process: Option<ProcessId>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default, rename = "container")]
    containers: Vec<StoredContainer>,
}

/// Reads and writes the durable registry.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The store in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("supervision.toml"),
        }
    }

    /// What was stored; nothing for a new data dir. A corrupt file is an error: the
    /// node must not silently forget running processes.
    pub fn load(&self) -> std::io::Result<Vec<StoredContainer>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        toml::from_str::<File>(&text)
            .map(|file| file.containers)
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is corrupt: {e}", self.path.display()),
                )
            })
    }

    /// Replaces the stored tree.
    pub fn save(&self, containers: Vec<StoredContainer>) -> std::io::Result<()> {
        let text = toml::to_string(&File { containers })
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let temporary = self.path.with_extension("toml.tmp");
        // Tokens and environments are in it: readable by the node's user alone.
        reef_core::write_private(&temporary, text.as_bytes())?;
        std::fs::rename(&temporary, &self.path)
    }
}
