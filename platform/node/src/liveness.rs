//! The registry as state sees it ([`reef_state::Liveness`]): a container is alive while the
//! registry knows its alias, and destroys, deregistrations and detaches are departures.

use std::sync::Arc;

use reef_state::{Departure, Departures, Liveness};
use tokio_stream::{StreamExt as _, wrappers::BroadcastStream};

use crate::{EventKind, Registry};

/// State's [`Liveness`] port, answered by the registry.
pub(crate) struct RegistryLiveness(pub(crate) Arc<Registry>);

impl Liveness for RegistryLiveness {
    fn is_alive(&self, owner: &str) -> bool {
        self.0.get(owner).is_some()
    }

    fn departures(&self) -> Departures {
        Box::pin(
            BroadcastStream::new(self.0.subscribe()).filter_map(|event| match event {
                Ok(event)
                    if matches!(
                        event.kind,
                        EventKind::Destroy | EventKind::Deregistered | EventKind::Detached
                    ) =>
                {
                    Some(Departure::Left(
                        event.container.spec.alias.as_str().to_owned(),
                    ))
                }
                Ok(_) => None,
                // A lagging subscriber lost events: the owners must all be checked.
                Err(_) => Some(Departure::Missed),
            }),
        )
    }
}
