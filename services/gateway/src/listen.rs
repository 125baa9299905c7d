//! Accepting TCP connections for a listener: the block list and the connection limit
//! are applied before anything is read, then the TLS handshake (when configured) runs
//! in the connection's own task, bounded in time.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use crate::config::{IpNet, Tls};

/// A TLS handshake slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An accepted connection.
pub struct Connection {
    pub io: Box<dyn Io>,
    pub peer: SocketAddr,
    pub permit: Permit,
}

/// A connection counts against its listener's limit until the last clone of its
/// permit is dropped (an upgraded WebSocket outlives the HTTP exchange that made it).
#[derive(Clone)]
pub struct Permit {
    _held: Arc<OwnedSemaphorePermit>,
}

/// Who may connect to a listener, how many at once, and whether over TLS.
pub struct Admission {
    pub block: Vec<IpNet>,
    pub max_connections: usize,
    pub tls: Option<Tls>,
    /// ALPN protocols offered over TLS.
    pub alpn: Vec<Vec<u8>>,
}

/// Binds `addr`; returns the bound address and the accept loop, which hands each
/// admitted connection to `serve` in a task of its own.
pub async fn listen<F, Fut>(
    addr: SocketAddr,
    admission: Admission,
    serve: F,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()>)>
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tls = match &admission.tls {
        Some(tls) => Some(acceptor(tls, admission.alpn.clone())?),
        None => None,
    };
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = socket.local_addr()?;
    let limit = Arc::new(Semaphore::new(admission.max_connections));
    let serve = Arc::new(serve);
    let accept_loop = async move {
        loop {
            let (tcp, peer) = match socket.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, %bound, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if admission.block.iter().any(|net| net.contains(peer.ip())) {
                tracing::debug!(%peer, %bound, "blocked address: connection closed");
                continue;
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(%peer, %bound, "connection limit reached: connection closed");
                continue;
            };
            // Small writes (replies, frames) must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let (tls, serve) = (tls.clone(), serve.clone());
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(tls) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(stream)) => Box::new(stream),
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                serve(Connection {
                    io,
                    peer,
                    permit: Permit {
                        _held: Arc::new(permit),
                    },
                })
                .await;
            });
        }
    };
    Ok((bound, accept_loop))
}

/// A TLS acceptor for the certificate chain and key in `tls`'s PEM files.
fn acceptor(tls: &Tls, alpn: Vec<Vec<u8>>) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("certificate {}: {e}", tls.cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("certificate {}: no certificate in it", tls.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| anyhow::anyhow!("key {}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("certificate {}: {e}", tls.cert.display()))?;
    config.alpn_protocols = alpn;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
