//! `reef.v1.State` against real reefd processes: one conformance suite run on the embedded
//! store and on a real etcd, durability across SIGKILL, watch resume across a node
//! restart, compaction, replicas and keys bound to a container's life.

use std::{collections::BTreeMap, time::Duration};

use reef_proto::{self as wire, state_client::StateClient as Raw};
use reef_sdk::{
    Client,
    state::{Change, Replica, StateClient},
};
use reef_tests::{LocalEtcd, STARTUP, TestNode, eventually};
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};

mod conformance;

use conformance::conformance;

async fn raw(node: &TestNode) -> Raw<Channel> {
    StateClient::connect(&node.options())
        .await
        .expect("connect")
        .raw()
}

/// Polls until the node's state backend answers (etcd elects itself after it listens).
async fn wait_for_state(state: &Raw<Channel>) {
    eventually("the state backend to answer", STARTUP, || {
        let mut state = state.clone();
        async move {
            state
                .get(wire::GetRequest {
                    namespace: "ready".into(),
                    key: "probe".into(),
                })
                .await
                .ok()
        }
    })
    .await;
}

fn put(namespace: &str, key: &str, value: &str) -> wire::PutRequest {
    wire::PutRequest {
        namespace: namespace.into(),
        key: key.into(),
        value: value.to_owned().into(),
        ..Default::default()
    }
}

fn txn_put(key: &str, value: &str) -> wire::TxnOp {
    wire::TxnOp {
        op: Some(wire::txn_op::Op::Put(wire::TxnPut {
            key: key.into(),
            value: value.to_owned().into(),
            owner: String::new(),
        })),
    }
}

async fn get(state: &mut Raw<Channel>, namespace: &str, key: &str) -> Option<wire::KeyValue> {
    state
        .get(wire::GetRequest {
            namespace: namespace.into(),
            key: key.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .kv
}

fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) -> Status {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} should mention {needle:?}",
        status.message()
    );
    status
}

/// Reads responses until `count` events have arrived.
async fn next_events(
    stream: &mut tonic::Streaming<wire::WatchKeysResponse>,
    count: usize,
) -> Vec<wire::WatchEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch events arrive")
            .expect("the watch continues")
            .expect("watch response");
        events.extend(response.events);
    }
    events
}

async fn watch(
    state: &mut Raw<Channel>,
    namespace: &str,
    prefix: &str,
    start: i64,
) -> Result<(tonic::Streaming<wire::WatchKeysResponse>, i64), Status> {
    let mut stream = state
        .watch(wire::WatchKeysRequest {
            namespace: namespace.into(),
            prefix: prefix.into(),
            start_revision: start,
        })
        .await?
        .into_inner();
    // The first response says where the watch is established; errors for the start
    // revision may come instead of it.
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::unavailable("the watch ended at once"))??;
    assert!(
        first.events.is_empty(),
        "the first response carries no events"
    );
    Ok((stream, first.revision))
}

/// Every page of a listing, following the page tokens; page `keys_only_page` (counted
/// from 0), if any, asks for keys only.
async fn list_pages(
    state: &mut Raw<Channel>,
    mut request: wire::ListKeysRequest,
    keys_only_page: Option<usize>,
) -> Vec<wire::ListKeysResponse> {
    let mut pages = Vec::new();
    loop {
        request.keys_only = keys_only_page == Some(pages.len());
        let page = state
            .list(request.clone())
            .await
            .expect("list")
            .into_inner();
        let next = page.next_page_token.clone();
        pages.push(page);
        if next.is_empty() {
            return pages;
        }
        request.page_token = next;
    }
}

/// The keys of a listing's pages, in order.
fn keys_of(pages: &[wire::ListKeysResponse]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|page| page.kvs.iter().map(|kv| kv.key.clone()))
        .collect()
}

