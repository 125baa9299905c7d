//! Acknowledged delivery: the envelopes delivered to one container in acknowledged mode
//! and not yet acknowledged, kept by the node to deliver again to the container's next
//! process or stream.
//!
//! The log belongs to the registration, not to one attach stream, so it outlives a
//! restart. Each envelope gets the next number of the receiver's sequence as it enters
//! the receiver's mailbox; an ACK with that number removes it.

use std::collections::BTreeMap;

use parking_lot::{Mutex, MutexGuard};
use reef_proto::Envelope;
use tokio::sync::{Notify, mpsc};

/// Unacknowledged envelopes of one receiver, by sequence number.
#[derive(Debug)]
pub struct AckLog {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Wakes senders waiting for the log to have room.
    room: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    unacked: BTreeMap<u64, Envelope>,
}

/// Why an envelope did not enter the receiver's mailbox.
pub(crate) enum NotQueued {
    /// The log is full: wait for acknowledgements.
    LogFull(Envelope),
    /// The mailbox is full: wait for the stream to take some.
    MailboxFull(Envelope),
    /// The mailbox is closed.
    Closed(Envelope),
}

impl AckLog {
    /// An empty log holding at most `capacity` envelopes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                next: 1,
                unacked: BTreeMap::new(),
            }),
            capacity: capacity.max(1),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Numbers `envelope` and queues it on `mailbox`, keeping a copy until it is
    /// acknowledged. Under one lock, so sequence order is mailbox order. `bounded`:
    /// refuse when the log is full (senders wait); envelopes that were held for a
    /// restarting receiver are queued regardless (the mailbox has room for them).
    // The envelope comes back by value on refusal, as in `Registry::hold`: boxing it
    // would cost an allocation per envelope on the hot path instead.
    #[allow(clippy::result_large_err)]
    pub(crate) fn queue(
        &self,
        mailbox: &mpsc::Sender<Envelope>,
        mut envelope: Envelope,
        bounded: bool,
    ) -> Result<(), NotQueued> {
        let mut inner = self.lock();
        if bounded && inner.unacked.len() >= self.capacity {
            return Err(NotQueued::LogFull(envelope));
        }
        let sequence = inner.next;
        envelope.sequence = sequence;
        let kept = envelope.clone();
        match mailbox.try_send(envelope) {
            Ok(()) => {
                inner.next += 1;
                inner.unacked.insert(sequence, kept);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(mut back)) => {
                back.sequence = 0;
                Err(NotQueued::MailboxFull(back))
            }
            Err(mpsc::error::TrySendError::Closed(mut back)) => {
                back.sequence = 0;
                Err(NotQueued::Closed(back))
            }
        }
    }

    /// The receiver handled envelope `sequence`.
    pub(crate) fn ack(&self, sequence: u64) {
        if self.lock().unacked.remove(&sequence).is_some() {
            self.room.notify_waiters();
        }
    }

    /// The receiver (a linked node) handled every envelope up to `sequence`.
    pub(crate) fn ack_through(&self, sequence: u64) {
        let mut inner = self.lock();
        let kept = inner.unacked.split_off(&sequence.saturating_add(1));
        let acked = std::mem::replace(&mut inner.unacked, kept).len();
        drop(inner);
        if acked > 0 {
            self.room.notify_waiters();
        }
    }

    /// Waits until the log may have room (a later [`AckLog::queue`] decides).
    pub(crate) async fn room(&self) {
        let notified = self.room.notified();
        if self.lock().unacked.len() < self.capacity {
            return;
        }
        notified.await;
    }

    /// Queues every unacknowledged envelope again, in sequence order, marked as
    /// redelivered, on the mailbox of the receiver's new stream. Returns those that did
    /// not fit (the mailbox is sized so that they do).
    pub(crate) fn redeliver(&self, mailbox: &mpsc::Sender<Envelope>) -> Vec<Envelope> {
        let inner = self.lock();
        let mut lost = Vec::new();
        for envelope in inner.unacked.values() {
            let mut again = envelope.clone();
            again.redelivered = true;
            if let Err(error) = mailbox.try_send(again) {
                lost.push(error.into_inner());
            }
        }
        lost
    }

    /// Empties the log (the receiver is gone for good) and returns what was in it.
    pub(crate) fn drain(&self) -> Vec<Envelope> {
        let drained = std::mem::take(&mut self.lock().unacked);
        self.room.notify_waiters();
        drained.into_values().collect()
    }

    /// Envelopes waiting for an ACK.
    pub fn len(&self) -> usize {
        self.lock().unacked.len()
    }

    /// Whether nothing waits for an ACK.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: u64) -> Envelope {
        Envelope {
            id,
            acknowledged: true,
            ..Default::default()
        }
    }

    #[test]
    fn acknowledges_a_prefix_at_once() {
        let log = AckLog::new(8);
        let (mailbox, _rx) = mpsc::channel(8);
        for _ in 0..5 {
            assert!(log.queue(&mailbox, Envelope::default(), true).is_ok());
        }
        log.ack_through(3);
        assert_eq!(log.len(), 2);
        log.ack_through(3);
        assert_eq!(log.len(), 2);
        log.ack_through(u64::MAX);
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn numbers_keeps_until_acked_and_redelivers_in_order() {
        let log = AckLog::new(3);
        let (mailbox, mut delivered) = mpsc::channel(8);
        for id in 1..=3 {
            assert!(log.queue(&mailbox, send(id), true).is_ok());
        }
        assert!(matches!(
            log.queue(&mailbox, send(4), true),
            Err(NotQueued::LogFull(_))
        ));
        let sequences: Vec<u64> = (0..3)
            .map(|_| delivered.try_recv().unwrap().sequence)
            .collect();
        assert_eq!(sequences, [1, 2, 3]);
        log.ack(2);
        assert_eq!(log.len(), 2);
        let (next_stream, mut again) = mpsc::channel(8);
        assert!(log.redeliver(&next_stream).is_empty());
        let first = again.try_recv().unwrap();
        assert_eq!((first.sequence, first.redelivered), (1, true));
        assert_eq!(again.try_recv().unwrap().sequence, 3);
        assert!(log.queue(&next_stream, send(4), true).is_ok());
        assert_eq!(
            again.try_recv().unwrap().sequence,
            4,
            "numbers are never reused"
        );
    }

    #[test]
    fn a_refused_envelope_comes_back_unnumbered_and_takes_no_number() {
        let log = AckLog::new(8);
        let (full, _rx) = mpsc::channel(1);
        assert!(log.queue(&full, send(1), true).is_ok());
        let Err(NotQueued::MailboxFull(back)) = log.queue(&full, send(2), true) else {
            panic!("a full mailbox refuses");
        };
        assert_eq!((back.id, back.sequence), (2, 0));
        let (closed, rx) = mpsc::channel(1);
        drop(rx);
        assert!(matches!(
            log.queue(&closed, send(3), true),
            Err(NotQueued::Closed(back)) if back.sequence == 0
        ));
        let (open, mut delivered) = mpsc::channel(1);
        assert!(log.queue(&open, send(4), true).is_ok());
        assert_eq!(delivered.try_recv().unwrap().sequence, 2);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn held_envelopes_enter_a_full_log_and_draining_empties_it() {
        let log = AckLog::new(1);
        let (mailbox, _rx) = mpsc::channel(8);
        assert!(log.queue(&mailbox, send(1), true).is_ok());
        assert!(log.queue(&mailbox, send(2), false).is_ok());
        assert_eq!(log.len(), 2);
        let drained: Vec<u64> = log.drain().iter().map(|e| e.id).collect();
        assert_eq!(drained, [1, 2]);
        assert!(log.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_waiting_for_room_wakes_on_the_ack_that_makes_it() {
        let log = std::sync::Arc::new(AckLog::new(1));
        let (mailbox, _rx) = mpsc::channel(8);
        assert!(log.queue(&mailbox, send(1), true).is_ok());
        let waiter = tokio::spawn({
            let log = log.clone();
            async move { log.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the log is full");
        log.ack(7);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "an unknown sequence frees nothing");
        log.ack(1);
        waiter.await.unwrap();
        assert!(log.queue(&mailbox, send(2), true).is_ok());
    }
}
