//! Who is calling: decided once per connection, and once per call.
//!
//! The TLS handshake proves that the client holds the key of its certificate. When the
//! connection is accepted, [`Authenticated`] reads the reef identity the certificate names
//! (a `reef://KIND/NAME` URI SAN) once, and hands it to tonic as the connection's info
//! ([`Peer`]). [`IdentityLayer`], the first layer of the node's gRPC server, turns that into
//! the call's [`Caller`] and puts it in the request's extensions; handlers read it with
//! [`caller`] and never look at certificates themselves.
//!
//! A call forwarded by another node may say whom it acts for (`reef-on-behalf-of`); the
//! layer believes that only from the node this node joined ([`ParentNode`]): calls are
//! forwarded down the tree, so no other node, a child or a sibling, speaks for anyone
//! here.
//!
//! The layer is also the node's door: a caller without a certificate from the node's
//! trust root is answered UNAUTHENTICATED, except on the few routes anyone may use to
//! find and probe a node ([`OPEN_ROUTES`]), unless the node was started with
//! `--allow-anonymous`.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready, ready};
use reef_access::{Access, Action};
use reef_core::Principal;
use reef_proto::{ON_BEHALF_OF_CHAIN_METADATA, ON_BEHALF_OF_METADATA};
use reef_tls::tls::NodeTls;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;
use tonic::{codegen::http, transport::server::Connected};
use tower::{Layer, Service};

use crate::api::error::ApiError;

/// A certificate chain as the client presented it: DER, leaf first.
pub type Chain = Arc<[Vec<u8>]>;

/// What a connection's client certificate says, read once at accept.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The principal the certificate names ([`Principal::Anonymous`] without one, or
    /// with one that is not believed here).
    pub principal: Principal,
    /// The client's certificate chain, for checks beyond its identity (`Join`) and for
    /// the calls this node forwards for it.
    pub chain: Option<Chain>,
    /// The certificate's issuer is this node's CA, which vouches for it here alone (see
    /// [`reef_tls::vouch`]): the node forwards no call for it.
    pub here_only: bool,
    /// Why the identity the certificate names is not believed on this node: its issuer
    /// may not vouch for it here (see [`reef_tls::vouch`]).
    pub disbelieved: Option<String>,
}

impl Peer {
    /// A connection without a client certificate (or over plain TCP).
    pub fn anonymous() -> Self {
        Self {
            principal: Principal::Anonymous,
            chain: None,
            here_only: false,
            disbelieved: None,
        }
    }

    /// The peer of a handshaken TLS stream, whose certificate chain `tls` verified.
    fn of(stream: &TlsStream<TcpStream>, tls: &NodeTls) -> Self {
        let Some(chain) = stream.get_ref().1.peer_certificates() else {
            return Self::anonymous();
        };
        if chain.is_empty() {
            return Self::anonymous();
        }
        let (principal, here_only, disbelieved) = match tls.vouched_identity(chain) {
            Ok(vouched) => (
                Principal::from_identity(vouched.as_ref().map(|v| v.identity.as_str())),
                vouched.is_some_and(|vouched| vouched.here_only()),
                None,
            ),
            Err(reason) => (Principal::Anonymous, false, Some(reason)),
        };
        Self {
            principal,
            chain: Some(chain.iter().map(|der| der.to_vec()).collect()),
            here_only,
            disbelieved,
        }
    }
}

/// The principal a call acts as, and the connection it came on.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Whose rights the call has: the certificate's principal, or whom a node acts for.
    pub principal: Principal,
    /// The connection's certificate.
    pub peer: Peer,
    /// Let in only because the route is open to callers without a certificate: such a
    /// caller learns no more than the route gives everyone.
    pub open_route_only: bool,
    /// The certificate chain that proves `principal` to the nodes below, when this node
    /// forwards the call: `None` for anyone this node alone believes (a certificate of
    /// this node's CA), and for anonymous callers, who need none.
    pub proof: Option<Chain>,
}

/// Whom a call forwarded by another node acts for: the `reef-on-behalf-of` value and the
/// chain of that caller's certificate (`reef-on-behalf-of-chain-bin`, as
/// [`reef_tls::vouch::encode_chain`] makes it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ActingFor<'a> {
    /// The principal, in its `kind:name` form.
    pub principal: Option<&'a str>,
    /// Its certificate chain, encoded.
    pub chain: Option<&'a [u8]>,
}

