//! Answering a request from a stored response: the status-line headers the
//! cache sets (`age`, `x-cache`, `cache-status`), conditional requests
//! (RFC 9110 13.1: `If-None-Match`, `If-Modified-Since`) and byte ranges
//! (RFC 9110 14: one `bytes` range, `If-Range`).

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body;
use tiercache_core::Outcome;

use super::body::CacheBody;
use super::freshness;
use super::policy::{none_match, split_list};
use super::response::{CACHE_STATUS, CACHE_STATUS_HIT, CachedResponse, number_value};

/// `x-cache`, set on every response that went through a lookup.
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub(crate) const HIT: HeaderValue = HeaderValue::from_static("hit");
pub(crate) const MISS: HeaderValue = HeaderValue::from_static("miss");
pub(crate) const STALE: HeaderValue = HeaderValue::from_static("stale");

/// `Cache-Status` values (RFC 9211) other than a hit's, which is stored.
pub(crate) const STATUS_MISS: HeaderValue = HeaderValue::from_static("tiercache; fwd=uri-miss");
pub(crate) const STATUS_STALE: HeaderValue = HeaderValue::from_static("tiercache; fwd=stale");
pub(crate) const STATUS_REVALIDATED: HeaderValue =
    HeaderValue::from_static("tiercache; fwd=stale; fwd-status=304");
pub(crate) const STATUS_BYPASS: HeaderValue = HeaderValue::from_static("tiercache; fwd=bypass");
pub(crate) const STATUS_METHOD: HeaderValue = HeaderValue::from_static("tiercache; fwd=method");

/// What the client asked beyond the resource itself.
#[derive(Clone, Copy, Default)]
pub(crate) struct Ask<'a> {
    pub(crate) head: bool,
    pub(crate) if_none_match: Option<&'a HeaderValue>,
    pub(crate) if_modified_since: Option<&'a HeaderValue>,
    pub(crate) range: Option<&'a HeaderValue>,
    pub(crate) if_range: Option<&'a HeaderValue>,
}

impl<'a> Ask<'a> {
    /// The four headers, each its first value, found in one pass that
    /// compares names (no hashing): requests carry few headers, and a hit
    /// pays for this on every request.
    pub(crate) fn of(headers: &'a HeaderMap, head: bool) -> Self {
        let mut ask = Self {
            head,
            ..Self::default()
        };
        if headers.is_empty() {
            return ask;
        }
        for (name, value) in headers {
            let slot = if name == header::IF_NONE_MATCH {
                &mut ask.if_none_match
            } else if name == header::IF_MODIFIED_SINCE {
                &mut ask.if_modified_since
            } else if name == header::RANGE {
                &mut ask.range
            } else if name == header::IF_RANGE {
                &mut ask.if_range
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        ask
    }
}

/// The request's conditional and range headers, owned (for a lookup that
/// outlives the request's borrow).
#[derive(Clone, Default)]
pub(crate) struct AskOwned {
    head: bool,
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    range: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
}

impl AskOwned {
    pub(crate) fn of(headers: &HeaderMap, head: bool) -> Self {
        let a = Ask::of(headers, head);
        Self {
            head,
            if_none_match: a.if_none_match.cloned(),
            if_modified_since: a.if_modified_since.cloned(),
            range: a.range.cloned(),
            if_range: a.if_range.cloned(),
        }
    }

    pub(crate) fn borrow(&self) -> Ask<'_> {
        Ask {
            head: self.head,
            if_none_match: self.if_none_match.as_ref(),
            if_modified_since: self.if_modified_since.as_ref(),
            range: self.range.as_ref(),
            if_range: self.if_range.as_ref(),
        }
    }
}

/// A response from the cache: headers cloned from the stored map, the body
/// a clone of the stored `Bytes` (or a slice of it for a range); or 304 when
/// the client's condition says it has it already.
pub(crate) fn respond<B: Body>(
    cached: &CachedResponse,
    outcome: Outcome,
    resident: Duration,
    ask: Ask<'_>,
) -> Response<CacheBody<B>> {
    // The stored map already says `hit`; only other outcomes overwrite it.
    let (x_cache, status) = match outcome {
        Outcome::Hit(_) | Outcome::Rejected => (None, None),
        Outcome::Stale => (Some(STALE), Some(STATUS_STALE)),
        _ => (Some(MISS), Some(STATUS_MISS)),
    };
    let age = number_value(cached.meta().initial_age.saturating_add(resident.as_secs()));
    let conditional = ask.if_none_match.is_some() || ask.if_modified_since.is_some();
    if conditional && not_modified(cached, &ask) {
        let mut resp = Response::new(CacheBody::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in cached.headers().get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(header::ETAG, cached.etag().clone());
        h.insert(X_CACHE, x_cache.unwrap_or(HIT));
        if let Some(stored) = cached.headers().get(CACHE_STATUS) {
            h.insert(CACHE_STATUS, stored.clone());
        }
        h.insert(header::AGE, age);
        if let Some(s) = status {
            set_status(&mut resp, cached, s);
        }
        return resp;
    }
    let range = (ask.range.is_some() && !ask.head && cached.status() == StatusCode::OK)
        .then(|| byte_range(cached, &ask))
        .flatten();
    let body = match (&range, ask.head) {
        (_, true) => CacheBody::empty(),
        (Some(Ok((start, end))), _) => CacheBody::full(cached.body().slice(*start..=*end)),
        (Some(Err(())), _) => CacheBody::empty(),
        (None, false) => CacheBody::full(cached.body().clone()),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = cached.status();
    let h = resp.headers_mut();
    // The stored map already holds etag, `x-cache: hit`, `cache-status` and
    // `age`: these overwrite in place.
    *h = cached.headers().clone();
    if let Some(x) = x_cache {
        h.insert(X_CACHE, x);
    }
    // In place, found by a walk over a handful of entries: no hashing.
    match h
        .iter_mut()
        .find_map(|(name, value)| (name == header::AGE).then_some(value))
    {
        Some(slot) => *slot = age,
        None => {
            h.insert(header::AGE, age);
        }
    }
    if let Some(s) = status {
        set_status(&mut resp, cached, s);
    }
    let len = cached.body().len();
    match range {
        Some(Ok((start, end))) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_LENGTH,
                number_value(len_u64(end + 1 - start)),
            );
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
        }
        Some(Err(())) => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            h.insert(header::CONTENT_LENGTH, number_value(0));
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
        }
        None => {}
    }
    resp
}

