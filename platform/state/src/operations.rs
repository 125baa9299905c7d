//! What the State service did: calls per operation and outcome, how long they took, and
//! how many watches are open. Kept by the node's `StateService` at its edge, rendered by
//! the node's metrics.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use reef_core::{Histogram, HistogramSnapshot};

/// A `reef.v1.State` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOp {
    /// `Get`.
    Get,
    /// `Put`.
    Put,
    /// `Delete`.
    Delete,
    /// `List`.
    List,
    /// `Txn`.
    Txn,
    /// `Watch` (until the watch is established).
    Watch,
    /// `Compact`.
    Compact,
}

impl StateOp {
    /// Every operation, in the order metrics list them.
    pub const ALL: [StateOp; 7] = [
        StateOp::Get,
        StateOp::Put,
        StateOp::Delete,
        StateOp::List,
        StateOp::Txn,
        StateOp::Watch,
        StateOp::Compact,
    ];

    /// Its name as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            StateOp::Get => "get",
            StateOp::Put => "put",
            StateOp::Delete => "delete",
            StateOp::List => "list",
            StateOp::Txn => "txn",
            StateOp::Watch => "watch",
            StateOp::Compact => "compact",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what was asked.
    Ok,
    /// A compare-and-set did not hold (ABORTED, or a transaction that did not succeed).
    Conflict,
    /// The caller's mistake: invalid, not allowed, out of range, no such owner.
    Rejected,
    /// The store's trouble: unavailable, internal, cancelled, timed out.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Conflict,
        Outcome::Rejected,
        Outcome::Failed,
    ];

    /// Its name as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// The counters of one operation.
#[derive(Debug, Default)]
struct Counted {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    latency: Histogram,
}

/// Counters for every operation, and the watches open now.
#[derive(Debug, Default)]
pub struct StateOperations {
    ops: [Counted; StateOp::ALL.len()],
    watches_open: AtomicU64,
}

impl StateOperations {
    /// Counts one call of `op` that ended as `outcome` after `elapsed`.
    pub fn record(&self, op: StateOp, outcome: Outcome, elapsed: Duration) {
        let counted = &self.ops[op as usize];
        counted.outcomes[outcome as usize].fetch_add(1, Relaxed);
        counted.latency.record(elapsed);
    }

    /// Calls of `op` that ended as `outcome`.
    pub fn calls(&self, op: StateOp, outcome: Outcome) -> u64 {
        self.ops[op as usize].outcomes[outcome as usize].load(Relaxed)
    }

    /// Calls of every operation, whatever their outcome.
    pub fn total(&self) -> u64 {
        StateOp::ALL
            .iter()
            .flat_map(|&op| Outcome::ALL.map(|outcome| self.calls(op, outcome)))
            .sum()
    }

    /// How long the calls of `op` took (a watch: until it was established).
    pub fn latency(&self, op: StateOp) -> HistogramSnapshot {
        self.ops[op as usize].latency.snapshot()
    }

    /// Watch streams open now.
    pub fn watches_open(&self) -> u64 {
        self.watches_open.load(Relaxed)
    }

    /// Counts a watch as open until the returned guard is dropped.
    pub fn watch_opened(self: &std::sync::Arc<Self>) -> OpenWatch {
        self.watches_open.fetch_add(1, Relaxed);
        OpenWatch(self.clone())
    }
}

/// An open watch; dropping it (the stream ended) counts it as closed.
#[derive(Debug)]
pub struct OpenWatch(std::sync::Arc<StateOperations>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.watches_open.fetch_sub(1, Relaxed);
    }
}
