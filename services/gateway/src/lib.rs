//! `reef-gateway --config FILE` (or `--config-toml TEXT`, or `reef gateway …`): a container that hosts HTTP, WebSocket, TCP and UDP
//! listeners and turns their traffic into envelopes for containers (see `config.rs` for
//! the file). It runs like any container (`REEF_ALIAS`, default `gateway`; `REEF_NODE`,
//! `REEF_CA`, `REEF_CERT`…), so a node can supervise it, and its connections and rooms
//! are its task containers. Prints `gateway ready http=ADDR tcp=ADDR udp=ADDR…` once
//! every listener listens.

mod config;
mod connections;
mod http;
mod listen;
mod routes;
mod tcp;
mod udp;
mod ws;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser;
use reef_sdk::{ContainerOptions, Context, Handler, HandlerError};
use tokio::task::JoinHandle;

use crate::{config::Config, connections::Hub};

/// Outside traffic as messages to reef containers.
#[derive(Debug, Parser)]
#[command(name = "reef-gateway", version, about)]
#[group(id = "configuration", required = true, args = ["config", "config_toml"])]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, env = "REEF_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// The configuration itself (TOML), for a project file to carry it.
    #[arg(long, env = "REEF_GATEWAY_TOML", conflicts_with = "config")]
    config_toml: Option<String>,
}

impl Args {
    fn load(&self) -> anyhow::Result<Config> {
        match (&self.config, &self.config_toml) {
            (Some(path), _) => Config::load(path),
            (None, Some(text)) => Config::parse(text, "REEF_GATEWAY_TOML", Path::new(".")),
            (None, None) => anyhow::bail!("give --config FILE or --config-toml TEXT"),
        }
    }
}

/// Runs the program with command-line `args` (the first is the program's name, as in
/// `std::env::args_os`).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = Args::parse_from(args);
    reef_telemetry::runtime::run_main("reef-gateway", None, run(args))
}

async fn run(args: Args) -> ExitCode {
    use reef_telemetry as telemetry;
    let service = telemetry::Service::container("gateway");
    let _telemetry = match telemetry::init(&service, "info", &telemetry::Export::from_env()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("reef-gateway: {error}");
            return ExitCode::from(2);
        }
    };
    // A bad file is reported before the node is contacted.
    let config = match args.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("reef-gateway: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = Gateway {
        config: Some(config),
        servers: Vec::new(),
    };
    match reef_sdk::run(ContainerOptions::from_env("gateway"), gateway).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reef-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The gateway container: its listeners start once it is attached.
struct Gateway {
    config: Option<Config>,
    servers: Vec<JoinHandle<()>>,
}

impl Gateway {
    async fn start(&mut self, ctx: &Context, config: Config) -> anyhow::Result<String> {
        let hub = Hub::new(ctx.tasks().clone(), ctx.alias(), config.max_rooms);
        let client = ctx.client().clone();
        let mut ready = String::from("gateway ready");
        for listener in config.http {
            let served = http::serve(listener, client.clone(), hub.clone()).await;
            ready.push_str(&self.spawn("http", served)?);
        }
        for listener in config.tcp {
            let served = tcp::serve(listener, hub.clone()).await;
            ready.push_str(&self.spawn("tcp", served)?);
        }
        for listener in config.udp {
            let served = udp::serve(listener, client.clone()).await;
            ready.push_str(&self.spawn("udp", served)?);
        }
        Ok(ready)
    }

    fn spawn(
        &mut self,
        kind: &str,
        served: anyhow::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)>,
    ) -> anyhow::Result<String> {
        let (addr, serving) = served?;
        self.servers.push(tokio::spawn(serving));
        Ok(format!(" {kind}={addr}"))
    }
}

impl Handler for Gateway {
    async fn on_start(&mut self, ctx: &Context) -> Result<(), HandlerError> {
        let Some(config) = self.config.take() else {
            return Ok(());
        };
        let ready = self
            .start(ctx, config)
            .await
            .map_err(|e| HandlerError::new("gateway.config", format!("{e:#}")))?;
        println!("{ready}");
        Ok(())
    }

    async fn on_stop(&mut self, _: &Context) {
        for server in self.servers.drain(..) {
            server.abort();
        }
    }
}
