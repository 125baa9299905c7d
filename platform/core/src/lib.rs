//! The small vocabulary every part of reef shares: aliases, node names, principals,
//! glob patterns, lease tokens, lifecycle events, latency histograms, wire time, the data dir's lock and private files.
//!
//! It depends on nothing of reef's but the wire types (`reef-proto`), so the SDK, the
//! CLI, the gateway and the node can all speak it without pulling in one another.
//!
//! ```
//! use reef_core::{Alias, Principal};
//!
//! let alias = Alias::parse("orders/eu").unwrap();
//! assert_eq!(alias.as_str(), "orders/eu");
//! let caller = Principal::from_identity(Some("reef://client/ops"));
//! assert_eq!(caller.to_string(), "client:ops");
//! ```
#![warn(missing_docs)]

mod alias;
mod clock;
mod data_dir;
pub mod histogram;
mod lease;
pub mod lifecycle;
mod node_name;
mod pattern;
mod principal;
mod private_file;

pub use self::{
    alias::{Alias, InvalidAlias, MAX_ALIAS_LEN},
    clock::{millis, unix_ms},
    data_dir::{DataDirError, DataDirLock},
    histogram::{Histogram, HistogramSnapshot},
    lease::new_lease,
    node_name::{LINK_PREFIX, PARENT_LINK, check_node_name, link_alias},
    pattern::Pattern,
    principal::Principal,
    private_file::write_private,
};
