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
    vouches(&signer, &identity, here).map(|()| Some(identity))
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
