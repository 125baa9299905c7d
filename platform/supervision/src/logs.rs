//! Per-container log files: `DATA/logs/ALIAS.log`, rotated by copy-and-truncate so the
//! process keeps its file descriptor (and survives a restart of the node).

use std::{
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

/// Where container logs live and how large they grow.
#[derive(Debug, Clone)]
pub struct LogDir {
    dir: PathBuf,
    /// A log larger than this is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`ALIAS.log.1` … `.N`).
    pub keep: u32,
}

impl LogDir {
    /// Logs under `data_dir/logs`, 10 MiB per file, 3 rotated files.
    pub fn new(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            max_bytes: 10 << 20,
            keep: 3,
        })
    }

    /// The log file of `alias` ('/' in aliases becomes '%').
    pub fn path(&self, alias: &str) -> PathBuf {
        self.dir.join(format!("{}.log", alias.replace('/', "%")))
    }

    /// Rotates the log of `alias` if it is too large. Lines written between the copy and
    /// the truncation are lost (copytruncate's known window).
    pub fn rotate_if_large(&self, alias: &str) -> std::io::Result<bool> {
        let path = self.path(alias);
        let size = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(_) => return Ok(false),
        };
        if size <= self.max_bytes {
            return Ok(false);
        }
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::copy(&path, numbered(1))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(0)?;
        Ok(true)
    }
}

/// Reads what was appended to `path` since `offset`, at most `max` bytes. Returns the
/// bytes and the new offset; a file that shrank (rotated) is read from its start.
pub fn read_from(path: &Path, offset: u64, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let offset = if size < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(max.min((size - offset) as usize));
    file.take(max as u64).read_to_end(&mut bytes)?;
    let next = offset + bytes.len() as u64;
    Ok((bytes, next))
}

/// The last `max` bytes of `path`, starting at a line boundary when possible.
pub fn tail(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let size = std::fs::metadata(path)?.len();
    let start = size.saturating_sub(max);
    let (mut bytes, next) = read_from(path, start, max as usize)?;
    if start > 0
        && let Some(newline) = bytes.iter().position(|&b| b == b'\n')
    {
        bytes.drain(..=newline);
    }
    Ok((bytes, next))
}
