//! The embedded store's on-disk encodings: fixed-width little-endian integers and
//! length-prefixed strings, so a record is read without a schema library.
//!
//! record: create u64 | mod u64 | version u64 | owner len u16 | owner | value
//! batch:  count u32, then per event: kind u8 | namespace len u8 | namespace |
//!         key len u32 | key | record len u32 | record

use bytes::Bytes;

use super::{Batch, Event, EventKind, KeyValue, Namespace, Revision, StateError};

fn corrupt(what: &str) -> StateError {
    StateError::Internal(format!("corrupt {what} in the state store"))
}

/// Encodes a key's record (everything but the key).
pub(super) fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let owner = kv.owner.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(26 + owner.len() + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&(owner.len() as u16).to_le_bytes());
    out.extend_from_slice(owner.as_bytes());
    out.extend_from_slice(&kv.value);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.bytes.len() < n {
            return Err(corrupt(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<usize, StateError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    fn u16(&mut self) -> Result<usize, StateError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize)
    }

    fn str(&mut self, len: usize) -> Result<&'a str, StateError> {
        std::str::from_utf8(self.take(len)?).map_err(|_| corrupt(self.what))
    }
}

/// Decodes a record of `key`; `with_value: false` leaves the value out.
pub(super) fn record(key: String, bytes: &[u8], with_value: bool) -> Result<KeyValue, StateError> {
    let mut reader = Reader {
        bytes,
        what: "record",
    };
    let create_revision = reader.u64()?;
    let mod_revision = reader.u64()?;
    let version = reader.u64()?;
    let owner_len = reader.u16()?;
    let owner = reader.str(owner_len)?;
    Ok(KeyValue {
        key,
        value: match with_value {
            true => Bytes::copy_from_slice(reader.bytes),
            false => Bytes::new(),
        },
        create_revision,
        mod_revision,
        version,
        owner: (!owner.is_empty()).then(|| owner.to_owned()),
    })
}

/// Encodes the events of one revision.
pub(super) fn encode_batch(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(batch.events.len() as u32).to_le_bytes());
    for event in &batch.events {
        out.push(match event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        let namespace = event.namespace.as_str();
        out.push(namespace.len() as u8);
        out.extend_from_slice(namespace.as_bytes());
        out.extend_from_slice(&(event.kv.key.len() as u32).to_le_bytes());
        out.extend_from_slice(event.kv.key.as_bytes());
        let record = encode_record(&event.kv);
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(&record);
    }
    out
}

/// Decodes the events of `revision`.
pub(super) fn batch(revision: Revision, bytes: &[u8]) -> Result<Batch, StateError> {
    let mut reader = Reader {
        bytes,
        what: "event",
    };
    let count = reader.u32()?;
    let mut events = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let kind = match reader.take(1)?[0] {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return Err(corrupt("event")),
        };
        let namespace_len = reader.take(1)?[0] as usize;
        let namespace = Namespace::new(reader.str(namespace_len)?)?;
        let key_len = reader.u32()?;
        let key = reader.str(key_len)?.to_owned();
        let record_len = reader.u32()?;
        let kv = record(key, reader.take(record_len)?, true)?;
        events.push(Event {
            kind,
            namespace,
            kv,
        });
    }
    Ok(Batch { revision, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_batches_round_trip() {
        let kv = KeyValue {
            key: "leader".into(),
            value: Bytes::from_static(b"worker-1"),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            owner: Some("worker-1".into()),
        };
        assert_eq!(
            record("leader".into(), &encode_record(&kv), true).unwrap(),
            kv
        );
        let batch = Batch {
            revision: 9,
            events: vec![Event {
                kind: EventKind::Put,
                namespace: Namespace::new("election").unwrap(),
                kv,
            }],
        };
        assert_eq!(super::batch(9, &encode_batch(&batch)).unwrap(), batch);
        assert!(super::batch(9, &encode_batch(&batch)[..10]).is_err());
    }
}
