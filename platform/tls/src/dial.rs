//! The client side towards a peer that reef names: a container's endpoint or a node,
//! reached at whatever address it registered and trusted for the identity its
//! certificate carries (`reef://container/ALIAS`, `reef://node/NAME`), not for a host
//! name. The certificates a node issues to its containers name no host, so no caller can
//! obtain one that passes for the node, or for anything else, at an address.

use std::{io, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{
        CryptoProvider, ring::default_provider, verify_tls12_signature, verify_tls13_signature,
    },
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::ParsedCertificate,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{CertifiedKey, PkiError, certificate_names, tls::invalid};

/// A channel to `address` (`host:port`) whose server must present a certificate from
/// `ca_pem` naming `identity`; `client` is presented if given. Calls time out after
/// `timeout`.
pub async fn peer_channel(
    address: &str,
    ca_pem: &str,
    identity: &str,
    client: Option<&CertifiedKey>,
    timeout: Duration,
) -> Result<Channel, DialError> {
    let config = Arc::new(peer_config(ca_pem, identity, client)?);
    let target = address.to_owned();
    // The scheme is http: TLS is the connector's, so tonic adds none of its own.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| DialError::Address(address.to_owned(), e.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true);
    let connector = tower::service_fn(move |_: Uri| {
        let (config, target) = (config.clone(), target.clone());
        async move { dial(&target, config).await.map(TokioIo::new) }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| DialError::Unreachable(address.to_owned(), error_chain(&e)))
}

/// Why [`peer_channel`] has no channel.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The CA, the identity or the client certificate cannot be used.
    #[error(transparent)]
    Setup(#[from] PkiError),
    /// The address is not `host:port`.
    #[error("invalid address {0:?}: {1}")]
    Address(String, String),
    /// No connection or no handshake (a certificate that does not name the peer, say).
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
}

async fn dial(
    address: &str,
    config: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    // The verifier checks the identity and ignores the name, which only fills SNI.
    let name = ServerName::try_from("peer.reef.invalid").expect("a valid DNS name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// A TLS client configuration (ALPN h2) that trusts `ca_pem` for a server naming
/// `identity`, presenting `client` if given.
pub fn peer_config(
    ca_pem: &str,
    identity: &str,
    client: Option<&CertifiedKey>,
) -> Result<ClientConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(root.map_err(invalid)?).map_err(invalid)?;
    }
    let provider = Arc::new(default_provider());
    let verifier = Arc::new(NamesIdentity {
        roots,
        root: crate::vouch::root_der(ca_pem.as_bytes())
            .ok_or_else(|| invalid("the CA holds no certificate"))?,
        identity: identity.to_owned(),
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).map_err(invalid)?;
            builder.with_client_auth_cert(chain, key).map_err(invalid)?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts a server certificate for server use that chains to `roots` and carries
/// `identity` as a URI SAN, at any address; a node's identity only from the root or
/// that node's own CA ([`crate::vouch`]).
#[derive(Debug)]
struct NamesIdentity {
    roots: RootCertStore,
    /// The trust root (DER), which tells who signed the certificate.
    root: Vec<u8>,
    identity: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NamesIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !certificate_names(end_entity, &self.identity) {
            return Err(rustls::Error::General(format!(
                "the peer's certificate does not name {}",
                self.identity
            )));
        }
        if self.identity.starts_with("reef://node/") {
            let mut chain = vec![end_entity.as_ref()];
            chain.extend(intermediates.iter().map(|ca| ca.as_ref()));
            let signer = crate::vouch::signer(&chain, &self.root).ok_or_else(|| {
                rustls::Error::General(format!(
                    "the peer's certificate naming {} was signed by a CA that names no node",
                    self.identity
                ))
            })?;
            crate::vouch::vouches(&signer, &self.identity, "").map_err(rustls::Error::General)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            signed,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            signed,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An error and its causes on one line: transport errors hide the useful part
/// ("connection refused", "does not name reef://container/a") in their sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
