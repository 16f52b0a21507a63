//! Freshness and age of a response (RFC 9111 section 4.2): how long it may
//! be served, and how old it already was when it reached the cache.
//!
//! Every value here comes from an origin's headers, so every parse is total
//! (a malformed value has a defined meaning, never a panic) and every
//! duration is bounded before it reaches the engine, which clamps again.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName};

use super::policy::{CacheControl, delta_seconds};

/// The longest heuristic freshness given to a response with a
/// `Last-Modified` and no explicit freshness (10% of its age, at most this):
/// a day, as httpd's `CacheMaxExpire` and common Squid patterns.
pub(crate) const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 3600);

/// What freshness a response gets when it carries none of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DefaultTtl {
    /// The cache's TTL (the engine's default): an application's own handlers.
    CacheTtl,
    /// A fixed freshness.
    Fixed(Duration),
    /// Shared-cache behaviour: only the heuristic freshness RFC 9111 4.2.2
    /// allows (from `Last-Modified`); without one, not stored.
    Heuristic,
}

/// Where a response's freshness lifetime came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// `s-maxage`, `max-age` or `Expires` (0: stale on arrival).
    Explicit(Duration),
    /// RFC 9111 4.2.2 from `Last-Modified`.
    Heuristic(Duration),
    /// No freshness information: the cache's TTL applies.
    CacheTtl,
    /// No freshness information and no heuristic: not reusable.
    None,
}

/// The first valid HTTP-date of header `name`: `None` when absent,
/// `Some(None)` when present but not a date (or repeated with different
/// values), which RFC 9111 5.3 reads as "in the past" for `Expires`.
pub(crate) fn date(headers: &HeaderMap, name: &HeaderName) -> Option<Option<SystemTime>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.any(|v| v != first) {
        return Some(None);
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok()),
    )
}

/// The `Age` value (RFC 9111 5.1): the first member of the first field; an
/// invalid value is ignored (0). Saturates like any delta-seconds.
pub(crate) fn age_value(headers: &HeaderMap) -> Duration {
    let Some(v) = headers.get(header::AGE).and_then(|v| v.to_str().ok()) else {
        return Duration::ZERO;
    };
    let first = v.split(',').next().unwrap_or("").trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Duration::ZERO;
    }
    Duration::from_secs(delta_seconds(first))
}

/// Statuses reusable with heuristic freshness (RFC 9110 15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The freshness lifetime of a response (RFC 9111 4.2.1): `s-maxage`, else
/// `max-age`, else `Expires` minus `Date` (an invalid `Expires`: 0), else
/// what `default` says. `response_time` stands in for a missing `Date`.
pub(crate) fn lifetime(
    headers: &HeaderMap,
    cc: &CacheControl,
    status: StatusCode,
    response_time: SystemTime,
    default: DefaultTtl,
) -> Lifetime {
    if let Some(secs) = cc.s_maxage.or(cc.max_age) {
        return Lifetime::Explicit(Duration::from_secs(secs));
    }
    let date_value = date(headers, &header::DATE)
        .flatten()
        .unwrap_or(response_time);
    if let Some(expires) = date(headers, &header::EXPIRES) {
        let lifetime = expires
            .and_then(|e| e.duration_since(date_value).ok())
            .unwrap_or(Duration::ZERO);
        return Lifetime::Explicit(lifetime);
    }
    match default {
        DefaultTtl::CacheTtl => Lifetime::CacheTtl,
        DefaultTtl::Fixed(d) => Lifetime::Explicit(d),
        DefaultTtl::Heuristic => {
            if !(heuristically_cacheable(status) || cc.public) {
                return Lifetime::None;
            }
            match date(headers, &header::LAST_MODIFIED).flatten() {
                Some(lm) => match date_value.duration_since(lm) {
                    Ok(since) => Lifetime::Heuristic((since / 10).min(MAX_HEURISTIC)),
                    Err(_) => Lifetime::None,
                },
                None => Lifetime::None,
            }
        }
    }
}

