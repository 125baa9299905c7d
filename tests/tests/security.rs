//! What a node keeps from those who can reach it or run inside it, one test per hole
//! (issue "Secure by default"). So far: a caller without a certificate gets nothing but
//! health, reflection and the node's name, a container does not find the node's
//! environment, only administrators read the values of a container's environment, the
//! supervision tree on disk is the node's user's alone, and a flood of wrong dashboard
//! tokens does not lock the owner out, a host announces no task outside the subtree its
//! certificate may create in, what the node shows of its containers needs `read`, a
//! container's endpoint takes control calls from its node alone, the certificate
//! Register issues passes for no address and authenticates no caller, only the parent
//! node speaks for someone else, and only for callers the node below believes itself
//! (a node's own administrator is no administrator of the nodes below), a node's CA vouches for no one on another node but
//! that node, a child node takes no alias that lives above its parent, and a container
//! reads no key of the node and rewrites no policy, whoever reefd runs as, and a
//! destroyed container's certificate authenticates no one.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
};

use reef_proto::{self as wire, container_definition::Kind, supervisor_client::SupervisorClient};
use reef_tests::{STARTUP, TestNode, demo_process, eventually, tls_connector, wait_for_container};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A variable of the node's own environment that no container should see.
const NODE_SECRET: (&str, &str) = ("AWS_SECRET_ACCESS_KEY", "the-node-s-own-secret");

