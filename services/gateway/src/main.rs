//! `reef-gateway --config FILE`: hosts HTTP listeners whose routes turn requests into
//! REQUEST envelopes for containers (see `config.rs` for the file). It reaches the node
//! like any container (`REEF_NODE`, `REEF_CA`, `REEF_CERT`…), so a node can supervise
//! it. Prints `gateway ready http=ADDR…` once every listener listens.

mod config;
mod http;
mod routes;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use reef_sdk::{Client, ConnectOptions};

/// Outside HTTP traffic as requests to reef containers.
#[derive(Debug, Parser)]
#[command(name = "reef-gateway", version, about)]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, env = "REEF_GATEWAY_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    reef_platform::telemetry::init("info");
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reef-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = config::Config::load(&args.config)?;
    if config.http.is_empty() {
        anyhow::bail!("{}: no [[http]] listener", args.config.display());
    }
    let client = Client::connect(&ConnectOptions::from_env()).await?;
    let mut ready = String::from("gateway ready");
    let mut servers = Vec::new();
    for listener in config.http {
        let (addr, server) = http::serve(listener, client.clone()).await?;
        ready.push_str(&format!(" http={addr}"));
        servers.push(server);
    }
    println!("{ready}");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated() => {}
    }
    Ok(())
}

/// Resolves on SIGTERM (how a node stops the containers it supervises).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
