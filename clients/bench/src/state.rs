//! State figures: durable puts (one at a time, 64 in flight, and batched 100 to a
//! transaction), gets, and watch fan-out latency to 100 watchers, for reef's embedded
//! store (through reefd over TLS) and for etcd (its own gRPC API, plaintext) in the same
//! run. Both keep their data in a temporary directory on the same disk.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use reef_proto as wire;
use reef_sdk::{ConnectOptions, state::StateClient};
use reef_state::etcd_v3::etcdserverpb as etcd;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{MEASUREMENT_TIMEOUT, node::BenchNode, report};

/// How much of each workload one run does.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub sequential_puts: u64,
    pub concurrent_puts: u64,
    pub batched_puts: u64,
    pub gets: u64,
    pub watch_rounds: u64,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        match quick {
            true => Self {
                sequential_puts: 200,
                concurrent_puts: 2_000,
                batched_puts: 10_000,
                gets: 2_000,
                watch_rounds: 20,
            },
            false => Self {
                sequential_puts: 2_000,
                concurrent_puts: 50_000,
                batched_puts: 200_000,
                gets: 50_000,
                watch_rounds: 500,
            },
        }
    }
}

const IN_FLIGHT: u64 = 64;
const BATCH: u64 = 100;
const BATCHES_IN_FLIGHT: u64 = 8;
const WATCHERS: usize = 100;

/// A store under test.
#[derive(Clone)]
enum Store {
    // (Boxed: the options are large beside the etcd variant.)
    Reef(
        wire::state_client::StateClient<Channel>,
        Box<ConnectOptions>,
    ),
    Etcd(Channel, String),
}

impl Store {
    async fn connect_reef(options: &ConnectOptions) -> anyhow::Result<Self> {
        let client = StateClient::connect(options).await?.raw();
        Ok(Store::Reef(client, Box::new(options.clone())))
    }

