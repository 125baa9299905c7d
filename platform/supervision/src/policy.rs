//! Supervision policy: restart types, strategies, intensity, backoff and Kraken-style
//! solver chains. Pure decisions, no I/O, so they are tested on their own.

use std::{collections::VecDeque, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Erlang/OTP's restart types: when a failed container is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartType {
    /// Always.
    #[default]
    Permanent,
    /// Only after an abnormal end.
    Transient,
    /// Never: a failed temporary container is destroyed.
    Temporary,
}

/// Which siblings restart with a restarted container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the container itself.
    #[default]
    OneForOne,
    /// Every child of the same parent.
    OneForAll,
    /// The container and the siblings created after it.
    RestForOne,
}

/// One step of a solver chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Leave the container as it is.
    Continue,
    /// Restart it, subject to restart type, intensity and backoff.
    Restart,
    /// Stop it and leave it stopped.
    Stop,
    /// Destroy it and its subtree with a grace period.
    DestroySoft,
    /// Destroy it and its subtree at once.
    DestroyHard,
    /// Make the failure the parent's own.
    Escalate,
    /// Write the failure to the node's log.
    Log,
}

/// The actions for failures of one error type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Solver {
    /// `"exit"`, `"db"` (matches `"db.timeout"` too), `"*"` for any…
    pub error_type: String,
    /// Applied in order until one fails.
    pub actions: Vec<Action>,
}

/// Error types the supervisor itself reports.
pub mod error_type {
    /// The process exited with a non-zero code (or zero, for permanent containers).
    pub const EXIT: &str = "exit";
    /// The process was killed by a signal it did not ask for.
    pub const SIGNAL: &str = "signal";
    /// Missed keepalive: the attach stream fell silent or closed while the process lives.
    pub const UNRESPONSIVE: &str = "unresponsive";
    /// Consecutive failed `Container.Ping` health checks.
    pub const HEALTH: &str = "health";
    /// The container did not come up: exited or timed out before answering.
    pub const START: &str = "start";
    /// A child's failure handed up (intensity exceeded or an `escalate` action).
    pub const ESCALATION: &str = "escalation";
    /// A task container of this host failed past its restart intensity (the SDK's
    /// `TASK_INTENSITY_ERROR`).
    pub const TASK_INTENSITY: &str = "reef.task.intensity";
    /// Matches every error type.
    pub const ANY: &str = "*";
}

/// How one container's failures are put right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// When this container is restarted.
    pub restart: RestartType,
    /// How this container's children restart.
    pub strategy: Strategy,
    /// Restarts among this container's children allowed within `period`.
    pub max_restarts: u32,
    /// The window of `max_restarts`.
    #[serde(with = "millis")]
    pub period: Duration,
    /// Delay before the second consecutive restart; doubles up to `backoff_max`.
    #[serde(with = "millis")]
    pub backoff_initial: Duration,
    /// Largest delay between restarts.
    #[serde(with = "millis")]
    pub backoff_max: Duration,
    /// Time to stop after SIGTERM before SIGKILL.
    #[serde(with = "millis")]
    pub stop_grace: Duration,
    /// Time from spawn to answering a ping.
    #[serde(with = "millis")]
    pub start_timeout: Duration,
    /// How often the node pings the container's endpoint; zero = never.
    #[serde(with = "millis")]
    pub health_interval: Duration,
    /// Consecutive failed pings that make a failure.
    pub health_failures: u32,
    /// Solver chains replacing the defaults for their error types.
    pub solvers: Vec<Solver>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            restart: RestartType::Permanent,
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            period: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
            stop_grace: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            health_interval: Duration::ZERO,
            health_failures: 3,
            solvers: Vec::new(),
        }
    }
}

/// Kraken's defaults: an unresponsive, crashed or unhealthy child is restarted, and so
/// is a parent whose child escalated (OTP: a supervisor that gives up is restarted by
/// its own supervisor) or whose task gave up; any other error is logged, then escalated.
fn default_chain(error_type: &str) -> Option<&'static [Action]> {
    use error_type::*;
    match error_type {
        EXIT | SIGNAL | UNRESPONSIVE | HEALTH | START | ESCALATION | TASK_INTENSITY => {
            Some(&[Action::Restart])
        }
        ANY => Some(&[Action::Log, Action::Escalate]),
        _ => None,
    }
}

