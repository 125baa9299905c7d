//! The dashboard's HTTP surface: the page and its assets, the login, the live stream,
//! and JSON views of a container, dead letters and state, plus the actions.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use axum::{
    Form, Json, Router,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use reef_proto::{
    self as wire, DeadLettersRequest, DestroyRequest, LogsRequest, RestartRequest, StartRequest,
    StopRequest, TreeRequest, state_client::StateClient,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{
    StreamExt as _,
    wrappers::{BroadcastStream, WatchStream},
};

use crate::{
    Dashboard, assets,
    auth::{
        self, COOKIE, LoginThrottle, Refusal, Sessions, Viewer, WRONG_TOKEN_PAUSE, Writer, refusal,
    },
    listener::Peer,
    live::Live,
};

/// Live streams (the tree, state watches) open at once, over all browsers.
const MAX_STREAMS: usize = 64;
/// The log tail a container view shows.
const LOG_TAIL_BYTES: u64 = 16 << 10;
/// A call to the node on behalf of a page.
const NODE_CALL: Duration = Duration::from_secs(10);
/// Keys a state view lists; values are cut at `VALUE_PREVIEW` bytes.
const STATE_KEYS: usize = 500;
const VALUE_PREVIEW: usize = 512;
/// Dead letters a page lists.
const DEAD_LETTERS: u32 = 200;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    token: String,
    /// Whether logins may act on containers.
    pub writes: bool,
    /// Logged-in sessions.
    pub sessions: Sessions,
    live: Arc<Live>,
    streams: Arc<Semaphore>,
    /// The pause after a wrong token, per client address.
    logins: LoginThrottle,
}

impl AppState {
    /// The state of a dashboard that shows `live`.
    pub fn new(dashboard: Dashboard, live: Arc<Live>) -> Self {
        Self {
            token: dashboard.token,
            writes: dashboard.writes,
            sessions: Sessions::default(),
            live,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            logins: LoginThrottle::default(),
        }
    }
}

/// Every route of the dashboard.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(assets::page))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/api/whoami", get(whoami))
        .route("/api/live", get(live))
        .route("/api/containers/{alias}", get(container))
        .route("/api/containers/{alias}/{action}", post(act))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/state/{namespace}", get(state_list))
        .route("/api/state/{namespace}/watch", get(state_watch))
        .with_state(state)
        .layer(axum::middleware::map_response(secure_headers))
}

/// No caching of answers, no framing, no scripts or styles from anywhere else.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(form): Form<LoginForm>,
) -> Response {
    let turn = state.logins.turn(peer.addr.ip());
    let one_at_a_time = turn.lock().await;
    if !auth::token_matches(&form.token, &state.token) {
        tracing::warn!(peer = %peer.addr, "dashboard login with a wrong token");
        // Guessing costs time: at most two wrong tokens a second from one address.
        // Another address (the owner's) is not held up by it.
        tokio::time::sleep(WRONG_TOKEN_PAUSE).await;
        return Redirect::to("/?login=failed").into_response();
    }
    drop(one_at_a_time);
    match state.sessions.open() {
        Ok(id) => {
            let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(error) => refusal(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn logout(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(id) = auth::session_cookie(&headers) {
        state.sessions.close(id);
    }
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, expired)], Redirect::to("/")).into_response()
}

async fn whoami(viewer: Viewer) -> Json<Value> {
    Json(json!({ "writes": viewer.writes }))
}

/// A slot for one live stream, or 503 when every slot is taken.
fn stream_slot(state: &AppState) -> Result<OwnedSemaphorePermit, Refusal> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many live views open (limit {MAX_STREAMS})"),
        )
    })
}

