//! Supervision types on the wire (`reef.v1`) ⇄ in the domain (`supervision`), checked
//! once at the service edge.

use std::{path::PathBuf, time::Duration};

use reef_core::{Alias, millis};
use reef_proto as wire;

use reef_supervision::{
    Action, CreateFlag, Definition, Kind, Policy, ProcessSpec, RestartType, Solver, State,
    StopMode, Strategy, SupervisedSnapshot,
};

use super::hosting::TaskDefinition;
use crate::{HostedTask, TaskSnapshot, api::error::ApiError};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// A checked definition: valid aliases, no self-parent, a program, known enums.
pub(crate) fn definition(raw: wire::ContainerDefinition) -> Result<Definition, ApiError> {
    let (alias, parent) = alias_and_parent(&raw)?;
    let kind = match raw.kind {
        Some(wire::container_definition::Kind::Process(process)) => {
            if process.command.trim().is_empty() {
                return Err(invalid("definition.process.command is empty"));
            }
            Kind::Process(ProcessSpec {
                command: process.command,
                args: process.args,
                env: process.env.into_iter().collect(),
                working_dir: (!process.working_dir.is_empty())
                    .then(|| PathBuf::from(process.working_dir)),
                inherit_env: process.inherit_env,
            })
        }
        Some(wire::container_definition::Kind::Task(_)) => {
            return Err(invalid("a task is not a process definition"));
        }
        None => return Err(invalid("definition needs a kind: set `process` or `task`")),
    };
    let name = match (raw.name.is_empty(), &kind) {
        (false, _) => raw.name,
        (true, Kind::Process(spec)) => std::path::Path::new(&spec.command).file_name().map_or_else(
            || spec.command.clone(),
            |n| n.to_string_lossy().into_owned(),
        ),
    };
    Ok(Definition {
        alias,
        parent,
        name,
        kind,
        policy: policy(raw.policy.unwrap_or_default())?,
        labels: raw.labels.into_iter().collect(),
    })
}

fn alias_and_parent(raw: &wire::ContainerDefinition) -> Result<(Alias, Option<Alias>), ApiError> {
    let alias = Alias::parse(&raw.alias).map_err(|e| invalid(format!("definition.alias: {e}")))?;
    let parent = match raw.parent.as_str() {
        "" => None,
        parent => {
            Some(Alias::parse(parent).map_err(|e| invalid(format!("definition.parent: {e}")))?)
        }
    };
    if parent.as_ref() == Some(&alias) {
        return Err(invalid(format!("{alias} cannot be its own parent")));
    }
    Ok((alias, parent))
}

/// A checked task definition; `None` when `raw` is not a task.
pub(crate) fn task_definition(
    raw: &wire::ContainerDefinition,
) -> Result<Option<TaskDefinition>, ApiError> {
    let Some(wire::container_definition::Kind::Task(task)) = &raw.kind else {
        return Ok(None);
    };
    let (alias, parent) = alias_and_parent(raw)?;
    let host =
        Alias::parse(&task.host).map_err(|e| invalid(format!("definition.task.host: {e}")))?;
    if host == alias {
        return Err(invalid(format!("{alias} cannot host itself")));
    }
    if raw.name.is_empty() {
        return Err(invalid(
            "definition.name is empty: a task needs the name of a behaviour its host defines",
        ));
    }
    let policy = policy(raw.policy.clone().unwrap_or_default())?;
    Ok(Some(TaskDefinition {
        alias,
        parent,
        name: raw.name.clone(),
        host,
        args: task.args.clone(),
        restart: restart_to_wire(policy.restart),
        max_restarts: policy.max_restarts,
        period_ms: millis(policy.period),
        labels: raw.labels.clone().into_iter().collect(),
    }))
}

/// What List, Tree and Watch show of a task container.
pub(crate) fn task_info(spec: &crate::ContainerSpec, task: &TaskSnapshot) -> wire::SupervisedInfo {
    wire::SupervisedInfo {
        state: wire::ContainerState::Started as i32,
        kind: "task".to_owned(),
        restarts: task.restarts,
        started_at_unix_ms: reef_core::unix_ms(task.started_at),
        definition: Some(wire::ContainerDefinition {
            alias: spec.alias.to_string(),
            parent: spec
                .parent
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            name: spec.name.clone(),
            kind: Some(wire::container_definition::Kind::Task(wire::TaskSpec {
                host: task.host.to_string(),
                args: Vec::new(),
            })),
            policy: None,
            labels: spec.labels.clone().into_iter().collect(),
            // Membership lives in the node's routing table (ListGroups), not here.
            groups: Vec::new(),
            overflow: 0,
        }),
        ..Default::default()
    }
}

