//! Keys bound to a container's life: checked when written, deleted when it is gone.
//!
//! A container is gone when the registry no longer knows its alias: a supervised one
//! when it is destroyed, a self-registered one when its registration ends. Registry
//! events trigger a release at once; a periodic sweep catches what the events missed (a
//! lagging subscriber, a crash between the destroy and the release, a bound key written
//! while its owner was being destroyed).

use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast::error::RecvError;

use super::{Backend, StateError};
use crate::{EventKind, Registry};

/// How often every owner with keys is checked against the registry.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Decides whether an owner is alive and releases the keys of those that are not.
#[derive(Clone)]
pub struct Owners {
    registry: Arc<Registry>,
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners").finish_non_exhaustive()
    }
}

impl Owners {
    /// Owners are the containers of `registry`.
    pub fn new(registry: Arc<Registry>, backend: Arc<dyn Backend>) -> Self {
        Self { registry, backend }
    }

    /// Refuses an owner that is not a live container.
    pub fn check(&self, owner: &str) -> Result<(), StateError> {
        match self.registry.get(owner) {
            Some(_) => Ok(()),
            None => Err(StateError::NoSuchOwner(owner.to_owned())),
        }
    }

    /// Releases the keys of owners that are gone, now and whenever a container goes.
    /// Ends when the registry does.
    pub async fn run(self) {
        let mut events = self.registry.subscribe();
        self.sweep().await;
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if matches!(event.kind, EventKind::Destroy | EventKind::Deregistered | EventKind::Detached) => {
                        self.release_if_gone(event.container.spec.alias.as_str()).await;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => self.sweep().await,
                    Err(RecvError::Closed) => return,
                },
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    async fn sweep(&self) {
        match self.backend.owners().await {
            Ok(owners) => {
                for owner in owners {
                    self.release_if_gone(&owner).await;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list the owners of bound keys"),
        }
    }

    async fn release_if_gone(&self, owner: &str) {
        if self.registry.get(owner).is_some() {
            return;
        }
        match self.backend.release(owner).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(
                owner,
                released,
                "deleted the keys bound to a container that is gone"
            ),
            Err(error) => {
                tracing::warn!(owner, %error, "cannot delete the keys bound to a container that is gone")
            }
        }
    }
}