impl Policy {
    /// The solver chain for `error_type`: the most specific match first ("db.timeout",
    /// then "db", then "*"); at each level the container's own solver before the default.
    pub fn chain(&self, error_type: &str) -> Vec<Action> {
        let mut key = error_type;
        loop {
            if let Some(solver) = self.solvers.iter().find(|s| s.error_type == key) {
                return solver.actions.clone();
            }
            if let Some(actions) = default_chain(key) {
                return actions.to_vec();
            }
            match key.rsplit_once('.') {
                Some((parent, _)) => key = parent,
                None if key != error_type::ANY => key = error_type::ANY,
                None => return Vec::new(),
            }
        }
    }

    /// The delay before restart number `consecutive` (1 = the first failure in a row,
    /// restarted at once); `jitter` in [-1, 1] spreads it by ±20 %.
    pub fn backoff(&self, consecutive: u32, jitter: f64) -> Duration {
        if consecutive <= 1 {
            return Duration::ZERO;
        }
        let doublings = (consecutive - 2).min(20);
        let base = self
            .backoff_initial
            .saturating_mul(1 << doublings)
            .min(self.backoff_max);
        base.mul_f64((1.0 + 0.2 * jitter.clamp(-1.0, 1.0)).max(0.0))
    }
}

/// Restarts a parent allowed among its children: OTP's intensity and period.
#[derive(Debug, Default, Clone)]
pub struct Intensity {
    restarts: VecDeque<Instant>,
}

impl Intensity {
    /// Records a restart at `now`; false when it is one more than `max` within `period`.
    pub fn allow(&mut self, now: Instant, max: u32, period: Duration) -> bool {
        while self
            .restarts
            .front()
            .is_some_and(|&at| now.duration_since(at) > period)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= max as usize {
            return false;
        }
        self.restarts.push_back(now);
        true
    }

    /// Forgets the history (the parent itself restarted).
    pub fn reset(&mut self) {
        self.restarts.clear();
    }
}

/// Durations as whole milliseconds in the durable registry.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_solver_wins() {
        let policy = Policy {
            solvers: vec![
                Solver {
                    error_type: "db".into(),
                    actions: vec![Action::Restart],
                },
                Solver {
                    error_type: "db.timeout".into(),
                    actions: vec![Action::Log, Action::Continue],
                },
                Solver {
                    error_type: "*".into(),
                    actions: vec![Action::Stop],
                },
            ],
            ..Policy::default()
        };
        assert_eq!(policy.chain("db.timeout"), [Action::Log, Action::Continue]);
        assert_eq!(policy.chain("db.lost.primary"), [Action::Restart]);
        assert_eq!(policy.chain("cache"), [Action::Stop]);
        // A default for a specific type beats the container's catch-all.
        assert_eq!(policy.chain("exit"), [Action::Restart]);
    }

    #[test]
    fn defaults_follow_kraken() {
        let policy = Policy::default();
        assert_eq!(policy.chain("unresponsive"), [Action::Restart]);
        assert_eq!(policy.chain("reef.task.intensity"), [Action::Restart]);
        assert_eq!(policy.chain("app.error"), [Action::Log, Action::Escalate]);
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let policy = Policy::default();
        assert_eq!(policy.backoff(1, 1.0), Duration::ZERO);
        assert_eq!(policy.backoff(2, 0.0), Duration::from_millis(10));
        assert_eq!(policy.backoff(4, 0.0), Duration::from_millis(40));
        assert_eq!(policy.backoff(40, 0.0), Duration::from_secs(2));
        assert_eq!(policy.backoff(2, 1.0), Duration::from_millis(12));
        assert_eq!(policy.backoff(2, -1.0), Duration::from_millis(8));
    }

    #[test]
    fn intensity_counts_restarts_within_the_period() {
        let mut intensity = Intensity::default();
        let start = Instant::now();
        let period = Duration::from_secs(1);
        assert!(intensity.allow(start, 2, period));
        assert!(intensity.allow(start, 2, period));
        assert!(!intensity.allow(start + Duration::from_millis(10), 2, period));
        assert!(intensity.allow(start + Duration::from_secs(2), 2, period));
    }
}
