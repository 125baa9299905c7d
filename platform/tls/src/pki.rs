//! The node's certificate authority.
//!
//! On first start a node creates a CA and a server certificate under `DATA/tls/` and
//! reuses them afterwards. It signs a certificate for every container endpoint that
//! registers, so the whole node speaks TLS with one trust root: `DATA/tls/ca.pem`.
//!
//! Nodes of one tree share a cluster CA instead (`reef ca init`): `reef ca issue` gives
//! each node an intermediate CA of its own (`DATA/tls/issuer.pem`, `issuer-key.pem`)
//! and the cluster's root as `DATA/tls/ca.pem`. The node then signs with its
//! intermediate and presents the chain, so every node and container of the cluster
//! trusts every other through the one root. A node's certificate names it in a URI SAN,
//! `reef://node/NAME`, and a container endpoint's names its alias,
//! `reef://container/ALIAS`: that is what linked nodes check.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
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
    /// The TLS directory holds part of a cluster identity only.
    #[error("{0}")]
    Incomplete(String),
}

/// The identity a node's certificate carries.
pub fn node_identity(name: &str) -> String {
    format!("reef://node/{name}")
}

/// The identity a container endpoint's certificate carries.
pub fn container_identity(alias: &str) -> String {
    format!("reef://container/{alias}")
}

/// The identity of an administrator: allowed everything, whatever the policies say.
/// A node issues `DATA/tls/admin.pem` under it for the CLI on its own machine.
pub fn admin_identity(name: &str) -> String {
    format!("reef://admin/{name}")
}

/// The identity of a client that policies name as `client:NAME`.
pub fn client_identity(name: &str) -> String {
    format!("reef://client/{name}")
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate chain's leaf, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl CertifiedKey {
    /// Writes the certificate to `cert` and the key to `key`, the key readable by its
    /// owner only.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), PkiError> {
        write_private(key, &self.key_pem)?;
        write_public(cert, &self.cert_pem)
    }
}

/// The CA of a node plus the node's own server certificate.
pub struct Pki {
    /// The trust root: the node's own CA, or the cluster's.
    ca_pem: String,
    /// What signs: the node's own CA, or its intermediate under the cluster's.
    issuer: Issuer<'static, KeyPair>,
    /// The intermediate's certificate, appended to every certificate issued (empty for
    /// a node's own CA).
    chain_pem: String,
    server: CertifiedKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const ISSUER_FILE: &str = "issuer.pem";
const ISSUER_KEY_FILE: &str = "issuer-key.pem";

impl Pki {
    /// Loads the CA and the server certificate of node `node` from `dir`, creating what
    /// is missing. The server certificate is re-issued when `server_names` (or the
    /// issuer) differ from the stored ones.
    pub fn load_or_create(
        dir: &Path,
        node: &str,
        server_names: &[String],
    ) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        let stored_ca = read_optional(&dir.join(CA_FILE))?;
        let intermediate = (
            read_optional(&dir.join(ISSUER_FILE))?,
            read_optional(&dir.join(ISSUER_KEY_FILE))?,
        );
        let (ca_pem, issuer, chain_pem) = match (stored_ca, intermediate) {
            (Some(ca_pem), (Some(issuer_pem), Some(key))) => {
                let issuer = Issuer::from_ca_cert_pem(&issuer_pem, KeyPair::from_pem(&key)?)?;
                (ca_pem, issuer, issuer_pem)
            }
            (None, (Some(_), _)) | (_, (Some(_), None)) | (_, (None, Some(_))) => {
                return Err(PkiError::Incomplete(format!(
                    "{} holds part of a cluster identity: it needs ca.pem, issuer.pem and issuer-key.pem (reef ca issue)",
                    dir.display()
                )));
            }
            (stored, (None, None)) => {
                let (ca_pem, key) = match (stored, read_optional(&dir.join(CA_KEY_FILE))?) {
                    (Some(cert), Some(key)) => (cert, KeyPair::from_pem(&key)?),
                    _ => {
                        let key = KeyPair::generate()?;
                        let cert = ca_params("reef local CA", None).self_signed(&key)?.pem();
                        write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
                        write_public(&dir.join(CA_FILE), &cert)?;
                        (cert, key)
                    }
                };
                (
                    ca_pem,
                    Issuer::new(ca_params("reef local CA", None), key),
                    String::new(),
                )
            }
        };
        let mut pki = Self {
            ca_pem,
            issuer,
            chain_pem,
            server: CertifiedKey {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
        };
        pki.server = pki.stored_or_issued(dir, "node", server_names, &node_identity(node))?;
        // What the CLI on this machine presents: `reef` finds it next to ca.pem.
        pki.stored_or_issued(dir, "admin", &[], &admin_identity(node))?;
        Ok(pki)
    }

