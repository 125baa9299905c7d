//! The HTTP gateway as a user runs it: a real reefd, a real reef-gateway process, a real
//! HTTP client (reqwest), and containers answering behind the routes.

use std::{process::Command, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use reef_sdk::{
    Bytes, ContainerOptions, Context, Handler, HandlerError, Message, RequestOptions, SendOptions,
};
use reef_tests::{
    RawAttach, STARTUP, TestNode, binary, eventually, http_client, start_gateway, start_gateway_in,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message as Frame;

/// Answers with what the gateway told it about the HTTP request.
struct Inspect;

impl Handler for Inspect {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        let header = |key: &str| request.headers.get(key).cloned().unwrap_or_default();
        // The response's status and headers.
        request.set_reply_header("http.status", "201");
        request.set_reply_header("http.header.x-reef-alias", "inspect");
        Ok(format!(
            "{} {} id={} q={} agent={} body={}",
            header("http.method"),
            header("http.path"),
            header("http.param.id"),
            header("http.query"),
            header("http.header.user-agent"),
            String::from_utf8_lossy(&request.payload),
        )
        .into())
    }
}

const TIMEOUT_MS: u64 = 300;

#[tokio::test]
async fn http_routes_become_requests_and_replies() {
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let inspect = tokio::spawn(reef_sdk::run(
        ContainerOptions::new("inspect", node.options()),
        Inspect,
    ));
    node.wait_attached("inspect").await;
    // Registered and attached, never answering.
    let _silent = RawAttach::open(&node, "silent").await;
    let config = format!(
        r#"
[[http]]
listen = "127.0.0.1:0"
timeout_ms = {TIMEOUT_MS}
max_body_bytes = 1000

[[http.route]]
method = "POST"
path = "/echo/{{name}}"
to = "echo"

[[http.route]]
method = "put"
path = "/things/{{id}}"
to = "inspect"

[[http.route]]
path = "/silent"
to = "silent"

[[http.route]]
path = "/nobody/{{*rest}}"
to = "nobody"

[[http]]
listen = "127.0.0.1:0"
block = ["127.0.0.0/8"]

[[http.route]]
path = "/echo"
to = "echo"
"#
    );
    let gateway = start_gateway(&node, &config);
    let (open, blocked) = (&gateway.http[0], &gateway.http[1]);
    let http = http_client();

    let reply = http
        .post(format!("{open}/echo/ada?x=1"))
        .body("hello through the gateway")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.unwrap(), "hello through the gateway");

    // The request's method, path, parameters, query and headers travel as envelope
    // headers.
    let seen = http
        .put(format!("{open}/things/42?full=1"))
        .header("user-agent", "reef-test")
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 201);
    assert_eq!(seen.headers()["x-reef-alias"], "inspect");
    let seen = seen.text().await.unwrap();
    assert_eq!(seen, "PUT /things/42 id=42 q=full=1 agent=reef-test body=b");

    let status = |response: reqwest::Response| response.status().as_u16();
    // The method is part of the route.
    let wrong_method = http.get(format!("{open}/echo/ada")).send().await.unwrap();
    assert_eq!(status(wrong_method), 404);
    let no_route = http.get(format!("{open}/nowhere")).send().await.unwrap();
    assert_eq!(status(no_route), 404);
    // Nobody has the alias: the node says NOT_FOUND, which is the gateway's problem.
    let nobody = http.get(format!("{open}/nobody/a/b")).send().await.unwrap();
    assert_eq!(status(nobody), 502);
    // No answer in time.
    let started = std::time::Instant::now();
    let silent = http.get(format!("{open}/silent")).send().await.unwrap();
    assert_eq!(status(silent), 504);
    assert!(started.elapsed() >= Duration::from_millis(TIMEOUT_MS));
    // Too large a body.
    let large = http
        .post(format!("{open}/echo/ada"))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(status(large), 413);
    // A client that sends half its body and stalls gets 408 after the timeout, not a
    // hung request.
    let mut slow = tokio::net::TcpStream::connect(open.trim_start_matches("http://"))
        .await
        .unwrap();
    slow.write_all(b"POST /echo/ada HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(STARTUP, slow.read_to_string(&mut answer))
        .await
        .expect("the gateway answers a stalled body")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A blocked client address: the connection is closed before anything is read.
    let refused = http.get(format!("{blocked}/echo")).send().await;
    assert!(refused.is_err(), "{refused:?}");
    inspect.abort();
}

