//! `reef ps`: the container tree.

use std::{
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use reef_proto::{ContainerNode, TreeRequest, supervisor_client::SupervisorClient};
use reef_sdk::{ConnectOptions, Error};

pub async fn run(options: ConnectOptions) -> anyhow::Result<ExitCode> {
    let channel = options.connect().await?;
    let tree = SupervisorClient::new(channel)
        .tree(TreeRequest {})
        .await
        .map_err(Error::Rejected)?
        .into_inner();
    println!(
        "{:<32} {:<10} {:>8} {:<9} {:>10} {:>10} {:>8}",
        "ALIAS", "NAME", "PID", "STATE", "IN", "OUT", "UPTIME"
    );
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
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
    let uptime_s = now_ms.saturating_sub(container.registered_at_unix_ms) / 1000;
    println!(
        "{:<32} {:<10} {:>8} {:<9} {:>10} {:>10} {:>7}s",
        alias,
        container.name,
        pid,
        if container.attached {
            "attached"
        } else {
            "waiting"
        },
        container.envelopes_in,
        container.envelopes_out,
        uptime_s
    );
    for child in &node.children {
        print_node(child, depth + 1, now_ms);
    }
}
