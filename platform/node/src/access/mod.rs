//! Access control: who a caller is (its certificate), and what the node's policies let
//! it do.
//!
//! Without a policy file every authenticated caller may do everything (a development
//! node); only impersonation is refused: a certificate that names a container or node
//! binds its holder to that alias. With `reefd --policy FILE`, every send, management
//! call, state read or write and routing change is checked against the file's rules
//! (see [`policy`]), and the file is read again when it changes.

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
use reef_proto::POLICY_METADATA;
use tonic::{Request, Status, metadata::MetadataValue};

pub use self::policy::{Action, Denial, Policies, PolicyError};
use crate::Registry;
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
    /// No policies: everything is allowed but impersonation.
    pub fn open() -> Arc<Self> {
        Arc::default()
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
    /// [`Policies::decide`]); a denial is PERMISSION_DENIED naming the policy.
    pub fn check(
        &self,
        principal: &Principal,
        action: Action,
        target: &str,
        scope: &[String],
    ) -> Result<(), Status> {
        match self.policies() {
            None => Ok(()),
            Some(policies) => policies
                .decide(principal, action, target, scope)
                .map_err(denied),
        }
    }

    /// [`Access::check`] for the caller of `request`, whose certificate is read only
    /// when policies are in force (state and file calls are frequent).
    pub fn check_caller<T>(
        &self,
        request: &Request<T>,
        action: Action,
        target: &str,
    ) -> Result<(), Status> {
        match self.policies() {
            None => Ok(()),
            Some(policies) => policies
                .decide(&crate::identity::caller(request), action, target, &[])
                .map_err(denied),
        }
    }

    /// [`Access::check`] for an action on container `alias`, whose rules may name any
    /// of its supervision ancestors (`parent`'s chain, when it is not registered yet).
    pub fn check_subtree(
        &self,
        registry: &Registry,
        principal: &Principal,
        action: Action,
        alias: &str,
        parent: Option<&str>,
    ) -> Result<(), Status> {
        let Some(policies) = self.policies() else {
            return Ok(());
        };
        if matches!(principal, Principal::Admin(_)) {
            return Ok(());
        }
        let mut scope = Vec::new();
        let mut next = match parent {
            Some(parent) => Some(parent.to_owned()),
            None => registry
                .get(alias)
                .and_then(|c| c.spec.parent.map(String::from)),
        };
        // Bounded: the registry refuses parent cycles, but a bound costs nothing.
        while let Some(ancestor) = next.take() {
            if scope.len() >= 64 || scope.contains(&ancestor) {
                break;
            }
            next = registry
                .get(&ancestor)
                .and_then(|c| c.spec.parent.map(String::from));
            scope.push(ancestor);
        }
        policies
            .decide(principal, action, alias, &scope)
            .map_err(denied)
    }
}

/// A denial as the gRPC status a caller sees: PERMISSION_DENIED, the policy named in the
/// message and in `reef-policy` metadata.
pub fn denied(denial: Denial) -> Status {
    let mut status = Status::permission_denied(denial.message);
    if let Ok(value) = MetadataValue::try_from(denial.policy.as_str()) {
        status.metadata_mut().insert(POLICY_METADATA, value);
    }
    status
}

/// Refuses a caller whose certificate binds it to another alias than `alias`: a
/// container cannot register, attach or announce as another container.
pub fn check_claim(principal: &Principal, alias: &str) -> Result<(), Status> {
    match principal.own_alias() {
        Some(own) if own != alias => Err(Status::permission_denied(format!(
            "the certificate presented is {principal}'s: it cannot act as {alias:?}"
        ))),
        _ => Ok(()),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