impl Caller {
    /// The caller of a call on `peer`'s connection that may say whom it acts for
    /// (`acting_for`), believed only from `parent`, and only with a certificate chain
    /// for that principal that `tls` believes. `Err` says why a call the parent
    /// forwarded is refused.
    pub fn new(
        peer: Peer,
        acting_for: ActingFor<'_>,
        parent: &ParentNode,
        tls: &NodeTls,
    ) -> Result<Self, String> {
        let own = |peer: Peer| {
            let proof = (!peer.here_only).then(|| peer.chain.clone()).flatten();
            Self {
                principal: peer.principal.clone(),
                peer,
                open_route_only: false,
                proof,
            }
        };
        let parent_node = match &peer.principal {
            Principal::Node(node) if parent.is(node) => node.clone(),
            _ => return Ok(own(peer)),
        };
        let Some(principal) = acting_for.principal.and_then(Principal::parse) else {
            return Ok(own(peer));
        };
        let forwarded = |principal: Principal, proof: Option<Chain>| Self {
            principal,
            peer: peer.clone(),
            open_route_only: false,
            proof,
        };
        if principal == Principal::Anonymous {
            return Ok(forwarded(principal, None));
        }
        let refused = |why: String| {
            format!("node {parent_node} forwarded a call for {principal} that is refused: {why}")
        };
        let chain = acting_for
            .chain
            .ok_or_else(|| refused("it came without that caller's certificate".to_owned()))?;
        let chain = reef_tls::vouch::decode_chain(chain).map_err(refused)?;
        let vouched = tls
            .vouched_forwarded(&chain)
            .map_err(refused)?
            .ok_or_else(|| refused("its certificate names no reef identity".to_owned()))?;
        if Principal::from_identity(Some(&vouched.identity)) != principal {
            return Err(refused(format!(
                "its certificate names {}",
                vouched.identity
            )));
        }
        let proof = (!vouched.here_only()).then(|| Chain::from(chain));
        Ok(forwarded(principal, proof))
    }

    /// Whom a call this node forwards to another node for this caller acts for, with
    /// the proof of it; refused for a caller whom this node alone believes.
    pub(crate) fn forwardable(&self) -> Result<ForwardedFor, ApiError> {
        match (&self.principal, &self.proof) {
            (Principal::Anonymous, _) => Ok(ForwardedFor {
                principal: Principal::Anonymous,
                chain: None,
            }),
            (principal, Some(chain)) => Ok(ForwardedFor {
                principal: principal.clone(),
                chain: Some(chain.clone()),
            }),
            (principal, None) => Err(ApiError::NotEntitled(format!(
                "{principal}'s certificate was issued by this node's CA, which vouches for \
                 it on this node alone, so no other node is told that a call acts for it; \
                 to act on other nodes, present a certificate from the cluster CA \
                 (`reef ca client NAME --ca-dir CLUSTER_CA --out DIR`, with --admin for an \
                 administrator)"
            ))),
        }
    }
}

/// Whom a call this node forwards to another node acts for, and the certificate chain
/// that proves it there (see [`Caller::new`]).
#[derive(Debug, Clone)]
pub struct ForwardedFor {
    /// The caller.
    pub principal: Principal,
    /// Its certificate chain; `None` for an anonymous caller.
    pub chain: Option<Chain>,
}

/// The [`Caller`] of `request`, as [`IdentityLayer`] decided; anonymous for a request
/// that did not pass the layer.
pub fn acting<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller {
            principal: Principal::Anonymous,
            peer: Peer::anonymous(),
            open_route_only: true,
            proof: None,
        })
}

/// Who sent `request`, as [`IdentityLayer`] decided. A request that did not pass the layer
/// is anonymous: the node fails closed.
pub fn caller<T>(request: &tonic::Request<T>) -> Principal {
    request
        .extensions()
        .get::<Caller>()
        .map_or(Principal::Anonymous, |caller| caller.principal.clone())
}

/// Whether `request`'s caller has no certificate and was let in only because its route
/// is open to everyone ([`OPEN_ROUTES`]). A request that did not pass the layer was not
/// let in at all.
pub fn open_route_only<T>(request: &tonic::Request<T>) -> bool {
    request
        .extensions()
        .get::<Caller>()
        .is_none_or(|caller| caller.open_route_only)
}

/// The certificate chain of the connection `request` came on, if the caller presented
/// one.
pub fn peer_chain<T>(request: &tonic::Request<T>) -> Option<Chain> {
    request
        .extensions()
        .get::<Caller>()
        .and_then(|caller| caller.peer.chain.clone())
}

