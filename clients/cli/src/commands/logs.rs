//! `reef logs ALIAS [-f]`: a process container's stdout and stderr, from the node.

use std::{io::Write as _, process::ExitCode};

use reef_proto::{LogsRequest, supervisor_client::SupervisorClient};
use reef_sdk::{ConnectOptions, Error};

/// Arguments of `reef logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The container.
    alias: String,
    /// Keep printing what it writes.
    #[arg(short, long)]
    follow: bool,
    /// How much of the end of the log to print first, in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    tail_bytes: u64,
}

pub async fn run(args: Args, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let mut chunks = SupervisorClient::new(options.connect().await?)
        .logs(LogsRequest {
            alias: args.alias,
            follow: args.follow,
            tail_bytes: args.tail_bytes,
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = chunks.message().await.map_err(Error::Rejected)? {
        stdout.write_all(&chunk.data)?;
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
