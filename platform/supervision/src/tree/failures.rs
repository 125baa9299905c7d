//! Failures and how they are put right: solver chains, restart types, intensity and
//! backoff, the three strategies, escalation.

use super::*;

impl Tree {
    /// Applies the container's solver chain to `failure`.
    pub(super) fn failure(&mut self, alias: &Alias, failure: Failure) {
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        if entry.want != Want::Running || self.shutdown.is_some() {
            return;
        }
        entry.state = State::Failed;
        entry.last_failure = failure.to_string();
        let chain = entry.policy().chain(&failure.error_type);
        self.dirty = true;
        tracing::warn!(%alias, error_type = %failure.error_type, message = %failure.message, ?chain, "container failed");
        self.lifecycle(alias, EventKind::Fail, Phase::On, &failure.to_string());
        for action in chain {
            let applied = self.apply(alias, action, &failure);
            let outcome = if applied { "applied" } else { "failed" };
            self.lifecycle(
                alias,
                EventKind::Solve,
                Phase::On,
                &format!("{} {outcome}", action_name(action)),
            );
            if !applied {
                break;
            }
        }
    }

    pub(super) fn apply(&mut self, alias: &Alias, action: Action, failure: &Failure) -> bool {
        match action {
            Action::Log => {
                tracing::error!(%alias, error_type = %failure.error_type, message = %failure.message, "solver: log");
                true
            }
            Action::Continue => {
                if let Some(entry) = self.entries.get_mut(alias)
                    && entry.process.as_ref().is_some_and(|p| p.ready)
                {
                    entry.state = State::Started;
                }
                true
            }
            Action::Restart => self.restart_after_failure(alias, failure),
            Action::Stop => self.set_want(alias, Want::Stopped, StopMode::Force),
            Action::DestroySoft => self.set_want(alias, Want::Destroyed, StopMode::Force),
            Action::DestroyHard => self.set_want(alias, Want::Destroyed, StopMode::Hard),
            Action::Escalate => {
                let parent = self
                    .entries
                    .get(alias)
                    .and_then(|e| e.definition.parent.clone());
                self.escalate(
                    parent,
                    alias,
                    &format!("{}: {}", failure.error_type, failure.message),
                );
                true
            }
        }
    }

    pub(super) fn set_want(&mut self, alias: &Alias, want: Want, mode: StopMode) -> bool {
        match self.entries.get_mut(alias) {
            Some(entry) => {
                entry.want = want;
                entry.stop_mode = mode;
                entry.cycle = None;
                self.dirty = true;
                true
            }
            None => false,
        }
    }

    /// The `restart` action: restart type, the parent's intensity and strategy, backoff.
    pub(super) fn restart_after_failure(&mut self, alias: &Alias, failure: &Failure) -> bool {
        let Some(entry) = self.entries.get_mut(alias) else {
            return false;
        };
        match entry.policy().restart {
            RestartType::Temporary => {
                entry.want = Want::Destroyed;
                entry.stop_mode = StopMode::Hard;
                entry.activity = "temporary: not restarted".to_owned();
                return false;
            }
            RestartType::Transient if failure.normal => {
                entry.want = Want::Stopped;
                entry.state = State::Stopped;
                entry.activity = "transient: ended normally".to_owned();
                return true;
            }
            _ => {}
        }
        let parent = entry.definition.parent.clone();
        let (strategy, max, period) = {
            let policy = match &parent {
                Some(parent) => self.entries.get(parent).map(|p| p.policy()),
                None => None,
            }
            .unwrap_or(&self.root_policy);
            (policy.strategy, policy.max_restarts, policy.period)
        };
        let now = Instant::now();
        let allowed = match &parent {
            Some(parent) => self
                .entries
                .get_mut(parent)
                .is_some_and(|p| p.children_intensity.allow(now, max, period)),
            None => self.root_intensity.allow(now, max, period),
        };
        if !allowed {
            let supervisor = parent
                .as_ref()
                .map_or("the node".to_owned(), |p| p.to_string());
            let reason = format!(
                "restart intensity of {supervisor} exceeded ({max} restarts in {} ms)",
                period.as_millis()
            );
            self.lifecycle(alias, EventKind::Solve, Phase::On, &reason);
            self.escalate(parent, alias, &reason);
            return false;
        }
        let entry = self.entries.get_mut(alias).expect("checked above");
        let stable = entry
            .last_ready_at
            .is_some_and(|at| at.elapsed() > entry.definition.policy.period);
        entry.consecutive = if stable { 1 } else { entry.consecutive + 1 };
        entry.restarts += 1;
        let delay = entry.policy().backoff(entry.consecutive, (self.jitter)());
        entry.not_before = Some(now + delay);
        entry.activity = format!("restarting in {} ms", delay.as_millis());
        let siblings = self.children(parent.as_ref());
        let order = self.entries[alias].order;
        let group: Vec<Alias> = match strategy {
            Strategy::OneForOne => vec![alias.clone()],
            Strategy::OneForAll => siblings,
            Strategy::RestForOne => siblings
                .into_iter()
                .filter(|s| self.entries[s].order >= order)
                .collect(),
        };
        self.begin_cycle(&group, Some(alias));
        self.lifecycle(
            alias,
            EventKind::Restart,
            Phase::On,
            &format!(
                "{} (restart {})",
                failure.error_type, self.entries[alias].restarts
            ),
        );
        true
    }