/// Checks the caller of `request` doing `action` to `target` (no scope).
pub(crate) fn check_caller<T>(
    access: &Access,
    request: &tonic::Request<T>,
    action: Action,
    target: &str,
) -> Result<(), ApiError> {
    Ok(access.check(&caller(request), action, target, &[])?)
}

/// A TLS connection the node accepted, with its client's identity read once.
pub struct Authenticated {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

impl Authenticated {
    /// `stream`, whose client certificate is believed for what `tls` says it vouches.
    pub fn new(stream: TlsStream<TcpStream>, tls: &NodeTls) -> Self {
        let peer = Peer::of(&stream, tls);
        if let Some(reason) = &peer.disbelieved {
            tracing::warn!(%reason, "a client's certificate is not believed");
        }
        Self { stream, peer }
    }
}

impl Connected for Authenticated {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Authenticated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Authenticated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The routes a caller without a certificate may use: health checks, reflection (what
/// grpcurl needs to describe the API) and the node's name and version (`Info` answers
/// an anonymous caller with nothing more).
pub const OPEN_ROUTES: [&str; 4] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/reef.v1.Supervisor/Info",
];

/// What the node answers a caller without a certificate on a route outside
/// [`OPEN_ROUTES`].
pub const UNAUTHENTICATED_MESSAGE: &str = "this node requires a client certificate from its CA: \
     on the node's machine the CLI presents DATA/tls/admin.pem; elsewhere ask an \
     administrator for one (`reef ca client NAME --ca-dir DIR --out OUT`) and pass it \
     with --cert and --key (REEF_CERT and REEF_KEY for the SDKs)";

/// Whether callers without a certificate get past the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Only to [`OPEN_ROUTES`]: the default.
    Refused,
    /// Everywhere, with what the policies give `anonymous` (`reefd --allow-anonymous`, for
    /// development; implied by `--insecure`, where no caller has a certificate).
    Allowed,
}

/// The node this node joined (`reefd --join`), once the parent has said its name: the
/// one node whose `reef-on-behalf-of` is believed. Shared by the uplink, which learns
/// the name, and the [`IdentityLayer`].
#[derive(Debug, Clone, Default)]
pub struct ParentNode(Arc<parking_lot::RwLock<Option<String>>>);

impl ParentNode {
    /// The parent answered a Join as `name`.
    pub fn set(&self, name: &str) {
        *self.0.write() = Some(name.to_owned());
    }

