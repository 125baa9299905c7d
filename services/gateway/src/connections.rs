//! Connections and rooms as addresses. Every WebSocket or TCP connection is a task
//! container of the gateway, `GATEWAY/ws/ID` or `GATEWAY/tcp/ID`: what a container
//! sends to it is written to the connection. Every room is a task `GATEWAY/room/NAME`:
//! what is sent to it is written to each connection in it.
//!
//! A message to a connection may carry headers that act on it instead of (or as well
//! as) writing its payload: `gateway.join` and `gateway.leave` name a room,
//! `gateway.close` closes the connection with that reason. A request gets an empty
//! reply once the frame is queued (from a room: the number of connections reached).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use reef_sdk::{
    Bytes, Client, Code, Context, Error, Handler, HandlerError, Message, Restart, TaskOptions,
    Tasks,
};
use tokio::sync::{Notify, mpsc};

/// Header: join the room it names.
pub const JOIN_HEADER: &str = "gateway.join";
/// Header: leave the room it names.
pub const LEAVE_HEADER: &str = "gateway.leave";
/// Header: close the connection, with this reason.
pub const CLOSE_HEADER: &str = "gateway.close";

/// How long a closing connection waits for the node to route what it sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued for one connection; a connection that lets more pile up is too slow
/// to keep and is closed.
const OUTBOX_CAPACITY: usize = 1024;

/// What is written to a connection.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A frame; `text` for WebSocket text frames.
    Frame { payload: Bytes, text: bool },
    /// Close the connection with a reason.
    Close(String),
}

/// Where pushes to a connection are queued.
#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    overflow: Arc<Notify>,
}

/// The connection's end of its outbox.
pub struct Outlet {
    queue: mpsc::Receiver<Outgoing>,
    overflow: Arc<Notify>,
}

/// A connection's outbox and the end its writer takes from.
pub fn outbox() -> (Outbox, Outlet) {
    let (queue, receiver) = mpsc::channel(OUTBOX_CAPACITY);
    let overflow = Arc::new(Notify::new());
    (
        Outbox {
            queue,
            overflow: overflow.clone(),
        },
        Outlet {
            queue: receiver,
            overflow,
        },
    )
}

