//! What a request carries beyond its payload: retries, the caller's deadline as it
//! propagates into nested requests, cancellation, and the callee's de-duplication of
//! retried requests.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use parking_lot::Mutex;
use reef_proto::{ATTEMPTS_LEFT_HEADER, Envelope};
use tokio::{sync::Notify, time::Instant};

/// Answers a callee remembers for de-duplication.
const DEDUP_ANSWERS: usize = 4096;
/// Payload bytes of remembered answers.
const DEDUP_BYTES: usize = 16 << 20;

/// How to make a request: [`crate::Client::request_with`].
///
/// ```
/// use std::time::Duration;
/// use reef_sdk::RequestOptions;
///
/// let options = RequestOptions::new(Duration::from_millis(500))
///     .retries(3, Duration::from_millis(100))
///     .header("tenant", "acme");
/// assert_eq!(options.retries, 3);
/// ```
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// How long each attempt waits for an answer (PROGRESS from the callee extends it).
    pub timeout: Duration,
    /// Attempts after the first, made on DEADLINE_EXCEEDED, UNAVAILABLE or
    /// RESOURCE_EXHAUSTED. Each retry carries the same id, so a callee that answered
    /// already answers again without running its handler twice.
    pub retries: u32,
    /// Pause before each retry.
    pub retry_interval: Duration,
    /// Envelope headers (routing keys, consistent-hash keys, trace context).
    pub headers: std::collections::BTreeMap<String, String>,
}

impl RequestOptions {
    /// One attempt with `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            retries: 0,
            retry_interval: Duration::from_millis(100),
            headers: Default::default(),
        }
    }

    /// Retries up to `retries` times, `interval` apart.
    pub fn retries(mut self, retries: u32, interval: Duration) -> Self {
        self.retries = retries;
        self.retry_interval = interval;
        self
    }

    /// Adds an envelope header.
    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// How [`crate::Client::send_with`] sends a message.
///
/// ```
/// use reef_sdk::SendOptions;
///
/// let options = SendOptions::default().header("room", "lobby").acknowledged();
/// assert!(options.acknowledged);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Envelope headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The payload's MIME type ([`crate::Message::content_type`]).
    pub content_type: String,
    /// Acknowledged mode, as [`crate::Client::send_acked`].
    pub acknowledged: bool,
}

impl SendOptions {
    /// Adds an envelope header.
    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sends in acknowledged mode.
    pub fn acknowledged(mut self) -> Self {
        self.acknowledged = true;
        self
    }
}

/// Whether the caller of a request still waits for it. A handler polls
/// [`Cancellation::is_cancelled`] or awaits [`Cancellation::cancelled`] (e.g. in a
/// `select!` beside its work) and stops early: its answer would be dropped anyway.
#[derive(Debug, Clone, Default)]
pub struct Cancellation(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancellation {
    /// Whether the caller gave up (its deadline passed, it cancelled or disconnected).
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Relaxed)
    }

    /// Completes once the caller gives up.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    fn cancel(&self) {
        self.0.cancelled.store(true, Relaxed);
        self.0.notify.notify_waiters();
    }
}

tokio::task_local! {
    /// The deadline of the request a handler is answering.
    static DEADLINE: Instant;
}

/// Runs `handler` with `deadline` as the budget of the requests it makes.
pub(crate) async fn with_deadline<F: Future>(deadline: Option<Instant>, handler: F) -> F::Output {
    match deadline {
        Some(deadline) => DEADLINE.scope(deadline, handler).await,
        None => handler.await,
    }
}

/// `timeout`, shortened to what is left of the deadline of the request being handled,
/// if any: a nested request cannot outlive the request it serves.
pub(crate) fn propagate_deadline(timeout: Duration) -> Duration {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .map_or(timeout, |left| {
            timeout.min(left.max(Duration::from_millis(1)))
        })
}

/// What a callee knows about a request it received, by (origin, id).
enum Served {
    /// Queued or running; the token says whether its caller still waits. `retried`:
    /// the caller may send it again, so its answer is remembered.
    Running { token: Cancellation, retried: bool },
    /// Answered with this envelope (kept to answer a retry the same way).
    Answered(Envelope),
}

/// What to do with an incoming request.
pub(crate) enum Admission {
    /// New: handle it.
    Handle,
    /// A retry of one still running: drop it, the first one's answer will do.
    Running,
    /// A retry of one answered: send this answer again.
    Answered(Envelope),
}

/// The callee side of de-duplication and cancellation.
#[derive(Default)]
pub(crate) struct ServedRequests {
    inner: Mutex<ServedInner>,
}

#[derive(Default)]
struct ServedInner {
    by_key: HashMap<(String, u64), Served>,
    /// Answered keys, oldest first, with their payload sizes.
    answered: VecDeque<((String, u64), usize)>,
    answered_bytes: usize,
}

