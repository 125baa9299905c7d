//! Turning two queues of envelopes into a stream of [`Frame`]s.
//!
//! Both ends of an attach stream write the same way: a small control lane (heartbeats)
//! that overtakes a bounded data lane, drained in batches so that one frame, one HTTP/2
//! DATA frame and one TLS record carry many envelopes.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire},
    },
    task::{Context, Poll, Waker},
};

use parking_lot::{Mutex, MutexGuard};
use prost::Message as _;
use reef_proto::{Envelope, Frame};
use tokio::sync::mpsc;
use tokio_stream::Stream;

/// How large a frame may grow.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Envelopes per frame.
    pub max_envelopes: usize,
    /// Encoded bytes per frame; a single larger envelope still travels, alone.
    pub max_bytes: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_envelopes: 512,
            max_bytes: 1 << 20,
        }
    }
}

/// A count of envelopes, shared between the half of a stream that grants it and the
/// half that spends it: credit-based flow control on `Channel.Attach`.
///
/// The receiver of a stream grants credit as its handler consumes envelopes (in
/// `Frame.credit`); the sender sends data-lane envelopes only while it holds credit.
/// A slow consumer therefore stops the envelopes meant for it at the node, whose
/// bounded mailbox then slows the producers, instead of letting buffers grow anywhere.
#[derive(Debug, Default)]
pub struct Credit {
    available: AtomicU64,
    /// Heartbeats that may pass at zero credit (see [`Credit::pass_heartbeat`]).
    passes: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl Credit {
    /// A credit holding `initial`.
    pub fn new(initial: u64) -> Arc<Self> {
        Arc::new(Self {
            available: AtomicU64::new(initial),
            passes: AtomicU64::new(0),
            waker: Mutex::new(None),
        })
    }

    /// Says that a heartbeat was queued on the data lane: heartbeats cost no credit, so
    /// the stream looks for it even while there is none, rather than hold it (a
    /// barrier's answer) for a consumer that has stopped granting.
    pub fn pass_heartbeat(&self) {
        self.passes.fetch_add(1, AcqRel);
        self.wake();
    }

    /// A heartbeat with a pass left the data lane.
    fn spend_pass(&self) {
        let _ = self
            .passes
            .fetch_update(AcqRel, Acquire, |passes| passes.checked_sub(1));
    }

    fn has_pass(&self) -> bool {
        self.passes.load(Acquire) > 0
    }

    fn wake(&self) {
        let waker = self.waker.lock().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Adds `n` and wakes the stream waiting for it.
    pub fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.available.fetch_add(n, AcqRel);
        self.wake();
    }

    /// What is available now.
    pub fn available(&self) -> u64 {
        self.available.load(Acquire)
    }

    /// Takes up to `n`; returns what was taken.
    fn take_up_to(&self, n: u64) -> u64 {
        let mut taken = 0;
        let _ = self.available.fetch_update(AcqRel, Acquire, |available| {
            taken = available.min(n);
            Some(available - taken)
        });
        taken
    }

    /// What is available, registering `cx` to be woken by [`Credit::add`] when nothing is.
    fn poll_available(&self, cx: &mut Context<'_>) -> u64 {
        let available = self.available();
        if available > 0 {
            return available;
        }
        *self.waker.lock() = Some(cx.waker().clone());
        // A grant between the first look and the registration would be missed.
        self.available()
    }
}

/// The queue of a [`FrameBatcher`]'s data lane, seen from outside: the node sheds the
/// oldest envelopes of a full mailbox through it (overflow policy "drop oldest"), even
/// while the stream is not being polled because its consumer is slow.
#[derive(Debug, Clone)]
pub struct Mailbox(Arc<Mutex<mpsc::Receiver<Envelope>>>);

impl Mailbox {
    /// Takes the oldest queued envelope out, if any.
    pub fn take_oldest(&self) -> Option<Envelope> {
        self.0.lock().try_recv().ok()
    }
}

/// A stream of frames drained from a control lane and a data lane.
///
/// The stream ends when the data lane is closed and empty; a closed control lane only
/// stops heartbeats.
#[derive(Debug)]
pub struct FrameBatcher {
    control: Option<mpsc::Receiver<Envelope>>,
    /// Shared with [`Mailbox`] handles, which may take the oldest envelopes out.
    data: Arc<Mutex<mpsc::Receiver<Envelope>>>,
    /// Envelopes taken from the data lane that did not fit in the previous frame.
    carry: VecDeque<Envelope>,
    /// The data-lane envelope taken while there was no credit, to look past it for
    /// heartbeats (free); it goes first once credit comes.
    parked: Option<Envelope>,
    limits: FrameLimits,
    data_closed: bool,
    /// The frame being filled; allocated once something arrives.
    batch: Vec<Envelope>,
    /// Data-lane envelopes may be sent only against this credit (none: no limit).
    send_credit: Option<Arc<Credit>>,
    /// Credit to grant the peer, carried in the next frame (an empty frame if need be).
    grants: Option<Arc<Credit>>,
}

impl FrameBatcher {
    /// Batches `control` (drained first) and `data` into frames within `limits`.
    pub fn new(
        control: mpsc::Receiver<Envelope>,
        data: mpsc::Receiver<Envelope>,
        limits: FrameLimits,
    ) -> Self {
        Self {
            control: Some(control),
            data: Arc::new(Mutex::new(data)),
            carry: VecDeque::new(),
            parked: None,
            limits,
            data_closed: false,
            batch: Vec::new(),
            send_credit: None,
            grants: None,
        }
    }

