//! Container definitions as users write them: `reef create` flags and `[[container]]`
//! tables in project files, turned into `reef.v1.ContainerDefinition`.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use reef_proto as wire;
use serde::Deserialize;

/// Supervision policy fields; unset ones take the node's defaults.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// When the container is restarted: permanent, transient or temporary.
    #[arg(long)]
    #[serde(default)]
    pub restart: Option<String>,
    /// How its children restart together: one_for_one, one_for_all or rest_for_one.
    #[arg(long)]
    #[serde(default)]
    pub strategy: Option<String>,
    /// Restarts allowed among its children within --period-ms before escalation.
    #[arg(long)]
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// The window of --max-restarts, in milliseconds.
    #[arg(long)]
    #[serde(default)]
    pub period_ms: Option<u32>,
    /// First delay between consecutive restarts, in milliseconds (doubles).
    #[arg(long)]
    #[serde(default)]
    pub backoff_initial_ms: Option<u32>,
    /// Largest delay between restarts, in milliseconds.
    #[arg(long)]
    #[serde(default)]
    pub backoff_max_ms: Option<u32>,
    /// Time to stop after SIGTERM before SIGKILL, in milliseconds.
    #[arg(long)]
    #[serde(default)]
    pub stop_grace_ms: Option<u32>,
    /// Time from spawn to answering a ping, in milliseconds.
    #[arg(long)]
    #[serde(default)]
    pub start_timeout_ms: Option<u32>,
    /// Ping the container's endpoint this often (milliseconds); failures restart it.
    #[arg(long)]
    #[serde(default)]
    pub health_interval_ms: Option<u32>,
    /// Consecutive failed health checks that make a failure.
    #[arg(long)]
    #[serde(default)]
    pub health_failures: Option<u32>,
    /// A solver chain, ERROR_TYPE=ACTION[,ACTION…] (actions: continue, restart, stop,
    /// destroy_soft, destroy_hard, escalate, log). Repeatable.
    #[arg(long = "solver", value_name = "TYPE=ACTIONS")]
    #[serde(default, deserialize_with = "solver_table")]
    pub solvers: Vec<String>,
}

/// `solvers = { "db.timeout" = ["log", "restart"] }` in TOML, as `TYPE=ACTIONS` strings.
fn solver_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let table = BTreeMap::<String, Vec<String>>::deserialize(d)?;
    Ok(table
        .into_iter()
        .map(|(error_type, actions)| format!("{error_type}={}", actions.join(",")))
        .collect())
}

pub(crate) fn enum_value(
    raw: &str,
    prefix: &str,
    what: &str,
    parse: fn(&str) -> Option<i32>,
) -> anyhow::Result<i32> {
    let name = format!(
        "{prefix}{}",
        raw.trim().to_ascii_uppercase().replace('-', "_")
    );
    parse(&name).with_context(|| format!("unknown {what} {raw:?}"))
}

