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
    ChildGuard, RawAttach, STARTUP, TestNode, signal_pid, stdout_lines, venv_bin, wait_for_line,
    workspace_root,
};

const WAIT: Duration = Duration::from_secs(10);

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
        .arg(workspace_root().join("clients/python/examples/upper.py"))
        .args(["--ask", "echo:from python"])
        .env("PYTHONPATH", python_path)
        .envs(node.container_env("py-upper"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut python);
    let python_pid = python.id();
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

    // reef_sdk's reply headers and sends, both ways of the Python handler API.
    let reply = client
        .call("py-upper", "headers", &reef_sdk::RequestOptions::new(WAIT))
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"HEADERS");
    assert_eq!(reply.headers["answered-by"], python_pid.to_string());
    client.send("py-upper", "a note").await.unwrap();
    let note = wait_for_line(&lines, "note from", WAIT);
    assert_eq!(note, format!("note from {}: a note", client.alias()));

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
                        .join("clients/python/examples/upper.py")
                        .display()
                        .to_string(),
                ],
                env: [("PYTHONPATH".to_owned(), python_path)].into(),
                working_dir: String::new(),
                inherit_env: false,
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
            ..Default::default()
        })
        .await
        .expect("create the Python container")
        .into_inner()
        .container
        .unwrap();
    let client = Client::connect(&node.options()).await.unwrap();
    let reply = client.request("py", "before", WAIT).await.unwrap();
    assert_eq!(&reply[..], b"BEFORE");
    // Its endpoint answers Status and Command, asked through the node.
    let status = supervisor
        .get_container_status(reef_proto::GetContainerStatusRequest {
            alias: "py".to_owned(),
        })
        .await
        .expect("status of the Python container")
        .into_inner();
    assert_eq!((status.name.as_str(), status.pid), ("upper", created.pid));
    assert_eq!(status.requests_handled, 1);
    let shouted = node.reef(&["command", "py", "shout", "hello", "there"]);
    assert_eq!(
        String::from_utf8_lossy(&shouted.stdout),
        "HELLO THERE\n",
        "{}",
        String::from_utf8_lossy(&shouted.stderr)
    );
    let unknown = supervisor
        .command_container(reef_proto::CommandContainerRequest {
            alias: "py".to_owned(),
            command: "whisper".to_owned(),
            args: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");
    // Asked directly, not through the node, it refuses even an administrator (and a
    // caller without a certificate does not get through the handshake).
    let tls = node.data_dir().join("tls");
    for identity in [
        node.certificate(&reef_tls::client_identity("ops")),
        (tls.join("admin.pem"), tls.join("admin-key.pem")),
    ] {
        let mut endpoint = node.endpoint_as("py", Some(identity)).await;
        let direct = endpoint
            .command(reef_proto::CommandRequest {
                command: "shout".to_owned(),
                args: vec!["x".to_owned()],
            })
            .await
            .unwrap_err();
        assert_eq!(direct.code(), tonic::Code::PermissionDenied, "{direct:?}");
        assert!(direct.message().contains("reef://node/"), "{direct:?}");
        let status = endpoint
            .status(reef_proto::StatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    // A retry of a request it already answered gets the same answer, without running
    // the handler again (the handler counts what it answers, in state).
    let mut caller = RawAttach::open(&node, "retrier").await;
    let retryable = reef_proto::Envelope {
        kind: reef_proto::EnvelopeKind::Request as i32,
        id: 77,
        destination: "py".to_owned(),
        payload: b"once".to_vec().into(),
        deadline_ms: 5_000,
        headers: [(reef_proto::ATTEMPTS_LEFT_HEADER.to_owned(), "1".to_owned())].into(),
        ..Default::default()
    };
    for attempt in ["first", "retry"] {
        caller.send(vec![retryable.clone()]).await;
        let answer = caller.next(WAIT).await;
        assert_eq!(
            (answer.correlation_id, &answer.payload[..]),
            (77, &b"ONCE"[..]),
            "{attempt}: {answer:?}"
        );
    }
    let count = client.request("py", "count", WAIT).await.unwrap();
    assert_eq!(&count[..], b"2", "`before` and `once`, each counted once");

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
    // grpcurl [flags] ADDRESS [list | describe X | METHOD]
    let run = |flags: &[&str], args: &[&str]| {
        Command::new(venv_bin("grpcurl"))
            .arg("-cacert")
            .arg(&node.ca)
            .args(flags)
            .arg(node.addr.to_string())
            .args(args)
            .output()
            .unwrap()
    };
    let grpcurl_with = |flags: &[&str], args: &[&str]| {
        let out = run(flags, args);
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let grpcurl = |args: &[&str]| grpcurl_with(&[], args);
    let services = grpcurl(&["list"]);
    for service in [
        "reef.v1.Supervisor",
        "reef.v1.Channel",
        "reef.v1.State",
        "reef.v1.Files",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing from:\n{services}"
        );
    }
    // Listing, describing and Info need no certificate; nothing else answers without one.
    // Only what the node answers: each container serves reef.v1.Container itself.
    assert!(
        !services.lines().any(|l| l == "reef.v1.Container"),
        "{services}"
    );
    let container = grpcurl(&["describe", "reef.v1.ContainerStatus"]);
    assert!(container.contains("uptime_ms"), "{container}");
    let described = grpcurl(&["describe", "reef.v1.Envelope"]);
    assert!(described.contains("deadline_ms"), "{described}");
    let info = grpcurl(&["reef.v1.Supervisor/Info"]);
    assert!(info.contains("\"name\": \"reef-node\""), "{info}");
    let write = [
        "-d",
        r#"{"namespace": "config", "key": "mode", "value": "ZmFzdA=="}"#,
    ];
    let anonymous = run(&write, &["reef.v1.State/Put"]);
    let refusal = String::from_utf8_lossy(&anonymous.stderr);
    assert!(!anonymous.status.success(), "an anonymous Put was answered");
    assert!(
        refusal.contains("Unauthenticated") && refusal.contains("reef ca client"),
        "{refusal}"
    );
    let [cert, key] = admin_certificate(&node).map(|path| path.display().to_string());
    let put = grpcurl_with(
        &[&write[..], &["-cert", &cert, "-key", &key]].concat(),
        &["reef.v1.State/Put"],
    );
    assert!(put.contains("\"revision\": \"1\""), "{put}");
}

/// State from Python's generated stubs: compare-and-set, a transaction, and a watch that
/// replays from revision 1 while a Rust client writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_uses_state_through_generated_stubs() {
    let node = TestNode::start();
    let stubs = tempfile::tempdir().unwrap();
    generate_python_stubs(stubs.path());
    let script = r#"
import sys, grpc
from reef.v1 import state_pb2 as pb, state_pb2_grpc
channel = grpc.secure_channel(sys.argv[1], grpc.ssl_channel_credentials(
    open(sys.argv[2], "rb").read(), open(sys.argv[4], "rb").read(), open(sys.argv[3], "rb").read()))
state = state_pb2_grpc.StateStub(channel)
first = state.Put(pb.PutRequest(namespace="py", key="leader", value=b"a", expected_revision=0))
try:
    state.Put(pb.PutRequest(namespace="py", key="leader", value=b"b", expected_revision=0))
    print("cas-not-refused")
except grpc.RpcError as error:
    print("cas", error.code().name)
txn = state.Txn(pb.TxnRequest(namespace="py",
    compares=[pb.Compare(key="leader", mod_revision=first.revision)],
    ops=[pb.TxnOp(put=pb.TxnPut(key="term", value=b"2")), pb.TxnOp(delete=pb.TxnDelete(key="leader"))]))
print("txn", txn.succeeded, txn.revision)
print("ready", flush=True)
for response in state.Watch(pb.WatchKeysRequest(namespace="py", start_revision=1)):
    for event in response.events:
        print("event", event.kv.mod_revision, pb.WatchEvent.Kind.Name(event.kind), event.kv.key, event.kv.value.decode(), flush=True)
"#;
    let mut python = ChildGuard(
        Command::new(venv_bin("python"))
            .args(["-c", script, &node.addr.to_string()])
            .arg(&node.ca)
            .args(admin_certificate(&node))
            .env("PYTHONPATH", stubs.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = stdout_lines(&mut python.0);
    assert_eq!(wait_for_line(&lines, "cas", STARTUP), "cas ABORTED");
    assert_eq!(wait_for_line(&lines, "txn", STARTUP), "txn True 2");
    wait_for_line(&lines, "ready", STARTUP);
    let rust = reef_sdk::state::StateClient::connect(&node.options())
        .await
        .unwrap();
    rust.put("py", "from-rust", "hello").await.unwrap();
    let events: Vec<String> = (0..4)
        .map(|_| wait_for_line(&lines, "event", STARTUP))
        .collect();
    assert_eq!(
        events,
        [
            "event 1 KIND_PUT leader a",
            "event 2 KIND_PUT term 2",
            "event 2 KIND_DELETE leader ",
            "event 3 KIND_PUT from-rust hello",
        ]
    );
}

/// Files from Python's generated stubs: a chunked upload, a download, a page of the
/// listing, and a path that tries to leave the store.
#[test]
fn python_uses_files_through_generated_stubs() {
    let node = TestNode::start();
    let stubs = tempfile::tempdir().unwrap();
    generate_python_stubs(stubs.path());
    let script = r#"
import hashlib, os, sys, grpc
from reef.v1 import files_pb2 as pb, files_pb2_grpc
channel = grpc.secure_channel(sys.argv[1], grpc.ssl_channel_credentials(
    open(sys.argv[2], "rb").read(), open(sys.argv[4], "rb").read(), open(sys.argv[3], "rb").read()))
files = files_pb2_grpc.FilesStub(channel)
body = os.urandom(1_000_000)
def upload(path):
    yield pb.WriteFileRequest(start=pb.WriteFileStart(path=path))
    for at in range(0, len(body), 256 * 1024):
        yield pb.WriteFileRequest(data=body[at:at + 256 * 1024])
written = files.Write(upload("py/data.bin"))
print("written", written.path, written.size)
back = b"".join(chunk.data for chunk in files.Read(pb.ReadFileRequest(path="py/data.bin")))
print("same", hashlib.sha256(back).digest() == hashlib.sha256(body).digest())
listed = files.List(pb.ListFilesRequest(path="py"))
print("listed", [entry.path for entry in listed.entries])
try:
    files.Stat(pb.StatFileRequest(path="py/../../secret"))
    print("escape not refused")
except grpc.RpcError as error:
    print("escape", error.code().name)
"#;
    let out = Command::new(venv_bin("python"))
        .args(["-c", script, &node.addr.to_string()])
        .arg(&node.ca)
        .args(admin_certificate(&node))
        .env("PYTHONPATH", stubs.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            "written py/data.bin 1000000",
            "same True",
            "listed ['py/data.bin']",
            "escape INVALID_ARGUMENT",
        ],
        "{printed}"
    );
}

#[tokio::test]
async fn the_python_sdk_spreads_large_envelopes_over_frames_below_the_limit() {
    let node = TestNode::start();
    let stubs = tempfile::tempdir().unwrap();
    generate_python_stubs(stubs.path());
    let mut sink = RawAttach::open(&node, "sink").await;
    // Twenty envelopes of almost 1 MiB each, sent at once: each legal alone, but
    // whatever queues up while the first frame is written is far above the frame limit.
    let script = r#"
import sys
from reef_sdk import Container
container = Container(sys.argv[1], sys.argv[2], alias="py-bulk", name="bulk")
payloads = [bytes([65 + n]) * ((1 << 20) - 4096) for n in range(20)]
for payload in payloads:
    container.send("sink", payload)
print("sent", flush=True)
sys.stdin.read()
"#;
    let mut python = ChildGuard(
        Command::new(venv_bin("python"))
            .args(["-c", script, &node.addr.to_string()])
            .arg(&node.ca)
            .envs(node.container_env("py-bulk"))
            .env("PYTHONPATH", python_path(stubs.path()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = stdout_lines(&mut python.0);
    wait_for_line(&lines, "sent", STARTUP);
    for n in 0..20u8 {
        let envelope = sink.next(WAIT).await;
        assert_eq!(envelope.payload.len(), (1 << 20) - 4096);
        assert_eq!(envelope.payload[0], b'A' + n, "in order");
    }
}

/// The node's administrator certificate and key (what the CLI on its machine presents),
/// for the scripts that call it with bare generated stubs.
fn admin_certificate(node: &TestNode) -> [std::path::PathBuf; 2] {
    let (cert, key) = reef_sdk::ConnectOptions::admin_beside(&node.ca).expect("admin.pem");
    [cert, key]
}
