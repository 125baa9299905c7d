//! Access control on a real reefd over TLS: who may send to whom, manage which subtree,
//! read or write which state namespace (a policy file, read again when it changes), and
//! certificates that bind their holder to one alias.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use reef_proto::{
    ALIAS_METADATA, Envelope, EnvelopeKind, ErrorCode, GetRequest, HostRequest, LEASE_METADATA,
    ListRequest, POLICY_METADATA, RegisterRequest, channel_client::ChannelClient,
    state_client::StateClient, supervisor_client::SupervisorClient,
};
use reef_sdk::{Client, ConnectOptions, Error};
use reef_tests::{RawAttach, STARTUP, TestNode, binary, eventually};

const WAIT: Duration = Duration::from_secs(10);

const POLICY: &str = r#"
[[policy]]
name = "no-secrets"
effect = "deny"
who = ["*"]
may = ["read", "write"]
on = ["secrets"]

[[policy]]
name = "ops-manage-workers"
who = ["client:ops"]
may = ["manage"]
on = ["workers"]

[[policy]]
name = "clients-connect"
who = ["client:*"]
may = ["create"]
on = ["client/*"]

[[policy]]
name = "config-for-all"
who = ["client:*", "container:*"]
may = ["read", "write"]
on = ["config"]

[[policy]]
name = "callers-reach-echo"
who = ["container:caller", "client:ops"]
may = ["send"]
on = ["echo"]
"#;

/// `reef` as the holder of `cert`.
fn reef_as(node: &TestNode, cert: &Identity, args: &[&str]) -> Output {
    let mut all = vec!["--cert", cert.cert_str(), "--key", cert.key_str()];
    all.extend_from_slice(args);
    node.reef(&all)
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "reef failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts that `output` is the refusal of a caller without a certificate.
fn refused_at_the_door(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("requires a client certificate"),
        "{stderr}"
    );
}

/// Asserts that `output` is a refusal by `policy` and returns its message.
fn denied_by(output: &Output, policy: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "expected a denial, got success");
    assert!(
        stderr.contains("denied by policy") && stderr.contains(&format!("{policy:?}")),
        "expected a denial by {policy:?}: {stderr}"
    );
    stderr
}

/// A client certificate issued by `reef ca client`.
struct Identity(PathBuf, PathBuf);

impl Identity {
    fn issue(node: &TestNode, out: &Path, name: &str) -> Self {
        let tls = node.data_dir().join("tls");
        succeeded(
            &Command::new(binary("reef"))
                .args(["ca", "client", name, "--ca-dir"])
                .arg(&tls)
                .arg("--out")
                .arg(out)
                .output()
                .expect("reef runs"),
        );
        Self(
            out.join(format!("{name}.pem")),
            out.join(format!("{name}-key.pem")),
        )
    }