/// A task its host announces (`Supervisor.Host`).
pub(crate) fn hosted_task(raw: wire::HostedTask) -> Result<HostedTask, ApiError> {
    let alias = super::parse_alias(&raw.alias)?;
    let parent = match raw.parent.as_str() {
        "" => None,
        parent => Some(super::parse_alias(parent)?),
    };
    Ok(HostedTask {
        alias,
        name: raw.name,
        parent,
        restarts: raw.restarts,
        labels: raw.labels.into_iter().collect(),
    })
}

/// A task as a host announces it: what a node passes on to its parent.
pub(crate) fn hosted_task_to_wire(task: &HostedTask) -> wire::HostedTask {
    wire::HostedTask {
        alias: task.alias.to_string(),
        name: task.name.clone(),
        parent: task
            .parent
            .as_ref()
            .map(Alias::to_string)
            .unwrap_or_default(),
        restarts: task.restarts,
        labels: task.labels.clone().into_iter().collect(),
    }
}

fn restart_to_wire(restart: RestartType) -> wire::RestartType {
    match restart {
        RestartType::Permanent => wire::RestartType::Permanent,
        RestartType::Transient => wire::RestartType::Transient,
        RestartType::Temporary => wire::RestartType::Temporary,
    }
}

fn millis_or(value: u32, default: Duration) -> Duration {
    match value {
        0 => default,
        ms => Duration::from_millis(ms.into()),
    }
}

fn policy(raw: wire::SupervisionPolicy) -> Result<Policy, ApiError> {
    let defaults = Policy::default();
    let restart = match wire::RestartType::try_from(raw.restart) {
        Ok(wire::RestartType::Unspecified | wire::RestartType::Permanent) => RestartType::Permanent,
        Ok(wire::RestartType::Transient) => RestartType::Transient,
        Ok(wire::RestartType::Temporary) => RestartType::Temporary,
        Err(_) => {
            return Err(invalid(format!(
                "policy.restart: unknown value {}",
                raw.restart
            )));
        }
    };
    let strategy = match wire::RestartStrategy::try_from(raw.strategy) {
        Ok(wire::RestartStrategy::Unspecified | wire::RestartStrategy::OneForOne) => {
            Strategy::OneForOne
        }
        Ok(wire::RestartStrategy::OneForAll) => Strategy::OneForAll,
        Ok(wire::RestartStrategy::RestForOne) => Strategy::RestForOne,
        Err(_) => {
            return Err(invalid(format!(
                "policy.strategy: unknown value {}",
                raw.strategy
            )));
        }
    };
    let mut solvers = Vec::with_capacity(raw.solvers.len());
    for (index, solver) in raw.solvers.into_iter().enumerate() {
        if solver.error_type.is_empty() {
            return Err(invalid(format!(
                "policy.solvers[{index}].error_type is empty"
            )));
        }
        if solver.actions.is_empty() {
            return Err(invalid(format!("policy.solvers[{index}] has no actions")));
        }
        let actions = solver
            .actions
            .iter()
            .map(|&raw| {
                action(raw).ok_or_else(|| {
                    invalid(format!("policy.solvers[{index}]: unknown action {raw}"))
                })
            })
            .collect::<Result<_, _>>()?;
        solvers.push(Solver {
            error_type: solver.error_type,
            actions,
        });
    }
    let backoff_initial = millis_or(raw.backoff_initial_ms, defaults.backoff_initial);
    Ok(Policy {
        restart,
        strategy,
        max_restarts: if raw.max_restarts == 0 {
            defaults.max_restarts
        } else {
            raw.max_restarts
        },
        period: millis_or(raw.period_ms, defaults.period),
        backoff_initial,
        backoff_max: millis_or(raw.backoff_max_ms, defaults.backoff_max).max(backoff_initial),
        stop_grace: millis_or(raw.stop_grace_ms, defaults.stop_grace),
        start_timeout: millis_or(raw.start_timeout_ms, defaults.start_timeout),
        health_interval: Duration::from_millis(raw.health_interval_ms.into()),
        health_failures: if raw.health_failures == 0 {
            defaults.health_failures
        } else {
            raw.health_failures
        },
        solvers,
    })
}

fn action(raw: i32) -> Option<Action> {
    Some(match wire::SolverAction::try_from(raw).ok()? {
        wire::SolverAction::Unspecified => return None,
        wire::SolverAction::Continue => Action::Continue,
        wire::SolverAction::Restart => Action::Restart,
        wire::SolverAction::Stop => Action::Stop,
        wire::SolverAction::DestroySoft => Action::DestroySoft,
        wire::SolverAction::DestroyHard => Action::DestroyHard,
        wire::SolverAction::Escalate => Action::Escalate,
        wire::SolverAction::Log => Action::Log,
    })
}

