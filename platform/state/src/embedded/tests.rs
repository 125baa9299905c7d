//! The embedded backend against a real redb file and WAL in a temp dir.

use tokio_stream::StreamExt;

use super::*;

fn put(namespace: &Namespace, key: &str, value: &str) -> Txn {
    Txn::new(
        namespace.clone(),
        vec![Op::Put {
            key: key.to_owned(),
            value: Bytes::from(value.to_owned()),
            owner: None,
        }],
    )
}

/// A watcher that does not read while more than the broadcast holds is committed
/// falls back to history and still gets every revision, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_watcher_catches_up_from_history() {
    let store = Embedded::open(EmbeddedConfig {
        path: None,
        history: 100_000,
    })
    .unwrap();
    let ns = Namespace::new("lag").unwrap();
    let other = Namespace::new("other").unwrap();
    let mut watching = store.watch(&ns, "k", None).await.unwrap();
    let writes = LIVE_BATCHES as u64 * 2 + 10;
    for i in 0..writes {
        let namespace = if i % 10 == 9 { &other } else { &ns };
        store
            .txn(put(namespace, &format!("k{i}"), "v"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < (writes - writes / 10) as usize {
        let batch = watching.events.next().await.unwrap().unwrap();
        seen.extend(
            batch
                .events
                .iter()
                .map(|e| (e.namespace.clone(), e.kv.mod_revision)),
        );
    }
    let expected: Vec<_> = (1..=writes)
        .filter(|r| r % 10 != 0)
        .map(|r| (ns.clone(), r))
        .collect();
    assert_eq!(seen, expected);
}

/// The log is replayed over a store whose last durable commit is older: a copy of
/// the files taken while the store runs is what a crash would leave on disk.
#[tokio::test]
async fn the_log_replays_what_redb_did_not_make_durable() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let ns = Namespace::new("ns").unwrap();
    let store = Embedded::open(EmbeddedConfig::new(dir.path().join("state.redb"))).unwrap();
    for i in 0..100 {
        store
            .txn(put(&ns, &format!("k{i}"), &i.to_string()))
            .await
            .unwrap();
    }
    let deleted = Txn::new(
        ns.clone(),
        vec![Op::DeletePrefix {
            prefix: "k9".into(),
        }],
    );
    store.txn(deleted).await.unwrap();
    for file in ["state.redb", "state.wal"] {
        std::fs::copy(dir.path().join(file), crashed.path().join(file)).unwrap();
    }
    drop(store);

    let store = Embedded::open(EmbeddedConfig::new(crashed.path().join("state.redb"))).unwrap();
    let (kv, revision) = store.get(&ns, "k42").await.unwrap();
    assert_eq!(kv.unwrap().value, "42");
    assert_eq!(revision, 101);
    assert!(store.get(&ns, "k95").await.unwrap().0.is_none());
    let mut history = store.watch(&ns, "", Some(1)).await.unwrap().events;
    assert_eq!(history.next().await.unwrap().unwrap().revision, 1);
}
