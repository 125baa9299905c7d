//! A container's behaviour: [`Handler`], what it is given ([`Context`], [`Command`],
//! and a [`Message`]), and how one envelope reaches it (`handle`).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use bytes::Bytes;
use reef_proto::{Envelope, EnvelopeKind};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::{
    Client, Error, HandlerError, Message, Tasks,
    client::error_envelope,
    request::{ServedRequests, with_deadline},
    trace,
};

/// An operator command sent to the container's `Container.Command` RPC.
#[derive(Debug, Clone)]
pub struct Command {
    /// The command's name.
    pub name: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// What a handler can use while it handles something.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) client: Client,
    pub(crate) name: Arc<str>,
    pub(crate) tasks: Tasks,
}

impl Context {
    /// The container's alias.
    pub fn alias(&self) -> &str {
        self.client.alias()
    }

    /// The behaviour's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends and requests on behalf of this container.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The task containers this process hosts.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }
}

/// A container's behaviour. Calls happen one at a time, in arrival order, like an
/// Erlang process's mailbox, so `&mut self` needs no locks.
///
/// ```no_run
/// use reef_sdk::{Context, ContainerOptions, Handler, HandlerError, Message};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn on_request(&mut self, _: &Context, request: Message) -> Result<bytes::Bytes, HandlerError> {
///         Ok(request.payload)
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), reef_sdk::Error> {
///     reef_sdk::run(ContainerOptions::from_env("echo"), Echo).await
/// }
/// ```
pub trait Handler: Send + 'static {
    /// Runs once, after the container is attached and before any message.
    fn on_start(&mut self, ctx: &Context) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles a fire-and-forget message.
    fn on_message(&mut self, ctx: &Context, message: Message) -> impl Future<Output = ()> + Send {
        let _ = (ctx, message);
        async {}
    }

    /// Handles a request; the result goes back to the requester as REPLY or ERROR.
    fn on_request(
        &mut self,
        ctx: &Context,
        request: Message,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        let _ = (ctx, request);
        async { Err(HandlerError::unimplemented("requests")) }
    }

    /// Handles an operator command from `Container.Command`.
    fn on_command(
        &mut self,
        ctx: &Context,
        command: Command,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send {
        let _ = ctx;
        let what = format!("the command {:?}", command.name);
        async move { Err(HandlerError::unimplemented(&what)) }
    }

    /// Runs once when the container stops (signal or lost node).
    fn on_stop(&mut self, ctx: &Context) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

/// Counters the container's endpoint reports in `Container.Status`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages: AtomicU64,
    pub requests: AtomicU64,
}

pub(crate) async fn handle<H: Handler>(
    handler: &mut H,
    ctx: &Context,
    counters: &Counters,
    envelope: Envelope,
    answers: Option<&mpsc::Sender<Envelope>>,
) {
    if !reef_frames::trace::exporting() {
        handle_in_span(handler, ctx, counters, envelope, answers).await;
        return;
    }
    let span = trace::incoming(&envelope);
    let handled = handle_in_span(handler, ctx, counters, envelope, answers);
    if !handled.instrument(span.clone()).await {
        trace::failed(&span);
    }
}

/// [`handle`]; false when the handler failed the request.
async fn handle_in_span<H: Handler>(
    handler: &mut H,
    ctx: &Context,
    counters: &Counters,
    envelope: Envelope,
    answers: Option<&mpsc::Sender<Envelope>>,
) -> bool {
    match envelope.kind() {
        EnvelopeKind::Send => {
            counters.messages.fetch_add(1, Relaxed);
            let sequence = envelope.sequence;
            handler.on_message(ctx, Message::from(envelope)).await;
            if sequence != 0 {
                ctx.client.ack(sequence).await;
            }
            true
        }
        EnvelopeKind::Request => {
            counters.requests.fetch_add(1, Relaxed);
            let id = envelope.id;
            let origin = envelope.origin.clone();
            let served = ctx.client.served();
            let mut request = Message::from(envelope);
            request.cancellation = served.token(&origin, id);
            if request.cancellation.is_cancelled() {
                // The caller gave up while this waited in the mailbox.
                served.abandon(&origin, id);
                return true;
            }
            // Forgets the request if the handler panics, so that a retry runs it again.
            let unanswered = Unanswered {
                served,
                origin: &origin,
                id,
            };
            let deadline = request
                .deadline
                .map(|left| tokio::time::Instant::now() + left);
            let reply_headers = request.reply_headers.clone();
            let outcome = with_deadline(deadline, handler.on_request(ctx, request)).await;
            unanswered.disarm();
            let answered = outcome.is_ok();
            let answer = match outcome {
                Ok(payload) => Envelope {
                    kind: EnvelopeKind::Reply as i32,
                    correlation_id: id,
                    destination: origin.clone(),
                    payload,
                    headers: std::mem::take(&mut *reply_headers.lock()),
                    ..Default::default()
                },
                Err(error) => {
                    let request = Envelope {
                        id,
                        origin: origin.clone(),
                        ..Default::default()
                    };
                    error_envelope(&request, error.code, &error.kind, &error.message)
                }
            };
            served.answered(&answer.destination, id, &answer);
            let sent = match answers {
                // Straight back on the push stream it came by.
                Some(answers) => reef_frames::enqueue(answers, answer)
                    .await
                    .map_err(|_| Error::Disconnected("the push stream closed".into())),
                None => ctx.client.enqueue(answer).await,
            };
            if let Err(error) = sent {
                tracing::warn!(%error, "could not send the answer");
            }
            answered
        }
        _ => true,
    }
}

/// A request being handled; dropped while unwinding from a panic, it is forgotten.
struct Unanswered<'a> {
    served: &'a ServedRequests,
    origin: &'a str,
    id: u64,
}

impl Unanswered<'_> {
    /// The handler returned: its answer will be remembered instead.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.served.abandon(self.origin, self.id);
    }
}