    /// Sends data-lane envelopes only against `credit` (control envelopes and heartbeats
    /// are free).
    pub fn with_send_credit(mut self, credit: Arc<Credit>) -> Self {
        self.send_credit = Some(credit);
        self
    }

    /// Announces what is added to `grants` in `Frame.credit`.
    pub fn with_grants(mut self, grants: Arc<Credit>) -> Self {
        self.grants = Some(grants);
        self
    }

    /// A handle on the data lane's queue, for taking its oldest envelopes out.
    pub fn mailbox(&self) -> Mailbox {
        Mailbox(self.data.clone())
    }

    fn data(&self) -> MutexGuard<'_, mpsc::Receiver<Envelope>> {
        self.data.lock()
    }

    /// Closes the data lane and returns what was still queued, in order.
    pub fn close_and_take_unsent(&mut self) -> Vec<Envelope> {
        let mut unsent: Vec<Envelope> = self.carry.drain(..).collect();
        unsent.extend(self.parked.take());
        let mut data = self.data();
        data.close();
        while let Ok(envelope) = data.try_recv() {
            unsent.push(envelope);
        }
        unsent
    }

    /// Closes the data lane and returns how many envelopes were still queued: they will
    /// never be written, and the caller decides what that means (dead letters).
    pub fn close_and_count_unsent(&mut self) -> usize {
        let mut unsent = self.carry.len() + usize::from(self.parked.is_some());
        self.carry.clear();
        self.parked = None;
        let mut data = self.data();
        data.close();
        while data.try_recv().is_ok() {
            unsent += 1;
        }
        unsent
    }