    /// Whether `node` is the parent.
    pub fn is(&self, node: &str) -> bool {
        self.0.read().as_deref() == Some(node)
    }
}

/// Puts each call's [`Caller`] into its extensions, from the connection's [`Peer`], and
/// refuses callers without a certificate where [`Anonymous`] says so.
#[derive(Debug, Clone)]
pub struct IdentityLayer {
    anonymous: Anonymous,
    parent: ParentNode,
    tls: Arc<NodeTls>,
}

impl IdentityLayer {
    /// The layer of a node that treats callers without a certificate as `anonymous` says,
    /// and believes whom `parent` says it acts for when `tls` believes that caller's
    /// certificate.
    pub fn new(anonymous: Anonymous, parent: ParentNode, tls: Arc<NodeTls>) -> Self {
        Self {
            anonymous,
            parent,
            tls,
        }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Identify<S> {
        Identify {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`IdentityLayer`] wraps around the node's routes.
#[derive(Debug, Clone)]
pub struct Identify<S> {
    inner: S,
    layer: IdentityLayer,
}

impl<S, B, R> Service<http::Request<B>> for Identify<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<Peer>()
            .cloned()
            .unwrap_or_else(Peer::anonymous);
        let open_route_only =
            peer.principal == Principal::Anonymous && self.layer.anonymous == Anonymous::Refused;
        // A certificate that names someone its issuer may not vouch for is refused even
        // where anonymous callers are let in: its holder claimed to be someone.
        let refusal = match &peer.disbelieved {
            Some(reason) => Some(reason.as_str()),
            None if open_route_only => Some(UNAUTHENTICATED_MESSAGE),
            None => None,
        };
        if let Some(reason) = refusal
            && !is_open(request.uri().path())
        {
            return Either::Left(unauthenticated(reason));
        }
        let chain = request
            .headers()
            .get(ON_BEHALF_OF_CHAIN_METADATA)
            .map(|value| decode_binary_metadata(value.as_bytes()));
        let acting_for = ActingFor {
            principal: request
                .headers()
                .get(ON_BEHALF_OF_METADATA)
                .and_then(|value| value.to_str().ok()),
            chain: chain.as_deref(),
        };
        let caller = match Caller::new(peer, acting_for, &self.layer.parent, &self.layer.tls) {
            Ok(caller) => Caller {
                open_route_only,
                ..caller
            },
            Err(reason) => return Either::Left(unauthenticated(&reason)),
        };
        request.extensions_mut().insert(caller);
        Either::Right(self.inner.call(request))
    }
}

/// The answer to a call refused at the door, for `reason`.
fn unauthenticated<R: Default, E>(reason: &str) -> Ready<Result<http::Response<R>, E>> {
    ready(Ok(tonic::Status::unauthenticated(reason).into_http()))
}

/// The bytes of a binary (`-bin`) metadata value as it travels: base64, with or without
/// padding. Undecodable text gives no bytes (a chain that then proves no one).
fn decode_binary_metadata(text: &[u8]) -> Vec<u8> {
    let mut headers = http::HeaderMap::new();
    match http::HeaderValue::from_bytes(text) {
        Ok(value) => headers.insert(ON_BEHALF_OF_CHAIN_METADATA, value),
        Err(_) => return Vec::new(),
    };
    tonic::metadata::MetadataMap::from_headers(headers)
        .get_bin(ON_BEHALF_OF_CHAIN_METADATA)
        .and_then(|value| value.to_bytes().ok())
        .map(|bytes| bytes.to_vec())
        .unwrap_or_default()
}

/// Whether `path` (`/package.Service/Method`) is one of the [`OPEN_ROUTES`].
fn is_open(path: &str) -> bool {
    OPEN_ROUTES.iter().any(|open| match open.ends_with('/') {
        true => path.starts_with(open),
        false => path == *open,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(principal: Principal) -> Peer {
        Peer {
            principal,
            ..Peer::anonymous()
        }
    }

    /// Answers with the principal the layer put in the request, as text.
    struct Echo;

    impl Service<http::Request<()>> for Echo {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let caller = request.extensions().get::<Caller>().expect("a caller");
            ready(Ok(http::Response::new(caller.principal.to_string())))
        }
    }

    /// A cluster: its CA, this node (`here`), and the CA of its parent, `edge`.
    struct Cluster {
        dir: tempfile::TempDir,
        here: Arc<NodeTls>,
        edge: reef_tls::Pki,
    }

    impl Cluster {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca = dir.path().join("ca");
            reef_tls::init_cluster_ca(&ca).unwrap();
            reef_tls::issue_node_ca(&ca, "here", &dir.path().join("here")).unwrap();
            reef_tls::issue_node_ca(&ca, "edge", &dir.path().join("edge")).unwrap();
            let here = NodeTls::load(&dir.path().join("here"), "here", &[]).unwrap();
            let edge =
                reef_tls::Pki::load_or_create(&dir.path().join("edge"), "edge", &[]).unwrap();
            Self { dir, here, edge }
        }

        /// The chain of a certificate naming `identity`, from the cluster's CA.
        fn issued_by_the_cluster_ca(&self, identity: &str) -> Vec<Vec<u8>> {
            let ca = self.dir.path().join("ca");
            ders(&reef_tls::issue_client(&ca, identity).unwrap().cert_pem)
        }

        /// The chain of a certificate naming `identity`, from the parent's own CA.
        fn issued_by_the_parents_ca(&self, identity: &str) -> Vec<Vec<u8>> {
            ders(&self.edge.issue("t", &[], identity).unwrap().cert_pem)
        }
    }

    fn ders(pem: &str) -> Vec<Vec<u8>> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|der| der.unwrap().to_vec())
            .collect()
    }

    /// What a call to `path` on `peer`'s connection, acting for `acting_for` (with the
    /// chain `proof`), gets: the principal it ran as, or the gRPC status code and message
    /// it was refused with.
    async fn answer_with(
        cluster: &Cluster,
        anonymous: Anonymous,
        path: &str,
        peer: Option<Peer>,
        acting_for: Option<&str>,
        proof: Option<&[Vec<u8>]>,
    ) -> Result<String, (String, String)> {
        let mut request = http::Request::builder().uri(path).body(()).unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        if let Some(acting_for) = acting_for {
            request
                .headers_mut()
                .insert(ON_BEHALF_OF_METADATA, acting_for.parse().unwrap());
        }
        if let Some(proof) = proof {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert_bin(
                ON_BEHALF_OF_CHAIN_METADATA,
                tonic::metadata::MetadataValue::from_bytes(&reef_tls::vouch::encode_chain(proof)),
            );
            request.headers_mut().extend(metadata.into_headers());
        }
        // This node joined `edge`.
        let parent = ParentNode::default();
        parent.set("edge");
        let Ok(response) = IdentityLayer::new(anonymous, parent, cluster.here.clone())
            .layer(Echo)
            .call(request)
            .await;
        match tonic::Status::from_header_map(response.headers()) {
            Some(status) => Err((
                (status.code() as i32).to_string(),
                status.message().to_owned(),
            )),
            None => Ok(response.into_body()),
        }
    }

