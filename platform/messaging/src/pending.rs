//! Requests a container is waiting on, with their deadlines.

use std::collections::{BTreeSet, HashMap, hash_map::Entry};

use reef_core::Alias;
use tokio::time::Instant;

/// One request in flight.
#[derive(Debug, Clone)]
pub struct Pending {
    /// When the node took the request: an answer's latency is counted from here.
    pub asked: Instant,
    /// When the caller gets DEADLINE_EXCEEDED.
    pub deadline: Instant,
    /// Who must answer; a reply from anyone else is not accepted. The host of a task,
    /// or the link to another node, rather than the addressee.
    pub callee: Alias,
    /// The alias the request was sent to.
    pub addressee: Alias,
    /// Who asked: the stream's container, or a task it hosts.
    pub origin: Alias,
    /// Whether the callee hears CANCEL when the deadline passes (not when the caller
    /// will retry).
    pub cancel_on_expiry: bool,
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
    /// The deadline the timer is set for: only an earlier one needs to wake it.
    armed: Option<Instant>,
}

impl PendingRequests {
    /// An empty table holding at most `limit` requests.
    pub fn new(limit: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            by_deadline: BTreeSet::new(),
            limit,
            armed: None,
        }
    }

    /// Tracks request `id`. Returns true when its deadline is earlier than the one the
    /// timer is armed for, so the timer must be woken to re-arm. A timer armed for a
    /// request that has completed meanwhile is left alone: it wakes, finds nothing
    /// expired and re-arms, which costs one wake-up per timeout instead of one per request.
    pub fn insert(&mut self, id: u64, pending: Pending) -> Result<bool, PendingError> {
        let earliest = self.armed.is_none_or(|armed| pending.deadline < armed);
        let full = self.by_id.len() >= self.limit;
        match self.by_id.entry(id) {
            Entry::Occupied(_) => return Err(PendingError::Duplicate),
            Entry::Vacant(_) if full => return Err(PendingError::Full),
            Entry::Vacant(slot) => {
                self.by_deadline.insert((pending.deadline, id));
                slot.insert(pending);
            }
        }
        Ok(earliest)
    }

    /// A REQUEST that reuses the id of request `id` in flight is a retry of it: it is
    /// neither delivered again nor answered twice. Its `deadline`, if later, becomes the
    /// request's, and whether the callee hears CANCEL on expiry is the retry's to say.
    /// False when no request `id` is in flight (the retry is a new delivery).
    pub fn absorb_retry(&mut self, id: u64, deadline: Instant, cancel_on_expiry: bool) -> bool {
        let Some(pending) = self.by_id.get_mut(&id) else {
            return false;
        };
        pending.cancel_on_expiry = cancel_on_expiry;
        if deadline > pending.deadline {
            // Later: no wake-up needed (see `extend`).
            self.by_deadline.remove(&(pending.deadline, id));
            pending.deadline = deadline;
            self.by_deadline.insert((deadline, id));
        }
        true
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

    /// Moves the deadline of request `id` to `deadline` if `callee` is the one it waits
    /// for (PROGRESS); false when it does not wait for `callee`. A later deadline needs
    /// no wake-up: the timer finds nothing expired at the old one and re-arms.
    pub fn extend(&mut self, id: u64, callee: &str, deadline: Instant) -> bool {
        let Some(pending) = self
            .by_id
            .get_mut(&id)
            .filter(|p| p.callee.as_str() == callee)
        else {
            return false;
        };
        self.by_deadline.remove(&(pending.deadline, id));
        pending.deadline = deadline;
        self.by_deadline.insert((deadline, id));
        true
    }

    /// Removes request `id` whatever its callee (its delivery failed, or the caller gave
    /// up) and returns it.
    pub fn forget(&mut self, id: u64) -> Option<Pending> {
        let pending = self.by_id.remove(&id)?;
        self.by_deadline.remove(&(pending.deadline, id));
        Some(pending)
    }

    /// Removes and returns every request (the caller detached).
    pub fn take_all(&mut self) -> Vec<(u64, Pending)> {
        self.by_deadline.clear();
        self.by_id.drain().collect()
    }

    /// Removes and returns the requests waiting for `callee`, except those `keep` says
    /// are still on their way to it.
    pub fn take_for_callee(&mut self, callee: &str, keep: impl Fn(u64) -> bool) -> Vec<u64> {
        let ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(id, pending)| pending.callee.as_str() == callee && !keep(**id))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.forget(*id);
        }
        ids
    }

    /// The earliest deadline, if any request is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }

    /// Sets the timer to the earliest deadline and returns it. Called by the timer under
    /// the same lock as [`PendingRequests::insert`], so no deadline slips between the two.
    pub fn arm(&mut self) -> Option<Instant> {
        self.armed = self.next_deadline();
        self.armed
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
            asked: at,
            deadline: at,
            callee: Alias::parse(callee).unwrap(),
            addressee: Alias::parse(callee).unwrap(),
            origin: Alias::parse("caller").unwrap(),
            cancel_on_expiry: true,
        }
    }

    #[test]
    fn tracks_completes_and_expires_in_deadline_order() {
        let now = Instant::now();
        let at = |secs| now + Duration::from_secs(secs);
        let mut table = PendingRequests::new(10);
        assert!(
            table.insert(1, pending(at(5), "b")).unwrap(),
            "nothing armed yet"
        );
        assert_eq!(table.arm(), Some(at(5)));
        assert!(
            table.insert(2, pending(at(1), "b")).unwrap(),
            "earlier than armed"
        );
        assert_eq!(table.arm(), Some(at(1)));
        assert!(
            !table.insert(3, pending(at(9), "c")).unwrap(),
            "later than armed"
        );
        let duplicate = table.insert(3, pending(now, "c")).unwrap_err();
        assert_eq!(duplicate, PendingError::Duplicate);
        assert!(
            table.complete(1, "c").is_none(),
            "only the callee may answer"
        );
        assert!(table.complete(1, "b").is_some());
        assert!(!table.extend(2, "c", at(3)), "only the callee may extend");
        assert!(table.extend(3, "c", at(1)));
        let expired = table.expire(at(2));
        assert_eq!(
            expired.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(table.is_empty());
    }

    #[test]
    fn a_completed_request_leaves_the_timer_armed_for_its_deadline() {
        let now = Instant::now();
        let at = |secs| now + Duration::from_secs(secs);
        let mut table = PendingRequests::new(10);
        table.insert(1, pending(at(5), "b")).unwrap();
        table.arm();
        table.complete(1, "b").unwrap();
        // The timer still wakes at 5 s; a later request needs no wake-up of its own.
        assert!(!table.insert(2, pending(at(6), "b")).unwrap());
        assert_eq!(table.arm(), Some(at(6)));
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
