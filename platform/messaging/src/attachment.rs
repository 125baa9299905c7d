//! A container's open attach stream, as the node sees it.

use std::{
    future::Future as _,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use parking_lot::Mutex;
use reef_core::{Alias, Histogram};
use reef_frames::{Credit, FrameBatcher, Mailbox};
use reef_proto::{Envelope, Frame};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::{Stream, wrappers::WatchStream};

use crate::{
    AckLog, Limits, NodeStats, PendingRequests, Registry, acks::NotQueued, link::LinkSession,
};

/// Why the node ended an attach stream. The node's gRPC edge turns each into the status
/// the container reads at the end of its stream; the text is that status's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// Nothing was heard from the container for longer than the heartbeat timeout.
    #[error("missed heartbeats: nothing heard for {} ms", .0.as_millis())]
    Silent(Duration),
    /// Its supervisor took the alias back (the process is being stopped or replaced).
    #[error("{0}")]
    Evicted(String),
    /// The node at the other end of a link opened a new stream.
    #[error("the node at the other end opened a new stream")]
    Replaced,
    /// The supervised container was destroyed.
    #[error("the container was destroyed")]
    Destroyed,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Its holder deregistered the alias: a clean end.
    #[error("deregistered by its holder")]
    Deregistered,
    /// A frame was over the frame limit, so the stream cannot be read on.
    #[error(
        "a frame exceeded the frame limit of {limit} bytes (RegisterResponse.max_frame_bytes): spread envelopes over several frames"
    )]
    FrameTooLarge {
        /// The limit (`RegisterResponse.max_frame_bytes`).
        limit: usize,
    },
    /// The container's side of the stream failed.
    #[error("attach stream failed: {0}")]
    StreamFailed(String),
}

/// Where the node queues envelopes for one attached container, what that container is
/// waiting for, and how to close its stream.
#[derive(Debug)]
pub struct Attachment {
    alias: Alias,
    data: mpsc::Sender<Envelope>,
    control: mpsc::Sender<Envelope>,
    /// What the container lets the node send it (credit-based flow control), if it
    /// asked for flow control.
    credit: Option<Arc<Credit>>,
    /// Acknowledged-mode envelopes it has not acknowledged (shared with the registration,
    /// so that they outlive this stream).
    acks: Arc<AckLog>,
    /// For a link to another node (see `link`): every envelope goes through `acks`.
    link: Option<Arc<LinkSession>>,
    /// For a link: the highest sequence from the other end that is routed, sent back by
    /// the outbound stream as soon as it can. Coalesced, never dropped, never waited
    /// for: an ACK that waited behind data could wait for itself.
    routed_through: watch::Sender<u64>,
    /// The data lane's queue, for shedding its oldest envelopes.
    mailbox: Mailbox,
    /// Envelopes the mailbox takes from senders. The data lane is larger by `slack`,
    /// kept for redeliveries of acknowledged-mode envelopes after a restart.
    mailbox_capacity: usize,
    slack: usize,
    /// Requests this container sent and still waits on.
    pending: Mutex<PendingRequests>,
    /// Wakes the keeper when an earlier deadline was added.
    pending_changed: Notify,
    closer: Mutex<Option<oneshot::Sender<Option<CloseReason>>>>,
    /// Turns true on close, for the tasks that wait for it.
    closed: watch::Sender<bool>,
    /// The same fact for the router's per-envelope check: reading the watch takes a lock.
    closing: AtomicBool,
    epoch: Instant,
    last_heard_ms: AtomicU64,
    envelopes_in: AtomicU64,
    envelopes_out: AtomicU64,
    /// How long the requests this stream answered took.
    answered: Histogram,
}

impl Attachment {
    /// A new attachment for `alias` and the stream of frames that writes to it.
    pub(crate) fn open(
        alias: Alias,
        limits: &Limits,
        credit: Option<u64>,
        link: Option<Arc<LinkSession>>,
        acks: Arc<AckLog>,
        stats: Arc<NodeStats>,
        registry: Weak<Registry>,
    ) -> (Arc<Self>, Outbound) {
        let credit = credit.map(Credit::new);
        let routed_through = watch::Sender::new(0);
        let acknowledgements = link
            .is_some()
            .then(|| WatchStream::from_changes(routed_through.subscribe()));
        let (control, control_rx) = mpsc::channel(64);
        // Room for a full log of redeliveries on top of the mailbox, so that a restart
        // never has to drop what it delivers again.
        let (data, data_rx) = mpsc::channel(limits.mailbox_capacity + limits.unacked_capacity);
        let mut frames = FrameBatcher::new(control_rx, data_rx, limits.frame);
        if let Some(credit) = &credit {
            frames = frames.with_send_credit(credit.clone());
        }
        let (closer, close_rx) = oneshot::channel();
        let attachment = Arc::new(Self {
            alias,
            data,
            control,
            credit,
            acks,
            link,
            routed_through,
            mailbox: frames.mailbox(),
            mailbox_capacity: limits.mailbox_capacity,
            slack: limits.unacked_capacity,
            pending: Mutex::new(PendingRequests::new(limits.max_pending_requests)),
            pending_changed: Notify::new(),
            closer: Mutex::new(Some(closer)),
            closed: watch::Sender::new(false),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            envelopes_in: AtomicU64::new(0),
            envelopes_out: AtomicU64::new(0),
            answered: Histogram::default(),
        });
        let outbound = Outbound {
            frames,
            acknowledgements,
            close: close_rx,
            finished: false,
            attachment: attachment.clone(),
            stats,
            registry,
        };
        (attachment, outbound)
    }

