//! The node's Prometheus endpoint (`reefd --metrics-listen ADDR`, plaintext HTTP,
//! `GET /metrics`, text format 0.0.4): the counters the node keeps, request latency,
//! state operations, and a series per container for what it sent and received, its
//! queue, its restarts and the latency of the requests it answered. Counters and
//! gauges are read from the registry at each scrape; the histograms are recorded as
//! answers arrive (a clock read and a few relaxed atomic adds).

use std::{fmt::Write as _, future::Future, sync::Arc};

use axum::{http::header, response::IntoResponse, routing::get};
use reef_core::HistogramSnapshot;
use reef_core::histogram::BOUNDS_US;
use tokio::net::TcpListener;

use reef_state::{Outcome, StateOp, StateOperations};

use crate::{ContainerSnapshot, NodeStats, Registry};

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    counters: Counters,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let body = render(&registry, &counters);
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

/// What the node counts: messaging's counters and the State service's operations.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Frames, envelopes, dead letters and request latency.
    pub messaging: Arc<NodeStats>,
    /// State operations by kind and outcome.
    pub state: Arc<StateOperations>,
}

/// The exposition text for the node's state now.
pub fn render(registry: &Registry, counters: &Counters) -> String {
    let stats = &counters.messaging;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
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

    family(
        &mut out,
        "reef_request_duration_seconds",
        "histogram",
        "Requests of callers on this node, from the node taking each to its answer; outcome reply or error (expired requests are reef_requests_expired_total).",
    );
    write_histogram(
        &mut out,
        "reef_request_duration_seconds",
        r#"outcome="reply""#,
        &stats.replied().snapshot(),
    );
    write_histogram(
        &mut out,
        "reef_request_duration_seconds",
        r#"outcome="error""#,
        &stats.refused().snapshot(),
    );
    write_state_operations(&mut out, &counters.state);

    let containers = registry.list();
    family(
        &mut out,
        "reef_container_request_duration_seconds",
        "histogram",
        "Requests the container's current process answered, from the node taking each to its answer (a task's count for its host).",
    );
    for container in containers.iter().filter(|c| c.task.is_none()) {
        let labels = format!("alias=\"{}\"", label(container.spec.alias.as_str()));
        write_histogram(
            &mut out,
            "reef_container_request_duration_seconds",
            &labels,
            &container.answered,
        );
    }
    for series in CONTAINER_FAMILIES {
        let name = series.name;
        family(&mut out, name, series.kind, series.help);
        for container in &containers {
            if let Some(value) = (series.value)(container) {
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
    value: fn(&ContainerSnapshot) -> Option<u64>,
}

const CONTAINER_FAMILIES: [ContainerFamily; 5] = [
    ContainerFamily {
        name: "reef_container_up",
        kind: "gauge",
        help: "1 while the container's attach stream is open.",
        value: |container| Some(container.attached.into()),
    },
    ContainerFamily {
        name: "reef_container_envelopes_in_total",
        kind: "counter",
        help: "Envelopes routed from the container.",
        value: |container| Some(container.envelopes_in),
    },
    ContainerFamily {
        name: "reef_container_envelopes_out_total",
        kind: "counter",
        help: "Envelopes delivered to the container.",
        value: |container| Some(container.envelopes_out),
    },
    ContainerFamily {
        name: "reef_container_queue_depth",
        kind: "gauge",
        help: "Envelopes waiting for the container: queued for its stream, or held while it restarts (tasks share their host's).",
        value: |container| container.task.is_none().then_some(container.queued),
    },
    ContainerFamily {
        name: "reef_container_restarts_total",
        kind: "counter",
        help: "Times the container was restarted: by the node, or by its host for a task.",
        value: |container| match (&container.supervised, &container.task) {
            (Some(supervised), _) => Some(supervised.restarts.into()),
            (None, Some(task)) => Some(task.restarts.into()),
            (None, None) => None,
        },
    },
];

/// The calls of `reef.v1.State` by operation and outcome, their latency by operation,
/// and the watches open now.
fn write_state_operations(out: &mut String, operations: &StateOperations) {
    family(
        out,
        "reef_state_operations_total",
        "counter",
        "Calls of reef.v1.State by operation and outcome (ok, conflict, rejected, failed).",
    );
    for op in StateOp::ALL {
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "reef_state_operations_total{{op=\"{}\",outcome=\"{}\"}} {}",
                op.name(),
                outcome.name(),
                operations.calls(op, outcome)
            );
        }
    }
    family(
        out,
        "reef_state_operation_duration_seconds",
        "histogram",
        "How long calls of reef.v1.State took (a watch: until established).",
    );
    for op in StateOp::ALL {
        let labels = format!("op=\"{}\"", op.name());
        write_histogram(
            out,
            "reef_state_operation_duration_seconds",
            &labels,
            &operations.latency(op),
        );
    }
    family(
        out,
        "reef_state_watches_open",
        "gauge",
        "Watch streams open now.",
    );
    let _ = writeln!(out, "reef_state_watches_open {}", operations.watches_open());
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// The series of one histogram (`labels` without braces): cumulative buckets in
/// seconds, then the sum and the count.
fn write_histogram(out: &mut String, name: &str, labels: &str, snapshot: &HistogramSnapshot) {
    let mut cumulative = 0;
    for (bucket, bound) in BOUNDS_US.iter().enumerate() {
        cumulative += snapshot.counts.get(bucket).copied().unwrap_or(0);
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let count = snapshot.count();
    let sum = snapshot.sum_us as f64 / 1e6;
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
