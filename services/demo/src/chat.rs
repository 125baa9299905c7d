//! `reef-demo chat`: the chat room behind `reef-gateway` (Kraken's demo-chat).
//!
//! - An HTTP request (`GET /`) is answered with the chat page.
//! - A WebSocket connection is an address, `GATEWAY/ws/ID`. When it opens, it gets the
//!   room's history.
//! - A frame `NAME<TAB>TEXT` is appended to the history, then broadcast to the room
//!   `GATEWAY/room/ROOM` as `NAME: TEXT`.
//!
//! The history lives in the node's state (namespace `chat`, key `history`), updated by
//! compare-and-set. So a restarted chat container carries on where it was, and two
//! writers never lose each other's lines. Frames arrive in acknowledged mode: one the
//! container had not handled when it was killed is delivered again to its next process.

use bytes::Bytes;
use reef_sdk::{Code, ConnectOptions, Context, Handler, HandlerError, Message, state::StateClient};

/// The page the gateway serves for `GET /`.
const PAGE: &str = include_str!("chat.html");
/// Where the history is kept.
const NAMESPACE: &str = "chat";
const HISTORY_KEY: &str = "history";
/// Compare-and-set attempts before a line is given up as contended.
const MAX_ATTEMPTS: usize = 8;
const MAX_NAME: usize = 32;
const MAX_TEXT: usize = 1000;

pub struct Chat {
    room: String,
    keep: usize,
    state: StateClient,
}

impl Chat {
    pub async fn start(room: String, keep: usize) -> Result<Self, reef_sdk::Error> {
        let state = StateClient::connect(&ConnectOptions::from_env()).await?;
        Ok(Self { room, keep, state })
    }

    /// The history as stored: one `SEQUENCE<TAB>LINE` per line, oldest first.
    async fn history(&self) -> Result<(Vec<String>, u64), HandlerError> {
        let entry = self.state.get(NAMESPACE, HISTORY_KEY).await?;
        Ok(match entry {
            Some(entry) => (
                String::from_utf8_lossy(&entry.value)
                    .lines()
                    .map(str::to_owned)
                    .collect(),
                entry.revision,
            ),
            None => (Vec::new(), 0),
        })
    }

    /// Appends `line` under `sequence` unless a previous life of this container did.
    async fn record(&self, sequence: u64, line: &str) -> Result<(), HandlerError> {
        let tag = format!("{sequence}\t");
        for _ in 0..MAX_ATTEMPTS {
            let (mut lines, revision) = self.history().await?;
            if sequence != 0 && lines.iter().any(|kept| kept.starts_with(&tag)) {
                return Ok(());
            }
            lines.push(format!("{tag}{line}"));
            let drop = lines.len().saturating_sub(self.keep);
            let value = lines[drop..].join("\n");
            match self
                .state
                .put_if(NAMESPACE, HISTORY_KEY, value, revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) if error.code() == Code::Aborted => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(HandlerError::new(
            "chat.contended",
            "the history kept changing",
        ))
    }

    async fn on_frame(&self, ctx: &Context, message: &Message) -> Result<(), HandlerError> {
        let Some(gateway) = message
            .origin
            .rsplit_once("/ws/")
            .map(|(gateway, _)| gateway)
        else {
            return Err(HandlerError::new(
                "chat.origin",
                format!("{} is not a gateway connection", message.origin),
            ));
        };
        let client = ctx.client();
        let event = message.headers.get("ws.event").map(String::as_str);
        match event {
            Some("open") => {
                let (lines, _) = self.history().await?;
                let shown: Vec<&str> = lines
                    .iter()
                    .filter_map(|line| line.split_once('\t').map(|(_, text)| text))
                    .collect();
                if !shown.is_empty() {
                    client.send(&message.origin, shown.join("\n")).await?;
                }
            }
            Some("message") => {
                let text = String::from_utf8_lossy(&message.payload);
                let line = match text.split_once('\t') {
                    Some((name, said))
                        if !name.trim().is_empty()
                            && name.len() <= MAX_NAME
                            && !said.is_empty()
                            && said.len() <= MAX_TEXT
                            && !said.contains('\n') =>
                    {
                        format!("{}: {said}", name.trim())
                    }
                    _ => {
                        let hint = format!(
                            "error: send NAME<TAB>TEXT (a name of 1-{MAX_NAME} bytes, one line of 1-{MAX_TEXT})"
                        );
                        client.send(&message.origin, hint).await?;
                        return Ok(());
                    }
                };
                self.record(message.sequence, &line).await?;
                client
                    .send(&format!("{gateway}/room/{}", self.room), line)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Handler for Chat {
    async fn on_message(&mut self, ctx: &Context, message: Message) {
        if let Err(error) = self.on_frame(ctx, &message).await {
            tracing::warn!(origin = %message.origin, %error, "a chat frame was not handled");
        }
    }

    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        match request.headers.get("http.method").map(String::as_str) {
            Some("GET") => {
                request.set_reply_header("http.header.content-type", "text/html; charset=utf-8");
                Ok(PAGE.into())
            }
            _ => {
                Err(HandlerError::new("chat.request", "only GET / is served")
                    .with_code(Code::NotFound))
            }
        }
    }
}
