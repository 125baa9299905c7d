//! HTTP listeners: each request that matches a route becomes a REQUEST to its container
//! (headers `http.method`, `http.path`, `http.query`, `http.param.NAME`,
//! `http.header.NAME`; the body is the payload; a W3C `traceparent` also goes on as
//! itself, so the request's trace continues), and the reply is the response: its
//! payload the body, its headers `http.status` and `http.header.NAME` (set with
//! `Message::set_reply_header`) the status and headers.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::{Body, to_bytes},
    extract::{ConnectInfo, FromRequestParts, Request, State, ws::WebSocketUpgrade},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use reef_sdk::{Client, Code, Error, Reply, RequestOptions};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::{
    config::HttpListener,
    connections::Hub,
    listen::{Admission, Connection, listen},
    routes::{Pattern, Route, RouteTable},
    ws::{self, Opening, WsRoute},
};

/// Request headers copied into the envelope, at most.
const MAX_FORWARDED_HEADERS: usize = 64;

/// One listener's routes and limits, shared by its requests.
struct Listener {
    client: Client,
    hub: Arc<Hub>,
    routes: RouteTable,
    websockets: Vec<Arc<WsRoute>>,
    timeout: Duration,
    max_body_bytes: usize,
    in_flight: Semaphore,
    origins: Vec<String>,
}

/// Binds `config`'s address. Returns the bound address and the future that serves it.
pub async fn serve(
    config: HttpListener,
    client: Client,
    hub: Arc<Hub>,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()>)> {
    let routes = config
        .routes
        .into_iter()
        .map(|route| {
            Ok(Route {
                method: route.method.to_ascii_uppercase(),
                pattern: Pattern::parse(&route.path).map_err(anyhow::Error::msg)?,
                to: route.to,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let websockets = config
        .websockets
        .into_iter()
        .map(|route| WsRoute::new(route).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_millis(config.timeout_ms);
    let listener = Arc::new(Listener {
        client,
        hub,
        routes: RouteTable::new(routes),
        websockets,
        timeout,
        max_body_bytes: config.max_body_bytes,
        in_flight: Semaphore::new(config.max_in_flight),
        origins: config.origins,
    });
    let app = axum::Router::new().fallback(handle).with_state(listener);
    let admission = Admission {
        block: config.block,
        max_connections: config.max_connections,
        tls: config.tls,
        alpn: vec![b"http/1.1".to_vec()],
    };
    listen(config.listen, admission, move |connection: Connection| {
        serve_connection(connection, app.clone(), timeout)
    })
    .await
}

/// Serves HTTP/1.1 on one connection, upgrades (WebSocket) included. A client that
/// does not send a request's headers within `timeout` is disconnected.
async fn serve_connection(connection: Connection, app: axum::Router, timeout: Duration) {
    let (peer, permit) = (connection.peer, connection.permit);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(permit.clone());
        app.clone().oneshot(request.map(Body::new))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(connection.io), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

async fn handle(
    State(listener): State<Arc<Listener>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN)
        && !listener.origins.is_empty()
        && !listener
            .origins
            .iter()
            .any(|allowed| allowed.as_bytes() == origin.as_bytes())
    {
        return plain(StatusCode::FORBIDDEN, "this origin is not allowed\n");
    }
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if parts.headers.contains_key(header::UPGRADE) {
        let found = listener
            .websockets
            .iter()
            .find_map(|route| route.pattern.matches(&path).map(|params| (route, params)));
        let Some((route, params)) = found else {
            return plain(
                StatusCode::NOT_FOUND,
                format!("no WebSocket route for {path}\n"),
            );
        };
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => {
                let opening = Opening {
                    path,
                    params,
                    headers: parts.headers,
                    peer,
                    permit: parts.extensions.remove(),
                };
                ws::accept(upgrade, listener.hub.clone(), route.clone(), opening)
            }
            Err(rejection) => rejection.into_response(),
        };
    }
    let Ok(_permit) = listener.in_flight.try_acquire() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; try again\n",
        );
    };
    let Some((route, params)) = listener.routes.find(parts.method.as_str(), &path) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no route for {} {path}\n", parts.method),
        );
    };
    // A slow client holds a permit: its body gets the route's timeout to arrive.
    let body = match tokio::time::timeout(listener.timeout, to_bytes(body, listener.max_body_bytes))
        .await
    {
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time\n",
            );
        }
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than {} bytes\n",
                    listener.max_body_bytes
                ),
            );
        }
    };
    let mut headers = BTreeMap::new();
    headers.insert("http.method".to_owned(), parts.method.to_string());
    headers.insert("http.path".to_owned(), path.clone());
    if let Some(query) = parts.uri.query() {
        headers.insert("http.query".to_owned(), query.to_owned());
    }
    for (name, value) in params {
        headers.insert(format!("http.param.{name}"), value);
    }
    for (name, value) in parts.headers.iter().take(MAX_FORWARDED_HEADERS) {
        if let Ok(value) = value.to_str() {
            // The caller's W3C trace context: the gateway's span continues its trace.
            if matches!(name.as_str(), "traceparent" | "tracestate") {
                headers.insert(name.as_str().to_owned(), value.to_owned());
            }
            headers.insert(format!("http.header.{name}"), value.to_owned());
        }
    }
    let options = RequestOptions {
        headers,
        ..RequestOptions::new(listener.timeout)
    };
    match listener.client.call(&route.to, body, &options).await {
        Ok(reply) => response(&route.to, reply),
        Err(error) => failure(&route.to, error),
    }
}

