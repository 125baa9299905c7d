//! Many nodes: a root and two children, each in a network namespace of its own, linked
//! over TLS. Routing across the tree, `create --node`, `ps` across nodes, a partition
//! that heals with nothing lost, one that outlasts the partition tolerance, and a child
//! node killed and restarted.
//!
//! Needs root (network namespaces, iptables). Where that is not available the test says
//! SKIPPED on stderr and returns; with `REEF_REQUIRE_NETNS` set (CI), it fails instead.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use reef_proto::{
    ContainerDefinition, ContainerInfo, DeadLettersRequest, ListRequest,
    supervisor_client::SupervisorClient,
};
use reef_sdk::Client;
use reef_tests::{DelayProxy, NetLab, STARTUP, TestNode, binary, create, demo_process, eventually};
use tonic::transport::Channel;

const REQUEST: Duration = Duration::from_secs(2);
const TOLERANCE_MS: &str = "10000";

fn lab(hosts: &[&str]) -> Option<NetLab> {
    match NetLab::create(hosts) {
        Ok(lab) => Some(lab),
        Err(reason) if std::env::var_os("REEF_REQUIRE_NETNS").is_some() => {
            panic!("REEF_REQUIRE_NETNS is set but network namespaces are not usable: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: this test needs network namespaces and iptables (root): {reason}");
            None
        }
    }
}

/// A node named `name` in the lab host of the same name, with an identity from the
/// cluster CA in `cluster`, joined to `parent` if given.
fn node(lab: &NetLab, cluster: &Path, name: &str, parent: Option<&TestNode>) -> TestNode {
    let mut flags = vec![
        "--name".to_owned(),
        name.to_owned(),
        "--heartbeat-interval-ms".to_owned(),
        "200".to_owned(),
        "--heartbeat-timeout-ms".to_owned(),
        "1000".to_owned(),
        "--partition-tolerance-ms".to_owned(),
        TOLERANCE_MS.to_owned(),
    ];
    flags.extend(parent.map(TestNode::join_flags).unwrap_or_default());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ip = lab.ip(name).to_string();
    TestNode::start_prepared(Some(&lab.ns(name)), &ip, &flags, |data| {
        let (cluster, data) = (cluster.as_os_str(), data.as_os_str());
        run_reef(&[
            "ca".as_ref(),
            "issue".as_ref(),
            name.as_ref(),
            "--ca-dir".as_ref(),
            cluster,
            "--data-dir".as_ref(),
            data,
        ]);
    })
}

