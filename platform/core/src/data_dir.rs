//! One node per data dir: `DATA/reefd.pid`, locked (`flock`) for as long as the node
//! runs and holding its pid. Two nodes on one data dir would supervise the same
//! containers twice and write the same state files; the second one is told which
//! process holds the dir instead of failing later on a port.
//!
//! The lock belongs to the open file, so it ends with the process however it ends
//! (SIGKILL included), and the file is opened close-on-exec, so containers the node
//! spawns do not inherit it.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

/// Why a data dir cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another live process holds the lock.
    #[error(
        "data dir {} is in use by another node (pid {pid}); stop that one, or give this one its own --data-dir",
        dir.display()
    )]
    InUse {
        /// The data dir.
        dir: PathBuf,
        /// The holder's pid, as it wrote it (0 if it had not written it yet).
        pid: u32,
    },
    /// The directory or the lock file cannot be created or locked.
    #[error("data dir {}: {source}", dir.display())]
    Io {
        /// The data dir.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The lock on a data dir, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes `dir` for this process (creating it if needed), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, DataDirError> {
        let io = |source| DataDirError::Io {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path(dir))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse {
                    dir: dir.to_owned(),
                    pid: read_pid(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(io(error)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }

    /// Whether a live process holds `dir` (its pid), without taking it. For a launcher
    /// such as `reef up` that wants to say so before it starts anything.
    pub fn holder(dir: &Path) -> Option<u32> {
        let mut file = File::open(lock_path(dir)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }
}

fn lock_path(dir: &Path) -> PathBuf {
    dir.join("reefd.pid")
}

fn read_pid(file: &mut File) -> u32 {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text.trim().parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_names_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(DataDirLock::holder(&data), None, "nothing holds a new dir");
        let first = DataDirLock::acquire(&data).unwrap();
        let me = std::process::id();
        assert_eq!(DataDirLock::holder(&data), Some(me));
        match DataDirLock::acquire(&data) {
            Err(DataDirError::InUse { pid, .. }) => assert_eq!(pid, me),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        assert_eq!(DataDirLock::holder(&data), None);
        let _again = DataDirLock::acquire(&data).unwrap();
    }
}