#[test]
fn a_bad_configuration_is_a_clear_error() {
    let node = TestNode::start();
    let dir = tempfile::tempdir().unwrap();
    for (config, expected) in [
        (
            "[[http]]\nlisten = \"127.0.0.1:0\"\n[[http.route]]\npath = \"echo\"\nto = \"echo\"\n",
            "starts with '/'",
        ),
        (
            "[[http]]\nlisten = \"127.0.0.1:0\"\nblock = [\"10.0.0.0/40\"]\n",
            "prefix",
        ),
        ("", "no listener"),
        (
            "[[tcp]]\nlisten = \"127.0.0.1:0\"\nto = \"echo\"\nframing = \"words\"\n",
            "unknown variant `words`",
        ),
        (
            "[[http]]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"missing.pem\", key = \"missing.pem\" }\n",
            "missing.pem",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, config).unwrap();
        let out = Command::new(binary("reef-gateway"))
            .arg("--config")
            .arg(&file)
            .envs(node.container_env("gateway"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config:?} was accepted");
        assert!(stderr.contains(expected), "{config:?}: {stderr}");
    }
}

/// A room behind the gateway's WebSocket route: greets each connection, answers
/// `who` with the connection's address, broadcasts `all:TEXT` to the connection's room,
/// sends binary frames back, and tells the test every event it hears.
struct Hall {
    events: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

impl Handler for Hall {
    async fn on_message(&mut self, ctx: &Context, message: Message) {
        let header = |key: &str| message.headers.get(key).cloned().unwrap_or_default();
        let (event, room) = (header("ws.event"), header("ws.param.room"));
        let _ = self.events.send((event.clone(), message.origin.clone()));
        let client = ctx.client();
        let to = message.origin.as_str();
        let _ = match event.as_str() {
            "open" => client.send(to, format!("welcome to {room}")).await,
            "message" if message.content_type == "application/octet-stream" => {
                let binary = SendOptions {
                    content_type: "application/octet-stream".to_owned(),
                    ..SendOptions::default()
                };
                client.send_with(to, message.payload, &binary).await
            }
            "message" => match std::str::from_utf8(&message.payload).unwrap_or("") {
                "who" => client.send(to, to.to_owned()).await,
                text => match text.strip_prefix("all:") {
                    Some(text) => {
                        let room = format!("gateway/room/{room}");
                        client.send(&room, text.to_owned()).await
                    }
                    None => client.send(to, format!("unknown: {text}")).await,
                },
            },
            _ => Ok(()),
        };
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` with `origin`.
async fn websocket(
    url: &str,
    origin: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next data frame on `socket` (text or binary).
async fn next_frame(socket: &mut Socket) -> Frame {
    loop {
        let frame = tokio::time::timeout(STARTUP, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a well-formed frame");
        if !matches!(frame, Frame::Ping(_) | Frame::Pong(_)) {
            return frame;
        }
    }
}

async fn next_text(socket: &mut Socket) -> String {
    match next_frame(socket).await {
        Frame::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Waits for the hall to hear `event` from a connection; returns its address.
async fn heard(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    event: &str,
) -> String {
    loop {
        let (heard, from) = tokio::time::timeout(STARTUP, events.recv())
            .await
            .expect("the hall hears in time")
            .expect("the hall runs");
        if heard == event {
            return from;
        }
    }
}

/// WebSocket routes with a real client library: every connection is an address that
/// any container can push to, rooms broadcast, and bad clients (oversized or malformed
/// frames, another origin, one connection too many) are refused without harm to
/// the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_addresses_and_rooms_broadcast() {
    let node = TestNode::start();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let hall = tokio::spawn(reef_sdk::run(
        ContainerOptions::new("hall", node.options()),
        Hall { events: events_tx },
    ));
    node.wait_attached("hall").await;
    let config = r#"
[[http]]
listen = "127.0.0.1:0"
origins = ["http://chat.example"]

[[http.websocket]]
path = "/chat/{room}"
to = "hall"
join = ["{room}"]
max_frame_bytes = 1024

[[http]]
listen = "127.0.0.1:0"
max_connections = 2

[[http.websocket]]
path = "/chat/{room}"
to = "hall"
"#;
    let gateway = start_gateway(&node, config);
    let base = gateway.http[0].replace("http://", "ws://");
    let lobby = format!("{base}/chat/lobby");
    let origin = "http://chat.example";

    let mut ada = websocket(&lobby, origin).await.expect("ada connects");
    assert_eq!(next_text(&mut ada).await, "welcome to lobby");
    let ada_alias = heard(&mut events, "open").await;
    assert!(ada_alias.starts_with("gateway/ws/"), "{ada_alias}");
    let mut bob = websocket(&lobby, origin).await.expect("bob connects");
    assert_eq!(next_text(&mut bob).await, "welcome to lobby");
    let bob_alias = heard(&mut events, "open").await;

    // A frame is a message from the connection's address; the room hears the broadcast.
    ada.send(Frame::text("who")).await.unwrap();
    assert_eq!(next_text(&mut ada).await, ada_alias);
    ada.send(Frame::text("all:hello, room")).await.unwrap();
    assert_eq!(next_text(&mut ada).await, "hello, room");
    assert_eq!(next_text(&mut bob).await, "hello, room");
    // Binary frames stay binary both ways.
    ada.send(Frame::binary(vec![0xff, 0, 7])).await.unwrap();
    assert_eq!(next_frame(&mut ada).await, Frame::binary(vec![0xff, 0, 7]));

    // Any container pushes to a connection or a room; a request to a room says how
    // many connections it reached.
    let client = reef_sdk::Client::connect(&node.options()).await.unwrap();
    client.send(&bob_alias, "just for bob").await.unwrap();
    assert_eq!(next_text(&mut bob).await, "just for bob");
    let reached = client
        .request("gateway/room/lobby", "to everyone", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reached[..], b"2");
    assert_eq!(next_text(&mut ada).await, "to everyone");
    assert_eq!(next_text(&mut bob).await, "to everyone");
    // A container moves bob into another room (a request: answered once he is in it);
    // only he hears it.
    let join = RequestOptions::new(Duration::from_secs(5)).header("gateway.join", "vip");
    client.request_with(&bob_alias, "", &join).await.unwrap();
    let reached = client
        .request("gateway/room/vip", "vip only", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&reached[..], b"1");
    assert_eq!(next_text(&mut bob).await, "vip only");
    ada.send(Frame::text("all:after")).await.unwrap();
    assert_eq!(next_text(&mut ada).await, "after");
    assert_eq!(next_text(&mut bob).await, "after");

    // Another origin is refused at the upgrade.
    let refused = websocket(&lobby, "http://evil.example").await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("another origin was not refused: {other:?}"),
    }
    // On a listener that takes 2 connections at once, a third is closed at once.
    let limited = gateway.http[1].replace("http://", "ws://") + "/chat/limited";
    let first = websocket(&limited, origin).await.expect("a first connects");
    let second = websocket(&limited, origin)
        .await
        .expect("a second connects");
    assert!(
        websocket(&limited, origin).await.is_err(),
        "a third connected"
    );
    drop((first, second));

    // A frame over the limit closes that connection with 1009; the others go on.
    ada.send(Frame::text("x".repeat(2000))).await.unwrap();
    match next_frame(&mut ada).await {
        Frame::Close(Some(close)) => assert_eq!(u16::from(close.code), 1009),
        other => panic!("expected a close for the oversized frame, got {other:?}"),
    }
    while heard(&mut events, "close").await != ada_alias {}
    // The closed connection's address is gone: a push to it is undelivered.
    eventually(
        "a push to the closed connection to be undelivered",
        STARTUP,
        || async {
            client.send(&ada_alias, "too late").await.unwrap();
            client.flush(Duration::from_secs(5)).await.unwrap();
            (client.undelivered() > 0).then_some(())
        },
    )
    .await;

    // A malformed frame (reserved opcode 0xB) gets a protocol-error close, 1002.
    let addr = base.trim_start_matches("ws://");
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(
        format!(
            "GET /chat/lobby HTTP/1.1\r\nhost: {addr}\r\norigin: {origin}\r\nupgrade: websocket\r\n\
             connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             sec-websocket-version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    raw.write_all(&[0x8b, 0x80, 1, 2, 3, 4]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STARTUP, raw.read_to_end(&mut answer))
        .await
        .expect("the gateway closes a malformed connection")
        .unwrap();
    let answer_text = String::from_utf8_lossy(&answer);
    assert!(answer_text.starts_with("HTTP/1.1 101"), "{answer_text}");
    let frames = &answer[answer_text.find("\r\n\r\n").unwrap() + 4..];
    let close = frames
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..4] == [0x03, 0xea])
        .or_else(|| frames.windows(2).position(|w| w == [0x03, 0xea]));
    assert!(close.is_some(), "no 1002 close in {frames:?}");

    // A client that does not read is closed once its queue (1024 frames) overflows,
    // behind what the kernel buffers: 20 MB pushed at it cannot all be held.
    let mut sluggard = websocket(&format!("{base}/chat/quiet"), origin)
        .await
        .unwrap();
    assert_eq!(next_text(&mut sluggard).await, "welcome to quiet");
    sluggard.send(Frame::text("who")).await.unwrap();
    let sluggard_alias = next_text(&mut sluggard).await;
    let frame = "z".repeat(1000);
    for _ in 0..20_000 {
        client.send(&sluggard_alias, frame.clone()).await.unwrap();
    }
    client.flush(Duration::from_secs(10)).await.unwrap();
    let mut read = 0;
    let ended = loop {
        match tokio::time::timeout(STARTUP, sluggard.next()).await {
            Ok(Some(Ok(Frame::Text(_)))) => read += 1,
            Ok(Some(Ok(Frame::Close(close)))) => break format!("{close:?}"),
            Ok(other) => break format!("{other:?}"),
            Err(_) => panic!("the slow client was neither served nor closed after {read} frames"),
        }
    };
    assert!(
        read < 20_000,
        "all {read} frames were kept for a client that did not read"
    );
    assert!(ended.contains("too slowly"), "{ended} after {read} frames");

    // Bob never noticed.
    bob.send(Frame::text("who")).await.unwrap();
    assert_eq!(next_text(&mut bob).await, bob_alias);
    hall.abort();
}

/// Answers with the request's origin and payload: a TCP connection sees its address.
struct Who;

impl Handler for Who {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        let text = String::from_utf8_lossy(&request.payload);
        Ok(format!("{} {text}", request.origin).into())
    }
}

/// TCP listeners with both framings and a UDP listener, through real sockets: frames
/// are requests whose replies come back in order, a connection is an address, an
/// oversized frame or a blocked address closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_listeners_turn_frames_into_requests() {
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let who = tokio::spawn(reef_sdk::run(
        ContainerOptions::new("who", node.options()),
        Who,
    ));
    node.wait_attached("who").await;
    let config = r#"
[[tcp]]
listen = "127.0.0.1:0"
to = "who"
max_frame_bytes = 64

[[tcp]]
listen = "127.0.0.1:0"
to = "echo"
framing = "length"
max_frame_bytes = 1024

[[tcp]]
listen = "127.0.0.1:0"
to = "echo"
block = ["127.0.0.0/8"]

[[tcp]]
listen = "127.0.0.1:0"
to = "echo"
idle_timeout_ms = 200

[[udp]]
listen = "127.0.0.1:0"
to = "echo"
"#;
    let gateway = start_gateway(&node, config);
    let [lines_addr, length_addr, blocked_addr, idle_addr] = gateway.tcp[..] else {
        panic!("four tcp listeners: {:?}", gateway.tcp)
    };

    // Lines: 50 pipelined requests, answered in order, each from the connection's address.
    let stream = tokio::net::TcpStream::connect(lines_addr).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(reader);
    let mut batch = String::from("first\r\n");
    for n in 0..49 {
        batch.push_str(&format!("line {n}\n"));
    }
    writer.write_all(batch.as_bytes()).await.unwrap();
    let mut line = String::new();
    let mut read_line = async |line: &mut String| {
        line.clear();
        tokio::time::timeout(STARTUP, reader.read_line(line))
            .await
            .expect("a line in time")
            .unwrap()
    };
    read_line(&mut line).await;
    let (alias, first) = line.trim_end().split_once(' ').unwrap();
    let alias = alias.to_owned();
    assert!(alias.starts_with("gateway/tcp/"), "{alias}");
    assert_eq!(first, "first");
    for n in 0..49 {
        read_line(&mut line).await;
        assert_eq!(line, format!("{alias} line {n}\n"));
    }
    // A container pushes to the connection.
    let client = reef_sdk::Client::connect(&node.options()).await.unwrap();
    client.send(&alias, "pushed").await.unwrap();
    read_line(&mut line).await;
    assert_eq!(line, "pushed\n");
    // A line over 64 bytes closes the connection.
    writer.write_all(&[b'x'; 100]).await.unwrap();
    assert_eq!(read_line(&mut line).await, 0, "the connection was closed");

    // Length-prefixed frames.
    let mut framed = tokio::net::TcpStream::connect(length_addr).await.unwrap();
    framed.write_all(&[0, 0, 0, 5]).await.unwrap();
    framed.write_all(b"hello").await.unwrap();
    let length = framed.read_u32().await.unwrap();
    let mut reply = vec![0; length as usize];
    framed.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, b"hello");
    // A length over the limit closes the connection.
    framed.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STARTUP, framed.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // A blocked address is closed before anything is read.
    let mut blocked = tokio::net::TcpStream::connect(blocked_addr).await.unwrap();
    let mut nothing = Vec::new();
    let read = tokio::time::timeout(STARTUP, blocked.read_to_end(&mut nothing))
        .await
        .expect("closed in time");
    assert!(read.is_err() || nothing.is_empty());

    // A client that answers once and then says nothing is closed after the idle timeout.
    let mut idle = tokio::net::TcpStream::connect(idle_addr).await.unwrap();
    idle.write_all(b"still here\n").await.unwrap();
    let mut answered = Vec::new();
    tokio::time::timeout(STARTUP, idle.read_to_end(&mut answered))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert_eq!(answered, b"still here\n");

    // UDP: a datagram is a request, the reply a datagram back.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"ping over udp", gateway.udp[0]).await.unwrap();
    let mut buffer = [0u8; 1024];
    let (size, from) = tokio::time::timeout(STARTUP, udp.recv_from(&mut buffer))
        .await
        .expect("a reply datagram in time")
        .unwrap();
    assert_eq!(from, gateway.udp[0]);
    assert_eq!(&buffer[..size], b"ping over udp");
    who.abort();
}

/// An HTTP listener over TLS (the node's own certificate, for 127.0.0.1): HTTPS and
/// WSS with a client that trusts the node's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_serve_tls() {
    use rustls::pki_types::ServerName;
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let (events_tx, _events) = tokio::sync::mpsc::unbounded_channel();
    let hall = tokio::spawn(reef_sdk::run(
        ContainerOptions::new("hall", node.options()),
        Hall { events: events_tx },
    ));
    node.wait_attached("hall").await;
    let tls_dir = node.ca.parent().unwrap().to_owned();
    let config = r#"
[[http]]
listen = "127.0.0.1:0"
tls = { cert = "node.pem", key = "node-key.pem" }

[[http.route]]
path = "/echo"
to = "echo"

[[http.websocket]]
path = "/chat/{room}"
to = "hall"
join = ["{room}"]
"#;
    let gateway = start_gateway_in(&node, config, &[], |dir| {
        for file in ["node.pem", "node-key.pem"] {
            std::fs::copy(tls_dir.join(file), dir.join(file)).unwrap();
        }
    });
    let addr = gateway.http[0].trim_start_matches("http://").to_owned();
    let connector = reef_tests::tls_connector(&node.ca);
    let name = ServerName::try_from("localhost").unwrap();

    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("handshake");
    tls.write_all(
        b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 12\r\nconnection: close\r\n\r\nsecret hello",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(STARTUP, tls.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("secret hello"), "{answer}");

    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (mut socket, _) = tokio_tungstenite::client_async("wss://localhost/chat/secure", tls)
        .await
        .expect("a WebSocket over TLS");
    let frame = tokio::time::timeout(STARTUP, socket.next())
        .await
        .expect("a frame in time")
        .unwrap()
        .unwrap();
    assert_eq!(frame, Frame::text("welcome to secure"));

    // Plain HTTP to the TLS port gets no answer.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut nothing = Vec::new();
    let _ = tokio::time::timeout(STARTUP, plain.read_to_end(&mut nothing)).await;
    assert!(!String::from_utf8_lossy(&nothing).contains("200 OK"));
    hall.abort();
}
