//! Requests a container is waiting on, with their deadlines.

use std::{
    collections::{BTreeSet, HashMap, hash_map::Entry},
    time::Instant,
};

use crate::Alias;

/// One request in flight.
#[derive(Debug, Clone)]
pub struct Pending {
    /// When the caller gets DEADLINE_EXCEEDED.
    pub deadline: Instant,
    /// Who must answer; a reply from anyone else is not accepted.
    pub callee: Alias,
}

/// Why a request cannot be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingError {
    /// The caller reused the id of a request still in flight.
    Duplicate,
    /// The caller has too many requests in flight.
    Full,
}

/// The requests of one caller, by id and by deadline.
#[derive(Debug)]
pub struct PendingRequests {
    by_id: HashMap<u64, Pending>,
    by_deadline: BTreeSet<(Instant, u64)>,
    limit: usize,
}

impl PendingRequests {
    /// An empty table holding at most `limit` requests.
    pub fn new(limit: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            by_deadline: BTreeSet::new(),
            limit,
        }
    }

    /// Tracks request `id`. Returns true when it is now the earliest deadline, so the
    /// timer must be re-armed.
    pub fn insert(&mut self, id: u64, pending: Pending) -> Result<bool, PendingError> {
        if self.by_id.len() >= self.limit {
            return Err(PendingError::Full);
        }
        let earliest = self
            .by_deadline
            .first()
            .is_none_or(|(first, _)| pending.deadline < *first);
        match self.by_id.entry(id) {
            Entry::Occupied(_) => return Err(PendingError::Duplicate),
            Entry::Vacant(slot) => {
                self.by_deadline.insert((pending.deadline, id));
                slot.insert(pending);
            }
        }
        Ok(earliest)
    }

    /// Removes request `id` if `callee` is the one it waits for.
    pub fn complete(&mut self, id: u64, callee: &str) -> Option<Pending> {
        match self.by_id.entry(id) {
            Entry::Occupied(entry) if entry.get().callee.as_str() == callee => {
                let pending = entry.remove();
                self.by_deadline.remove(&(pending.deadline, id));
                Some(pending)
            }
            _ => None,
        }
    }

    /// Whether request `id` is waiting for `callee`.
    pub fn awaits(&self, id: u64, callee: &str) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|p| p.callee.as_str() == callee)
    }

    /// Removes request `id` whatever its callee (its delivery failed).
    pub fn forget(&mut self, id: u64) {
        if let Some(pending) = self.by_id.remove(&id) {
            self.by_deadline.remove(&(pending.deadline, id));
        }
    }

    /// The earliest deadline, if any request is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }

    /// Removes and returns every request whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, Pending)> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.by_deadline.first() {
            if deadline > now {
                break;
            }
            self.by_deadline.pop_first();
            if let Some(pending) = self.by_id.remove(&id) {
                expired.push((id, pending));
            }
        }
        expired
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pending(at: Instant, callee: &str) -> Pending {
        Pending {
            deadline: at,
            callee: Alias::parse(callee).unwrap(),
        }
    }

    #[test]
    fn tracks_completes_and_expires_in_deadline_order() {
        let now = Instant::now();
        let mut table = PendingRequests::new(10);
        assert!(
            table
                .insert(1, pending(now + Duration::from_secs(5), "b"))
                .unwrap()
        );
        assert!(
            table
                .insert(2, pending(now + Duration::from_secs(1), "b"))
                .unwrap()
        );
        assert!(
            !table
                .insert(3, pending(now + Duration::from_secs(9), "c"))
                .unwrap()
        );
        assert_eq!(
            table.insert(3, pending(now, "c")).unwrap_err(),
            PendingError::Duplicate
        );
        assert!(
            table.complete(1, "c").is_none(),
            "only the callee may answer"
        );
        assert!(table.complete(1, "b").is_some());
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(1)));
        let expired = table.expire(now + Duration::from_secs(2));
        assert_eq!(
            expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn refuses_more_than_the_limit() {
        let now = Instant::now();
        let mut table = PendingRequests::new(1);
        table.insert(1, pending(now, "b")).unwrap();
        assert_eq!(
            table.insert(2, pending(now, "b")).unwrap_err(),
            PendingError::Full
        );
    }
}
