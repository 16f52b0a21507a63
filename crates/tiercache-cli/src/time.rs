//! Times and sizes for people: RFC 3339, "in 4.2s" / "3.1s ago", KiB.

use chrono::{DateTime, Local, SecondsFormat, Utc};

/// `ms` since the Unix epoch as RFC 3339 (UTC, milliseconds), or the raw
/// number when it is out of range.
pub(crate) fn rfc3339(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map_or_else(
            || format!("{ms} ms since the epoch"),
            |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
}

/// The local time now, `HH:MM:SS.mmm`.
pub(crate) fn local_now() -> String {
    Local::now().format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// A duration in ms, signed, shortest readable form.
pub(crate) fn span(ms: i128) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    let body = if a < 1_000 {
        format!("{a}ms")
    } else if a < 60_000 {
        format!("{}.{}s", a / 1000, (a % 1000) / 100)
    } else if a < 3_600_000 {
        format!("{}m{:02}s", a / 60_000, (a % 60_000) / 1000)
    } else if a < 86_400_000 {
        format!("{}h{:02}m", a / 3_600_000, (a % 3_600_000) / 60_000)
    } else {
        format!("{}d{:02}h", a / 86_400_000, (a % 86_400_000) / 3_600_000)
    };
    format!("{sign}{body}")
}

/// `at` relative to `now` (both ms since the epoch): "in 4.2s" or "3.1s ago".
pub(crate) fn relative(at: u64, now: u64) -> String {
    let d = i128::from(at) - i128::from(now);
    if d >= 0 {
        format!("in {}", span(d))
    } else {
        format!("{} ago", span(-d))
    }
}

/// A byte count: `123 B`, `12.3 KiB`, `4.0 MiB`.
pub(crate) fn bytes(n: f64) -> String {
    if !n.is_finite() || n < 0.0 {
        return format!("{n}");
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(u64::MAX),
            format!("{} ms since the epoch", u64::MAX)
        );
        assert_eq!(span(850), "850ms");
        assert_eq!(span(4_250), "4.2s");
        assert_eq!(span(-125_000), "-2m05s");
        assert_eq!(relative(10_000, 5_000), "in 5.0s");
        assert_eq!(relative(5_000, 8_100), "3.1s ago");
        assert_eq!(bytes(100.0), "100 B");
        assert_eq!(bytes(12_595.0), "12.3 KiB");
    }
}
