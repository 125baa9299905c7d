//! Connections for axum: TLS handshakes done by the node's acceptor (bounded in time,
//! side by side), each connection labelled with its peer and whether it presented the
//! node's admin certificate (a login of its own).

use std::{io, net::SocketAddr, pin::Pin};

use axum::serve::{IncomingStream, Listener};
use reef_platform::{certificate_identity, tls};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;
use tokio_stream::{Stream, StreamExt as _};

/// A connection's byte stream, TLS or (for an insecure node) plain.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it presented a certificate naming an administrator (`reef://admin/…`),
    /// verified against the node's CA during the handshake.
    pub admin: bool,
}

type Accepted = Pin<Box<dyn Stream<Item = io::Result<(Box<dyn Io>, Peer)>> + Send>>;

/// The dashboard's listener.
pub struct PeerListener {
    accepted: Accepted,
    local: io::Result<SocketAddr>,
}

impl PeerListener {
    /// Accepts on `listener`, over TLS when `tls` is given.
    pub fn new(listener: TcpListener, tls: Option<TlsAcceptor>) -> Self {
        let local = listener.local_addr();
        let accepted: Accepted = match tls {
            Some(acceptor) => Box::pin(tls::incoming(listener, acceptor).map(|stream| {
                let stream = stream?;
                let (tcp, session) = stream.get_ref();
                let peer = Peer {
                    addr: tcp.peer_addr()?,
                    admin: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| certificate_identity(leaf))
                        .is_some_and(|identity| identity.starts_with("reef://admin/")),
                };
                Ok((Box::new(stream) as Box<dyn Io>, peer))
            })),
            None => Box::pin(
                tokio_stream::wrappers::TcpListenerStream::new(listener).map(|tcp| {
                    let tcp = tcp?;
                    let peer = Peer {
                        addr: tcp.peer_addr()?,
                        admin: false,
                    };
                    Ok((Box::new(tcp) as Box<dyn Io>, peer))
                }),
            ),
        };
        Self { accepted, local }
    }
}

impl Listener for PeerListener {
    type Io = Box<dyn Io>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.accepted.next().await {
                Some(Ok(accepted)) => return accepted,
                Some(Err(error)) => tracing::debug!(%error, "dashboard connection dropped"),
                // The acceptor stopped: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(Peer {
                addr: *addr,
                admin: false,
            }),
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
        }
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, PeerListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PeerListener>) -> Self {
        stream.remote_addr().clone()
    }
}
