//! Messaging semantics against a real reefd: groups and their strategies, router rules
//! and firewall mode, dead letters, and what requests do beyond request/reply —
//! cancellation, de-duplicated retries, PROGRESS and deadline propagation. The
//! containers are SDK handlers in this test process, attached over TLS.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::SeqCst},
    },
    time::Duration,
};

use reef_proto::{
    self as wire, ConfigureGroupRequest, GroupStrategy, JoinGroupRequest, LeaveGroupRequest,
    ListRulesRequest, PutRuleRequest, RuleAction, SetFirewallRequest,
    supervisor_client::SupervisorClient,
};
use reef_sdk::{
    Bytes, Client, Code, ContainerOptions, Context, Handler, HandlerError, Message, RequestOptions,
};
use reef_tests::{STARTUP, TestNode, eventually};
use tokio::sync::mpsc;
use tonic::transport::Channel;

const ANSWER: Duration = Duration::from_secs(10);

/// What a container in this test saw: (its alias, the message).
type Seen = mpsc::UnboundedSender<(String, Message)>;

/// Answers requests with its own alias and reports every message it receives.
struct Member {
    seen: Seen,
}

impl Handler for Member {
    async fn on_message(&mut self, ctx: &Context, message: Message) {
        let _ = self.seen.send((ctx.alias().to_owned(), message));
    }

    async fn on_request(&mut self, ctx: &Context, request: Message) -> Result<Bytes, HandlerError> {
        let _ = self.seen.send((ctx.alias().to_owned(), request));
        Ok(Bytes::from(ctx.alias().to_owned()))
    }
}

/// Runs `handler` as container `alias` in this process until the test ends.
async fn start(node: &TestNode, alias: &str, handler: impl Handler) {
    tokio::spawn(reef_sdk::run(
        ContainerOptions::new(alias, node.options()),
        handler,
    ));
    node.wait_attached(alias).await;
}

async fn members(node: &TestNode, aliases: &[&str]) -> mpsc::UnboundedReceiver<(String, Message)> {
    let (seen, observed) = mpsc::unbounded_channel();
    for alias in aliases {
        start(node, alias, Member { seen: seen.clone() }).await;
    }
    observed
}

