//! The child nodes that joined this node, and how calls for what lives below them are
//! forwarded down the tree.

use std::collections::HashMap;

use parking_lot::Mutex;
use reef_core::{LINK_PREFIX, link_alias};

use crate::Registry;

/// Where a child node serves its API, as it said when it joined.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    /// `host:port`.
    pub endpoint: String,
    /// The CA that signed its server certificate.
    pub ca_pem: String,
}

/// The child nodes that joined this node, for calls forwarded down the tree.
#[derive(Debug, Default)]
pub struct ChildNodes {
    joined: Mutex<HashMap<String, NodeEndpoint>>,
}

impl ChildNodes {
    /// Records what child `name` said when it joined.
    pub(crate) fn record(&self, name: &str, endpoint: NodeEndpoint) {
        self.lock().insert(name.to_owned(), endpoint);
    }

    /// The child node through which node `name` is reached: `name` itself when it is a
    /// child, or the child that announced `name`'s link among its own containers.
    pub(crate) fn next_hop(
        &self,
        registry: &Registry,
        name: &str,
    ) -> Option<(String, NodeEndpoint)> {
        let joined = self.lock();
        if let Some(endpoint) = joined.get(name) {
            return Some((name.to_owned(), endpoint.clone()));
        }
        // Announced by a child: hosted by that child's link.
        let owner = registry.registered_owner(&link_alias(name))?;
        let child = owner.as_str().strip_prefix(LINK_PREFIX)?;
        Some((child.to_owned(), joined.get(child)?.clone()))
    }

    /// The child node below which container `alias` lives (announced by that child),
    /// if it lives below this node.
    pub(crate) fn below(&self, registry: &Registry, alias: &str) -> Option<(String, NodeEndpoint)> {
        let owner = registry.registered_owner(alias)?;
        let child = owner.as_str().strip_prefix(LINK_PREFIX)?;
        Some((child.to_owned(), self.lock().get(child)?.clone()))
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, NodeEndpoint>> {
        self.joined.lock()
    }
}
