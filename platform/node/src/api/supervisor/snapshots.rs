//! Registry snapshots and events as the wire shows them.

use super::*;

pub(super) fn container_spec(request: wire::RegisterRequest) -> Result<ContainerSpec, ApiError> {
    let invalid = |e: reef_core::InvalidAlias| ApiError::BadRequest(e.to_string());
    let alias = Alias::parse(&request.alias).map_err(invalid)?;
    let parent = match request.parent.as_str() {
        "" => None,
        raw => Some(Alias::parse(raw).map_err(invalid)?),
    };
    if parent.as_ref() == Some(&alias) {
        return Err(ApiError::BadRequest(format!(
            "{alias} cannot be its own parent"
        )));
    }
    let endpoint = match request.endpoint.as_str() {
        "" => None,
        raw => {
            endpoint_host(raw)?;
            Some(raw.to_owned())
        }
    };
    Ok(ContainerSpec {
        alias,
        name: request.name,
        parent,
        endpoint,
        pid: (request.pid != 0).then_some(request.pid),
        labels: request.labels.into_iter().collect(),
    })
}

pub(super) fn container_info(snapshot: ContainerSnapshot) -> wire::ContainerInfo {
    let supervised = match (&snapshot.supervised, &snapshot.task) {
        (Some(supervised), _) => Some(convert::supervised_info(supervised)),
        (None, Some(task)) => Some(convert::task_info(&snapshot.spec, task)),
        (None, None) => None,
    };
    let spec = snapshot.spec;
    wire::ContainerInfo {
        alias: spec.alias.to_string(),
        name: spec.name,
        parent: spec.parent.map(|p| p.to_string()).unwrap_or_default(),
        endpoint: spec.endpoint.unwrap_or_default(),
        pid: spec.pid.unwrap_or(0),
        labels: spec.labels.into_iter().collect(),
        attached: snapshot.attached,
        registered_at_unix_ms: unix_ms(snapshot.registered_at),
        envelopes_in: snapshot.envelopes_in,
        envelopes_out: snapshot.envelopes_out,
        supervised,
        queue_depth: snapshot.queued,
        answered: Some((&snapshot.answered).into()),
    }
}

pub(super) fn container_event(event: RegistryEvent) -> wire::ContainerEvent {
    let kind = match event.kind {
        EventKind::Registered => ContainerEventKind::Registered,
        EventKind::Attached => ContainerEventKind::Attached,
        EventKind::Detached => ContainerEventKind::Detached,
        EventKind::Deregistered => ContainerEventKind::Deregistered,
        EventKind::Create => ContainerEventKind::Create,
        EventKind::Start => ContainerEventKind::Start,
        EventKind::Stop => ContainerEventKind::Stop,
        EventKind::Fail => ContainerEventKind::Fail,
        EventKind::Destroy => ContainerEventKind::Destroy,
        EventKind::Restart => ContainerEventKind::Restart,
        EventKind::Solve => ContainerEventKind::Solve,
    };
    let phase = match event.phase {
        None => LifecyclePhase::Unspecified,
        Some(Phase::Before) => LifecyclePhase::Before,
        Some(Phase::On) => LifecyclePhase::On,
        Some(Phase::After) => LifecyclePhase::After,
    };
    wire::ContainerEvent {
        kind: kind as i32,
        container: Some(container_info(event.container)),
        reason: event.reason,
        at_unix_ms: unix_ms(event.at),
        phase: phase as i32,
    }
}

/// Nests containers under their parents; a container whose parent is not registered is
/// a root, so nothing is hidden.
pub(super) fn build_tree(containers: Vec<ContainerSnapshot>) -> Vec<wire::ContainerNode> {
    let known: std::collections::HashSet<String> = containers
        .iter()
        .map(|c| c.spec.alias.to_string())
        .collect();
    let mut children: HashMap<String, Vec<ContainerSnapshot>> = HashMap::new();
    let mut roots = Vec::new();
    for container in containers {
        match &container.spec.parent {
            Some(parent) if known.contains(parent.as_str()) => children
                .entry(parent.to_string())
                .or_default()
                .push(container),
            _ => roots.push(container),
        }
    }
    fn nest(
        container: ContainerSnapshot,
        children: &mut HashMap<String, Vec<ContainerSnapshot>>,
    ) -> wire::ContainerNode {
        let below = children
            .remove(container.spec.alias.as_str())
            .unwrap_or_default();
        wire::ContainerNode {
            container: Some(container_info(container)),
            children: below.into_iter().map(|c| nest(c, children)).collect(),
        }
    }
    roots.into_iter().map(|c| nest(c, &mut children)).collect()
}

/// What an environment value reads as for a caller who may not see it.
pub(super) const REDACTED: &str = "(redacted)";

/// `info` as `caller` may see it: a process's environment is where secrets live, so its
/// values are shown to administrators alone (the names stay).
pub(super) fn seen_by(caller: &Principal, mut info: wire::ContainerInfo) -> wire::ContainerInfo {
    if matches!(caller, Principal::Admin(_)) {
        return info;
    }
    let process = info
        .supervised
        .as_mut()
        .and_then(|supervised| supervised.definition.as_mut())
        .and_then(|definition| match definition.kind.as_mut() {
            Some(wire::container_definition::Kind::Process(process)) => Some(process),
            _ => None,
        });
    if let Some(process) = process {
        for value in process.env.values_mut() {
            REDACTED.clone_into(value);
        }
    }
    info
}

/// A tree as `caller` may see it ([`seen_by`] for every container in it).
pub(super) fn tree_seen_by(
    caller: &Principal,
    nodes: Vec<wire::ContainerNode>,
) -> Vec<wire::ContainerNode> {
    nodes
        .into_iter()
        .map(|node| wire::ContainerNode {
            container: node.container.map(|info| seen_by(caller, info)),
            children: tree_seen_by(caller, node.children),
        })
        .collect()
}
