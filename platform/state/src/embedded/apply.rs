//! Applying a batch of writes to the redb tables: stores, removals, bound keys,
//! compaction and the history kept for watches.

use super::*;

/// Keeps the events table to about `history` revisions, trimming in steps of an eighth
/// so that a busy store does not delete one row per commit. (A trim that a crash loses
/// before the next checkpoint is made again when the log is replayed.)
pub(super) fn trim_history(
    write: &WriteTransaction,
    revision: Revision,
    history: u64,
) -> Result<(), StateError> {
    let mut meta = write.open_table(META).map_err(internal)?;
    let compacted = read_meta(&meta, "compacted")?;
    if revision.saturating_sub(compacted) <= history + history / 8 {
        return Ok(());
    }
    let upto = revision - history;
    let mut events = write.open_table(EVENTS).map_err(internal)?;
    events.retain_in(..=upto, |_, _| false).map_err(internal)?;
    meta.insert("compacted", upto).map_err(internal)?;
    Ok(())
}

/// Applies a logged batch again (after a crash), exactly as it was first applied.
pub(super) fn replay(write: &WriteTransaction, batch: &Batch) -> Result<(), StateError> {
    let mut kv = write.open_table(KV).map_err(internal)?;
    let mut owners = write.open_table(OWNERS).map_err(internal)?;
    for event in &batch.events {
        match event.kind {
            EventKind::Put => {
                store(&mut kv, &mut owners, &event.namespace, &event.kv)?;
            }
            EventKind::Delete => {
                remove(&mut kv, &mut owners, &event.namespace, &event.kv.key)?;
            }
        }
    }
    write
        .open_table(EVENTS)
        .map_err(internal)?
        .insert(batch.revision, codec::encode_batch(batch).as_slice())
        .map_err(internal)?;
    Ok(())
}

/// Writes a key's new record and moves its owner index entry; returns the old record.
pub(super) fn store(
    kv: &mut KvTable<'_>,
    owners: &mut OwnersTable<'_>,
    namespace: &Namespace,
    new: &KeyValue,
) -> Result<Option<KeyValue>, StateError> {
    let old = kv
        .insert(
            kv_key(namespace, &new.key).as_slice(),
            codec::encode_record(new).as_slice(),
        )
        .map_err(internal)?
        .map(|old| codec::record(new.key.clone(), old.value(), true))
        .transpose()?;
    if let Some(old_owner) = old.as_ref().and_then(|o| o.owner.as_ref())
        && Some(old_owner) != new.owner.as_ref()
    {
        owners
            .remove(owner_key(old_owner, namespace, &new.key).as_slice())
            .map_err(internal)?;
    }
    if let Some(owner) = &new.owner {
        owners
            .insert(owner_key(owner, namespace, &new.key).as_slice(), ())
            .map_err(internal)?;
    }
    Ok(old)
}

/// Deletes a key and its owner index entry; returns the old record.
pub(super) fn remove(
    kv: &mut KvTable<'_>,
    owners: &mut OwnersTable<'_>,
    namespace: &Namespace,
    key: &str,
) -> Result<Option<KeyValue>, StateError> {
    let Some(old) = kv
        .remove(kv_key(namespace, key).as_slice())
        .map_err(internal)?
    else {
        return Ok(None);
    };
    let old = codec::record(key.to_owned(), old.value(), false)?;
    if let Some(owner) = &old.owner {
        owners
            .remove(owner_key(owner, namespace, key).as_slice())
            .map_err(internal)?;
    }
    Ok(Some(old))
}

/// The keys bound to `owner`, as one delete transaction per namespace.
pub(super) fn owned_keys(
    write: &WriteTransaction,
    owner: &str,
) -> Result<Vec<(Namespace, Vec<Op>)>, StateError> {
    let owners = write.open_table(OWNERS).map_err(internal)?;
    let mut start = owner.as_bytes().to_vec();
    start.push(0);
    let mut by_namespace: Vec<(Namespace, Vec<Op>)> = Vec::new();
    for entry in owners
        .range::<&[u8]>(prefix_range(&start))
        .map_err(internal)?
    {
        let (key, _) = entry.map_err(internal)?;
        let key = key.value();
        let Some(rest) = key.strip_prefix(start.as_slice()) else {
            break;
        };
        let split = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| internal("bad owner row"))?;
        let namespace = Namespace::new(std::str::from_utf8(&rest[..split]).map_err(internal)?)?;
        let key = String::from_utf8(rest[split + 1..].to_vec()).map_err(internal)?;
        match by_namespace.last_mut() {
            Some((last, ops)) if *last == namespace => ops.push(Op::Delete { key }),
            _ => by_namespace.push((namespace, vec![Op::Delete { key }])),
        }
    }
    Ok(by_namespace)
}

