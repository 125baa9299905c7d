//! Tickets for direct push streams: a node vouches to a container for the peer that
//! opens `Container.Push` on it, without either learning the other's lease.

use std::{collections::HashMap, time::Duration};

use parking_lot::Mutex;
use reef_core::{Alias, new_lease};
use tokio::time::Instant;

/// How long a ticket may wait to be redeemed.
const TICKET_LIFETIME: Duration = Duration::from_secs(30);
/// Tickets a node keeps outstanding.
const MAX_TICKETS: usize = 65_536;

struct Ticket {
    origin: Alias,
    peer: Alias,
    expires: Instant,
}

/// Outstanding push tickets.
#[derive(Default)]
pub struct PushTickets {
    tickets: Mutex<HashMap<String, Ticket>>,
}

impl std::fmt::Debug for PushTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTickets").finish_non_exhaustive()
    }
}

impl PushTickets {
    /// A single-use ticket for `origin` to push to `peer`; `None` when too many are
    /// outstanding.
    pub fn issue(&self, origin: Alias, peer: Alias) -> Option<String> {
        let mut tickets = self.tickets.lock();
        let now = Instant::now();
        if tickets.len() >= MAX_TICKETS {
            tickets.retain(|_, ticket| ticket.expires > now);
            if tickets.len() >= MAX_TICKETS {
                return None;
            }
        }
        let token = new_lease();
        tickets.insert(
            token.clone(),
            Ticket {
                origin,
                peer,
                expires: now + TICKET_LIFETIME,
            },
        );
        Some(token)
    }

    /// Redeems `token` for `peer`: the alias that may push to it.
    pub fn redeem(&self, token: &str, peer: &str) -> Option<Alias> {
        let ticket = self.tickets.lock().remove(token)?;
        (ticket.peer.as_str() == peer && ticket.expires > Instant::now()).then_some(ticket.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_for_one_peer_and_one_use() {
        let tickets = PushTickets::default();
        let alias = |a: &str| Alias::parse(a).unwrap();
        let token = tickets.issue(alias("a"), alias("b")).unwrap();
        assert!(tickets.redeem(&token, "c").is_none(), "another peer");
        let token = tickets.issue(alias("a"), alias("b")).unwrap();
        assert_eq!(tickets.redeem(&token, "b").unwrap().as_str(), "a");
        assert!(tickets.redeem(&token, "b").is_none(), "used");
    }
}
