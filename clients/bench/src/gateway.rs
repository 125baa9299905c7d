//! The gateway figures: HTTP requests through `reef-gateway` to an echo container and
//! back (client → gateway → node → container → node → gateway → client), beside a plain
//! axum echo handler in this process, loaded by the same HTTP client in the same run;
//! and WebSocket messages echoed by a container through the gateway (frame → message
//! from the connection's address → the container sends it back to that address →
//! frame), beside a plain axum WebSocket echo handler, loaded by the same client.

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
use reef_sdk::{Client, ContainerOptions, Context, Handler, HandlerError, Message};

use crate::{node::BenchNode, report, routed::Routed};

/// Sizes of one run.
pub struct Sizes {
    pub requests: u64,
    pub in_flight: usize,
    pub latency_samples: u64,
    pub runs: usize,
    /// WebSocket messages echoed per run, over `ws_connections` connections.
    pub ws_messages: u64,
    pub ws_connections: usize,
}

/// WebSocket messages a connection may have sent and not yet seen echoed.
const WS_WINDOW: usize = 64;
/// The echo container behind the gateway's WebSocket route.
const WS_ECHO: &str = "ws-echo";

/// A `reef-gateway` process, killed when dropped.
struct GatewayProcess {
    child: Child,
    url: String,
    ws_url: String,
    _config: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `reef-gateway` from next to this executable, routing `POST /echo` to
    /// `echo` on `node`, and WebSockets on `/ws` (frames in acknowledged mode, the
    /// default) and `/ws-unacked` to [`WS_ECHO`].
    fn start(node: &BenchNode, echo: &str) -> anyhow::Result<Self> {
        let config = tempfile::tempdir()?;
        let file = config.path().join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                "[[http]]\nlisten = \"127.0.0.1:0\"\n[[http.route]]\nmethod = \"POST\"\npath = \"/echo\"\nto = \"{echo}\"\n\
                 [[http.websocket]]\npath = \"/ws\"\nto = \"{WS_ECHO}\"\n\
                 [[http.websocket]]\npath = \"/ws-unacked\"\nto = \"{WS_ECHO}\"\nacknowledged = false\n"
            ),
        )?;
        let program = std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("reef-gateway"))
            .filter(|path| path.is_file())
            .context("reef-gateway is not built next to reef-bench")?;
        let mut child =
            Command::new(&program)
                .arg("--config")
                .arg(&file)
                .env("REEF_NODE", &node.options.node)
                .env("REEF_CA", &node.options.ca)
                .envs(node.options.identity.iter().flat_map(|(cert, key)| {
                    [("REEF_CERT", cert.clone()), ("REEF_KEY", key.clone())]
                }))
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
            ws_url: format!("ws://{addr}/ws"),
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

