//! The lifecycle of a container as every part of the node reports it: what happened
//! ([`EventKind`]), at which point of a transition ([`Phase`]), and why an attach stream
//! closed ([`DetachCause`]). The registry, supervision and task hosting all speak it.

/// What happened to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An alias was claimed.
    Registered,
    /// Its attach stream opened.
    Attached,
    /// Its attach stream closed; the alias is released with it.
    Detached,
    /// The alias was released by its holder or expired.
    Deregistered,
    /// A supervised container is being created.
    Create,
    /// … started.
    Start,
    /// … stopped.
    Stop,
    /// … failed.
    Fail,
    /// … destroyed.
    Destroy,
    /// … restarted.
    Restart,
    /// A solver action was applied to it.
    Solve,
}

/// Where in a lifecycle transition an event is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// About to happen.
    Before,
    /// The state changed.
    On,
    /// Done.
    After,
}

/// Why an attach stream was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachCause {
    /// Nothing was heard for the heartbeat timeout.
    Silent,
    /// The stream ended or failed, or the holder deregistered.
    Ended,
    /// The node closed it (shutdown, eviction).
    Closed,
}