impl Outbox {
    /// Queues `item`. A full queue means a reader too slow to keep up: the connection
    /// is closed rather than the gateway's memory growing. False when not queued.
    pub fn push(&self, item: Outgoing) -> bool {
        match self.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

impl Outlet {
    /// What is queued already, without waiting.
    pub fn try_next(&mut self) -> Option<Outgoing> {
        self.queue.try_recv().ok()
    }

    /// The next thing to write; `Close` when the connection fell too far behind.
    pub async fn next(&mut self) -> Option<Outgoing> {
        tokio::select! {
            biased;
            _ = self.overflow.notified() => Some(Outgoing::Close(
                "the connection reads too slowly: its outbound queue is full".to_owned(),
            )),
            item = self.queue.recv() => item,
        }
    }
}

/// The gateway's connections and rooms.
pub struct Hub {
    tasks: Tasks,
    /// The gateway's own alias, the prefix of every connection's and room's.
    alias: String,
    /// Unique to this process, so that an id is never reused after a restart.
    epoch: String,
    next_id: AtomicU64,
    rooms: Mutex<HashMap<String, HashMap<Arc<str>, Outbox>>>,
    max_rooms: usize,
}

impl Hub {
    pub fn new(tasks: Tasks, alias: &str, max_rooms: usize) -> Arc<Self> {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Arc::new(Self {
            tasks,
            alias: alias.to_owned(),
            epoch: format!("{epoch:x}"),
            next_id: AtomicU64::new(1),
            rooms: Mutex::new(HashMap::new()),
            max_rooms,
        })
    }

    /// Gives a new connection of `kind` (`ws`, `tcp`) its address: a task whose
    /// messages go to `outbox`. Returns a client that sends as that address.
    pub async fn open(self: &Arc<Self>, kind: &str, outbox: Outbox) -> Result<Client, Error> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let alias: Arc<str> = format!("{}/{kind}/{}-{id}", self.alias, self.epoch).into();
        let mut options = TaskOptions::new(&alias).named(&format!("gateway-{kind}"));
        options.restart = Restart::Temporary;
        let hub = self.clone();
        let task = alias.clone();
        self.tasks
            .spawn(options, move || ConnectionTask {
                hub: hub.clone(),
                alias: task.clone(),
                outbox: outbox.clone(),
            })
            .await?;
        self.tasks
            .client(&alias)
            .ok_or_else(|| Error::Disconnected(format!("connection {alias} stopped as it opened")))
    }

    /// Takes the connection `client` sends as out of its rooms and stops its task.
    pub async fn close(&self, client: &Client) {
        let alias = client.alias();
        // What the connection sent last (its close event) must be routed while its
        // address still exists, or the node would name the gateway as its origin: the
        // task's removal goes to the node by another path and could overtake it.
        if let Err(error) = client.flush(FLUSH_TIMEOUT).await {
            tracing::debug!(%alias, %error, "flushing a closing connection");
        }
        {
            let mut rooms = self.lock();
            for members in rooms.values_mut() {
                members.remove(alias);
            }
        }
        if let Err(error) = self.tasks.stop(alias).await {
            tracing::debug!(%alias, %error, "stopping a connection's task");
        }
    }

    /// Adds connection `member` to `room`, starting the room's task the first time.
    pub async fn join(
        self: &Arc<Self>,
        room: &str,
        member: &Arc<str>,
        outbox: &Outbox,
    ) -> Result<(), HandlerError> {
        let alias = self.room_alias(room)?;
        let new = {
            let mut rooms = self.lock();
            let new = !rooms.contains_key(room);
            if new && rooms.len() >= self.max_rooms {
                return Err(HandlerError::new(
                    "gateway.rooms",
                    format!("the gateway has {} rooms, its limit", self.max_rooms),
                )
                .with_code(Code::ResourceExhausted));
            }
            rooms
                .entry(room.to_owned())
                .or_default()
                .insert(member.clone(), outbox.clone());
            new
        };
        if new {
            let mut options = TaskOptions::new(&alias).named("gateway-room");
            options.restart = Restart::Temporary;
            let (hub, name) = (self.clone(), room.to_owned());
            self.tasks
                .spawn(options, move || RoomTask {
                    hub: hub.clone(),
                    room: name.clone(),
                })
                .await
                .map_err(HandlerError::from)?;
        }
        Ok(())
    }

    /// Takes connection `member` out of `room`.
    pub fn leave(&self, room: &str, member: &str) {
        if let Some(members) = self.lock().get_mut(room) {
            members.remove(member);
        }
    }

    /// Writes `message` to every connection in `room`; how many it reached.
    fn broadcast(&self, room: &str, message: &Message) -> usize {
        let members: Vec<Outbox> = match self.lock().get(room) {
            Some(members) => members.values().cloned().collect(),
            None => return 0,
        };
        // The frame is made once (its text check walks the payload), then shared.
        let frame = frame(message);
        members
            .iter()
            .filter(|outbox| outbox.push(frame.clone()))
            .count()
    }

    fn room_alias(&self, room: &str) -> Result<String, HandlerError> {
        let alias = format!("{}/room/{room}", self.alias);
        reef_core::Alias::parse(&alias).map_err(|e| {
            HandlerError::new("gateway.room", format!("room {room:?}: {e}"))
                .with_code(Code::InvalidArgument)
        })?;
        Ok(alias)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, HashMap<Arc<str>, Outbox>>> {
        self.rooms.lock()
    }
}

/// A message as a frame: text when it says so (`text/…`) or, without a content type,
/// when it is UTF-8.
fn frame(message: &Message) -> Outgoing {
    let text = match message.content_type.as_str() {
        "" => std::str::from_utf8(&message.payload).is_ok(),
        mime => mime.starts_with("text/") && std::str::from_utf8(&message.payload).is_ok(),
    };
    Outgoing::Frame {
        payload: message.payload.clone(),
        text,
    }
}

/// The task behind a connection's address.
struct ConnectionTask {
    hub: Arc<Hub>,
    alias: Arc<str>,
    outbox: Outbox,
}

impl ConnectionTask {
    async fn apply(&self, message: Message) -> Result<(), HandlerError> {
        let header = |key: &str| message.headers.get(key).filter(|v| !v.is_empty());
        let join = header(JOIN_HEADER);
        let leave = header(LEAVE_HEADER);
        let close = header(CLOSE_HEADER);
        if let Some(room) = join {
            self.hub.join(room, &self.alias, &self.outbox).await?;
        }
        if let Some(room) = leave {
            self.hub.leave(room, &self.alias);
        }
        let control = join.is_some() || leave.is_some() || close.is_some();
        if (!control || !message.payload.is_empty()) && !self.outbox.push(frame(&message)) {
            return Err(HandlerError::new(
                "gateway.connection",
                format!("{} is closing: the frame was not written", self.alias),
            )
            .with_code(Code::Unavailable));
        }
        if let Some(reason) = close {
            self.outbox.push(Outgoing::Close(reason.clone()));
        }
        Ok(())
    }
}

impl Handler for ConnectionTask {
    async fn on_message(&mut self, _: &Context, message: Message) {
        if let Err(error) = self.apply(message).await {
            tracing::debug!(alias = %self.alias, %error, "a push to a connection failed");
        }
    }

    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        self.apply(request).await.map(|()| Bytes::new())
    }
}

/// The task behind a room's address.
struct RoomTask {
    hub: Arc<Hub>,
    room: String,
}

impl Handler for RoomTask {
    async fn on_message(&mut self, _: &Context, message: Message) {
        self.hub.broadcast(&self.room, &message);
    }

    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        Ok(self.hub.broadcast(&self.room, &request).to_string().into())
    }
}
