//! The node's certificate authority.
//!
//! On first start a node creates a CA and a server certificate under `DATA/tls/` and
//! reuses them afterwards. It signs a certificate for every container endpoint that
//! registers, so the whole node speaks TLS with one trust root: `DATA/tls/ca.pem`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

/// Failure to create, read or use the node's certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file under the TLS directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A stored key or certificate is unreadable, or a name cannot go in a certificate.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate chain's leaf, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// The CA of a node plus the node's own server certificate.
pub struct Pki {
    ca_pem: String,
    ca_key: KeyPair,
    server: CertifiedKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_FILE: &str = "node.pem";
const SERVER_KEY_FILE: &str = "node-key.pem";
const SERVER_NAMES_FILE: &str = "node.names";

impl Pki {
    /// Loads the CA and server certificate from `dir`, creating what is missing. The
    /// server certificate is re-issued when `server_names` differ from the stored ones.
    pub fn load_or_create(dir: &Path, server_names: &[String]) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        let (ca_pem, ca_key) = match (
            read_optional(&dir.join(CA_FILE))?,
            read_optional(&dir.join(CA_KEY_FILE))?,
        ) {
            (Some(cert), Some(key)) => (cert, KeyPair::from_pem(&key)?),
            _ => {
                let key = KeyPair::generate()?;
                let cert = ca_params().self_signed(&key)?.pem();
                write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
                write_public(&dir.join(CA_FILE), &cert)?;
                (cert, key)
            }
        };
        let mut pki = Self {
            ca_pem,
            ca_key,
            server: CertifiedKey {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
        };
        let names = server_names.join("\n");
        let stored = (
            read_optional(&dir.join(SERVER_FILE))?,
            read_optional(&dir.join(SERVER_KEY_FILE))?,
            read_optional(&dir.join(SERVER_NAMES_FILE))?,
        );
        pki.server = match stored {
            (Some(cert_pem), Some(key_pem), Some(stored_names)) if stored_names == names => {
                CertifiedKey { cert_pem, key_pem }
            }
            _ => {
                let issued = pki.issue("reef node", server_names)?;
                write_private(&dir.join(SERVER_KEY_FILE), &issued.key_pem)?;
                write_public(&dir.join(SERVER_FILE), &issued.cert_pem)?;
                write_public(&dir.join(SERVER_NAMES_FILE), &names)?;
                issued
            }
        };
        Ok(pki)
    }

    /// The CA certificate, PEM: what clients of this node trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The node's own server certificate and key.
    pub fn server(&self) -> &CertifiedKey {
        &self.server
    }

    /// Issues a server/client certificate for `names` (DNS names or IP addresses),
    /// with `common_name` as its subject.
    pub fn issue(&self, common_name: &str, names: &[String]) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.not_before = date_time_ymd(2025, 1, 1);
        params.not_after = date_time_ymd(2125, 1, 1);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params(), &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The CA's parameters. They are rebuilt, not parsed, when the CA is loaded: an issuer
/// needs only its distinguished name and key usages, and both are fixed here.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "reef local CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "reef");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(2125, 1, 1);
    params
}

fn io_error(path: &Path, source: io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    fs::write(path, text).map_err(|e| io_error(path, e))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = Pki::load_or_create(dir.path(), &names).unwrap();
        let again = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        assert_eq!(first.server().cert_pem, again.server().cert_pem);
        let renamed = Pki::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        assert_eq!(first.ca_pem(), renamed.ca_pem());
        assert_ne!(first.server().cert_pem, renamed.server().cert_pem);
    }
}