impl ServedRequests {
    fn lock(&self) -> parking_lot::MutexGuard<'_, ServedInner> {
        self.inner.lock()
    }

    /// Decides on a REQUEST as it arrives. A retry of a request whose caller had given
    /// up is handled again. Only requests that say they may be retried (the
    /// attempts-left header) have their answers remembered, so a client that numbers
    /// its requests from 1 again after a restart is never answered from its past.
    pub(crate) fn admit(&self, request: &Envelope) -> Admission {
        let key = (request.origin.clone(), request.id);
        let retried = request.headers.contains_key(ATTEMPTS_LEFT_HEADER);
        let mut inner = self.lock();
        match inner.by_key.get(&key) {
            Some(Served::Running { token, .. }) if !token.is_cancelled() => Admission::Running,
            Some(Served::Answered(answer)) => Admission::Answered(answer.clone()),
            _ => {
                let token = Cancellation::default();
                inner.by_key.insert(key, Served::Running { token, retried });
                Admission::Handle
            }
        }
    }

    /// The cancellation token of a request admitted and not yet answered.
    pub(crate) fn token(&self, origin: &str, id: u64) -> Cancellation {
        match self.lock().by_key.get(&(origin.to_owned(), id)) {
            Some(Served::Running { token, .. }) => token.clone(),
            _ => Cancellation::default(),
        }
    }

    /// The caller gave up on request `id`.
    pub(crate) fn cancel(&self, origin: &str, id: u64) {
        let key = (origin.to_owned(), id);
        if let Some(Served::Running { token, .. }) = self.lock().by_key.get(&key) {
            token.cancel();
        }
    }

    /// Remembers `answer` for retries; a request that will not be retried, or was
    /// cancelled (a retry must run the handler again), is forgotten instead.
    pub(crate) fn answered(&self, origin: &str, id: u64, answer: &Envelope) {
        let key = (origin.to_owned(), id);
        let mut inner = self.lock();
        let remember = matches!(
            inner.by_key.get(&key),
            Some(Served::Running { token, retried: true }) if !token.is_cancelled()
        );
        if !remember {
            inner.by_key.remove(&key);
            return;
        }
        let size = answer.payload.len();
        inner
            .by_key
            .insert(key.clone(), Served::Answered(answer.clone()));
        inner.answered.push_back((key, size));
        inner.answered_bytes += size;
        while inner.answered.len() > DEDUP_ANSWERS || inner.answered_bytes > DEDUP_BYTES {
            let Some((old, size)) = inner.answered.pop_front() else {
                break;
            };
            inner.answered_bytes -= size;
            if matches!(inner.by_key.get(&old), Some(Served::Answered(_))) {
                inner.by_key.remove(&old);
            }
        }
    }

    /// Forgets a request that got no answer (its handler panicked).
    pub(crate) fn abandon(&self, origin: &str, id: u64) {
        let key = (origin.to_owned(), id);
        let mut inner = self.lock();
        if matches!(inner.by_key.get(&key), Some(Served::Running { .. })) {
            inner.by_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64) -> Envelope {
        Envelope {
            id,
            origin: "caller".into(),
            headers: [(ATTEMPTS_LEFT_HEADER.to_owned(), "2".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn answers_to_requests_that_are_not_retried_are_not_remembered() {
        let served = ServedRequests::default();
        let plain = Envelope {
            id: 1,
            origin: "caller".into(),
            ..Default::default()
        };
        assert!(matches!(served.admit(&plain), Admission::Handle));
        served.answered("caller", 1, &Envelope::default());
        assert!(matches!(served.admit(&plain), Admission::Handle));
    }

    #[test]
    fn retries_of_answered_and_running_requests_are_not_handled_again() {
        let served = ServedRequests::default();
        assert!(matches!(served.admit(&request(1)), Admission::Handle));
        assert!(matches!(served.admit(&request(1)), Admission::Running));
        let answer = Envelope {
            correlation_id: 1,
            payload: "done".into(),
            ..Default::default()
        };
        served.answered("caller", 1, &answer);
        match served.admit(&request(1)) {
            Admission::Answered(again) => assert_eq!(again.payload, "done"),
            _ => panic!("expected the remembered answer"),
        }
    }

    #[test]
    fn a_cancelled_request_is_handled_again_when_retried() {
        let served = ServedRequests::default();
        assert!(matches!(served.admit(&request(7)), Admission::Handle));
        let token = served.token("caller", 7);
        served.cancel("caller", 7);
        assert!(token.is_cancelled());
        assert!(matches!(served.admit(&request(7)), Admission::Handle));
        served.answered("caller", 7, &Envelope::default());
        assert!(matches!(served.admit(&request(7)), Admission::Answered(_)));
    }

    #[test]
    fn remembers_a_bounded_number_of_answers() {
        let served = ServedRequests::default();
        for id in 0..(DEDUP_ANSWERS as u64 + 10) {
            served.admit(&request(id));
            served.answered("caller", id, &Envelope::default());
        }
        assert!(matches!(served.admit(&request(0)), Admission::Handle));
        assert!(matches!(
            served.admit(&request(DEDUP_ANSWERS as u64 + 9)),
            Admission::Answered(_)
        ));
    }
}
