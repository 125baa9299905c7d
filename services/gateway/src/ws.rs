//! WebSocket connections: each one is an address (`GATEWAY/ws/ID`, see `connections`),
//! and its route's container hears of it as messages sent from that address:
//! `ws.event` = `open`, then `message` for each frame (the payload; text frames as
//! `text/plain; charset=utf-8`, binary as `application/octet-stream`), then `close`.
//! Every one carries `ws.path` and `ws.param.NAME`; `open` also `ws.header.NAME` and
//! `ws.peer`. The container answers by sending to the origin, or to a room.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use axum::{
    extract::ws::{
        CloseFrame, Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code,
    },
    http::HeaderMap,
    response::Response,
};
use futures_util::SinkExt as _;
use reef_sdk::{Bytes, Client, SendOptions};
use tokio_tungstenite::tungstenite;

use crate::{
    config::WebSocketRoute,
    connections::{Hub, Outgoing, Outlet, outbox},
    listen::Permit,
    routes::Pattern,
};

/// Request headers passed on with the `open` event, at most.
const MAX_FORWARDED_HEADERS: usize = 64;

/// A WebSocket route as the gateway uses it.
pub struct WsRoute {
    pub pattern: Pattern,
    pub to: String,
    /// Rooms to join at connect: names, or `{param}`.
    pub join: Vec<String>,
    pub max_frame_bytes: usize,
    pub acknowledged: bool,
}

impl WsRoute {
    pub fn new(config: WebSocketRoute) -> anyhow::Result<Self> {
        Ok(Self {
            pattern: Pattern::parse(&config.path).map_err(anyhow::Error::msg)?,
            to: config.to,
            join: config.join,
            max_frame_bytes: config.max_frame_bytes,
            acknowledged: config.acknowledged,
        })
    }
}

/// What the connection's events say about where it came from.
pub struct Opening {
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub peer: SocketAddr,
    /// Held while the connection lives: it counts against the listener's limit.
    pub permit: Option<Permit>,
}

/// Accepts the upgrade; the connection then runs in its own task.
pub fn accept(
    upgrade: WebSocketUpgrade,
    hub: Arc<Hub>,
    route: Arc<WsRoute>,
    opening: Opening,
) -> Response {
    upgrade
        .max_message_size(route.max_frame_bytes)
        .max_frame_size(route.max_frame_bytes)
        .on_upgrade(move |socket| run(socket, hub, route, opening))
}

async fn run(mut socket: WebSocket, hub: Arc<Hub>, route: Arc<WsRoute>, mut opening: Opening) {
    let _counted = opening.permit.take();
    let (outbox, mut outlet) = outbox();
    let client = match hub.open("ws", outbox.clone()).await {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "a WebSocket connection could not get its address");
            let _ = socket
                .send(close(
                    close_code::ERROR,
                    "the gateway cannot reach its node",
                ))
                .await;
            return;
        }
    };
    let alias: Arc<str> = client.alias().into();
    for room in &route.join {
        let room = match room.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            Some(param) => opening.params.get(param).cloned().unwrap_or_default(),
            None => room.clone(),
        };
        if let Err(error) = hub.join(&room, &alias, &outbox).await {
            let _ = socket
                .send(close(close_code::POLICY, &error.to_string()))
                .await;
            hub.close(&client).await;
            return;
        }
    }
    let events = Events::new(&client, &route, &opening);
    events.open(&opening).await;
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Frame::Text(text))) => {
                    events.message(Bytes::from(text), "text/plain; charset=utf-8").await;
                }
                Some(Ok(Frame::Binary(data))) => {
                    events.message(data, "application/octet-stream").await;
                }
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => {}
                Some(Ok(Frame::Close(_))) | None => break,
                Some(Err(error)) => {
                    // Malformed or oversized frames: the peer gets a reason.
                    tracing::debug!(%alias, %error, "WebSocket read failed");
                    let reason = error.to_string();
                    let code = match error.into_inner().downcast_ref() {
                        Some(tungstenite::Error::Capacity(_)) => close_code::SIZE,
                        _ => close_code::PROTOCOL,
                    };
                    let _ = socket.send(close(code, &reason)).await;
                    break;
                }
            },
            outgoing = outlet.next() => {
                if !write(&mut socket, outgoing, &mut outlet).await {
                    break;
                }
            }
        }
    }
    events.closed().await;
    hub.close(&client).await;
}

/// Writes `first` and whatever else is queued already, then flushes once: under load,
/// many frames go out in one write. False when the connection is to end.
async fn write(socket: &mut WebSocket, first: Option<Outgoing>, outlet: &mut Outlet) -> bool {
    let mut next = first;
    loop {
        match next {
            Some(Outgoing::Frame { payload, text }) => {
                let frame = match text {
                    true => Utf8Bytes::try_from(payload).map(Frame::Text),
                    false => Ok(Frame::Binary(payload)),
                };
                if let Ok(frame) = frame
                    && socket.feed(frame).await.is_err()
                {
                    return false;
                }
            }
            Some(Outgoing::Close(reason)) => {
                let _ = socket.send(close(close_code::NORMAL, &reason)).await;
                return false;
            }
            None => return false,
        }
        next = match outlet.try_next() {
            Some(queued) => Some(queued),
            None => return socket.flush().await.is_ok(),
        };
    }
}

fn close(code: u16, reason: &str) -> Frame {
    // A close frame's reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Frame::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// The connection's events, sent as the connection to its route's container.
struct Events {
    client: Client,
    to: String,
    base: SendOptions,
}

impl Events {
    fn new(client: &Client, route: &WsRoute, opening: &Opening) -> Self {
        let mut base = SendOptions {
            acknowledged: route.acknowledged,
            ..SendOptions::default()
        };
        base.headers
            .insert("ws.path".to_owned(), opening.path.clone());
        for (name, value) in &opening.params {
            base.headers
                .insert(format!("ws.param.{name}"), value.clone());
        }
        Self {
            client: client.clone(),
            to: route.to.clone(),
            base,
        }
    }

    async fn open(&self, opening: &Opening) {
        let mut options = self.base.clone().header("ws.event", "open");
        options
            .headers
            .insert("ws.peer".to_owned(), opening.peer.to_string());
        for (name, value) in opening.headers.iter().take(MAX_FORWARDED_HEADERS) {
            if let Ok(value) = value.to_str() {
                options
                    .headers
                    .insert(format!("ws.header.{name}"), value.to_owned());
            }
        }
        self.send(Bytes::new(), options).await;
    }

    async fn message(&self, payload: Bytes, content_type: &str) {
        let mut options = self.base.clone().header("ws.event", "message");
        options.content_type = content_type.to_owned();
        self.send(payload, options).await;
    }

    async fn closed(&self) {
        let options = self.base.clone().header("ws.event", "close");
        self.send(Bytes::new(), options).await;
    }

    async fn send(&self, payload: Bytes, options: SendOptions) {
        // A full outbox to the node waits here, so a fast client is read no faster
        // than the node takes its frames.
        if let Err(error) = self.client.send_with(&self.to, payload, &options).await {
            tracing::debug!(to = %self.to, %error, "a WebSocket event was not sent");
        }
    }
}
