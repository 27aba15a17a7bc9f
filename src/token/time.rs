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

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

/// Parse an RFC 3339 date-time (`2026-01-02T03:04:05Z`, `...05.123+02:00`). `None` when the
/// text is not one.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let s = b.get(range)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &b[start..i.min(start + 9)];
        let mut n = 0u32;
        for (k, c) in digits.iter().enumerate() {
            n += u32::from(c - b'0') * 10u32.pow(8 - k as u32);
        }
        nanos = n;
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day == 0
        || day > month_days[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(from_unix(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(from_unix(1_700_000_000))
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            Some(from_unix(1_700_000_000))
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.500Z"),
            Some(from_unix(1_700_000_000) + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(from_unix(1_709_164_800))
        );
    }

    #[test]
    fn refuses_non_dates() {
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14T22:13:20.Z",
            "１２３４-11-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trip() {
        for secs in [0u64, 59, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let t = from_unix(secs);
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
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
