//! The node's Prometheus endpoint (`reefd --metrics-listen ADDR`, plaintext HTTP,
//! `GET /metrics`, text format 0.0.4): the counters the node keeps, and a series per
//! container for what it sent and received, its queue and its restarts. Rendered from
//! the registry at each scrape; nothing is kept for it on the message path.

use std::{fmt::Write as _, future::Future, sync::Arc};

use axum::{http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::{ContainerSnapshot, NodeStats, Registry};

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    stats: Arc<NodeStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let body = render(&registry, &stats);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The exposition text for the node's state now.
pub fn render(registry: &Registry, stats: &NodeStats) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        );
    };
    counter(
        "reef_envelopes_routed_total",
        "Envelopes the node accepted from attach streams and links.",
        stats.routed(),
    );
    counter(
        "reef_frames_received_total",
        "Frames (batches of envelopes) the node read.",
        stats.frames(),
    );
    counter(
        "reef_frames_sent_total",
        "Frames the node wrote to attach streams.",
        stats.frames_sent(),
    );
    counter(
        "reef_dead_letters_total",
        "Envelopes the node could not or would not deliver.",
        stats.dead_letters(),
    );
    counter(
        "reef_requests_expired_total",
        "Requests the node answered with DEADLINE_EXCEEDED.",
        stats.requests_expired(),
    );

    let containers = registry.list();
    for family in CONTAINER_FAMILIES {
        let (name, kind, help) = (family.name, family.kind, family.help);
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for container in &containers {
            if let Some(value) = (family.value)(container, registry) {
                let alias = label(container.spec.alias.as_str());
                let _ = writeln!(out, "{name}{{alias=\"{alias}\"}} {value}");
            }
        }
    }
    out
}

/// A series per container; `value` is `None` where it does not apply.
struct ContainerFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ContainerSnapshot, &Registry) -> Option<u64>,
}

const CONTAINER_FAMILIES: [ContainerFamily; 5] = [
    ContainerFamily {
        name: "reef_container_up",
        kind: "gauge",
        help: "1 while the container's attach stream is open.",
        value: |container, _| Some(container.attached.into()),
    },
    ContainerFamily {
        name: "reef_container_envelopes_in_total",
        kind: "counter",
        help: "Envelopes routed from the container.",
        value: |container, _| Some(container.envelopes_in),
    },
    ContainerFamily {
        name: "reef_container_envelopes_out_total",
        kind: "counter",
        help: "Envelopes delivered to the container.",
        value: |container, _| Some(container.envelopes_out),
    },
    ContainerFamily {
        name: "reef_container_queue_depth",
        kind: "gauge",
        help: "Envelopes queued for the container's stream, not yet written (tasks share their host's).",
        value: |container, registry| match container.task {
            Some(_) => None,
            None => Some(
                registry
                    .lookup(container.spec.alias.as_str())
                    .map_or(0, |stream| stream.queued() as u64),
            ),
        },
    },
    ContainerFamily {
        name: "reef_container_restarts_total",
        kind: "counter",
        help: "Times the container was restarted: by the node, or by its host for a task.",
        value: |container, _| match (&container.supervised, &container.task) {
            (Some(supervised), _) => Some(supervised.restarts.into()),
            (None, Some(task)) => Some(task.restarts.into()),
            (None, None) => None,
        },
    },
];

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
