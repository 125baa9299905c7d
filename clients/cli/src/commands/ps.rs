//! `reef ps`: the container tree with state, kind, pid, restarts and uptime.

use std::{process::ExitCode, time::SystemTime};

use reef_proto::{ContainerNode, TreeRequest, supervisor_client::SupervisorClient};
use reef_sdk::sample::state_name;
use reef_sdk::{ConnectOptions, Error};

pub async fn run(options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let channel = options.connect().await?;
    let tree = SupervisorClient::new(channel)
        .tree(TreeRequest {})
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    println!(
        "{:<28} {:<10} {:<8} {:<8} {:>8} {:>8} {:>8} {:<9} ACTIVITY",
        "ALIAS", "NODE", "STATE", "KIND", "PID", "RESTARTS", "UPTIME", "ATTACHED"
    );
    let now_ms = reef_core::unix_ms(SystemTime::now());
    for root in &tree.roots {
        print_node(root, 0, now_ms);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_node(node: &ContainerNode, depth: usize, now_ms: u64) {
    let Some(container) = &node.container else {
        return;
    };
    let alias = format!("{}{}", "  ".repeat(depth), container.alias);
    let pid = match container.pid {
        0 => "-".to_owned(),
        pid => pid.to_string(),
    };
    let supervised = container.supervised.as_ref();
    let (state, kind, restarts, since, activity) = match supervised {
        Some(s) => (
            state_name(container),
            s.kind.as_str(),
            s.restarts.to_string(),
            s.started_at_unix_ms,
            match (s.activity.is_empty(), s.last_failure.is_empty()) {
                (false, _) => s.activity.clone(),
                (true, false) => format!("last failure: {}", s.last_failure),
                (true, true) => String::new(),
            },
        ),
        // A client or a container that registered on its own: not supervised.
        None => (
            "-",
            "-",
            "-".to_owned(),
            container.registered_at_unix_ms,
            String::new(),
        ),
    };
    let uptime = match since {
        0 => "-".to_owned(),
        ms => format!("{}s", now_ms.saturating_sub(ms) / 1000),
    };
    // Containers of other nodes carry the name of the node they live on; "-" = here.
    let node_name = container
        .labels
        .get("reef.node")
        .map_or("-", String::as_str);
    println!(
        "{:<28} {:<10} {:<8} {:<8} {:>8} {:>8} {:>8} {:<9} {}",
        alias,
        node_name,
        state,
        kind,
        pid,
        restarts,
        uptime,
        if container.attached { "yes" } else { "no" },
        activity
    );
    for child in &node.children {
        print_node(child, depth + 1, now_ms);
    }
}