    /// The certificate `DIR/STEM.pem` (key `STEM-key.pem`) for `identity` and `names`:
    /// the stored one while it was issued for them by the current issuer, else a new one.
    fn stored_or_issued(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
        identity: &str,
    ) -> Result<CertifiedKey, PkiError> {
        let [cert_file, key_file, names_file] =
            [".pem", "-key.pem", ".names"].map(|suffix| dir.join(format!("{stem}{suffix}")));
        // The issuer is part of what the stored certificate must match.
        let expected = format!("{identity}\n{}\n{}", names.join("\n"), self.chain_pem);
        let stored = (
            read_optional(&cert_file)?,
            read_optional(&key_file)?,
            read_optional(&names_file)?,
        );
        if let (Some(cert_pem), Some(key_pem), Some(stored_names)) = stored
            && stored_names == expected
        {
            return Ok(CertifiedKey { cert_pem, key_pem });
        }
        let issued = self.issue(&format!("reef {stem}"), names, identity)?;
        issued.write(&cert_file, &key_file)?;
        write_public(&names_file, &expected)?;
        Ok(issued)
    }

    /// The CA certificate, PEM: what clients of this node trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The node's own server certificate and key.
    pub fn server(&self) -> &CertifiedKey {
        &self.server
    }

    /// Issues a server/client certificate for `names` (DNS names or IP addresses) and
    /// `identity` (a URI SAN, see [`node_identity`]), with `common_name` as its subject.
    /// The PEM holds the chain up to (not including) the trust root.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        identity: &str,
    ) -> Result<CertifiedKey, PkiError> {
        issue_leaf(
            &self.issuer,
            &self.chain_pem,
            common_name,
            names,
            identity,
            BOTH_WAYS,
            None,
        )
    }

    /// Issues container `alias` its certificate, with the serial `serial` (see
    /// [`crate::tls::NodeTls::issue_container`]).
    pub fn issue_container(&self, alias: &str, serial: u64) -> Result<CertifiedKey, PkiError> {
        issue_leaf(
            &self.issuer,
            &self.chain_pem,
            alias,
            &[],
            &container_identity(alias),
            BOTH_WAYS,
            Some(serial),
        )
    }

    /// Issues the certificate a container serves its endpoint with: its identity
    /// (`reef://container/ALIAS`) and no host name or address, for server use only. Its
    /// clients check the identity ([`crate::dial`]), so whatever address a registrant
    /// names, the certificate passes for nothing but its own alias's endpoint, and it
    /// authenticates no caller.
    pub fn issue_endpoint(&self, alias: &str) -> Result<CertifiedKey, PkiError> {
        let identity = container_identity(alias);
        issue_leaf(
            &self.issuer,
            &self.chain_pem,
            alias,
            &[],
            &identity,
            SERVER_ONLY,
            None,
        )
    }
}

/// What most leaves are for: serving, and presenting as a client.
const BOTH_WAYS: &[ExtendedKeyUsagePurpose] = &[
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];
/// A container endpoint's leaf: serving only.
const SERVER_ONLY: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ServerAuth];

/// A leaf certificate signed by `issuer`, with `chain_pem` (the issuer's own chain, if
/// any) appended; see [`Pki::issue`].
fn issue_leaf(
    issuer: &Issuer<'static, KeyPair>,
    chain_pem: &str,
    common_name: &str,
    names: &[String],
    identity: &str,
    usages: &[ExtendedKeyUsagePurpose],
    serial: Option<u64>,
) -> Result<CertifiedKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.serial_number = serial.map(rcgen::SerialNumber::from);
    params
        .subject_alt_names
        .push(SanType::URI(identity.try_into()?));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = date_time_ymd(2025, 1, 1);
    params.not_after = date_time_ymd(2125, 1, 1);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertifiedKey {
        cert_pem: format!("{}{}", cert.pem(), chain_pem),
        key_pem: key.serialize_pem(),
    })
}

