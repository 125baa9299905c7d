//! The node's web dashboard, served by `reefd` on its own HTTPS port with the node's
//! certificate: the container tree across nodes with live rates, queue depths, restarts
//! and request latency; a container's events, log tail and policy; restart history;
//! dead letters; a state browser with live watch; and, when the node allows writes,
//! restart / stop / start / destroy behind a confirmation.
//!
//! It is a client of the node's own gRPC API (as its administrator), like any other
//! tool: one sampler and one event watch per dashboard, shared by every browser through
//! server-sent events, so browsers never poll the node. Its assets are compiled in.

mod api;
mod assets;
mod auth;
mod listener;
mod live;

use std::{path::Path, sync::Arc, time::Duration};

use axum::{body::Body, extract::ConnectInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use reef_sdk::ConnectOptions;
use reef_tls::tls::NodeTls;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

pub use self::auth::load_or_create_token;
use self::listener::{Counted, Peer, PeerListener};

/// How long a client has to send a request's headers, on a new connection or between
/// requests on a kept-alive one. A client that drips bytes to hold its connection slot
/// loses it then (the idle timeout alone would not catch it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// What a dashboard serves and who may use it.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// How the dashboard reaches its node's gRPC API (as its administrator).
    pub node: ConnectOptions,
    /// The login token: whoever knows it is logged in.
    pub token: String,
    /// Whether a login may restart, stop, start and destroy containers (off: read-only).
    pub writes: bool,
}

/// Serves the dashboard on `listener` (over TLS with `tls`; plaintext only for a node
/// that is itself `--insecure`). It runs until dropped, which closes every connection.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TlsAcceptor, Arc<NodeTls>)>,
    dashboard: Dashboard,
) {
    let mut listener = PeerListener::new(listener, tls);
    let (live, _running) = live::Live::start(dashboard.node.clone());
    let app = api::router(Arc::new(api::AppState::new(dashboard, live)));
    // Owned here, so that dropping `serve` ends the connections too.
    let mut connections = JoinSet::new();
    loop {
        let (io, peer) = listener.accept().await;
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(io, peer, app.clone(), HEADER_READ_TIMEOUT));
    }
}

/// Serves HTTP/1.1 on one connection, each request labelled with its peer.
async fn serve_connection(io: Counted, peer: Peer, app: axum::Router, header_timeout: Duration) {
    let addr = peer.addr;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer.clone()));
        app.clone().oneshot(request.map(Body::new))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%addr, %error, "dashboard connection ended with an error");
    }
}

/// The token file beside the node's data: `DATA_DIR/dashboard.token`.
pub fn token_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("dashboard.token")
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    /// One connection accepted from a fresh loopback listener and served by an app
    /// that answers with the peer address it was given.
    async fn served_connection(
        header_timeout: Duration,
    ) -> (TcpStream, tokio::task::JoinHandle<()>) {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut listener = PeerListener::with_limits(socket, None, 1, listener::IDLE_TIMEOUT);
        let client = TcpStream::connect(addr).await.unwrap();
        let (io, peer) = listener.accept().await;
        let app = axum::Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<Peer>| async move { peer.addr.to_string() }),
        );
        let served = tokio::spawn(serve_connection(io, peer, app, header_timeout));
        (client, served)
    }

    #[tokio::test]
    async fn each_request_knows_its_peer() {
        let (mut client, _served) = served_connection(HEADER_READ_TIMEOUT).await;
        let me = client.local_addr().unwrap().to_string();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with(&me), "{response}");
    }

    #[tokio::test]
    async fn a_client_dripping_its_headers_is_cut_off() {
        let (mut client, served) = served_connection(Duration::from_millis(300)).await;
        // A byte every 20 ms keeps the connection far from idle; the headers never end.
        let drip = async {
            client.write_all(b"GET / HTTP/1.1\r\nx-slow: ").await?;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                client.write_all(b"a").await?;
            }
            #[allow(unreachable_code)]
            std::io::Result::Ok(())
        };
        let cut_off = async {
            tokio::select! {
                _ = served => {}
                _ = drip => panic!("the client stopped before the server ended the connection"),
            }
        };
        tokio::time::timeout(Duration::from_secs(20), cut_off)
            .await
            .expect("the connection is closed once the header timeout passes");
    }
}
