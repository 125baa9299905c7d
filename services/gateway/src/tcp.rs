//! TCP listeners: a stream cut into frames (lines, or length-prefixed). Each connection
//! is an address (`GATEWAY/tcp/ID`, see `connections`); each frame is a REQUEST from it
//! to the listener's container, with header `tcp.peer`, and a non-empty reply is
//! written back as a frame, in the order of the requests. What a container sends to the
//! connection's address is written too. A frame over the limit, a failed request, a
//! reader too slow for its replies or a client silent for the idle timeout closes the
//! connection: the byte stream has no channel for errors of its own.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use reef_sdk::{Bytes, Client, RequestOptions};
use tokio::{
    io::{
        AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite,
        AsyncWriteExt as _, BufReader, BufWriter,
    },
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    config::{Framing, TcpListener},
    connections::{Hub, Outbox, Outgoing, outbox},
    listen::{Admission, Connection, listen},
};

/// Requests one connection may have in flight before its frames wait to be read.
const MAX_PIPELINED: usize = 64;

struct Route {
    to: String,
    framing: Framing,
    max_frame_bytes: usize,
    timeout: Duration,
    idle_timeout: Duration,
}

/// Binds `config`'s address. Returns the bound address and the future that serves it.
pub async fn serve(
    config: TcpListener,
    hub: Arc<Hub>,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()>)> {
    let route = Arc::new(Route {
        to: config.to,
        framing: config.framing,
        max_frame_bytes: config.max_frame_bytes,
        timeout: Duration::from_millis(config.timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    });
    let admission = Admission {
        block: config.block,
        max_connections: config.max_connections,
        tls: config.tls,
        alpn: Vec::new(),
    };
    listen(config.listen, admission, move |connection| {
        serve_connection(connection, hub.clone(), route.clone())
    })
    .await
}

async fn serve_connection(connection: Connection, hub: Arc<Hub>, route: Arc<Route>) {
    let peer = connection.peer;
    let (outbox, mut outlet) = outbox();
    let client = match hub.open("tcp", outbox.clone()).await {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%peer, %error, "a TCP connection could not get its address");
            return;
        }
    };
    let (reader, writer) = tokio::io::split(connection.io);
    let reading = read_requests(reader, client.clone(), route.clone(), peer, outbox);
    let writing = async {
        // Frames queued together go out in one write.
        let mut writer = BufWriter::new(writer);
        while let Some(outgoing) = outlet.next().await {
            let mut next = Some(outgoing);
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Frame { payload, .. } => {
                        if let Err(error) = write_frame(&mut writer, route.framing, &payload).await
                        {
                            tracing::debug!(%peer, %error, "writing to a TCP connection failed");
                            return;
                        }
                    }
                    Outgoing::Close(reason) => {
                        tracing::debug!(%peer, %reason, "TCP connection closed");
                        let _ = writer.shutdown().await;
                        return;
                    }
                }
                next = outlet.try_next();
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::pin!(reading, writing);
    tokio::select! {
        _ = &mut writing => {}
        // The client is done sending: its replies still go out, then the connection closes.
        _ = &mut reading => writing.await,
    }
    hub.close(&client).await;
}

/// Reads frames and sends each as a request; a task writes the replies to `outbox` in
/// order. Ends when the client stops sending, after the last reply was queued.
async fn read_requests(
    reader: impl AsyncRead + Unpin,
    client: Client,
    route: Arc<Route>,
    peer: SocketAddr,
    outbox: Outbox,
) {
    let (pending, in_order) = mpsc::channel(MAX_PIPELINED);
    let replies = tokio::spawn(write_replies(in_order, outbox.clone()));
    let mut reader = BufReader::new(reader);
    let options = RequestOptions::new(route.timeout).header("tcp.peer", &peer.to_string());
    loop {
        let next = read_frame(&mut reader, route.framing, route.max_frame_bytes);
        let frame = match tokio::time::timeout(route.idle_timeout, next).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => break,
            Ok(Err(reason)) => {
                outbox.push(Outgoing::Close(reason));
                break;
            }
            Err(_) => {
                let idle = format!("nothing arrived for {:?}", route.idle_timeout);
                outbox.push(Outgoing::Close(idle));
                break;
            }
        };
        let (client, route, options) = (client.clone(), route.clone(), options.clone());
        let request = tokio::spawn(async move {
            client
                .request_with(&route.to, frame, &options)
                .await
                .map_err(|error| format!("{}: {error}", route.to))
        });
        if pending.send(request).await.is_err() {
            break;
        }
    }
    drop(pending);
    let _ = replies.await;
    outbox.push(Outgoing::Close("the client finished sending".to_owned()));
}

