//! The CLI's commands, one per file.

use std::process::ExitCode;

use clap::Subcommand;
use reef_sdk::ConnectOptions;

mod ping;
mod ps;
mod request;
mod send;
mod up;

/// What `reef` can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node and a project's containers as child processes (default: the demo).
    Up(up::Args),
    /// List the node's containers as a tree.
    Ps,
    /// Send a fire-and-forget message.
    Send(send::Args),
    /// Send a request and print the reply.
    Request(request::Args),
    /// Check the node (no alias) or a container's own endpoint (with an alias).
    Ping(ping::Args),
}

/// Runs `command` against the node described by `options`.
pub async fn run(command: Command, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(args, options.insecure).await,
        Command::Ps => ps::run(options).await,
        Command::Send(args) => send::run(args, options).await,
        Command::Request(args) => request::run(args, options).await,
        Command::Ping(args) => ping::run(args, options).await,
    }
}
