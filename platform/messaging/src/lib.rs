//! reef's messaging: who holds which alias, and what happens to each envelope.
//!
//! - [`Registry`]: aliases and their leases, attach streams, holds for a container that
//!   is restarting, links to other nodes, task hosting, and the bridge to supervision
//!   (it is supervision's `Reservations` port);
//! - [`Inbound`]: the router, run once per attach stream;
//! - [`Attachment`] and [`Outbound`]: a container's open stream and its response side;
//! - [`AckLog`], [`PendingRequests`], [`DeadLetters`], [`PushTickets`]: what the node
//!   remembers between envelopes; `keeper` runs an attachment's timers.
//!
//! Nothing here speaks gRPC: a stream ends with a [`CloseReason`], and the node's gRPC edge
//! turns it into the status the container sees.
#![warn(missing_docs)]

mod acks;
mod attachment;
mod dead_letters;
pub mod keeper;
mod limits;
pub mod link;
mod pending;
mod push;
mod raised;
mod registry;
mod router;
mod stats;

pub use self::{
    acks::AckLog,
    attachment::{Attachment, CloseReason, Outbound},
    dead_letters::{DEFAULT_DEAD_LETTER_CAPACITY, DeadLetter, DeadLetters},
    limits::Limits,
    pending::{Pending, PendingError, PendingRequests},
    push::PushTickets,
    registry::{
        ContainerSnapshot, ContainerSpec, DetachCause, EventKind, HoldRefused, HostedTask,
        NODE_ORIGIN_PREFIX, Phase, Registry, RegistryError, RegistryEvent, TaskSnapshot,
    },
    router::Inbound,
    stats::NodeStats,
};
