//! Aliases: the unique addresses of containers.

use std::{fmt, sync::Arc};

/// Longest alias accepted, in bytes.
pub const MAX_ALIAS_LEN: usize = 128;

/// A validated container address, e.g. `echo`, `chat/room-1`, `worker.3`.
///
/// 1–128 characters of `[A-Za-z0-9._-]` in segments separated by `/`, each segment
/// starting with a letter or digit. `:` is reserved for group addresses (`group:NAME`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Alias(Arc<str>);

impl TryFrom<String> for Alias {
    type Error = InvalidAlias;

    fn try_from(raw: String) -> Result<Self, InvalidAlias> {
        Self::parse(&raw)
    }
}

impl From<Alias> for String {
    fn from(alias: Alias) -> Self {
        alias.0.to_string()
    }
}

/// Why a string is not an alias.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid alias {alias:?}: {reason}")]
pub struct InvalidAlias {
    /// The rejected input (truncated when very long).
    pub alias: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

impl Alias {
    /// Validates `raw` as an alias.
    pub fn parse(raw: &str) -> Result<Self, InvalidAlias> {
        let fail = |reason| InvalidAlias {
            alias: raw.chars().take(MAX_ALIAS_LEN + 8).collect(),
            reason,
        };
        if raw.is_empty() {
            return Err(fail("it is empty"));
        }
        if raw.len() > MAX_ALIAS_LEN {
            return Err(fail("it is longer than 128 bytes"));
        }
        for segment in raw.split('/') {
            let Some(first) = segment.chars().next() else {
                return Err(fail(
                    "it has an empty segment (leading, trailing or double '/')",
                ));
            };
            if !first.is_ascii_alphanumeric() {
                return Err(fail("each segment must start with a letter or digit"));
            }
            if !segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(fail(
                    "only letters, digits, '.', '_', '-' and '/' are allowed",
                ));
            }
        }
        Ok(Self(raw.into()))
    }

    /// The alias as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, cheap to clone into envelopes' routing tables.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Display for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Alias {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_hierarchical_aliases() {
        for ok in ["echo", "a", "chat/room-1", "worker.3", "A_b-c/9"] {
            assert_eq!(Alias::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_malformed_aliases_with_a_reason() {
        for bad in ["", "/echo", "echo/", "a//b", "-x", "group:x", "sp ace", "é"] {
            assert!(Alias::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = "a".repeat(MAX_ALIAS_LEN + 1);
        assert!(Alias::parse(&long).unwrap_err().reason.contains("longer"));
    }
}