/// Server-sent events: `view` each second (the tree with its rates), `lifecycle` for
/// each event as it happens.
async fn live(_: Viewer, State(state): State<Arc<AppState>>) -> Result<Response, Refusal> {
    let slot = stream_slot(&state)?;
    let views = WatchStream::new(state.live.views())
        .filter_map(|view| view)
        .map(|json| SseEvent::default().event("view").data(&*json));
    let events = BroadcastStream::new(state.live.events())
        .filter_map(Result::ok)
        .map(|json| SseEvent::default().event("lifecycle").data(&*json));
    let stream = views.merge(events).map(move |event| {
        let _slot = &slot;
        Ok::<_, Infallible>(event)
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A failed call to the node, as the page shows it.
fn node_error(error: impl std::fmt::Display) -> Refusal {
    refusal(StatusCode::BAD_GATEWAY, format!("the node: {error}"))
}

/// One container: what the node knows, its recent events, its log tail, its policy.
async fn container(
    _: Viewer,
    State(state): State<Arc<AppState>>,
    Path(alias): Path<String>,
) -> Result<Json<Value>, Refusal> {
    let mut supervisor = state.live.supervisor().await.map_err(node_error)?;
    let tree = node_call(NODE_CALL, supervisor.tree(TreeRequest {})).await?;
    let containers = reef_sdk::sample::containers_in(&tree.roots);
    let Some(info) = containers.get(alias.as_str()) else {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("no container {alias:?}"),
        ));
    };
    let logs = match info
        .supervised
        .as_ref()
        .is_some_and(|s| s.kind == "process")
    {
        true => log_tail(&mut supervisor, &alias).await,
        false => String::new(),
    };
    Ok(Json(json!({
        "alias": info.alias,
        "name": info.name,
        "parent": info.parent,
        "pid": info.pid,
        "endpoint": info.endpoint,
        "labels": info.labels,
        "attached": info.attached,
        "state": reef_sdk::sample::state_name(info),
        "supervised": info.supervised.as_ref().map(supervised_json),
        "events": state.live.recent_events(&alias),
        "logs": logs,
    })))
}

fn supervised_json(supervised: &wire::SupervisedInfo) -> Value {
    let definition = supervised.definition.as_ref();
    let policy = definition.and_then(|d| d.policy.as_ref());
    let command = definition.and_then(|d| match &d.kind {
        Some(wire::container_definition::Kind::Process(process)) => Some(
            std::iter::once(process.command.clone())
                .chain(process.args.clone())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Some(wire::container_definition::Kind::Task(task)) => {
            Some(format!("task in {}", task.host))
        }
        None => None,
    });
    json!({
        "kind": supervised.kind,
        "restarts": supervised.restarts,
        "started_at_ms": supervised.started_at_unix_ms,
        "activity": supervised.activity,
        "last_failure": supervised.last_failure,
        "last_exit": supervised.last_exit,
        "command": command,
        "policy": policy.map(|p| json!({
            "restart": wire::RestartType::try_from(p.restart).map_or("", |r| r.as_str_name()).trim_start_matches("RESTART_TYPE_"),
            "strategy": wire::RestartStrategy::try_from(p.strategy).map_or("", |s| s.as_str_name()).trim_start_matches("RESTART_STRATEGY_"),
            "max_restarts": p.max_restarts,
            "period_ms": p.period_ms,
            "backoff_initial_ms": p.backoff_initial_ms,
            "backoff_max_ms": p.backoff_max_ms,
            "stop_grace_ms": p.stop_grace_ms,
            "start_timeout_ms": p.start_timeout_ms,
            "health_interval_ms": p.health_interval_ms,
            "health_failures": p.health_failures,
            "solvers": p.solvers.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>(),
        })),
    })
}

/// The end of a process container's log, as text (empty when there is none).
async fn log_tail(
    supervisor: &mut reef_proto::supervisor_client::SupervisorClient<tonic::transport::Channel>,
    alias: &str,
) -> String {
    let request = LogsRequest {
        alias: alias.to_owned(),
        follow: false,
        tail_bytes: LOG_TAIL_BYTES,
    };
    let read = async {
        let mut chunks = supervisor.logs(request).await?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok::<_, tonic::Status>(bytes)
    };
    match tokio::time::timeout(NODE_CALL, read).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(Err(status)) => format!("(no log: {})", status.message()),
        Err(_) => "(no log: the node did not answer in time)".to_owned(),
    }
}

/// `restart`, `stop`, `start` or `destroy` a container.
async fn act(
    _: Writer,
    State(state): State<Arc<AppState>>,
    Path((alias, action)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    let mut supervisor = state.live.supervisor().await.map_err(node_error)?;
    let call = async {
        match action.as_str() {
            "restart" => supervisor
                .restart(RestartRequest {
                    alias: alias.clone(),
                })
                .await
                .map(|_| tonic::Response::new(())),
            "stop" => supervisor
                .stop(StopRequest {
                    alias: alias.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| tonic::Response::new(())),
            "start" => supervisor
                .start(StartRequest {
                    alias: alias.clone(),
                })
                .await
                .map(|_| tonic::Response::new(())),
            "destroy" => supervisor
                .destroy(DestroyRequest {
                    alias: alias.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| tonic::Response::new(())),
            other => Err(tonic::Status::invalid_argument(format!(
                "unknown action {other:?}: restart, stop, start or destroy"
            ))),
        }
    };
    // A restart or stop waits for the container: longer than a plain call.
    node_call(NODE_CALL * 6, call).await?;
    Ok(Json(json!({ "done": format!("{action} {alias}") })))
}

async fn dead_letters(
    _: Viewer,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, Refusal> {
    let mut supervisor = state.live.supervisor().await.map_err(node_error)?;
    let request = DeadLettersRequest {
        limit: DEAD_LETTERS,
    };
    let letters = node_call(NODE_CALL, supervisor.dead_letters(request)).await?;
    let list: Vec<Value> = letters
        .letters
        .iter()
        .map(|letter| {
            json!({
                "at_ms": letter.at_ms,
                "kind": wire::EnvelopeKind::try_from(letter.kind).map_or("", |k| k.as_str_name()).trim_start_matches("ENVELOPE_KIND_"),
                "origin": letter.origin,
                "destination": letter.destination,
                "bytes": letter.payload_bytes,
                "preview": String::from_utf8_lossy(&letter.payload_preview),
                "reason": letter.reason,
            })
        })
        .collect();
    Ok(Json(json!({ "total": letters.total, "letters": list })))
}

#[derive(Debug, Deserialize)]
struct StateQuery {
    #[serde(default)]
    prefix: String,
    /// For a watch: the first revision to send (the one after a listing's).
    #[serde(default)]
    from: i64,
}

async fn state_client(state: &AppState) -> Result<StateClient<tonic::transport::Channel>, Refusal> {
    state
        .live
        .channel()
        .await
        .map(StateClient::new)
        .map_err(node_error)
}

fn preview(value: &[u8]) -> String {
    let cut = &value[..value.len().min(VALUE_PREVIEW)];
    String::from_utf8_lossy(cut).into_owned()
}

/// A call to the node on behalf of a page, bounded by `limit`; its status mapped here.
async fn node_call<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status_refusal(&status)),
        Err(_) => Err(node_error("no answer in time")),
    }
}

/// A status from the node: the caller's mistakes as 4xx, the rest as 502.
fn status_refusal(status: &tonic::Status) -> Refusal {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
            refusal(StatusCode::BAD_REQUEST, status.message())
        }
        tonic::Code::NotFound => refusal(StatusCode::NOT_FOUND, status.message()),
        tonic::Code::FailedPrecondition => refusal(StatusCode::CONFLICT, status.message()),
        _ => node_error(status.message()),
    }
}

