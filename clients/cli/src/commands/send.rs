//! `reef send ALIAS TEXT`

use std::{process::ExitCode, time::Duration};

use reef_sdk::{Client, ConnectOptions};

/// Arguments of `reef send`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The receiver's alias.
    alias: String,
    /// The message text.
    text: String,
}

pub async fn run(args: Args, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&options).await?;
    client.send(&args.alias, args.text).await?;
    // Once the node has routed the send, its ERROR (if any) has arrived.
    client.flush(Duration::from_secs(5)).await?;
    let undelivered = client.undelivered();
    let why = client.last_undelivered().unwrap_or_default();
    client.close().await?;
    if undelivered > 0 {
        anyhow::bail!(
            "the node could not deliver the message to {:?}: {why}",
            args.alias
        );
    }
    Ok(ExitCode::SUCCESS)
}
