//! What every browser sees live, gathered once per dashboard: a sample of the node each
//! second (rates, queues, restarts, latency; `reef_sdk::sample`) and the node's
//! lifecycle events as they happen. Recent events and restarts are kept for the views
//! that show history.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use reef_proto::{
    ContainerEventKind, LifecyclePhase, WatchRequest, supervisor_client::SupervisorClient,
};
use reef_sdk::ConnectOptions;
use reef_sdk::sample::{self, Sample};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tonic::transport::Channel;

/// How often the node is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Lifecycle events kept for the container views.
const RECENT_EVENTS: usize = 1_000;
/// Restarts kept for the history chart.
const RESTART_MARKS: usize = 10_000;
/// How far back the live view's restart history goes.
const RESTART_WINDOW_MS: u64 = 30 * 60 * 1000;
/// Waiting before asking a node that did not answer again.
const RETRY: Duration = Duration::from_secs(1);

/// One lifecycle event, as browsers get it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The container.
    pub alias: String,
    /// `RESTART`, `FAIL`, `ATTACHED`…
    pub kind: String,
    /// `before`, `after` or empty.
    pub phase: &'static str,
    /// Why, for people.
    pub reason: String,
    /// The container's state after it.
    pub state: &'static str,
}

/// A restart the sampler saw: `count` more restarts of `alias` by `at_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct RestartMark {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The container.
    pub alias: String,
    /// Restarts since the previous sample.
    pub count: u32,
}

/// The live view: the node and its tree over the last second, and the restarts of
/// the last half hour.
#[derive(Debug, Serialize)]
pub struct View {
    /// When it was taken (Unix milliseconds).
    pub at_ms: u64,
    /// The node over the last interval.
    pub node: sample::NodeRates,
    /// The tree in order, with each container's rates.
    pub containers: Vec<sample::ContainerRates>,
    /// Restarts in the last half hour.
    pub restarts: Vec<RestartMark>,
}

/// The sampler and the event follower; dropping this stops them.
#[derive(Debug)]
pub struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The shared live state of one dashboard.
#[derive(Debug)]
pub struct Live {
    options: ConnectOptions,
    channel: tokio::sync::OnceCell<Channel>,
    /// The latest view, serialised once for every browser.
    view: watch::Sender<Option<Arc<str>>>,
    events: broadcast::Sender<Arc<str>>,
    recent: Mutex<VecDeque<Event>>,
    restarts: Mutex<VecDeque<RestartMark>>,
}

impl Live {
    /// Starts sampling and following the node that `options` reach, until the
    /// returned [`Running`] is dropped.
    pub fn start(options: ConnectOptions) -> (Arc<Self>, Running) {
        let live = Arc::new(Self {
            options,
            channel: tokio::sync::OnceCell::new(),
            view: watch::Sender::new(None),
            events: broadcast::Sender::new(256),
            recent: Mutex::new(VecDeque::new()),
            restarts: Mutex::new(VecDeque::new()),
        });
        let running = Running(vec![
            tokio::spawn(live.clone().sample_forever()),
            tokio::spawn(live.clone().follow_forever()),
        ]);
        (live, running)
    }

    /// The latest view, then each new one.
    pub fn views(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.view.subscribe()
    }

    /// Lifecycle events from now on (JSON).
    pub fn events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Recent lifecycle events of `alias`, oldest first.
    pub fn recent_events(&self, alias: &str) -> Vec<Event> {
        let recent = self.recent.lock();
        recent
            .iter()
            .filter(|event| event.alias == alias)
            .cloned()
            .collect()
    }

    /// The one connection to the node, made on first use; tonic reconnects it when it
    /// breaks, so every page and the sampler share it instead of a handshake each.
    pub async fn channel(&self) -> Result<Channel, reef_sdk::Error> {
        self.channel
            .get_or_try_init(|| self.options.connect())
            .await
            .cloned()
    }

    /// A client of the node's Supervisor.
    pub async fn supervisor(&self) -> Result<SupervisorClient<Channel>, reef_sdk::Error> {
        Ok(SupervisorClient::new(self.channel().await?))
    }

    async fn sample_forever(self: Arc<Self>) {
        loop {
            let Ok(mut supervisor) = self.supervisor().await else {
                tokio::time::sleep(RETRY).await;
                continue;
            };
            let Ok(mut previous) = Sample::take(&mut supervisor).await else {
                tokio::time::sleep(RETRY).await;
                continue;
            };
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Ok(current) = Sample::take(&mut supervisor).await else {
                    break;
                };
                self.publish(&previous, &current);
                previous = current;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    fn publish(&self, previous: &Sample, current: &Sample) {
        let (node, containers) = sample::compare(previous, current);
        let at_ms = reef_core::unix_ms(SystemTime::now());
        let restarts = {
            let mut marks = self.restarts.lock();
            let before = previous.containers();
            for row in &containers {
                let then = before
                    .get(row.alias.as_str())
                    .and_then(|c| c.supervised.as_ref())
                    .map(|s| s.restarts);
                let (Some(now), Some(then)) = (row.restarts, then) else {
                    continue;
                };
                if now > then {
                    marks.push_back(RestartMark {
                        at_ms,
                        alias: row.alias.clone(),
                        count: now - then,
                    });
                }
            }
            while marks.len() > RESTART_MARKS {
                marks.pop_front();
            }
            let since = at_ms.saturating_sub(RESTART_WINDOW_MS);
            marks.iter().filter(|m| m.at_ms >= since).cloned().collect()
        };
        let view = View {
            at_ms,
            node,
            containers,
            restarts,
        };
        match serde_json::to_string(&view) {
            Ok(json) => {
                self.view.send_replace(Some(json.into()));
            }
            Err(error) => tracing::warn!(%error, "the dashboard's view did not serialise"),
        }
    }

    async fn follow_forever(self: Arc<Self>) {
        loop {
            if let Ok(mut supervisor) = self.supervisor().await
                && let Ok(response) = supervisor.watch(WatchRequest { snapshot: false }).await
            {
                let mut events = response.into_inner();
                while let Ok(Some(event)) = events.message().await {
                    self.record(event);
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    fn record(&self, event: reef_proto::ContainerEvent) {
        let event = Event {
            at_ms: event.at_unix_ms,
            alias: event
                .container
                .as_ref()
                .map(|c| c.alias.clone())
                .unwrap_or_default(),
            kind: ContainerEventKind::try_from(event.kind)
                .map_or("UNKNOWN", |k| k.as_str_name())
                .trim_start_matches("CONTAINER_EVENT_KIND_")
                .to_owned(),
            phase: match LifecyclePhase::try_from(event.phase) {
                Ok(LifecyclePhase::Before) => "before",
                Ok(LifecyclePhase::After) => "after",
                _ => "",
            },
            reason: event.reason,
            state: event.container.as_ref().map_or("-", sample::state_name),
        };
        if let Ok(json) = serde_json::to_string(&event) {
            let _ = self.events.send(json.into());
        }
        let mut recent = self.recent.lock();
        recent.push_back(event);
        while recent.len() > RECENT_EVENTS {
            recent.pop_front();
        }
    }
}
