//! `reef`, the command-line interface: starts a project (`reef up`) and talks to a node.
//! Each command lives in its own file under `commands/`.

use std::process::ExitCode;

use clap::Parser;
use reef_sdk::ConnectOptions;

mod clock;
mod commands;
mod definition;
mod duration;
mod project;
mod routing;

/// Manage and talk to a reef node.
#[derive(Debug, Parser)]
#[command(
    name = "reef",
    version,
    about,
    after_help = "Built in, with flags of their own (see `reef node --help`):\n  \
                  reef node      the node daemon (the same program as reefd)\n  \
                  reef demo      the demo project's containers\n  \
                  reef gateway   the HTTP / WebSocket / TCP / UDP gateway container"
)]
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
    /// The client certificate to present (PEM): who the node's policies see. By
    /// default the node's admin certificate beside --ca (admin.pem), if it is there.
    // (Ids apart from the flags: `key` is also an argument of `reef state`.)
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        env = "REEF_CERT",
        requires = "client_key"
    )]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        env = "REEF_KEY",
        requires = "client_cert"
    )]
    key: Option<std::path::PathBuf>,
    /// Present no client certificate (call as anonymous).
    #[arg(long, global = true, conflicts_with = "client_cert")]
    anonymous: bool,
    #[command(subcommand)]
    command: commands::Command,
}

impl Cli {
    fn connect_options(&self) -> ConnectOptions {
        let identity = match (&self.cert, &self.key) {
            _ if self.anonymous => None,
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => ConnectOptions::admin_beside(&self.ca),
        };
        ConnectOptions {
            node: self.addr.clone(),
            ca: self.ca.clone(),
            insecure: self.insecure,
            identity,
            ..ConnectOptions::default()
        }
    }
}

/// A built-in program's entry point: its command line, its first item the program's name.
type BuiltIn = fn(Vec<std::ffi::OsString>) -> ExitCode;

/// The programs built into `reef`: `reef PROGRAM ARGS…` runs PROGRAM as its own binary
/// would (`reef node` is `reefd`). One binary carries everything `reef up` starts.
const BUILT_IN: &[(&str, BuiltIn)] = &[
    ("node", |args| reefd::main(args)),
    ("demo", |args| reef_demo::main(args)),
    ("gateway", |args| reef_gateway::main(args)),
];

fn main() -> ExitCode {
    // `reef node` and `reef up` run a node, which starts this executable to confine its
    // containers.
    reefd::run_if_launcher();
    // Before clap: the programs parse their own flags, and build their own runtimes.
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "reef".into());
    let first = args.next();
    if let Some((name, run)) = first
        .as_ref()
        .and_then(|first| BUILT_IN.iter().find(|(name, _)| first == *name))
    {
        let argv0 = format!("{} {name}", program.to_string_lossy());
        return run(std::iter::once(argv0.into()).chain(args).collect());
    }
    reef_telemetry::runtime::run_main("reef", None, cli())
}

async fn cli() -> ExitCode {
    let cli = Cli::parse();
    use reef_telemetry as telemetry;
    // With REEF_OTLP_ENDPOINT set, a request from the CLI starts a trace.
    let _telemetry = match telemetry::init(
        &telemetry::Service::container("reef-cli"),
        "error",
        &telemetry::Export::from_env(),
    ) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("reef: {error}");
            return ExitCode::from(2);
        }
    };
    let options = cli.connect_options();
    match commands::run(cli.command, options).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reef: {error:#}");
            ExitCode::FAILURE
        }
    }
}
