//! The tree on disk: written after every change, read back (and running processes
//! adopted) when the node starts.

use super::*;

impl Actor {
    pub(super) fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let stored = self
            .entries
            .values()
            .map(|entry| StoredContainer {
                definition: (*entry.definition).clone(),
                order: entry.order,
                token: entry.token.clone(),
                running: entry.want == Want::Running,
                restarts: entry.restarts,
                process: entry.process.as_ref().map(|p| p.id),
            })
            .collect();
        if let Err(error) = self.store.save(stored) {
            tracing::error!(%error, "cannot write the durable registry");
        }
    }

    /// Rebuilds the tree from the store; processes that still run are adopted and must
    /// attach again, the others start afresh.
    pub(super) fn restore(&mut self, mut stored: Vec<StoredContainer>) {
        stored.sort_by_key(|s| s.order);
        for saved in stored {
            let alias = saved.definition.alias.clone();
            self.next_order = self.next_order.max(saved.order + 1);
            let mut entry = Entry::new(saved.definition, saved.order, saved.token);
            entry.restarts = saved.restarts;
            entry.want = if saved.running {
                Want::Running
            } else {
                Want::Stopped
            };
            entry.state = if saved.running {
                State::Created
            } else {
                State::Stopped
            };
            entry.ever_ready = true;
            if let Some((id, exit)) = saved.process.and_then(|id| Some((id, self.os.adopt(id)?))) {
                if saved.running {
                    entry.generation = 1;
                    entry.state = State::Started;
                    entry.activity = "adopted: waiting for it to attach".to_owned();
                    // It must attach again within the attach timeout.
                    let mut process = Process::new(id, 1);
                    process.detached_at = Some(process.spawned_at);
                    entry.process = Some(process);
                    self.watch_exit(&alias, 1, exit);
                    tracing::info!(%alias, pid = id.pid, "adopted a running container process");
                } else {
                    self.os.signal(id, Signal::SIGKILL);
                }
            }
            if let Err(error) = self.reservations.reserve(entry.snapshot(), &entry.token) {
                tracing::error!(%alias, %error, "cannot restore a supervised container");
                continue;
            }
            self.entries.insert(alias, entry);
        }
        self.dirty = true;
    }
}
