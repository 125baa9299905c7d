//! The gateway's configuration file (TOML): listeners, their limits and their routes.
//!
//! ```toml
//! [[http]]
//! listen = "0.0.0.0:8080"
//! timeout_ms = 5000            # no reply in time: 504; a body slower than this: 408
//! max_body_bytes = 1048576     # larger: 413
//! max_in_flight = 1024         # more requests at once: 503
//! block = ["10.0.0.0/8"]       # client addresses refused with 403
//!
//! [[http.route]]
//! method = "GET"               # or "*"
//! path = "/users/{id}"         # {name} matches one segment, {*name} the rest
//! to = "users"                 # an alias or group:NAME
//! ```

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listeners.
    #[serde(default)]
    pub http: Vec<HttpListener>,
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
    #[serde(default)]
    pub block: Vec<IpNet>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_max_body_bytes() -> usize {
    1 << 20
}

fn default_max_in_flight() -> usize {
    1024
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

fn any_method() -> String {
    "*".to_owned()
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let config: Self =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for listener in &config.http {
            for route in &listener.routes {
                crate::routes::Pattern::parse(&route.path).map_err(|e| {
                    anyhow::anyhow!("{}: route {:?}: {e}", path.display(), route.path)
                })?;
                if route.to.is_empty() {
                    anyhow::bail!("{}: route {:?} has no `to`", path.display(), route.path);
                }
            }
            if listener.max_in_flight == 0 || listener.timeout_ms == 0 {
                anyhow::bail!(
                    "{}: listener {}: max_in_flight and timeout_ms must be above 0",
                    path.display(),
                    listener.listen
                );
            }
        }
        Ok(config)
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
