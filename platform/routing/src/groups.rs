//! Groups: named sets of containers addressed as `group:NAME`, and how a strategy picks
//! the member an envelope goes to.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use reef_core::Alias;

/// How a group picks its receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Members in turn.
    #[default]
    RoundRobin,
    /// Any member.
    Random,
    /// Every member gets a copy (sends only).
    Broadcast,
    /// By rendezvous hashing of a header.
    ConsistentHash,
    /// The member with the fewest envelopes queued.
    LeastLoaded,
    /// The first available member in join order.
    FirstAvailable,
}

/// One group. Immutable once published: a change replaces it.
#[derive(Debug, Default)]
pub struct Group {
    pub(crate) strategy: Strategy,
    /// CONSISTENT_HASH: which header is hashed.
    pub(crate) hash_key: String,
    pub(crate) members: Vec<Alias>,
    /// ROUND_ROBIN: where the next turn starts.
    next: AtomicUsize,
}

/// What the router knows about a member when a strategy asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Attached, with this many envelopes queued.
    Attached(usize),
    /// Not attached, but its envelopes are held for it (it is restarting).
    Held,
    /// Unknown to the node or stopped.
    Absent,
}

impl Group {
    /// A group of `members`, picked among by `strategy`.
    pub fn new(strategy: Strategy, hash_key: String, members: Vec<Alias>) -> Self {
        Self {
            strategy,
            hash_key,
            members,
            next: AtomicUsize::new(0),
        }
    }

    /// How it picks.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// CONSISTENT_HASH: the header whose value is hashed.
    pub fn hash_key(&self) -> &str {
        &self.hash_key
    }

    /// Its members, in join order.
    pub fn members(&self) -> &[Alias] {
        &self.members
    }

    /// The member one envelope goes to (not for BROADCAST). Attached members are
    /// preferred; a restarting member is chosen only when no member is attached (its
    /// envelopes are then held). Consistent hashing considers every member the node
    /// knows, so that a restart does not move keys.
    pub fn pick(
        &self,
        key: &str,
        random: u64,
        mut availability: impl FnMut(&Alias) -> Availability,
    ) -> Option<&Alias> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = match self.strategy {
            Strategy::RoundRobin => self.next.fetch_add(1, Relaxed) % n,
            Strategy::Random => (random % n as u64) as usize,
            Strategy::FirstAvailable | Strategy::Broadcast => 0,
            Strategy::ConsistentHash => {
                return self
                    .members
                    .iter()
                    .filter(|m| availability(m) != Availability::Absent)
                    .max_by_key(|m| rendezvous(key, m));
            }
            Strategy::LeastLoaded => {
                let least = self
                    .members
                    .iter()
                    .filter_map(|m| match availability(m) {
                        Availability::Attached(queued) => Some((queued, m)),
                        _ => None,
                    })
                    .min_by_key(|(queued, _)| *queued);
                if let Some((_, member)) = least {
                    return Some(member);
                }
                0
            }
        };
        let in_turn = (0..n).map(|i| &self.members[(start + i) % n]);
        let mut held = None;
        for member in in_turn {
            match availability(member) {
                Availability::Attached(_) => return Some(member),
                Availability::Held if held.is_none() => held = Some(member),
                _ => {}
            }
        }
        held
    }
}

/// The rendezvous (highest random weight) score of `member` for `key`.
fn rendezvous(key: &str, member: &Alias) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    member.as_str().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Alias> {
        (0..n)
            .map(|i| Alias::parse(&format!("m{i}")).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_skips_detached_members_and_falls_back_to_held_ones() {
        let group = Group::new(Strategy::RoundRobin, String::new(), members(3));
        let attached = |m: &Alias| match m.as_str() {
            "m1" => Availability::Absent,
            _ => Availability::Attached(0),
        };
        let picks: Vec<_> = (0..4)
            .map(|_| group.pick("", 0, attached).unwrap().as_str().to_owned())
            .collect();
        assert_eq!(picks, ["m0", "m2", "m2", "m0"]);
        let held = |m: &Alias| match m.as_str() {
            "m2" => Availability::Held,
            _ => Availability::Absent,
        };
        assert_eq!(group.pick("", 0, held).unwrap().as_str(), "m2");
        assert!(group.pick("", 0, |_| Availability::Absent).is_none());
    }

    #[test]
    fn least_loaded_and_first_available() {
        let least = Group::new(Strategy::LeastLoaded, String::new(), members(3));
        let load = |m: &Alias| Availability::Attached(if m.as_str() == "m1" { 2 } else { 5 });
        assert_eq!(least.pick("", 0, load).unwrap().as_str(), "m1");
        let first = Group::new(Strategy::FirstAvailable, String::new(), members(3));
        let only_last = |m: &Alias| match m.as_str() {
            "m2" => Availability::Attached(9),
            _ => Availability::Absent,
        };
        assert_eq!(first.pick("", 0, only_last).unwrap().as_str(), "m2");
    }

    #[test]
    fn consistent_hashing_moves_only_the_keys_of_a_member_that_leaves() {
        let four = Group::new(Strategy::ConsistentHash, "k".into(), members(4));
        let mut three = members(4);
        three.remove(2);
        let three = Group::new(Strategy::ConsistentHash, "k".into(), three);
        let up = |_: &Alias| Availability::Attached(0);
        let keys = 10_000;
        let mut stayed = 0;
        for key in 0..keys {
            let key = format!("user-{key}");
            let before = four.pick(&key, 0, up).unwrap();
            let after = three.pick(&key, 0, up).unwrap();
            if before == after {
                stayed += 1;
            } else {
                assert_eq!(before.as_str(), "m2", "only the leaver's keys move");
            }
        }
        // The leaver held about a quarter of the keys.
        assert!(
            stayed >= keys * 70 / 100 && stayed <= keys * 80 / 100,
            "{stayed}"
        );
    }
}