    /// Stops `group` and their subtrees, to start them again in order. The `failed`
    /// member is killed at once; the others get their grace period.
    pub(super) fn begin_cycle(&mut self, group: &[Alias], failed: Option<&Alias>) {
        self.next_cycle += 1;
        let cycle = self.next_cycle;
        for member in group {
            for alias in self.subtree_deepest_first(member) {
                let hard = Some(&alias) == failed;
                let Some(entry) = self.entries.get_mut(&alias) else {
                    continue;
                };
                if entry.want != Want::Running {
                    continue;
                }
                entry.cycle = Some(cycle);
                entry.children_intensity.reset();
                entry.stop_mode = if hard {
                    StopMode::Hard
                } else {
                    StopMode::Force
                };
                if let Some(process) = &mut entry.process {
                    process.retiring = true;
                }
                if Some(&alias) != failed && entry.process.is_some() {
                    entry.activity = "restarting with a sibling".to_owned();
                }
            }
        }
        self.dirty = true;
    }

    /// Hands a failure up: to the parent as its own failure, or, at the top, the node
    /// stops the subtree and marks it FAILED.
    pub(super) fn escalate(&mut self, parent: Option<Alias>, from: &Alias, reason: &str) {
        match parent {
            Some(parent) => self.failure(
                &parent,
                Failure {
                    error_type: error_type::ESCALATION.to_owned(),
                    message: format!("from {from}: {reason}"),
                    normal: false,
                },
            ),
            None => {
                tracing::error!(alias = %from, reason, "escalated to the node: stopping the subtree and marking it FAILED");
                for member in self.subtree_deepest_first(from) {
                    if let Some(entry) = self.entries.get_mut(&member) {
                        entry.want = Want::Stopped;
                        entry.stop_mode = StopMode::Force;
                        entry.cycle = None;
                        entry.failed_by_node = true;
                        entry.state = State::Failed;
                        entry.activity = "failed: escalated to the node".to_owned();
                        entry.answer_ready(&mut self.effects, || {
                            Err(SupervisionError::DidNotStart(format!(
                                "{member} failed and was stopped by escalation: {reason}"
                            )))
                        });
                    }
                }
                self.lifecycle(
                    from,
                    EventKind::Solve,
                    Phase::After,
                    &format!("escalated to the node: subtree stopped and FAILED ({reason})"),
                );
            }
        }
    }

    /// A process that did not come up. A Create (or Start) waiting for it fails; a
    /// Create leaves nothing behind. Otherwise it is a failure of type "start".
    pub(crate) fn start_failed(&mut self, alias: &Alias, message: String) {
        let Some(entry) = self.entries.get_mut(alias) else {
            return;
        };
        let waited = entry.waiters.iter().any(|w| matches!(w, Waiter::Ready(_)));
        if waited && !entry.ever_ready {
            let text = format!("{alias} did not start: {message}");
            entry.answer_ready(&mut self.effects, || {
                Err(SupervisionError::DidNotStart(text.clone()))
            });
        }
        if !entry.ever_ready {
            // A container that never answered is not kept: Create changes nothing.
            entry.want = Want::Destroyed;
            entry.stop_mode = StopMode::Hard;
            entry.state = State::Failed;
            entry.last_failure = format!("start: {message}");
            self.lifecycle(
                alias,
                EventKind::Fail,
                Phase::On,
                &format!("start: {message}"),
            );
            return;
        }
        self.failure(
            alias,
            Failure {
                error_type: error_type::START.to_owned(),
                message,
                normal: false,
            },
        );
        // A Start waiting for it hears the outcome when it answers or fails for good.
    }
}

pub(super) fn action_name(action: Action) -> &'static str {
    match action {
        Action::Continue => "continue",
        Action::Restart => "restart",
        Action::Stop => "stop",
        Action::DestroySoft => "destroy_soft",
        Action::DestroyHard => "destroy_hard",
        Action::Escalate => "escalate",
        Action::Log => "log",
    }
}

/// A number in [-1, 1] for backoff jitter.
pub(super) fn jitter() -> f64 {
    use ring::rand::{SecureRandom as _, SystemRandom};
    let mut bytes = [0u8; 2];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX) * 2.0 - 1.0
}
