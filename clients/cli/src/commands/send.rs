//! `reef send ALIAS TEXT`

use std::process::ExitCode;

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
    // A round trip through the node after the send: if the destination is unknown, the
    // node's ERROR for the send has arrived by the time this answers.
    let info = client
        .supervisor()
        .info(reef_proto::InfoRequest {})
        .await
        .map_err(reef_sdk::Error::Rejected)?;
    drop(info);
    let undelivered = client.undelivered();
    client.close().await?;
    if undelivered > 0 {
        anyhow::bail!("the node could not deliver the message to {:?}", args.alias);
    }
    Ok(ExitCode::SUCCESS)
}
