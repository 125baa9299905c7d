//! The dead-letter ring: the last envelopes the node could not or would not deliver,
//! with the reason, for `reef deadletters`.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::SystemTime,
};

use bytes::Bytes;
use parking_lot::Mutex;
use reef_proto::Envelope;

/// Payload bytes a dead letter keeps.
const PREVIEW_BYTES: usize = 256;

/// Dead letters the ring keeps by default.
pub const DEFAULT_DEAD_LETTER_CAPACITY: usize = 1024;

/// An envelope the node could not deliver: what it was, and why. The payload is cut to
/// its first bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// When it was given up on.
    pub at: SystemTime,
    /// The envelope's kind, as on the wire.
    pub kind: i32,
    /// Its id.
    pub id: u64,
    /// The id it answered, if it was an answer.
    pub correlation_id: u64,
    /// Who sent it.
    pub origin: String,
    /// Where it was going.
    pub destination: String,
    /// Its whole payload's size.
    pub payload_bytes: usize,
    /// The payload's first bytes (at most 256).
    pub payload_preview: Bytes,
    /// Why it was not delivered.
    pub reason: String,
}

/// A bounded ring of dead letters and a count of all of them.
#[derive(Debug)]
pub struct DeadLetters {
    ring: Mutex<VecDeque<DeadLetter>>,
    capacity: usize,
    total: AtomicU64,
}

impl Default for DeadLetters {
    fn default() -> Self {
        Self::new(DEFAULT_DEAD_LETTER_CAPACITY)
    }
}

impl DeadLetters {
    /// A ring keeping the newest `capacity` dead letters.
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
            total: AtomicU64::new(0),
        }
    }

    /// Records `envelope` as undeliverable because of `reason`.
    pub fn record(&self, envelope: &Envelope, reason: impl Into<String>) {
        self.total.fetch_add(1, Relaxed);
        if self.capacity == 0 {
            return;
        }
        let preview = envelope.payload.len().min(PREVIEW_BYTES);
        let letter = DeadLetter {
            at: SystemTime::now(),
            kind: envelope.kind,
            id: envelope.id,
            correlation_id: envelope.correlation_id,
            origin: envelope.origin.clone(),
            destination: envelope.destination.clone(),
            payload_bytes: envelope.payload.len(),
            payload_preview: Bytes::copy_from_slice(&envelope.payload[..preview]),
            reason: reason.into(),
        };
        let mut ring = self.ring.lock();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(letter);
    }

    /// The newest `limit` dead letters (all kept when 0), oldest first.
    pub fn recent(&self, limit: usize) -> Vec<DeadLetter> {
        let ring = self.ring.lock();
        let skip = match limit {
            0 => 0,
            limit => ring.len().saturating_sub(limit),
        };
        ring.iter().skip(skip).cloned().collect()
    }

    /// Dead letters since the node started.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_counts_all() {
        let ring = DeadLetters::new(2);
        for id in 1..=3 {
            let envelope = Envelope {
                id,
                payload: Bytes::from(vec![b'x'; 300]),
                ..Default::default()
            };
            ring.record(&envelope, format!("reason {id}"));
        }
        assert_eq!(ring.total(), 3);
        let kept = ring.recent(0);
        assert_eq!(kept.iter().map(|l| l.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(kept[1].reason, "reason 3");
        assert_eq!(kept[1].payload_bytes, 300);
        assert_eq!(kept[1].payload_preview.len(), PREVIEW_BYTES);
        assert_eq!(ring.recent(1)[0].id, 3);
    }
}