/// A plain axum server in this process whose `POST /echo` returns the body and whose
/// WebSockets on `/ws` send every data frame back. Returns both URLs.
async fn plain_axum() -> anyhow::Result<(String, String)> {
    use axum::extract::ws::{Message as Frame, WebSocketUpgrade};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/echo", axum::routing::post(|body: Bytes| async { body }))
        .route(
            "/ws",
            axum::routing::get(|upgrade: WebSocketUpgrade| async {
                upgrade.on_upgrade(|mut socket| async move {
                    while let Some(Ok(frame)) = socket.recv().await {
                        if matches!(frame, Frame::Text(_) | Frame::Binary(_))
                            && socket.send(frame).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/echo"), format!("ws://{addr}/ws")))
}

/// Sends each WebSocket frame back to the connection it came from.
struct WsEcho;

impl Handler for WsEcho {
    async fn on_message(&mut self, ctx: &Context, message: Message) {
        if message.headers.get("ws.event").map(String::as_str) == Some("message") {
            let _ = ctx.client().send(&message.origin, message.payload).await;
        }
    }

    async fn on_request(&mut self, _: &Context, _: Message) -> Result<Bytes, HandlerError> {
        Ok(Bytes::new())
    }
}

/// Messages per second: `connections` WebSockets each send `messages / connections`
/// text frames, at most [`WS_WINDOW`] ahead of their echoes, until all came back.
async fn ws_load(
    url: &str,
    connections: usize,
    messages: u64,
    payload: &str,
) -> anyhow::Result<f64> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Frame;
    let per_connection = messages / connections as u64;
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(tokio_tungstenite::connect_async(url).await?.0);
    }
    let started = Instant::now();
    let workers: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let payload = payload.to_owned();
            tokio::spawn(async move {
                let (mut sink, mut stream) = socket.split();
                let window = Arc::new(tokio::sync::Semaphore::new(WS_WINDOW));
                let size = payload.len();
                let sending = {
                    let window = window.clone();
                    async move {
                        for _ in 0..per_connection {
                            window.acquire().await?.forget();
                            sink.send(Frame::text(payload.clone())).await?;
                        }
                        anyhow::Ok(sink)
                    }
                };
                let receiving = async {
                    for _ in 0..per_connection {
                        match stream.next().await {
                            Some(Ok(Frame::Text(text))) if text.len() == size => {
                                window.add_permits(1)
                            }
                            other => bail!("expected the echo, got {other:?}"),
                        }
                    }
                    Ok(())
                };
                let (sink, ()) = tokio::try_join!(sending, receiving)?;
                let mut socket = sink.reunite(stream)?;
                let _ = socket.close(None).await;
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok((per_connection * connections as u64) as f64 / started.elapsed().as_secs_f64())
}

/// Starts [`WsEcho`] on `node` and waits until it answers.
async fn start_ws_echo(node: &BenchNode) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let options = ContainerOptions::new(WS_ECHO, node.options.clone());
    let container = tokio::spawn(async move {
        if let Err(error) = reef_sdk::run(options, WsEcho).await {
            eprintln!("reef-bench: {WS_ECHO}: {error}");
        }
    });
    let client = Client::connect(&node.options).await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while client
        .request(WS_ECHO, "", std::time::Duration::from_secs(1))
        .await
        .is_err()
    {
        ensure!(Instant::now() < deadline, "{WS_ECHO} did not attach");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    client.close().await?;
    Ok(container)
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
    let ws_echo = start_ws_echo(node).await?;
    let gateway = GatewayProcess::start(node, routed.echo())?;
    let (plain, plain_ws) = plain_axum().await?;
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

    let text = String::from_utf8_lossy(&payload).into_owned();
    let connections = sizes.ws_connections;
    ws_load(&plain_ws, connections, 1_000, &text).await?;
    ws_load(&gateway.ws_url, connections, 1_000, &text).await?;
    let axum_ws = report::median_of(sizes.runs, || {
        ws_load(&plain_ws, connections, sizes.ws_messages, &text)
    })
    .await?;
    report::rate("ws_plain_axum_rate", &axum_ws, "msg/s");
    let gateway_ws = report::median_of(sizes.runs, || {
        ws_load(&gateway.ws_url, connections, sizes.ws_messages, &text)
    })
    .await?;
    report::rate("ws_gateway_rate", &gateway_ws, "msg/s");
    report::ratio("ws_gateway_vs_plain_axum", &gateway_ws, &axum_ws);
    let unacked = gateway.ws_url.replace("/ws", "/ws-unacked");
    let gateway_unacked = report::median_of(sizes.runs, || {
        ws_load(&unacked, connections, sizes.ws_messages, &text)
    })
    .await?;
    report::rate("ws_gateway_unacked_rate", &gateway_unacked, "msg/s");
    report::ratio(
        "ws_gateway_unacked_vs_plain_axum",
        &gateway_unacked,
        &axum_ws,
    );
    drop(gateway);
    ws_echo.abort();
    routed.stop().await;
    Ok(())
}
