//! `reef group | rule | firewall | deadletters`: the node's messaging configuration.

use std::process::ExitCode;

use reef_proto::{
    self as wire, DeadLettersRequest, DeleteRuleRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListRulesRequest, PutRuleRequest, SetFirewallRequest, SetOverflowRequest,
    supervisor_client::SupervisorClient,
};
use reef_sdk::{ConnectOptions, Error};

use crate::routing::{GroupSpec, RuleSpec, describe_rule, overflow_policy};

/// `reef group …`
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Every group with its strategy and members.
    List,
    /// Create a group or change its strategy.
    Set(GroupSpec),
    /// Add containers to a group (created round-robin if new).
    Join(Membership),
    /// Remove containers from a group.
    Leave(Membership),
}

/// A group and some aliases.
#[derive(Debug, clap::Args)]
pub struct Membership {
    /// The group's name.
    group: String,
    /// The containers.
    #[arg(required = true)]
    aliases: Vec<String>,
}

/// `reef rule …`
#[derive(Debug, clap::Subcommand)]
pub enum RuleCommand {
    /// The rules in evaluation order, with their hits, and the firewall mode.
    List,
    /// Add a rule (or replace the rule with the same id).
    Add(Box<AddRule>),
    /// Remove a rule.
    Delete {
        /// The rule's id.
        id: String,
    },
}

/// Arguments of `reef rule add`.
#[derive(Debug, clap::Args)]
pub struct AddRule {
    #[command(flatten)]
    rule: RuleSpec,
    /// Insert before the rule with this id (default: last).
    #[arg(long)]
    before: Option<String>,
}

/// Arguments of `reef firewall`.
#[derive(Debug, clap::Args)]
pub struct FirewallArgs {
    /// on: refuse sends and requests no route or redirect rule allows; off: allow.
    #[arg(value_parser = ["on", "off"])]
    mode: String,
}

/// Arguments of `reef overflow`.
#[derive(Debug, clap::Args)]
pub struct OverflowArgs {
    /// The container whose mailbox it is.
    alias: String,
    /// block (wait, then refuse), reject (refuse at once), drop_newest or drop_oldest.
    policy: String,
}

/// Arguments of `reef deadletters`.
#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// Show the newest this many (0 = all the node keeps).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// One JSON object per line (times in Unix milliseconds), for machines.
    #[arg(long)]
    json: bool,
}

async fn supervisor(
    options: &ConnectOptions,
) -> anyhow::Result<SupervisorClient<tonic::transport::Channel>> {
    Ok(SupervisorClient::new(options.connect().await?))
}

fn print_group(group: &wire::Group) {
    let strategy = group
        .strategy()
        .as_str_name()
        .trim_start_matches("GROUP_STRATEGY_")
        .to_ascii_lowercase();
    let key = match group.hash_key.is_empty() {
        true => String::new(),
        false => format!(" (key {})", group.hash_key),
    };
    let members: Vec<String> = group
        .members
        .iter()
        .map(|m| match m.attached {
            true => format!("{} [{} queued]", m.alias, m.queued),
            false => format!("{} [detached]", m.alias),
        })
        .collect();
    println!(
        "group:{} {strategy}{key}: {}",
        group.name,
        match members.is_empty() {
            true => "no members".to_owned(),
            false => members.join(", "),
        }
    );
}

pub async fn group(command: GroupCommand, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let mut supervisor = supervisor(&options).await?;
    let changed = match command {
        GroupCommand::List => {
            let groups = supervisor
                .list_groups(ListGroupsRequest {})
                .await
                .map_err(Error::Rejected)?
                .into_inner()
                .groups;
            if groups.is_empty() {
                println!("no groups");
            }
            groups.iter().for_each(print_group);
            return Ok(ExitCode::SUCCESS);
        }
        GroupCommand::Set(spec) => {
            supervisor
                .configure_group(spec.to_wire()?)
                .await
                .map_err(Error::Rejected)?
                .into_inner()
                .group
        }
        GroupCommand::Join(m) => {
            supervisor
                .join_group(JoinGroupRequest {
                    group: m.group,
                    aliases: m.aliases,
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner()
                .group
        }
        GroupCommand::Leave(m) => {
            supervisor
                .leave_group(LeaveGroupRequest {
                    group: m.group,
                    aliases: m.aliases,
                })
                .await
                .map_err(Error::Rejected)?
                .into_inner()
                .group
        }
    };
    if let Some(group) = changed {
        print_group(&group);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rule(command: RuleCommand, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let mut supervisor = supervisor(&options).await?;
    match command {
        RuleCommand::List => {
            let listed = supervisor
                .list_rules(ListRulesRequest {})
                .await
                .map_err(Error::Rejected)?
                .into_inner();
            let mode = if listed.firewall { "on" } else { "off" };
            println!("firewall {mode}");
            for rule in &listed.rules {
                println!("{}", describe_rule(rule));
            }
        }
        RuleCommand::Add(add) => {
            supervisor
                .put_rule(PutRuleRequest {
                    rule: Some(add.rule.to_wire()?),
                    before: add.before.unwrap_or_default(),
                })
                .await
                .map_err(Error::Rejected)?;
            println!("rule {} in force", add.rule.id);
        }
        RuleCommand::Delete { id } => {
            supervisor
                .delete_rule(DeleteRuleRequest { id: id.clone() })
                .await
                .map_err(Error::Rejected)?;
            println!("rule {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn firewall(args: FirewallArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let enabled = args.mode == "on";
    supervisor(&options)
        .await?
        .set_firewall(SetFirewallRequest { enabled })
        .await
        .map_err(Error::Rejected)?;
    println!("firewall {}", args.mode);
    Ok(ExitCode::SUCCESS)
}

pub async fn overflow(args: OverflowArgs, options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let policy = overflow_policy(&args.policy)?;
    supervisor(&options)
        .await?
        .set_overflow(SetOverflowRequest {
            alias: args.alias.clone(),
            policy,
        })
        .await
        .map_err(Error::Rejected)?;
    println!("{}: overflow policy {}", args.alias, args.policy);
    Ok(ExitCode::SUCCESS)
}

pub async fn dead_letters(
    args: DeadLettersArgs,
    options: ConnectOptions,
) -> anyhow::Result<ExitCode> {
    let listed = supervisor(&options)
        .await?
        .dead_letters(DeadLettersRequest { limit: args.limit })
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    for letter in &listed.letters {
        let kind = letter
            .kind()
            .as_str_name()
            .trim_start_matches("ENVELOPE_KIND_")
            .to_ascii_lowercase();
        if args.json {
            let line = serde_json::json!({
                "at_ms": letter.at_ms,
                "kind": kind,
                "id": letter.id,
                "correlation_id": letter.correlation_id,
                "origin": letter.origin,
                "destination": letter.destination,
                "payload_bytes": letter.payload_bytes,
                "payload_preview": String::from_utf8_lossy(&letter.payload_preview),
                "reason": letter.reason,
            });
            println!("{line}");
            continue;
        }
        let origin = if letter.origin.is_empty() {
            "-"
        } else {
            &letter.origin
        };
        println!(
            "{} {kind} #{} {origin} → {} ({} bytes): {}",
            crate::clock::local_time(letter.at_ms),
            if letter.id != 0 {
                letter.id
            } else {
                letter.correlation_id
            },
            letter.destination,
            letter.payload_bytes,
            letter.reason
        );
    }
    if !args.json {
        println!(
            "{} shown, {} dead letters since the node started",
            listed.letters.len(),
            listed.total
        );
    }
    Ok(ExitCode::SUCCESS)
}