fn key_of(event: &wire::WatchEvent) -> (wire::watch_event::Kind, String, i64) {
    let kv = event.kv.as_ref().expect("event kv");
    (event.kind(), kv.key.clone(), kv.mod_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_conforms() {
    let node = TestNode::start();
    conformance(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_backend_conforms() {
    let etcd = LocalEtcd::start().unwrap_or_else(|why| panic!("{why}"));
    let node = TestNode::start_with(&["--etcd", &etcd.endpoint]);
    conformance(&node).await;
}

/// etcd over mutual TLS, with a dead endpoint first in the list: the node moves on to
/// the endpoint that answers; without a client certificate etcd refuses it, and the
/// node says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_backend_speaks_mutual_tls_to_a_list_of_endpoints() {
    let certs = tempfile::tempdir().unwrap();
    reef_tls::Pki::load_or_create(
        certs.path(),
        "etcd",
        &["127.0.0.1".into(), "localhost".into()],
    )
    .expect("certificates");
    let etcd = LocalEtcd::start_tls(certs.path()).unwrap_or_else(|why| panic!("{why}"));
    let file = |name: &str| certs.path().join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("node.pem"), file("node-key.pem"));
    let dead = format!("https://127.0.0.1:{}", reef_tests::unused_port());
    // The dead endpoint first: the node must move on to the one that answers.
    let endpoints = format!("{dead},{}", etcd.endpoint);
    let node = TestNode::start_with(&[
        "--etcd",
        &endpoints,
        "--etcd-ca",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ]);
    let mut state = raw(&node).await;
    wait_for_state(&state).await;
    let (mut events, _) = watch(&mut state, "tls", "", 0).await.expect("watch");
    let written = state
        .put(put("tls", "k", "v"))
        .await
        .expect("put")
        .into_inner();
    let seen = next_events(&mut events, 1).await;
    assert_eq!(key_of(&seen[0]).2, written.revision);
    assert_eq!(get(&mut state, "tls", "k").await.expect("k").value, "v");

    let without_cert = TestNode::start_with(&["--etcd", &etcd.endpoint, "--etcd-ca", &ca]);
    let mut refused = raw(&without_cert).await;
    expect_code(
        refused
            .get(wire::GetRequest {
                namespace: "tls".into(),
                key: "k".into(),
            })
            .await,
        Code::Unavailable,
        "etcd",
    );
}

/// Writers that put counters and transactions that write pairs, while the node is
/// SIGKILLed: after a restart, every acknowledged put is there and every pair is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let mut node = TestNode::start();
    let state = raw(&node).await;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut state = state.clone();
        let acked = acked_tx.clone();
        writers.push(tokio::spawn(async move {
            for n in 1u64.. {
                let written = match writer % 2 {
                    0 => state
                        .put(put("storm", &format!("counter/{writer}"), &n.to_string()))
                        .await
                        .is_ok(),
                    _ => state
                        .txn(wire::TxnRequest {
                            namespace: "storm".into(),
                            compares: Vec::new(),
                            ops: vec![
                                txn_put(&format!("pair/{writer}/{n}/a"), &n.to_string()),
                                txn_put(&format!("pair/{writer}/{n}/b"), &n.to_string()),
                            ],
                        })
                        .await
                        .is_ok_and(|r| r.into_inner().succeeded),
                };
                if !written || acked.send((writer, n)).is_err() {
                    return;
                }
            }
        }));
    }
    drop(acked_tx);
    let mut last_acked = BTreeMap::new();
    while let Some((writer, n)) = acked_rx.recv().await {
        last_acked.insert(writer, n);
        if last_acked.values().sum::<u64>() >= 4000 {
            break;
        }
    }
    node.process().signal(nix::sys::signal::Signal::SIGKILL);
    // Writers stop at their first failed write; what they had acknowledged is counted.
    while let Some((writer, n)) = acked_rx.recv().await {
        last_acked.insert(writer, n);
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let _ = node.process().0.wait();
    node.restart();

    let mut state = raw(&node).await;
    for (writer, acked) in &last_acked {
        if writer % 2 == 0 {
            let stored: u64 = String::from_utf8(
                get(&mut state, "storm", &format!("counter/{writer}"))
                    .await
                    .expect("counter")
                    .value
                    .to_vec(),
            )
            .unwrap()
            .parse()
            .unwrap();
            // One more than acknowledged is allowed: written, but the answer was lost.
            assert!(
                stored == *acked || stored == acked + 1,
                "writer {writer}: acknowledged {acked}, stored {stored}"
            );
        }
    }
    let pairs = StateClient::connect(&node.options())
        .await
        .expect("connect")
        .list_all("storm", "pair/")
        .await
        .expect("list")
        .0;
    let mut whole = BTreeMap::<String, u32>::new();
    for key in pairs.keys() {
        let (pair, _) = key.rsplit_once('/').expect("pair key");
        *whole.entry(pair.to_owned()).or_default() += 1;
    }
    assert!(
        whole.values().all(|&halves| halves == 2),
        "a transaction was half applied"
    );
    for (writer, acked) in &last_acked {
        if writer % 2 == 1 {
            for n in 1..=*acked {
                assert!(
                    whole.contains_key(&format!("pair/{writer}/{n}")),
                    "writer {writer}: acknowledged transaction {n} is missing"
                );
            }
        }
    }
    let total: u64 = last_acked.values().sum();
    assert!(total >= 4000, "only {total} writes were acknowledged");
}

/// A watcher that reconnects after a node restart with its last revision gets every
/// event it missed; a replica follows across the restart on its own; a restarted
/// container gets the snapshot, then the updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_replicas_resume_across_a_node_restart() {
    let mut node = TestNode::start();
    let mut state = raw(&node).await;
    let ns = "resume";
    let mut supervisor = node.supervisor().await;
    reef_tests::create(
        &mut supervisor,
        wire::ContainerDefinition {
            alias: "replica".into(),
            kind: reef_tests::demo_process(&["replica", "--namespace", ns]),
            ..Default::default()
        },
    )
    .await
    .expect("create");

    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let replica = Replica::start(
        StateClient::connect(&node.options())
            .await
            .expect("connect"),
        ns,
        "",
        move |change: &Change| drop(changes_tx.send(change.clone())),
    )
    .await
    .expect("replica");

    let (mut stream, _) = watch(&mut state, ns, "", 0).await.expect("watch");
    let mut written = Vec::new();
    for i in 0..10 {
        let revision = state
            .put(put(ns, &format!("k{i}"), &format!("before-{i}")))
            .await
            .expect("put")
            .into_inner()
            .revision;
        written.push((format!("k{i}"), revision));
    }
    // The watcher reads only part of what was written before the node goes down.
    let seen = next_events(&mut stream, 4).await;
    let mut last_seen = key_of(seen.last().unwrap()).2;
    let mut delivered: Vec<(String, i64)> =
        seen.iter().map(|e| (key_of(e).1, key_of(e).2)).collect();
    drop(stream);

    node.process().signal(nix::sys::signal::Signal::SIGKILL);
    let _ = node.process().0.wait();
    node.restart();
    let mut state = raw(&node).await;
    for i in 0..10 {
        let revision = state
            .put(put(ns, &format!("k{i}"), &format!("after-{i}")))
            .await
            .expect("put after the restart")
            .into_inner()
            .revision;
        written.push((format!("k{i}"), revision));
    }
    let (mut resumed, _) = watch(&mut state, ns, "", last_seen + 1)
        .await
        .expect("resume");
    let missed = next_events(&mut resumed, written.len() - delivered.len()).await;
    for event in &missed {
        let (_, key, revision) = key_of(event);
        assert!(revision > last_seen, "no event twice");
        last_seen = revision;
        delivered.push((key, revision));
    }
    assert_eq!(delivered, written, "every event, in order, once");

    let newest = written.last().unwrap().1 as u64;
    tokio::time::timeout(Duration::from_secs(20), replica.wait_for(newest))
        .await
        .expect("the replica catches up after the restart")
        .expect("replica");
    let values: BTreeMap<_, _> = replica
        .snapshot()
        .into_iter()
        .map(|(k, e)| (k, String::from_utf8(e.value.to_vec()).unwrap()))
        .collect();
    let expected: BTreeMap<_, _> = (0..10)
        .map(|i| (format!("k{i}"), format!("after-{i}")))
        .collect();
    assert_eq!(values, expected);
    let mut callbacks = 0;
    while changes.try_recv().is_ok() {
        callbacks += 1;
    }
    assert!(
        callbacks >= 20,
        "every change reached the callback ({callbacks})"
    );

    // The demo container restarted with the node's adoption or by policy: either way
    // it holds the snapshot and then follows updates.
    let client = Client::connect(&node.options()).await.expect("client");
    let view = |client: Client| async move {
        let reply = client
            .request("replica", "", Duration::from_secs(2))
            .await
            .ok()?;
        Some(String::from_utf8(reply.to_vec()).unwrap())
    };
    let expected_view: String = (0..10).map(|i| format!("k{i}=after-{i}\n")).collect();
    eventually("the replica container's snapshot", STARTUP, || {
        let client = client.clone();
        let expected_view = expected_view.clone();
        async move { view(client).await.filter(|v| v.ends_with(&expected_view)) }
    })
    .await;
    let pid = reef_tests::wait_for_container(&supervisor, "replica", "running", |c| c.pid != 0)
        .await
        .pid;
    reef_tests::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
    state.put(put(ns, "while-down", "1")).await.expect("put");
    reef_tests::wait_for_container(&supervisor, "replica", "restarted", |c| {
        c.pid != 0 && c.pid != pid && c.attached
    })
    .await;
    state.put(put(ns, "after-restart", "2")).await.expect("put");
    let restarted_view = format!("after-restart=2\n{expected_view}while-down=1\n");
    eventually(
        "the restarted container's snapshot and update",
        STARTUP,
        || {
            let client = client.clone();
            let restarted_view = restarted_view.clone();
            async move { view(client).await.filter(|v| v.ends_with(&restarted_view)) }
        },
    )
    .await;
}