    /// The container's alias.
    pub fn alias(&self) -> &Alias {
        &self.alias
    }

    /// The data lane: envelopes for the container, in order.
    pub(crate) fn data(&self) -> &mpsc::Sender<Envelope> {
        &self.data
    }

    /// Queues what was held for this container while it restarted, without waiting:
    /// through the acknowledgement log in acknowledged mode, however full it is. A full
    /// or closed mailbox hands it back.
    // See `Attachment::try_queue`.
    #[allow(clippy::result_large_err)]
    pub(crate) fn queue_held(&self, envelope: Envelope) -> Result<(), Envelope> {
        let queued = match envelope.acknowledged || self.link.is_some() {
            true => self.acks.queue(&self.data, envelope, false),
            false => self.try_queue(envelope),
        };
        queued.map_err(|refused| match refused {
            NotQueued::LogFull(envelope)
            | NotQueued::MailboxFull(envelope)
            | NotQueued::Closed(envelope) => envelope,
        })
    }

    /// Queues `envelope` without waiting: through the acknowledgement log in
    /// acknowledged mode. Says what is full, or that the mailbox is closed.
    // The envelope comes back by value on refusal, as in `Registry::hold`: boxing it
    // would cost an allocation per envelope on the hot path instead.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_queue(&self, envelope: Envelope) -> Result<(), NotQueued> {
        if envelope.acknowledged || self.link.is_some() {
            return self.acks.queue(&self.data, envelope, true);
        }
        if self.queued() >= self.mailbox_capacity {
            return Err(NotQueued::MailboxFull(envelope));
        }
        self.data.try_send(envelope).map_err(|error| match error {
            mpsc::error::TrySendError::Full(envelope) => NotQueued::MailboxFull(envelope),
            mpsc::error::TrySendError::Closed(envelope) => NotQueued::Closed(envelope),
        })
    }

    /// Takes the oldest envelope queued for the container out of its mailbox.
    pub(crate) fn shed_oldest(&self) -> Option<Envelope> {
        self.mailbox.take_oldest()
    }

    /// Waits until the mailbox has room for a batch of senders' envelopes (see
    /// [`reef_frames::room_for_batch`]), not counting the slack; `Err` once it is closed.
    pub(crate) async fn mailbox_room(&self) -> Result<(), reef_frames::QueueClosed> {
        let batch = (self.mailbox_capacity / 4).clamp(1, 256);
        self.data
            .reserve_many(self.slack + batch)
            .await
            .map(drop)
            .map_err(|_| reef_frames::QueueClosed)
    }

    /// For a link: tells the other end that everything up to `sequence` is routed.
    pub(crate) fn acknowledge_through(&self, sequence: u64) {
        self.routed_through.send_replace(sequence);
    }

    /// For a link to another node, what the link remembers across streams.
    pub(crate) fn link(&self) -> Option<&LinkSession> {
        self.link.as_deref()
    }

    /// Its acknowledgement log.
    pub(crate) fn acks(&self) -> &AckLog {
        &self.acks
    }

    /// Envelopes queued for the container and not yet written.
    pub fn queued(&self) -> usize {
        self.data.max_capacity() - self.data.capacity()
    }

    /// The control lane: heartbeats, which overtake queued data.
    pub(crate) fn control(&self) -> &mpsc::Sender<Envelope> {
        &self.control
    }

    /// The requests this container waits on.
    pub(crate) fn pending(&self) -> parking_lot::MutexGuard<'_, PendingRequests> {
        // A panic while holding this lock cannot leave the table inconsistent in a way
        // that matters more than losing the node, so a poisoned lock is used as is.
        self.pending.lock()
    }

    /// Re-arms the deadline timer after an earlier deadline was added.
    pub(crate) fn deadlines_changed(&self) {
        self.pending_changed.notify_one();
    }

    pub(crate) async fn deadlines_notified(&self) {
        self.pending_changed.notified().await;
    }

    /// Whether the stream is gone, so envelopes can no longer reach the container.
    pub fn is_closed(&self) -> bool {
        self.closing.load(Relaxed) || self.data.is_closed()
    }

    /// A receiver that turns true once the attachment is closed.
    pub fn subscribe_closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Ends the stream: cleanly with `None`, or for a reason the container is told.
    /// Only the first call has an effect.
    pub fn close(&self, reason: Option<CloseReason>) {
        let closer = self.closer.lock().take();
        if let Some(closer) = closer {
            self.closing.store(true, Relaxed);
            let _ = closer.send(reason);
            self.closed.send_replace(true);
        }
    }

    /// Says a heartbeat was queued on the data lane, which then passes without credit
    /// (`Credit::pass_heartbeat`); nothing without flow control.
    pub(crate) fn pass_heartbeat(&self) {
        if let Some(credit) = &self.credit {
            credit.pass_heartbeat();
        }
    }

    /// Credit the container granted (`Frame.credit`); ignored without flow control.
    pub(crate) fn grant(&self, credit: u32) {
        if let Some(available) = &self.credit {
            available.add(credit.into());
        }
    }

    /// Notes that the container was heard from (any frame counts as a heartbeat).
    pub(crate) fn heard(&self, envelopes: u64) {
        self.last_heard_ms
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
        self.envelopes_in.fetch_add(envelopes, Relaxed);
    }

    /// How long the container has been silent.
    pub(crate) fn silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Relaxed)))
    }

    pub(crate) fn count_out(&self, envelopes: u64) {
        self.envelopes_out.fetch_add(envelopes, Relaxed);
    }

    /// Envelopes received from / delivered to this container.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.envelopes_in.load(Relaxed),
            self.envelopes_out.load(Relaxed),
        )
    }

    /// The latency of the requests this stream answered (REPLY or ERROR), from the node
    /// taking each request to the answer arriving; a task's answers count for its host.
    pub fn answered(&self) -> &Histogram {
        &self.answered
    }
}

