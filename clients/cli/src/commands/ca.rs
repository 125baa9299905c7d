//! `reef ca init | issue`: the cluster CA that lets nodes of one tree trust each other.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

/// What `reef ca` does.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a cluster CA in DIR (ca.pem, ca-key.pem). Keep ca-key.pem off the nodes.
    Init {
        /// Where the CA goes.
        dir: PathBuf,
    },
    /// Give node NAME an intermediate CA under the cluster CA, written into the node's
    /// TLS directory (DATA/tls of its data dir). The node names itself with it
    /// (reef://node/NAME) and signs its containers' certificates with it.
    Issue {
        /// The node's name (reefd --name).
        name: String,
        /// The cluster CA's directory (from `reef ca init`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node's data directory (reefd --data-dir); the files go to DATA/tls.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub fn run(command: CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Init { dir } => {
            reef_platform::init_cluster_ca(&dir)
                .with_context(|| format!("cannot create a cluster CA in {}", dir.display()))?;
            println!("cluster CA created: {}", dir.join("ca.pem").display());
        }
        CaCommand::Issue {
            name,
            ca_dir,
            data_dir,
        } => {
            reef_platform::link::check_node_name(&name).map_err(anyhow::Error::msg)?;
            let tls = data_dir.join("tls");
            reef_platform::issue_node_ca(&ca_dir, &name, &tls)
                .with_context(|| format!("cannot issue an identity for node {name}"))?;
            println!(
                "node {name}: intermediate CA in {} (it takes effect when reefd starts)",
                tls.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
