//! Any language can join: a Python container built from stubs generated from proto/
//! talks to Rust containers through the node, and grpcurl inspects the node through
//! server reflection. Both tools come from the venv that `scripts/test` creates.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use reef_proto::PingContainerRequest;
use reef_sdk::{Bytes, Client, ContainerOptions, Context, Handler, HandlerError, Message};
use reef_tests::{
    ChildGuard, STARTUP, TestNode, signal_pid, stdout_lines, wait_for_line, workspace_root,
};

const WAIT: Duration = Duration::from_secs(10);

/// The venv's bin directory: `REEF_VENV`, else `.venv` in the workspace.
fn venv_bin(tool: &str) -> PathBuf {
    let venv =
        std::env::var_os("REEF_VENV").map_or_else(|| workspace_root().join(".venv"), PathBuf::from);
    let path = venv.join("bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test, which creates the Python venv with grpcio and grpcurl",
        path.display()
    );
    path
}

/// Generates Python stubs from proto/ into `out`, as any user of the contract would.
fn generate_python_stubs(out: &Path) {
    let root = workspace_root();
    let protos: Vec<PathBuf> = std::fs::read_dir(root.join("proto/reef/v1"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    let status = Command::new(venv_bin("python"))
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos)
        .status()
        .unwrap();
    assert!(status.success(), "grpc_tools.protoc failed");
}

/// PYTHONPATH for the example container: the generated stubs and the client module.
fn python_path(stubs: &Path) -> String {
    format!(
        "{}:{}",
        stubs.display(),
        workspace_root().join("clients/python").display()
    )
}

/// A Rust container that answers a request by asking the Python container.
struct Relay;

impl Handler for Relay {
    async fn on_request(&mut self, ctx: &Context, request: Message) -> Result<Bytes, HandlerError> {
        ctx.client()
            .request("py-upper", request.payload, WAIT)
            .await
            .map_err(|error| {
                HandlerError::new("RelayFailed", error.to_string()).with_code(error.code())
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_container_and_rust_containers_answer_each_other() {
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let stubs = tempfile::tempdir().unwrap();
    generate_python_stubs(stubs.path());
    let python_path = python_path(stubs.path());
    let mut python = Command::new(venv_bin("python"))
        .arg(workspace_root().join("clients/python/example_upper.py"))
        .args(["--ask", "echo:from python"])
        .env("PYTHONPATH", python_path)
        .env("REEF_NODE", node.addr.to_string())
        .env("REEF_CA", &node.ca)
        .env("REEF_ALIAS", "py-upper")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut python);
    let _python = ChildGuard(python);
    wait_for_line(&lines, "attached py-upper", STARTUP);

    // Python → Rust: the Python container's request to the Rust echo process.
    let line = wait_for_line(&lines, "reply from echo", WAIT);
    assert_eq!(line, "reply from echo: from python");

    // Rust → Python: a Rust container relays a request to the Python container.
    let relay = ContainerOptions::new("relay", node.options());
    let relay = tokio::spawn(reef_sdk::run(relay, Relay));
    node.wait_attached("relay").await;
    let client = Client::connect(&node.options()).await.unwrap();
    let reply = client
        .request("relay", "hello from rust", WAIT)
        .await
        .unwrap();
    assert_eq!(&reply[..], b"HELLO FROM RUST");

    // The Python container serves reef.v1.Container over TLS with the certificate the
    // node issued: the node can ping it there.
    let pong = node
        .supervisor()
        .await
        .ping_container(PingContainerRequest {
            alias: "py-upper".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pong.alias, "py-upper");
    relay.abort();
}

#[tokio::test]
async fn a_python_process_container_is_supervised_like_a_rust_one() {
    let node = TestNode::start();
    let stubs = tempfile::tempdir().unwrap();
    generate_python_stubs(stubs.path());
    let python_path = python_path(stubs.path());
    let definition = reef_proto::ContainerDefinition {
        alias: "py".to_owned(),
        kind: Some(reef_proto::container_definition::Kind::Process(
            reef_proto::ProcessSpec {
                command: venv_bin("python").display().to_string(),
                args: vec![
                    workspace_root()
                        .join("clients/python/example_upper.py")
                        .display()
                        .to_string(),
                ],
                env: [("PYTHONPATH".to_owned(), python_path)].into(),
                working_dir: String::new(),
            },
        )),
        ..Default::default()
    };
    let mut supervisor = node.supervisor().await;
    // Create returns once the Python process registered with its REEF_TOKEN, attached
    // and answered the node's ping on its own endpoint.
    let created = supervisor
        .create(reef_proto::CreateRequest {
            definition: Some(definition),
            flags: 0,
        })
        .await
        .expect("create the Python container")
        .into_inner()
        .container
        .unwrap();
    let client = Client::connect(&node.options()).await.unwrap();
    let reply = client.request("py", "before", WAIT).await.unwrap();
    assert_eq!(&reply[..], b"BEFORE");

    let mut events = supervisor
        .watch(reef_proto::WatchRequest { snapshot: false })
        .await
        .unwrap()
        .into_inner();
    signal_pid(created.pid, nix::sys::signal::Signal::SIGKILL);
    // Once the node knows the process is gone, what is sent is held for the next
    // Python process, then answered.
    while events.message().await.unwrap().unwrap().kind() != reef_proto::ContainerEventKind::Fail {}
    let reply = client.request("py", "after", WAIT).await.unwrap();
    assert_eq!(&reply[..], b"AFTER");
    let listed = supervisor
        .list(reef_proto::ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .containers;
    let py = listed.iter().find(|c| c.alias == "py").unwrap();
    assert_ne!(py.pid, created.pid);
    assert_eq!(py.supervised.as_ref().unwrap().restarts, 1);
}

#[test]
fn grpcurl_lists_and_calls_the_node_through_reflection() {
    let node = TestNode::start();
    let grpcurl = |args: &[&str]| {
        let out = Command::new(venv_bin("grpcurl"))
            .arg("-cacert")
            .arg(&node.ca)
            .arg(node.addr.to_string())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let services = grpcurl(&["list"]);
    for service in [
        "reef.v1.Supervisor",
        "reef.v1.Channel",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing from:\n{services}"
        );
    }
    let described = grpcurl(&["describe", "reef.v1.Envelope"]);
    assert!(described.contains("deadline_ms"), "{described}");
    let info = grpcurl(&["reef.v1.Supervisor/Info"]);
    assert!(info.contains("\"name\": \"reef-node\""), "{info}");
}