/// A container `alias` that writes its environment to `out` and exits.
fn environment_dump(alias: &str, out: &Path, inherit_env: bool) -> wire::ContainerDefinition {
    wire::ContainerDefinition {
        alias: alias.to_owned(),
        kind: Some(Kind::Process(wire::ProcessSpec {
            command: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), "env > \"$OUT\"; exit 3".to_owned()],
            env: [("OUT".to_owned(), out.display().to_string())].into(),
            inherit_env,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A container `pwn` that proves it ran by writing `pwned`: what an attacker asks for.
fn pwn(pwned: &Path) -> wire::ContainerDefinition {
    wire::ContainerDefinition {
        alias: "pwn".to_owned(),
        kind: Some(Kind::Process(wire::ProcessSpec {
            command: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), format!("id > {}", pwned.display())],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Hole 1: a caller that can reach the port but holds no certificate from the node's CA.
#[tokio::test]
async fn a_caller_without_a_certificate_runs_nothing_and_learns_only_the_nodes_name() {
    let node = TestNode::start();
    let out = tempfile::tempdir().unwrap();
    let pwned = out.path().join("pwned.txt");
    let channel = node.options_as(None).connect().await.unwrap();
    let mut anonymous = SupervisorClient::new(channel.clone());
    let create = anonymous
        .create(wire::CreateRequest {
            definition: Some(pwn(&pwned)),
            ..Default::default()
        })
        .await
        .expect_err("an anonymous Create is refused");
    assert_eq!(create.code(), tonic::Code::Unauthenticated, "{create:?}");
    assert!(
        create.message().contains("reef ca client"),
        "says how to get a certificate: {}",
        create.message()
    );
    let refusals = [
        anonymous.list(wire::ListRequest::default()).await.err(),
        anonymous
            .register(wire::RegisterRequest {
                alias: "a".to_owned(),
                endpoint: "127.0.0.1:1".to_owned(),
                ..Default::default()
            })
            .await
            .err(),
        wire::state_client::StateClient::new(channel.clone())
            .put(wire::PutRequest {
                namespace: "n".to_owned(),
                key: "k".to_owned(),
                ..Default::default()
            })
            .await
            .err(),
        wire::files_client::FilesClient::new(channel.clone())
            .stat(wire::StatFileRequest {
                path: "f".to_owned(),
            })
            .await
            .err(),
        wire::channel_client::ChannelClient::new(channel.clone())
            .attach(tokio_stream::empty())
            .await
            .err(),
    ];
    for refusal in refusals {
        let code = refusal.as_ref().map(tonic::Status::code);
        assert_eq!(code, Some(tonic::Code::Unauthenticated), "{refusal:?}");
    }
    // What anyone may ask: is it a reef node, which one, is it healthy.
    let info = anonymous
        .info(wire::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "reef-node");
    assert!(!info.version.is_empty());
    assert_eq!((info.listen.as_str(), info.uptime_ms), ("", 0), "{info:?}");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");

    // Nothing ran; the administrator sees no container.
    let listed = node
        .supervisor()
        .await
        .list(wire::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.containers.is_empty(), "{listed:?}");
    assert!(!pwned.exists(), "the command ran");
}

/// The development switch lets callers without a certificate in, and nothing sets it.
#[tokio::test]
async fn only_allow_anonymous_lets_callers_without_a_certificate_in() {
    let node = TestNode::start_with(&["--allow-anonymous"]);
    let mut anonymous = SupervisorClient::new(node.options_as(None).connect().await.unwrap());
    let info = anonymous
        .info(wire::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.listen,
        node.addr.to_string(),
        "the whole Info: {info:?}"
    );
    anonymous
        .list(wire::ListRequest::default())
        .await
        .expect("let in");
}

#[tokio::test]
async fn a_container_finds_none_of_the_nodes_environment_unless_its_definition_asks() {
    let node = TestNode::start_with_env(&[], &[NODE_SECRET]);
    let mut supervisor = node.supervisor().await;
    let dumps = tempfile::tempdir().unwrap();
    let mut environments = Vec::new();
    for (alias, inherit) in [("plain", false), ("inheriting", true)] {
        let out = dumps.path().join(alias);
        let refused = reef_tests::create(&mut supervisor, environment_dump(alias, &out, inherit))
            .await
            .expect_err("it exits before it answers");
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        environments.push(std::fs::read_to_string(&out).unwrap());
    }
    let [plain, inheriting] = &environments[..] else {
        unreachable!()
    };
    let secret = format!("{}={}", NODE_SECRET.0, NODE_SECRET.1);
    assert!(!plain.contains(NODE_SECRET.0), "{plain}");
    assert!(plain.contains("REEF_ALIAS=plain\n"), "{plain}");
    assert!(plain.contains("REEF_TOKEN="), "{plain}");
    assert!(
        plain.contains("\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{plain}"
    );
    assert!(inheriting.contains(&secret), "{inheriting}");
    assert!(
        inheriting.contains("REEF_ALIAS=inheriting\n"),
        "{inheriting}"
    );

    // Only an administrator may ask: a container that may create in its subtree cannot
    // read the node's environment through a child that inherits it.
    let web = node.options_as(Some(node.container_certificate("web")));
    let mut as_web = SupervisorClient::new(web.connect().await.unwrap());
    let out = dumps.path().join("leak");
    let refused = reef_tests::create(&mut as_web, environment_dump("web/leak", &out, true))
        .await
        .expect_err("a container's child inherited the node's environment");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("inherit_env"), "{refused:?}");
    assert!(!out.exists(), "the child ran");
    reef_tests::create(&mut as_web, environment_dump("web/plain", &out, false))
        .await
        .expect_err("it exits before it answers");
    assert!(
        !std::fs::read_to_string(&out)
            .unwrap()
            .contains(NODE_SECRET.0)
    );
}

/// The environment of container `alias` as `supervisor`'s caller sees it in List, Tree
/// and a Watch snapshot, which must agree.
async fn environment_seen(
    supervisor: &mut SupervisorClient<tonic::transport::Channel>,
    alias: &str,
) -> std::collections::HashMap<String, String> {
    let env_of = |info: &wire::ContainerInfo| {
        let definition = info.supervised.as_ref()?.definition.as_ref()?;
        match definition.kind.as_ref()? {
            Kind::Process(process) => Some(process.env.clone()),
            Kind::Task(_) => None,
        }
    };
    let listed = supervisor
        .list(wire::ListRequest {})
        .await
        .unwrap()
        .into_inner();
    let listed = listed.containers.iter().find(|c| c.alias == alias).unwrap();
    let tree = supervisor
        .tree(wire::TreeRequest {})
        .await
        .unwrap()
        .into_inner();
    let in_tree = tree
        .roots
        .iter()
        .filter_map(|node| node.container.as_ref())
        .find(|c| c.alias == alias)
        .unwrap();
    let mut watch = supervisor
        .watch(wire::WatchRequest { snapshot: true })
        .await
        .unwrap()
        .into_inner();
    let watched = loop {
        let event = watch.message().await.unwrap().expect("the snapshot");
        match event.container {
            Some(info) if info.alias == alias => break info,
            _ => continue,
        }
    };
    let env = env_of(listed).expect("a process definition");
    assert_eq!(
        env_of(in_tree).as_ref(),
        Some(&env),
        "Tree agrees with List"
    );
    assert_eq!(
        env_of(&watched).as_ref(),
        Some(&env),
        "Watch agrees with List"
    );
    env
}

#[tokio::test]
async fn only_administrators_read_the_values_of_a_containers_environment() {
    // A client that may see every container still reads no value.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[policy]]\nname = \"ops-inspect\"\nwho = [\"client:ops\"]\nmay = [\"read\"]\non = [\"inspect:*\"]\n",
    )
    .unwrap();
    let node = TestNode::start_with(&["--policy", policy.to_str().unwrap()]);
    let mut admin = node.supervisor().await;
    let mut echo = wire::ContainerDefinition {
        alias: "echo".to_owned(),
        kind: demo_process(&["echo"]),
        ..Default::default()
    };
    if let Some(Kind::Process(process)) = echo.kind.as_mut() {
        process
            .env
            .insert("DB_PASSWORD".to_owned(), "hunter2".to_owned());
    }
    reef_tests::create(&mut admin, echo).await.unwrap();

    let client = node.options_as(Some(node.certificate(&reef_tls::client_identity("ops"))));
    let mut supervisor = SupervisorClient::new(client.connect().await.unwrap());
    let env = environment_seen(&mut supervisor, "echo").await;
    assert_eq!(
        env.get("DB_PASSWORD").map(String::as_str),
        Some("(redacted)"),
        "a client sees the name, not the value"
    );
    let env = environment_seen(&mut admin, "echo").await;
    assert_eq!(env.get("DB_PASSWORD").map(String::as_str), Some("hunter2"));
}

#[tokio::test]
async fn the_supervision_tree_on_disk_is_for_the_nodes_user_alone() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let echo = wire::ContainerDefinition {
        alias: "echo".to_owned(),
        kind: demo_process(&["echo"]),
        ..Default::default()
    };
    reef_tests::create(&mut supervisor, echo).await.unwrap();
    // It holds each container's token and environment.
    let tree = std::fs::read_to_string(node.data_dir().join("supervision.toml")).unwrap();
    assert!(tree.contains("token"), "{tree}");
    let mode = std::fs::metadata(node.data_dir().join("supervision.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Posts a login with `token` to the dashboard at `dashboard` from the loopback address
/// `from`; the answer is read with [`redirect`].
async fn send_login(dashboard: SocketAddr, ca: &Path, from: &str, token: &str) -> Tls {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(dashboard).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tls_connector(ca).connect(name, tcp).await.unwrap();
    let form = format!("token={token}");
    let request = format!(
        "POST /login HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
        form.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls
}

/// Where a login's answer redirects: `/` with a session, or `/?login=failed`.
async fn redirect(mut tls: Tls) -> String {
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    response
        .lines()
        .find_map(|line| line.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("a redirect: {response}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_dashboard_tokens_does_not_lock_the_owner_out() {
    /// Wrong tokens sent at once from one address: they take turns, 500 ms each.
    const FLOOD: usize = 20;
    let node = TestNode::start_with(&["--dashboard-listen", "127.0.0.1:0"]);
    let dashboard = node.dashboard.unwrap();
    let token = std::fs::read_to_string(node.data_dir().join("dashboard.token")).unwrap();
    let (sent, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (ca, sent, answered) = (node.ca.clone(), sent.clone(), answered.clone());
            tokio::spawn(async move {
                let tls = send_login(dashboard, &ca, "127.0.0.2", "wrong").await;
                sent.fetch_add(1, SeqCst);
                assert_eq!(redirect(tls).await, "/?login=failed");
                answered.fetch_add(1, SeqCst);
            })
        })
        .collect();
    // Every wrong token is in, and the first has been answered: the others wait their
    // address's turn.
    eventually(
        "the flood is in and a wrong token answered",
        STARTUP,
        || async { (sent.load(SeqCst) == FLOOD && answered.load(SeqCst) > 0).then_some(()) },
    )
    .await;

    let owner = send_login(dashboard, &node.ca, "127.0.0.1", token.trim()).await;
    let location = redirect(owner).await;
    assert_eq!(location, "/", "the owner is logged in");
    let waited_for = answered.load(SeqCst);
    // Each wrong token holds the turn 500 ms: an owner waiting behind them would hear
    // only after nearly all of them.
    assert!(
        waited_for <= FLOOD / 4,
        "the owner's login waited for the flood ({waited_for} of {FLOOD} answered first)"
    );
    for attempt in flood {
        attempt.abort();
    }
}

/// Runs `reef --cert … --key … ARGS…` against `node` as `identity`; returns whether it
/// succeeded and what it said on stderr.
fn reef_as(
    node: &TestNode,
    identity: &(std::path::PathBuf, std::path::PathBuf),
    args: &[&str],
) -> (bool, String) {
    let mut all = vec![
        "--cert".to_owned(),
        identity.0.display().to_string(),
        "--key".to_owned(),
        identity.1.display().to_string(),
    ];
    all.extend(args.iter().map(|arg| arg.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let output = node.reef(&all);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What each kind of caller may do under the built-in policy: the same on a node
/// without `--policy` and on one given `reef policy default` as its file.
async fn check_the_builtin_policy(node: &TestNode) {
    let demo = reef_tests::binary("reef-demo").display().to_string();
    assert!(
        node.reef(&["create", "echo", "--", &demo, "echo"])
            .status
            .success()
    );
    let ops = node.certificate(&reef_tls::client_identity("ops"));
    let web = node.container_certificate("web");
    let denied = |(ok, stderr): (bool, String), what: &str| {
        assert!(!ok, "{what} was allowed");
        assert!(
            stderr.contains("denied by policy \"default\""),
            "{what}: {stderr}"
        );
    };
    let allowed = |(ok, stderr): (bool, String), what: &str| assert!(ok, "{what}: {stderr}");

    // A client sends, requests and reads state; nothing else.
    allowed(
        reef_as(node, &ops, &["request", "echo", "hi"]),
        "a client's request",
    );
    allowed(
        reef_as(node, &ops, &["state", "ls", "config"]),
        "a client's read",
    );
    denied(
        reef_as(node, &ops, &["state", "put", "config", "k", "v"]),
        "a client's write",
    );
    denied(
        reef_as(node, &ops, &["create", "evil", "--", &demo, "echo"]),
        "a client's create",
    );
    denied(reef_as(node, &ops, &["stop", "echo"]), "a client's stop");
    denied(
        reef_as(node, &ops, &["firewall", "off"]),
        "a client's configure",
    );
    denied(
        reef_as(node, &ops, &["files", "ls"]),
        "a client's file listing",
    );
    denied(
        reef_as(node, &ops, &["logs", "echo"]),
        "a client's look at a log",
    );

    // A container manages its own subtree only, and uses state.
    allowed(
        reef_as(node, &web, &["create", "web/worker", "--", &demo, "echo"]),
        "a container's child in its subtree",
    );
    allowed(reef_as(node, &web, &["stop", "web/worker"]), "stopping it");
    denied(
        reef_as(
            node,
            &web,
            &["create", "payments", "--parent", "web", "--", &demo, "echo"],
        ),
        "a container's child outside its subtree",
    );
    denied(
        reef_as(node, &web, &["destroy", "echo"]),
        "a container destroying another",
    );
    allowed(
        reef_as(node, &web, &["state", "put", "sessions", "k", "v"]),
        "a container's write",
    );
    denied(
        reef_as(node, &web, &["files", "ls"]),
        "a container's file listing",
    );
    denied(
        reef_as(node, &web, &["logs", "echo"]),
        "a container's look at another's log",
    );

    // A node's certificate carries envelopes, and does nothing itself.
    let edge = node.certificate(&reef_tls::node_identity("edge"));
    denied(
        reef_as(
            node,
            &edge,
            &["create", "nodes-do-not-create", "--", &demo, "echo"],
        ),
        "a node's create",
    );
    denied(
        reef_as(node, &edge, &["state", "ls", "config"]),
        "a node's read",
    );
}

#[tokio::test]
async fn without_a_policy_file_the_builtin_policy_decides() {
    check_the_builtin_policy(&TestNode::start()).await;
}

#[tokio::test]
async fn the_printed_builtin_policy_used_as_a_file_decides_the_same() {
    let printed = std::process::Command::new(reef_tests::binary("reef"))
        .args(["policy", "default"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, &printed.stdout).unwrap();
    check_the_builtin_policy(&TestNode::start_with(&["--policy", file.to_str().unwrap()])).await;
}

/// Hole 5: a task host announces only aliases it is entitled to. Before, any alias it
/// named became its task: it could squat `payments` before it was created, or send as
/// one a policy trusts.
#[tokio::test]
async fn a_host_announces_no_task_outside_its_subtree() {
    let node = TestNode::start();
    let channel = node
        .options_as(Some(node.container_certificate("h")))
        .connect()
        .await
        .unwrap();
    let mut host = SupervisorClient::new(channel);
    let lease = host
        .register(wire::RegisterRequest {
            alias: "h".to_owned(),
            name: "host".to_owned(),
            ..Default::default()
        })
        .await
        .expect("a container registers as itself")
        .into_inner()
        .lease;
    let task = |alias: &str| wire::HostedTask {
        alias: alias.to_owned(),
        name: "worker".to_owned(),
        ..Default::default()
    };
    let answer = host
        .host(wire::HostRequest {
            alias: "h".to_owned(),
            lease,
            upsert: vec![task("payments"), task("h/worker")],
            ..Default::default()
        })
        .await
        .expect("the announcement is answered")
        .into_inner();
    let [squat, own] = &answer.results[..] else {
        panic!("one result per task: {answer:?}");
    };
    assert_eq!(
        squat.code,
        tonic::Code::PermissionDenied as i32,
        "{squat:?}"
    );
    assert!(
        squat.message.contains("container:h") && squat.message.contains("payments"),
        "{squat:?}"
    );
    assert_eq!(own.code, 0, "{own:?}");

    let listed = node
        .supervisor()
        .await
        .list(wire::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.iter().any(|c| c.alias == "h/worker"));
    assert!(!listed.iter().any(|c| c.alias == "payments"), "{listed:?}");
}

/// Hole 7: what the node shows of its containers (List, Tree, Watch, Logs, Ping, dead
/// letters) needs `read` on `inspect:ALIAS`. Under the built-in policy a container sees
/// its own subtree and a client sees nothing; before, anyone saw everything.
#[tokio::test]
async fn inspection_shows_a_caller_only_the_containers_it_may_read() {
    let node = TestNode::start();
    let demo = reef_tests::binary("reef-demo").display().to_string();
    let web = node.container_certificate("web");
    for (who, alias) in [(None, "echo"), (Some(&web), "web/worker")] {
        let args = ["create", alias, "--", &demo, "echo"];
        let (ok, stderr) = match who {
            None => {
                let out = node.reef(&args);
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
            Some(identity) => reef_as(&node, identity, &args),
        };
        assert!(ok, "create {alias}: {stderr}");
        node.wait_attached(alias).await;
    }
    // Dead letters: one for the container's subtree, one for no one's.
    for to in ["web/ghost", "nobody"] {
        // Refused (no such alias), and kept as a dead letter.
        node.reef(&["send", to, "lost"]);
    }
    let admin = node.supervisor().await;
    eventually("both dead letters", STARTUP, || {
        let admin = admin.clone();
        async move { (reef_tests::dead_letters(&admin).await.letters.len() >= 2).then_some(()) }
    })
    .await;

    let as_client = SupervisorClient::new(
        node.options_as(Some(node.certificate(&reef_tls::client_identity("ops"))))
            .connect()
            .await
            .unwrap(),
    );
    let as_web = SupervisorClient::new(node.options_as(Some(web)).connect().await.unwrap());
    let listed = |supervisor: &SupervisorClient<tonic::transport::Channel>| {
        let mut supervisor = supervisor.clone();
        async move {
            let list = supervisor.list(wire::ListRequest {}).await.unwrap();
            let mut aliases: Vec<String> = list
                .into_inner()
                .containers
                .into_iter()
                .map(|c| c.alias)
                .collect();
            aliases.sort();
            let tree = supervisor.tree(wire::TreeRequest {}).await.unwrap();
            let roots: Vec<String> = tree
                .into_inner()
                .roots
                .into_iter()
                .filter_map(|root| root.container.map(|c| c.alias))
                .collect();
            let letters: Vec<String> = reef_tests::dead_letters(&supervisor)
                .await
                .letters
                .into_iter()
                .map(|letter| letter.destination)
                .collect();
            (aliases, roots, letters)
        }
    };
    let (aliases, roots, letters) = listed(&as_client).await;
    assert!(aliases.is_empty(), "a client lists {aliases:?}");
    assert!(roots.is_empty(), "a client sees the tree {roots:?}");
    assert!(
        letters.is_empty(),
        "a client reads dead letters {letters:?}"
    );
    let (aliases, roots, letters) = listed(&as_web).await;
    assert_eq!(aliases, ["web/worker"]);
    assert_eq!(roots, ["web/worker"]);
    assert_eq!(letters, ["web/ghost"]);
    let (aliases, _, letters) = listed(&admin).await;
    assert!(aliases.contains(&"echo".to_owned()) && letters.len() >= 2);

    for (who, alias, allowed) in [
        (&as_client, "echo", false),
        (&as_web, "echo", false),
        (&as_web, "web/worker", true),
    ] {
        let logs = who
            .clone()
            .logs(wire::LogsRequest {
                alias: alias.to_owned(),
                ..Default::default()
            })
            .await;
        let ping = who
            .clone()
            .ping_container(wire::PingContainerRequest {
                alias: alias.to_owned(),
            })
            .await;
        for (what, code) in [
            ("Logs", logs.err().map(|e| e.code())),
            ("PingContainer", ping.err().map(|e| e.code())),
        ] {
            match allowed {
                true => assert_eq!(code, None, "{what} {alias}"),
                false => assert_eq!(code, Some(tonic::Code::PermissionDenied), "{what} {alias}"),
            }
        }
    }

    // Watching, the container hears of its subtree alone: the snapshot and what follows.
    let mut events = as_web
        .clone()
        .watch(wire::WatchRequest { snapshot: true })
        .await
        .unwrap()
        .into_inner();
    for (who, alias) in [
        (None, "echo2"),
        (Some(&node.container_certificate("web")), "web/second"),
    ] {
        let args = ["create", alias, "--", &demo, "echo"];
        let ok = match who {
            None => node.reef(&args).status.success(),
            Some(identity) => reef_as(&node, identity, &args).0,
        };
        assert!(ok, "create {alias}");
    }
    let mut heard = Vec::new();
    while !heard.iter().any(|alias: &String| alias == "web/second") {
        let event = tokio::time::timeout(STARTUP, events.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .expect("the watch stays open");
        heard.extend(event.container.map(|c| c.alias));
    }
    assert!(
        heard.iter().all(|alias| alias.starts_with("web/")),
        "a container hears of others: {heard:?}"
    );
}

/// Hole 8: a container's endpoint takes its control calls (Status, Command, StartTask,
/// StopTask) from its node alone, which checked the caller first. Before, anyone who
/// could reach the port could run a command or start a task in it.
#[tokio::test]
async fn a_containers_endpoint_takes_control_calls_from_its_node_alone() {
    let node = TestNode::start();
    node.create_demo("counter", &["counter"]).await;
    assert!(node.reef(&["send", "counter", "one"]).status.success());
    let tls = node.data_dir().join("tls");
    let callers = [
        ("no certificate", None),
        ("a container", Some(node.container_certificate("mallory"))),
        (
            "a client",
            Some(node.certificate(&reef_tls::client_identity("ops"))),
        ),
        (
            "an administrator",
            Some((tls.join("admin.pem"), tls.join("admin-key.pem"))),
        ),
    ];
    for (who, identity) in callers {
        let mut endpoint = node.endpoint_as("counter", identity).await;
        let refusals = [
            (
                "Command",
                endpoint
                    .command(wire::CommandRequest {
                        command: "reset".to_owned(),
                        args: Vec::new(),
                    })
                    .await
                    .err(),
            ),
            (
                "Status",
                endpoint.status(wire::StatusRequest {}).await.err(),
            ),
            (
                "StartTask",
                endpoint
                    .start_task(wire::StartTaskRequest {
                        alias: "counter/implant".to_owned(),
                        name: "implant".to_owned(),
                        ..Default::default()
                    })
                    .await
                    .err(),
            ),
            (
                "StopTask",
                endpoint
                    .stop_task(wire::StopTaskRequest {
                        alias: "counter/implant".to_owned(),
                    })
                    .await
                    .err(),
            ),
        ];
        for (call, refused) in refusals {
            let status = refused.unwrap_or_else(|| panic!("{who}'s {call} was answered"));
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{who}'s {call}: {status:?}"
            );
            assert!(status.message().contains("reef://node/"), "{status:?}");
        }
        // A ping proves the endpoint answers, and is anyone's.
        endpoint
            .ping(wire::PingRequest { nonce: 7 })
            .await
            .unwrap_or_else(|e| panic!("{who}'s ping: {e}"));
    }
    // The command did not run, and through the node the same calls work.
    let count = node.reef(&["request", "counter", "count"]);
    assert_eq!(String::from_utf8_lossy(&count.stdout), "1\n");
    let reset = node.reef(&["command", "counter", "reset"]);
    assert_eq!(String::from_utf8_lossy(&reset.stdout), "0\n", "{reset:?}");
}

/// Hole 4: Register gives the registrant a certificate for its endpoint. It used to name
/// the host the registrant chose and serve as a client certificate too, so a client
/// could pass for the node at that address, or for a container. Now it names the alias
/// alone, and only for serving: the node checks endpoints by that identity.
#[tokio::test]
async fn register_issues_no_certificate_that_passes_for_an_address_or_a_caller() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
    let node = TestNode::start();
    let ops = node.certificate(&reef_tls::client_identity("ops"));
    let mut client = SupervisorClient::new(node.options_as(Some(ops)).connect().await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let granted = client
        .register(wire::RegisterRequest {
            alias: "client/x".to_owned(),
            name: "x".to_owned(),
            endpoint: address.to_string(),
            ..Default::default()
        })
        .await
        .expect("a client registers a client/… alias")
        .into_inner();
    assert!(!granted.endpoint_cert_pem.is_empty());

    // Served at the address the registrant named, it does not pass for that address.
    let chain = CertificateDer::pem_slice_iter(granted.endpoint_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(granted.endpoint_key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let handshake = reef_tests::tls_connector(&node.ca).connect(name, tcp).await;
    let error = handshake.expect_err("the endpoint's certificate passed for 127.0.0.1");
    assert!(error.to_string().contains("certificate"), "{error}");
    server.abort();

    // Nor does it authenticate its holder: as a client certificate it is refused.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("x.pem"), dir.path().join("x-key.pem"));
    std::fs::write(&cert, &granted.endpoint_cert_pem).unwrap();
    std::fs::write(&key, &granted.endpoint_key_pem).unwrap();
    let refused = match node.options_as(Some((cert, key))).connect().await {
        Err(_) => true,
        Ok(channel) => SupervisorClient::new(channel)
            .list(wire::ListRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "the endpoint's certificate authenticated a caller");

    // The node checks an endpoint by the alias its certificate names: one that points
    // at another container's endpoint does not answer for it.
    let echo = node.create_demo("echo", &["echo"]).await;
    let mut liar = SupervisorClient::new(
        node.options_as(Some(node.container_certificate("liar")))
            .connect()
            .await
            .unwrap(),
    );
    liar.register(wire::RegisterRequest {
        alias: "liar".to_owned(),
        name: "liar".to_owned(),
        endpoint: echo.endpoint,
        ..Default::default()
    })
    .await
    .expect("a container registers as itself");
    let ping = node
        .supervisor()
        .await
        .ping_container(wire::PingContainerRequest {
            alias: "liar".to_owned(),
        })
        .await
        .expect_err("echo's endpoint answered for liar");
    assert!(ping.message().contains("reef://container/liar"), "{ping:?}");
}

/// Hole 2: `reef-on-behalf-of` is believed only from the node this node joined (calls are
/// forwarded down the tree). Before, any node certificate could say it acted for an
/// administrator and run anything.
#[tokio::test]
async fn a_node_that_is_not_the_parent_speaks_for_no_one() {
    let node = TestNode::start();
    let out = tempfile::tempdir().unwrap();
    let pwned = out.path().join("pwned.txt");
    let edge = node.certificate(&reef_tls::node_identity("edge"));
    let mut as_edge = SupervisorClient::new(node.options_as(Some(edge)).connect().await.unwrap());
    let mut create = tonic::Request::new(wire::CreateRequest {
        definition: Some(pwn(&pwned)),
        ..Default::default()
    });
    create.metadata_mut().insert(
        reef_proto::ON_BEHALF_OF_METADATA,
        "admin:x".parse().unwrap(),
    );
    let refused = as_edge
        .create(create)
        .await
        .expect_err("node:edge acted as admin:x");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("node:edge"), "{refused:?}");
    assert!(!pwned.exists());
    let listed = node
        .supervisor()
        .await
        .list(wire::ListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.containers.iter().any(|c| c.alias == "pwn"));
}

/// Hole 2: in a tree, each node's `admin.pem` was an administrator of every node below
/// it, as the parent said whom it acted for and the child believed it of anyone. A node
/// now forwards a call only for a caller whose certificate the node below believes too
/// (it sends the chain, and the node below checks it), so the administrator a node's own
/// CA issued acts on that node alone, and a parent's key in the wrong hands speaks for
/// no one whose certificate it does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_own_administrator_is_no_administrator_of_the_nodes_below() {
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let root = TestNode::start_in_cluster(cluster.path(), "root", None, &[]);
    let a = TestNode::start_in_cluster(cluster.path(), "a", Some(&root), &[]);
    let on_root = root.supervisor().await;
    wait_for_container(&on_root, "nodes/a", "linked", |c| c.attached).await;
    let out = tempfile::tempdir().unwrap();
    let pwned = out.path().join("pwned.txt");
    let create_on_a = || wire::CreateRequest {
        definition: Some(pwn(&pwned)),
        node: "a".to_owned(),
        ..Default::default()
    };
    let refused = on_root
        .clone()
        .create(create_on_a())
        .await
        .expect_err("root's own admin.pem created on a");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("this node alone"), "{refused:?}");
    // Nor does it stop, or read the log of, a container that lives on a.
    a.create_demo("on-a", &["counter"]).await;
    wait_for_container(&on_root, "on-a", "announced by a", |c| c.attached).await;
    let stop = on_root
        .clone()
        .stop(wire::StopRequest {
            alias: "on-a".to_owned(),
            flags: 0,
        })
        .await
        .expect_err("root's own admin.pem stopped on-a");
    assert_eq!(stop.code(), tonic::Code::PermissionDenied, "{stop:?}");
    let logs = on_root
        .clone()
        .logs(wire::LogsRequest {
            alias: "on-a".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("root's own admin.pem read on-a's log");
    assert_eq!(logs.code(), tonic::Code::PermissionDenied, "{logs:?}");

    // Root's node key in the wrong hands: speaking for an administrator without that
    // administrator's certificate, or with root's admin.pem, gets nothing on a.
    let as_root_node = root.certificate(&reef_tls::node_identity("root"));
    let mut to_a_as_root =
        SupervisorClient::new(a.options_as(Some(as_root_node)).connect().await.unwrap());
    let root_admin_chain = {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let pem = std::fs::read(root.data_dir().join("tls/admin.pem")).unwrap();
        CertificateDer::pem_slice_iter(&pem)
            .map(|der| der.unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    for (chain, why) in [
        (None, "without that caller's certificate"),
        (Some(&root_admin_chain), "believed on node root alone"),
    ] {
        let mut create = tonic::Request::new(wire::CreateRequest {
            node: String::new(),
            ..create_on_a()
        });
        let admin = format!(
            "admin:{}",
            reef_tls::certificate_identity(&root_admin_chain[0])
                .unwrap()
                .trim_start_matches("reef://admin/")
        );
        create
            .metadata_mut()
            .insert(reef_proto::ON_BEHALF_OF_METADATA, admin.parse().unwrap());
        if let Some(chain) = chain {
            create.metadata_mut().insert_bin(
                reef_proto::ON_BEHALF_OF_CHAIN_METADATA,
                tonic::metadata::MetadataValue::from_bytes(&reef_tls::vouch::encode_chain(chain)),
            );
        }
        let refused = to_a_as_root
            .create(create)
            .await
            .expect_err("root's node key spoke for an administrator on a");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains(why), "{refused:?}");
    }
    assert!(!pwned.exists());
    let on_a = a.supervisor().await;
    let listed = on_a.clone().list(wire::ListRequest {}).await.unwrap();
    assert!(
        !listed
            .into_inner()
            .containers
            .iter()
            .any(|c| c.alias == "pwn")
    );

    // The cluster's operator acts on a through root.
    let operator =
        reef_tls::issue_client(cluster.path(), &reef_tls::admin_identity("ops")).unwrap();
    let operator = write_identity(out.path(), "ops", &operator);
    let channel = root.options_as(Some(operator)).connect().await.unwrap();
    let created = SupervisorClient::new(channel)
        .create(wire::CreateRequest {
            definition: Some(wire::ContainerDefinition {
                alias: "by-ops".to_owned(),
                kind: demo_process(&["counter"]),
                ..Default::default()
            }),
            node: "a".to_owned(),
            ..Default::default()
        })
        .await
        .expect("the cluster's administrator creates on a through root");
    assert!(created.into_inner().created);
    wait_for_container(&on_a, "by-ops", "attached", |c| c.attached).await;
}

/// Writes `certified` as `DIR/NAME.pem` and `NAME-key.pem`, for a client to present.
fn write_identity(
    dir: &Path,
    name: &str,
    certified: &reef_tls::CertifiedKey,
) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    certified.write(&cert, &key).unwrap();
    (cert, key)
}

/// Hole 2: in a cluster every node signs with an intermediate under one root, so before,
/// node b's `admin.pem` was an administrator of node a, and b's CA could mint a's own
/// identity or a container of a's. A node's CA now vouches for that node everywhere and
/// for what else it issues on that node alone.
#[tokio::test]
async fn a_nodes_ca_vouches_for_no_one_on_another_node_but_that_node() {
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let node = TestNode::start_in_cluster(cluster.path(), "a", None, &[]);
    // Node b's identity, as `reef ca issue b` and its first start leave it.
    let b = tempfile::tempdir().unwrap();
    reef_tls::issue_node_ca(cluster.path(), "b", b.path()).unwrap();
    let b_ca = reef_tls::Pki::load_or_create(b.path(), "b", &[]).unwrap();
    let minted = |name: &str, identity: &str| {
        write_identity(
            b.path(),
            name,
            &b_ca.issue("minted", &[], identity).unwrap(),
        )
    };
    let refused = [
        (
            (b.path().join("admin.pem"), b.path().join("admin-key.pem")),
            "node b alone",
        ),
        (
            minted("as-a", &reef_tls::node_identity("a")),
            "no node but b",
        ),
        (
            minted("a-container", &reef_tls::container_identity("web")),
            "node b alone",
        ),
    ];
    let out = tempfile::tempdir().unwrap();
    let pwned = out.path().join("pwned.txt");
    let create = || wire::CreateRequest {
        definition: Some(pwn(&pwned)),
        ..Default::default()
    };
    for (identity, why) in refused {
        let channel = node.options_as(Some(identity)).connect().await.unwrap();
        let status = SupervisorClient::new(channel)
            .create(create())
            .await
            .expect_err("a certificate from node b's CA was believed on node a");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    }
    assert!(!pwned.exists());

    // b's own certificate is node b's, here too (a node that is not the parent may do
    // nothing much, but it is believed as itself).
    let as_b = (b.path().join("node.pem"), b.path().join("node-key.pem"));
    let channel = node.options_as(Some(as_b)).connect().await.unwrap();
    let status = SupervisorClient::new(channel)
        .create(create())
        .await
        .expect_err("node:b may not create on a");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("node:b"), "{status:?}");
    // And the cluster's operator is an administrator everywhere.
    let operator =
        reef_tls::issue_client(cluster.path(), &reef_tls::admin_identity("ops")).unwrap();
    let operator = write_identity(out.path(), "ops", &operator);
    let channel = node.options_as(Some(operator)).connect().await.unwrap();
    SupervisorClient::new(channel)
        .list(wire::ListRequest {})
        .await
        .expect("the cluster CA's administrator lists node a");
}

/// Hole 6: a node knows its own subtree, not the tree above it, so before, it took any
/// alias a child announced that it had not seen itself, even one living on its parent,
/// and routed that alias's messages down to the child. Now it claims a child's new alias
/// at its parent first (up to the root), and refuses what the tree above holds elsewhere.
#[tokio::test]
async fn a_child_node_takes_no_alias_that_lives_above_its_parent() {
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let start = |name: &str, parent: Option<&TestNode>| {
        TestNode::start_in_cluster(cluster.path(), name, parent, &[])
    };
    let root = start("root", None);
    let a = start("a", Some(&root));
    let b = start("b", Some(&a));
    let on_root = root.supervisor().await;
    let on_a = a.supervisor().await;
    wait_for_container(&on_root, "nodes/b", "announced by a", |c| c.attached).await;
    let create = |alias: &str, behaviour: &str| wire::CreateRequest {
        definition: Some(wire::ContainerDefinition {
            alias: alias.to_owned(),
            kind: demo_process(&[behaviour]),
            ..Default::default()
        }),
        ..Default::default()
    };
    on_root
        .clone()
        .create(create("payments", "echo"))
        .await
        .unwrap();
    wait_for_container(&on_root, "payments", "attached", |c| c.attached).await;
    // b's administrator (or b's key in the wrong hands) runs a payments of its own, and
    // then a container that is b's alone: once a routes that one, it has heard b's claim.
    let on_b = b.supervisor().await;
    on_b.clone()
        .create(create("payments", "counter"))
        .await
        .unwrap();
    wait_for_container(&on_b, "payments", "attached", |c| c.attached).await;
    on_b.clone()
        .create(create("b-only", "counter"))
        .await
        .unwrap();
    wait_for_container(&on_a, "b-only", "announced by b", |c| c.attached).await;

    let listed = on_a
        .clone()
        .list(wire::ListRequest {})
        .await
        .unwrap()
        .into_inner();
    let payments_on_a = listed.containers.iter().find(|c| c.alias == "payments");
    assert!(
        payments_on_a.is_none(),
        "a routes payments down to b: {payments_on_a:?}"
    );
    // A request from a's side of the tree reaches root's payments (an echo), not b's (a
    // counter, which answers with a number).
    let client = reef_sdk::Client::connect(&a.options()).await.unwrap();
    let answer = client
        .request(
            "payments",
            "to the real payments",
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("payments answers");
    assert_eq!(&answer[..], b"to the real payments");
}

/// What a container `probe` could do to the node's files: the report it writes to a
/// file in `out` (a directory it may write), line by line. It tries to read and to
/// write every file under DATA (but its own certificate and key, and the CA, which it
/// needs) and `others`, to plant a file in DATA, and to signal reefd; and it says
/// which user it is and whether it read what it needs, so that a probe that ran
/// nothing cannot pass. Nor may it hold a capability (root's would reach under the
/// files: the disk, modules, another user).
async fn probe_the_nodes_files(node: &TestNode, others: &[&Path], out: &Path) -> String {
    let mut supervisor = node.supervisor().await;
    // Another container's certificate and key must be among the files tried. A shell,
    // not a demo binary: the build directory may be out of a container user's reach.
    let web = wire::ContainerDefinition {
        alias: "web".to_owned(),
        kind: Some(Kind::Process(wire::ProcessSpec {
            command: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), "exit 3".to_owned()],
            ..Default::default()
        })),
        ..Default::default()
    };
    reef_tests::create(&mut supervisor, web)
        .await
        .expect_err("it exits before it answers");
    let own = ["probe.pem", "probe-key.pem", "ca.pem"];
    let mut files: Vec<PathBuf> = walk(node.data_dir())
        .into_iter()
        .filter(|file| {
            !own.iter()
                .any(|name| file.ends_with(Path::new("tls").join(name)))
        })
        .filter(|file| !file.ends_with(Path::new("containers").join(own[0])))
        .filter(|file| !file.ends_with(Path::new("containers").join(own[1])))
        .collect();
    files.extend(others.iter().map(|path| path.to_path_buf()));
    for needed in [
        "tls/ca-key.pem",
        "tls/admin-key.pem",
        "tls/containers/web-key.pem",
        "supervision.toml",
    ] {
        assert!(
            files.contains(&node.data_dir().join(needed)),
            "{needed} in {files:?}"
        );
    }
    let report = out.join("report");
    let script = r#"
        for f in $FILES; do cat "$f" >/dev/null 2>&1 && echo "read $f"; done
        for f in $FILES; do (: >> "$f") 2>/dev/null && echo "wrote $f"; done
        (: > "$DATA/planted") 2>/dev/null && echo "planted a file in DATA"
        kill -0 "$REEFD_PID" 2>/dev/null && echo "signalled reefd"
        grep -q '^CapEff:[[:space:]]*0*$' /proc/self/status || echo "holds capabilities"
        cat "$REEF_KEY" "$REEF_CERT" "$REEF_CA" >/dev/null && echo "read what it needs"
        echo "uid $(id -u)"
    "#;
    let probe = wire::ContainerDefinition {
        alias: "probe".to_owned(),
        kind: Some(Kind::Process(wire::ProcessSpec {
            command: "/bin/sh".to_owned(),
            args: vec![
                "-c".to_owned(),
                format!("({script}) > \"$OUT\" 2>&1; exit 3"),
            ],
            env: [
                ("OUT", report.display().to_string()),
                ("DATA", node.data_dir().display().to_string()),
                ("REEFD_PID", node.pid().to_string()),
                (
                    "FILES",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
            ..Default::default()
        })),
        ..Default::default()
    };
    reef_tests::create(&mut supervisor, probe)
        .await
        .expect_err("it exits before it answers");
    std::fs::read_to_string(&report).unwrap()
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|entry| match entry.file_type().unwrap().is_dir() {
            true => walk(&entry.path()),
            false => vec![entry.path()],
        })
        .collect()
}

/// A directory any user may write, for the report of a probe that runs as another.
fn report_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The policy file of a node, in a directory of its own: the built-in policy, printed.
fn policy_file(dir: &Path) -> PathBuf {
    let printed = std::process::Command::new(reef_tests::binary("reef"))
        .args(["policy", "default"])
        .output()
        .unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(&file, &printed.stdout).unwrap();
    file
}

/// Hole 3: a container ran as reefd's user with the whole file system open to it, so it
/// could read the node's keys and every other container's, rewrite the policy file
/// (reloaded within 2 s) and the supervision tree, and signal reefd. Now Landlock hides
/// DATA and the policy file from it but for its own credentials and the CA.
#[tokio::test]
async fn a_container_reads_no_key_of_the_node_and_rewrites_no_policy() {
    // A key mounted beside the node (the cluster CA's, in Kubernetes), and the policy
    // file in the same hidden directory: one hidden path inside another.
    let mounted = tempfile::tempdir().unwrap();
    let mounted_key = mounted.path().join("ca-key.pem");
    std::fs::write(&mounted_key, "the cluster CA's key").unwrap();
    let policy = policy_file(mounted.path());
    let node = TestNode::start_with(&[
        "--policy",
        policy.to_str().unwrap(),
        "--hide-from-containers",
        mounted.path().to_str().unwrap(),
    ]);
    let out = report_dir();
    let report = probe_the_nodes_files(&node, &[&policy, &mounted_key], out.path()).await;
    assert_eq!(
        report,
        format!("read what it needs\nuid {}\n", test_uid()),
        "the container reached the node's files"
    );
    assert!(!node.data_dir().join("planted").exists());
}

/// As root, reefd can also run containers as an unprivileged user, who then owns the
/// container's certificate and key and nothing else of the node's.
#[tokio::test]
async fn as_root_a_node_runs_containers_as_the_user_it_is_told() {
    if test_uid() != 0 {
        eprintln!("skipped: the tests do not run as root, so reefd cannot switch user");
        return;
    }
    let node = TestNode::start_with(&["--container-user", "nobody"]);
    let out = report_dir();
    let report = probe_the_nodes_files(&node, &[], out.path()).await;
    assert_eq!(report, "read what it needs\nuid 65534\n", "{report}");
}

/// reefd as an unprivileged user: the containers run as that same user, so file
/// permissions keep nothing from them, and Landlock alone hides DATA.
#[tokio::test]
async fn under_an_unprivileged_node_a_container_reads_no_key_either() {
    if test_uid() != 0 {
        eprintln!("skipped: creating a node of another user needs root");
        return;
    }
    let policy_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(policy_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = policy_file(policy_dir.path());
    std::os::unix::fs::chown(&policy, Some(65534), Some(65534)).unwrap();
    let node = TestNode::start_as_user(65534, 65534, &["--policy", policy.to_str().unwrap()]);
    let out = report_dir();
    let report = probe_the_nodes_files(&node, &[&policy], out.path()).await;
    assert_eq!(report, "read what it needs\nuid 65534\n", "{report}");
}

/// The test's own uid.
fn test_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether a caller holding `identity` gets past the node's door: an RPC that needs a
/// certificate answers it (List: a container sees its own subtree), or the door says
/// why not.
async fn door_answers(node: &TestNode, identity: &(PathBuf, PathBuf)) -> Result<(), tonic::Status> {
    let channel = node
        .options_as(Some(identity.clone()))
        .connect()
        .await
        .expect("TLS connects: the door answers per call");
    SupervisorClient::new(channel)
        .list(wire::ListRequest::default())
        .await
        .map(drop)
}

/// Hole 10: a destroyed container's certificate still authenticated its alias, so a
/// copy of it (in a backup, a log, a leaked container image) outlived the container.
/// Now the node records the destruction durably and refuses what it issued before, also
/// after its own restart; the alias created again gets a certificate that works.
#[tokio::test]
async fn a_destroyed_containers_certificate_authenticates_no_one() {
    let mut node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let web = || wire::ContainerDefinition {
        alias: "web".to_owned(),
        kind: demo_process(&["echo"]),
        ..Default::default()
    };
    reef_tests::create(&mut supervisor, web()).await.unwrap();
    // What an attacker copied while web ran.
    let copies = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let to = copies.path().join(name);
        std::fs::copy(node.data_dir().join("tls/containers").join(name), &to).unwrap();
        to
    };
    let copied = (copy("web.pem"), copy("web-key.pem"));
    door_answers(&node, &copied)
        .await
        .expect("web's certificate works while web lives");

    supervisor
        .destroy(wire::DestroyRequest {
            alias: "web".into(),
            flags: 0,
        })
        .await
        .expect("destroy");
    let refused = door_answers(&node, &copied)
        .await
        .expect_err("a destroyed container's certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("destroyed"), "{refused:?}");
    assert!(!node.data_dir().join("tls/containers/web-key.pem").exists());

    node.process().0.kill().unwrap();
    node.process().0.wait().unwrap();
    node.restart();
    let refused = door_answers(&node, &copied)
        .await
        .expect_err("after the node's restart");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let mut supervisor = node.supervisor().await;
    reef_tests::create(&mut supervisor, web()).await.unwrap();
    let reissued = (
        node.data_dir().join("tls/containers/web.pem"),
        node.data_dir().join("tls/containers/web-key.pem"),
    );
    door_answers(&node, &reissued)
        .await
        .expect("web created again has a certificate that works");
    assert!(
        door_answers(&node, &copied).await.is_err(),
        "and the old one stays refused"
    );
}

/// The sandbox's launcher is the node's own executable: a rebuild or an upgrade that
/// replaces the file while the node runs must not keep its containers from starting.
#[tokio::test]
async fn containers_start_in_the_sandbox_after_the_nodes_executable_is_gone() {
    let (uid, gid) = (test_uid(), nix::unistd::getegid().as_raw());
    let node = TestNode::start_as_user(uid, gid, &[]);
    std::fs::remove_file(node.executable()).unwrap();
    let out = report_dir();
    let report = probe_the_nodes_files(&node, &[], out.path()).await;
    assert_eq!(report, format!("read what it needs\nuid {uid}\n"));
}
