//! Keys bound to a container's life: checked when written, deleted when it is gone.
//!
//! A container is gone when [`Liveness`] (the node's registry) no longer knows its alias:
//! a supervised one when it is destroyed, a self-registered one when its registration
//! ends. Departures trigger a release at once; a periodic sweep catches what the events missed (a
//! lagging subscriber, a crash between the destroy and the release, a bound key written
//! while its owner was being destroyed).

use std::{fmt, pin::Pin, sync::Arc, time::Duration};

use tokio_stream::{Stream, StreamExt as _};

use super::{Backend, StateError};

/// How often every owner with keys is checked against [`Liveness`].
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// News of containers, as [`Liveness::departures`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// This container may be gone (destroyed, deregistered, detached): check it.
    Left(String),
    /// Some news was lost (a lagging subscriber): check every owner.
    Missed,
}

/// Departures from now on; the stream ends when its source does.
pub type Departures = Pin<Box<dyn Stream<Item = Departure> + Send>>;

/// What state needs to know of containers: whether one is alive, and news of those that
/// go. The node's registry is the real one; tests plug in a fake.
pub trait Liveness: Send + Sync + 'static {
    /// Whether `owner` is a live container now.
    fn is_alive(&self, owner: &str) -> bool;
    /// News of containers leaving, from now on.
    fn departures(&self) -> Departures;
}

/// Decides whether an owner is alive and releases the keys of those that are not.
#[derive(Clone)]
pub struct Owners {
    liveness: Arc<dyn Liveness>,
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for Owners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owners").finish_non_exhaustive()
    }
}

impl Owners {
    /// Owners are the containers `liveness` knows.
    pub fn new(liveness: Arc<dyn Liveness>, backend: Arc<dyn Backend>) -> Self {
        Self { liveness, backend }
    }

    /// Refuses an owner that is not a live container.
    pub fn check(&self, owner: &str) -> Result<(), StateError> {
        if self.liveness.is_alive(owner) {
            Ok(())
        } else {
            Err(StateError::NoSuchOwner(owner.to_owned()))
        }
    }

    /// Releases the keys of owners that are gone, now and whenever a container goes.
    /// Ends when the departures do.
    pub async fn run(self) {
        let mut departures = self.liveness.departures();
        self.sweep().await;
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
        loop {
            tokio::select! {
                departure = departures.next() => match departure {
                    Some(Departure::Left(owner)) => self.release_if_gone(&owner).await,
                    Some(Departure::Missed) => self.sweep().await,
                    None => return,
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
        if self.liveness.is_alive(owner) {
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use bytes::Bytes;
    use parking_lot::Mutex;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;
    use crate::{Embedded, EmbeddedConfig, Namespace, Op, Txn};

    /// Containers are names in a set; departures are what the test sends.
    struct FakeLiveness {
        alive: Mutex<HashSet<String>>,
        departures: Mutex<Option<mpsc::UnboundedReceiver<Departure>>>,
    }

    impl Liveness for FakeLiveness {
        fn is_alive(&self, owner: &str) -> bool {
            self.alive.lock().contains(owner)
        }

        fn departures(&self) -> Departures {
            let departures = self.departures.lock().take().expect("one subscriber");
            Box::pin(UnboundedReceiverStream::new(departures))
        }
    }

    fn bound(namespace: &Namespace, key: &str, owner: &str) -> Txn {
        Txn::new(
            namespace.clone(),
            vec![Op::Put {
                key: key.to_owned(),
                value: Bytes::from_static(b"v"),
                owner: Some(owner.to_owned()),
            }],
        )
    }

    async fn exists(store: &Embedded, namespace: &Namespace, key: &str) -> bool {
        store.get(namespace, key).await.unwrap().0.is_some()
    }

    /// Lets the owners' task run until `key` is gone; bounded, and independent of time.
    async fn until_gone(store: &Embedded, namespace: &Namespace, key: &str) {
        for _ in 0..10_000 {
            if !exists(store, namespace, key).await {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{key} was not released");
    }

    #[tokio::test]
    async fn keys_go_with_their_owner_and_a_missed_departure_is_caught_by_a_sweep() {
        let store = Arc::new(
            Embedded::open(EmbeddedConfig {
                path: None,
                history: 1000,
            })
            .unwrap(),
        );
        let ns = Namespace::new("owned").unwrap();
        let (depart, departures) = mpsc::unbounded_channel();
        let liveness = Arc::new(FakeLiveness {
            alive: Mutex::new(["a".to_owned(), "b".to_owned()].into()),
            departures: Mutex::new(Some(departures)),
        });
        let owners = Owners::new(liveness.clone(), store.clone());
        assert!(owners.check("a").is_ok());
        assert_eq!(
            owners.check("ghost"),
            Err(StateError::NoSuchOwner("ghost".into()))
        );
        store.txn(bound(&ns, "ka", "a")).await.unwrap();
        store.txn(bound(&ns, "kb", "b")).await.unwrap();
        let running = tokio::spawn(owners.run());

        liveness.alive.lock().remove("a");
        depart.send(Departure::Left("a".into())).unwrap();
        until_gone(&store, &ns, "ka").await;
        assert!(exists(&store, &ns, "kb").await, "b is alive: its key stays");

        // b goes, and the news of it is lost: only the sweep a miss asks for finds it.
        liveness.alive.lock().remove("b");
        depart.send(Departure::Missed).unwrap();
        until_gone(&store, &ns, "kb").await;

        drop(depart);
        running.await.unwrap();
    }
}