/// Creates a cluster CA in `dir` (`ca.pem`, `ca-key.pem`); refuses to replace one.
pub fn init_cluster_ca(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let cert_path = dir.join(CA_FILE);
    if cert_path.exists() {
        return Err(PkiError::Incomplete(format!(
            "{} exists: this directory has a CA already",
            cert_path.display()
        )));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params("reef cluster CA", None).self_signed(&key)?.pem();
    write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
    write_public(&cert_path, &cert)
}

/// Gives node `node` an intermediate CA under the cluster CA in `ca_dir`, written to
/// `tls_dir` (the node's `DATA/tls`) with the cluster's root as its `ca.pem`. Run again,
/// it replaces the intermediate: the node issues new certificates on its next start.
pub fn issue_node_ca(ca_dir: &Path, node: &str, tls_dir: &Path) -> Result<(), PkiError> {
    let root_pem = read_optional(&ca_dir.join(CA_FILE))?;
    let root_key = read_optional(&ca_dir.join(CA_KEY_FILE))?;
    let (Some(root_pem), Some(root_key)) = (root_pem, root_key) else {
        return Err(PkiError::Incomplete(format!(
            "{} has no cluster CA (ca.pem and ca-key.pem): run reef ca init first",
            ca_dir.display()
        )));
    };
    let root = Issuer::from_ca_cert_pem(&root_pem, KeyPair::from_pem(&root_key)?)?;
    let key = KeyPair::generate()?;
    let common_name = format!("reef node CA {node}");
    let mut params = ca_params(&common_name, Some(0));
    params.use_authority_key_identifier_extension = true;
    // The node it belongs to: what its leaves are believed for (see `crate::vouch`).
    params
        .subject_alt_names
        .push(SanType::URI(node_identity(node).try_into()?));
    let cert = params.signed_by(&key, &root)?.pem();
    fs::create_dir_all(tls_dir).map_err(|source| io_error(tls_dir, source))?;
    write_private(&tls_dir.join(ISSUER_KEY_FILE), &key.serialize_pem())?;
    write_public(&tls_dir.join(ISSUER_FILE), &cert)?;
    write_public(&tls_dir.join(CA_FILE), &root_pem)?;
    // A node's own CA key would be unused and misleading next to a cluster identity.
    match fs::remove_file(tls_dir.join(CA_KEY_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(tls_dir, e)),
        _ => Ok(()),
    }
}

/// Issues a client certificate for `identity` from the CA in `ca_dir` (a cluster CA, or
/// a standalone node's `DATA/tls`).
pub fn issue_client(ca_dir: &Path, identity: &str) -> Result<CertifiedKey, PkiError> {
    let (Some(ca_pem), Some(ca_key)) = (
        read_optional(&ca_dir.join(CA_FILE))?,
        read_optional(&ca_dir.join(CA_KEY_FILE))?,
    ) else {
        return Err(PkiError::Incomplete(format!(
            "{} holds no CA key (ca.pem and ca-key.pem): give the cluster CA's directory, or a standalone node's DATA/tls",
            ca_dir.display()
        )));
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)?;
    issue_leaf(&issuer, "", "reef client", &[], identity, BOTH_WAYS, None)
}

/// The reef identity (`reef://…` URI SAN) that certificate `der` names, if any.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("reef://") => Some((*uri).to_owned()),
            _ => None,
        })
}

/// Whether `der` (a certificate) names `identity` in a URI SAN.
pub fn certificate_names(der: &[u8], identity: &str) -> bool {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return false;
    };
    names
        .value
        .general_names
        .iter()
        .any(|name| matches!(name, GeneralName::URI(uri) if *uri == identity))
}

/// A CA's parameters; `path_len` limits the CAs below it (`None`: unlimited). A node's
/// own CA is rebuilt from these, not parsed, when loaded: an issuer needs only its
/// distinguished name and key usages, and both are fixed here.
fn ca_params(common_name: &str, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "reef");
    params.is_ca = IsCa::Ca(match path_len {
        Some(depth) => BasicConstraints::Constrained(depth),
        None => BasicConstraints::Unconstrained,
    });
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
    reef_core::write_private(path, text.as_bytes()).map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = Pki::load_or_create(dir.path(), "n", &names).unwrap();
        let again = Pki::load_or_create(dir.path(), "n", &names).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        assert_eq!(first.server().cert_pem, again.server().cert_pem);
        let renamed = Pki::load_or_create(dir.path(), "n", &["localhost".to_string()]).unwrap();
        assert_eq!(first.ca_pem(), renamed.ca_pem());
        assert_ne!(first.server().cert_pem, renamed.server().cert_pem);
    }

    #[test]
    fn a_cluster_ca_issues_node_intermediates_that_name_their_node() {
        let cluster = tempfile::tempdir().unwrap();
        let node = tempfile::tempdir().unwrap();
        init_cluster_ca(cluster.path()).unwrap();
        assert!(init_cluster_ca(cluster.path()).is_err(), "never replaced");
        issue_node_ca(cluster.path(), "edge", node.path()).unwrap();
        let pki = Pki::load_or_create(node.path(), "edge", &["localhost".to_string()]).unwrap();
        let root = fs::read_to_string(cluster.path().join(CA_FILE)).unwrap();
        assert_eq!(pki.ca_pem(), root);
        // Leaf, then the node's intermediate.
        let chain: Vec<_> = rustls_pemfile_certs(&pki.server().cert_pem);
        assert_eq!(chain.len(), 2);
        assert!(certificate_names(&chain[0], &node_identity("edge")));
        assert!(!certificate_names(&chain[0], &node_identity("other")));
        let endpoint = pki
            .issue("c", &["127.0.0.1".to_string()], &container_identity("c"))
            .unwrap();
        assert!(certificate_names(
            &rustls_pemfile_certs(&endpoint.cert_pem)[0],
            &container_identity("c")
        ));
    }

    /// The DER certificates of a PEM bundle.
    fn rustls_pemfile_certs(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .map(|p| p.unwrap().contents)
            .collect()
    }
}
