//! The dashboard as operators use it: over HTTPS with the node's certificate, behind a
//! login, read-only unless the node allows writes; and end to end in headless Chromium
//! (`tests/browser/dashboard.mjs`, Playwright): the live tree, a restart seen within
//! seconds, a restart from the page, a state namespace watched live. The test saves a
//! screenshot of the main view (`target/tmp/dashboard.png`).

use std::{path::Path, time::Duration};

use reef_tests::{
    BrowserScript, STARTUP, TestNode, binary, signal_pid, tls_connector, wait_for_container,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An HTTP/1.1 exchange with the dashboard over TLS, the node's CA verifying its
/// certificate: the status code, the response headers (lower-case names) and body.
async fn https(
    node: &TestNode,
    request_head: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let addr = node.dashboard.expect("started with --dashboard-listen");
    let mut tls = connect(addr, &node.ca).await;
    let request = format!(
        "{request_head}\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

/// A TLS connection to the dashboard at `addr`, its certificate checked with `ca`.
async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tls_connector(ca).connect(name, tcp).await.unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Logs in with `token`; the session cookie (`reef_session=…`).
async fn log_in(node: &TestNode, token: &str) -> String {
    let form = format!("token={token}");
    let (code, headers, _) = https(
        node,
        "POST /login HTTP/1.1\r\ncontent-type: application/x-www-form-urlencoded",
        &form,
    )
    .await;
    assert_eq!(code, 303);
    let cookie = header(&headers, "set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

fn token(node: &TestNode) -> String {
    std::fs::read_to_string(node.data_dir().join("dashboard.token"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_behind_a_login_and_read_only_by_default() {
    let node = TestNode::start_with(&["--dashboard-listen", "127.0.0.1:0"]);
    let token = token(&node);
    assert_eq!(token.len(), 64);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(node.data_dir().join("dashboard.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token is the owner's only");

    // The page itself is public (it shows the login); everything else is not.
    let (code, headers, page) = https(&node, "GET / HTTP/1.1", "").await;
    assert_eq!(code, 200);
    assert!(page.contains("id=\"login\""), "{page}");
    assert!(
        header(&headers, "content-security-policy")
            .is_some_and(|csp| csp.contains("default-src 'self'")),
        "{headers:?}"
    );
    for path in [
        "/api/whoami",
        "/api/live",
        "/api/dead-letters",
        "/api/state/demo",
    ] {
        let (code, _, body) = https(&node, &format!("GET {path} HTTP/1.1"), "").await;
        assert_eq!(code, 401, "{path}: {body}");
    }

    // A wrong token gets no cookie.
    let (code, headers, _) = https(
        &node,
        "POST /login HTTP/1.1\r\ncontent-type: application/x-www-form-urlencoded",
        "token=wrong",
    )
    .await;
    assert_eq!(code, 303);
    assert_eq!(header(&headers, "location"), Some("/?login=failed"));
    assert!(header(&headers, "set-cookie").is_none());

    let cookie = log_in(&node, &token).await;
    let (code, _, body) = https(
        &node,
        &format!("GET /api/whoami HTTP/1.1\r\ncookie: {cookie}"),
        "",
    )
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"writes":false}"#));

    // Read-only: actions are refused, and the container is untouched.
    let echo = node.create_demo("echo", &["echo"]).await;
    let supervisor = node.supervisor().await;
    let (code, _, body) = https(
        &node,
        &format!(
            "POST /api/containers/echo/restart HTTP/1.1\r\ncookie: {cookie}\r\nx-reef-dashboard: 1"
        ),
        "",
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    let now = wait_for_container(&supervisor, "echo", "attached", |c| c.attached).await;
    assert_eq!(now.pid, echo.pid);

    // Bad input gets a JSON error naming the problem.
    let (code, _, body) = https(
        &node,
        &format!("GET /api/state/Not%20A%20Namespace HTTP/1.1\r\ncookie: {cookie}"),
        "",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("namespace"), "{body}");
    let (code, _, body) = https(
        &node,
        &format!("GET /api/containers/nobody HTTP/1.1\r\ncookie: {cookie}"),
        "",
    )
    .await;
    assert_eq!(code, 404, "{body}");

    // Dead letters come with their reasons.
    let client = reef_sdk::Client::connect(&node.options()).await.unwrap();
    client.send("nobody", "lost").await.unwrap();
    client.flush(Duration::from_secs(5)).await.unwrap();
    let (code, _, body) = https(
        &node,
        &format!("GET /api/dead-letters HTTP/1.1\r\ncookie: {cookie}"),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(r#""destination":"nobody""#) && body.contains(r#""preview":"lost""#),
        "{body}"
    );

    // Logging out ends the session.
    let (code, _, _) = https(
        &node,
        &format!("POST /logout HTTP/1.1\r\ncookie: {cookie}"),
        "",
    )
    .await;
    assert_eq!(code, 303);
    let (code, _, _) = https(
        &node,
        &format!("GET /api/whoami HTTP/1.1\r\ncookie: {cookie}"),
        "",
    )
    .await;
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_restarts_acts_and_browses_state_in_a_browser() {
    let node = TestNode::start_with(&["--dashboard-listen", "127.0.0.1:0", "--dashboard-writes"]);
    let echo = node.create_demo("echo", &["echo"]).await;
    node.create_demo("counter", &["counter"]).await;
    let supervisor = node.supervisor().await;

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("https://localhost:{}/", node.dashboard.unwrap().port());
    let token = token(&node);
    let mut browser = BrowserScript::start(
        "dashboard.mjs",
        &[
            url.as_ref(),
            token.as_ref(),
            screenshot.as_ref(),
            node.ca.as_ref(),
        ],
    );
    let step = |browser: &BrowserScript, expected: &str| {
        let line = browser.next_line();
        assert!(
            line.starts_with(expected),
            "expected {expected:?}, the browser said {line:?}"
        );
    };

    step(&browser, "tree restarts=0");
    signal_pid(echo.pid, nix::sys::signal::Signal::SIGKILL);
    browser.tell("killed");
    step(&browser, "restart-seen");
    step(&browser, "restarted");
    // The restart asked from the page happened: a new process, counted.
    wait_for_container(&supervisor, "echo", "restarted twice", |c| {
        c.attached && c.supervised.as_ref().is_some_and(|s| s.restarts == 2)
    })
    .await;

    step(&browser, "state-open");
    let put = node.reef(&["state", "put", "dash", "greeting", "hello"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    browser.tell("put");
    step(&browser, "state-live");
    step(&browser, "done");
    let saved = std::fs::metadata(&screenshot).expect("the screenshot is saved");
    assert!(
        saved.len() > 10_000,
        "a real picture: {} bytes",
        saved.len()
    );
}

/// `GET /api/whoami` presenting the client certificate `cert` / `key` (PEM files).
async fn whoami_with_certificate(node: &TestNode, cert: &Path, key: &Path) -> String {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_file_iter(&node.ca).unwrap() {
        roots.add(root.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(node.dashboard.unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /api/whoami HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_client_certificate_is_a_login_of_its_own() {
    let node = TestNode::start_with(&["--dashboard-listen", "127.0.0.1:0"]);
    let tls_dir = node.data_dir().join("tls");
    let admin = whoami_with_certificate(
        &node,
        &tls_dir.join("admin.pem"),
        &tls_dir.join("admin-key.pem"),
    )
    .await;
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");
    assert!(admin.ends_with(r#"{"writes":false}"#), "{admin}");

    // A client certificate from the same CA that names no administrator is no login.
    let out = tempfile::tempdir().unwrap();
    let (ca_dir, out_dir) = (
        tls_dir.display().to_string(),
        out.path().display().to_string(),
    );
    let issued = node.reef(&[
        "ca", "client", "ops", "--ca-dir", &ca_dir, "--out", &out_dir,
    ]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let client = whoami_with_certificate(
        &node,
        &out.path().join("ops.pem"),
        &out.path().join("ops-key.pem"),
    )
    .await;
    assert!(client.starts_with("HTTP/1.1 401"), "{client}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_spans_the_nodes_joined_to_this_one() {
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let start = |name: &str, extra: Vec<String>| {
        let mut flags = vec!["--name".to_owned(), name.to_owned()];
        flags.extend(extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        TestNode::start_prepared(None, "127.0.0.1", &flags, |data| {
            reef_tls::issue_node_ca(cluster.path(), name, &data.join("tls")).unwrap();
        })
    };
    let root = start(
        "root",
        vec!["--dashboard-listen".to_owned(), "127.0.0.1:0".to_owned()],
    );
    let edge = start("edge", root.join_flags());
    edge.create_demo("echo-edge", &["echo"]).await;

    let cookie = log_in(&root, &token(&root)).await;
    let body = reef_tests::eventually("edge's container on root's dashboard", STARTUP, || {
        let cookie = cookie.clone();
        let root = &root;
        async move {
            let head = format!("GET /api/containers/echo-edge HTTP/1.1\r\ncookie: {cookie}");
            let (code, _, body) = https(root, &head, "").await;
            (code == 200).then_some(body)
        }
    })
    .await;
    assert!(body.contains(r#""reef.node":"edge""#), "{body}");
    assert!(body.contains(r#""parent":"nodes/edge""#), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_does_not_hold_up_the_nodes_drain() {
    // reefd on its own, to read what it logs while it stops.
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary("reefd"))
        .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
        .args(["--dashboard-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("REEF_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = reef_tests::stdout_lines(&mut child);
    let stderr = reef_tests::lines_of(child.stderr.take().unwrap());
    let mut reefd = reef_tests::ChildGuard(child);
    let ready = reef_tests::wait_for_line(&stdout, "reefd ready", STARTUP);
    let field = |key| reef_tests::field(&ready, key).unwrap();
    let (grpc, dashboard): (String, std::net::SocketAddr) =
        (field("grpc"), field("dashboard").parse().unwrap());
    let ca = data.path().join("tls/ca.pem");
    let token = std::fs::read_to_string(data.path().join("dashboard.token")).unwrap();

    // Log in and follow the live stream until a lifecycle event arrives: the
    // dashboard's own watch of the node is open then.
    let mut tls = connect(dashboard, &ca).await;
    let login = format!(
        "POST /login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\nconnection: close\r\ncontent-length: {}\r\n\r\ntoken={}",
        token.trim().len() + 6,
        token.trim()
    );
    tls.write_all(login.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    let cookie = response
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|cookie| cookie.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let mut live = connect(dashboard, &ca).await;
    let request = format!("GET /api/live HTTP/1.1\r\nhost: localhost\r\ncookie: {cookie}\r\n\r\n");
    live.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buffer = vec![0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + STARTUP;
    while !seen.contains("event: lifecycle") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lifecycle event: {seen}"
        );
        // A CLI call registers a client: an event for the dashboard to pass on (the
        // send itself is refused: nobody is there).
        reef_tests::reef_at(&grpc, &ca, &["send", "nobody", "hi"]);
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), live.read(&mut buffer)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }

    let status = reefd.terminate(STARTUP).expect("reefd stops on SIGTERM");
    assert!(status.success(), "{status}");
    let logged: Vec<String> = stderr.try_iter().collect();
    assert!(
        !logged.iter().any(|line| line.contains("drain timed out")),
        "the drain waited for the dashboard: {logged:?}"
    );
}
