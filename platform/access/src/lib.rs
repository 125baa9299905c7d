//! Access control: who a caller is (its certificate), and what the node's policies let
//! it do.
//!
//! Every send, management call, look at a container, state read or write and routing
//! change is checked against ordered rules (see `policy`): a policy file's (`reefd
//! --policy FILE`, read again when it changes), or else the built-in [`DEFAULT_POLICY`].
//! A development node that lets anonymous callers in has none ([`Access::open`]):
//! everything is allowed but impersonation. Always, a certificate that names a container
//! or node binds its holder to that alias.
//!
//! This crate decides; it does not know gRPC. The node's service edge turns a
//! [`Refused`] into PERMISSION_DENIED.
//!
//! ```
//! use reef_access::{Access, Action, Principal};
//!
//! let open = Access::open();
//! let anyone = Principal::Anonymous;
//! assert!(open.check(&anyone, Action::Send, "echo", &[]).is_ok());
//! // Without policies only impersonation is refused.
//! let container = Principal::Container("a".into());
//! assert!(reef_access::check_claim(&container, "b").is_err());
//! ```
#![warn(missing_docs)]

mod policy;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use parking_lot::{Mutex, RwLock};

pub use self::policy::{Action, DEFAULT_POLICY, Denial, Policies, PolicyError, SELF};
pub use reef_core::Principal;

/// The policies in force on a node, replaceable while it runs.
#[derive(Debug, Default)]
pub struct Access {
    file: Option<PathBuf>,
    policies: RwLock<Option<Arc<Policies>>>,
    /// Moves whenever the policies change (routers re-read them then).
    version: AtomicU64,
    modified: Mutex<Option<SystemTime>>,
}

impl Access {
    /// No policies: everything is allowed but impersonation (a development node that
    /// lets anonymous callers in).
    pub fn open() -> Arc<Self> {
        Arc::default()
    }

    /// The built-in policy ([`DEFAULT_POLICY`]): a node without a policy file.
    pub fn builtin() -> Arc<Self> {
        Arc::new(Self {
            policies: RwLock::new(Some(Arc::new(Policies::builtin()))),
            version: AtomicU64::new(1),
            ..Self::default()
        })
    }

    /// The policies of `file`, read now and again whenever it changes.
    pub fn from_file(file: &Path) -> Result<Arc<Self>, PolicyError> {
        let modified = modified(file);
        let policies = Policies::load(file)?;
        Ok(Arc::new(Self {
            file: Some(file.to_owned()),
            policies: RwLock::new(Some(Arc::new(policies))),
            version: AtomicU64::new(1),
            modified: Mutex::new(modified),
        }))
    }

    /// Reads the policy file again if it changed. A file that no longer parses leaves
    /// the policies in force as they were.
    pub fn reload_if_changed(&self) -> Result<bool, PolicyError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let now = modified(file);
        let mut seen = self.modified.lock();
        if now == *seen {
            return Ok(false);
        }
        *seen = now;
        let policies = Policies::load(file)?;
        *self.policies.write() = Some(Arc::new(policies));
        self.version.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// The policies in force, `None` when every caller may do everything.
    pub fn policies(&self) -> Option<Arc<Policies>> {
        self.policies.read().clone()
    }

    /// Moves whenever [`Access::policies`] changes.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Checks `principal` doing `action` to `target` (with `scope`, see
    /// [`Policies::decide`]).
    pub fn check(
        &self,
        principal: &Principal,
        action: Action,
        target: &str,
        scope: &[String],
    ) -> Result<(), Refused> {
        match self.policies() {
            None => Ok(()),
            Some(policies) => policies
                .decide(principal, action, target, scope)
                .map_err(Refused::Policy),
        }
    }

    /// [`Access::check`] for an action on container `alias`, whose rules may name any
    /// of its supervision ancestors (`parent`'s chain, when it is not registered yet).
    pub fn check_subtree(
        &self,
        ancestry: &impl Ancestry,
        principal: &Principal,
        action: Action,
        alias: &str,
        parent: Option<&str>,
    ) -> Result<(), Refused> {
        self.check_in_tree(ancestry, principal, action, "", alias, parent)
    }

