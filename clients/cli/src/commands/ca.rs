//! `reef ca init | issue | client`: the cluster CA that lets nodes of one tree trust each
//! other, and the client certificates that policies name.

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
    /// Issue a client certificate for NAME (reef://client/NAME, `client:NAME` in
    /// policies; with --admin, reef://admin/NAME, which no policy restricts). Written to
    /// OUT/NAME.pem and OUT/NAME-key.pem; pass them to reef with --cert and --key.
    Client {
        /// Who holds it.
        name: String,
        /// The CA's directory: the cluster CA's (reef ca init), or a standalone node's
        /// DATA/tls.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where the certificate and key go.
        #[arg(long)]
        out: PathBuf,
        /// An administrator's certificate.
        #[arg(long)]
        admin: bool,
    },
}

pub fn run(command: CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Init { dir } => {
            reef_tls::init_cluster_ca(&dir)
                .with_context(|| format!("cannot create a cluster CA in {}", dir.display()))?;
            println!("cluster CA created: {}", dir.join("ca.pem").display());
        }
        CaCommand::Issue {
            name,
            ca_dir,
            data_dir,
        } => {
            reef_core::check_node_name(&name).map_err(anyhow::Error::msg)?;
            let tls = data_dir.join("tls");
            reef_tls::issue_node_ca(&ca_dir, &name, &tls)
                .with_context(|| format!("cannot issue an identity for node {name}"))?;
            println!(
                "node {name}: intermediate CA in {} (a running reefd takes it up within seconds)",
                tls.display()
            );
        }
        CaCommand::Client {
            name,
            ca_dir,
            out,
            admin,
        } => {
            // The name goes in a URI and a file name, and policies match it as text.
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                anyhow::bail!("client name {name:?}: use letters, digits, '.', '_' and '-'");
            }
            let identity = match admin {
                true => reef_tls::admin_identity(&name),
                false => reef_tls::client_identity(&name),
            };
            let certified = reef_tls::issue_client(&ca_dir, &identity)
                .with_context(|| format!("cannot issue a certificate for {name}"))?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let cert = out.join(format!("{name}.pem"));
            let key = out.join(format!("{name}-key.pem"));
            certified.write(&cert, &key)?;
            println!(
                "{identity}: {} and {} (reef --cert {} --key {} …)",
                cert.display(),
                key.display(),
                cert.display(),
                key.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