fn action_to_wire(action: Action) -> wire::SolverAction {
    match action {
        Action::Continue => wire::SolverAction::Continue,
        Action::Restart => wire::SolverAction::Restart,
        Action::Stop => wire::SolverAction::Stop,
        Action::DestroySoft => wire::SolverAction::DestroySoft,
        Action::DestroyHard => wire::SolverAction::DestroyHard,
        Action::Escalate => wire::SolverAction::Escalate,
        Action::Log => wire::SolverAction::Log,
    }
}

/// A definition as Create would take it.
pub(crate) fn definition_to_wire(definition: &Definition) -> wire::ContainerDefinition {
    let Kind::Process(spec) = &definition.kind;
    let policy = &definition.policy;
    wire::ContainerDefinition {
        alias: definition.alias.to_string(),
        parent: definition
            .parent
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        name: definition.name.clone(),
        kind: Some(wire::container_definition::Kind::Process(
            wire::ProcessSpec {
                command: spec.command.clone(),
                args: spec.args.clone(),
                env: spec.env.clone().into_iter().collect(),
                working_dir: spec
                    .working_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                inherit_env: spec.inherit_env,
            },
        )),
        policy: Some(wire::SupervisionPolicy {
            restart: restart_to_wire(policy.restart) as i32,
            strategy: match policy.strategy {
                Strategy::OneForOne => wire::RestartStrategy::OneForOne,
                Strategy::OneForAll => wire::RestartStrategy::OneForAll,
                Strategy::RestForOne => wire::RestartStrategy::RestForOne,
            } as i32,
            max_restarts: policy.max_restarts,
            period_ms: millis(policy.period),
            backoff_initial_ms: millis(policy.backoff_initial),
            backoff_max_ms: millis(policy.backoff_max),
            stop_grace_ms: millis(policy.stop_grace),
            start_timeout_ms: millis(policy.start_timeout),
            health_interval_ms: millis(policy.health_interval),
            health_failures: policy.health_failures,
            solvers: policy
                .solvers
                .iter()
                .map(|s| wire::Solver {
                    error_type: s.error_type.clone(),
                    actions: s
                        .actions
                        .iter()
                        .map(|&a| action_to_wire(a) as i32)
                        .collect(),
                })
                .collect(),
        }),
        labels: definition.labels.clone().into_iter().collect(),
        groups: Vec::new(),
        overflow: 0,
    }
}

/// The wire form of a lifecycle state.
pub(crate) fn state_to_wire(state: State) -> wire::ContainerState {
    match state {
        State::Created => wire::ContainerState::Created,
        State::Started => wire::ContainerState::Started,
        State::Stopped => wire::ContainerState::Stopped,
        State::Failed => wire::ContainerState::Failed,
        State::Destroyed => wire::ContainerState::Destroyed,
    }
}

/// What List, Tree and Watch show of a supervised container.
pub(crate) fn supervised_info(info: &SupervisedSnapshot) -> wire::SupervisedInfo {
    wire::SupervisedInfo {
        state: state_to_wire(info.state) as i32,
        kind: info.definition.kind.name().to_owned(),
        restarts: info.restarts,
        started_at_unix_ms: info.started_at.map_or(0, reef_core::unix_ms),
        activity: info.activity.clone(),
        last_failure: info.last_failure.clone(),
        last_exit: info.last_exit.clone(),
        definition: Some(definition_to_wire(&info.definition)),
    }
}

/// Create's flag.
pub(crate) fn create_flag(raw: i32) -> Result<CreateFlag, ApiError> {
    match wire::CreateFlag::try_from(raw) {
        Ok(wire::CreateFlag::Default) => Ok(CreateFlag::Default),
        Ok(wire::CreateFlag::ForceSoft) => Ok(CreateFlag::ForceSoft),
        Ok(wire::CreateFlag::ForceHard) => Ok(CreateFlag::ForceHard),
        Ok(wire::CreateFlag::Force) => Ok(CreateFlag::Force),
        Err(_) => Err(invalid(format!("unknown create flag {raw}"))),
    }
}

/// Destroy's and Stop's flag.
pub(crate) fn stop_mode(raw: i32) -> Result<StopMode, ApiError> {
    match wire::DestroyFlag::try_from(raw) {
        Ok(wire::DestroyFlag::Force) => Ok(StopMode::Force),
        Ok(wire::DestroyFlag::Keep) => Ok(StopMode::Keep),
        Ok(wire::DestroyFlag::ForceSoft) => Ok(StopMode::Soft),
        Ok(wire::DestroyFlag::ForceHard) => Ok(StopMode::Hard),
        Err(_) => Err(invalid(format!("unknown destroy flag {raw}"))),
    }
}
