//! The dashboard's connections: TLS handshakes done by the node's acceptor (bounded in time,
//! side by side), each connection labelled with its peer and whether it presented the
//! node's admin certificate (a login of its own), at most [`MAX_CONNECTIONS`] open at
//! once (beyond that, new connections wait in the kernel's backlog), and each closed
//! after [`IDLE_TIMEOUT`] without a byte either way.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use reef_tls::tls::{self, NodeTls};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_rustls::TlsAcceptor;
use tokio_stream::{Stream, StreamExt as _};

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection silent both ways this long is closed. Live views stay open: their
/// streams send a keep-alive every 15 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection's byte stream, TLS or (for an insecure node) plain.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it presented a certificate naming an administrator (`reef://admin/…`),
    /// verified against the node's CA during the handshake, from an issuer that may
    /// vouch for an administrator of this node (see [`reef_tls::vouch`]).
    pub admin: bool,
}

type Accepted = Pin<Box<dyn Stream<Item = io::Result<(Box<dyn Io>, Peer)>> + Send>>;

/// The dashboard's listener.
pub struct PeerListener {
    accepted: Accepted,
    open: Arc<Semaphore>,
    idle: Duration,
}

impl PeerListener {
    /// Accepts on `listener`, over TLS when `tls` is given (the acceptor, and the node's
    /// certificates, which decide whom a client certificate is believed for).
    pub fn new(listener: TcpListener, tls: Option<(TlsAcceptor, Arc<NodeTls>)>) -> Self {
        Self::with_limits(listener, tls, MAX_CONNECTIONS, IDLE_TIMEOUT)
    }

    /// The same with at most `limit` connections open at once, each closed after `idle`
    /// without traffic.
    pub fn with_limits(
        listener: TcpListener,
        tls: Option<(TlsAcceptor, Arc<NodeTls>)>,
        limit: usize,
        idle: Duration,
    ) -> Self {
        let accepted: Accepted = match tls {
            Some((acceptor, node)) => {
                Box::pin(tls::incoming(listener, acceptor).map(move |stream| {
                    let stream = stream?;
                    let (tcp, session) = stream.get_ref();
                    let peer = Peer {
                        addr: tcp.peer_addr()?,
                        admin: session
                            .peer_certificates()
                            .and_then(|chain| node.vouched_identity(chain).ok().flatten())
                            .map(|vouched| vouched.identity)
                            .is_some_and(|identity| identity.starts_with("reef://admin/")),
                    };
                    Ok((Box::new(stream) as Box<dyn Io>, peer))
                }))
            }
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
        Self {
            accepted,
            open: Arc::new(Semaphore::new(limit)),
            idle,
        }
    }

    /// The next connection, once a slot is free.
    pub async fn accept(&mut self) -> (Counted, Peer) {
        let Ok(slot) = self.open.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.accepted.next().await {
                Some(Ok((io, peer))) => return (Counted::new(io, slot, self.idle), peer),
                Some(Err(error)) => tracing::debug!(%error, "dashboard connection dropped"),
                // The acceptor stopped: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// A connection that holds one of the listener's slots until it is dropped, and fails
/// once it has been silent both ways for its idle time.
pub struct Counted {
    io: Box<dyn Io>,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    silence: Pin<Box<Sleep>>,
}

impl Counted {
    fn new(io: Box<dyn Io>, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        Self {
            io,
            _slot: slot,
            idle,
            silence: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Bytes moved: the silence starts again.
    fn heard(&mut self) {
        let until = Instant::now() + self.idle;
        self.silence.as_mut().reset(until);
    }

    /// While waiting for the other end: an error once the silence lasted too long.
    fn too_quiet(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.silence
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::TimedOut, "dashboard connection idle"))
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.heard();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.too_quiet(cx) {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Ok(written)) => {
                self.heard();
                Poll::Ready(Ok(written))
            }
            Poll::Pending => match self.too_quiet(cx) {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_for_a_slot() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut listener = PeerListener::with_limits(socket, None, 1, IDLE_TIMEOUT);
        let _first_client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _second_client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (first, peer) = listener.accept().await;
        assert!(!peer.admin, "plain connections carry no certificate");
        // The one slot is taken: accepting does not get past it.
        tokio::select! {
            biased;
            _ = listener.accept() => panic!("a second connection while the first is open"),
            _ = std::future::ready(()) => {}
        }
        drop(first);
        let (_second, _) = listener.accept().await;
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_its_idle_time() {
        use tokio::io::AsyncReadExt as _;
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let idle = Duration::from_millis(50);
        let mut listener = PeerListener::with_limits(socket, None, 1, idle);
        let _silent_client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut connection, _) = listener.accept().await;
        let started = Instant::now();
        let error = connection.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= idle, "not before its idle time");
    }
}