impl PolicySpec {
    /// The wire policy; names checked here so the user hears which one is wrong.
    pub fn to_wire(&self) -> anyhow::Result<wire::SupervisionPolicy> {
        let restart = match &self.restart {
            Some(raw) => enum_value(raw, "RESTART_TYPE_", "restart type", |n| {
                wire::RestartType::from_str_name(n).map(|v| v as i32)
            })?,
            None => 0,
        };
        let strategy = match &self.strategy {
            Some(raw) => enum_value(raw, "RESTART_STRATEGY_", "strategy", |n| {
                wire::RestartStrategy::from_str_name(n).map(|v| v as i32)
            })?,
            None => 0,
        };
        let mut solvers = Vec::new();
        for solver in &self.solvers {
            let (error_type, actions) = solver
                .split_once('=')
                .with_context(|| format!("solver {solver:?} is not TYPE=ACTION[,ACTION…]"))?;
            let actions = actions
                .split(',')
                .map(|action| {
                    enum_value(action, "SOLVER_ACTION_", "solver action", |n| {
                        wire::SolverAction::from_str_name(n).map(|v| v as i32)
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            solvers.push(wire::Solver {
                error_type: error_type.to_owned(),
                actions,
            });
        }
        Ok(wire::SupervisionPolicy {
            restart,
            strategy,
            max_restarts: self.max_restarts.unwrap_or(0),
            period_ms: self.period_ms.unwrap_or(0),
            backoff_initial_ms: self.backoff_initial_ms.unwrap_or(0),
            backoff_max_ms: self.backoff_max_ms.unwrap_or(0),
            stop_grace_ms: self.stop_grace_ms.unwrap_or(0),
            start_timeout_ms: self.start_timeout_ms.unwrap_or(0),
            health_interval_ms: self.health_interval_ms.unwrap_or(0),
            health_failures: self.health_failures.unwrap_or(0),
            solvers,
        })
    }
}

/// A process container definition.
pub fn process_definition(
    alias: &str,
    parent: Option<&str>,
    command: &[String],
    env: &BTreeMap<String, String>,
    inherit_env: bool,
    policy: &PolicySpec,
) -> anyhow::Result<wire::ContainerDefinition> {
    let Some((program, args)) = command.split_first() else {
        bail!("{alias}: the command is empty");
    };
    Ok(wire::ContainerDefinition {
        alias: alias.to_owned(),
        parent: parent.unwrap_or_default().to_owned(),
        name: String::new(),
        kind: Some(wire::container_definition::Kind::Process(
            wire::ProcessSpec {
                command: program.clone(),
                args: args.to_vec(),
                env: env.clone().into_iter().collect(),
                working_dir: String::new(),
                inherit_env,
            },
        )),
        policy: Some(
            policy
                .to_wire()
                .with_context(|| format!("{alias}: policy"))?,
        ),
        labels: Default::default(),
        groups: Vec::new(),
        overflow: 0,
    })
}

/// A task container definition: behaviour `name` in process `host`.
pub fn task_definition(
    alias: &str,
    parent: Option<&str>,
    host: &str,
    name: &str,
    args: &[String],
    policy: &PolicySpec,
) -> anyhow::Result<wire::ContainerDefinition> {
    Ok(wire::ContainerDefinition {
        alias: alias.to_owned(),
        parent: parent.unwrap_or_default().to_owned(),
        name: name.to_owned(),
        kind: Some(wire::container_definition::Kind::Task(wire::TaskSpec {
            host: host.to_owned(),
            args: args.to_vec(),
        })),
        policy: Some(
            policy
                .to_wire()
                .with_context(|| format!("{alias}: policy"))?,
        ),
        labels: Default::default(),
        groups: Vec::new(),
        overflow: 0,
    })
}

/// `--flags` of create: DEFAULT, FORCE_SOFT, FORCE_HARD, FORCE.
pub fn create_flag(raw: &str) -> anyhow::Result<i32> {
    enum_value(raw, "CREATE_FLAG_", "create flag", |n| {
        wire::CreateFlag::from_str_name(n).map(|v| v as i32)
    })
}

/// `--flags` of destroy and stop: KEEP, FORCE_SOFT, FORCE_HARD, FORCE.
pub fn destroy_flag(raw: &str) -> anyhow::Result<i32> {
    enum_value(raw, "DESTROY_FLAG_", "destroy flag", |n| {
        wire::DestroyFlag::from_str_name(n).map(|v| v as i32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_wire_values() {
        let policy = PolicySpec {
            restart: Some("transient".into()),
            strategy: Some("rest-for-one".into()),
            solvers: vec!["db.timeout=log,restart".into()],
            ..PolicySpec::default()
        };
        let wire = policy.to_wire().unwrap();
        assert_eq!(wire.restart, wire::RestartType::Transient as i32);
        assert_eq!(wire.strategy, wire::RestartStrategy::RestForOne as i32);
        assert_eq!(
            wire.solvers[0].actions,
            [
                wire::SolverAction::Log as i32,
                wire::SolverAction::Restart as i32
            ]
        );
        assert_eq!(create_flag("FORCE_HARD").unwrap(), 2);
        assert!(
            destroy_flag("gently")
                .unwrap_err()
                .to_string()
                .contains("gently")
        );
        let bad = PolicySpec {
            solvers: vec!["x=reboot".into()],
            ..PolicySpec::default()
        };
        assert!(format!("{:#}", bad.to_wire().unwrap_err()).contains("reboot"));
    }
}
