//! `reef.v1.Channel`: the data plane.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use reef_access::Access;
use reef_messaging::{CloseReason, keeper};
use reef_proto::{ALIAS_METADATA, CREDIT_METADATA, Frame, LEASE_METADATA, channel_server};
use reef_routing::Routing;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::error::ApiError;
use crate::api::identity;
use crate::{DetachCause, Inbound, NodeStats, Outbound, Registry};

/// Serves `Channel.Attach`: binds a registered alias to a bidirectional stream.
#[derive(Debug, Clone)]
pub struct ChannelService {
    registry: Arc<Registry>,
    stats: Arc<NodeStats>,
    routing: Arc<Routing>,
    access: Arc<Access>,
}

impl ChannelService {
    /// A channel service routing through `registry` by the groups and rules of
    /// `routing`, sends checked against `access`.
    pub fn new(
        registry: Arc<Registry>,
        stats: Arc<NodeStats>,
        routing: Arc<Routing>,
        access: Arc<Access>,
    ) -> Self {
        Self {
            registry,
            stats,
            routing,
            access,
        }
    }
}

fn metadata<'a>(request: &'a Request<Streaming<Frame>>, key: &str) -> Result<&'a str, ApiError> {
    request
        .metadata()
        .get(key)
        .ok_or_else(|| {
            ApiError::Unregistered(format!(
                "missing request metadata {key:?}: register first and send the alias and lease"
            ))
        })?
        .to_str()
        .map_err(|_| ApiError::BadRequest(format!("metadata {key:?} is not text")))
}

#[tonic::async_trait]
impl channel_server::Channel for ChannelService {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        request: Request<Streaming<Frame>>,
    ) -> Result<Response<AttachStream>, Status> {
        let alias = metadata(&request, ALIAS_METADATA)?;
        let caller = identity::caller(&request);
        reef_access::check_claim(&caller, alias).map_err(ApiError::from)?;
        let lease = metadata(&request, LEASE_METADATA)?;
        let credit = match request.metadata().get(CREDIT_METADATA) {
            None => None,
            Some(_) => Some(
                metadata(&request, CREDIT_METADATA)?
                    .parse::<u32>()
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "metadata {CREDIT_METADATA:?} is not a number of envelopes"
                        ))
                    })?
                    .into(),
            ),
        };
        let (attachment, outbound) = self
            .registry
            .attach(alias, lease, credit)
            .map_err(ApiError::from)?;
        tracing::info!(alias = %attachment.alias(), "attached");
        let mut frames = request.into_inner();
        let mut inbound = Inbound::new(
            self.registry.clone(),
            self.stats.clone(),
            self.routing.clone(),
            self.access.clone(),
            &caller,
            attachment.clone(),
        );
        tokio::spawn(keeper::keep(
            self.registry.clone(),
            self.stats.clone(),
            attachment.clone(),
        ));
        let registry = self.registry.clone();
        let max_frame_bytes = registry.limits().max_frame_bytes;
        tokio::spawn(async move {
            let mut closed = attachment.subscribe_closed();
            let (cause, reason, close) = loop {
                tokio::select! {
                    frame = frames.message() => match frame {
                        Ok(Some(frame)) => inbound.route_frame(frame).await,
                        Ok(None) => break (DetachCause::Ended, "stream closed by the container".to_owned(), None),
                        Err(status) => {
                            let close = stream_failure(&status, max_frame_bytes);
                            break (DetachCause::Ended, close.to_string(), Some(close));
                        }
                    },
                    _ = closed.changed() => break (DetachCause::Closed, "closed by the node".to_owned(), None),
                }
            };
            registry.detach(&attachment, cause, &reason, close);
        });
        Ok(Response::new(AttachStream(outbound)))
    }
}

/// The response side of `Channel.Attach`: messaging's [`Outbound`], whose close reason
/// becomes the status the container reads at the end of the stream.
pub struct AttachStream(Outbound);

impl Stream for AttachStream {
    type Item = Result<Frame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|frame| frame.map_err(|reason| ApiError::from(reason).into())))
    }
}

/// How the node ends an attach stream whose next frame it cannot read. A frame over the
/// decode limit is refused by its length prefix, before any envelope in it is seen, so
/// the stream cannot go on; the reason names the limit the container missed.
fn stream_failure(status: &Status, max_frame_bytes: usize) -> CloseReason {
    match status.code() {
        // tonic's answer to a length prefix above `max_decoding_message_size`.
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => CloseReason::FrameTooLarge {
            limit: max_frame_bytes,
        },
        _ => CloseReason::StreamFailed(status.message().to_owned()),
    }
}