/// Queues each reply, in the order the requests were made.
async fn write_replies(
    mut in_order: mpsc::Receiver<JoinHandle<Result<Bytes, String>>>,
    outbox: Outbox,
) {
    while let Some(request) = in_order.recv().await {
        let reply = request
            .await
            .unwrap_or_else(|_| Err("the request's task failed".to_owned()));
        let queued = match reply {
            Ok(payload) if payload.is_empty() => true,
            Ok(payload) => outbox.push(Outgoing::Frame {
                payload,
                text: false,
            }),
            Err(reason) => {
                tracing::debug!(%reason, "a TCP request failed: closing the connection");
                outbox.push(Outgoing::Close(reason));
                false
            }
        };
        if !queued {
            return;
        }
    }
}

/// The next frame; `None` at a clean end of stream; an error for a frame over
/// `max` bytes, or a stream that ends inside a frame.
async fn read_frame(
    reader: &mut (impl AsyncBufRead + Unpin),
    framing: Framing,
    max: usize,
) -> Result<Option<Bytes>, String> {
    match framing {
        Framing::Lines => {
            let mut line = Vec::new();
            let read = (&mut *reader)
                .take(max as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Ok(None);
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            } else if line.len() > max {
                return Err(format!("a line is longer than {max} bytes"));
            }
            Ok(Some(line.into()))
        }
        Framing::Length => {
            let length = match reader.read_u32().await {
                Ok(length) => length as usize,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            if length > max {
                return Err(format!(
                    "a frame of {length} bytes is over the {max}-byte limit"
                ));
            }
            let mut frame = vec![0; length];
            reader
                .read_exact(&mut frame)
                .await
                .map_err(|_| "the stream ended inside a frame".to_owned())?;
            Ok(Some(frame.into()))
        }
    }
}

async fn write_frame(
    writer: &mut (impl AsyncWrite + Unpin),
    framing: Framing,
    payload: &[u8],
) -> std::io::Result<()> {
    match framing {
        Framing::Lines => {
            writer.write_all(payload).await?;
            if payload.last() != Some(&b'\n') {
                writer.write_all(b"\n").await?;
            }
        }
        Framing::Length => {
            writer
                .write_all(&(payload.len() as u32).to_be_bytes())
                .await?;
            writer.write_all(payload).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_cut_and_bounded() {
        let mut lines = BufReader::new(&b"one\r\ntwo\nunterminated"[..]);
        let mut next = async || read_frame(&mut lines, Framing::Lines, 16).await;
        assert_eq!(next().await.unwrap().unwrap(), "one");
        assert_eq!(next().await.unwrap().unwrap(), "two");
        assert_eq!(next().await.unwrap().unwrap(), "unterminated");
        assert_eq!(next().await.unwrap(), None);

        let mut long = BufReader::new(&b"0123456789abcdefXYZ\n"[..]);
        assert!(read_frame(&mut long, Framing::Lines, 16).await.is_err());

        let mut framed = Vec::new();
        write_frame(&mut framed, Framing::Length, b"hello")
            .await
            .unwrap();
        framed.extend_from_slice(&[0, 0, 0, 9, b'x']);
        let mut length = BufReader::new(&framed[..]);
        assert_eq!(
            read_frame(&mut length, Framing::Length, 16)
                .await
                .unwrap()
                .unwrap(),
            "hello"
        );
        assert!(read_frame(&mut length, Framing::Length, 16).await.is_err());
        let mut over = BufReader::new(&[0u8, 0, 1, 0][..]);
        assert!(read_frame(&mut over, Framing::Length, 16).await.is_err());
    }
}
