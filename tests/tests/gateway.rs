//! The HTTP gateway as a user runs it: a real reefd, a real reef-gateway process, a real
//! HTTP client (reqwest), and containers answering behind the routes.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use reef_sdk::{Bytes, ContainerOptions, Context, Handler, HandlerError, Message};
use reef_tests::{ChildGuard, RawAttach, STARTUP, TestNode, binary, stdout_lines, wait_for_line};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

/// Starts reef-gateway with `config` (TOML) against `node`; returns the process and
/// the base URL of each listener.
fn start_gateway(node: &TestNode, config: &str) -> (ChildGuard, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(binary("reef-gateway"))
        .arg("--config")
        .arg(&file)
        .env("REEF_NODE", node.addr.to_string())
        .env("REEF_CA", &node.ca)
        .env("REEF_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("reef-gateway starts");
    let lines = stdout_lines(&mut child);
    let guard = ChildGuard(child);
    let ready = wait_for_line(&lines, "gateway ready", STARTUP);
    let urls = ready
        .split_whitespace()
        .filter_map(|field| field.strip_prefix("http="))
        .map(|addr| format!("http://{addr}"))
        .collect();
    (guard, urls, dir)
}

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
    let (_gateway, urls, _dir) = start_gateway(&node, &config);
    let (open, blocked) = (&urls[0], &urls[1]);
    let http = reqwest::Client::new();

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
    // A blocked client address.
    let refused = http.get(format!("{blocked}/echo")).send().await.unwrap();
    assert_eq!(status(refused), 403);
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
        ("", "no [[http]] listener"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, config).unwrap();
        let out = Command::new(binary("reef-gateway"))
            .arg("--config")
            .arg(&file)
            .env("REEF_NODE", node.addr.to_string())
            .env("REEF_CA", &node.ca)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config:?} was accepted");
        assert!(stderr.contains(expected), "{config:?}: {stderr}");
    }
}
