//! Links between nodes: the stream that joins a child node to its parent.
//!
//! A link is a registration like a container's, under the alias `nodes/NAME`, with
//! three differences:
//!
//! - every envelope queued for it is numbered and kept in its acknowledgement log until
//!   the node at the other end acknowledges it (cumulatively), so a stream that breaks
//!   loses nothing: the next stream of the link delivers the rest again, and the other
//!   end drops what it had already routed (by number, in [`LinkSession::accept`]);
//! - while it is down, envelopes for it (and for the aliases behind it) are held, as for
//!   a restarting container, until the partition tolerance runs out;
//! - origins behind it are believed, unless they name a container of this node.
//!
//! On the parent, the child's link hosts the aliases the child announces (`Host`), so
//! they route down to it. On the child, the link to its parent (`nodes/parent`) is the
//! default route: an alias the child does not know goes up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

/// What one end of a link remembers across the link's streams.
#[derive(Debug, Default)]
pub struct LinkSession {
    /// The session the other end announced: a new one means it restarted.
    peer: Mutex<String>,
    /// The highest sequence routed from the other end.
    received: AtomicU64,
}

impl LinkSession {
    /// Whether envelope `sequence` from the other end is new (not a redelivery of one
    /// already routed). Called in stream order.
    pub(crate) fn accept(&self, sequence: u64) -> bool {
        self.received.fetch_max(sequence, Relaxed) < sequence
    }

    /// Records the other end's session; when it changed, the other end numbers from 1
    /// again. Returns whether it changed.
    pub(crate) fn meet(&self, session: &str) -> bool {
        let mut peer = self.peer.lock();
        if *peer == session {
            return false;
        }
        session.clone_into(&mut peer);
        self.received.store(0, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_what_it_routed_already_until_the_peer_restarts() {
        let session = LinkSession::default();
        assert!(session.meet("a"));
        assert!(session.accept(1));
        assert!(session.accept(2));
        assert!(!session.accept(2));
        assert!(!session.accept(1));
        assert!(!session.meet("a"));
        assert!(!session.accept(2));
        assert!(session.meet("b"));
        assert!(session.accept(1));
    }
}
