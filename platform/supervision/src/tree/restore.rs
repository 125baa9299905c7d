//! The tree as stored after every change, and as read back (running processes
//! adopted) when the node starts.

use super::*;

impl Tree {
    /// What the store keeps of the tree.
    pub(crate) fn stored(&self) -> Vec<StoredContainer> {
        self.entries
            .values()
            .map(|entry| StoredContainer {
                definition: (*entry.definition).clone(),
                order: entry.order,
                token: entry.token.clone(),
                running: entry.want == Want::Running,
                restarts: entry.restarts,
                process: entry.process.as_ref().map(|p| p.id),
            })
            .collect()
    }

    /// Puts a stored container back, restored in the order they were created.
    /// `adopted` is its process if that still runs: a running container adopts it and
    /// must attach again within the attach timeout, a stopped one has it killed.
    /// Returns whether it adopted the process, whose exit the actor then watches.
    pub(crate) fn restore(&mut self, saved: StoredContainer, adopted: Option<ProcessId>) -> bool {
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
        let mut adopting = false;
        if let Some(id) = adopted {
            if saved.running {
                entry.generation = 1;
                entry.state = State::Started;
                entry.activity = "adopted: waiting for it to attach".to_owned();
                let mut process = Process::new(id, 1);
                process.detached_at = Some(process.spawned_at);
                entry.process = Some(process);
                adopting = true;
                tracing::info!(%alias, pid = id.pid, "adopted a running container process");
            } else {
                self.effects.push(Effect::Signal {
                    id,
                    signal: Signal::SIGKILL,
                });
            }
        }
        self.effects.push(Effect::Reserve {
            snapshot: entry.snapshot(),
            token: entry.token.clone(),
        });
        self.entries.insert(alias, entry);
        self.dirty = true;
        adopting
    }
}
