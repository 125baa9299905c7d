//! Which identities a certificate's issuer may vouch for.
//!
//! In a cluster every node signs with an intermediate under one root (`reef ca issue`), so
//! a chain that verifies proves only that *some* node, or the cluster's operator, signed
//! it. X.509 name constraints cannot say "this CA may sign `reef://node/b` and nothing
//! else" for URI names (webpki, like most verifiers, does not constrain them), so the
//! rule is applied here, after the chain has been verified:
//!
//! - the cluster's root (`reef ca client`, or a standalone node's own CA) vouches for any
//!   identity;
//! - node `N`'s intermediate (it names `reef://node/N`) vouches for `reef://node/N`
//!   everywhere, and for the administrators, clients and containers it issues on node
//!   `N` alone: a node's `admin.pem` is no administrator of the rest of its tree, and
//!   no node can mint another node's identity, or a container of another node.
//!
//! A node that forwards a call down the tree sends the chain of the caller it acts for
//! with it ([`encode_chain`]), and the node below applies the same rule to it: node `N`
//! cannot forward a caller that only `N` believes.

use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::{certificate_identity, node_identity};

/// The first certificate of `ca_pem` (DER): the trust root [`vouched_identity`] takes.
pub fn root_der(ca_pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let root = CertificateDer::pem_slice_iter(ca_pem).next()?.ok()?;
    Some(root.to_vec())
}

/// Who signed a verified leaf, among the certificates reef makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// The trust root itself.
    Root,
    /// The intermediate of this node.
    Node(String),
}

/// An identity a verified chain is believed for, and by whose word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// The `reef://KIND/NAME` the leaf names.
    pub identity: String,
    /// Who signed the leaf.
    pub signer: Signer,
}

impl Vouched {
    /// Whether the identity is believed on the node that issued it alone: an
    /// administrator, client or container a node's intermediate signed. No other node
    /// is told that a call acts for it.
    pub fn here_only(&self) -> bool {
        matches!(self.signer, Signer::Node(_)) && !self.identity.starts_with("reef://node/")
    }
}

/// The identity the verified `chain` (leaf first, as presented) may be believed for on
/// node `here`, whose trust root has the DER certificate `root`. Outside a node (`here`
/// empty) only node identities, and what the root signed, are believed. `Ok(None)` for a
/// certificate that names no reef identity; `Err` says why an identity it names is not
/// believed.
pub fn vouched_identity(
    chain: &[impl AsRef<[u8]>],
    root: &[u8],
    here: &str,
) -> Result<Option<String>, String> {
    vouched(chain, root, here).map(|vouched| vouched.map(|vouched| vouched.identity))
}

/// [`vouched_identity`], with who signed it.
pub fn vouched(
    chain: &[impl AsRef<[u8]>],
    root: &[u8],
    here: &str,
) -> Result<Option<Vouched>, String> {
    let Some(leaf) = chain.first() else {
        return Ok(None);
    };
    let Some(identity) = certificate_identity(leaf.as_ref()) else {
        return Ok(None);
    };
    let signer = signer(chain, root).ok_or_else(|| {
        format!(
            "the certificate naming {identity} was signed by a CA that names no node; \
             give the node a new intermediate with `reef ca issue`"
        )
    })?;
    vouches(&signer, &identity, here)?;
    Ok(Some(Vouched { identity, signer }))
}

/// The longest chain a forwarded call may carry ([`encode_chain`]): a leaf and its
/// intermediate, with room to spare.
const MAX_FORWARDED_CERTIFICATES: usize = 4;
/// The most bytes a forwarded chain may take.
const MAX_FORWARDED_CHAIN_BYTES: usize = 32 << 10;

/// `chain` (DER certificates, leaf first) as the bytes of one binary metadata value:
/// each certificate's length (4 bytes, big-endian), then its bytes.
pub fn encode_chain(chain: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for certificate in chain {
        let certificate = certificate.as_ref();
        bytes.extend_from_slice(&(certificate.len() as u32).to_be_bytes());
        bytes.extend_from_slice(certificate);
    }
    bytes
}

