//! Bound keys: one etcd lease per owner, granted on first use and revoked when the
//! owner is gone.

use super::*;

impl Etcd {
    pub(super) fn owner_of_lease(&self, lease: i64) -> Option<String> {
        if lease == 0 {
            return None;
        }
        let leases = self.leases.lock();
        Some(
            leases
                .owner_of
                .get(&lease)
                .cloned()
                .unwrap_or_else(|| format!("lease:{lease:x}")),
        )
    }

    /// Reads `ROOT/_owners/*` into the lease map.
    pub(super) async fn load_owners(&self) -> Result<(), StateError> {
        let prefix = self.owners_prefix();
        let found = self
            .kv()
            .range(etcd::RangeRequest {
                key: prefix.clone().into_bytes(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            })
            .await
            .map_err(|status| self.failed(status))?
            .into_inner();
        let mut leases = self.leases.lock();
        leases.owner_of.clear();
        leases.lease_of.clear();
        for kv in found.kvs {
            let owner = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            leases.owner_of.insert(kv.lease, owner.clone());
            leases.lease_of.insert(owner, kv.lease);
        }
        Ok(())
    }

    /// The lease of `owner` as last loaded.
    pub(super) fn known_lease(&self, owner: &str) -> Option<i64> {
        self.leases.lock().lease_of.get(owner).copied()
    }

    /// The lease that groups `owner`'s keys, granted on first use.
    pub(super) async fn lease_for(&self, owner: &str) -> Result<i64, StateError> {
        if let Some(lease) = self.known_lease(owner) {
            return Ok(lease);
        }
        let _one_at_a_time = self.granting.lock().await;
        self.load_owners().await?;
        if let Some(lease) = self.known_lease(owner) {
            return Ok(lease);
        }
        let mut lease = LeaseClient::new(self.channel());
        let granted = lease
            .lease_grant(etcd::LeaseGrantRequest {
                ttl: OWNER_LEASE_TTL,
                id: 0,
            })
            .await
            .map_err(|status| self.failed(status))?
            .into_inner();
        let marker = format!("{}{owner}", self.owners_prefix()).into_bytes();
        // Another node may have recorded a lease for this owner meanwhile: only the first wins.
        let recorded = self
            .kv()
            .txn(etcd::TxnRequest {
                compare: vec![etcd::Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Create as i32,
                    key: marker.clone(),
                    target_union: Some(compare::TargetUnion::CreateRevision(0)),
                    ..Default::default()
                }],
                success: vec![put_op(marker, Vec::new(), granted.id, false)],
                failure: Vec::new(),
            })
            .await
            .map_err(|status| self.failed(status))?
            .into_inner();
        if !recorded.succeeded {
            let _ = lease
                .lease_revoke(etcd::LeaseRevokeRequest { id: granted.id })
                .await;
            self.load_owners().await?;
            return self
                .known_lease(owner)
                .ok_or_else(|| StateError::Internal(format!("no lease recorded for {owner}")));
        }
        let mut leases = self.leases.lock();
        leases.owner_of.insert(granted.id, owner.to_owned());
        leases.lease_of.insert(owner.to_owned(), granted.id);
        Ok(granted.id)
    }
}
