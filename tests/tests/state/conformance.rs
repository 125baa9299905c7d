//! The conformance suite both state backends pass: every State RPC, its errors,
//! and bound keys.

use super::*;

/// What every backend must do, through the gRPC API.
pub(super) async fn conformance(node: &TestNode) {
    let mut state = raw(node).await;
    wait_for_state(&state).await;
    let ns = "conformance";

    // Put, get, versions and revisions.
    let first = state
        .put(put(ns, "a", "1"))
        .await
        .expect("put")
        .into_inner();
    assert!(first.previous.is_none());
    let second = state
        .put(put(ns, "a", "2"))
        .await
        .expect("put")
        .into_inner();
    assert!(second.revision > first.revision);
    assert_eq!(second.previous.expect("previous").value, "1");
    let a = get(&mut state, ns, "a").await.expect("a exists");
    assert_eq!(
        (
            a.value.as_ref(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"2"[..], first.revision, second.revision, 2)
    );
    assert!(get(&mut state, ns, "missing").await.is_none());
    assert!(
        get(&mut state, "conformance-other", "a").await.is_none(),
        "namespaces are apart"
    );

    // Compare-and-set.
    let mut stale = put(ns, "a", "3");
    stale.expected_revision = Some(first.revision);
    let status = expect_code(state.put(stale).await, Code::Aborted, "not the expected");
    assert_eq!(
        status
            .metadata()
            .get("reef-current-revision")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some(second.revision.to_string())
    );
    let mut fresh = put(ns, "a", "3");
    fresh.expected_revision = Some(second.revision);
    let third = state
        .put(fresh)
        .await
        .expect("CAS at the current revision")
        .into_inner();
    let mut create_only = put(ns, "a", "x");
    create_only.expected_revision = Some(0);
    expect_code(state.put(create_only).await, Code::Aborted, "\"a\"");
    let mut create_new = put(ns, "b", "1");
    create_new.expected_revision = Some(0);
    state
        .put(create_new)
        .await
        .expect("create-only put of a new key");
    let mut future = put(ns, "a", "x");
    future.expected_revision = Some(third.revision + 1_000);
    expect_code(
        state.put(future).await,
        Code::OutOfRange,
        "ahead of the store",
    );

    // Deletes: one key, nothing, compare-and-delete, a prefix.
    let deleted = state
        .delete(wire::DeleteRequest {
            namespace: ns.into(),
            key: "b".into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let nothing = state
        .delete(wire::DeleteRequest {
            namespace: ns.into(),
            key: "b".into(),
            ..Default::default()
        })
        .await
        .expect("delete of nothing")
        .into_inner();
    assert_eq!(
        (nothing.deleted, nothing.revision),
        (0, deleted.revision),
        "deleting nothing takes no revision"
    );
    expect_code(
        state
            .delete(wire::DeleteRequest {
                namespace: ns.into(),
                key: "a".into(),
                expected_revision: Some(first.revision),
                ..Default::default()
            })
            .await,
        Code::Aborted,
        "not the expected",
    );

    // Listing in pages.
    for i in 0..25 {
        state
            .put(put(ns, &format!("list/{i:02}"), &format!("v{i}")))
            .await
            .expect("put");
    }
    state
        .put(put(ns, "listx", "outside the prefix"))
        .await
        .expect("put");
    let pages = list_pages(
        &mut state,
        wire::ListKeysRequest {
            namespace: ns.into(),
            prefix: "list/".into(),
            limit: 10,
            ..Default::default()
        },
        Some(1),
    )
    .await;
    assert!(pages.iter().all(|page| page.kvs.len() <= 10));
    assert!(
        pages[1].kvs.iter().all(|kv| kv.value.is_empty()),
        "keys only"
    );
    let expected: Vec<String> = (0..25).map(|i| format!("list/{i:02}")).collect();
    assert_eq!(keys_of(&pages), expected);
    assert_eq!(pages.len(), 3);
    let removed = state
        .delete(wire::DeleteRequest {
            namespace: ns.into(),
            key: "list/".into(),
            prefix: true,
            ..Default::default()
        })
        .await
        .expect("delete prefix")
        .into_inner();
    assert_eq!(removed.deleted, 25);
    assert!(
        get(&mut state, ns, "listx").await.is_some(),
        "only the prefix"
    );

    // Large values: pages end by size (4 MiB) and nothing is lost between them.
    let big = vec![b'v'; 1 << 20];
    for i in 0..20 {
        let mut request = put(ns, &format!("big/{i:02}"), "");
        request.value = big.clone().into();
        state.put(request).await.expect("put a 1 MiB value");
    }
    let pages = list_pages(
        &mut state,
        wire::ListKeysRequest {
            namespace: ns.into(),
            prefix: "big/".into(),
            ..Default::default()
        },
        None,
    )
    .await;
    for page in &pages {
        let bytes: usize = page.kvs.iter().map(|kv| kv.value.len()).sum();
        assert!(bytes <= 6 << 20, "a page of {bytes} bytes");
        assert!(page.kvs.iter().all(|kv| kv.value.len() == 1 << 20));
    }
    assert_eq!(
        keys_of(&pages),
        (0..20).map(|i| format!("big/{i:02}")).collect::<Vec<_>>()
    );

    // Transactions: all or nothing under one revision.
    let applied = state
        .txn(wire::TxnRequest {
            namespace: ns.into(),
            compares: vec![
                wire::Compare {
                    key: "a".into(),
                    mod_revision: third.revision,
                },
                wire::Compare {
                    key: "pair/x".into(),
                    mod_revision: 0,
                },
            ],
            ops: vec![txn_put("pair/x", "1"), txn_put("pair/y", "1")],
        })
        .await
        .expect("txn")
        .into_inner();
    assert!(applied.succeeded);
    let x = get(&mut state, ns, "pair/x").await.expect("x");
    let y = get(&mut state, ns, "pair/y").await.expect("y");
    assert_eq!(
        (x.mod_revision, y.mod_revision),
        (applied.revision, applied.revision)
    );
    let refused = state
        .txn(wire::TxnRequest {
            namespace: ns.into(),
            compares: vec![wire::Compare {
                key: "pair/x".into(),
                mod_revision: 0,
            }],
            ops: vec![txn_put("pair/x", "2"), txn_put("pair/z", "2")],
        })
        .await
        .expect("txn")
        .into_inner();
    assert!(!refused.succeeded);
    assert_eq!(refused.current.len(), 1);
    assert_eq!(refused.current[0].mod_revision, applied.revision);
    assert!(
        get(&mut state, ns, "pair/z").await.is_none(),
        "nothing applied"
    );
    expect_code(
        state
            .txn(wire::TxnRequest {
                namespace: ns.into(),
                compares: Vec::new(),
                ops: vec![txn_put("dup", "1"), txn_put("dup", "2")],
            })
            .await,
        Code::InvalidArgument,
        "twice",
    );

    // Watches: live events in order, history from a past revision, prefixes.
    let (mut live, established) = watch(&mut state, ns, "w/", 0).await.expect("watch");
    let w1 = state
        .put(put(ns, "w/1", "one"))
        .await
        .expect("put")
        .into_inner()
        .revision;
    state.put(put(ns, "elsewhere", "x")).await.expect("put");
    let w2 = state
        .put(put(ns, "w/2", "two"))
        .await
        .expect("put")
        .into_inner()
        .revision;
    let wd = state
        .delete(wire::DeleteRequest {
            namespace: ns.into(),
            key: "w/1".into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner()
        .revision;
    use wire::watch_event::Kind::{Delete, Put};
    let seen: Vec<_> = next_events(&mut live, 3).await.iter().map(key_of).collect();
    assert_eq!(
        seen,
        vec![
            (Put, "w/1".to_owned(), w1),
            (Put, "w/2".to_owned(), w2),
            (Delete, "w/1".to_owned(), wd),
        ]
    );
    assert!(established < w1);
    let (mut replay, replay_established) = watch(&mut state, ns, "w/", w1)
        .await
        .expect("watch from history");
    // The first response's revision is safe to resume from: a client that reconnects
    // right after it, from that revision + 1, still gets the whole replay.
    assert_eq!(replay_established, w1 - 1);
    let (mut resumed, _) = watch(&mut state, ns, "w/", replay_established + 1)
        .await
        .expect("resume from the first response");
    let resumed: Vec<_> = next_events(&mut resumed, 3)
        .await
        .iter()
        .map(key_of)
        .collect();
    assert_eq!(resumed, seen, "resuming right after the first response");
    let replayed: Vec<_> = next_events(&mut replay, 3)
        .await
        .iter()
        .map(key_of)
        .collect();
    assert_eq!(
        replayed, seen,
        "a watch from a past revision replays history"
    );
    expect_code(
        watch(&mut state, ns, "", wd + 100).await,
        Code::OutOfRange,
        "ahead of the store",
    );

    // Compaction: a watch from before it is told to resynchronise.
    let compacted = state
        .compact(wire::CompactRequest { revision: w2 })
        .await
        .expect("compact")
        .into_inner();
    assert_eq!(compacted.first_revision, w2);
    let status = expect_code(
        watch(&mut state, ns, "w/", w1).await,
        Code::OutOfRange,
        "resynchronise",
    );
    assert!(status.metadata().get("reef-first-revision").is_some());
    let (mut after, _) = watch(&mut state, ns, "w/", w2)
        .await
        .expect("watch from the first kept revision");
    assert_eq!(key_of(&next_events(&mut after, 1).await[0]).2, w2);
    expect_code(
        state
            .compact(wire::CompactRequest { revision: wd + 100 })
            .await,
        Code::OutOfRange,
        "ahead of the store",
    );

    // Bad input.
    let long_key = "k".repeat(1025);
    for (request, needle) in [
        (put("Bad Namespace", "k", "v"), "invalid namespace"),
        (put("", "k", "v"), "invalid namespace"),
        (put(ns, "", "v"), "empty"),
        (put(ns, &long_key, "v"), "at most 1024 bytes"),
    ] {
        expect_code(state.put(request).await, Code::InvalidArgument, needle);
    }
    let mut huge = put(ns, "huge", "");
    huge.value = vec![0u8; (1 << 20) + 1].into();
    expect_code(state.put(huge).await, Code::InvalidArgument, "the limit is");
    let mut negative = put(ns, "a", "v");
    negative.expected_revision = Some(-1);
    expect_code(state.put(negative).await, Code::InvalidArgument, "negative");
    let mut orphan = put(ns, "a", "v");
    orphan.owner = "nobody-here".into();
    expect_code(
        state.put(orphan).await,
        Code::FailedPrecondition,
        "not a container",
    );
    let too_many = (0..129).map(|i| txn_put(&format!("t{i}"), "v")).collect();
    expect_code(
        state
            .txn(wire::TxnRequest {
                namespace: ns.into(),
                compares: Vec::new(),
                ops: too_many,
            })
            .await,
        Code::InvalidArgument,
        "at most 128",
    );

    bound_keys_vanish_with_their_container(node, &mut state).await;
}

/// A key bound to a container is deleted (with a watch event) when it is destroyed,
/// and not when it merely restarts.
pub(super) async fn bound_keys_vanish_with_their_container(
    node: &TestNode,
    state: &mut Raw<Channel>,
) {
    let ns = "discovery";
    let mut supervisor = node.supervisor().await;
    reef_tests::create(
        &mut supervisor,
        wire::ContainerDefinition {
            alias: "service-a".into(),
            kind: reef_tests::demo_process(&["echo"]),
            ..Default::default()
        },
    )
    .await
    .expect("create");
    let mut bound = put(ns, "services/a", "127.0.0.1:9000");
    bound.owner = "service-a".into();
    state.put(bound).await.expect("bound put");
    state
        .put(put(ns, "services/static", "stays"))
        .await
        .expect("put");
    let kv = get(state, ns, "services/a").await.expect("bound key");
    assert_eq!(kv.owner, "service-a");

    let (mut events, _) = watch(state, ns, "services/", 0).await.expect("watch");
    supervisor
        .restart(wire::RestartRequest {
            alias: "service-a".into(),
        })
        .await
        .expect("restart");
    assert!(
        get(state, ns, "services/a").await.is_some(),
        "a restart keeps it"
    );
    supervisor
        .destroy(wire::DestroyRequest {
            alias: "service-a".into(),
            flags: 0,
        })
        .await
        .expect("destroy");
    let gone = next_events(&mut events, 1).await;
    let (kind, key, _) = key_of(&gone[0]);
    assert_eq!(
        (kind, key.as_str()),
        (wire::watch_event::Kind::Delete, "services/a")
    );
    assert!(get(state, ns, "services/a").await.is_none());
    assert!(get(state, ns, "services/static").await.is_some());
}
