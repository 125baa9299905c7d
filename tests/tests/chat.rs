//! The chat demo as people use it: two headless Chromium pages (driven by Playwright,
//! `tests/browser/chat.mjs`) chat through a real reef-gateway and a supervised
//! `reef-demo chat` container, and go on chatting while the test kills the container.
//! `scripts/test` installs Chromium (Debian `chromium`) and `playwright-core` (npm).

use reef_tests::{BrowserScript, TestNode, signal_pid, start_gateway, wait_for_container};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_through_a_restart_of_the_chat_container() {
    let node = TestNode::start();
    let chat = node.create_demo("chat", &["chat"]).await;
    let supervisor = node.supervisor().await;
    let gateway = start_gateway(
        &node,
        r#"
[[http]]
listen = "127.0.0.1:0"

[[http.route]]
method = "GET"
path = "/"
to = "chat"

[[http.websocket]]
path = "/chat"
to = "chat"
join = ["lobby"]
"#,
    );
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chat.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("{}/", gateway.http[0]);
    let mut browser = BrowserScript::start("chat.mjs", &[url.as_ref(), screenshot.as_ref()]);

    let first = browser.next_line();
    assert_eq!(
        first, "exchanged",
        "the first messages did not go both ways"
    );
    // Mid-chat: the chat container dies. The node restarts it; what the browsers say
    // meanwhile waits for it.
    signal_pid(chat.pid, nix::sys::signal::Signal::SIGKILL);
    browser.tell("killed");
    let outcome = browser.next_line();
    assert_eq!(
        outcome, "carried-on",
        "the chat did not carry on after the restart"
    );
    let restarted = wait_for_container(&supervisor, "chat", "restarted", |c| {
        c.attached && c.supervised.as_ref().is_some_and(|s| s.restarts >= 1)
    })
    .await;
    assert_ne!(restarted.pid, chat.pid);
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    drop(gateway);
}
