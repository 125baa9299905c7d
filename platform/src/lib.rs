//! The reef runtime: the node's registry and router, its TLS, and the gRPC services that
//! expose them (`reef.v1.Supervisor`, `reef.v1.Channel`).
//!
//! A node is assembled from a [`NodeConfig`] and served until a shutdown signal:
//!
//! ```no_run
//! # async fn demo() -> Result<(), reef_platform::NodeError> {
//! use reef_platform::{Node, NodeConfig};
//!
//! let config = NodeConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/reef-data");
//! let node = Node::bind(config).await?;
//! println!("listening on {}", node.local_addr());
//! node.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! See `docs/architecture.md` for how envelopes flow through the [`Inbound`] router.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
mod acks;
mod alias;
mod attachment;
mod channel;
mod data_dir;
mod dead_letters;
mod files;
pub mod histogram;
mod hosting;
mod keeper;
mod lease;
mod limits;
pub mod link;
pub mod metrics;
mod node;
mod pending;
mod pki;
mod probe;
mod push;
mod registry;
mod router;
pub mod routing;
mod routing_api;
pub mod runtime;
pub mod sample;
pub mod state;
mod stats;
mod status;
pub mod supervision;
mod supervision_wire;
mod supervisor;
pub mod telemetry;
pub mod tls;
mod uplink;

pub use self::{
    acks::AckLog,
    alias::{Alias, InvalidAlias, MAX_ALIAS_LEN},
    attachment::{Attachment, Outbound},
    channel::ChannelService,
    data_dir::{DataDirError, DataDirLock},
    dead_letters::{DEFAULT_DEAD_LETTER_CAPACITY, DeadLetters},
    files::{FILE_CHUNK, FilesBackend, FilesService},
    histogram::{Histogram, HistogramSnapshot},
    limits::Limits,
    node::{Node, NodeConfig, NodeError, StateBackend},
    pending::{Pending, PendingError, PendingRequests},
    pki::{
        CertifiedKey, Pki, PkiError, admin_identity, certificate_identity, client_identity,
        container_identity, init_cluster_ca, issue_client, issue_node_ca, node_identity,
    },
    registry::{
        ContainerSnapshot, ContainerSpec, DetachCause, EventKind, HostedTask, Phase, Registry,
        RegistryError, RegistryEvent, TaskSnapshot,
    },
    router::Inbound,
    stats::NodeStats,
    supervisor::{NodeIdentity, SupervisorService, unix_ms},
    uplink::JoinConfig,
};