/// A node keeping little history refuses a watch from a compacted revision with the
/// oldest revision kept; a replica that was away resynchronises and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_asks_watchers_to_resynchronise() {
    let node = TestNode::start_with(&["--state-history", "50"]);
    let mut state = raw(&node).await;
    let ns = "short";
    for i in 0..200 {
        state
            .put(put(ns, &format!("k{}", i % 20), &i.to_string()))
            .await
            .expect("put");
    }
    let status = expect_code(
        watch(&mut state, ns, "", 1).await,
        Code::OutOfRange,
        "was compacted",
    );
    let first: i64 = status
        .metadata()
        .get("reef-first-revision")
        .expect("first revision")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((120..=151).contains(&first), "history starts at {first}");
    let (mut stream, _) = watch(&mut state, ns, "", first)
        .await
        .expect("watch from first kept");
    let kept = next_events(&mut stream, (201 - first) as usize).await;
    assert_eq!(key_of(&kept[0]).2, first);
}

/// A replica whose last revision was compacted while it was away (a quiet namespace,
/// busy others, a node restart) takes a new snapshot and follows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_resynchronises_when_its_history_was_compacted() {
    let mut node = TestNode::start_with(&["--state-history", "50"]);
    let mut state = raw(&node).await;
    state.put(put("quiet", "a", "1")).await.expect("put");
    state.put(put("quiet", "b", "1")).await.expect("put");
    let replica = Replica::start(
        StateClient::connect(&node.options())
            .await
            .expect("connect"),
        "quiet",
        "",
        |_| {},
    )
    .await
    .expect("replica");
    let deleted = state
        .delete(wire::DeleteRequest {
            namespace: "quiet".into(),
            key: "b".into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner()
        .revision;
    tokio::time::timeout(Duration::from_secs(10), replica.wait_for(deleted as u64))
        .await
        .expect("the replica follows")
        .expect("replica");
    // Other namespaces move the store on far past the 50 revisions it keeps.
    for i in 0..200 {
        state
            .put(put("busy", &format!("k{}", i % 7), "x"))
            .await
            .expect("put");
    }
    node.process().signal(nix::sys::signal::Signal::SIGKILL);
    let _ = node.process().0.wait();
    node.restart();
    let mut state = raw(&node).await;
    let latest = state
        .put(put("quiet", "c", "1"))
        .await
        .expect("put")
        .into_inner()
        .revision;
    tokio::time::timeout(Duration::from_secs(20), replica.wait_for(latest as u64))
        .await
        .expect("the replica catches up after resynchronising")
        .expect("replica");
    let keys: Vec<String> = replica.snapshot().into_keys().collect();
    assert_eq!(keys, ["a", "c"]);
    assert_eq!(
        replica.resynchronisations(),
        1,
        "resuming from a compacted revision resynchronises"
    );
    assert!(replica.stopped().is_none());
}
