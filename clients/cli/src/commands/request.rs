//! `reef request ALIAS TEXT [--timeout 2s]`

use std::{io::Write as _, process::ExitCode, time::Duration};

use reef_sdk::{Client, ConnectOptions};

/// Arguments of `reef request`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The receiver's alias.
    alias: String,
    /// The request's payload, as text.
    text: String,
    /// How long to wait for the reply (e.g. 500ms, 2s, 1m).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    timeout: Duration,
}

pub async fn run(args: Args, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&options).await?;
    let result = client.request(&args.alias, args.text, args.timeout).await;
    client.close().await?;
    let reply = result?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&reply)?;
    if !reply.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    Ok(ExitCode::SUCCESS)
}
