//! The reef node: its registry and router, supervision, state, and the gRPC services that
//! expose them (`reef.v1.Supervisor`, `reef.v1.Channel`, `reef.v1.State`, `reef.v1.Files`).
//!
//! A node is assembled from a [`NodeConfig`] and served until a shutdown signal:
//!
//! ```no_run
//! # async fn demo() -> Result<(), reef_node::NodeError> {
//! use reef_node::{Node, NodeConfig};
//!
//! let config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/reef-data");
//! let node = Node::bind(config).await?;
//! println!("listening on {}", node.local_addr());
//! node.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! See `docs/architecture.md` for how envelopes flow through the [`Inbound`] router.
#![warn(missing_docs)]

mod acks;
pub mod api;
mod attachment;
mod dead_letters;
mod keeper;
mod limits;
pub mod link;
pub mod metrics;
mod node;
mod pending;
mod probe;
mod push;
mod registry;
mod router;
mod stats;
mod uplink;

pub use self::{
    acks::AckLog,
    api::{
        channel::ChannelService,
        files::{FILE_CHUNK, FilesBackend, FilesService},
        state::StateService,
        supervisor::{NodeIdentity, SupervisorService},
    },
    attachment::{Attachment, Outbound},
    dead_letters::{DEFAULT_DEAD_LETTER_CAPACITY, DeadLetters},
    limits::Limits,
    node::{Node, NodeConfig, NodeError, StateBackend},
    pending::{Pending, PendingError, PendingRequests},
    registry::{
        ContainerSnapshot, ContainerSpec, DetachCause, EventKind, HostedTask, Phase, Registry,
        RegistryError, RegistryEvent, TaskSnapshot,
    },
    router::Inbound,
    stats::NodeStats,
    uplink::JoinConfig,
};
