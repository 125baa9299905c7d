//! Unguessable lease tokens.

use ring::rand::{SecureRandom as _, SystemRandom};

/// A fresh 128-bit random token, hex-encoded.
pub fn new_lease() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
