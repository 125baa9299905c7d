//! The node's TLS server side, with certificates that can be replaced while it runs.
//!
//! tonic's own TLS fixes the certificate at start. Here the node accepts TLS itself
//! (tokio-rustls) with a certificate resolver that reads the current one, and passes
//! the streams on; the node reads each client certificate once, as the stream is accepted.
//! When `reef ca issue` writes a new intermediate into `DATA/tls`, the node notices
//! (every [`ROTATION_CHECK`]), loads it, issues itself a new server certificate, and
//! every later handshake, container certificate and dial to a parent uses it; streams
//! already open keep the old one until they reconnect.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::{Mutex, RwLock};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::ring::{default_provider, sign::any_supported_type},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
    sign,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};

use crate::{
    Pki, PkiError,
    destroyed::{Destroyed, short_serial},
    vouch::Vouched,
};

/// How often the TLS directory is checked for a new identity.
pub const ROTATION_CHECK: Duration = Duration::from_secs(2);
/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_BACKLOG: usize = 256;

/// The node's certificates, replaceable while it runs.
pub struct NodeTls {
    dir: PathBuf,
    node: String,
    names: Vec<String>,
    current: RwLock<Current>,
    /// When `issuer.pem` last changed, as last seen.
    issuer_changed: Mutex<Option<SystemTime>>,
    /// Containers destroyed: the certificates issued them before then are refused.
    destroyed: Mutex<Destroyed>,
}

struct Current {
    pki: Arc<Pki>,
    served: Arc<sign::CertifiedKey>,
    /// The trust root's certificate (DER), for [`NodeTls::vouched_identity`].
    root: Vec<u8>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Loads (or creates) the certificates of node `node` in `dir`; see [`Pki`].
    pub fn load(dir: &Path, node: &str, names: &[String]) -> Result<Arc<Self>, PkiError> {
        let issuer_changed = modified(&dir.join("issuer.pem"));
        let pki = Pki::load_or_create(dir, node, names)?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            node: node.to_owned(),
            names: names.to_vec(),
            current: RwLock::new(Current::new(pki)?),
            issuer_changed: Mutex::new(issuer_changed),
            destroyed: Mutex::new(Destroyed::load(dir)?),
        }))
    }

    /// Issues container `alias` a certificate: its serial is the time of issue, so
    /// that [`Self::container_destroyed`] can end it.
    pub fn issue_container(&self, alias: &str) -> Result<crate::CertifiedKey, PkiError> {
        let serial = self.destroyed.lock().next_serial(alias);
        self.pki().issue_container(alias, serial)
    }

    /// Records, durably, that container `alias` is destroyed: no certificate issued it
    /// until now authenticates anyone any more.
    pub fn container_destroyed(&self, alias: &str) -> Result<(), PkiError> {
        self.destroyed.lock().destroy(alias)
    }

    /// The certificates in force.
    pub fn pki(&self) -> Arc<Pki> {
        self.read().pki.clone()
    }

    /// The identity a client's verified certificate `chain` is believed for on this
    /// node, and who vouched for it; see [`crate::vouch`].
    pub fn vouched_identity(&self, chain: &[impl AsRef<[u8]>]) -> Result<Option<Vouched>, String> {
        let vouched = crate::vouch::vouched(chain, &self.read().root, &self.node)?;
        let destroyed_container = vouched
            .as_ref()
            .and_then(|vouched| vouched.identity.strip_prefix("reef://container/"))
            .filter(|alias| {
                let serial = chain.first().and_then(|leaf| short_serial(leaf.as_ref()));
                self.destroyed.lock().refuses(alias, serial)
            });
        match destroyed_container {
            Some(alias) => Err(format!(
                "the certificate naming container {alias} was issued before {alias} was \
                 destroyed: it authenticates no one"
            )),
            None => Ok(vouched),
        }
    }

    /// The identity `chain` is believed for when a node forwards a call with it, acting
    /// for its holder: the chain must verify against this node's trust root, as the
    /// handshake verifies a client's own, and then [`Self::vouched_identity`] applies.
    /// The forwarding node proved that the caller holds the key; this node checks that
    /// the certificate is one it would believe itself.
    pub fn vouched_forwarded(&self, chain: &[Vec<u8>]) -> Result<Option<Vouched>, String> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or("the forwarded certificate chain is empty")?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        self.client_verifier()
            .map_err(|error| error.to_string())?
            .verify_client_cert(
                &CertificateDer::from(leaf.as_slice()),
                &intermediates,
                UnixTime::now(),
            )
            .map_err(|error| format!("the forwarded certificate does not verify: {error}"))?;
        self.vouched_identity(chain)
    }

    /// Loads the identity again if `issuer.pem` changed since it was last loaded.
    /// Returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, PkiError> {
        let now = modified(&self.dir.join("issuer.pem"));
        let mut seen = self.issuer_changed.lock();
        if now == *seen {
            return Ok(false);
        }
        let pki = Pki::load_or_create(&self.dir, &self.node, &self.names)?;
        *self.current.write() = Current::new(pki)?;
        *seen = now;
        Ok(true)
    }

    /// A TLS acceptor for gRPC (ALPN `h2`) serving the certificate in force at each
    /// handshake. Clients may present a certificate from the node's trust root (nodes
    /// joining do); they need not.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, PkiError> {
        self.acceptor_for(b"h2")
    }

    /// The same for HTTP/1.1 (ALPN `http/1.1`): the dashboard.
    pub fn https_acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, PkiError> {
        self.acceptor_for(b"http/1.1")
    }

    fn acceptor_for(self: &Arc<Self>, alpn: &[u8]) -> Result<TlsAcceptor, PkiError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_client_cert_verifier(self.client_verifier()?)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Verifies client certificates against the node's trust root (and lets clients
    /// without one through, for the door to answer).
    fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(self.pki().ca_pem().as_bytes()) {
            roots.add(root.map_err(invalid)?).map_err(invalid)?;
        }
        WebPkiClientVerifier::builder_with_provider(roots.into(), Arc::new(default_provider()))
            .allow_unauthenticated()
            .build()
            .map_err(invalid)
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, Current> {
        self.current.read()
    }
}

