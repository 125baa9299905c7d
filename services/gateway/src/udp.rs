//! UDP listeners: each datagram is a REQUEST to the listener's container, with header
//! `udp.peer`; a non-empty reply goes back to the sender as one datagram. Datagrams
//! from blocked addresses, or beyond the in-flight limit, are dropped (UDP's own answer
//! to overload), and counted in the log.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use reef_sdk::{Bytes, Client, RequestOptions};
use tokio::{net::UdpSocket, sync::Semaphore};

use crate::config::UdpListener;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Binds `config`'s address. Returns the bound address and the future that serves it.
pub async fn serve(
    config: UdpListener,
    client: Client,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()>)> {
    let socket = UdpSocket::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on udp {}: {e}", config.listen))?;
    let bound = socket.local_addr()?;
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let timeout = Duration::from_millis(config.timeout_ms);
    let serving = async move {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        loop {
            let (size, peer) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors from earlier sends surface here on some systems.
                    tracing::debug!(%error, %bound, "UDP receive failed");
                    continue;
                }
            };
            if config.block.iter().any(|net| net.contains(peer.ip())) {
                tracing::debug!(%peer, %bound, "datagram from a blocked address dropped");
                continue;
            }
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                tracing::warn!(%peer, %bound, "too many datagrams in flight: one dropped");
                continue;
            };
            let datagram = Bytes::copy_from_slice(&buffer[..size]);
            let (socket, client, to) = (socket.clone(), client.clone(), config.to.clone());
            tokio::spawn(async move {
                let options = RequestOptions::new(timeout).header("udp.peer", &peer.to_string());
                match client.request_with(&to, datagram, &options).await {
                    Ok(reply) if reply.is_empty() => {}
                    Ok(reply) if reply.len() > MAX_DATAGRAM => {
                        tracing::warn!(%to, size = reply.len(), "a reply too large for a datagram dropped");
                    }
                    Ok(reply) => {
                        if let Err(error) = socket.send_to(&reply, peer).await {
                            tracing::debug!(%peer, %error, "UDP reply not sent");
                        }
                    }
                    Err(error) => tracing::debug!(%to, %peer, %error, "UDP request failed"),
                }
                drop(permit);
            });
        }
    };
    Ok((bound, serving))
}