/// A reply as the HTTP response: `http.status` (default 200) and `http.header.NAME`
/// headers from the reply's headers. A status that is not one is the container's
/// mistake, answered with 502; headers that are not valid HTTP are left out.
fn response(to: &str, reply: Reply) -> Response {
    let status = match reply.headers.get("http.status") {
        None => StatusCode::OK,
        Some(code) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => status,
            None => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("{to} answered with an invalid http.status {code:?}\n"),
                );
            }
        },
    };
    let mut response = Response::new(Body::from(reply.payload));
    *response.status_mut() = status;
    for (key, value) in &reply.headers {
        let Some(name) = key.strip_prefix("http.header.") else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A failed request as an HTTP status: the node's own refusals (no such container,
/// nothing answering) are the gateway's problem (5xx); a container's errors keep their
/// meaning.
fn failure(to: &str, error: Error) -> Response {
    let (code, from_node, message) = match &error {
        Error::Remote {
            code,
            kind,
            message,
        } => (*code, kind.is_empty(), message.clone()),
        other => (other.code(), true, other.to_string()),
    };
    let status = match (code, from_node) {
        (Code::DeadlineExceeded, _) => StatusCode::GATEWAY_TIMEOUT,
        (Code::NotFound | Code::Unavailable, true) => StatusCode::BAD_GATEWAY,
        (Code::InvalidArgument | Code::OutOfRange, _) => StatusCode::BAD_REQUEST,
        (Code::NotFound, false) => StatusCode::NOT_FOUND,
        (Code::PermissionDenied, _) => StatusCode::FORBIDDEN,
        (Code::Unauthenticated, _) => StatusCode::UNAUTHORIZED,
        (Code::AlreadyExists | Code::Aborted, _) => StatusCode::CONFLICT,
        (Code::FailedPrecondition, _) => StatusCode::PRECONDITION_FAILED,
        (Code::ResourceExhausted, _) => StatusCode::TOO_MANY_REQUESTS,
        (Code::Unimplemented, _) => StatusCode::NOT_IMPLEMENTED,
        (Code::Unavailable, false) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::debug!(%to, ?code, %message, "request failed");
    plain(status, format!("{to}: {message}\n"))
}
