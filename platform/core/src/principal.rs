//! Who is calling: the identity in the caller's client certificate.

use std::fmt;

use crate::LINK_PREFIX;

/// A caller, as policies name it (`kind:name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `reef://admin/NAME`: allowed everything.
    Admin(String),
    /// `reef://client/NAME`: a person or program outside the tree (the CLI, a service).
    Client(String),
    /// `reef://container/ALIAS`, or a container proven by its lease on its stream.
    Container(String),
    /// `reef://node/NAME`: another node of the cluster.
    Node(String),
    /// No certificate (or one without a reef identity).
    Anonymous,
}

impl Principal {
    /// The principal a certificate's reef identity (URI SAN) names.
    pub fn from_identity(identity: Option<&str>) -> Self {
        identity
            .and_then(|uri| uri.strip_prefix("reef://"))
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(kind, name)| Self::of_kind(kind, name))
            .unwrap_or(Self::Anonymous)
    }

    /// Parses the `kind:name` form (what a node forwarding a call says it acts for).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "anonymous" => Some(Self::Anonymous),
            _ => text
                .split_once(':')
                .and_then(|(kind, name)| Self::of_kind(kind, name)),
        }
    }

    /// The principal of `kind` named `name`, in either form.
    fn of_kind(kind: &str, name: &str) -> Option<Self> {
        if name.is_empty() {
            return None;
        }
        let name = name.to_owned();
        match kind {
            "admin" => Some(Self::Admin(name)),
            "client" => Some(Self::Client(name)),
            "container" => Some(Self::Container(name)),
            "node" => Some(Self::Node(name)),
            _ => None,
        }
    }

    /// The alias this principal may register, attach and announce as, if it is bound to
    /// one: a container's own alias, a node's link. Others are held to leases only.
    pub fn own_alias(&self) -> Option<String> {
        match self {
            Self::Container(alias) => Some(alias.clone()),
            Self::Node(name) => Some(format!("{LINK_PREFIX}{name}")),
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin(name) => write!(f, "admin:{name}"),
            Self::Client(name) => write!(f, "client:{name}"),
            Self::Container(alias) => write!(f, "container:{alias}"),
            Self::Node(name) => write!(f, "node:{name}"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_their_text_round_trip() {
        for (uri, text) in [
            ("reef://admin/a", "admin:a"),
            ("reef://client/ops", "client:ops"),
            ("reef://container/chat/room-1", "container:chat/room-1"),
            ("reef://node/edge", "node:edge"),
        ] {
            let principal = Principal::from_identity(Some(uri));
            assert_eq!(principal.to_string(), text);
            assert_eq!(Principal::parse(text), Some(principal));
        }
        assert_eq!(Principal::from_identity(None), Principal::Anonymous);
        assert_eq!(
            Principal::from_identity(Some("reef://pilot/x")),
            Principal::Anonymous
        );
        assert_eq!(Principal::parse("client:"), None);
        assert_eq!(
            Principal::Node("b".into()).own_alias().as_deref(),
            Some("nodes/b")
        );
    }
}
