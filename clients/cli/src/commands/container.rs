//! `reef status ALIAS` and `reef command ALIAS NAME [ARGS…]`: what a container says about
//! itself, and operator commands it defines, asked through the node (which checks that
//! the caller may send to it).

use std::{io::Write as _, process::ExitCode};

use reef_proto::{
    CommandContainerRequest, GetContainerStatusRequest, supervisor_client::SupervisorClient,
};
use reef_sdk::{ConnectOptions, Error};

/// Arguments of `reef status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The container.
    alias: String,
}

/// Arguments of `reef command`.
#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// The container.
    alias: String,
    /// The command, as the container defines it (e.g. `reset`).
    command: String,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub async fn status(args: StatusArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let status = SupervisorClient::new(options.connect().await?)
        .get_container_status(GetContainerStatusRequest { alias: args.alias })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    println!(
        "{} ({}): pid {}, up {}, {} messages and {} requests handled",
        status.alias,
        status.name,
        status.pid,
        crate::clock::seconds_text(status.uptime_ms / 1000),
        status.messages_handled,
        status.requests_handled
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn command(args: CommandArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let answer = SupervisorClient::new(options.connect().await?)
        .command_container(CommandContainerRequest {
            alias: args.alias,
            command: args.command,
            args: args.args,
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&answer.output)?;
    if !answer.output.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    Ok(ExitCode::SUCCESS)
}
