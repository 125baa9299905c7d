//! Calling a container's own endpoint (`reef.v1.Container`) from the node.

use std::time::Duration;

use reef_proto::{self as wire, container_client::ContainerClient};
use reef_supervision::{Pending, Probe};
use reef_tls::CertifiedKey;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::api::error::ApiError;

/// The host part of `host:port` (brackets around IPv6 removed).
pub(crate) fn endpoint_host(endpoint: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::BadRequest(format!("endpoint {endpoint:?} is not host:port"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(invalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid());
    }
    Ok(host.to_owned())
}

/// A TLS channel to a container's (or node's) `endpoint`, trusting `ca_pem` and
/// presenting `identity` if given; calls time out after `timeout`.
pub(crate) async fn connect_endpoint(
    endpoint: &str,
    ca_pem: &str,
    identity: Option<CertifiedKey>,
    timeout: Duration,
) -> Result<Channel, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::Unreachable(format!("container endpoint {endpoint} is unreachable: {e}"))
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(endpoint_host(endpoint)?);
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(identity.cert_pem, identity.key_pem));
    }
    Endpoint::from_shared(format!("https://{endpoint}"))
        .map_err(|e| unreachable(&e))?
        .tls_config(tls)
        .map_err(|e| unreachable(&e))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| unreachable(&e))
}

/// Calls `Container.Ping` on `endpoint` over TLS trusting `ca_pem`, within `timeout`.
pub(crate) async fn ping_endpoint(
    endpoint: &str,
    ca_pem: &str,
    timeout: Duration,
) -> Result<wire::PingResponse, ApiError> {
    let channel = connect_endpoint(endpoint, ca_pem, None, timeout).await?;
    let answer = ContainerClient::new(channel)
        .ping(wire::PingRequest { nonce: 1 })
        .await
        .map_err(ApiError::Relayed)?;
    Ok(answer.into_inner())
}

/// Supervision's [`Probe`]: `Container.Ping` over TLS.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PingProbe;

impl Probe for PingProbe {
    fn ping(
        &self,
        endpoint: String,
        ca_pem: String,
        timeout: Duration,
    ) -> Pending<Result<(), String>> {
        Box::pin(async move {
            ping_endpoint(&endpoint, &ca_pem, timeout)
                .await
                .map(drop)
                .map_err(|error| error.to_string())
        })
    }
}
