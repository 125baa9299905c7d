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

use std::{future::Future, io, path::Path, sync::Arc};

use reef_sdk::ConnectOptions;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use self::auth::load_or_create_token;
use self::listener::{Peer, PeerListener};

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
/// that is itself `--insecure`) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    dashboard: Dashboard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (live, _running) = live::Live::start(dashboard.node.clone());
    let state = Arc::new(api::AppState::new(dashboard, live));
    let app = api::router(state).into_make_service_with_connect_info::<Peer>();
    axum::serve(PeerListener::new(listener, tls), app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The token file beside the node's data: `DATA_DIR/dashboard.token`.
pub fn token_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("dashboard.token")
}
