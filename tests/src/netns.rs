//! Network namespaces for tests of many nodes.
//!
//! ```text
//!   test's namespace ── rfPIDxN ═╗
//!                                ║ veth        hub namespace: bridge br0
//!   namespace HOST-1 ── eth0 ════╬═ h0 ─┐
//!   namespace HOST-2 ── eth0 ════╬═ h1 ─┼── br0
//!   namespace HOST-3 ── eth0 ════╩═ h2 ─┘
//! ```
//!
//! One namespace per host on a /24 of its own, joined by a bridge in a hub namespace,
//! plus a veth from the test's namespace into the hub (address .254), so the test
//! reaches every host and the hosts reach each other. A partition is a pair of iptables
//! DROP rules inside one host's namespace; healing flushes them. Dropping the lab
//! deletes the namespaces, which deletes every interface it made.

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Labs made by this process, for unique names.
static LABS: AtomicU32 = AtomicU32::new(0);

/// Namespaces joined by a bridge; see the module docs.
#[derive(Debug)]
pub struct NetLab {
    prefix: String,
    subnet: [u8; 3],
    hosts: Vec<String>,
}

impl NetLab {
    /// Creates one namespace per name in `hosts`. `Err` says why this machine cannot
    /// (not root, no `ip`, no `iptables`, namespaces not permitted).
    pub fn create(hosts: &[&str]) -> Result<Self, String> {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Self {
            prefix: format!("rf{pid}x{n}"),
            subnet: [10, 233, ((pid.wrapping_mul(8) + n) % 250) as u8],
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        run("iptables", &["--version"]).map_err(|e| format!("iptables is missing: {e}"))?;
        run("ip", &["netns", "add", &lab.hub()])?;
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), String> {
        let hub = self.hub();
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, host) in self.hosts.iter().enumerate() {
            let ns = self.ns(host);
            let port = format!("h{i}");
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &port, "master", "br0", "up"],
            )?;
            let address = format!("{}/24", self.ip(host));
            run("ip", &["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let outside = &self.prefix;
        run(
            "ip",
            &[
                "link", "add", outside, "type", "veth", "peer", "name", "out", "netns", &hub,
            ],
        )?;
        run(
            "ip",
            &["-n", &hub, "link", "set", "out", "master", "br0", "up"],
        )?;
        let [a, b, c] = self.subnet;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{a}.{b}.{c}.254/24"),
                "dev",
                outside,
            ],
        )?;
        run("ip", &["link", "set", outside, "up"])
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The address of `host`.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        let index = self
            .hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host} in this lab"));
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, index as u8 + 1)
    }

    /// Cuts `host` off from `other`: `host` drops everything from and to it.
    pub fn partition(&self, host: &str, other: &str) {
        let ns = self.ns(host);
        let peer = self.ip(other).to_string();
        for rule in [["INPUT", "-s"], ["OUTPUT", "-d"]] {
            run(
                "ip",
                &[
                    "netns", "exec", &ns, "iptables", "-I", rule[0], rule[1], &peer, "-j", "DROP",
                ],
            )
            .expect("iptables rule");
        }
    }

    /// Removes every partition of `host`.
    pub fn heal(&self, host: &str) {
        let ns = self.ns(host);
        for chain in ["INPUT", "OUTPUT"] {
            run("ip", &["netns", "exec", &ns, "iptables", "-F", chain]).expect("iptables flush");
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = run("ip", &["netns", "del", &self.ns(host)]);
        }
        let _ = run("ip", &["netns", "del", &self.hub()]);
        let _ = run("ip", &["link", "del", &self.prefix]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}