async fn ask(client: &Client, to: &str) -> Result<String, reef_sdk::Error> {
    let reply = client.request(to, "?", ANSWER).await?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

async fn ask_keyed(client: &Client, to: &str, key: &str) -> String {
    let options = RequestOptions::new(ANSWER).header("user", key);
    let reply = client
        .request_with(to, "?", &options)
        .await
        .expect("keyed request");
    String::from_utf8_lossy(&reply).into_owned()
}

async fn configure(
    supervisor: &mut SupervisorClient<Channel>,
    strategy: GroupStrategy,
    hash_key: &str,
) {
    supervisor
        .configure_group(ConfigureGroupRequest {
            name: "workers".into(),
            strategy: strategy as i32,
            hash_key: hash_key.into(),
        })
        .await
        .expect("configure the group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_pick_members_by_their_strategy() {
    let node = TestNode::start();
    let aliases = ["w/1", "w/2", "w/3", "w/4"];
    let mut observed = members(&node, &aliases).await;
    let mut supervisor = node.supervisor().await;
    supervisor
        .join_group(JoinGroupRequest {
            group: "workers".into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        })
        .await
        .expect("join");
    let client = Client::connect(&node.options()).await.unwrap();

    // Round robin (the default): each member in turn.
    let mut turns = BTreeMap::new();
    for _ in 0..8 {
        *turns
            .entry(ask(&client, "group:workers").await.unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(
        turns.values().copied().collect::<Vec<_>>(),
        [2, 2, 2, 2],
        "{turns:?}"
    );

    // First available: the first member in join order.
    configure(&mut supervisor, GroupStrategy::FirstAvailable, "").await;
    assert_eq!(ask(&client, "group:workers").await.unwrap(), "w/1");

    // Broadcast: every member gets a copy; a request cannot be broadcast.
    while observed.try_recv().is_ok() {}
    configure(&mut supervisor, GroupStrategy::Broadcast, "").await;
    client.send("group:workers", "to all").await.unwrap();
    let mut reached = Vec::new();
    while reached.len() < aliases.len() {
        let (alias, message) = tokio::time::timeout(ANSWER, observed.recv())
            .await
            .expect("every member gets the broadcast")
            .unwrap();
        assert_eq!(&message.payload[..], b"to all");
        reached.push(alias);
    }
    reached.sort();
    assert_eq!(reached, aliases);
    let refused = ask(&client, "group:workers").await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    // Consistent hashing: a key stays on its member; when one of four members leaves,
    // only its keys move.
    configure(&mut supervisor, GroupStrategy::ConsistentHash, "user").await;
    let mut owners = HashMap::new();
    for key in 0..200 {
        let key = format!("user-{key}");
        owners.insert(key.clone(), ask_keyed(&client, "group:workers", &key).await);
    }
    for (key, owner) in owners.iter().take(20) {
        assert_eq!(
            &ask_keyed(&client, "group:workers", key).await,
            owner,
            "{key} moved"
        );
    }
    supervisor
        .leave_group(LeaveGroupRequest {
            group: "workers".into(),
            aliases: vec!["w/3".into()],
        })
        .await
        .expect("leave");
    let mut stayed = 0;
    for (key, owner) in &owners {
        let now = ask_keyed(&client, "group:workers", key).await;
        assert_ne!(now, "w/3", "a member that left gets nothing");
        if &now == owner {
            stayed += 1;
        } else {
            assert_eq!(
                owner, "w/3",
                "{key} moved from {owner} though its member stayed"
            );
        }
    }
    assert!(stayed >= 150, "only {stayed} of 200 keys stayed in place");

    // A group nobody configured.
    let unknown = ask(&client, "group:nobody").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown}");
    assert!(unknown.to_string().contains("nobody"), "{unknown}");
}

fn rule(id: &str, action: RuleAction, destination: &str, target: &str) -> wire::Rule {
    wire::Rule {
        id: id.into(),
        action: action as i32,
        target: target.into(),
        r#match: Some(wire::RuleMatch {
            destination: destination.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn put(supervisor: &mut SupervisorClient<Channel>, rule: wire::Rule) {
    supervisor
        .put_rule(PutRuleRequest {
            rule: Some(rule),
            before: String::new(),
        })
        .await
        .expect("put rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reject_drop_redirect_and_tap_and_the_firewall_denies_the_rest() {
    let node = TestNode::start();
    let mut observed = members(&node, &["a", "b", "tap"]).await;
    let mut supervisor = node.supervisor().await;
    let client = Client::connect(&node.options()).await.unwrap();

    // Reject: PERMISSION_DENIED naming the rule.
    put(
        &mut supervisor,
        rule("no-admin", RuleAction::Reject, "admin*", ""),
    )
    .await;
    let refused = ask(&client, "admin/db").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.to_string().contains("no-admin"), "{refused}");

    // Copy with propagate, then redirect: "a" is answered by "b", and the tap sees it.
    let mut tap = rule("audit", RuleAction::Copy, "a", "tap");
    tap.propagate = true;
    put(&mut supervisor, tap).await;
    put(
        &mut supervisor,
        rule("move", RuleAction::Redirect, "a", "b"),
    )
    .await;
    assert_eq!(ask(&client, "a").await.unwrap(), "b");
    let mut tapped = None;
    while tapped.is_none() {
        let (alias, message) = tokio::time::timeout(ANSWER, observed.recv())
            .await
            .expect("the tap sees the copy")
            .unwrap();
        if alias == "tap" {
            tapped = Some(message);
        }
    }
    let tapped = tapped.unwrap();
    assert_eq!(
        tapped.headers.get("reef-tap-of").map(String::as_str),
        Some("a")
    );
    assert!(tapped.deadline.is_none(), "a tap is a send");

    // Drop with a hit limit: the first send to "b" goes to the dead letters, the next
    // one is delivered because the rule is used up.
    let mut sink = rule("sink", RuleAction::Drop, "b", "");
    sink.limit = 1;
    sink.r#match.as_mut().unwrap().kind = "send".into();
    put(&mut supervisor, sink).await;
    client.send("b", "first").await.unwrap();
    client.send("b", "second").await.unwrap();
    loop {
        let (alias, message) = tokio::time::timeout(ANSWER, observed.recv())
            .await
            .expect("the second send arrives")
            .unwrap();
        assert_ne!(&message.payload[..], b"first", "the dropped send arrived");
        if alias == "b" && &message.payload[..] == b"second" {
            break;
        }
    }
    let letters = reef_tests::dead_letters(&supervisor).await;
    let dropped = letters
        .letters
        .iter()
        .find(|l| &l.payload_preview[..] == b"first")
        .expect("the dropped send is a dead letter");
    assert!(dropped.reason.contains("sink"), "{}", dropped.reason);
    assert_eq!(dropped.destination, "b");
    assert!(
        letters
            .letters
            .iter()
            .any(|l| l.reason.contains("no-admin"))
    );

    // Listing shows evaluation order and hits.
    let listed = supervisor
        .list_rules(ListRulesRequest {})
        .await
        .unwrap()
        .into_inner();
    let hits: Vec<_> = listed
        .rules
        .iter()
        .map(|r| (r.id.as_str(), r.hits))
        .collect();
    assert_eq!(
        hits,
        [("no-admin", 1), ("audit", 1), ("move", 1), ("sink", 1)]
    );

    // Firewall: only what a route or redirect rule allows gets through.
    supervisor
        .set_firewall(SetFirewallRequest { enabled: true })
        .await
        .unwrap();
    let denied = ask(&client, "b").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    assert!(denied.to_string().contains("firewall"), "{denied}");
    assert_eq!(
        ask(&client, "a").await.unwrap(),
        "b",
        "the redirect allows it"
    );
    put(&mut supervisor, rule("allow-b", RuleAction::Route, "b", "")).await;
    assert_eq!(ask(&client, "b").await.unwrap(), "b");

    // Malformed rules are refused with the reason.
    let bad = supervisor
        .put_rule(PutRuleRequest {
            rule: Some(rule("bad", RuleAction::Redirect, "x", "")),
            before: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("target"), "{}", bad.message());
}

/// Reports when a request starts and whether its caller gave up, and never answers
/// before that.
struct Patient {
    events: mpsc::UnboundedSender<&'static str>,
}

impl Handler for Patient {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        let _ = self.events.send("started");
        tokio::select! {
            _ = request.cancellation.cancelled() => {
                let _ = self.events.send("cancelled");
                Err(HandlerError::new("Cancelled", "the caller gave up").with_code(Code::Cancelled))
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(Bytes::new()),
        }
    }
}

/// A request to "patient" that waits a minute, running until aborted.
fn ask_patient_in_background(
    client: &Client,
) -> tokio::task::JoinHandle<Result<Bytes, reef_sdk::Error>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .request("patient", "?", Duration::from_secs(60))
            .await
    })
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(ANSWER, events.recv())
        .await
        .expect("an event from the handler")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_cancellation_when_the_caller_times_out_or_gives_up() {
    let node = TestNode::start();
    let (tx, mut events) = mpsc::unbounded_channel();
    start(&node, "patient", Patient { events: tx }).await;
    let client = Client::connect(&node.options()).await.unwrap();

    // The deadline passes: the caller hears DEADLINE_EXCEEDED, the handler CANCEL.
    let late = client
        .request("patient", "?", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late}");
    assert_eq!(next_event(&mut events).await, "started");
    assert_eq!(next_event(&mut events).await, "cancelled");

    // The caller drops its request future.
    let abandoned = ask_patient_in_background(&client);
    assert_eq!(next_event(&mut events).await, "started");
    abandoned.abort();
    assert_eq!(next_event(&mut events).await, "cancelled");

    // The caller disconnects.
    let leaving = Client::connect(&node.options()).await.unwrap();
    let pending = ask_patient_in_background(&leaving);
    assert_eq!(next_event(&mut events).await, "started");
    leaving.close().await.unwrap();
    assert_eq!(next_event(&mut events).await, "cancelled");
    pending.abort();
}

/// Takes longer than one attempt's timeout, ignoring cancellation, and counts runs.
struct Slow {
    runs: Arc<AtomicU32>,
    takes: Duration,
}

impl Handler for Slow {
    async fn on_request(&mut self, _: &Context, _: Message) -> Result<Bytes, HandlerError> {
        let run = self.runs.fetch_add(1, SeqCst) + 1;
        tokio::time::sleep(self.takes).await;
        Ok(Bytes::from(format!("run {run}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_deduplicated_by_the_receiver() {
    let node = TestNode::start();
    let runs = Arc::new(AtomicU32::new(0));
    let slow = Slow {
        runs: runs.clone(),
        takes: Duration::from_millis(400),
    };
    start(&node, "slow", slow).await;
    let client = Client::connect(&node.options()).await.unwrap();
    let options =
        RequestOptions::new(Duration::from_millis(150)).retries(20, Duration::from_millis(50));
    for round in 1..=2 {
        let reply = client.request_with("slow", "?", &options).await.unwrap();
        assert_eq!(&reply[..], format!("run {round}").as_bytes());
        assert_eq!(runs.load(SeqCst), round, "the handler ran once per request");
    }
    // Without retries the same slow request fails.
    let once = client
        .request_with(
            "slow",
            "?",
            &RequestOptions::new(Duration::from_millis(150)),
        )
        .await
        .unwrap_err();
    assert_eq!(once.code(), Code::DeadlineExceeded, "{once}");
}

/// Works for `steps` × 100 ms, telling the caller it is still busy after each step.
struct Busy {
    steps: u32,
}

impl Handler for Busy {
    async fn on_request(&mut self, ctx: &Context, request: Message) -> Result<Bytes, HandlerError> {
        for _ in 0..self.steps {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ctx.client()
                .progress(&request, Duration::from_millis(300))
                .await?;
        }
        Ok(Bytes::from_static(b"finished"))
    }
}

/// Asks `inner` with a generous timeout on behalf of its own caller.
struct Outer;

impl Handler for Outer {
    async fn on_request(&mut self, ctx: &Context, _: Message) -> Result<Bytes, HandlerError> {
        Ok(ctx
            .client()
            .request("inner", "?", Duration::from_secs(60))
            .await?)
    }
}

/// Answers with the deadline it was given, in milliseconds.
struct Inner;

impl Handler for Inner {
    async fn on_request(&mut self, _: &Context, request: Message) -> Result<Bytes, HandlerError> {
        let left = request.deadline.unwrap_or_default().as_millis();
        Ok(Bytes::from(left.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_keeps_the_caller_waiting_and_deadlines_propagate() {
    let node = TestNode::start();
    start(&node, "busy", Busy { steps: 8 }).await;
    start(&node, "outer", Outer).await;
    start(&node, "inner", Inner).await;
    let client = Client::connect(&node.options()).await.unwrap();

    // 800 ms of work against a 250 ms timeout, kept alive by PROGRESS.
    let reply = client
        .request("busy", "?", Duration::from_millis(250))
        .await
        .expect("PROGRESS extends the deadline at the node and at the caller");
    assert_eq!(&reply[..], b"finished");

    // The nested request gets what is left of the outer one's 2 s, not its own 60 s.
    let reply = client
        .request("outer", "?", Duration::from_secs(2))
        .await
        .unwrap();
    let left: u64 = String::from_utf8_lossy(&reply).parse().unwrap();
    assert!(left > 0 && left <= 2_000, "inner got {left} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_containers_join_their_groups_and_leave_when_destroyed() {
    let node = TestNode::start();
    let mut supervisor = node.supervisor().await;
    let definition = wire::ContainerDefinition {
        alias: "echo".into(),
        groups: vec!["echoes".into()],
        kind: reef_tests::demo_process(&["echo"]),
        ..Default::default()
    };
    reef_tests::create(&mut supervisor, definition)
        .await
        .expect("create");
    let client = Client::connect(&node.options()).await.unwrap();
    let reply = eventually("echo answers through its group", STARTUP, || {
        let client = client.clone();
        async move { client.request("group:echoes", "hi", ANSWER).await.ok() }
    })
    .await;
    assert_eq!(&reply[..], b"hi");
    supervisor
        .destroy(wire::DestroyRequest {
            alias: "echo".into(),
            flags: 0,
        })
        .await
        .expect("destroy");
    let groups = supervisor
        .list_groups(wire::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert!(groups[0].members.is_empty(), "{groups:?}");
    let gone = client
        .request("group:echoes", "hi", ANSWER)
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unavailable, "{gone}");
}

/// Holds its first message until the test opens the gate, then reports every payload.
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    seen: mpsc::UnboundedSender<u64>,
}

impl Handler for Gated {
    async fn on_message(&mut self, _: &Context, message: Message) {
        if let Ok(permit) = self.gate.acquire().await {
            permit.forget();
            self.gate.add_permits(1);
        }
        let n = String::from_utf8_lossy(&message.payload).parse().unwrap();
        let _ = self.seen.send(n);
    }
}

/// Credit the SDK grants (envelopes delivered before the handler consumes them) plus
/// the node's mailbox in the overflow test.
const IN_FLIGHT: u64 = 8192 + 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_blocks_rejects_or_drops_by_its_overflow_policy() {
    let node = TestNode::start_with(&["--mailbox-capacity", "4"]);
    let mut supervisor = node.supervisor().await;
    let client = Client::connect(&node.options()).await.unwrap();
    let extra = 50;
    for (alias, policy) in [
        ("newest", wire::OverflowPolicy::DropNewest),
        ("oldest", wire::OverflowPolicy::DropOldest),
        ("reject", wire::OverflowPolicy::Reject),
    ] {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (seen, mut handled) = mpsc::unbounded_channel();
        start(
            &node,
            alias,
            Gated {
                gate: gate.clone(),
                seen,
            },
        )
        .await;
        // With the default policy (block) the sender waits: this fills the handler's
        // credit and then the mailbox, and loses nothing.
        for n in 0..IN_FLIGHT {
            client.send(alias, n.to_string()).await.unwrap();
        }
        client.flush(ANSWER).await.unwrap();
        supervisor
            .set_overflow(wire::SetOverflowRequest {
                alias: alias.into(),
                policy: policy as i32,
            })
            .await
            .unwrap();
        let refused_before = client.undelivered();
        for n in IN_FLIGHT..IN_FLIGHT + extra {
            client.send(alias, n.to_string()).await.unwrap();
        }
        client.flush(ANSWER).await.unwrap();
        gate.add_permits(1);
        let mut got = Vec::new();
        while got.len() < IN_FLIGHT as usize {
            let n = tokio::time::timeout(ANSWER, handled.recv())
                .await
                .unwrap_or_else(|_| panic!("{alias}: {} handled: {:?}", got.len(), got.last()))
                .unwrap();
            got.push(n);
        }
        let expected: Vec<u64> = match policy {
            // The last ones found the mailbox full.
            wire::OverflowPolicy::DropNewest | wire::OverflowPolicy::Reject => {
                (0..IN_FLIGHT).collect()
            }
            // The mailbox kept the newest four.
            _ => (0..IN_FLIGHT - 4)
                .chain(IN_FLIGHT + extra - 4..IN_FLIGHT + extra)
                .collect(),
        };
        assert_eq!(got, expected, "{alias}");
        let refused = client.undelivered() - refused_before;
        let letters = reef_tests::dead_letters(&supervisor).await.letters;
        let dropped = letters
            .iter()
            .filter(|l| l.destination == alias && l.reason.contains("overflow policy"))
            .count() as u64;
        assert_eq!(dropped, extra, "{alias}: {:?}", letters.last());
        let told = if policy == wire::OverflowPolicy::Reject {
            extra
        } else {
            0
        };
        assert_eq!(refused, told, "{alias}: only reject tells the sender");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_push_reaches_the_peer_in_order_with_a_verified_origin() {
    let node = TestNode::start();
    let mut observed = members(&node, &["peer"]).await;
    let client = Client::connect(&node.options()).await.unwrap();
    let push = client.push("peer").await.expect("open a push stream");

    let reply = push.request("?", ANSWER).await.unwrap();
    assert_eq!(&reply[..], b"peer");
    let (_, request) = observed.recv().await.unwrap();
    assert_eq!(
        request.origin,
        client.alias(),
        "the node vouched for the pusher"
    );

    for n in 0..1000 {
        push.send(n.to_string()).await.unwrap();
    }
    for n in 0..1000 {
        let (alias, message) = tokio::time::timeout(ANSWER, observed.recv())
            .await
            .expect("pushed sends arrive")
            .unwrap();
        assert_eq!(alias, "peer");
        assert_eq!(
            message.payload,
            n.to_string().as_bytes(),
            "FIFO on the stream"
        );
    }
    let info = node
        .supervisor()
        .await
        .list(wire::ListRequest {})
        .await
        .unwrap()
        .into_inner();
    let peer = info.containers.iter().find(|c| c.alias == "peer").unwrap();
    assert!(
        peer.envelopes_out < 100,
        "pushed envelopes bypassed the node"
    );

    // A stream without a valid ticket is refused by the peer.
    let channel = node
        .options()
        .connect_to_peer(&peer.endpoint, &reef_tls::container_identity("peer"))
        .await
        .unwrap();
    let mut raw = reef_proto::container_client::ContainerClient::new(channel);
    let mut forged = tonic::Request::new(tokio_stream::iter(Vec::<wire::Frame>::new()));
    forged
        .metadata_mut()
        .insert(reef_proto::PUSH_TICKET_METADATA, "0123".parse().unwrap());
    let refused = raw.push(forged).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let unknown = client.push("nobody").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hold_of_a_restarting_container_follows_its_overflow_policy() {
    let node = TestNode::start_with(&["--mailbox-capacity", "4"]);
    let mut supervisor = node.supervisor().await;
    let definition = wire::ContainerDefinition {
        alias: "slow-to-return".into(),
        kind: reef_tests::demo_process(&["echo"]),
        overflow: wire::OverflowPolicy::DropOldest as i32,
        ..Default::default()
    };
    // Down for a minute: long enough to fill its hold.
    reef_tests::create_restarting(&node, definition).await;

    let client = Client::connect(&node.options()).await.unwrap();
    for n in 0..7 {
        client.send("slow-to-return", n.to_string()).await.unwrap();
    }
    client.flush(ANSWER).await.unwrap();
    assert_eq!(client.undelivered(), 0, "drop_oldest tells no sender");
    let letters = reef_tests::dead_letters(&supervisor).await.letters;
    let dropped: Vec<_> = letters
        .iter()
        .filter(|l| l.reason.contains("drop_oldest"))
        .map(|l| String::from_utf8_lossy(&l.payload_preview).into_owned())
        .collect();
    assert_eq!(dropped, ["0", "1", "2"], "the oldest made room");

    supervisor
        .set_overflow(wire::SetOverflowRequest {
            alias: "slow-to-return".into(),
            policy: wire::OverflowPolicy::Reject as i32,
        })
        .await
        .unwrap();
    client.send("slow-to-return", "refused").await.unwrap();
    client.flush(ANSWER).await.unwrap();
    assert_eq!(client.undelivered(), 1, "reject tells the sender");
    assert!(
        client.last_undelivered().unwrap().contains("restarting"),
        "{:?}",
        client.last_undelivered()
    );
}