    /// [`answer_with`] without a chain, and only the refusal's code.
    async fn answer(
        anonymous: Anonymous,
        path: &str,
        peer: Option<Peer>,
        acting_for: Option<&str>,
    ) -> Result<String, String> {
        answer_with(&Cluster::new(), anonymous, path, peer, acting_for, None)
            .await
            .map_err(|(code, _)| code)
    }

    async fn principal_of(peer: Option<Peer>, acting_for: Option<&str>) -> String {
        answer(
            Anonymous::Allowed,
            "/reef.v1.Supervisor/List",
            peer,
            acting_for,
        )
        .await
        .expect("let in")
    }

    /// What the parent's call for `acting_for`, with `proof`, gets.
    async fn forwarded(
        cluster: &Cluster,
        acting_for: &str,
        proof: &[Vec<u8>],
    ) -> Result<String, (String, String)> {
        answer_with(
            cluster,
            Anonymous::Refused,
            "/reef.v1.Supervisor/Create",
            Some(peer(Principal::Node("edge".into()))),
            Some(acting_for),
            Some(proof),
        )
        .await
    }

    #[tokio::test]
    async fn only_the_parent_node_acts_for_someone() {
        // A child or sibling node, or one this node never joined, acts as itself.
        let other = peer(Principal::Node("child".into()));
        assert_eq!(
            principal_of(Some(other), Some("admin:root")).await,
            "node:child"
        );
        let unjoined = ParentNode::default();
        assert!(!unjoined.is("edge"));
    }

    #[tokio::test]
    async fn a_call_is_its_certificate_unless_the_parent_acts_for_someone() {
        let ops = Principal::Client("ops".into());
        let node = peer(Principal::Node("edge".into()));
        assert_eq!(
            principal_of(Some(peer(ops.clone())), None).await,
            "client:ops"
        );
        assert_eq!(
            principal_of(Some(node.clone()), Some("not a principal")).await,
            "node:edge"
        );
        // Only nodes may say whom they act for.
        assert_eq!(
            principal_of(Some(peer(ops.clone())), Some("admin:root")).await,
            "client:ops"
        );
        assert_eq!(
            principal_of(
                Some(peer(Principal::Container("a".into()))),
                Some("admin:root")
            )
            .await,
            "container:a"
        );
        // The parent acting for no one in particular needs no certificate.
        assert_eq!(
            principal_of(Some(node), Some("anonymous")).await,
            "anonymous"
        );
    }

    #[tokio::test]
    async fn the_parent_acts_for_a_caller_whose_certificate_this_node_believes() {
        let cluster = Cluster::new();
        let ops = cluster.issued_by_the_cluster_ca(&reef_tls::client_identity("ops"));
        assert_eq!(
            forwarded(&cluster, "client:ops", &ops).await.unwrap(),
            "client:ops"
        );
        let admin = cluster.issued_by_the_cluster_ca(&reef_tls::admin_identity("root"));
        assert_eq!(
            forwarded(&cluster, "admin:root", &admin).await.unwrap(),
            "admin:root"
        );

        let unauthenticated = (tonic::Code::Unauthenticated as i32).to_string();
        let refused = |answer: Result<String, (String, String)>, why: &str| {
            let (code, message) = answer.expect_err("believed");
            assert_eq!(code, unauthenticated, "{message}");
            assert!(message.contains(why), "{message}");
        };
        // Without a certificate, or with one that names someone else.
        refused(
            forwarded(&cluster, "admin:root", &[]).await,
            "certificate chain is empty",
        );
        let without = answer_with(
            &cluster,
            Anonymous::Refused,
            "/reef.v1.Supervisor/Create",
            Some(peer(Principal::Node("edge".into()))),
            Some("admin:root"),
            None,
        )
        .await;
        refused(without, "without that caller's certificate");
        refused(
            forwarded(&cluster, "admin:root", &ops).await,
            "names reef://client/ops",
        );
        // The parent's own administrator is the parent's alone.
        let parents_admin = cluster.issued_by_the_parents_ca(&reef_tls::admin_identity("x"));
        refused(
            forwarded(&cluster, "admin:x", &parents_admin).await,
            "believed on node edge alone",
        );
        // A certificate from another CA altogether.
        let elsewhere = tempfile::tempdir().unwrap();
        reef_tls::init_cluster_ca(elsewhere.path()).unwrap();
        let foreign =
            reef_tls::issue_client(elsewhere.path(), &reef_tls::admin_identity("root")).unwrap();
        refused(
            forwarded(&cluster, "admin:root", &ders(&foreign.cert_pem)).await,
            "does not verify",
        );
        // Garbage.
        let garbage = vec![vec![1, 2, 3]];
        refused(
            forwarded(&cluster, "admin:root", &garbage).await,
            "does not verify",
        );
    }