/// The age a response already had when it reached the cache: RFC 9111
/// 4.2.3's `corrected_initial_age`, from its `Age` and `Date` and the times
/// the request was sent and the response received.
pub(crate) fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent_age = date(headers, &header::DATE)
        .flatten()
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = age_value(headers).saturating_add(response_delay);
    apparent_age.max(corrected_age_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn life(pairs: &[(&str, &str)], default: DefaultTtl) -> Lifetime {
        let h = map(pairs);
        let cc = CacheControl::parse(&h);
        lifetime(&h, &cc, StatusCode::OK, at(1_000_000_000), default)
    }

    const DATE: &str = "Sun, 09 Sep 2001 01:46:40 GMT"; // 1_000_000_000

    #[test]
    fn rfc9111_4_2_1_precedence() {
        let secs = |s| Lifetime::Explicit(Duration::from_secs(s));
        assert_eq!(
            life(
                &[("cache-control", "max-age=10, s-maxage=5")],
                DefaultTtl::CacheTtl
            ),
            secs(5)
        );
        assert_eq!(
            life(
                &[
                    ("cache-control", "max-age=10"),
                    ("expires", "Thu, 01 Jan 2099 00:00:00 GMT")
                ],
                DefaultTtl::CacheTtl
            ),
            secs(10),
            "max-age over Expires"
        );
        assert_eq!(
            life(
                &[("date", DATE), ("expires", "Sun, 09 Sep 2001 01:47:40 GMT")],
                DefaultTtl::CacheTtl
            ),
            secs(60),
            "Expires minus Date"
        );
        for stale in ["0", "-1", "yesterday", "Sun, 09 Sep 2001 01:46:00 GMT"] {
            assert_eq!(
                life(&[("date", DATE), ("expires", stale)], DefaultTtl::CacheTtl),
                secs(0),
                "{stale}"
            );
        }
        assert_eq!(life(&[], DefaultTtl::CacheTtl), Lifetime::CacheTtl);
        assert_eq!(
            life(&[], DefaultTtl::Fixed(Duration::from_secs(7))),
            secs(7)
        );
        assert_eq!(life(&[], DefaultTtl::Heuristic), Lifetime::None);
    }

    #[test]
    fn rfc9111_4_2_2_heuristic() {
        // Last modified 1000 s before the Date: 10% of it.
        let h = [
            ("date", DATE),
            ("last-modified", "Sun, 09 Sep 2001 01:30:00 GMT"),
        ];
        assert_eq!(
            life(&h, DefaultTtl::Heuristic),
            Lifetime::Heuristic(Duration::from_secs(100))
        );
        let old = [
            ("date", DATE),
            ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ];
        assert_eq!(
            life(&old, DefaultTtl::Heuristic),
            Lifetime::Heuristic(MAX_HEURISTIC)
        );
        let hh = map(&h);
        let cc = CacheControl::parse(&hh);
        assert_eq!(
            lifetime(
                &hh,
                &cc,
                StatusCode::CREATED,
                at(1_000_000_000),
                DefaultTtl::Heuristic
            ),
            Lifetime::None,
            "201 is not heuristically cacheable"
        );
    }

    #[test]
    fn rfc9111_4_2_3_age() {
        let sent = at(1_000_000_000);
        let got = at(1_000_000_002);
        // Age 30 plus the 2 s the response took.
        assert_eq!(
            initial_age(&map(&[("age", "30")]), sent, got),
            Duration::from_secs(32)
        );
        // A Date 100 s before it arrived.
        assert_eq!(
            initial_age(
                &map(&[("date", "Sun, 09 Sep 2001 01:45:02 GMT")]),
                sent,
                got
            ),
            Duration::from_secs(100)
        );
        // A Date in the future (clock skew) counts for nothing.
        assert_eq!(
            initial_age(
                &map(&[("date", "Thu, 01 Jan 2099 00:00:00 GMT")]),
                sent,
                got
            ),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn rfc9111_5_1_age_values() {
        assert_eq!(
            age_value(&map(&[("age", "5, 100")])),
            Duration::from_secs(5)
        );
        assert_eq!(
            age_value(&map(&[("age", "5"), ("age", "100")])),
            Duration::from_secs(5)
        );
        for bad in ["-5", "5s", "", "1.5", "0x10"] {
            assert_eq!(age_value(&map(&[("age", bad)])), Duration::ZERO, "{bad}");
        }
        assert_eq!(
            age_value(&map(&[("age", "99999999999999999999999")])),
            Duration::from_secs(u64::MAX)
        );
    }
}
