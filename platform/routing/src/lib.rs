//! Messaging configuration the router consults: groups (`group:NAME` destinations and
//! their strategies), router rules with firewall mode, and mailbox overflow policies.
//! Changed at runtime through the Supervisor API; routers read an immutable snapshot.
//!
//! Everything here is a domain type; [`proto`] converts from and to `routing.proto` at
//! the crate's edge.
//!
//! ```
//! use reef_routing::{Routing, RuleAction, RuleMatch, RuleSpec, Stage};
//!
//! let routing = Routing::new();
//! let rule = RuleSpec {
//!     id: "no-legacy".into(),
//!     stage: Stage::Input,
//!     matcher: RuleMatch { destination: "legacy/*".into(), ..Default::default() },
//!     action: RuleAction::Reject,
//!     target: String::new(),
//!     propagate: false,
//!     limit: 0,
//! };
//! routing.put_rule(rule, "").unwrap();
//! assert_eq!(routing.list_rules().0.len(), 1);
//! ```
#![warn(missing_docs)]

mod groups;
pub mod proto;
mod rules;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use parking_lot::RwLock;
use reef_core::Alias;

pub use self::{
    groups::{Availability, Group, Strategy},
    rules::{
        ListedRule, MessageKind, Refusal, Rule, RuleAction, RuleMatch, RuleSet, RuleSpec, Stage,
        TAP_HEADER, Verdict,
    },
};

/// Destinations that start with this name a group.
pub const GROUP_PREFIX: &str = "group:";
/// Rules one node holds.
pub const MAX_RULES: usize = 1024;
/// Groups one node holds.
pub const MAX_GROUPS: usize = 65_536;
/// Members one group holds.
pub const MAX_GROUP_MEMBERS: usize = 65_536;

/// Why a routing change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// Malformed input.
    #[error("{0}")]
    Invalid(String),
    /// A rule or group that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A bound on rules, groups or members.
    #[error("{0}")]
    Full(String),
}

/// Checks a redirect or tap target: an alias or `group:NAME`.
pub fn validate_target(target: &str) -> Result<(), RoutingError> {
    let name = target.strip_prefix(GROUP_PREFIX).unwrap_or(target);
    Alias::parse(name)
        .map(drop)
        .map_err(|e| RoutingError::Invalid(format!("target {target:?}: {}", e.reason)))
}

fn validate_group_name(name: &str) -> Result<(), RoutingError> {
    Alias::parse(name)
        .map(drop)
        .map_err(|e| RoutingError::Invalid(format!("group name {name:?}: {}", e.reason)))
}

/// What happens to a SEND or REQUEST for a full mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The sender waits, up to the enqueue timeout, then is refused.
    #[default]
    Block,
    /// The sender is refused at once.
    Reject,
    /// The new send is a dead letter.
    DropNewest,
    /// The oldest queued envelope is a dead letter.
    DropOldest,
}

/// The node's groups, rules and overflow policies.
#[derive(Debug, Default)]
pub struct Routing {
    /// Overflow policies by receiver alias; absent = [`Overflow::Block`].
    overflow: RwLock<HashMap<Alias, Overflow>>,
    groups: RwLock<HashMap<String, Arc<Group>>>,
    rules: RwLock<Arc<RuleSet>>,
    /// Bumped on every rule change, so that routers re-read the set only then.
    rules_version: AtomicU64,
}

impl Routing {
    /// No groups, no rules, firewall off.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The overflow policy of `alias`'s mailbox.
    pub fn overflow(&self, alias: &Alias) -> Overflow {
        self.overflow.read().get(alias).copied().unwrap_or_default()
    }

