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
    child: Option<Child>,
    pub options: ConnectOptions,
    _data: tempfile::TempDir,
}

impl BenchNode {
    /// A node inside this process (same runtime), to measure what crossing a process
    /// boundary costs.
    pub async fn start_in_process() -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let config = reef_node::NodeConfig::new("127.0.0.1:0".parse()?, data.path());
        let ca = config.ca_path();
        let node = reef_node::Node::bind(config).await?;
        // The benchmarks call as the node's administrator, as the CLI on its machine does.
        let options = ConnectOptions {
            node: node.local_addr().to_string(),
            identity: ConnectOptions::admin_beside(&ca),
            ca,
            ..ConnectOptions::default()
        };
        tokio::spawn(node.run(std::future::pending()));
        Ok(Self {
            child: None,
            options,
            _data: data,
        })
    }

    /// Starts `reefd` from next to this executable.
    pub fn start(extra_args: &[String]) -> anyhow::Result<Self> {
        Self::start_prepared(extra_args, |_| Ok(()))
    }

    /// [`BenchNode::start`], after `prepare` put what it needs in the data dir.
    pub fn start_prepared(
        extra_args: &[String],
        prepare: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        prepare(data.path())?;
        let reefd = std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("reefd"))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from("reefd"));
        let mut child = Command::new(&reefd)
            .args(["--listen", "127.0.0.1:0", "--no-health", "--no-dashboard"])
            .args(extra_args)
            .arg("--data-dir")
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
        let ca = data.path().join("tls/ca.pem");
        let options = ConnectOptions {
            node: grpc.to_owned(),
            identity: ConnectOptions::admin_beside(&ca),
            ca,
            insecure: line.contains("tls=off"),
            ..ConnectOptions::default()
        };
        Ok(Self {
            child: Some(child),
            options,
            _data: data,
        })
    }
}

impl BenchNode {
    /// The reefd process id (none for a node in this process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