    /// Whether `principal` may see container `alias` (listed, in the tree, in events,
    /// its log, dead letters to or from it): `read` on [`INSPECT`]`ALIAS`, which a rule
    /// on `inspect:ANCESTOR` covers too. `parent` is for a container the registry no
    /// longer knows (an event about its removal).
    pub fn check_inspect(
        &self,
        ancestry: &impl Ancestry,
        principal: &Principal,
        alias: &str,
        parent: Option<&str>,
    ) -> Result<(), Refused> {
        self.check_in_tree(ancestry, principal, Action::Read, INSPECT, alias, parent)
    }

    /// `action` on `prefix` + `alias`, with its ancestors (each with `prefix`) as scope.
    fn check_in_tree(
        &self,
        ancestry: &impl Ancestry,
        principal: &Principal,
        action: Action,
        prefix: &str,
        alias: &str,
        parent: Option<&str>,
    ) -> Result<(), Refused> {
        let Some(policies) = self.policies() else {
            return Ok(());
        };
        if matches!(principal, Principal::Admin(_)) {
            return Ok(());
        }
        let mut ancestors = Vec::new();
        let mut next = match parent {
            Some(parent) => Some(parent.to_owned()),
            None => ancestry.parent_of(alias),
        };
        // Bounded: the registry refuses parent cycles, but a bound costs nothing.
        while let Some(ancestor) = next.take() {
            if ancestors.len() >= 64 || ancestors.contains(&ancestor) {
                break;
            }
            next = ancestry.parent_of(&ancestor);
            ancestors.push(ancestor);
        }
        let scope: Vec<String> = match prefix {
            "" => ancestors,
            _ => ancestors.iter().map(|a| format!("{prefix}{a}")).collect(),
        };
        policies
            .decide(principal, action, &format!("{prefix}{alias}"), &scope)
            .map_err(Refused::Policy)
    }
}

/// The prefix of the policy target for seeing a container: `read` on `inspect:ALIAS`.
pub const INSPECT: &str = "inspect:";

/// Where access finds a container's supervision parent (the node's registry).
pub trait Ancestry {
    /// The parent alias of `alias`, if it is known and has one.
    fn parent_of(&self, alias: &str) -> Option<String>;
}

/// Why the node refuses a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A policy (or the default of a policy file) denies it.
    #[error("{}", .0.message)]
    Policy(Denial),
    /// The caller's certificate binds it to another alias.
    #[error("the certificate presented is {principal}'s: it cannot act as {alias:?}")]
    Impersonation {
        /// Who the certificate names.
        principal: Principal,
        /// The alias it tried to act as.
        alias: String,
    },
}

impl Refused {
    /// The policy that denied, if a policy did.
    pub fn policy(&self) -> Option<&str> {
        match self {
            Self::Policy(denial) => Some(&denial.policy),
            Self::Impersonation { .. } => None,
        }
    }
}

/// Refuses a caller whose certificate binds it to another alias than `alias`: a
/// container cannot register, attach or announce as another container.
pub fn check_claim(principal: &Principal, alias: &str) -> Result<(), Refused> {
    match principal.own_alias() {
        Some(own) if own != alias => Err(Refused::Impersonation {
            principal: principal.clone(),
            alias: alias.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Parents(HashMap<&'static str, &'static str>);

    impl Ancestry for Parents {
        fn parent_of(&self, alias: &str) -> Option<String> {
            self.0.get(alias).map(|parent| parent.to_string())
        }
    }

    #[test]
    fn a_rule_on_inspecting_a_container_covers_what_it_supervises() {
        let access = Access::builtin();
        *access.policies.write() = Some(Arc::new(
            Policies::parse(
                "[[policy]]\nname='ops-see-workers'\nwho=['client:ops']\nmay=['read']\non=['inspect:workers']",
            )
            .unwrap(),
        ));
        let tree = Parents([("w1", "workers"), ("db", "infra")].into());
        let ops = Principal::Client("ops".into());
        assert!(access.check_inspect(&tree, &ops, "workers", None).is_ok());
        assert!(access.check_inspect(&tree, &ops, "w1", None).is_ok());
        // A container the registry no longer knows, by the parent its event names.
        assert!(
            access
                .check_inspect(&tree, &ops, "gone", Some("workers"))
                .is_ok()
        );
        assert!(access.check_inspect(&tree, &ops, "db", None).is_err());
        // Inspecting is not managing: the same rule grants no stop.
        let stop = access.check_subtree(&tree, &ops, Action::Stop, "w1", None);
        assert!(stop.is_err());
        let admin = Principal::Admin("root".into());
        assert!(access.check_inspect(&tree, &admin, "db", None).is_ok());
    }
}