    fn fill_from_control(&mut self, cx: &mut Context<'_>, batch: &mut Vec<Envelope>) {
        let Some(control) = self.control.as_mut() else {
            return;
        };
        while batch.len() < self.limits.max_envelopes {
            match control.poll_recv(cx) {
                Poll::Ready(Some(envelope)) => batch.push(envelope),
                Poll::Ready(None) => {
                    self.control = None;
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// Takes data-lane envelopes into `batch`, at most `room`.
    fn fill_from_data(&mut self, cx: &mut Context<'_>, batch: &mut Vec<Envelope>, room: usize) {
        match self.send_credit.clone() {
            None => {
                let polled = self.data().poll_recv_many(cx, batch, room);
                if let Poll::Ready(0) = polled {
                    self.data_closed = true;
                }
            }
            Some(credit) => self.fill_from_data_against(&credit, cx, batch, room),
        }
    }

    /// [`Self::fill_from_data`] under flow control: each envelope but a heartbeat costs
    /// one credit. Without credit, the lane is looked into only while a heartbeat is
    /// queued in it ([`Credit::pass_heartbeat`]), in order: heartbeats at its head go,
    /// and the first envelope that needs credit is parked until credit comes (holding
    /// the mailbox one over its bound while a starved container waits for a barrier).
    fn fill_from_data_against(
        &mut self,
        credit: &Credit,
        cx: &mut Context<'_>,
        batch: &mut Vec<Envelope>,
        mut room: usize,
    ) {
        if let Some(parked) = self.parked.take() {
            if credit.take_up_to(1) == 0 {
                self.parked = Some(parked);
                credit.poll_available(cx);
                return;
            }
            batch.push(parked);
            room -= 1;
        }
        while room > 0 && !self.data_closed {
            let available = credit.poll_available(cx) as usize;
            if available > 0 {
                let before = batch.len();
                let polled = self.data().poll_recv_many(cx, batch, room.min(available));
                match polled {
                    Poll::Ready(0) => self.data_closed = true,
                    Poll::Ready(taken) => {
                        let charged = batch[before..].iter().filter(|e| costs_credit(e)).count();
                        credit.take_up_to(charged as u64);
                        for _ in charged..taken {
                            credit.spend_pass();
                        }
                        room -= taken;
                        // Heartbeats among them left credit unspent: take more.
                        if charged < taken {
                            continue;
                        }
                    }
                    Poll::Pending => {}
                }
                return;
            }
            // No credit (and `cx` registered for it, and for passes): look only for a
            // heartbeat.
            if !credit.has_pass() {
                return;
            }
            let polled = self.data().poll_recv(cx);
            match polled {
                Poll::Ready(Some(envelope)) if !costs_credit(&envelope) => {
                    credit.spend_pass();
                    batch.push(envelope);
                    room -= 1;
                }
                Poll::Ready(Some(envelope)) => {
                    self.parked = Some(envelope);
                    return;
                }
                Poll::Ready(None) => {
                    self.data_closed = true;
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// Moves the envelopes that overflow the byte budget from the end of `batch` back
    /// into `carry`, keeping at least one so a large envelope still travels.
    fn enforce_byte_budget(&mut self, batch: &mut Vec<Envelope>) {
        let mut bytes = 0;
        let mut keep = batch.len();
        for (index, envelope) in batch.iter().enumerate() {
            bytes += envelope.encoded_len();
            if bytes > self.limits.max_bytes && index > 0 {
                keep = index;
                break;
            }
        }
        for envelope in batch.drain(keep..).rev() {
            self.carry.push_front(envelope);
        }
    }
}

impl Stream for FrameBatcher {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let this = &mut *self;
        let mut batch = std::mem::take(&mut this.batch);
        if batch.capacity() == 0 {
            batch.reserve_exact(this.limits.max_envelopes);
        }
        this.fill_from_control(cx, &mut batch);
        while batch.len() < this.limits.max_envelopes {
            match this.carry.pop_front() {
                Some(envelope) => batch.push(envelope),
                None => break,
            }
        }
        let room = this.limits.max_envelopes.saturating_sub(batch.len());
        if room > 0 && (!this.data_closed || this.parked.is_some()) {
            this.fill_from_data(cx, &mut batch, room);
        }
        let granted = match &this.grants {
            Some(grants) => {
                let granted = grants.take_up_to(u32::MAX.into());
                if granted == 0 {
                    grants.poll_available(cx);
                }
                granted as u32
            }
            None => 0,
        };
        if batch.is_empty() && granted == 0 {
            this.batch = batch;
            return if this.data_closed && this.carry.is_empty() && this.parked.is_none() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        }
        this.enforce_byte_budget(&mut batch);
        Poll::Ready(Some(Frame {
            envelopes: batch,
            credit: granted,
        }))
    }
}

/// Whether `envelope` is paid for with credit: everything but heartbeats (the node's
/// own, answers to them, and barrier answers), which keep a stream alive and must not
/// wait for a consumer that has stopped granting.
fn costs_credit(envelope: &Envelope) -> bool {
    envelope.kind() != reef_proto::EnvelopeKind::Heartbeat
}

/// The receiving half of a queue is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueClosed;

/// Waits until a full `queue` has room for a batch: a quarter of it, at most 256 slots.
///
/// A producer that outpaces its consumer should resume once per batch, not once per
/// freed slot: waking on every slot makes producer and consumer alternate item by item,
/// a thread wake-up per envelope.
pub async fn room_for_batch<T>(queue: &mpsc::Sender<T>) -> Result<(), QueueClosed> {
    let room = (queue.max_capacity() / 4).clamp(1, 256);
    queue
        .reserve_many(room)
        .await
        .map(drop)
        .map_err(|_| QueueClosed)
}

/// Queues `item`, waiting with [`room_for_batch`] while `queue` is full. On error the
/// item is handed back.
pub async fn enqueue<T>(queue: &mpsc::Sender<T>, item: T) -> Result<(), (QueueClosed, T)> {
    let mut item = item;
    loop {
        match queue.try_send(item) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(back)) => return Err((QueueClosed, back)),
            Err(mpsc::error::TrySendError::Full(back)) => item = back,
        }
        if room_for_batch(queue).await.is_err() {
            return Err((QueueClosed, item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    fn envelope(id: u64, payload_len: usize) -> Envelope {
        Envelope {
            id,
            payload: vec![0u8; payload_len].into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn control_overtakes_data_and_batches_respect_limits() {
        let (control_tx, control_rx) = mpsc::channel(8);
        let (data_tx, data_rx) = mpsc::channel(64);
        for id in 0..10 {
            data_tx.send(envelope(id, 10)).await.unwrap();
        }
        control_tx.send(envelope(100, 0)).await.unwrap();
        let limits = FrameLimits {
            max_envelopes: 4,
            max_bytes: 1 << 20,
        };
        let mut frames = FrameBatcher::new(control_rx, data_rx, limits);
        let first = frames.next().await.unwrap();
        let ids: Vec<u64> = first.envelopes.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![100, 0, 1, 2]);
        drop(data_tx);
        let rest: Vec<u64> = frames
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flat_map(|f| f.envelopes.into_iter().map(|e| e.id))
            .collect();
        assert_eq!(rest, (3..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn byte_budget_splits_frames_but_never_starves_a_large_envelope() {
        let (_control_tx, control_rx) = mpsc::channel(1);
        let (data_tx, data_rx) = mpsc::channel(8);
        data_tx.send(envelope(1, 600)).await.unwrap();
        data_tx.send(envelope(2, 600)).await.unwrap();
        data_tx.send(envelope(3, 5000)).await.unwrap();
        drop(data_tx);
        let limits = FrameLimits {
            max_envelopes: 16,
            max_bytes: 1000,
        };
        let sizes: Vec<Vec<u64>> = FrameBatcher::new(control_rx, data_rx, limits)
            .map(|f| f.envelopes.iter().map(|e| e.id).collect())
            .collect()
            .await;
        assert_eq!(sizes, vec![vec![1], vec![2], vec![3]]);
    }

    #[tokio::test]
    async fn enqueue_waits_for_room_and_hands_back_on_close() {
        let (tx, mut rx) = mpsc::channel(8);
        for id in 0..8 {
            enqueue(&tx, envelope(id, 1)).await.unwrap();
        }
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { enqueue(&tx, envelope(8, 1)).await.map_err(|(_, e)| e.id) }
        });
        // Let it find the queue full and start waiting.
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        // Room for one is not enough to resume: it waits for a quarter of the queue.
        assert_eq!(rx.recv().await.unwrap().id, 0);
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        assert_eq!(rx.recv().await.unwrap().id, 1);
        assert_eq!(blocked.await.unwrap(), Ok(()));
        drop(rx);
        let (_, back) = enqueue(&tx, envelope(9, 1)).await.unwrap_err();
        assert_eq!(back.id, 9);
    }

    #[tokio::test]
    async fn data_waits_for_credit_and_grants_travel_in_frames() {
        let (_control_tx, control_rx) = mpsc::channel(1);
        let (data_tx, data_rx) = mpsc::channel(16);
        for id in 0..5 {
            data_tx.send(envelope(id, 1)).await.unwrap();
        }
        let credit = Credit::new(2);
        let grants = Credit::new(0);
        let mut frames = FrameBatcher::new(control_rx, data_rx, FrameLimits::default())
            .with_send_credit(credit.clone())
            .with_grants(grants.clone());
        let first = frames.next().await.unwrap();
        assert_eq!(first.envelopes.len(), 2, "only as many as the credit");
        assert_eq!(credit.available(), 0);
        let waiting = tokio::spawn(async move {
            let frame = frames.next().await.unwrap();
            (frame, frames)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no credit, no frame");
        grants.add(7);
        let (frame, mut frames) = waiting.await.unwrap();
        assert!(frame.envelopes.is_empty());
        assert_eq!(
            frame.credit, 7,
            "a grant travels alone when there is nothing else"
        );
        credit.add(10);
        let rest = frames.next().await.unwrap();
        assert_eq!(
            rest.envelopes.iter().map(|e| e.id).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(credit.available(), 7);
    }

    fn heartbeat(id: u64) -> Envelope {
        Envelope {
            id,
            kind: reef_proto::EnvelopeKind::Heartbeat as i32,
            ..Default::default()
        }
    }

    fn ids(frame: &Frame) -> Vec<u64> {
        frame.envelopes.iter().map(|e| e.id).collect()
    }

    #[tokio::test]
    async fn heartbeats_cost_no_credit_and_pass_at_zero_credit_but_never_overtake() {
        let (_control_tx, control_rx) = mpsc::channel(1);
        let (data_tx, data_rx) = mpsc::channel(16);
        let credit = Credit::new(3);
        let mut frames = FrameBatcher::new(control_rx, data_rx, FrameLimits::default())
            .with_send_credit(credit.clone());
        // Three barrier answers leave the credit as it was: a request still gets through.
        // (The node says so for every heartbeat it queues: `pass_heartbeat`.)
        for id in 1..=3 {
            data_tx.send(heartbeat(id)).await.unwrap();
            credit.pass_heartbeat();
        }
        data_tx.send(envelope(4, 1)).await.unwrap();
        assert_eq!(ids(&frames.next().await.unwrap()), [1, 2, 3, 4]);
        assert_eq!(credit.available(), 2);
        data_tx.send(envelope(5, 1)).await.unwrap();
        data_tx.send(envelope(6, 1)).await.unwrap();
        assert_eq!(ids(&frames.next().await.unwrap()), [5, 6]);
        assert_eq!(credit.available(), 0);

        // At zero credit a barrier's answer with nothing before it still travels.
        data_tx.send(heartbeat(7)).await.unwrap();
        credit.pass_heartbeat();
        assert_eq!(ids(&frames.next().await.unwrap()), [7]);
        // Behind an envelope that waits for credit, it waits too (it is a barrier).
        data_tx.send(envelope(8, 1)).await.unwrap();
        data_tx.send(heartbeat(9)).await.unwrap();
        credit.pass_heartbeat();
        let waiting = tokio::spawn(async move {
            let frame = frames.next().await.unwrap();
            (frame, frames)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no credit for 8, so nothing");
        credit.add(1);
        let (frame, mut frames) = waiting.await.unwrap();
        assert_eq!(ids(&frame), [8, 9]);
        assert_eq!(credit.available(), 0);
        // What waited for credit is counted when the stream closes.
        data_tx.send(envelope(10, 1)).await.unwrap();
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut frames).poll_next(cx))).await;
        assert!(polled.is_pending(), "10 waits for credit");
        assert_eq!(frames.close_and_count_unsent(), 1);
    }

    #[tokio::test]
    async fn unsent_envelopes_are_counted_on_close() {
        let (_control_tx, control_rx) = mpsc::channel(1);
        let (data_tx, data_rx) = mpsc::channel(8);
        for id in 0..3 {
            data_tx.send(envelope(id, 1)).await.unwrap();
        }
        let mut frames = FrameBatcher::new(control_rx, data_rx, FrameLimits::default());
        assert_eq!(frames.close_and_count_unsent(), 3);
        assert!(data_tx.send(envelope(9, 1)).await.is_err());
    }
}
