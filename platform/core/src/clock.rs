//! Time as the wire carries it: whole milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration in whole milliseconds for a `u32` wire field, saturating.
pub fn millis(duration: Duration) -> u32 {
    duration.as_millis().min(u32::MAX as u128) as u32
}

/// Milliseconds since the Unix epoch (0 before it), as wire timestamps are.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_and_clamps() {
        assert_eq!(millis(Duration::from_secs(u64::MAX)), u32::MAX);
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(5)), 5);
    }
}