impl Current {
    fn new(pki: Pki) -> Result<Self, PkiError> {
        let server = pki.server();
        let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).map_err(invalid)?;
        let key = any_supported_type(&key).map_err(invalid)?;
        let root = crate::vouch::root_der(pki.ca_pem().as_bytes())
            .ok_or_else(|| invalid("ca.pem holds no certificate"))?;
        Ok(Self {
            pki: Arc::new(pki),
            served: Arc::new(sign::CertifiedKey::new(chain, key)),
            root,
        })
    }
}

/// Certificates for the containers the node spawns: each process finds its own in
/// `REEF_CERT` / `REEF_KEY`, naming its alias (`reef://container/ALIAS`), and presents it
/// when it calls the node. A new one is issued at every start.
#[derive(Debug, Clone)]
pub struct ContainerCredentials {
    tls: Arc<NodeTls>,
    dir: PathBuf,
}

impl ContainerCredentials {
    /// Credentials issued by `tls`'s identity in force, written under `dir`.
    pub fn new(tls: Arc<NodeTls>, dir: PathBuf) -> Self {
        Self { tls, dir }
    }

    /// Issues container `alias` a certificate and writes it with its key (readable by
    /// the node's user only). Returns the two paths.
    pub fn issue(&self, alias: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let certified = self.tls.issue_container(alias)?;
        std::fs::create_dir_all(&self.dir).map_err(|source| PkiError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let (cert, key) = self.paths(alias);
        certified.write(&cert, &key)?;
        Ok((cert, key))
    }

    /// Container `alias` is destroyed: the certificates issued it stop authenticating
    /// (durably, before this returns), and its files go.
    pub fn destroyed(&self, alias: &str) -> Result<(), PkiError> {
        self.tls.container_destroyed(alias)?;
        let (cert, key) = self.paths(alias);
        for file in [cert, key] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(PkiError::Io { path: file, source }),
            }
        }
        Ok(())
    }

    fn paths(&self, alias: &str) -> (PathBuf, PathBuf) {
        // '~' is not an alias character: nested aliases stay one flat file each.
        let stem = alias.replace('/', "~");
        (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}-key.pem")),
        )
    }
}

/// Serves the certificate in force.
#[derive(Debug)]
struct Resolver(Arc<NodeTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<sign::CertifiedKey>> {
        Some(self.0.read().served.clone())
    }
}

/// Accepts TCP connections on `listener` and hands their TLS streams, once handshaken,
/// to the gRPC server. Handshakes run side by side, each bounded in time, so a slow
/// client holds up nobody else.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let (accepted, stream) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                tcp = listener.accept() => tcp,
                _ = accepted.closed() => return,
            };
            let tcp = match tcp {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Small writes must not wait for Nagle and the peer's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => drop(accepted.send(Ok(tls)).await),
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub(crate) fn invalid(error: impl std::fmt::Display) -> PkiError {
    PkiError::Incomplete(format!("TLS setup: {error}"))
}
