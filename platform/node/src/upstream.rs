//! The tree above a child node, as far as a claim on an alias goes.
//!
//! A node knows the aliases of its own subtree, not those above it: an alias it has never
//! seen may live on an ancestor or in a sibling's subtree. So before a node routes a new
//! alias down to one of its children, it claims that alias in the tree above, through
//! its parent (which claims it through its own, up to the root, which knows every alias
//! of the tree). Only the root decides alone. Without this a child could announce an
//! alias of another part of the tree, and its parent would route that alias's messages
//! down to the child.
//!
//! [`Upstream`] is shared by the uplink, which sets it while it is linked, and the
//! Supervisor's `Host`, which claims a child's new aliases through it.

use std::sync::Arc;

use reef_proto::{self as wire, supervisor_client::SupervisorClient};
use tonic::transport::Channel;

/// This node's link at its parent, while it is linked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Upstream(Arc<parking_lot::RwLock<Option<AtParent>>>);

#[derive(Debug, Clone)]
struct AtParent {
    supervisor: SupervisorClient<Channel>,
    /// This node's link registration at the parent (`nodes/NAME`) and its lease.
    alias: String,
    lease: String,
}

/// What the tree above said of a claim.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// Each alias the tree above refused, with its reason. Those it did not name are
    /// this node's (behind its link there).
    Refused(Vec<(String, String)>),
    /// The parent is not reachable now: nothing could be checked.
    Unlinked,
}

impl Upstream {
    /// Linked to the parent, as `alias` with `lease`.
    pub fn linked(&self, supervisor: SupervisorClient<Channel>, alias: &str, lease: &str) {
        *self.0.write() = Some(AtParent {
            supervisor,
            alias: alias.to_owned(),
            lease: lease.to_owned(),
        });
    }

    /// The link to the parent broke.
    pub fn unlinked(&self) {
        *self.0.write() = None;
    }

    /// Claims `tasks` (a child's, new here) in the tree above: the parent hosts them on
    /// this node's link there, unless they belong to another part of the tree. Only
    /// ALREADY_EXISTS counts as a refusal: any other failure to place an alias up
    /// there (the parent is full, say) leaves it reachable from this node's subtree.
    pub async fn claim(&self, tasks: Vec<wire::HostedTask>) -> Claimed {
        let Some(at_parent) = self.0.read().clone() else {
            return Claimed::Unlinked;
        };
        let request = wire::HostRequest {
            alias: at_parent.alias,
            lease: at_parent.lease,
            upsert: tasks,
            remove: Vec::new(),
            replace: false,
        };
        match at_parent.supervisor.clone().host(request).await {
            Ok(answer) => Claimed::Refused(
                answer
                    .into_inner()
                    .results
                    .into_iter()
                    .filter(|result| result.code == tonic::Code::AlreadyExists as i32)
                    .map(|result| (result.alias, result.message))
                    .collect(),
            ),
            Err(status) => {
                tracing::warn!(%status, "claiming a child's aliases at the parent failed");
                Claimed::Unlinked
            }
        }
    }
}