/// Runs `reef ARGS…`, which must succeed, and returns what it printed.
fn run_reef(args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(binary("reef"))
        .args(args)
        .output()
        .expect("reef runs");
    assert!(
        output.status.success(),
        "reef {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn listed(supervisor: &SupervisorClient<Channel>, alias: &str) -> Option<ContainerInfo> {
    supervisor
        .clone()
        .list(ListRequest {})
        .await
        .ok()?
        .into_inner()
        .containers
        .into_iter()
        .find(|c| c.alias == alias)
}

/// Waits until `alias` is listed by `supervisor` and `check` holds for it.
async fn wait_listed(
    supervisor: &SupervisorClient<Channel>,
    alias: &str,
    what: &str,
    check: impl Fn(&ContainerInfo) -> bool,
) -> ContainerInfo {
    eventually(&format!("{alias}: {what}"), STARTUP, || async {
        listed(supervisor, alias).await.filter(|c| check(c))
    })
    .await
}

/// The count `counter-b` answers once it reaches `expected`, asked from `client`.
async fn wait_count(client: &Client, expected: u64) {
    let expected = expected.to_string();
    let seen = eventually(
        &format!("counter-b to count {expected}"),
        STARTUP,
        || async {
            let answer = client.request("counter-b", "?", REQUEST).await.ok()?;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            // Past the expected count means something arrived twice: stop and report.
            (answer.parse::<u64>().ok()? >= expected.parse::<u64>().ok()?).then_some(answer)
        },
    )
    .await;
    assert_eq!(seen, expected, "nothing lost and nothing twice");
}

/// An administrator of the whole cluster (`reef ca client operator --admin`), issued by
/// the cluster CA in `cluster`: its certificate and key files.
fn cluster_operator(cluster: &Path) -> (PathBuf, PathBuf) {
    let operator = reef_tls::issue_client(cluster, &reef_tls::admin_identity("operator"))
        .expect("the cluster CA issues an administrator");
    let (cert, key) = (
        cluster.join("operator.pem"),
        cluster.join("operator-key.pem"),
    );
    operator.write(&cert, &key).unwrap();
    (cert, key)
}

/// `reef --addr NODE --ca CA ARGS…`, which must succeed.
fn reef(node: &TestNode, args: &[&str]) -> String {
    let addr = node.addr.to_string();
    let mut all = vec![
        "--addr".as_ref(),
        addr.as_ref(),
        "--ca".as_ref(),
        node.ca.as_os_str(),
    ];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    run_reef(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_route_across_partitions_and_a_node_restart() {
    let Some(lab) = lab(&["root", "a", "b"]) else {
        return;
    };
    let cluster = tempfile::tempdir().unwrap();
    run_reef(&["ca".as_ref(), "init".as_ref(), cluster.path().as_os_str()]);
    let root = node(&lab, cluster.path(), "root", None);
    let a = node(&lab, cluster.path(), "a", Some(&root));
    let mut b = node(&lab, cluster.path(), "b", Some(&root));
    let on_root = root.supervisor().await;
    let on_a = a.supervisor().await;
    wait_listed(&on_root, "nodes/a", "linked", |c| c.attached).await;
    wait_listed(&on_root, "nodes/b", "linked", |c| c.attached).await;

    // Created on a through root by the cluster's operator: the call goes down the tree.
    let demo = binary("reef-demo").display().to_string();
    let (cert, key) = cluster_operator(cluster.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let created = reef(
        &root,
        &[
            "--cert", &cert, "--key", &key, "create", "--node", "a", "echo-a", "--", &demo, "echo",
        ],
    );
    assert!(created.starts_with("created echo-a"), "{created}");
    let definition = ContainerDefinition {
        alias: "counter-b".to_owned(),
        kind: demo_process(&["counter"]),
        ..Default::default()
    };
    create(&mut b.supervisor().await, definition)
        .await
        .expect("counter-b on b");
    let echo = wait_listed(&on_root, "echo-a", "announced by a", |c| c.attached).await;
    assert_eq!(echo.labels.get("reef.node").map(String::as_str), Some("a"));
    assert_eq!(echo.parent, "nodes/a");
    wait_listed(&on_root, "counter-b", "announced by b", |c| c.attached).await;
    let ps = reef(&root, &["ps"]);
    let row = |alias: &str| {
        ps.lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&alias))
            .unwrap_or_else(|| panic!("reef ps on root lists {alias}:\n{ps}"))
    };
    assert_eq!(row("echo-a")[1], "a", "{ps}");
    assert_eq!(row("counter-b")[1], "b", "{ps}");
    assert_eq!(row("nodes/a")[1], "a", "{ps}");

    // b → root → a and back; a → root → b.
    let client_b = Client::connect(&b.options()).await.expect("client on b");
    let reply = client_b
        .request("echo-a", "across the tree", REQUEST)
        .await
        .expect("echo-a answers a caller on b");
    assert_eq!(&reply[..], b"across the tree");
    let client_a = Client::connect(&a.options()).await.expect("client on a");
    for i in 0..50 {
        client_a.send("counter-b", format!("m{i}")).await.unwrap();
    }
    wait_count(&client_a, 50).await;
    let unknown = client_a
        .request("nobody", "?", REQUEST)
        .await
        .expect_err("nobody has that alias anywhere");
    assert!(
        unknown
            .to_string()
            .contains("no container is registered as \"nobody\""),
        "{unknown}"
    );
    let counter_pid = listed(&b.supervisor().await, "counter-b")
        .await
        .unwrap()
        .pid;

    // A deadline across nodes: the caller's node answers DEADLINE_EXCEEDED naming the
    // addressee, and the handler on the other node hears the CANCEL.
    let (events, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(reef_sdk::run(
        reef_sdk::ContainerOptions::new("patient-a", a.options()),
        Patient { events },
    ));
    wait_listed(&on_root, "patient-a", "announced by a", |c| c.attached).await;
    let late = client_b
        .request("patient-a", "?", Duration::from_millis(300))
        .await
        .expect_err("patient-a never answers in time");
    assert_eq!(late.code(), tonic::Code::DeadlineExceeded, "{late}");
    assert!(late.to_string().contains("\"patient-a\""), "{late}");
    for expected in ["started", "cancelled"] {
        let event = tokio::time::timeout(STARTUP, heard.recv()).await.unwrap();
        assert_eq!(event, Some(expected));
    }

    // A short partition between a and root: both ends notice (child and parent
    // unresponsive), what a sends meanwhile waits, and arrives once after it heals.
    lab.partition("a", "root");
    for i in 0..20 {
        client_a.send("counter-b", format!("p{i}")).await.unwrap();
    }
    wait_listed(&on_root, "nodes/a", "detached by root", |c| !c.attached).await;
    wait_listed(&on_a, "nodes/parent", "detached by a", |c| !c.attached).await;
    lab.heal("a");
    wait_listed(&on_root, "nodes/a", "linked again", |c| c.attached).await;
    wait_count(&client_a, 70).await;
    let counter = listed(&b.supervisor().await, "counter-b").await.unwrap();
    assert_eq!(counter.pid, counter_pid, "the partition restarted nothing");
    let everywhere = on_root
        .clone()
        .list(ListRequest {})
        .await
        .unwrap()
        .into_inner();
    let copies = everywhere
        .containers
        .iter()
        .filter(|c| c.alias == "counter-b");
    assert_eq!(copies.count(), 1);

    // A partition longer than the tolerance: what waited for b becomes dead letters
    // on root, with the reason; nothing of it arrives late.
    lab.partition("b", "root");
    wait_listed(&on_root, "nodes/b", "detached by root", |c| !c.attached).await;
    for i in 0..5 {
        client_a
            .send("counter-b", format!("late{i}"))
            .await
            .unwrap();
    }
    let expired = eventually("5 dead letters for the partitioned b", STARTUP * 2, || {
        let mut on_root = on_root.clone();
        async move {
            let letters = on_root
                .dead_letters(DeadLettersRequest { limit: 0 })
                .await
                .ok()?
                .into_inner()
                .letters;
            let expired: Vec<_> = letters
                .into_iter()
                .filter(|l| l.payload_preview.starts_with(b"late"))
                .collect();
            (expired.len() == 5).then_some(expired)
        }
    })
    .await;
    for letter in &expired {
        assert!(
            letter
                .reason
                .contains("the node behind link nodes/b was unreachable for more than 10s"),
            "{}",
            letter.reason
        );
    }
    lab.heal("b");
    wait_listed(&on_root, "nodes/b", "linked again", |c| c.attached).await;
    wait_count(&client_a, 70).await;

    // b dies; what is sent to it meanwhile waits on root for its next start, which
    // adopts the counter process that kept running and tells root again.
    b.process().0.kill().unwrap();
    let _ = b.process().0.wait();
    wait_listed(&on_root, "nodes/b", "lost", |c| !c.attached).await;
    for i in 0..3 {
        client_a.send("counter-b", format!("d{i}")).await.unwrap();
    }
    b.restart();
    wait_listed(&on_root, "nodes/b", "back", |c| c.attached).await;
    wait_count(&client_a, 73).await;
    let reply = client_b_after_restart(&b).await;
    assert_eq!(&reply[..], b"again");
}

/// Reports when a request starts and when its caller gives up; never answers first.
struct Patient {
    events: tokio::sync::mpsc::UnboundedSender<&'static str>,
}

impl reef_sdk::Handler for Patient {
    async fn on_request(
        &mut self,
        _: &reef_sdk::Context,
        request: reef_sdk::Message,
    ) -> Result<bytes::Bytes, reef_sdk::HandlerError> {
        let _ = self.events.send("started");
        request.cancellation.cancelled().await;
        let _ = self.events.send("cancelled");
        Err(reef_sdk::HandlerError::new(
            "Cancelled",
            "the caller gave up",
        ))
    }
}

/// A new client on the restarted b reaches echo-a on a.
async fn client_b_after_restart(b: &TestNode) -> bytes::Bytes {
    let client = Client::connect(&b.options()).await.expect("client on b");
    eventually("echo-a from the restarted b", STARTUP, || async {
        client.request("echo-a", "again", REQUEST).await.ok()
    })
    .await
}

/// Joining a parent takes a certificate from the cluster's CA that names the node:
/// none, one for another node, or one from a CA the cluster does not know is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_prove_their_name_with_a_certificate_from_the_cluster_ca() {
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let root = TestNode::start_prepared(None, "127.0.0.1", &["--name", "root"], |data| {
        reef_tls::issue_node_ca(cluster.path(), "root", &data.join("tls")).unwrap();
    });
    let identity = |name: &str, cluster_ca: bool| {
        let dir = tempfile::tempdir().unwrap();
        if cluster_ca {
            reef_tls::issue_node_ca(cluster.path(), name, dir.path()).unwrap();
        }
        let pki = reef_tls::Pki::load_or_create(dir.path(), name, &["localhost".into()]).unwrap();
        pki.server().clone()
    };
    let root_ca = std::fs::read_to_string(&root.ca).unwrap();
    let join = async |certificate: Option<&reef_tls::CertifiedKey>, node: &str| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&root_ca))
            .domain_name("localhost");
        if let Some(certificate) = certificate {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &certificate.cert_pem,
                &certificate.key_pem,
            ));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", root.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        SupervisorClient::new(channel)
            .join(reef_proto::JoinRequest {
                node: node.to_owned(),
                session: "s1".to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    };
    let a = identity("a", true);
    let joined = join(Some(&a), "a").await.expect("a joins as a");
    assert_eq!(joined.alias, "nodes/a");
    assert_eq!(joined.node, "root");

    let impersonation = join(Some(&a), "b").await.expect_err("a cannot join as b");
    assert_eq!(impersonation.code(), tonic::Code::PermissionDenied);
    assert!(
        impersonation.message().contains("reef://node/b"),
        "{}",
        impersonation.message()
    );
    let anonymous = join(None, "a").await.expect_err("no certificate, no link");
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let stranger = identity("a", false);
    let foreign = join(Some(&stranger), "a").await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA is refused in the handshake"
    );
    let listed = listed(&root.supervisor().await, "nodes/b").await;
    assert!(listed.is_none(), "no link was made for b");
}

