//! `reef ping [ALIAS]`

use std::{process::ExitCode, time::Instant};

use reef_proto::{InfoRequest, PingContainerRequest, supervisor_client::SupervisorClient};
use reef_sdk::{ConnectOptions, Error};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Arguments of `reef ping`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A container to ping through its own endpoint; without it, the node is pinged.
    alias: Option<String>,
}

pub async fn run(args: Args, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let channel = options.connect().await?;
    let mut supervisor = SupervisorClient::new(channel.clone());
    if let Some(alias) = args.alias {
        let answer = supervisor
            .ping_container(PingContainerRequest { alias })
            .await
            .map_err(Error::Rejected)?
            .into_inner();
        println!("{} answered in {} µs", answer.alias, answer.round_trip_us);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    let round_trip = started.elapsed();
    let info = supervisor
        .info(InfoRequest {})
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    let status = ServingStatus::try_from(health.status).unwrap_or(ServingStatus::Unknown);
    println!(
        "node {} at {}: {} in {} µs; up {}s, {} containers, {} envelopes routed, {} dead letters",
        info.name,
        options.node,
        status.as_str_name(),
        round_trip.as_micros(),
        info.uptime_ms / 1000,
        info.containers,
        info.envelopes_routed,
        info.dead_letters
    );
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
