//! The timer side of an attachment: heartbeats out, silence detection, and request
//! deadlines. One task per attached container.

use std::sync::Arc;

use reef_proto::{Envelope, EnvelopeKind, ErrorCode};
use tokio::time::Instant;
use tokio::time::{MissedTickBehavior, interval, sleep_until};

use crate::{Attachment, CloseReason, DetachCause, NodeStats, Registry, raised::node_error};

/// Runs until `attachment` closes: sends a HEARTBEAT every interval on the control lane,
/// detaches the container after the heartbeat timeout of silence, and answers expired
/// requests with DEADLINE_EXCEEDED.
pub async fn keep(registry: Arc<Registry>, stats: Arc<NodeStats>, attachment: Arc<Attachment>) {
    let limits = registry.limits().clone();
    let mut closed = attachment.subscribe_closed();
    let mut heartbeat = interval(limits.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heartbeat_id = 0u64;
    loop {
        if *closed.borrow() {
            return;
        }
        // Far enough ahead to never fire when nothing is pending.
        let next_deadline = attachment
            .pending()
            .arm()
            .unwrap_or_else(|| Instant::now() + limits.max_request_timeout * 2);
        tokio::select! {
            _ = closed.changed() => {}
            _ = attachment.deadlines_notified() => {}
            _ = sleep_until(next_deadline) => {
                expire(&registry, &stats, &attachment, limits.enqueue_timeout).await
            }
            _ = heartbeat.tick() => {
                let silence = attachment.silent_for();
                if silence > limits.heartbeat_timeout {
                    let reason = CloseReason::Silent(silence);
                    registry.detach(&attachment, DetachCause::Silent, &reason.to_string(), Some(reason));
                    return;
                }
                heartbeat_id += 1;
                let ping = Envelope {
                    kind: EnvelopeKind::Heartbeat as i32,
                    id: heartbeat_id,
                    destination: attachment.alias().to_string(),
                    ..Default::default()
                };
                // A full control lane means the container stopped reading: silence
                // detection above deals with it.
                let _ = attachment.control().try_send(ping);
            }
        }
    }
}

/// Answers expired requests with DEADLINE_EXCEEDED (and tells their callees), waiting at most `patience` for room
/// in the caller's mailbox: a caller that does not read must not stall its keeper (and
/// with it the heartbeats).
async fn expire(
    registry: &Registry,
    stats: &NodeStats,
    attachment: &Attachment,
    patience: std::time::Duration,
) {
    let expired = attachment.pending().expire(Instant::now());
    if expired.is_empty() {
        return;
    }
    stats.add_expired(expired.len() as u64);
    for (id, pending) in expired {
        if pending.cancel_on_expiry {
            registry.cancel(id, &pending);
        }
        let request = Envelope {
            id,
            destination: pending.addressee.to_string(),
            ..Default::default()
        };
        let message = format!(
            "no reply from {:?} before the deadline",
            pending.addressee.as_str()
        );
        let error = node_error(
            &request,
            attachment.alias(),
            ErrorCode::DeadlineExceeded,
            message,
            registry.node_origin(),
        );
        let queued = tokio::time::timeout(
            patience,
            reef_frames::enqueue(attachment.data(), error.clone()),
        )
        .await;
        if !matches!(queued, Ok(Ok(()))) {
            stats.dead_letter(&error, "the caller's mailbox stayed full");
        }
    }
}