/// A chain root ← a ← b on loopback (no namespaces needed). `create --node b` sent to
/// root goes down two levels; a burst from root to b crosses both links, with small
/// mailboxes so that backpressure reaches back from the receiver through both links to
/// the sender. Every message arrives once and nothing becomes a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_is_created_and_reached_through_two_links() {
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    // b decides who may create there, also for calls forwarded through root and a.
    let policy = cluster.path().join("b-policy.toml");
    std::fs::write(
        &policy,
        "[[policy]]\nname = \"ops-on-b\"\nwho = [\"client:ops\"]\nmay = [\"create\"]\non = [\"ops-*\"]\n",
    )
    .unwrap();
    let policy = policy.display().to_string();
    let start = |name: &str, parent: Option<&TestNode>| {
        let mut flags = vec!["--mailbox-capacity", "256"];
        if name == "b" {
            flags.extend(["--policy", policy.as_str()]);
        }
        TestNode::start_in_cluster(cluster.path(), name, parent, &flags)
    };
    let root = start("root", None);
    let a = start("a", Some(&root));
    let b = start("b", Some(&a));
    let on_root = root.supervisor().await;
    // b's link is announced to root by a, as one of a's containers.
    let b_link = wait_listed(&on_root, "nodes/b", "announced by a", |c| c.attached).await;
    assert_eq!(b_link.parent, "nodes/a");
    let definition = ContainerDefinition {
        alias: "counter-b".to_owned(),
        kind: demo_process(&["counter"]),
        ..Default::default()
    };
    // Root's own admin.pem is root's alone: the cluster's operator acts below it.
    let as_operator = SupervisorClient::new(
        root.options_as(Some(cluster_operator(cluster.path())))
            .connect()
            .await
            .unwrap(),
    );
    let created = as_operator
        .clone()
        .create(reef_proto::CreateRequest {
            definition: Some(definition),
            node: "b".to_owned(),
            ..Default::default()
        })
        .await
        .expect("root forwards the create through a to b")
        .into_inner();
    assert!(created.created);
    assert!(
        listed(&b.supervisor().await, "counter-b").await.is_some(),
        "counter-b lives on b"
    );
    let nowhere = as_operator
        .clone()
        .create(reef_proto::CreateRequest {
            definition: Some(ContainerDefinition {
                alias: "x".to_owned(),
                kind: demo_process(&["counter"]),
                ..Default::default()
            }),
            node: "nowhere".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("no such node");
    assert_eq!(nowhere.code(), tonic::Code::NotFound, "{nowhere:?}");
    // A client of the cluster, calling root: b checks its own policy for the client,
    // whom root and a say they act for.
    let ops = reef_tls::issue_client(cluster.path(), &reef_tls::client_identity("ops")).unwrap();
    let (cert, key) = (
        cluster.path().join("ops.pem"),
        cluster.path().join("ops-key.pem"),
    );
    ops.write(&cert, &key).unwrap();
    let mut as_ops =
        SupervisorClient::new(root.options_as(Some((cert, key))).connect().await.unwrap());
    let create_on_b = |alias: &str| reef_proto::CreateRequest {
        definition: Some(ContainerDefinition {
            alias: alias.to_owned(),
            kind: demo_process(&["counter"]),
            ..Default::default()
        }),
        node: "b".to_owned(),
        ..Default::default()
    };
    as_ops
        .create(create_on_b("ops-1"))
        .await
        .expect("b's policy lets client:ops create ops-*");
    let denied = as_ops
        .create(create_on_b("other"))
        .await
        .expect_err("denied on b");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("client:ops create \"other\""),
        "{denied:?}"
    );
    // Lifecycle calls and logs for a container below go down to its node, hop by hop,
    // and that node's policy decides (ops may only create there).
    wait_listed(&on_root, "ops-1", "announced", |c| c.attached).await;
    let denied = as_ops
        .stop(reef_proto::StopRequest {
            alias: "ops-1".into(),
            flags: 0,
        })
        .await
        .expect_err("b's policy does not let ops stop");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let mut as_admin = as_operator.clone();
    as_admin
        .stop(reef_proto::StopRequest {
            alias: "ops-1".into(),
            flags: 0,
        })
        .await
        .expect("the cluster's operator stops ops-1 on b");
    let on_b = b.supervisor().await;
    let state = |c: &ContainerInfo| c.supervised.as_ref().map(|s| s.state);
    let stopped = listed(&on_b, "ops-1").await.expect("ops-1 on b");
    assert_eq!(
        state(&stopped),
        Some(reef_proto::ContainerState::Stopped as i32)
    );
    as_admin
        .start(reef_proto::StartRequest {
            alias: "ops-1".into(),
        })
        .await
        .expect("started again through two links");
    as_admin
        .logs(reef_proto::LogsRequest {
            alias: "ops-1".into(),
            ..Default::default()
        })
        .await
        .expect("b serves ops-1's log to root");
    as_admin
        .destroy(reef_proto::DestroyRequest {
            alias: "ops-1".into(),
            flags: 0,
        })
        .await
        .expect("destroyed on b");
    assert!(
        listed(&on_b, "ops-1").await.is_none(),
        "ops-1 is gone from b"
    );
    let counter = wait_listed(&on_root, "counter-b", "announced", |c| c.attached).await;
    assert_eq!(
        counter.labels.get("reef.node").map(String::as_str),
        Some("b")
    );
    let client = Client::connect(&root.options())
        .await
        .expect("client on root");
    const BURST: u64 = 100_000;
    for i in 0..BURST {
        client.send("counter-b", format!("{i}")).await.unwrap();
    }
    wait_count(&client, BURST).await;
    let letters = reef_tests::dead_letters(&on_root).await;
    assert_eq!(letters.total, 0, "{:?}", letters.letters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_delays_answers_but_loses_nothing() {
    // Each way, between edge and root (a TCP proxy: this kernel has no netem).
    const DELAY: Duration = Duration::from_millis(50);
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let start = |name: &str, extra: &[&str]| {
        let mut flags = vec!["--name", name];
        flags.extend_from_slice(extra);
        TestNode::start_prepared(None, "127.0.0.1", &flags, |data| {
            reef_tls::issue_node_ca(cluster.path(), name, &data.join("tls")).unwrap();
        })
    };
    let root = start("root", &[]);
    let proxy = DelayProxy::start(root.addr, DELAY).await;
    let (via_proxy, root_ca) = (proxy.addr.to_string(), root.ca.display().to_string());
    let edge = start("edge", &["--join", &via_proxy, "--join-ca", &root_ca]);
    let _echo = edge.spawn_demo("echo-edge", &["echo"]).await;
    let _counter = edge.spawn_demo("counter-b", &["counter"]).await;
    let on_root = root.supervisor().await;
    for alias in ["echo-edge", "counter-b"] {
        wait_listed(&on_root, alias, "announced by edge", |c| c.attached).await;
    }

    let client = Client::connect(&root.options()).await.unwrap();
    let started = std::time::Instant::now();
    let reply = client.request("echo-edge", "slow", REQUEST).await.unwrap();
    assert_eq!(&reply[..], b"slow");
    let round_trip = started.elapsed();
    assert!(
        round_trip >= 2 * DELAY,
        "answered in {round_trip:?}, under the link's delay"
    );
    // A deadline shorter than the round trip is kept by root, the caller's node.
    let late = client
        .request("echo-edge", "late", DELAY)
        .await
        .expect_err("the answer cannot come back in time");
    assert_eq!(late.code(), reef_sdk::Code::DeadlineExceeded, "{late:?}");
    // Sends pipeline over the slow link: all arrive, once each.
    for i in 0..2_000 {
        client.send("counter-b", format!("{i}")).await.unwrap();
    }
    wait_count(&client, 2_000).await;
    let link = listed(&on_root, "nodes/edge").await.expect("edge's link");
    assert!(
        link.attached,
        "the delay stays within the keepalive tolerance"
    );
    let letters = reef_tests::dead_letters(&on_root).await;
    // The one late request's answer arrives after root gave up on it.
    assert!(letters.total <= 1, "{:?}", letters.letters);
}

/// The certificate a fresh TLS connection to `node` is served (the leaf, DER).
async fn served_certificate(node: &TestNode) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let connector = reef_tests::tls_connector(&node.ca);
    let tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// `reef ca issue` run again for a running node: the node takes up its new identity
/// without a restart (new handshakes get a certificate from the new intermediate), and
/// a node joining afterwards links to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_up_a_reissued_identity_without_a_restart() {
    let cluster = tempfile::tempdir().unwrap();
    reef_tls::init_cluster_ca(cluster.path()).unwrap();
    let issue = |name: &str, data: &Path| {
        reef_tls::issue_node_ca(cluster.path(), name, &data.join("tls")).unwrap();
    };
    let mut root = TestNode::start_prepared(None, "127.0.0.1", &["--name", "root"], |data| {
        issue("root", data)
    });
    let before = served_certificate(&root).await;
    issue("root", root.data_dir());
    let after = eventually(
        "a certificate from the new intermediate",
        STARTUP,
        || async {
            let served = served_certificate(&root).await;
            (served != before).then_some(served)
        },
    )
    .await;
    let stored = std::fs::read_to_string(root.data_dir().join("tls/node.pem")).unwrap();
    use rustls::pki_types::pem::PemObject as _;
    let stored = rustls::pki_types::CertificateDer::pem_slice_iter(stored.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(after, stored.to_vec(), "the node serves what it stored");
    assert!(
        root.process().0.try_wait().unwrap().is_none(),
        "the same reefd process"
    );
    let mut flags = vec!["--name".to_owned(), "a".to_owned()];
    flags.extend(root.join_flags());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let _a = TestNode::start_prepared(None, "127.0.0.1", &flags, |data| issue("a", data));
    wait_listed(&root.supervisor().await, "nodes/a", "linked", |c| {
        c.attached
    })
    .await;
}
