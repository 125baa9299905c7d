//! The node's gRPC edge: one module per service (`reef.v1.Supervisor`, `Channel`,
//! `State`, `Files`), each with the jobs it does in modules of its own (`supervisor/`,
//! `files/`); who is calling (`identity`); and the one mapping from domain errors to
//! statuses (`error`). Nothing outside this module builds a `tonic::Status` for a
//! caller to see, but for the attach stream's own status (`channel.rs`).

pub(crate) mod channel;
pub(crate) mod error;
pub(crate) mod files;
pub mod identity;
pub(crate) mod state;
pub(crate) mod supervisor;
