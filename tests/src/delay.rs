//! A TCP proxy that delays every byte by a fixed time each way: a slow network between
//! two nodes on loopback (this kernel has no netem to do it).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::mpsc,
    time::Instant,
};

/// Chunks in flight per direction: beyond this the reader waits, as a full link would.
const IN_FLIGHT: usize = 1024;

/// Listens on loopback and forwards every connection to `upstream`, each chunk
/// delivered `delay` after it was read. Stops with the runtime that started it.
pub struct DelayProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl DelayProxy {
    /// Starts the proxy on an ephemeral loopback port.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(client_read, server_write, delay),
                        pipe(server_read, client_write, delay),
                    );
                });
            }
        });
        Self { addr }
    }
}

/// Copies `from` to `to`, each chunk held until `delay` after it arrived, in order.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut buffer = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0
                || chunks
                    .send((Instant::now() + delay, buffer[..n].to_vec()))
                    .await
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
