//! `reef`, the command-line interface: starts a project (`reef up`) and talks to a node.
//! Each command lives in its own file under `commands/`.

use std::process::ExitCode;

use clap::Parser;
use reef_sdk::ConnectOptions;

mod commands;
mod definition;
mod duration;
mod project;
mod routing;

/// Manage and talk to a reef node.
#[derive(Debug, Parser)]
#[command(name = "reef", version, about)]
struct Cli {
    /// The TLS gRPC address of the node to talk to.
    #[arg(long, global = true, env = "REEF_NODE", default_value = reef_sdk::DEFAULT_NODE)]
    addr: String,
    /// The CA certificate that signed the node's certificate.
    #[arg(long, global = true, env = "REEF_CA", default_value = reef_sdk::DEFAULT_CA)]
    ca: std::path::PathBuf,
    /// Speak plaintext gRPC (only to a node started with --insecure).
    #[arg(long, global = true, env = "REEF_INSECURE")]
    insecure: bool,
    #[command(subcommand)]
    command: commands::Command,
}

impl Cli {
    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            node: self.addr.clone(),
            ca: self.ca.clone(),
            insecure: self.insecure,
            ..ConnectOptions::default()
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    reef_platform::telemetry::init("error");
    let options = cli.connect_options();
    match commands::run(cli.command, options).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reef: {error:#}");
            ExitCode::FAILURE
        }
    }
}
