//! Where the node is and how to trust it.

use std::{path::PathBuf, time::Duration};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::Error;

/// The node address used when none is given.
pub const DEFAULT_NODE: &str = "127.0.0.1:7400";
/// The CA file used when none is given: the default data directory's CA.
pub const DEFAULT_CA: &str = ".reef/tls/ca.pem";

/// How to reach a node.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` or a full `https://` / `http://` URI.
    pub node: String,
    /// The CA certificate (PEM file) that signed the node's certificate.
    pub ca: PathBuf,
    /// Speak plaintext gRPC (only to a node started with `--insecure`).
    pub insecure: bool,
    /// The client certificate and key (PEM files) to present: who the node's policies
    /// see calling. A container the node spawned finds its own in `REEF_CERT` and
    /// `REEF_KEY`; without one the caller is anonymous.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// How long to wait for the TCP and TLS handshake.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            node: DEFAULT_NODE.to_owned(),
            ca: PathBuf::from(DEFAULT_CA),
            insecure: false,
            identity: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl ConnectOptions {
    /// Options from `REEF_NODE`, `REEF_CA`, `REEF_INSECURE`, `REEF_CERT` and `REEF_KEY`,
    /// defaults otherwise.
    pub fn from_env() -> Self {
        let mut options = Self::default();
        if let Ok(node) = std::env::var("REEF_NODE") {
            options.node = node;
        }
        if let Ok(ca) = std::env::var("REEF_CA") {
            options.ca = ca.into();
        }
        options.insecure = std::env::var("REEF_INSECURE").is_ok_and(|v| v == "1" || v == "true");
        if let (Some(cert), Some(key)) = (
            std::env::var_os("REEF_CERT").filter(|v| !v.is_empty()),
            std::env::var_os("REEF_KEY").filter(|v| !v.is_empty()),
        ) {
            options.identity = Some((cert.into(), key.into()));
        }
        options
    }

    /// The administrator's certificate that a node keeps beside its CA certificate
    /// (`DATA/tls/admin.pem`, `admin-key.pem`), if both files are there: what the CLI
    /// presents on the node's own machine unless told otherwise.
    pub fn admin_beside(ca: &std::path::Path) -> Option<(PathBuf, PathBuf)> {
        let dir = ca.parent()?;
        let (cert, key) = (dir.join("admin.pem"), dir.join("admin-key.pem"));
        (cert.is_file() && key.is_file()).then_some((cert, key))
    }

    /// The node's URI with the scheme the options imply.
    pub fn uri(&self) -> String {
        if self.node.contains("://") {
            self.node.clone()
        } else if self.insecure {
            format!("http://{}", self.node)
        } else {
            format!("https://{}", self.node)
        }
    }

    /// Opens one HTTP/2 connection to a container's endpoint at `address`
    /// (`ContainerInfo.endpoint`), which must present a certificate from the CA naming
    /// `identity` (`reef_tls::container_identity(ALIAS)`): endpoint certificates name
    /// their alias, not a host. Presents this client's own certificate, if any.
    pub async fn connect_to_peer(&self, address: &str, identity: &str) -> Result<Channel, Error> {
        if self.insecure {
            let plain = Self {
                node: address.to_owned(),
                ..self.clone()
            };
            return plain.connect().await;
        }
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
        };
        let ca = read(&self.ca)?;
        let client = match &self.identity {
            Some((cert, key)) => Some(reef_tls::CertifiedKey {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            }),
            None => None,
        };
        reef_tls::dial::peer_channel(
            address,
            &ca,
            identity,
            client.as_ref(),
            self.connect_timeout,
        )
        .await
        .map_err(|e| Error::Connect {
            node: address.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Opens one HTTP/2 connection to the node (TLS unless `insecure`).
    pub async fn connect(&self) -> Result<Channel, Error> {
        let uri = self.uri();
        let connect_error = |reason: String| Error::Connect {
            node: self.node.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::Config(format!("invalid node address {:?}: {e}", self.node)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20));
        if !self.insecure {
            let ca = std::fs::read_to_string(&self.ca).map_err(|e| {
                connect_error(format!(
                    "cannot read its CA certificate {}: {e} (is a node running with that data dir? pass --ca or REEF_CA)",
                    self.ca.display()
                ))
            })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.identity {
                let read = |path: &PathBuf| {
                    std::fs::read_to_string(path).map_err(|e| {
                        Error::Config(format!(
                            "cannot read the client certificate or key {}: {e}",
                            path.display()
                        ))
                    })
                };
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| connect_error(reef_tls::dial::error_chain(&e)))
    }
}
