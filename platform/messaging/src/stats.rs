//! The counters of messaging: frames, envelopes routed, dead letters, request latency.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use reef_core::Histogram;
use reef_proto::Envelope;

use crate::DeadLetters;

/// Counters of messaging, for `Supervisor.Info`, metrics and tests.
#[derive(Debug, Default)]
pub struct NodeStats {
    frames: AtomicU64,
    frames_sent: AtomicU64,
    routed: AtomicU64,
    dead_letters: DeadLetters,
    requests_expired: AtomicU64,
    replied: Histogram,
    refused: Histogram,
}

impl NodeStats {
    /// A frame of `envelopes` accepted from an attach stream.
    pub fn add_frame(&self, envelopes: u64) {
        self.frames.fetch_add(1, Relaxed);
        self.routed.fetch_add(envelopes, Relaxed);
    }

    /// A frame written to an attach stream.
    pub fn add_frame_sent(&self) {
        self.frames_sent.fetch_add(1, Relaxed);
    }

    /// Frames written so far.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Relaxed)
    }

    /// Frames accepted so far (envelopes / frames = how well senders batch).
    pub fn frames(&self) -> u64 {
        self.frames.load(Relaxed)
    }

    /// An envelope that could not be delivered, and why.
    pub fn dead_letter(&self, envelope: &Envelope, reason: impl Into<String>) {
        self.dead_letters.record(envelope, reason);
    }

    /// The dead-letter ring.
    pub fn dead_letter_ring(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Requests the node answered with DEADLINE_EXCEEDED.
    pub fn add_expired(&self, n: u64) {
        self.requests_expired.fetch_add(n, Relaxed);
    }

    /// A request of a caller on this node was answered after `latency`: with a REPLY
    /// (`replied`) or an ERROR.
    pub fn answered(&self, replied: bool, latency: std::time::Duration) {
        match replied {
            true => self.replied.record(latency),
            false => self.refused.record(latency),
        }
    }

    /// The latency of requests answered with a REPLY.
    pub fn replied(&self) -> &Histogram {
        &self.replied
    }

    /// The latency of requests answered with an ERROR.
    pub fn refused(&self) -> &Histogram {
        &self.refused
    }

    /// Envelopes accepted so far.
    pub fn routed(&self) -> u64 {
        self.routed.load(Relaxed)
    }

    /// Envelopes lost so far.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.total()
    }

    /// Requests expired so far.
    pub fn requests_expired(&self) -> u64 {
        self.requests_expired.load(Relaxed)
    }
}
