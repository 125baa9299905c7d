//! Logs and traces for reef's binaries.
//!
//! Logs go to stderr, filtered by `REEF_LOG`. Traces are exported over OTLP/gRPC only
//! when an endpoint is configured (`REEF_OTLP_ENDPOINT`, or `reefd --otlp-endpoint`):
//! then the hop spans of [`reef_frames::trace`] and the INFO spans of the process go to
//! the collector. Without an endpoint nothing is exported and no hop span is made.
//!
//! [`runtime`] builds the tokio runtime every reef binary runs on.
#![warn(missing_docs)]

pub mod runtime;

use std::path::PathBuf;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::{Layer as _, filter::Targets, layer::SubscriberExt as _};

/// The collector's OTLP/gRPC address, e.g. `http://127.0.0.1:4317`. Inherited by the
/// containers a node spawns, so that their spans join the node's traces.
pub const OTLP_ENDPOINT_ENV: &str = "REEF_OTLP_ENDPOINT";
/// A PEM file of the CA that signed an `https://` collector's certificate.
pub const OTLP_CA_ENV: &str = "REEF_OTLP_CA";

/// Where traces go; `None` exports nothing.
#[derive(Debug, Clone, Default)]
pub struct Export {
    /// The collector's OTLP/gRPC endpoint.
    pub endpoint: Option<String>,
    /// The CA of an `https://` endpoint.
    pub ca: Option<PathBuf>,
}

impl Export {
    /// From `REEF_OTLP_ENDPOINT` and `REEF_OTLP_CA`.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|value| !value.is_empty());
        Self {
            endpoint: var(OTLP_ENDPOINT_ENV),
            ca: var(OTLP_CA_ENV).map(PathBuf::from),
        }
    }
}

/// Keeps the exporter running; dropping it sends the spans still buffered.
#[must_use = "dropping it stops the export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Flushes the batch; a collector that is gone costs the export timeout.
            let _ = provider.shutdown();
        }
    }
}

/// Who exports: the service (`reefd`, a container's alias) and which one of them (a
/// node's name, a process id).
#[derive(Debug, Clone)]
pub struct Service {
    /// `service.name`.
    pub name: String,
    /// `service.instance.id`.
    pub instance: String,
}

impl Service {
    /// A container: named by its alias (`REEF_ALIAS`, set by the node that spawned it),
    /// else by `fallback`; the instance is the process id.
    pub fn container(fallback: &str) -> Self {
        let name = std::env::var("REEF_ALIAS")
            .ok()
            .filter(|alias| !alias.is_empty())
            .unwrap_or_else(|| fallback.to_owned());
        Self {
            name,
            instance: std::process::id().to_string(),
        }
    }
}

/// Sets up logging (`REEF_LOG`, else `default_filter`) and, when `export` names an
/// endpoint, trace export as `service`. Must run inside the Tokio runtime (the
/// exporter's gRPC channel lives there). Errs on an endpoint or CA that cannot be used.
pub fn init(service: &Service, default_filter: &str, export: &Export) -> Result<Telemetry, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REEF_LOG")
        .unwrap_or_else(|_| default_filter.into());
    let Some(endpoint) = &export.endpoint else {
        // One global filter, no per-layer filtering: its bookkeeping on every callsite
        // cost the router about a tenth of its send rate.
        let subscriber = tracing_subscriber::registry().with(filter).with(logs());
        // A second init (tests that start several nodes in one process) keeps the first.
        let _ = tracing::subscriber::set_global_default(subscriber);
        return Ok(Telemetry { provider: None });
    };
    let provider = provider(service, endpoint, export.ca.as_deref())?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("reef"))
        .with_filter(
            Targets::new()
                .with_target(reef_frames::trace::TRACE_TARGET, Level::TRACE)
                .with_default(Level::INFO),
        );
    let subscriber = tracing_subscriber::registry()
        .with(logs().with_filter(filter))
        .with(traces);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        reef_frames::trace::set_exporting(true);
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Log lines on stderr.
fn logs<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in container log files.
        .with_ansi(std::io::stderr().is_terminal())
}

fn provider(
    service: &Service,
    endpoint: &str,
    ca: Option<&std::path::Path>,
) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if let Some(ca) = ca {
        let pem =
            std::fs::read(ca).map_err(|error| format!("OTLP CA {}: {error}", ca.display()))?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        exporter = exporter.with_tls_config(tls);
    }
    let exporter = exporter
        .build()
        .map_err(|error| format!("OTLP endpoint {endpoint}: {error}"))?;
    let resource = Resource::builder()
        .with_service_name(service.name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            service.instance.clone(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
