//! The gateway figures: HTTP requests through `reef-gateway` to an echo container and
//! back (client → gateway → node → container → node → gateway → client), beside a plain
//! axum echo handler in this process, loaded by the same HTTP client in the same run.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;

use crate::{node::BenchNode, report, routed::Routed};

/// Sizes of one run.
pub struct Sizes {
    pub requests: u64,
    pub in_flight: usize,
    pub latency_samples: u64,
    pub runs: usize,
}

/// A `reef-gateway` process, killed when dropped.
struct GatewayProcess {
    child: Child,
    url: String,
    _config: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `reef-gateway` from next to this executable, routing `POST /echo` to
    /// `echo` on `node`.
    fn start(node: &BenchNode, echo: &str) -> anyhow::Result<Self> {
        let config = tempfile::tempdir()?;
        let file = config.path().join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                "[[http]]\nlisten = \"127.0.0.1:0\"\n[[http.route]]\nmethod = \"POST\"\npath = \"/echo\"\nto = \"{echo}\"\n"
            ),
        )?;
        let program = std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("reef-gateway"))
            .filter(|path| path.is_file())
            .context("reef-gateway is not built next to reef-bench")?;
        let mut child = Command::new(&program)
            .arg("--config")
            .arg(&file)
            .env("REEF_NODE", &node.options.node)
            .env("REEF_CA", &node.options.ca)
            .env("REEF_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("gateway stdout")?).read_line(&mut line)?;
        let Some(addr) = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("http="))
        else {
            let _ = child.kill();
            bail!("reef-gateway did not report ready: {line:?}");
        };
        Ok(Self {
            url: format!("http://{addr}/echo"),
            child,
            _config: config,
        })
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain axum server in this process whose `POST /echo` returns the body.
async fn plain_axum() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/echo", axum::routing::post(|body: Bytes| async { body }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/echo"))
}

/// Requests per second: `in_flight` workers each posting `payload` and checking the
/// echo, until `requests` are answered.
async fn load(
    http: &reqwest::Client,
    url: &str,
    requests: u64,
    in_flight: usize,
    payload: Bytes,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (http, url, next, payload) =
                (http.clone(), url.to_owned(), next.clone(), payload.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let response = http.post(&url).body(payload.clone()).send().await?;
                    ensure!(response.status() == 200, "HTTP {}", response.status());
                    ensure!(response.bytes().await? == payload, "the echo differs");
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

/// One request at a time, `samples` times.
async fn latency(
    http: &reqwest::Client,
    url: &str,
    samples: u64,
    payload: Bytes,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut histogram = report::histogram();
    for _ in 0..samples {
        let started = Instant::now();
        let response = http.post(url).body(payload.clone()).send().await?;
        ensure!(response.status() == 200, "HTTP {}", response.status());
        response.bytes().await?;
        histogram.record(started.elapsed().as_micros() as u64)?;
    }
    Ok(histogram)
}

pub async fn run(node: &BenchNode, sizes: &Sizes, payload: Bytes) -> anyhow::Result<()> {
    let routed = Routed::start_across(node, node, "http").await?;
    let gateway = GatewayProcess::start(node, routed.echo())?;
    let plain = plain_axum().await?;
    let http = reqwest::Client::new();
    // Warm both paths (connections, the gateway's route to the container).
    load(&http, &plain, 100, 4, payload.clone()).await?;
    load(&http, &gateway.url, 100, 4, payload.clone()).await?;

    let axum_rate = report::median_of(sizes.runs, || {
        load(
            &http,
            &plain,
            sizes.requests,
            sizes.in_flight,
            payload.clone(),
        )
    })
    .await?;
    report::rate("http_plain_axum_rate", &axum_rate, "req/s");
    let gateway_rate = report::median_of(sizes.runs, || {
        load(
            &http,
            &gateway.url,
            sizes.requests,
            sizes.in_flight,
            payload.clone(),
        )
    })
    .await?;
    report::rate("http_gateway_rate", &gateway_rate, "req/s");
    report::ratio("http_gateway_vs_plain_axum", &gateway_rate, &axum_rate);
    let axum_latency = latency(&http, &plain, sizes.latency_samples, payload.clone()).await?;
    report::latency("http_plain_axum", &axum_latency);
    let gateway_latency =
        latency(&http, &gateway.url, sizes.latency_samples, payload.clone()).await?;
    report::latency("http_gateway", &gateway_latency);
    drop(gateway);
    routed.stop().await;
    Ok(())
}
