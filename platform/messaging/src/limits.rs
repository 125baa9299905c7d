//! The bounds every node enforces: sizes, queue lengths and timeouts.

use std::time::Duration;

use reef_frames::FrameLimits;

/// Bounds on what a node accepts and how long it waits. The defaults suit one node on
/// one host; every field can be changed with reefd flags or in tests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest payload routed; larger envelopes are answered with RESOURCE_EXHAUSTED.
    pub max_payload_bytes: usize,
    /// Largest frame the node decodes; a larger one closes the attach stream.
    pub max_frame_bytes: usize,
    /// How frames written to containers are batched.
    pub frame: FrameLimits,
    /// Envelopes queued for one container before senders wait.
    pub mailbox_capacity: usize,
    /// How long a sender waits on a full mailbox before RESOURCE_EXHAUSTED.
    pub enqueue_timeout: Duration,
    /// Timeout of a REQUEST that does not say.
    pub default_request_timeout: Duration,
    /// Longest timeout a REQUEST may ask for.
    pub max_request_timeout: Duration,
    /// Requests one container may have in flight.
    pub max_pending_requests: usize,
    /// How often the node sends HEARTBEAT on each attach stream.
    pub heartbeat_interval: Duration,
    /// Silence after which a container is detached.
    pub heartbeat_timeout: Duration,
    /// How long a registration may wait for its attach stream.
    pub attach_timeout: Duration,
    /// Registrations one node holds, task containers included.
    pub max_containers: usize,
    /// Acknowledged-mode envelopes delivered to one container and not yet acknowledged;
    /// past it, senders wait as on a full mailbox.
    pub unacked_capacity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_frame_bytes: 8 << 20,
            frame: FrameLimits::default(),
            mailbox_capacity: 8192,
            enqueue_timeout: Duration::from_secs(5),
            default_request_timeout: Duration::from_secs(30),
            max_request_timeout: Duration::from_secs(300),
            max_pending_requests: 65_536,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            attach_timeout: Duration::from_secs(10),
            max_containers: 1_000_000,
            unacked_capacity: 8192,
        }
    }
}