/// The response stream of `Channel.Attach`: frames for the container until the
/// attachment closes. Envelopes still queued when it is dropped go back to the registry,
/// which holds them for a supervised container's next process; otherwise they are dead
/// letters.
pub struct Outbound {
    frames: FrameBatcher,
    /// For a link: cumulative ACKs to send, ahead of everything else.
    acknowledgements: Option<WatchStream<u64>>,
    close: oneshot::Receiver<Option<CloseReason>>,
    finished: bool,
    attachment: Arc<Attachment>,
    stats: Arc<NodeStats>,
    registry: Weak<Registry>,
}

impl Stream for Outbound {
    type Item = Result<Frame, CloseReason>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Poll::Ready(closed) = Pin::new(&mut this.close).poll(cx) {
            this.finished = true;
            return Poll::Ready(closed.ok().flatten().map(Err));
        }
        if let Some(acknowledgements) = &mut this.acknowledgements
            && let Poll::Ready(Some(sequence)) = Pin::new(acknowledgements).poll_next(cx)
        {
            let ack = Envelope {
                kind: reef_proto::EnvelopeKind::Ack as i32,
                sequence,
                ..Default::default()
            };
            return Poll::Ready(Some(Ok(Frame {
                envelopes: vec![ack],
                ..Default::default()
            })));
        }
        match Pin::new(&mut this.frames).poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                this.attachment.count_out(frame.envelopes.len() as u64);
                this.stats.add_frame_sent();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // Closed first, so that nothing new is queued here while the rest moves.
        self.attachment.close(None);
        let mut unsent = self.frames.close_and_take_unsent();
        // Numbered ones are in the acknowledgement log: delivered again from there.
        unsent.retain(|envelope| envelope.sequence == 0);
        let lost = match self.registry.upgrade() {
            Some(registry) if !unsent.is_empty() => {
                let count = unsent.len();
                let lost = registry.requeue(&self.attachment.alias, unsent);
                tracing::debug!(alias = %self.attachment.alias, count, lost = lost.len(), "attach stream ended with envelopes queued");
                lost
            }
            _ => unsent,
        };
        for envelope in &lost {
            self.stats
                .dead_letter(envelope, "the receiver's stream ended before delivery");
        }
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        // A link's requests are in its log, delivered again by its next stream.
        if self.attachment.link().is_none() {
            registry.fail_in_flight(&self.attachment.alias);
        }
        // Its callers are gone: their callees may stop working for them.
        let abandoned = self.attachment.pending().take_all();
        for (id, pending) in abandoned {
            registry.cancel(id, &pending);
        }
    }
}