pub(super) fn compact(
    write: &WriteTransaction,
    target: Revision,
    revision: Revision,
) -> Result<Revision, StateError> {
    if target > revision {
        return Err(StateError::Future {
            requested: target,
            current: revision,
        });
    }
    let mut meta = write.open_table(META).map_err(internal)?;
    let compacted = read_meta(&meta, "compacted")?;
    let upto = target.saturating_sub(1);
    if upto > compacted {
        let mut events = write.open_table(EVENTS).map_err(internal)?;
        events.retain_in(..=upto, |_, _| false).map_err(internal)?;
        meta.insert("compacted", upto).map_err(internal)?;
    }
    Ok(upto.max(compacted) + 1)
}

/// Applies one transaction at the next revision, or refuses it with no effect.
pub(super) fn apply_txn(
    write: &WriteTransaction,
    txn: &Txn,
    revision: &mut Revision,
    batches: &mut Vec<Batch>,
) -> Result<TxnOutcome, StateError> {
    let mut kv = write.open_table(KV).map_err(internal)?;
    let namespace = &txn.namespace;
    let current = |kv: &KvTable<'_>, key: &str| -> Result<Option<KeyValue>, StateError> {
        kv.get(kv_key(namespace, key).as_slice())
            .map_err(internal)?
            .map(|record| codec::record(key.to_owned(), record.value(), true))
            .transpose()
    };
    if let Some(ahead) = txn.compares.iter().find(|c| c.mod_revision > *revision) {
        return Err(StateError::Future {
            requested: ahead.mod_revision,
            current: *revision,
        });
    }
    let mut holds = true;
    for compare in &txn.compares {
        let actual = current(&kv, &compare.key)?.map_or(0, |kv| kv.mod_revision);
        holds &= actual == compare.mod_revision;
    }
    if !holds {
        let current = txn
            .compares
            .iter()
            .map(|c| current(&kv, &c.key))
            .collect::<Result<_, _>>()?;
        return Ok(TxnOutcome::Conflict {
            revision: *revision,
            current,
        });
    }

    let mut owners = write.open_table(OWNERS).map_err(internal)?;
    let next = *revision + 1;
    let mut events = Vec::new();
    let mut previous = Vec::with_capacity(txn.ops.len());
    let mut deleted = 0;
    let deletion = |key: String| Event {
        kind: EventKind::Delete,
        namespace: namespace.clone(),
        kv: KeyValue {
            key,
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: next,
            version: 0,
            owner: None,
        },
    };
    for op in &txn.ops {
        match op {
            Op::Put { key, value, owner } => {
                let old = current(&kv, key)?;
                let new = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: old.as_ref().map_or(next, |o| o.create_revision),
                    mod_revision: next,
                    version: old.as_ref().map_or(1, |o| o.version + 1),
                    owner: owner.clone(),
                };
                store(&mut kv, &mut owners, namespace, &new)?;
                events.push(Event {
                    kind: EventKind::Put,
                    namespace: namespace.clone(),
                    kv: new,
                });
                previous.push(old);
            }
            Op::Delete { key } => {
                if remove(&mut kv, &mut owners, namespace, key)?.is_some() {
                    deleted += 1;
                    events.push(deletion(key.clone()));
                }
                previous.push(None);
            }
            Op::DeletePrefix { prefix } => {
                let start = kv_key(namespace, prefix);
                let skip = namespace.as_str().len() + 1;
                let mut keys = Vec::new();
                for entry in kv.range::<&[u8]>(prefix_range(&start)).map_err(internal)? {
                    let (key, _) = entry.map_err(internal)?;
                    let key = key.value();
                    if !key.starts_with(&start) {
                        break;
                    }
                    keys.push(String::from_utf8(key[skip..].to_vec()).map_err(internal)?);
                }
                for key in keys {
                    if remove(&mut kv, &mut owners, namespace, &key)?.is_some() {
                        deleted += 1;
                        events.push(deletion(key));
                    }
                }
                previous.push(None);
            }
        }
    }
    if events.is_empty() {
        return Ok(TxnOutcome::Committed {
            revision: *revision,
            previous,
            deleted,
        });
    }
    *revision = next;
    let batch = Batch {
        revision: next,
        events,
    };
    write
        .open_table(EVENTS)
        .map_err(internal)?
        .insert(next, codec::encode_batch(&batch).as_slice())
        .map_err(internal)?;
    batches.push(batch);
    Ok(TxnOutcome::Committed {
        revision: next,
        previous,
        deleted,
    })
}