    /// Sets the overflow policy of `alias`'s mailbox.
    pub fn set_overflow(&self, alias: Alias, policy: Overflow) -> Result<(), RoutingError> {
        let mut policies = self.overflow.write();
        if policy == Overflow::Block {
            policies.remove(&alias);
        } else if policies.len() >= MAX_GROUPS && !policies.contains_key(&alias) {
            return Err(RoutingError::Full(format!(
                "the node holds {MAX_GROUPS} overflow policies already"
            )));
        } else {
            policies.insert(alias, policy);
        }
        Ok(())
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<Arc<Group>> {
        self.groups.read().get(name).cloned()
    }

    /// Every group, by name.
    pub fn groups(&self) -> Vec<(String, Arc<Group>)> {
        let mut all: Vec<_> = self
            .groups
            .read()
            .iter()
            .map(|(name, group)| (name.clone(), group.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Creates group `name` or changes its strategy, keeping its members.
    pub fn configure_group(
        &self,
        name: &str,
        strategy: Strategy,
        hash_key: &str,
    ) -> Result<Arc<Group>, RoutingError> {
        validate_group_name(name)?;
        self.update_group(name, |group| {
            Ok(Group::new(
                strategy,
                hash_key.to_owned(),
                group.members.clone(),
            ))
        })
    }

    /// Adds `aliases` to group `name` (created with round-robin if new).
    pub fn join(&self, name: &str, aliases: &[String]) -> Result<Arc<Group>, RoutingError> {
        validate_group_name(name)?;
        let aliases = parse_aliases(aliases)?;
        self.update_group(name, |group| {
            let mut members = group.members.clone();
            for alias in aliases {
                if !members.contains(&alias) {
                    members.push(alias);
                }
            }
            if members.len() > MAX_GROUP_MEMBERS {
                return Err(RoutingError::Full(format!(
                    "group {name:?} would have more than {MAX_GROUP_MEMBERS} members"
                )));
            }
            Ok(Group::new(group.strategy, group.hash_key.clone(), members))
        })
    }

    /// Removes `aliases` from group `name`.
    pub fn leave(&self, name: &str, aliases: &[String]) -> Result<Arc<Group>, RoutingError> {
        if self.group(name).is_none() {
            return Err(RoutingError::NotFound(format!(
                "no group is named {name:?}"
            )));
        }
        let aliases = parse_aliases(aliases)?;
        self.update_group(name, |group| {
            let members = group
                .members
                .iter()
                .filter(|m| !aliases.contains(m))
                .cloned()
                .collect();
            Ok(Group::new(group.strategy, group.hash_key.clone(), members))
        })
    }

    /// Removes `alias` from every group (it was destroyed).
    pub fn forget_member(&self, alias: &Alias) {
        let mut groups = self.groups.write();
        for group in groups.values_mut() {
            if group.members.contains(alias) {
                let members = group
                    .members
                    .iter()
                    .filter(|m| *m != alias)
                    .cloned()
                    .collect();
                *group = Arc::new(Group::new(group.strategy, group.hash_key.clone(), members));
            }
        }
    }

    fn update_group(
        &self,
        name: &str,
        change: impl FnOnce(&Group) -> Result<Group, RoutingError>,
    ) -> Result<Arc<Group>, RoutingError> {
        let mut groups = self.groups.write();
        if !groups.contains_key(name) && groups.len() >= MAX_GROUPS {
            return Err(RoutingError::Full(format!(
                "the node holds {MAX_GROUPS} groups already"
            )));
        }
        let empty = Group::default();
        let current = groups.get(name).map_or(&empty, |g| g);
        let changed = Arc::new(change(current)?);
        groups.insert(name.to_owned(), changed.clone());
        Ok(changed)
    }

    /// The rules now in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().clone()
    }

    /// Changes whenever the rules do.
    pub fn rules_version(&self) -> u64 {
        self.rules_version.load(Relaxed)
    }

    /// Adds `rule`, or replaces the rule with its id; `before` places it in front of
    /// another rule.
    pub fn put_rule(&self, rule: RuleSpec, before: &str) -> Result<(), RoutingError> {
        let rule = Arc::new(Rule::compile(rule)?);
        self.change_rules(|set| {
            let existing = set.rules.iter().position(|r| r.id() == rule.id());
            if before.is_empty() {
                match existing {
                    Some(index) => set.rules[index] = rule,
                    None if set.rules.len() >= MAX_RULES => {
                        return Err(RoutingError::Full(format!(
                            "the node holds {MAX_RULES} rules already"
                        )));
                    }
                    None => set.rules.push(rule),
                }
                return Ok(());
            }
            if let Some(index) = existing {
                set.rules.remove(index);
            }
            let Some(at) = set.rules.iter().position(|r| r.id() == before) else {
                return Err(RoutingError::NotFound(format!(
                    "no rule {before:?} to insert before"
                )));
            };
            if set.rules.len() >= MAX_RULES {
                return Err(RoutingError::Full(format!(
                    "the node holds {MAX_RULES} rules already"
                )));
            }
            set.rules.insert(at, rule);
            Ok(())
        })
    }

    /// Removes rule `id`.
    pub fn delete_rule(&self, id: &str) -> Result<(), RoutingError> {
        self.change_rules(|set| {
            let Some(index) = set.rules.iter().position(|r| r.id() == id) else {
                return Err(RoutingError::NotFound(format!("no rule is named {id:?}")));
            };
            set.rules.remove(index);
            Ok(())
        })
    }

    /// Turns firewall mode on or off.
    pub fn set_firewall(&self, enabled: bool) {
        let _ = self.change_rules(|set| {
            set.firewall = enabled;
            Ok(())
        });
    }

    /// The rules (input stage first, each in evaluation order) and the firewall flag.
    pub fn list_rules(&self) -> (Vec<ListedRule>, bool) {
        let set = self.rules();
        let mut rules: Vec<_> = set.rules.iter().map(|r| r.listed()).collect();
        rules.sort_by_key(|r| r.spec.stage);
        (rules, set.firewall)
    }

    fn change_rules(
        &self,
        change: impl FnOnce(&mut RuleSet) -> Result<(), RoutingError>,
    ) -> Result<(), RoutingError> {
        let mut current = self.rules.write();
        let mut next = RuleSet {
            rules: current.rules.clone(),
            firewall: current.firewall,
        };
        change(&mut next)?;
        *current = Arc::new(next);
        self.rules_version.fetch_add(1, Relaxed);
        Ok(())
    }
}

fn parse_aliases(aliases: &[String]) -> Result<Vec<Alias>, RoutingError> {
    if aliases.is_empty() {
        return Err(RoutingError::Invalid("no aliases given".into()));
    }
    aliases
        .iter()
        .map(|a| Alias::parse(a).map_err(|e| RoutingError::Invalid(e.to_string())))
        .collect()
}
