//! The reef node: the gRPC services over messaging, supervision and state, and the server that
//! hosts them (`reef.v1.Supervisor`, `reef.v1.Channel`, `reef.v1.State`, `reef.v1.Files`).
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

pub mod api;
mod children;
mod liveness;
pub mod metrics;
mod node;
mod probe;
mod uplink;
mod upstream;

pub use reef_messaging::{
    AckLog, Attachment, ContainerSnapshot, ContainerSpec, DEFAULT_DEAD_LETTER_CAPACITY,
    DeadLetters, DetachCause, EventKind, HostedTask, Inbound, Limits, NodeStats, Outbound, Pending,
    PendingError, PendingRequests, Phase, Registry, RegistryError, RegistryEvent, TaskSnapshot,
    keeper,
};

pub use self::{
    api::{
        channel::ChannelService,
        files::{FILE_CHUNK, FilesBackend, FilesService},
        state::StateService,
        supervisor::{NodeIdentity, SupervisorService},
    },
    node::{Node, NodeConfig, NodeError, StateBackend},
    uplink::JoinConfig,
};
