//! reef's certificates and its TLS server side: the node's CA and the certificates it
//! issues ([`Pki`]), the identities they carry (`reef://KIND/NAME` URI SANs), and an
//! acceptor whose certificate can be replaced while the node runs ([`tls::NodeTls`]),
//! the client side towards a container or node trusted for its identity
//! ([`dial::peer_channel`]), and which identities each issuer of a cluster may vouch for
//! ([`vouch`]).
//!
//! The CLI (`reef ca`), the dashboard and the tests use the same functions the node
//! does, without depending on the node.
//!
//! ```
//! assert_eq!(reef_tls::client_identity("ops"), "reef://client/ops");
//! ```
#![warn(missing_docs)]

mod destroyed;
pub mod dial;
mod pki;
pub mod tls;
pub mod vouch;

pub use self::pki::{
    CertifiedKey, Pki, PkiError, admin_identity, certificate_identity, certificate_names,
    client_identity, container_identity, init_cluster_ca, issue_client, issue_node_ca,
    node_identity,
};
