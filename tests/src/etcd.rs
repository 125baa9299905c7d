//! A real etcd server on loopback, for the state conformance suite and the benchmark.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{ChildGuard, unused_port};

/// Where Debian's `etcd-server` puts the binary; `REEF_ETCD_BIN` overrides.
fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REEF_ETCD_BIN") {
        return Some(PathBuf::from(path));
    }
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|path| path.is_file())
    });
    from_path.or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

/// An etcd process with its own data directory, killed on drop.
pub struct LocalEtcd {
    /// The client URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _process: ChildGuard,
    _data: TempDir,
}

impl LocalEtcd {
    /// Starts etcd on free loopback ports; `Err` says why it could not (no binary, or it
    /// never answered). etcd cannot take port 0, so a port taken between the probe and
    /// etcd's bind is retried with new ports.
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS with the certificates in `certs` (a reef
    /// `Pki` directory: `ca.pem`, `node.pem`, `node-key.pem`), requiring client
    /// certificates signed by the same CA. The endpoint is `https://127.0.0.1:PORT`.
    pub fn start_tls(certs: &Path) -> Result<Self, String> {
        Self::start_with(Some(certs))
    }

    fn start_with(certs: Option<&Path>) -> Result<Self, String> {
        let binary = etcd_binary().ok_or(
            "etcd is not installed: scripts/test installs Debian's etcd-server (or set REEF_ETCD_BIN)",
        )?;
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::start_once(&binary, certs) {
                Ok(etcd) => return Ok(etcd),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    fn start_once(binary: &PathBuf, certs: Option<&Path>) -> Result<Self, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let client = unused_port();
        let peer = unused_port();
        let scheme = if certs.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let tls: Vec<String> = match certs {
            Some(dir) => vec![
                format!("--cert-file={}", dir.join("node.pem").display()),
                format!("--key-file={}", dir.join("node-key.pem").display()),
                format!("--trusted-ca-file={}", dir.join("ca.pem").display()),
                "--client-cert-auth".to_owned(),
            ],
            None => Vec::new(),
        };
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(binary)
            .arg("--name=reef-test")
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=reef-test={peer_url}"))
            .arg("--log-level=error")
            .args(&tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut process = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = process.0.try_wait() {
                return Err(format!("etcd exited at start ({status})"));
            }
            if TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return Ok(Self {
                    endpoint: client_url,
                    _process: process,
                    _data: data,
                });
            }
            if Instant::now() > deadline {
                return Err("etcd did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
