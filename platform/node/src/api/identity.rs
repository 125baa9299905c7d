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
use reef_proto::ON_BEHALF_OF_METADATA;
use reef_tls::tls::NodeTls;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;
use tonic::{codegen::http, transport::server::Connected};
use tower::{Layer, Service};

use crate::api::error::ApiError;

/// What a connection's client certificate says, read once at accept.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The principal the certificate names ([`Principal::Anonymous`] without one, or
    /// with one that is not believed here).
    pub principal: Principal,
    /// The client's leaf certificate (DER), for checks beyond its identity (`Join`).
    pub leaf: Option<Arc<[u8]>>,
    /// Why the identity the certificate names is not believed on this node: its issuer
    /// may not vouch for it here (see [`reef_tls::vouch`]).
    pub disbelieved: Option<String>,
}

impl Peer {
    /// A connection without a client certificate (or over plain TCP).
    pub fn anonymous() -> Self {
        Self {
            principal: Principal::Anonymous,
            leaf: None,
            disbelieved: None,
        }
    }

    /// The peer of a handshaken TLS stream, whose certificate chain `tls` verified.
    fn of(stream: &TlsStream<TcpStream>, tls: &NodeTls) -> Self {
        let Some(chain) = stream.get_ref().1.peer_certificates() else {
            return Self::anonymous();
        };
        let Some(leaf) = chain.first() else {
            return Self::anonymous();
        };
        let (principal, disbelieved) = match tls.vouched_identity(chain) {
            Ok(identity) => (Principal::from_identity(identity.as_deref()), None),
            Err(reason) => (Principal::Anonymous, Some(reason)),
        };
        Self {
            principal,
            leaf: Some(Arc::from(leaf.as_ref())),
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
}

impl Caller {
    /// The caller of a call on `peer`'s connection that says it acts for `acting_for`
    /// (the `reef-on-behalf-of` value), believed only from `parent`.
    pub fn new(peer: Peer, acting_for: Option<&str>, parent: &ParentNode) -> Self {
        let principal = match (&peer.principal, acting_for.and_then(Principal::parse)) {
            (Principal::Node(node), Some(acting_for)) if parent.is(node) => acting_for,
            (certified, _) => certified.clone(),
        };
        Self {
            principal,
            peer,
            open_route_only: false,
        }
    }
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

/// The certificate of the connection `request` came on, if the caller presented one.
pub fn peer_leaf<T>(request: &tonic::Request<T>) -> Option<Arc<[u8]>> {
    request
        .extensions()
        .get::<Caller>()
        .and_then(|caller| caller.peer.leaf.clone())
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
}

impl IdentityLayer {
    /// The layer of a node that treats callers without a certificate as `anonymous` says
    /// and believes whom `parent` says it acts for.
    pub fn new(anonymous: Anonymous, parent: ParentNode) -> Self {
        Self { anonymous, parent }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Identify<S> {
        Identify {
            inner,
            anonymous: self.anonymous,
            parent: self.parent.clone(),
        }
    }
}

/// The service [`IdentityLayer`] wraps around the node's routes.
#[derive(Debug, Clone)]
pub struct Identify<S> {
    inner: S,
    anonymous: Anonymous,
    parent: ParentNode,
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
            peer.principal == Principal::Anonymous && self.anonymous == Anonymous::Refused;
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
            let refusal = tonic::Status::unauthenticated(reason);
            return Either::Left(ready(Ok(refusal.into_http())));
        }
        let acting_for = request
            .headers()
            .get(ON_BEHALF_OF_METADATA)
            .and_then(|value| value.to_str().ok());
        let caller = Caller {
            open_route_only,
            ..Caller::new(peer, acting_for, &self.parent)
        };
        request.extensions_mut().insert(caller);
        Either::Right(self.inner.call(request))
    }
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
            leaf: None,
            disbelieved: None,
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

    /// What a call to `path` on `peer`'s connection, acting for `acting_for`, gets:
    /// the principal it ran as, or the gRPC status code it was refused with.
    async fn answer(
        anonymous: Anonymous,
        path: &str,
        peer: Option<Peer>,
        acting_for: Option<&str>,
    ) -> Result<String, String> {
        let mut request = http::Request::builder().uri(path).body(()).unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        if let Some(acting_for) = acting_for {
            request
                .headers_mut()
                .insert(ON_BEHALF_OF_METADATA, acting_for.parse().unwrap());
        }
        // This node joined `edge`.
        let parent = ParentNode::default();
        parent.set("edge");
        let Ok(response) = IdentityLayer::new(anonymous, parent)
            .layer(Echo)
            .call(request)
            .await;
        match response.headers().get("grpc-status") {
            Some(code) => Err(code.to_str().unwrap().to_owned()),
            None => Ok(response.into_body()),
        }
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
            principal_of(Some(node.clone()), Some("client:ops")).await,
            "client:ops"
        );
        assert_eq!(
            principal_of(Some(node), Some("not a principal")).await,
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