/// The chain [`encode_chain`] made, or why `bytes` are not one.
pub fn decode_chain(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if bytes.len() > MAX_FORWARDED_CHAIN_BYTES {
        return Err(format!(
            "a forwarded certificate chain of {} bytes is over the {MAX_FORWARDED_CHAIN_BYTES}",
            bytes.len()
        ));
    }
    let mut chain = Vec::new();
    while !bytes.is_empty() {
        let (length, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("a forwarded certificate chain ends inside a length")?;
        let length = u32::from_be_bytes(*length) as usize;
        if length > rest.len() {
            return Err("a forwarded certificate chain ends inside a certificate".to_owned());
        }
        let (certificate, rest) = rest.split_at(length);
        chain.push(certificate.to_vec());
        bytes = rest;
        if chain.len() > MAX_FORWARDED_CERTIFICATES {
            return Err(format!(
                "a forwarded certificate chain holds more than {MAX_FORWARDED_CERTIFICATES} \
                 certificates"
            ));
        }
    }
    Ok(chain)
}

/// Whether `signer` vouches for `identity` on node `here` (see the module's rule).
pub fn vouches(signer: &Signer, identity: &str, here: &str) -> Result<(), String> {
    let Signer::Node(node) = signer else {
        return Ok(());
    };
    if identity.starts_with("reef://node/") {
        return match identity == node_identity(node) {
            true => Ok(()),
            false => Err(format!(
                "the certificate naming {identity} was issued by node {node}'s CA, which \
                 vouches for no node but {node}"
            )),
        };
    }
    match node == here {
        true => Ok(()),
        false => Err(format!(
            "the certificate naming {identity} was issued by node {node}'s CA, so it is \
             believed on node {node} alone; for the whole cluster, issue one from the \
             cluster CA (`reef ca client`)"
        )),
    }
}

/// Who signed the leaf of `chain`: the root if the leaf names it as issuer, else the
/// presented intermediate it names, by the node that intermediate names. `None` for an
/// intermediate that names no node (or a chain that does not hold the signer). The
/// chain has been verified, and only `reef ca` makes CAs under a reef root (with a path
/// length of zero), so the issuer's name identifies the signer.
pub fn signer(chain: &[impl AsRef<[u8]>], root: &[u8]) -> Option<Signer> {
    let (leaf, rest) = chain.split_first()?;
    let (_, leaf) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let (_, root) = X509Certificate::from_der(root).ok()?;
    let issuer = leaf.issuer().as_raw();
    if issuer == root.subject().as_raw() {
        return Some(Signer::Root);
    }
    rest.iter().find_map(|ca| {
        let (_, parsed) = X509Certificate::from_der(ca.as_ref()).ok()?;
        if parsed.subject().as_raw() != issuer {
            return None;
        }
        let node = certificate_identity(ca.as_ref())?
            .strip_prefix("reef://node/")?
            .to_owned();
        Some(Signer::Node(node))
    })
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};

    use super::*;
    use crate::{Pki, admin_identity, container_identity, init_cluster_ca, issue_node_ca};

    fn ders(pem: &str) -> Vec<Vec<u8>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|der| der.unwrap().to_vec())
            .collect()
    }

    /// A cluster of nodes `a` and `b`: the root's DER and each node's PKI.
    fn cluster() -> (tempfile::TempDir, Vec<u8>, Pki, Pki) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_cluster_ca(&ca).unwrap();
        let load = |node: &str| {
            let tls = dir.path().join(node);
            issue_node_ca(&ca, node, &tls).unwrap();
            Pki::load_or_create(&tls, node, &[]).unwrap()
        };
        let (a, b) = (load("a"), load("b"));
        let root = ders(a.ca_pem()).remove(0);
        (dir, root, a, b)
    }

    fn believed_on(pki: &Pki, identity: &str, root: &[u8], here: &str) -> Result<(), String> {
        let chain = ders(&pki.issue("t", &[], identity).unwrap().cert_pem);
        vouched_identity(&chain, root, here).map(|believed| {
            assert_eq!(believed.as_deref(), Some(identity));
        })
    }

    #[test]
    fn a_nodes_ca_vouches_for_that_node_everywhere_and_for_its_clients_at_home() {
        let (_dir, root, a, _b) = cluster();
        for here in ["a", "b"] {
            believed_on(&a, &node_identity("a"), &root, here).unwrap();
        }
        for identity in [admin_identity("a"), container_identity("web")] {
            believed_on(&a, &identity, &root, "a").unwrap();
            let refused = believed_on(&a, &identity, &root, "b").unwrap_err();
            assert!(refused.contains("node a alone"), "{refused}");
        }
    }

    #[test]
    fn a_chain_goes_through_metadata_and_back_and_garbage_does_not() {
        let (_dir, _root, a, _b) = cluster();
        let chain = ders(&a.issue("t", &[], &admin_identity("a")).unwrap().cert_pem);
        assert_eq!(chain.len(), 2, "the leaf and a's intermediate");
        assert_eq!(decode_chain(&encode_chain(&chain)).unwrap(), chain);
        let mut torn = encode_chain(&chain);
        torn.pop();
        assert!(
            decode_chain(&torn)
                .unwrap_err()
                .contains("inside a certificate")
        );
        assert!(
            decode_chain(&[0, 0])
                .unwrap_err()
                .contains("inside a length")
        );
        let many = encode_chain(&[[0u8; 1]; 5]);
        assert!(decode_chain(&many).unwrap_err().contains("more than 4"));
        let big = encode_chain(&[vec![0u8; 40 << 10]]);
        assert!(decode_chain(&big).unwrap_err().contains("over the"));
    }

    #[test]
    fn only_what_a_node_issues_for_itself_is_believed_on_that_node_alone() {
        let (_dir, root, a, _b) = cluster();
        let vouched_as = |identity: &str| {
            let chain = ders(&a.issue("t", &[], identity).unwrap().cert_pem);
            vouched(&chain, &root, "a").unwrap().unwrap()
        };
        assert!(vouched_as(&admin_identity("x")).here_only());
        assert!(vouched_as(&container_identity("web")).here_only());
        assert!(!vouched_as(&node_identity("a")).here_only());
        let dir = tempfile::tempdir().unwrap();
        let standalone = Pki::load_or_create(dir.path(), "solo", &[]).unwrap();
        let root = ders(standalone.ca_pem()).remove(0);
        let chain = ders(
            &standalone
                .issue("t", &[], &admin_identity("x"))
                .unwrap()
                .cert_pem,
        );
        let by_root = vouched(&chain, &root, "solo").unwrap().unwrap();
        assert!(!by_root.here_only(), "the root vouches everywhere");
    }

    #[test]
    fn no_node_mints_another_nodes_identity() {
        let (_dir, root, _a, b) = cluster();
        for here in ["a", "b"] {
            let refused = believed_on(&b, &node_identity("a"), &root, here).unwrap_err();
            assert!(refused.contains("vouches for no node but b"), "{refused}");
        }
    }

    #[test]
    fn the_root_vouches_for_anyone_and_the_leaf_alone_names_no_signer() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = Pki::load_or_create(dir.path(), "solo", &[]).unwrap();
        let root = ders(standalone.ca_pem()).remove(0);
        believed_on(&standalone, &admin_identity("x"), &root, "elsewhere").unwrap();
        believed_on(&standalone, &node_identity("other"), &root, "elsewhere").unwrap();

        let (_dir, root, a, _b) = cluster();
        let leaf_only = ders(&a.issue("t", &[], &admin_identity("a")).unwrap().cert_pem);
        let refused = vouched_identity(&leaf_only[..1], &root, "a").unwrap_err();
        assert!(refused.contains("names no node"), "{refused}");
    }
}
