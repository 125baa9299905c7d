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
//! layer believes that only from a caller whose certificate names a node.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use reef_access::{Access, Action};
use reef_core::Principal;
use reef_proto::ON_BEHALF_OF_METADATA;
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
    /// The principal the certificate names ([`Principal::Anonymous`] without one).
    pub principal: Principal,
    /// The client's leaf certificate (DER), for checks beyond its identity (`Join`).
    pub leaf: Option<Arc<[u8]>>,
}

impl Peer {
    /// A connection without a client certificate (or over plain TCP).
    pub fn anonymous() -> Self {
        Self {
            principal: Principal::Anonymous,
            leaf: None,
        }
    }

    /// The peer of a handshaken TLS stream.
    fn of(stream: &TlsStream<TcpStream>) -> Self {
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        let Some(leaf) = leaf else {
            return Self::anonymous();
        };
        let identity = reef_tls::certificate_identity(leaf);
        Self {
            principal: Principal::from_identity(identity.as_deref()),
            leaf: Some(Arc::from(leaf.as_ref())),
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
}

impl Caller {
    /// The caller of a call on `peer`'s connection that says it acts for `acting_for`
    /// (the `reef-on-behalf-of` value), believed only from a node.
    pub fn new(peer: Peer, acting_for: Option<&str>) -> Self {
        let principal = match (&peer.principal, acting_for.and_then(Principal::parse)) {
            (Principal::Node(_), Some(acting_for)) => acting_for,
            (certified, _) => certified.clone(),
        };
        Self { principal, peer }
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

impl From<TlsStream<TcpStream>> for Authenticated {
    fn from(stream: TlsStream<TcpStream>) -> Self {
        let peer = Peer::of(&stream);
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

/// Puts each call's [`Caller`] into its extensions, from the connection's [`Peer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityLayer;

impl<S> Layer<S> for IdentityLayer {
    type Service = Identify<S>;

    fn layer(&self, inner: S) -> Identify<S> {
        Identify { inner }
    }
}

/// The service [`IdentityLayer`] wraps around the node's routes.
#[derive(Debug, Clone)]
pub struct Identify<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Identify<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        let peer = request
            .extensions()
            .get::<Peer>()
            .cloned()
            .unwrap_or_else(Peer::anonymous);
        let acting_for = request
            .headers()
            .get(ON_BEHALF_OF_METADATA)
            .and_then(|value| value.to_str().ok());
        let caller = Caller::new(peer, acting_for);
        request.extensions_mut().insert(caller);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Ready, ready};

    use super::*;

    fn peer(principal: Principal) -> Peer {
        Peer {
            principal,
            leaf: None,
        }
    }

    /// Answers with the principal the layer put in the request.
    struct Echo;

    impl Service<http::Request<()>> for Echo {
        type Response = Principal;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<Principal, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let caller = request.extensions().get::<Caller>().expect("a caller");
            ready(Ok(caller.principal.clone()))
        }
    }

    async fn principal_of(peer: Option<Peer>, acting_for: Option<&str>) -> Principal {
        let mut request = http::Request::new(());
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        if let Some(acting_for) = acting_for {
            request
                .headers_mut()
                .insert(ON_BEHALF_OF_METADATA, acting_for.parse().unwrap());
        }
        let Ok(principal) = IdentityLayer.layer(Echo).call(request).await;
        principal
    }

    #[tokio::test]
    async fn a_call_is_its_certificate_unless_a_node_acts_for_someone() {
        let ops = Principal::Client("ops".into());
        let node = peer(Principal::Node("edge".into()));
        assert_eq!(principal_of(Some(peer(ops.clone())), None).await, ops);
        assert_eq!(
            principal_of(Some(node.clone()), Some("client:ops")).await,
            ops
        );
        assert_eq!(
            principal_of(Some(node), Some("not a principal")).await,
            Principal::Node("edge".into())
        );
        // Only nodes may say whom they act for.
        assert_eq!(
            principal_of(Some(peer(ops.clone())), Some("admin:root")).await,
            ops
        );
        assert_eq!(
            principal_of(
                Some(peer(Principal::Container("a".into()))),
                Some("admin:root")
            )
            .await,
            Principal::Container("a".into())
        );
    }

    #[tokio::test]
    async fn a_connection_without_a_certificate_is_anonymous() {
        assert_eq!(principal_of(None, None).await, Principal::Anonymous);
        assert_eq!(
            principal_of(None, Some("admin:root")).await,
            Principal::Anonymous
        );
        let request = tonic::Request::new(());
        assert_eq!(caller(&request), Principal::Anonymous);
    }
}
