//! reef's wire contract: the `reef.v1` protobuf types and gRPC stubs, generated from
//! `proto/reef/v1/*.proto` by the workspace's `build.rs`.
//!
//! Everything here is a wire type, and nothing else lives here: the frame runtime is in
//! `reef-frames`, the shared domain types in `reef-core`. The node (`reef-node`) and the
//! SDK (`reef-sdk`) convert into their own domain types at their edges; the one exception is [`Envelope`],
//! which the router forwards as it arrived so that a message is decoded once and encoded
//! once per hop.
//!
//! ```
//! use reef_proto::{Envelope, EnvelopeKind};
//!
//! let hello = Envelope {
//!     kind: EnvelopeKind::Send as i32,
//!     id: 1,
//!     destination: "echo".into(),
//!     payload: "hello".into(),
//!     ..Default::default()
//! };
//! assert_eq!(hello.kind(), EnvelopeKind::Send);
//! ```

/// The generated code; its module path mirrors the protobuf package `reef.v1`.
pub mod reef {
    /// Package `reef.v1`.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("reef.v1");
    }
}

pub use self::reef::v1::*;

/// The encoded `FileDescriptorSet` of `reef.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reef_descriptor.bin"));

/// Metadata key that names the alias an attach stream belongs to.
pub const ALIAS_METADATA: &str = "reef-alias";
/// Metadata key that carries the lease returned by `Supervisor.Register`.
pub const LEASE_METADATA: &str = "reef-lease";
/// REQUEST header: how many more attempts the caller will make after this one. While
/// it is above 0, a node whose deadline for this attempt passes does not cancel the
/// request at the callee: the retry will want the answer of the run in progress.
pub const ATTEMPTS_LEFT_HEADER: &str = "reef-attempts-left";
/// Trailer on an attach stream the node ended with status OK: why it ended
/// (`deregistered`).
pub const CLOSE_REASON_METADATA: &str = "reef-close-reason";
/// Container.Push metadata: the ticket from Supervisor.OpenPush.
pub const PUSH_TICKET_METADATA: &str = "reef-push-ticket";
/// Attach metadata: the credit (envelopes) a container grants the node at the start of
/// the stream; further grants travel in `Frame.credit`. Without it the node sends
/// without limit (HTTP/2 flow control and the mailbox bound the stream).
pub const CREDIT_METADATA: &str = "reef-credit";
/// Metadata a node sets on a call it forwards down the tree: the caller it acts for
/// (`client:ops`), whose rights the receiving node's policies check. Believed only from
/// the node the receiving node joined, and only with [`ON_BEHALF_OF_CHAIN_METADATA`].
pub const ON_BEHALF_OF_METADATA: &str = "reef-on-behalf-of";
/// Binary metadata beside [`ON_BEHALF_OF_METADATA`] (other than for `anonymous`): the
/// certificate chain that caller presented, each DER certificate after its length (4
/// bytes, big-endian). The receiving node believes the caller only if it would believe
/// that certificate itself.
pub const ON_BEHALF_OF_CHAIN_METADATA: &str = "reef-on-behalf-of-chain-bin";
/// Metadata on a PERMISSION_DENIED status: the name of the policy that denied.
pub const POLICY_METADATA: &str = "reef-policy";
