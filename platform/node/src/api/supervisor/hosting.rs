//! Task containers: in-process containers that a host process (Rust SDK) runs. The node
//! asks the host to start or stop one through the host's endpoint
//! (`Container.StartTask` / `StopTask`); the host restarts a panicking task itself and
//! announces its tasks with `Supervisor.Host`, so their aliases route to its stream.
//!
//! A host may announce only tasks it is entitled to: its own subtree (or what the
//! policies let it create), and the tasks the node asked it to start for a caller whose
//! Create passed the checks ([`TaskGrants`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use reef_core::Alias;
use reef_proto::{self as wire, container_client::ContainerClient};
use reef_tls::Pki;
use tonic::{Code, Status};

use crate::{ContainerSnapshot, Registry, api::error::ApiError, probe::connect_endpoint};

/// How long the node waits for a host to start or stop a task.
const HOST_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A task container to create.
#[derive(Debug, Clone)]
pub(crate) struct TaskDefinition {
    pub alias: Alias,
    pub parent: Option<Alias>,
    pub name: String,
    pub host: Alias,
    pub args: Vec<String>,
    pub restart: wire::RestartType,
    pub max_restarts: u32,
    pub period_ms: u32,
    pub labels: BTreeMap<String, String>,
}

/// The tasks the node is asking hosts to start right now, each for a Create that passed
/// its checks: while the host's StartTask call runs, its announcement of that task is
/// the node's own doing, whatever the policies let the host create by itself.
#[derive(Debug, Default)]
pub(crate) struct TaskGrants {
    /// (task alias, the host asked to start it) → how many StartTask calls for that
    /// pair are running: two Creates of the same task may overlap, and the first to end
    /// must not take the other's grant back.
    started: Mutex<HashMap<(Alias, Alias), usize>>,
}

impl TaskGrants {
    /// Whether the node is asking `host` to start `task`.
    pub(crate) fn allows(&self, task: &Alias, host: &Alias) -> bool {
        self.started
            .lock()
            .contains_key(&(task.clone(), host.clone()))
    }

    /// Grants `host` the announcement of `task` until the returned guard drops.
    fn grant(self: &Arc<Self>, task: Alias, host: Alias) -> GrantGuard {
        let pair = (task, host);
        *self.started.lock().entry(pair.clone()).or_default() += 1;
        GrantGuard {
            grants: self.clone(),
            pair,
        }
    }
}

/// Takes a [`TaskGrants`] grant back when the StartTask call ends, however it ends.
struct GrantGuard {
    grants: Arc<TaskGrants>,
    pair: (Alias, Alias),
}

impl Drop for GrantGuard {
    fn drop(&mut self) {
        let mut started = self.grants.started.lock();
        if let Some(running) = started.get_mut(&self.pair) {
            *running -= 1;
            if *running == 0 {
                started.remove(&self.pair);
            }
        }
    }
}

/// Starts `definition` in its host. Idempotent: a task that runs there already under
/// the same behaviour is returned with `false`.
pub(crate) async fn start_task(
    registry: &Registry,
    grants: &Arc<TaskGrants>,
    pki: &Pki,
    definition: TaskDefinition,
) -> Result<(ContainerSnapshot, bool), ApiError> {
    if let Some(existing) = registry.get(definition.alias.as_str()) {
        return match &existing.task {
            Some(task) if task.host == definition.host && existing.spec.name == definition.name => {
                Ok((existing, false))
            }
            _ => Err(ApiError::Exists(format!(
                "{} exists with another definition; destroy it first",
                definition.alias
            ))),
        };
    }
    let mut host = host_client(registry, pki, &definition.host).await?;
    let request = wire::StartTaskRequest {
        alias: definition.alias.to_string(),
        name: definition.name,
        parent: definition.parent.map(String::from).unwrap_or_default(),
        args: definition.args,
        restart: definition.restart as i32,
        max_restarts: definition.max_restarts,
        period_ms: definition.period_ms,
        labels: definition.labels.into_iter().collect(),
    };
    let _granted = grants.grant(definition.alias.clone(), definition.host.clone());
    let answer = host
        .start_task(request)
        .await
        .map_err(|status| host_refused(&definition.host, status))?
        .into_inner();
    // The host answers only after the node accepted its announcement.
    let snapshot = registry.get(definition.alias.as_str()).ok_or_else(|| {
        ApiError::Internal(format!(
            "{} said it started {} but the task is not registered",
            definition.host, definition.alias
        ))
    })?;
    Ok((snapshot, answer.created))
}

/// Stops task `alias` in its host (its `on_stop` runs).
pub(crate) async fn stop_task(
    registry: &Registry,
    pki: &Pki,
    alias: &Alias,
    host: &Alias,
) -> Result<(), ApiError> {
    let mut client = host_client(registry, pki, host).await?;
    client
        .stop_task(wire::StopTaskRequest {
            alias: alias.to_string(),
        })
        .await
        .map_err(|status| host_refused(host, status))?;
    Ok(())
}

/// A client for `host`'s endpoint, as the node: only the node may start and stop a
/// host's tasks.
async fn host_client(
    registry: &Registry,
    pki: &Pki,
    host: &Alias,
) -> Result<ContainerClient<tonic::transport::Channel>, ApiError> {
    let snapshot = registry
        .get(host.as_str())
        .ok_or_else(|| ApiError::Unknown(format!("task host {host} is not registered")))?;
    if snapshot.task.is_some() {
        return Err(ApiError::Unfit(format!(
            "{host} is a task; only a process can host tasks"
        )));
    }
    if !snapshot.attached {
        return Err(ApiError::Unreachable(format!(
            "task host {host} is not attached (starting, restarting or stopped)"
        )));
    }
    let endpoint = snapshot.spec.endpoint.ok_or_else(|| {
        ApiError::Unfit(format!(
            "{host} registered no endpoint, so it cannot host tasks"
        ))
    })?;
    let identity = Some(pki.server().clone());
    let peer = reef_tls::container_identity(host.as_str());
    let channel =
        connect_endpoint(&endpoint, pki.ca_pem(), &peer, identity, HOST_CALL_TIMEOUT).await?;
    Ok(ContainerClient::new(channel))
}

/// A host's refusal, said from the node's side.
fn host_refused(host: &Alias, status: Status) -> ApiError {
    match status.code() {
        Code::Unimplemented => ApiError::Unfit(format!(
            "{host} cannot host tasks: its SDK does not implement Container.StartTask"
        )),
        code => ApiError::Relayed(Status::new(
            code,
            format!("task host {host}: {}", status.message()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(raw: &str) -> Alias {
        Alias::parse(raw).unwrap()
    }

    #[test]
    fn overlapping_grants_for_one_task_end_separately() {
        let grants = Arc::new(TaskGrants::default());
        let (task, a, b) = (alias("t"), alias("host-a"), alias("host-b"));
        let first = grants.grant(task.clone(), a.clone());
        let second = grants.grant(task.clone(), b.clone());
        let again = grants.grant(task.clone(), a.clone());
        assert!(grants.allows(&task, &a) && grants.allows(&task, &b));
        drop(first);
        assert!(
            grants.allows(&task, &a),
            "another call for host-a still runs"
        );
        drop(second);
        assert!(!grants.allows(&task, &b) && grants.allows(&task, &a));
        drop(again);
        assert!(!grants.allows(&task, &a));
    }
}