/// The keys under a prefix of a namespace (the first page), with the revision they are at.
async fn state_list(
    _: Viewer,
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    Query(query): Query<StateQuery>,
) -> Result<Json<Value>, Refusal> {
    let mut client = state_client(&state).await?;
    let request = wire::ListKeysRequest {
        namespace,
        prefix: query.prefix,
        limit: STATE_KEYS as u32,
        ..Default::default()
    };
    let page = node_call(NODE_CALL, client.list(request)).await?;
    let keys: Vec<Value> = page
        .kvs
        .iter()
        .map(
            |kv| json!({ "key": kv.key, "value": preview(&kv.value), "revision": kv.mod_revision }),
        )
        .collect();
    Ok(Json(
        json!({ "revision": page.revision, "keys": keys, "more": !page.next_page_token.is_empty() }),
    ))
}

/// Server-sent `changes` events: the puts and deletes under a prefix, from `from`.
async fn state_watch(
    _: Viewer,
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    Query(query): Query<StateQuery>,
) -> Result<Response, Refusal> {
    let slot = stream_slot(&state)?;
    let mut client = state_client(&state).await?;
    let request = wire::WatchKeysRequest {
        namespace,
        prefix: query.prefix,
        start_revision: query.from,
    };
    let watch = node_call(NODE_CALL, client.watch(request)).await?;
    // One event per committed batch: the changes of one revision or a run of them.
    let changes = watch.map_while(Result::ok).map(move |batch| {
        let _slot = &slot;
        let changes: Vec<Value> = batch
            .events
            .into_iter()
            .map(|event| {
                let kv = event.kv.unwrap_or_default();
                let kind = match wire::watch_event::Kind::try_from(event.kind) {
                    Ok(wire::watch_event::Kind::Delete) => "delete",
                    _ => "put",
                };
                json!({ "kind": kind, "key": kv.key, "value": preview(&kv.value), "revision": kv.mod_revision })
            })
            .collect();
        let data = json!({ "revision": batch.revision, "changes": changes });
        Ok::<_, Infallible>(SseEvent::default().event("changes").data(data.to_string()))
    });
    Ok(Sse::new(changes)
        .keep_alive(KeepAlive::default())
        .into_response())
}