    #[test]
    fn a_caller_this_node_alone_believes_is_forwarded_for_by_no_one() {
        let cluster = Cluster::new();
        let parent = ParentNode::default();
        let local_admin = Peer {
            principal: Principal::Admin("here".into()),
            chain: Some(Chain::from(vec![vec![0u8]])),
            here_only: true,
            disbelieved: None,
        };
        let caller =
            Caller::new(local_admin, ActingFor::default(), &parent, &cluster.here).unwrap();
        let refused = caller.forwardable().unwrap_err().to_string();
        assert!(refused.contains("this node alone"), "{refused}");
        let operator = Peer {
            here_only: false,
            ..caller.peer.clone()
        };
        let caller = Caller::new(operator, ActingFor::default(), &parent, &cluster.here).unwrap();
        let forwarded = caller.forwardable().unwrap();
        assert_eq!(forwarded.principal, Principal::Admin("here".into()));
        assert!(forwarded.chain.is_some());
    }

    #[tokio::test]
    async fn a_connection_without_a_certificate_is_anonymous() {
        assert_eq!(principal_of(None, None).await, "anonymous");
        assert_eq!(principal_of(None, Some("admin:root")).await, "anonymous");
        let request = tonic::Request::new(());
        assert_eq!(caller(&request), Principal::Anonymous);
    }

    #[tokio::test]
    async fn without_a_certificate_only_the_open_routes_answer() {
        let unauthenticated = Err((tonic::Code::Unauthenticated as i32).to_string());
        for path in [
            "/reef.v1.Supervisor/Create",
            "/reef.v1.Supervisor/InfoX",
            "/reef.v1.Channel/Attach",
            "/reef.v1.State/Get",
            "/grpc.health.v1.HealthX/Check",
        ] {
            assert_eq!(
                answer(Anonymous::Refused, path, None, None).await,
                unauthenticated,
                "{path}"
            );
            // Saying whom one acts for does not help either.
            assert_eq!(
                answer(Anonymous::Refused, path, None, Some("admin:root")).await,
                unauthenticated,
                "{path}"
            );
        }
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/reef.v1.Supervisor/Info",
        ] {
            assert_eq!(
                answer(Anonymous::Refused, path, None, None).await,
                Ok("anonymous".to_owned()),
                "{path}"
            );
        }
        let ops = Some(peer(Principal::Client("ops".into())));
        assert_eq!(
            answer(Anonymous::Refused, "/reef.v1.Supervisor/Create", ops, None).await,
            Ok("client:ops".to_owned())
        );
    }

    #[tokio::test]
    async fn a_certificate_not_believed_here_is_refused_even_where_anonymous_callers_are_not() {
        let disbelieved = Peer {
            disbelieved: Some("issued by node b's CA".to_owned()),
            ..Peer::anonymous()
        };
        for anonymous in [Anonymous::Refused, Anonymous::Allowed] {
            assert_eq!(
                answer(
                    anonymous,
                    "/reef.v1.Supervisor/List",
                    Some(disbelieved.clone()),
                    None
                )
                .await,
                Err((tonic::Code::Unauthenticated as i32).to_string())
            );
            // It still finds and probes the node, as anyone may.
            assert_eq!(
                answer(
                    anonymous,
                    "/reef.v1.Supervisor/Info",
                    Some(disbelieved.clone()),
                    None
                )
                .await,
                Ok("anonymous".to_owned())
            );
        }
    }
}