    fn cert_str(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    fn key_str(&self) -> &str {
        self.1.to_str().expect("utf-8 temp path")
    }

    fn options(&self, node: &TestNode) -> ConnectOptions {
        node.options_as(Some((self.0.clone(), self.1.clone())))
    }
}

fn write_policy(path: &Path, text: &str) {
    // Written beside and renamed: the node never reads half a file.
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

fn demo(args: &[&str]) -> Vec<String> {
    let mut all = vec!["--".to_owned(), binary("reef-demo").display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

fn create(node: &TestNode, alias: &str, extra: &[&str], program: &[&str]) -> Output {
    let mut args = vec!["create", alias];
    args.extend_from_slice(extra);
    let program = demo(program);
    args.extend(program.iter().map(String::as_str));
    node.reef(&args)
}

#[tokio::test]
async fn policies_decide_who_sends_manages_and_touches_state() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write_policy(&policy, POLICY);
    let node = TestNode::start_with(&["--policy", policy.to_str().unwrap()]);
    let ops = Identity::issue(&node, dir.path(), "ops");
    let eve = Identity::issue(&node, dir.path(), "eve");

    // The admin certificate the node keeps beside its CA is above the policies.
    succeeded(&create(&node, "echo", &[], &["echo"]));
    succeeded(&create(&node, "workers", &[], &["echo"]));
    succeeded(&node.reef(&["state", "put", "secrets", "k", "s3cret"]));

    // Managing: ops may manage the subtree under workers, and nothing else.
    succeeded(&reef_as(
        &node,
        &ops,
        &[
            "create",
            "workers/w1",
            "--parent",
            "workers",
            "--",
            &binary("reef-demo").display().to_string(),
            "echo",
        ],
    ));
    succeeded(&reef_as(&node, &ops, &["stop", "workers/w1"]));
    // Asking a container about itself, or giving it a command, is a send to it.
    let status = succeeded(&reef_as(&node, &ops, &["status", "echo"]));
    assert!(status.starts_with("echo (echo): pid "), "{status}");
    denied_by(&reef_as(&node, &eve, &["status", "echo"]), "default");
    denied_by(
        &reef_as(&node, &eve, &["command", "echo", "reset"]),
        "default",
    );
    // Without a certificate the node's door refuses before any policy is asked.
    refused_at_the_door(&node.reef(&["--anonymous", "status", "echo"]));
    let refused = denied_by(&reef_as(&node, &ops, &["stop", "echo"]), "default");
    assert!(refused.contains("client:ops stop \"echo\""), "{refused}");
    denied_by(&reef_as(&node, &eve, &["destroy", "workers/w1"]), "default");
    denied_by(
        &reef_as(
            &node,
            &ops,
            &["group", "set", "all", "--strategy", "broadcast"],
        ),
        "default",
    );
    succeeded(&reef_as(&node, &ops, &["destroy", "workers"]));

    // State: namespaces by policy; the deny rule comes first.
    succeeded(&reef_as(
        &node,
        &eve,
        &["state", "put", "config", "mode", "fast"],
    ));
    let refused = denied_by(
        &reef_as(&node, &eve, &["state", "get", "secrets", "k"]),
        "no-secrets",
    );
    assert!(refused.contains("client:eve may not read"), "{refused}");
    refused_at_the_door(&node.reef(&["--anonymous", "state", "get", "config", "mode"]));
    // For programs, the policy is in the status's metadata too.
    let status = StateClient::new(eve.options(&node).connect().await.unwrap())
        .get(GetRequest {
            namespace: "secrets".into(),
            key: "k".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status
            .metadata()
            .get(POLICY_METADATA)
            .map(|v| v.to_str().unwrap()),
        Some("no-secrets")
    );

    // Sends: a client's sends are its own; a container's are its alias's.
    let as_ops = Client::connect(&ops.options(&node)).await.unwrap();
    let reply = as_ops.request("echo", "hi", WAIT).await.unwrap();
    assert_eq!(&reply[..], b"hi");
    let as_eve = Client::connect(&eve.options(&node)).await.unwrap();
    match as_eve.request("echo", "hi", WAIT).await {
        Err(Error::Remote { code, message, .. }) => {
            assert_eq!(code, reef_sdk::Code::PermissionDenied, "{message}");
            assert!(message.contains("policy \"default\""), "{message}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    // Containers with certificates of their own.
    let as_container = |alias| node.options_as(Some(node.container_certificate(alias)));
    let mut caller = RawAttach::open_as(&node, "caller", as_container("caller")).await;
    let mut other = RawAttach::open_as(&node, "other", as_container("other")).await;
    caller
        .send(vec![request(1, "echo"), request(2, "other")])
        .await;
    let mut answers = [caller.next(WAIT).await, caller.next(WAIT).await];
    answers.sort_by_key(|e| e.correlation_id);
    assert_eq!(answers[0].kind(), EnvelopeKind::Reply);
    assert_eq!(answers[1].kind(), EnvelopeKind::Error);
    let error = answers[1].error.clone().unwrap();
    assert_eq!(error.code(), ErrorCode::PermissionDenied);
    assert!(
        error.message.contains("container:caller send \"other\""),
        "{}",
        error.message
    );
    other.send(vec![request(3, "echo")]).await;
    let answer = other.next(WAIT).await;
    assert_eq!(answer.error.unwrap().code(), ErrorCode::PermissionDenied);
    // Every refused send is a dead letter too.
    let letters = reef_tests::dead_letters(&node.supervisor().await).await;
    assert!(
        letters
            .letters
            .iter()
            .any(|l| l.reason.contains("denied by policy")),
        "{letters:?}"
    );

    // A spawned container presents the certificate the node issued it: the replica
    // reads namespace config as container:replica, which anonymous callers may not.
    succeeded(&create(
        &node,
        "replica",
        &[],
        &["replica", "--namespace", "config"],
    ));
    let as_admin = Client::connect(&node.options()).await.unwrap();
    let view = eventually("the replica's view of config", STARTUP, || {
        let as_admin = &as_admin;
        async move {
            let reply = as_admin.request("replica", "view", WAIT).await.ok()?;
            let text = String::from_utf8_lossy(&reply).into_owned();
            text.contains("mode=fast").then_some(text)
        }
    })
    .await;
    assert!(view.contains("mode=fast"), "{view}");

    // The file is read again when it changes: eve may now read secrets.
    let mut reloaded = String::from(
        "[[policy]]\nname = \"eve-reads-secrets\"\nwho = [\"client:eve\"]\nmay = [\"read\"]\non = [\"secrets\"]\n",
    );
    reloaded.push_str(POLICY);
    write_policy(&policy, &reloaded);
    let got = eventually("the new policy in force", STARTUP, || async {
        let output = reef_as(&node, &eve, &["state", "get", "secrets", "k"]);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    })
    .await;
    assert!(got.contains("s3cret"), "{got}");
    // A broken file leaves the policies in force as they were.
    write_policy(&policy, "[[policy]]\nname = 'x'\n");
    denied_by(
        &reef_as(&node, &eve, &["state", "put", "secrets", "k", "v"]),
        "no-secrets",
    );
}

fn request(id: u64, destination: &str) -> Envelope {
    Envelope {
        kind: EnvelopeKind::Request as i32,
        id,
        destination: destination.into(),
        payload: "ping".into(),
        deadline_ms: 5_000,
        ..Default::default()
    }
}

/// Opens an attach stream as `alias` with `lease` over `channel`.
async fn attach(
    channel: &tonic::transport::Channel,
    alias: &str,
    lease: &str,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(tokio_stream::empty::<reef_proto::Frame>());
    request
        .metadata_mut()
        .insert(ALIAS_METADATA, alias.parse().unwrap());
    request
        .metadata_mut()
        .insert(LEASE_METADATA, lease.parse().unwrap());
    ChannelClient::new(channel.clone())
        .attach(request)
        .await
        .map(drop)
}

#[tokio::test]
async fn a_certificate_binds_its_holder_to_its_alias() {
    let node = TestNode::start();
    // The certificate the node gives a process it spawns (reef://container/mallory).
    let mallory = node
        .options_as(Some(node.container_certificate("mallory")))
        .connect()
        .await
        .unwrap();
    let registered = SupervisorClient::new(mallory.clone())
        .register(RegisterRequest {
            alias: "mallory".into(),
            name: "raw".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dir = tempfile::tempdir().unwrap();
    let _victim = RawAttach::open(&node, "victim").await;

    let impersonation = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("container:mallory") && status.message().contains("victim"),
            "{status:?}"
        );
    };
    let mut as_mallory = SupervisorClient::new(mallory.clone());
    impersonation(
        as_mallory
            .register(RegisterRequest {
                alias: "victim2".into(),
                name: "raw".into(),
                ..Default::default()
            })
            .await
            .map(drop)
            .unwrap_err(),
    );
    let status = as_mallory
        .host(HostRequest {
            alias: "victim".into(),
            lease: "guess".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    impersonation(status);
    let status = attach(&mallory, "victim", "guess").await.unwrap_err();
    impersonation(status);

    // Its own alias it may use (the lease still decides).
    attach(&mallory, "mallory", &registered.lease)
        .await
        .unwrap();

    // A certificate from another CA fails the handshake.
    let foreign = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(foreign.path()).unwrap();
    let stranger =
        reef_tls::issue_client(foreign.path(), &reef_tls::admin_identity("stranger")).unwrap();
    let (cert, key) = (dir.path().join("s.pem"), dir.path().join("s-key.pem"));
    stranger.write(&cert, &key).unwrap();
    let refused = match node.options_as(Some((cert, key))).connect().await {
        Err(error) => error.to_string(),
        Ok(channel) => SupervisorClient::new(channel)
            .list(ListRequest {})
            .await
            .map(drop)
            .unwrap_err()
            .to_string(),
    };
    assert!(!refused.is_empty());
}
