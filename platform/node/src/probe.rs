//! Calling a container's own endpoint (`reef.v1.Container`) from the node.

use std::{sync::Arc, time::Duration};

use reef_core::Alias;
use reef_proto::{self as wire, container_client::ContainerClient};
use reef_supervision::{Pending, Probe};
use reef_tls::{CertifiedKey, tls::NodeTls};
use tonic::transport::Channel;

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

/// A TLS channel to a container's (or node's) `endpoint`, trusting `ca_pem` for a
/// server whose certificate names `peer` (`reef://container/ALIAS`, `reef://node/NAME`)
/// at whatever address, presenting `identity` if given; calls time out after `timeout`.
pub(crate) async fn connect_endpoint(
    endpoint: &str,
    ca_pem: &str,
    peer: &str,
    identity: Option<CertifiedKey>,
    timeout: Duration,
) -> Result<Channel, ApiError> {
    endpoint_host(endpoint)?;
    reef_tls::dial::peer_channel(endpoint, ca_pem, peer, identity.as_ref(), timeout)
        .await
        .map_err(|error| ApiError::Unreachable(format!("{peer} at {endpoint}: {error}")))
}

/// Calls `Container.Ping` on container `alias` at `endpoint` over TLS trusting `ca_pem`, as the node
/// (`identity`: an endpoint may take only certified callers), within `timeout`.
pub(crate) async fn ping_endpoint(
    alias: &str,
    endpoint: &str,
    ca_pem: &str,
    identity: CertifiedKey,
    timeout: Duration,
) -> Result<wire::PingResponse, ApiError> {
    let peer = reef_tls::container_identity(alias);
    let channel = connect_endpoint(endpoint, ca_pem, &peer, Some(identity), timeout).await?;
    let answer = ContainerClient::new(channel)
        .ping(wire::PingRequest { nonce: 1 })
        .await
        .map_err(ApiError::Relayed)?;
    Ok(answer.into_inner())
}

/// Supervision's [`Probe`]: `Container.Ping` over TLS, presenting the node's
/// certificate as it is now (it may have been re-issued).
#[derive(Debug, Clone)]
pub(crate) struct PingProbe(pub Arc<NodeTls>);

impl Probe for PingProbe {
    fn ping(
        &self,
        alias: &Alias,
        endpoint: String,
        ca_pem: String,
        timeout: Duration,
    ) -> Pending<Result<(), String>> {
        let identity = self.0.pki().server().clone();
        let alias = alias.clone();
        Box::pin(async move {
            ping_endpoint(alias.as_str(), &endpoint, &ca_pem, identity, timeout)
                .await
                .map(drop)
                .map_err(|error| error.to_string())
        })
    }
}
