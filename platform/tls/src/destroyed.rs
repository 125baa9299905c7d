//! Containers that were destroyed, so that a certificate the node issued one before
//! then authenticates no one, whoever copied it.
//!
//! The node gives each container certificate it issues a serial that is the time of
//! issue in nanoseconds, rising strictly. Destroying a container records the time in an
//! append-only file (`DATA/tls/destroyed`, one `NANOS ALIAS` line each, synced before
//! the destroy is answered); a certificate naming that alias with a serial up to then
//! is refused. A container created again under the alias gets a later serial.
//! Certificates minted with the CA key some other way (their serials are hashes,
//! longer than eight bytes) are not covered: whoever holds the key is the node.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::PkiError;

/// The file, in the TLS directory.
pub const DESTROYED_FILE: &str = "destroyed";

/// Aliases destroyed, and when (nanoseconds); and the last serial issued.
#[derive(Debug)]
pub(crate) struct Destroyed {
    path: PathBuf,
    at: BTreeMap<String, u64>,
    last_serial: u64,
}

impl Destroyed {
    /// Reads `dir`'s file; a torn last line (a crash while appending it) is skipped.
    pub(crate) fn load(dir: &Path) -> Result<Self, PkiError> {
        let path = dir.join(DESTROYED_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(PkiError::Io { path, source }),
        };
        let mut at = BTreeMap::new();
        for line in text.lines() {
            let Some((nanos, alias)) = line.split_once(' ') else {
                continue;
            };
            let Ok(nanos) = nanos.parse::<u64>() else {
                continue;
            };
            let entry = at.entry(alias.to_owned()).or_insert(nanos);
            *entry = (*entry).max(nanos);
        }
        let last_serial = at.values().copied().max().unwrap_or(0);
        Ok(Self {
            path,
            at,
            last_serial,
        })
    }

    /// The serial of a new certificate for `alias`: now, after every serial issued
    /// before and after the alias's destruction, even if the clock went back.
    pub(crate) fn next_serial(&mut self, alias: &str) -> u64 {
        let destroyed = self.at.get(alias).copied().unwrap_or(0);
        let serial = now_nanos().max(self.last_serial + 1).max(destroyed + 1);
        self.last_serial = serial;
        serial
    }

    /// Records that `alias` is destroyed, durably. If the file cannot be written, it is
    /// still refused until the node restarts.
    pub(crate) fn destroy(&mut self, alias: &str) -> Result<(), PkiError> {
        let nanos = now_nanos().max(self.last_serial);
        self.at.insert(alias.to_owned(), nanos);
        let io = |source| PkiError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(format!("{nanos} {alias}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(io)
    }

    /// Whether a certificate for `alias` with serial `serial` (as the node issues
    /// them; `None` for another kind) was issued before the alias was destroyed.
    pub(crate) fn refuses(&self, alias: &str, serial: Option<u64>) -> bool {
        serial.is_some_and(|serial| self.at.get(alias).is_some_and(|&at| serial <= at))
    }
}

/// The serial of a DER certificate, if it is at most eight bytes long (as the node's
/// container certificates are).
pub(crate) fn short_serial(der: &[u8]) -> Option<u64> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let raw = cert.raw_serial();
    let significant = &raw[raw.iter().take_while(|&&b| b == 0).count()..];
    (significant.len() <= 8).then(|| {
        significant
            .iter()
            .fold(0u64, |value, &byte| (value << 8) | u64::from(byte))
    })
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroyed_alias_refuses_what_was_issued_before_and_takes_what_comes_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut destroyed = Destroyed::load(dir.path()).unwrap();
        let before = destroyed.next_serial("web");
        assert!(!destroyed.refuses("web", Some(before)));
        destroyed.destroy("web").unwrap();
        assert!(destroyed.refuses("web", Some(before)));
        assert!(!destroyed.refuses("db", Some(before)), "another alias");
        assert!(
            !destroyed.refuses("web", None),
            "not a serial the node gives"
        );
        let after = destroyed.next_serial("web");
        assert!(!destroyed.refuses("web", Some(after)));

        // It holds across a restart, and later serials stay later.
        let mut again = Destroyed::load(dir.path()).unwrap();
        assert!(again.refuses("web", Some(before)));
        assert!(again.next_serial("web") > before);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DESTROYED_FILE), "100 web\n2").unwrap();
        let destroyed = Destroyed::load(dir.path()).unwrap();
        assert!(destroyed.refuses("web", Some(100)));
        assert!(!destroyed.refuses("web", Some(101)));
    }
}
