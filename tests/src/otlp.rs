//! An OTLP/gRPC trace collector inside the test: it keeps every span exported to it,
//! with the service that exported it, so a test can check a trace's shape.

use std::{net::SocketAddr, sync::Arc};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::status::StatusCode,
};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// `service.name` of the exporting process (`reefd`, a container's alias…).
    pub service: String,
    /// `service.instance.id` (a node's name, a container's process id).
    pub instance: String,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    pub failed: bool,
}

impl CollectedSpan {
    /// Whether `self` is a direct child of `parent`, in the same trace.
    pub fn is_child_of(&self, parent: &CollectedSpan) -> bool {
        self.trace_id == parent.trace_id && self.parent_span_id == parent.span_id
    }
}

/// The collector; stops when dropped.
pub struct Collector {
    /// `http://127.0.0.1:PORT`, for `--otlp-endpoint` / `REEF_OTLP_ENDPOINT`.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    server: JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Collector {
    /// Listens on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = Receiver {
            spans: spans.clone(),
        };
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            endpoint: format!("http://{addr}"),
            spans,
            server,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().clone()
    }
}

struct Receiver {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default();
            let service = text(&attributes, "service.name");
            let instance = text(&attributes, "service.instance.id");
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|span| {
                    CollectedSpan {
                        service: service.clone(),
                        instance: instance.clone(),
                        failed: span
                            .status
                            .is_some_and(|status| status.code == StatusCode::Error as i32),
                        name: span.name,
                        kind: span.kind,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    }
                }));
            }
        }
        self.spans.lock().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The string attribute `key`, or "".
fn text(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(
            |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                Value::StringValue(value) => Some(value.clone()),
                _ => None,
            },
        )
        .unwrap_or_default()
}
