//! `reef create | destroy | start | stop | restart`: the container lifecycle.

use std::{collections::BTreeMap, process::ExitCode};

use reef_proto::{
    ContainerInfo, CreateRequest, DestroyRequest, RestartRequest, StartRequest, StopRequest,
    supervisor_client::SupervisorClient,
};
use reef_sdk::{ConnectOptions, Error};

use crate::{
    definition::{PolicySpec, create_flag, destroy_flag, process_definition, task_definition},
    routing::overflow_policy,
};

/// Arguments of `reef create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The new container's alias.
    alias: String,
    /// The parent container's alias (default: the node).
    #[arg(long)]
    parent: Option<String>,
    /// Environment variable for the process, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Start the process from the node's environment, not from PATH, --env and REEF_*
    /// alone (the node's credentials then reach it).
    #[arg(long)]
    inherit_env: bool,
    /// What to do if the alias exists: DEFAULT (keep it), FORCE_SOFT, FORCE_HARD, FORCE.
    #[arg(long, default_value = "DEFAULT")]
    flags: String,
    #[command(flatten)]
    policy: PolicySpec,
    /// Create a task container inside this host process (which runs the Rust SDK)
    /// instead of a process; the arguments after `--` go to the task's behaviour.
    #[arg(long, value_name = "HOST", requires = "name")]
    task_host: Option<String>,
    /// The behaviour a task runs, as its host defines it.
    #[arg(long)]
    name: Option<String>,
    /// A group to join once created (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// Its mailbox's overflow policy: block, reject, drop_newest or drop_oldest.
    #[arg(long)]
    overflow: Option<String>,
    /// The node to create it on (a node linked below the one the CLI talks to; default:
    /// that node).
    #[arg(long)]
    node: Option<String>,
    /// The program and its arguments (after `--`), or a task's arguments.
    #[arg(last = true, required_unless_present = "task_host")]
    command: Vec<String>,
}

/// Arguments of `reef destroy` and `reef stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The container's alias.
    alias: String,
    /// How: FORCE (SIGTERM, SIGKILL after the grace period), KEEP (refuse if it has
    /// children), FORCE_SOFT (SIGTERM only), FORCE_HARD (SIGKILL).
    #[arg(long, default_value = "FORCE")]
    flags: String,
}

/// Arguments of `reef start` and `reef restart`.
#[derive(Debug, clap::Args)]
pub struct AliasArgs {
    /// The container's alias.
    alias: String,
}

async fn supervisor(
    options: &ConnectOptions,
) -> anyhow::Result<SupervisorClient<tonic::transport::Channel>> {
    Ok(SupervisorClient::new(options.connect().await?))
}

fn describe(info: Option<ContainerInfo>) -> String {
    let Some(info) = info else {
        return String::new();
    };
    format!(
        " (pid {}, {})",
        info.pid,
        reef_sdk::sample::state_name(&info)
    )
}

pub async fn create(args: CreateArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--env {pair:?} is not KEY=VALUE"))?;
        env.insert(key.to_owned(), value.to_owned());
    }
    let mut definition = match (&args.task_host, &args.name) {
        (Some(host), Some(name)) => task_definition(
            &args.alias,
            args.parent.as_deref(),
            host,
            name,
            &args.command,
            &args.policy,
        )?,
        _ => process_definition(
            &args.alias,
            args.parent.as_deref(),
            &args.command,
            &env,
            args.inherit_env,
            &args.policy,
        )?,
    };
    definition.groups = args.groups;
    if let Some(policy) = &args.overflow {
        definition.overflow = overflow_policy(policy)?;
    }
    let flags = create_flag(&args.flags)?;
    let created = supervisor(&options)
        .await?
        .create(CreateRequest {
            definition: Some(definition),
            flags,
            node: args.node.clone().unwrap_or_default(),
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    let verb = if created.created { "created" } else { "exists" };
    println!("{verb} {}{}", args.alias, describe(created.container));
    Ok(ExitCode::SUCCESS)
}

pub async fn destroy(args: StopArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let flags = destroy_flag(&args.flags)?;
    let destroyed = supervisor(&options)
        .await?
        .destroy(DestroyRequest {
            alias: args.alias,
            flags,
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    println!("destroyed {}", destroyed.destroyed.join(", "));
    Ok(ExitCode::SUCCESS)
}

pub async fn start(args: AliasArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let started = supervisor(&options)
        .await?
        .start(StartRequest {
            alias: args.alias.clone(),
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    println!("started {}{}", args.alias, describe(started.container));
    Ok(ExitCode::SUCCESS)
}

pub async fn stop(args: StopArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let flags = destroy_flag(&args.flags)?;
    let stopped = supervisor(&options)
        .await?
        .stop(StopRequest {
            alias: args.alias.clone(),
            flags,
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    println!("stopped {}{}", args.alias, describe(stopped.container));
    Ok(ExitCode::SUCCESS)
}

pub async fn restart(args: AliasArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let restarted = supervisor(&options)
        .await?
        .restart(RestartRequest {
            alias: args.alias.clone(),
        })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    println!("restarted {}{}", args.alias, describe(restarted.container));
    Ok(ExitCode::SUCCESS)
}
