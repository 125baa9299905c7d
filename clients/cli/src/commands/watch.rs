//! `reef watch`: lifecycle and registry events as they happen, one line each.

use std::process::ExitCode;

use reef_proto::{
    ContainerEventKind, LifecyclePhase, WatchRequest, supervisor_client::SupervisorClient,
};
use reef_sdk::{ConnectOptions, Error};

/// Arguments of `reef watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start with one line per existing container.
    #[arg(long)]
    snapshot: bool,
    /// Only events of this container (and nothing else).
    alias: Option<String>,
}

pub async fn run(args: Args, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let mut events = SupervisorClient::new(options.connect().await?)
        .watch(WatchRequest {
            snapshot: args.snapshot,
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    while let Some(event) = events.message().await.map_err(Error::Rejected)? {
        let alias = event.container.as_ref().map_or("", |c| c.alias.as_str());
        if args.alias.as_deref().is_some_and(|only| only != alias) {
            continue;
        }
        let kind = ContainerEventKind::try_from(event.kind)
            .map_or("UNKNOWN", |k| k.as_str_name())
            .trim_start_matches("CONTAINER_EVENT_KIND_");
        let phase = match LifecyclePhase::try_from(event.phase) {
            Ok(LifecyclePhase::Before) => " before",
            Ok(LifecyclePhase::On) => "",
            Ok(LifecyclePhase::After) => " after",
            _ => "",
        };
        let state = event
            .container
            .as_ref()
            .map_or("-", reef_sdk::sample::state_name);
        println!(
            "{} {alias} {kind}{phase} [{state}] {}",
            crate::clock::local_time(event.at_unix_ms),
            event.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}
