//! The `reef` CLI as a user runs it: real processes, real output, real exit codes.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use reef_tests::{
    ChildGuard, STARTUP, TestNode, binary, reef_at, stdout_lines, unused_port, wait_for_line,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn request_send_ping_and_ps_against_a_running_node() {
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let _counter = node.spawn_demo("counter", &["counter"]).await;

    let out = node.reef(&["request", "echo", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");

    let out = node.reef(&["send", "counter", "hi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = node.reef(&["request", "counter", "count", "--timeout", "2s"]);
    assert_eq!(text(&out.stdout), "1\n");

    let out = node.reef(&["ping"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("SERVING"),
        "{}",
        text(&out.stdout)
    );
    let out = node.reef(&["ping", "echo"]);
    assert!(
        text(&out.stdout).starts_with("echo answered in"),
        "{}",
        text(&out.stdout)
    );

    let out = node.reef(&["ps"]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains("echo") && listing.contains("counter") && listing.contains(" yes"),
        "{listing}"
    );
}

#[tokio::test]
async fn create_ps_logs_restart_stop_start_and_destroy_a_supervised_container() {
    let node = TestNode::start();
    let demo = reef_tests::binary("reef-demo");
    let demo = demo.to_str().unwrap();
    let out = node.reef(&[
        "create",
        "echo",
        "--restart",
        "transient",
        "--solver",
        "app=log,restart",
        "--env",
        "REEF_LOG=info",
        "--",
        demo,
        "echo",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("created echo (pid "),
        "{}",
        text(&out.stdout)
    );
    let again = node.reef(&["create", "echo", "--", demo, "echo"]);
    assert!(
        text(&again.stdout).starts_with("exists echo"),
        "{}",
        text(&again.stdout)
    );

    let listing = text(&node.reef(&["ps"]).stdout);
    let row = listing
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        row.contains("STARTED") && row.contains("process"),
        "{listing}"
    );

    let logs = text(&node.reef(&["logs", "echo"]).stdout);
    assert!(logs.contains("container started"), "{logs}");

    for (command, expected) in [
        ("restart", "restarted echo"),
        ("stop", "stopped echo"),
        ("start", "started echo"),
    ] {
        let out = node.reef(&[command, "echo"]);
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with(expected),
            "{}",
            text(&out.stdout)
        );
    }
    let out = node.reef(&["destroy", "echo", "--flags", "gently"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("gently"),
        "{}",
        text(&out.stderr)
    );
    let out = node.reef(&["destroy", "echo", "--flags", "FORCE_HARD"]);
    assert_eq!(text(&out.stdout), "destroyed echo\n");
    let out = node.reef(&["logs", "echo"]);
    assert!(
        text(&out.stderr).contains("no supervised container"),
        "{}",
        text(&out.stderr)
    );
}

/// The last view `reef top` printed (piped, views follow each other).
fn last_view(output: &str) -> &str {
    output.rsplit("reef top · ").next().unwrap_or_default()
}

/// The columns of `alias`'s row in a `reef top` view: ALIAS STATE PID RESTARTS IN/s
/// OUT/s QUEUE ANSWER/s P50 P99 UPTIME.
fn top_row<'a>(view: &'a str, alias: &str) -> Vec<&'a str> {
    view.lines()
        .find(|line| line.split_whitespace().next() == Some(alias))
        .unwrap_or_else(|| panic!("no row for {alias} in\n{view}"))
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reef_top_shows_rates_latency_and_restarts_of_a_live_tree() {
    let node = TestNode::start();
    let echo = node.create_demo("echo", &["echo"]).await;
    let supervisor = node.supervisor().await;

    // Requests flow while top samples.
    let client = reef_sdk::Client::connect(&node.options()).await.unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(async move {
        let mut answered = 0u64;
        while !*stopped.borrow_and_update() {
            client
                .request("echo", "ping", Duration::from_secs(5))
                .await
                .unwrap();
            answered += 1;
        }
        answered
    });
    let out = tokio::task::block_in_place(|| {
        node.reef(&["top", "--interval", "300ms", "--iterations", "2"])
    });
    stop.send_replace(true);
    assert!(traffic.await.unwrap() > 0);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let output = text(&out.stdout);
    assert_eq!(output.matches("reef top · ").count(), 2, "{output}");
    let view = last_view(&output);
    let row = top_row(view, "echo");
    assert_eq!(row[1], "STARTED", "{view}");
    assert_eq!(row[2], echo.pid.to_string());
    assert_eq!(row[3], "0", "no restarts yet: {view}");
    let rate = |column: &str| {
        column
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{column}: {view}"))
    };
    assert!(
        rate(row[4]) > 0.0 && rate(row[5]) > 0.0,
        "envelopes in and out: {view}"
    );
    assert!(rate(row[7]) > 0.0, "answers per second: {view}");
    assert!(row[9].ends_with('s'), "a p99 latency: {view}");
    assert!(
        view.contains("requests ") && !view.contains("requests 0/s"),
        "{view}"
    );

    // A killed container is restarted; top counts it.
    reef_tests::signal_pid(echo.pid, nix::sys::signal::Signal::SIGKILL);
    reef_tests::wait_for_container(&supervisor, "echo", "restarted", |c| {
        c.attached && c.supervised.as_ref().is_some_and(|s| s.restarts == 1)
    })
    .await;
    let out = tokio::task::block_in_place(|| node.reef(&["top", "--interval", "100ms", "-n", "1"]));
    let output = text(&out.stdout);
    assert_eq!(top_row(last_view(&output), "echo")[3], "1", "{output}");

    let out = node.reef(&["top", "--interval", "forever"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("forever"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn create_ps_and_destroy_a_task_container_in_a_host() {
    let node = TestNode::start();
    let demo = reef_tests::binary("reef-demo");
    let out = node.reef(&[
        "create",
        "pool",
        "--",
        demo.to_str().unwrap(),
        "pool",
        "--tasks",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = node.reef(&["create", "extra", "--task-host", "pool", "--name", "worker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("created extra"),
        "{}",
        text(&out.stdout)
    );

    let listing = text(&node.reef(&["ps"]).stdout);
    let row = |alias: &str| {
        listing
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{alias} ")))
            .unwrap_or_default()
            .to_owned()
    };
    for task in ["extra", "pool/worker-0"] {
        let row = row(task);
        assert!(
            row.contains("STARTED") && row.contains("task") && row.contains("yes"),
            "{listing}"
        );
    }
    let out = node.reef(&["request", "extra", "count"]);
    assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));

    let out = node.reef(&["create", "t2", "--task-host", "pool"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--name"),
        "{}",
        text(&out.stderr)
    );
    let out = node.reef(&["destroy", "extra"]);
    assert_eq!(
        text(&out.stdout),
        "destroyed extra\n",
        "{}",
        text(&out.stderr)
    );
    let out = node.reef(&["request", "extra", "count"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn groups_rules_firewall_and_dead_letters_from_the_command_line() {
    let node = TestNode::start();
    let _echo = node.spawn_demo("echo", &["echo"]).await;
    let ok = |args: &[&str]| {
        let out = node.reef(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };

    ok(&["group", "set", "echoes", "--strategy", "first_available"]);
    let joined = ok(&["group", "join", "echoes", "echo"]);
    assert!(
        joined.contains("first_available") && joined.contains("echo ["),
        "{joined}"
    );
    assert_eq!(ok(&["request", "group:echoes", "hi"]), "hi\n");
    assert!(ok(&["group", "list"]).starts_with("group:echoes first_available: echo"));

    ok(&[
        "rule",
        "add",
        "quiet",
        "--action",
        "reject",
        "--destination",
        "echo",
        "--kind",
        "send",
    ]);
    let rules = ok(&["rule", "list"]);
    assert!(rules.starts_with("firewall off\nquiet"), "{rules}");
    let out = node.reef(&["send", "echo", "x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("quiet"), "{}", text(&out.stderr));
    assert!(ok(&["rule", "list"]).contains("hits 1"));
    let letters = ok(&["deadletters"]);
    assert!(
        letters.contains("send") && letters.contains("rejected by rule \"quiet\""),
        "{letters}"
    );
    // Local time, not Unix milliseconds: `2026-12-01 21:07:48.123 send #…`.
    let first = letters.lines().next().unwrap_or_default();
    let (date, rest) = first.split_once(' ').unwrap_or_default();
    assert!(
        date.len() == 10 && date.chars().filter(|c| *c == '-').count() == 2,
        "{first}"
    );
    assert!(
        rest.split(' ')
            .next()
            .is_some_and(|t| t.len() == 12 && t.contains(':')),
        "{first}"
    );
    let json = ok(&["deadletters", "--json"]);
    let letter: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(letter["kind"], "send", "{json}");
    assert_eq!(letter["destination"], "echo", "{json}");
    assert!(
        letter["at_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_700_000_000_000),
        "{json}"
    );

    ok(&["rule", "delete", "quiet"]);
    ok(&["firewall", "on"]);
    let out = node.reef(&["request", "echo", "hi"]);
    assert!(
        text(&out.stderr).contains("firewall"),
        "{}",
        text(&out.stderr)
    );
    ok(&[
        "rule",
        "add",
        "open",
        "--action",
        "route",
        "--destination",
        "e*",
    ]);
    assert_eq!(ok(&["request", "echo", "hi"]), "hi\n");

    let out = node.reef(&["rule", "add", "bad", "--action", "teleport"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("teleport"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn state_put_get_ls_watch_and_del_from_the_command_line() {
    let node = TestNode::start();
    let stdout = |args: &[&str]| {
        let out = node.reef(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(
        stdout(&["state", "put", "config", "mode", "fast"]),
        "revision 1\n"
    );
    stdout(&["state", "put", "config", "level", "3"]);
    assert_eq!(stdout(&["state", "get", "config", "mode"]), "fast\n");
    assert!(
        stdout(&["state", "get", "-v", "config", "mode"])
            .contains("revision 1 (created 1, version 1)")
    );
    assert_eq!(stdout(&["state", "ls", "config"]), "level=3\nmode=fast\n");
    assert_eq!(stdout(&["state", "ls", "config", "m", "--keys"]), "mode\n");

    // A watch from revision 1 replays history, then follows.
    let mut watch = ChildGuard(
        Command::new(binary("reef"))
            .args(["--addr", &node.addr.to_string(), "--ca"])
            .arg(&node.ca)
            .args(["state", "watch", "config", "--from", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("reef state watch"),
    );
    let lines = stdout_lines(&mut watch.0);
    wait_for_line(&lines, "1 put mode=fast", STARTUP);
    wait_for_line(&lines, "2 put level=3", STARTUP);

    let stale = node.reef(&["state", "put", "config", "mode", "slow", "--expect", "2"]);
    assert!(!stale.status.success());
    assert!(text(&stale.stderr).contains("is at revision 1, not the expected 2"));
    assert_eq!(
        stdout(&["state", "put", "config", "mode", "slow", "--expect", "1"]),
        "revision 3\n"
    );
    wait_for_line(&lines, "3 put mode=slow", STARTUP);
    assert_eq!(
        stdout(&["state", "del", "config", "mode"]),
        "deleted 1 (revision 4)\n"
    );
    wait_for_line(&lines, "4 del mode", STARTUP);
    let missing = node.reef(&["state", "get", "config", "mode"]);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("does not exist"));
    for (args, mention) in [
        (&["state", "get", "Config!", "k"][..], "invalid namespace"),
        (
            &["state", "put", "config", "k", "v", "--owner", "ghost"][..],
            "ghost is not a container",
        ),
        (
            &["state", "watch", "config", "--from", "99"][..],
            "ahead of the store",
        ),
    ] {
        let out = node.reef(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            text(&out.stderr).contains(mention),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn failures_are_one_line_errors_with_a_nonzero_exit() {
    let node = TestNode::start();
    let cases: [(&[&str], &str); 4] = [
        (&["request", "nobody", "x"], "nobody"),
        (&["send", "nobody", "x"], "nobody"),
        (&["ping", "nobody"], "nobody"),
        (&["request", "echo", "x", "--timeout", "2h"], "unit"),
    ];
    for (args, mention) in cases {
        let out = node.reef(args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(mention), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_node_that_is_not_running_is_named_in_a_one_line_error() {
    let data = tempfile::tempdir().unwrap();
    let ca = data.path().join("ca.pem");
    let address = format!("127.0.0.1:{}", unused_port());
    for ca_exists in [false, true] {
        if ca_exists {
            reef_tls::Pki::load_or_create(data.path(), "cli", &["localhost".to_owned()]).unwrap();
        }
        let out = reef_at(&address, &ca, &["request", "echo", "hello"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&address), "{stderr}");
    }
}

#[test]
fn reef_up_runs_the_demo_until_sigterm_and_leaves_no_process_behind() {
    // From the repository's root, as README says, for the demo's Python container
    // (`clients/python/run`, with the venv scripts/test made); data in a temp dir.
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(binary("reef"))
        .current_dir(reef_tests::workspace_root())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .env("REEF_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = ChildGuard(child);
    let lines = stdout_lines(&mut up.0);
    let node_line = wait_for_line(&lines, "  node ", STARTUP);
    let address = node_line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("https://"))
        .expect("node address")
        .to_owned();
    let containers = wait_for_line(&lines, "  containers ", STARTUP);
    let pids: Vec<u32> = containers
        .split("(pid ")
        .skip(1)
        .map(|rest| rest.split(')').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 6, "{containers}");
    let ca = data.path().join("tls/ca.pem");

    let out = reef_at(&address, &ca, &["request", "echo", "hello"]);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    // The ticker ticks the counter every second: the count is a number.
    let out = reef_at(&address, &ca, &["request", "counter", "count"]);
    assert!(
        text(&out.stdout).trim().parse::<u64>().is_ok(),
        "{}",
        text(&out.stdout)
    );

    // The chat demo: the gateway serves the chat container's page.
    let page = eventually_http_get("127.0.0.1:7480", "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>reef chat</title>"), "{page}");

    // The Python container answers, and is restarted when it crashes.
    let out = reef_at(&address, &ca, &["request", "py-upper", "from rust"]);
    assert_eq!(text(&out.stdout), "FROM RUST\n", "{}", text(&out.stderr));
    let out = reef_at(&address, &ca, &["request", "py-upper", "crash"]);
    assert!(!out.status.success());
    let out = reef_at(
        &address,
        &ca,
        &["request", "py-upper", "again", "--timeout", "20s"],
    );
    assert_eq!(text(&out.stdout), "AGAIN\n", "{}", text(&out.stderr));
    let out = reef_at(&address, &ca, &["request", "py-upper", "count"]);
    assert_eq!(
        text(&out.stdout),
        "2\n",
        "counted in state across the restart"
    );

    let status = up
        .terminate(Duration::from_secs(20))
        .expect("reef up exits after SIGTERM");
    assert!(status.success(), "reef up exited with {status}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "container pid {pid} outlived reef up"
        );
    }
}

#[test]
fn config_check_names_the_line_and_the_field() {
    let config_check = |file: &Path| {
        Command::new(binary("reef"))
            .args(["config", "check"])
            .arg(file)
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let file = dir.path().join("project.toml");
        std::fs::write(&file, text).unwrap();
        config_check(&file)
    };
    let demo = config_check(&reef_tests::workspace_root().join("examples/demo/reef.toml"));
    assert!(demo.status.success(), "{}", text(&demo.stderr));
    assert!(text(&demo.stdout).contains("ok: project \"demo\", 6 containers"));

    // The example in the project file's documentation is a valid project.
    let docs =
        std::fs::read_to_string(reef_tests::workspace_root().join("docs/project-file.md")).unwrap();
    let example = docs
        .split("```toml\n")
        .last()
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let documented = check(example);
    assert!(documented.status.success(), "{}", text(&documented.stderr));

    let bad_alias = check(
        "[project]\nname = 'x'\n\n[[container]]\nalias = 'a'\ncommand = ['x']\n\n\
         [[container]]\nalias = 'has space'\ncommand = ['x']\n",
    );
    assert_eq!(bad_alias.status.code(), Some(1));
    let stderr = text(&bad_alias.stderr);
    assert!(
        stderr.contains("project.toml:8: container #2") && stderr.contains("field `alias`"),
        "{stderr}"
    );
    let unknown_field =
        check("[project]\nname = 'x'\n[[container]]\nalias = 'a'\ncomand = ['x']\n");
    let stderr = text(&unknown_field.stderr);
    assert!(
        stderr.contains("line 5") && stderr.contains("comand"),
        "{stderr}"
    );
    let bad_rule =
        check("[project]\nname = 'x'\n[[rule]]\nid = 'r'\naction = 'teleport'\ntarget = 'a'\n");
    let stderr = text(&bad_rule.stderr);
    assert!(stderr.contains("project.toml:3: rule #1"), "{stderr}");
}

#[test]
fn reef_up_rejects_a_bad_project_file_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("bad.toml");
    std::fs::write(
        &project,
        "[project]\nname = 'x'\n[[container]]\nalias = 'has space'\ncommand = ['x']\n",
    )
    .unwrap();
    let out = Command::new(binary("reef"))
        .current_dir(dir.path())
        .arg("up")
        .arg(&project)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("container #1") && stderr.contains("alias"),
        "{stderr}"
    );
}

/// `GET path` from `addr` (HTTP/1.1, connection: close): the whole response. The
/// gateway binds its listeners just after it attaches, which is when `reef up` counts
/// it created: connection refusals are retried for a while.
fn eventually_http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let deadline = std::time::Instant::now() + STARTUP;
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(mut stream) => {
                write!(
                    stream,
                    "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
                )
                .unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                return response;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("nothing listens on {addr}: {error}"),
        }
    }
}
