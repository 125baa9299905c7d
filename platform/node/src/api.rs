//! The node's gRPC edge: the services (`reef.v1.Supervisor`, `Channel`, `State`,
//! `Files`), the calls the node makes to task hosts (`hosting`), the conversions between
//! wire messages and domain types (`routing`, `supervision`), who is calling (`identity`) and the one mapping from domain errors
//! to statuses (`error`). Nothing outside this module builds a `tonic::Status` for a
//! caller to see, but for the attach stream's own status (`channel.rs`).

pub(crate) mod channel;
pub(crate) mod error;
pub(crate) mod files;
pub(crate) mod hosting;
pub mod identity;
pub(crate) mod routing;
pub(crate) mod state;
pub(crate) mod supervision;
pub(crate) mod supervisor;
