//! Task containers: aliases a host process announces and serves inside itself.

use super::*;

impl Registry {
    /// Whether `task` is a task container run by `host`.
    pub fn is_hosted_by(&self, task: &str, host: &Alias) -> bool {
        self.read()
            .get(task)
            .and_then(|entry| entry.task.as_ref())
            .is_some_and(|t| &t.host == host)
    }

    /// Applies what task host `host` (holding `lease`) announces: `upsert` adds or
    /// updates its tasks, `remove` forgets them. One result per upsert: whether it was
    /// new, or why it was refused.
    pub fn host_tasks(
        &self,
        host: &Alias,
        lease: &str,
        upsert: Vec<HostedTask>,
        mut remove: Vec<Alias>,
        replace: bool,
    ) -> Result<Vec<Result<bool, RegistryError>>, RegistryError> {
        let mut events = Vec::new();
        let results = {
            let mut entries = self.write();
            match entries.get(host) {
                None => return Err(RegistryError::NotRegistered(host.to_string())),
                Some(entry) if entry.lease.as_deref() != Some(lease) => {
                    return Err(RegistryError::LeaseMismatch(host.to_string()));
                }
                Some(entry) if replace => {
                    let kept: HashSet<&Alias> = upsert.iter().map(|task| &task.alias).collect();
                    remove.extend(entry.tasks.iter().filter(|t| !kept.contains(t)).cloned());
                }
                Some(_) => {}
            }
            for alias in remove {
                if entries
                    .get(&alias)
                    .and_then(|e| e.task.as_ref())
                    .is_some_and(|t| &t.host == host)
                    && let Some(entry) = entries.remove(&alias)
                {
                    events.push((EventKind::Deregistered, entry.snapshot()));
                }
                if let Some(entry) = entries.get_mut(host) {
                    entry.tasks.remove(&alias);
                }
            }
            let results: Vec<_> = upsert
                .into_iter()
                .map(|task| {
                    let outcome = self.upsert_task(&mut entries, host, task);
                    if let Ok((true, snapshot)) = &outcome {
                        events.push((EventKind::Registered, snapshot.clone()));
                    }
                    outcome.map(|(created, _)| created)
                })
                .collect();
            results
        };
        for (kind, snapshot) in events {
            let reason = match kind {
                EventKind::Registered => "started by its host",
                _ => "stopped by its host",
            };
            self.emit(kind, snapshot, reason);
        }
        Ok(results)
    }

    pub(super) fn upsert_task(
        &self,
        entries: &mut HashMap<Alias, Registration>,
        host: &Alias,
        task: HostedTask,
    ) -> Result<(bool, ContainerSnapshot), RegistryError> {
        let held_elsewhere = entries
            .get(host)
            .and_then(|h| h.link.as_ref())
            .is_some_and(|link| link.held_elsewhere.contains(&task.alias));
        if held_elsewhere {
            return Err(RegistryError::HeldElsewhere(task.alias.to_string()));
        }
        let host_pid = entries.get(host).and_then(|h| h.spec.pid);
        let parent = task.parent.clone().unwrap_or_else(|| host.clone());
        let parent_allowed = !ancestors_include(entries, &parent, &task.alias);
        if let Some(entry) = entries.get_mut(&task.alias) {
            return match &mut entry.task {
                Some(existing) if &existing.host == host => {
                    // Restarted by its host, or announced again by a restarted host.
                    if existing.restarts != task.restarts || entry.spec.pid != host_pid {
                        existing.started_at = SystemTime::now();
                    }
                    existing.restarts = task.restarts;
                    entry.spec.pid = host_pid;
                    // A route learned from traffic gets its details from the announcement.
                    entry.spec.name = task.name;
                    entry.spec.labels = task.labels;
                    if parent_allowed {
                        entry.spec.parent = Some(parent);
                    }
                    Ok((false, entry.snapshot()))
                }
                _ => Err(RegistryError::AlreadyRegistered(task.alias.to_string())),
            };
        }
        if !parent_allowed {
            return Err(RegistryError::ParentCycle(task.alias.to_string()));
        }
        if entries.len() >= self.limits.max_containers {
            return Err(RegistryError::Full(entries.len()));
        }
        let spec = ContainerSpec {
            alias: task.alias.clone(),
            name: task.name,
            parent: Some(parent),
            endpoint: None,
            pid: host_pid,
            labels: task.labels,
        };
        let mut registration = Registration::new(spec, None);
        registration.task = Some(TaskSnapshot {
            host: host.clone(),
            restarts: task.restarts,
            started_at: SystemTime::now(),
        });
        let snapshot = registration.snapshot();
        entries.insert(task.alias.clone(), registration);
        if let Some(entry) = entries.get_mut(host) {
            entry.tasks.insert(task.alias);
        }
        Ok((true, snapshot))
    }
}
