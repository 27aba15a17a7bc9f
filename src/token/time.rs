//! Timestamps: JWT NumericDates (seconds since the epoch) and the RFC 3339 strings that
//! relayfile's credentials bundle and relayauth's refresh responses use. Small and exact, so the
//! token layer needs no calendar dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A NumericDate as a `SystemTime`, saturating instead of overflowing.
pub(crate) fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2))
}

/// Seconds since the epoch (negative before it), rounded down.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                -secs - 1
            } else {
                -secs
            }
        }
    }
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-01-02T03:04:05Z` (UTC, whole seconds).
pub(crate) fn format_rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        for (secs, text) in [
            (0u64, "1970-01-01T00:00:00Z"),
            (86_399, "1970-01-01T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(format_rfc3339(from_unix(secs)), text);
        }
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(1)), -1);
    }
}

/// A duration in words for people: "42 seconds", "1 minute", "3 hours", "2 days".
pub(crate) fn words(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s < 90 {
        (s, "second")
    } else if s < 90 * 60 {
        ((s + 30) / 60, "minute")
    } else if s < 48 * 3600 {
        ((s + 1800) / 3600, "hour")
    } else {
        (s.saturating_add(43_200) / 86_400, "day")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// "expires in 42 minutes" or "expired 3 minutes ago", as seen at `now`.
pub(crate) fn expiry_words(expires_at: SystemTime, now: SystemTime) -> String {
    match expires_at.duration_since(now) {
        Ok(left) if !left.is_zero() => format!("expires in {}", words(left)),
        _ => {
            let ago = now.duration_since(expires_at).unwrap_or_default();
            if ago.as_secs() == 0 {
                "expired just now".into()
            } else {
                format!("expired {} ago", words(ago))
            }
        }
    }
}

#[cfg(test)]
mod word_tests {
    use super::*;

    #[test]
    fn durations_in_words() {
        let s = Duration::from_secs;
        assert_eq!(words(s(1)), "1 second");
        assert_eq!(words(s(42)), "42 seconds");
        assert_eq!(words(s(42 * 60)), "42 minutes");
        assert_eq!(words(s(3 * 3600)), "3 hours");
        assert_eq!(words(s(5 * 86_400)), "5 days");
        assert!(words(Duration::MAX).ends_with(" days"));
        let now = from_unix(1_000_000);
        assert_eq!(expiry_words(now + s(2520), now), "expires in 42 minutes");
        assert_eq!(expiry_words(now - s(180), now), "expired 3 minutes ago");
        assert_eq!(expiry_words(now, now), "expired just now");
    }
}
