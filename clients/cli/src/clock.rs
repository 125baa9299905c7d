//! Times as people read them: instants in the local time zone, to the millisecond, and
//! spans in seconds, minutes and hours.

/// `unix_ms` (milliseconds since the Unix epoch) as `2026-12-01 21:07:48.123` in the
/// system's time zone; the number itself if it is out of range.
pub fn local_time(unix_ms: u64) -> String {
    let zoned = i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|at| at.to_zoned(jiff::tz::TimeZone::system()));
    match zoned {
        Some(at) => at.strftime("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        None => unix_ms.to_string(),
    }
}

/// A span of whole seconds, short: `42s`, `3m07s`, `2h05m`.
pub fn seconds_text(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_become_a_date_and_a_time_of_day() {
        let shown = local_time(1_796_153_890_072);
        // The zone decides the day and hour; the shape and the milliseconds stay.
        assert_eq!(shown.len(), "2026-12-01 21:07:48.072".len(), "{shown}");
        assert!(
            shown.starts_with("2026-") && shown.ends_with(".072"),
            "{shown}"
        );
        assert_eq!(local_time(u64::MAX), u64::MAX.to_string());
    }
}
