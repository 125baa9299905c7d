//! A `reef-gateway` process for the tests, started against a test node.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
};

use crate::{ChildGuard, STARTUP, TestNode, binary, stdout_lines, wait_for_line};

/// A running reef-gateway process and the addresses it listens on, by kind, in the
/// order of its file.
pub struct Gateway {
    /// The process, killed when this is dropped.
    pub process: ChildGuard,
    /// `http://ADDR` of each HTTP listener.
    pub http: Vec<String>,
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

/// Starts reef-gateway with `config` (TOML) against `node`.
pub fn start_gateway(node: &TestNode, config: &str) -> Gateway {
    start_gateway_in(node, config, &[], |_| {})
}

/// [`start_gateway`] with extra environment variables, its config written beside
/// whatever `prepare` puts in the directory.
pub fn start_gateway_in(
    node: &TestNode,
    config: &str,
    env: &[(&str, &str)],
    prepare: impl FnOnce(&std::path::Path),
) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(binary("reef-gateway"))
        .arg("--config")
        .arg(&file)
        .envs(node.container_env("gateway"))
        .env("REEF_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("reef-gateway starts");
    let lines = stdout_lines(&mut child);
    let process = ChildGuard(child);
    let ready = wait_for_line(&lines, "gateway ready", STARTUP);
    let addrs = |kind: &str| -> Vec<SocketAddr> {
        ready
            .split_whitespace()
            .filter_map(|field| field.strip_prefix(kind)?.strip_prefix('='))
            .map(|addr| addr.parse().unwrap())
            .collect()
    };
    Gateway {
        process,
        http: addrs("http")
            .iter()
            .map(|a| format!("http://{a}"))
            .collect(),
        tcp: addrs("tcp"),
        udp: addrs("udp"),
        _dir: dir,
    }
}