    async fn connect_etcd(endpoint: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(endpoint.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(Store::Etcd(channel, endpoint.to_owned()))
    }

    /// The same store over a connection of its own, as a separate client would have.
    async fn reconnect(&self) -> anyhow::Result<Self> {
        match self {
            Store::Reef(_, options) => Self::connect_reef(options).await,
            Store::Etcd(_, endpoint) => Self::connect_etcd(endpoint).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Store::Reef(..) => "state",
            Store::Etcd(..) => "etcd",
        }
    }

    fn etcd_key(key: &str) -> Vec<u8> {
        format!("/bench/{key}").into_bytes()
    }

    async fn put(&self, key: &str, value: Bytes) -> anyhow::Result<()> {
        match self {
            Store::Reef(client, _) => {
                client
                    .clone()
                    .put(wire::PutRequest {
                        namespace: "bench".into(),
                        key: key.into(),
                        value,
                        ..Default::default()
                    })
                    .await?;
            }
            Store::Etcd(channel, _) => {
                etcd::kv_client::KvClient::new(channel.clone())
                    .put(etcd::PutRequest {
                        key: Self::etcd_key(key),
                        value: value.to_vec(),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn put_batch(&self, keys: Vec<String>, value: Bytes) -> anyhow::Result<()> {
        match self {
            Store::Reef(client, _) => {
                let ops = keys
                    .into_iter()
                    .map(|key| wire::TxnOp {
                        op: Some(wire::txn_op::Op::Put(wire::TxnPut {
                            key,
                            value: value.clone(),
                            owner: String::new(),
                        })),
                    })
                    .collect();
                let done = client
                    .clone()
                    .txn(wire::TxnRequest {
                        namespace: "bench".into(),
                        compares: Vec::new(),
                        ops,
                    })
                    .await?;
                anyhow::ensure!(done.into_inner().succeeded, "batch not applied");
            }
            Store::Etcd(channel, _) => {
                let success = keys
                    .iter()
                    .map(|key| etcd::RequestOp {
                        request: Some(etcd::request_op::Request::RequestPut(etcd::PutRequest {
                            key: Self::etcd_key(key),
                            value: value.to_vec(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                etcd::kv_client::KvClient::new(channel.clone())
                    .txn(etcd::TxnRequest {
                        compare: Vec::new(),
                        success,
                        failure: Vec::new(),
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<usize> {
        Ok(match self {
            Store::Reef(client, _) => client
                .clone()
                .get(wire::GetRequest {
                    namespace: "bench".into(),
                    key: key.into(),
                })
                .await?
                .into_inner()
                .kv
                .map_or(0, |kv| kv.value.len()),
            Store::Etcd(channel, _) => etcd::kv_client::KvClient::new(channel.clone())
                .range(etcd::RangeRequest {
                    key: Self::etcd_key(key),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .kvs
                .first()
                .map_or(0, |kv| kv.value.len()),
        })
    }

    /// Starts a watcher on `watch/`: it records, for each event, the latency from the
    /// timestamp in the value (nanoseconds since `epoch`), counts it and wakes `arrived`.
    async fn watcher(
        &self,
        epoch: Instant,
        latencies: Arc<parking_lot::Mutex<Histogram<u64>>>,
        received: Arc<AtomicU64>,
        arrived: Arc<Notify>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let record = move |value: &[u8]| {
            let sent: u64 = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let now = epoch.elapsed().as_nanos() as u64;
            let _ = latencies.lock().record(now.saturating_sub(sent).max(1));
            received.fetch_add(1, Ordering::Release);
            arrived.notify_one();
        };
        Ok(match self {
            Store::Reef(client, _) => {
                let mut stream = client
                    .clone()
                    .watch(wire::WatchKeysRequest {
                        namespace: "bench".into(),
                        prefix: "watch/".into(),
                        start_revision: 0,
                    })
                    .await?
                    .into_inner();
                stream.next().await.context("watch established")??;
                tokio::spawn(async move {
                    while let Some(Ok(response)) = stream.next().await {
                        for event in response.events {
                            if let Some(kv) = event.kv {
                                record(&kv.value);
                            }
                        }
                    }
                })
            }
            Store::Etcd(channel, _) => {
                let key = Self::etcd_key("watch/");
                let mut end = key.clone();
                *end.last_mut().expect("key") += 1;
                let (requests, request_stream) = tokio::sync::mpsc::channel(1);
                requests
                    .send(etcd::WatchRequest {
                        request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                            etcd::WatchCreateRequest {
                                key,
                                range_end: end,
                                ..Default::default()
                            },
                        )),
                    })
                    .await?;
                let mut stream = etcd::watch_client::WatchClient::new(channel.clone())
                    .watch(tokio_stream::wrappers::ReceiverStream::new(request_stream))
                    .await?
                    .into_inner();
                stream.next().await.context("etcd watch created")??;
                tokio::spawn(async move {
                    let _requests = requests;
                    while let Some(Ok(response)) = stream.next().await {
                        for event in response.events {
                            if let Some(kv) = event.kv {
                                record(&kv.value);
                            }
                        }
                    }
                })
            }
        })
    }
}

/// `count` operations, `in_flight` at a time; returns operations per second.
async fn concurrently<F, Fut>(count: u64, in_flight: u64, op: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let next = next.clone();
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                op(i).await?;
            }
        }));
    }
    for worker in workers {
        tokio::time::timeout(MEASUREMENT_TIMEOUT, worker).await???;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Every figure for one store, each the median of `runs`.
struct Figures {
    sequential: Vec<f64>,
    sequential_latency: Histogram<u64>,
    concurrent: Vec<f64>,
    batched: Vec<f64>,
    gets: Vec<f64>,
    /// 100 watchers sharing one connection.
    watch_shared: Histogram<u64>,
    /// 100 watchers with a connection each (100 clients).
    watch_apart: Histogram<u64>,
}

async fn measure(store: &Store, sizes: Sizes, runs: usize) -> anyhow::Result<Figures> {
    let value = Bytes::from(vec![b'v'; 100]);
    let mut sequential_latency = report::histogram();
    let mut sequential = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        for _ in 0..sizes.sequential_puts {
            let one = Instant::now();
            store.put("single", value.clone()).await?;
            sequential_latency.record(one.elapsed().as_micros().max(1) as u64)?;
        }
        sequential.push(sizes.sequential_puts as f64 / started.elapsed().as_secs_f64());
    }
    sequential.sort_by(f64::total_cmp);
    let concurrent = report::median_of(runs, || {
        let (store, value) = (store.clone(), value.clone());
        concurrently(sizes.concurrent_puts, IN_FLIGHT, move |i| {
            let (store, value) = (store.clone(), value.clone());
            async move { store.put(&format!("key/{}", i % 10_000), value).await }
        })
    })
    .await?;
    let batched = report::median_of(runs, || {
        let (store, value) = (store.clone(), value.clone());
        let batches = sizes.batched_puts / BATCH;
        async move {
            let rate = concurrently(batches, BATCHES_IN_FLIGHT, move |b| {
                let (store, value) = (store.clone(), value.clone());
                let keys = (0..BATCH)
                    .map(|i| format!("batch/{}", (b * BATCH + i) % 50_000))
                    .collect();
                async move { store.put_batch(keys, value).await }
            })
            .await?;
            Ok(rate * BATCH as f64)
        }
    })
    .await?;
    let gets = report::median_of(runs, || {
        let store = store.clone();
        concurrently(sizes.gets, IN_FLIGHT, move |i| {
            let store = store.clone();
            async move {
                let found = store.get(&format!("key/{}", i % 10_000)).await?;
                anyhow::ensure!(found == 100, "key/{} missing", i % 10_000);
                Ok(())
            }
        })
    })
    .await?;
    let watch_shared = watch_fan_out(store, sizes.watch_rounds, false).await?;
    let watch_apart = watch_fan_out(store, sizes.watch_rounds, true).await?;
    Ok(Figures {
        sequential,
        sequential_latency,
        concurrent,
        batched,
        gets,
        watch_shared,
        watch_apart,
    })
}

/// One put at a time to a key 100 watchers watch; the next put waits until every watcher
/// has seen the previous one, so each latency is a quiet-system fan-out. The watchers
/// share the writer's connection, or (`apart`) each has its own, like 100 clients.
async fn watch_fan_out(store: &Store, rounds: u64, apart: bool) -> anyhow::Result<Histogram<u64>> {
    let epoch = Instant::now();
    let latencies = Arc::new(parking_lot::Mutex::new(report::histogram_ns()));
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(Notify::new());
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let watching = match apart {
            true => store.reconnect().await?,
            false => store.clone(),
        };
        watchers.push(
            watching
                .watcher(epoch, latencies.clone(), received.clone(), arrived.clone())
                .await?,
        );
    }
    for round in 1..=rounds {
        let sent = epoch.elapsed().as_nanos() as u64;
        store.put("watch/key", sent.to_string().into()).await?;
        let all = round * WATCHERS as u64;
        tokio::time::timeout(Duration::from_secs(10), async {
            while received.load(Ordering::Acquire) < all {
                arrived.notified().await;
            }
        })
        .await
        .with_context(|| format!("{} watchers did not all see round {round}", store.name()))?;
    }
    for watcher in watchers {
        watcher.abort();
    }
    let histogram = latencies.lock().clone();
    Ok(histogram)
}

fn print(name: &str, figures: &Figures) {
    report::rate(
        &format!("{name}_sequential_put_rate"),
        &figures.sequential,
        "put/s",
    );
    report::latency(
        &format!("{name}_sequential_put"),
        &figures.sequential_latency,
    );
    report::rate(
        &format!("{name}_concurrent_put_rate"),
        &figures.concurrent,
        "put/s",
    );
    report::rate(
        &format!("{name}_batched_put_rate"),
        &figures.batched,
        "put/s",
    );
    report::rate(&format!("{name}_get_rate"), &figures.gets, "get/s");
    report::latency_ns(
        &format!("{name}_watch_fanout{WATCHERS}_shared"),
        &figures.watch_shared,
    );
    report::latency_ns(
        &format!("{name}_watch_fanout{WATCHERS}_apart"),
        &figures.watch_apart,
    );
}

/// Measures reef's embedded store through `node`, then etcd if it is installed.
pub async fn run(node: &BenchNode, sizes: Sizes, runs: usize) -> anyhow::Result<()> {
    let reef = Store::connect_reef(&node.options).await?;
    let ours = measure(&reef, sizes, runs).await?;
    print("state", &ours);
    let etcd = match reef_tests::LocalEtcd::start() {
        Ok(etcd) => etcd,
        Err(why) => {
            println!("# etcd figures skipped: {why}");
            return Ok(());
        }
    };
    let store = Store::connect_etcd(&etcd.endpoint).await?;
    // etcd answers once it has elected itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.put("ready", Bytes::from_static(b"1")).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "etcd did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let theirs = measure(&store, sizes, runs).await?;
    print("etcd", &theirs);
    report::ratio(
        "state_sequential_put_vs_etcd",
        &ours.sequential,
        &theirs.sequential,
    );
    report::ratio(
        "state_concurrent_put_vs_etcd",
        &ours.concurrent,
        &theirs.concurrent,
    );
    report::ratio("state_batched_put_vs_etcd", &ours.batched, &theirs.batched);
    report::ratio("state_get_vs_etcd", &ours.gets, &theirs.gets);
    for (shape, ours, theirs) in [
        ("shared", &ours.watch_shared, &theirs.watch_shared),
        ("apart", &ours.watch_apart, &theirs.watch_apart),
    ] {
        for quantile in [0.5, 0.99] {
            report::metric(
                &format!("state_watch_{shape}_p{}_vs_etcd", (quantile * 100.0) as u32),
                ours.value_at_quantile(quantile) as f64
                    / theirs.value_at_quantile(quantile).max(1) as f64,
                "ratio (lower is better)",
            );
        }
    }
    Ok(())
}