/// Sets this cache's `Cache-Status` member on a response built from
/// `cached`, after the members of caches nearer the origin that it
/// stored with it (RFC 9211 2: each cache appends its own).
pub(crate) fn set_status<B>(resp: &mut Response<B>, cached: &CachedResponse, ours: HeaderValue) {
    let upstream = cached
        .headers()
        .get(CACHE_STATUS)
        .and_then(|v| v.as_bytes().strip_suffix(CACHE_STATUS_HIT.as_bytes()))
        .filter(|prefix| !prefix.is_empty());
    let value = match upstream {
        None => ours,
        Some(prefix) => {
            let mut v = prefix.to_vec();
            v.extend_from_slice(ours.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or(ours)
        }
    };
    resp.headers_mut().insert(CACHE_STATUS, value);
}

/// `ours` after the `Cache-Status` members a response already carries
/// (from caches nearer the origin).
pub(crate) fn appended(existing: Option<&HeaderValue>, ours: HeaderValue) -> HeaderValue {
    match existing.filter(|v| !v.as_bytes().trim_ascii().is_empty()) {
        None => ours,
        Some(up) => {
            let mut v = up.as_bytes().trim_ascii().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(ours.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or(ours)
        }
    }
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whether the client's condition holds for `cached` (RFC 9110 13.2.2:
/// `If-None-Match` first; `If-Modified-Since` only without it, and only
/// against a stored `Last-Modified`).
fn not_modified(cached: &CachedResponse, ask: &Ask<'_>) -> bool {
    if !cached.status().is_success() {
        return false;
    }
    if let Some(inm) = ask.if_none_match {
        return none_match(inm, cached.etag());
    }
    let Some(ims) = ask.if_modified_since else {
        return false;
    };
    let ims = ims
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok());
    let lm = freshness::date(cached.headers(), &header::LAST_MODIFIED).flatten();
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

/// The one byte range the client asked for, inclusive: `None` to serve the
/// whole body (no `Range`, a unit other than bytes, several ranges, or an
/// `If-Range` that does not match); `Err` when the range cannot be
/// satisfied (RFC 9110 14.1.1).
fn byte_range(cached: &CachedResponse, ask: &Ask<'_>) -> Option<Result<(usize, usize), ()>> {
    let range = ask.range?.to_str().ok()?.trim();
    if let Some(if_range) = ask.if_range {
        // A strong ETag must match exactly; a date must equal Last-Modified.
        let v = if_range.to_str().ok()?.trim();
        let matches = if v.starts_with('"') {
            cached.meta().origin_etag && v.as_bytes() == cached.etag().as_bytes()
        } else {
            let lm = cached.headers().get(header::LAST_MODIFIED)?.to_str().ok()?;
            httpdate::parse_http_date(v).ok() == httpdate::parse_http_date(lm.trim()).ok()
                && httpdate::parse_http_date(v).is_ok()
        };
        if !matches {
            return None;
        }
    }
    let (unit, set) = range.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = split_list(set);
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let len = cached.body().len();
    let (first, last) = spec.split_once('-')?;
    let num = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            return Some(None);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Some(s.parse::<u64>().unwrap_or(u64::MAX)))
    };
    let len64 = len_u64(len);
    let (start, end) = match (num(first)?, num(last)?) {
        (Some(a), Some(b)) if a <= b => (a, b.min(len64.saturating_sub(1))),
        (Some(_), Some(_)) => return None,
        (Some(a), None) => (a, len64.saturating_sub(1)),
        (None, Some(0)) => return Some(Err(())),
        (None, Some(n)) => (len64.saturating_sub(n), len64.saturating_sub(1)),
        (None, None) => return None,
    };
    if start >= len64 {
        return Some(Err(()));
    }
    let to_usize = |n: u64| usize::try_from(n).ok();
    Some(Ok((to_usize(start)?, to_usize(end)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::header::HeaderValue;

    fn stored(body: &'static [u8], headers: &[(&'static str, &'static str)]) -> CachedResponse {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(*n, HeaderValue::from_static(v));
        }
        CachedResponse::new(
            StatusCode::OK,
            h,
            Bytes::from_static(body),
            Some(HeaderValue::from_static("\"v1\"")),
        )
        .expect("few headers")
    }

    fn range_of(c: &CachedResponse, range: &'static str) -> Option<Result<(usize, usize), ()>> {
        let r = HeaderValue::from_static(range);
        byte_range(
            c,
            &Ask {
                range: Some(&r),
                ..Ask::default()
            },
        )
    }

    #[test]
    fn rfc9110_14_1_ranges() {
        let c = stored(b"0123456789", &[]);
        assert_eq!(range_of(&c, "bytes=0-3"), Some(Ok((0, 3))));
        assert_eq!(range_of(&c, "bytes=5-"), Some(Ok((5, 9))));
        assert_eq!(range_of(&c, "bytes=-3"), Some(Ok((7, 9))));
        assert_eq!(range_of(&c, "bytes=-30"), Some(Ok((0, 9))));
        assert_eq!(range_of(&c, "bytes=8-100"), Some(Ok((8, 9))));
        assert_eq!(range_of(&c, "bytes=10-"), Some(Err(())));
        assert_eq!(range_of(&c, "bytes=-0"), Some(Err(())));
        assert_eq!(
            range_of(&c, "bytes=0-1,3-4"),
            None,
            "several: the whole body"
        );
        assert_eq!(range_of(&c, "items=0-1"), None);
        assert_eq!(range_of(&c, "bytes=4-2"), None);
        assert_eq!(range_of(&c, "bytes=x-2"), None);
        assert_eq!(
            range_of(&c, "bytes=99999999999999999999999-"),
            Some(Err(()))
        );
    }

    #[test]
    fn rfc9110_13_1_3_if_modified_since() {
        let c = stored(b"x", &[("last-modified", "Sun, 09 Sep 2001 01:46:40 GMT")]);
        let ask = |v: &'static str| {
            let v = HeaderValue::from_static(v);
            not_modified(
                &c,
                &Ask {
                    if_modified_since: Some(&v),
                    ..Ask::default()
                },
            )
        };
        assert!(ask("Sun, 09 Sep 2001 01:46:40 GMT"));
        assert!(ask("Mon, 10 Sep 2001 00:00:00 GMT"));
        assert!(!ask("Sat, 08 Sep 2001 00:00:00 GMT"));
        assert!(!ask("not a date"));
        // If-None-Match takes precedence.
        let inm = HeaderValue::from_static("\"other\"");
        let ims = HeaderValue::from_static("Mon, 10 Sep 2001 00:00:00 GMT");
        assert!(!not_modified(
            &c,
            &Ask {
                if_none_match: Some(&inm),
                if_modified_since: Some(&ims),
                ..Ask::default()
            }
        ));
    }
}
