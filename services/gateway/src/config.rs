//! The gateway's configuration file (TOML): listeners, their limits and their routes.
//!
//! ```toml
//! max_rooms = 10000            # rooms joined beyond this are refused
//!
//! [[http]]
//! listen = "0.0.0.0:8080"
//! timeout_ms = 5000            # no reply in time: 504; a body slower than this: 408
//! max_body_bytes = 1048576     # larger: 413
//! max_in_flight = 1024         # more requests at once: 503
//! max_connections = 10000      # more connections are closed at once
//! block = ["10.0.0.0/8"]       # client addresses whose connections are closed at once
//! origins = ["https://chat.example"]  # a request with another Origin header: 403
//! tls = { cert = "server.pem", key = "server.key" }  # relative to this file
//!
//! [[http.route]]
//! method = "GET"               # or "*"
//! path = "/users/{id}"         # {name} matches one segment, {*name} the rest
//! to = "users"                 # an alias or group:NAME
//!
//! [[http.websocket]]
//! path = "/chat/{room}"        # a WebSocket upgrade on this path
//! to = "chat"                  # gets the connection's events and frames
//! join = ["{room}"]            # rooms the connection joins when it opens
//! max_frame_bytes = 65536      # a larger message closes the connection (1009)
//!
//! [[tcp]]
//! listen = "0.0.0.0:7000"
//! to = "lines"                 # each frame is a request to it; the reply goes back
//! framing = "lines"            # or "length": a 4-byte big-endian length, then the frame
//! idle_timeout_ms = 300000     # a connection that sends nothing this long is closed
//!
//! [[udp]]
//! listen = "0.0.0.0:7001"
//! to = "metrics"               # each datagram is a request; a non-empty reply goes back
//! ```

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rooms the gateway keeps at most (a room lasts as long as the gateway).
    #[serde(default = "default_max_rooms")]
    pub max_rooms: usize,
    /// HTTP (and WebSocket) listeners.
    #[serde(default)]
    pub http: Vec<HttpListener>,
    /// TCP listeners with framing.
    #[serde(default)]
    pub tcp: Vec<TcpListener>,
    /// UDP listeners.
    #[serde(default)]
    pub udp: Vec<UdpListener>,
}

/// One HTTP listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    pub listen: SocketAddr,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub block: Vec<IpNet>,
    /// Allowed `Origin` headers; empty: any.
    #[serde(default)]
    pub origins: Vec<String>,
    pub tls: Option<Tls>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    #[serde(default, rename = "websocket")]
    pub websockets: Vec<WebSocketRoute>,
}

/// A route: requests with `method` whose path matches `path` go to `to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default = "any_method")]
    pub method: String,
    pub path: String,
    pub to: String,
}

/// A WebSocket route: upgrades on `path` become connections whose events go to `to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketRoute {
    pub path: String,
    pub to: String,
    /// Rooms joined at connect: names, or `{param}` from the path.
    #[serde(default)]
    pub join: Vec<String>,
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Frames go in acknowledged mode: one that `to` had not handled when it died is
    /// delivered again to its next process.
    #[serde(default = "yes")]
    pub acknowledged: bool,
}

/// A TCP listener: each frame is a request to `to`, and its reply is written back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    pub listen: SocketAddr,
    pub to: String,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub block: Vec<IpNet>,
    pub tls: Option<Tls>,
}

/// How a TCP stream is cut into frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Lines ending in `\n` (a `\r` before it is dropped).
    #[default]
    Lines,
    /// A 4-byte big-endian length, then that many bytes.
    Length,
}

/// A UDP listener: each datagram is a request to `to`; a non-empty reply goes back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpListener {
    pub listen: SocketAddr,
    pub to: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub block: Vec<IpNet>,
}

/// A listener's certificate chain and key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_idle_timeout_ms() -> u64 {
    300_000
}

fn default_max_body_bytes() -> usize {
    1 << 20
}

fn default_max_in_flight() -> usize {
    1024
}

fn default_max_connections() -> usize {
    10_000
}

fn default_max_rooms() -> usize {
    10_000
}

fn default_max_frame_bytes() -> usize {
    64 << 10
}

fn any_method() -> String {
    "*".to_owned()
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads and checks the file at `path`. Relative certificate paths are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), dir)
    }

    /// Parses and checks `text`, which came from `origin` (named in errors); relative
    /// certificate paths are relative to `dir`.
    pub fn parse(text: &str, origin: &str, dir: &Path) -> anyhow::Result<Self> {
        let mut config: Self =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        config
            .check(dir)
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(config)
    }

    fn check(&mut self, dir: &Path) -> Result<(), String> {
        if self.http.is_empty() && self.tcp.is_empty() && self.udp.is_empty() {
            return Err("no listener: add [[http]], [[tcp]] or [[udp]]".to_owned());
        }
        for listener in &mut self.http {
            let at = listener.listen;
            for route in &listener.routes {
                check_route(&route.path, &route.to).map_err(|e| format!("listener {at}: {e}"))?;
            }
            for route in &listener.websockets {
                check_route(&route.path, &route.to).map_err(|e| format!("listener {at}: {e}"))?;
                if route.max_frame_bytes == 0 {
                    return Err(format!("listener {at}: max_frame_bytes must be above 0"));
                }
            }
            if listener.max_in_flight == 0 || listener.timeout_ms == 0 {
                return Err(format!(
                    "listener {at}: max_in_flight and timeout_ms must be above 0"
                ));
            }
            check_connections(at, listener.max_connections)?;
            resolve_tls(&mut listener.tls, dir);
        }
        for listener in &mut self.tcp {
            let at = listener.listen;
            if listener.to.is_empty()
                || listener.max_frame_bytes == 0
                || listener.timeout_ms == 0
                || listener.idle_timeout_ms == 0
            {
                return Err(format!(
                    "tcp listener {at}: `to`, max_frame_bytes, timeout_ms and idle_timeout_ms must be set"
                ));
            }
            check_connections(at, listener.max_connections)?;
            resolve_tls(&mut listener.tls, dir);
        }
        for listener in &self.udp {
            let at = listener.listen;
            if listener.to.is_empty() || listener.max_in_flight == 0 || listener.timeout_ms == 0 {
                return Err(format!(
                    "udp listener {at}: `to`, max_in_flight and timeout_ms must be set"
                ));
            }
        }
        Ok(())
    }
}

fn check_route(path: &str, to: &str) -> Result<(), String> {
    crate::routes::Pattern::parse(path).map_err(|e| format!("route {path:?}: {e}"))?;
    if to.is_empty() {
        return Err(format!("route {path:?} has no `to`"));
    }
    Ok(())
}

fn check_connections(at: SocketAddr, max: usize) -> Result<(), String> {
    match max {
        0 => Err(format!("listener {at}: max_connections must be above 0")),
        _ => Ok(()),
    }
}

fn resolve_tls(tls: &mut Option<Tls>, dir: &Path) {
    if let Some(tls) = tls {
        tls.cert = dir.join(&tls.cert);
        tls.key = dir.join(&tls.key);
    }
}

/// An address block: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u32::from(net) as u128, u32::from(ip) as u128, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net), u128::from(ip), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => max,
            bits => bits
                .parse::<u8>()
                .ok()
                .filter(|bits| *bits <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0-{max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_match_their_prefix() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    }
}
