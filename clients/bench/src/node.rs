//! The reefd process the routed figures go through.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use reef_sdk::ConnectOptions;

/// A reefd child process on an ephemeral port with a temporary data directory.
pub struct BenchNode {
    child: Child,
    pub options: ConnectOptions,
    _data: tempfile::TempDir,
}

impl BenchNode {
    /// Starts `reefd` from next to this executable.
    pub fn start() -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let reefd = std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("reefd"))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from("reefd"));
        let mut child = Command::new(&reefd)
            .args(["--listen", "127.0.0.1:0", "--no-health", "--data-dir"])
            .arg(data.path())
            .env("REEF_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", reefd.display()))?;
        let stdout = child.stdout.take().context("reefd stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(grpc) = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("grpc="))
        else {
            let _ = child.kill();
            bail!("reefd did not report ready: {line:?}");
        };
        let options = ConnectOptions {
            node: grpc.to_owned(),
            ca: data.path().join("tls/ca.pem"),
            ..ConnectOptions::default()
        };
        Ok(Self {
            child,
            options,
            _data: data,
        })
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
