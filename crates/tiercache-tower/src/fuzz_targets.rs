//! Fuzz targets for the HTTP layer's parsers of outside bytes (issue 11):
//! stored responses, an origin's response headers, a client's request
//! headers, and the whole layer over an origin that answers with fuzzed
//! bytes.
//!
//! Each target takes arbitrary bytes and asserts what must hold beyond "no
//! panic". They run under libFuzzer from the `fuzz/` crate (feature
//! `fuzzing`) and as bounded proptests in `mod tests` below (`cargo test`).
//! Not part of the API: compiled only for tests and with the `fuzzing`
//! feature, and hidden from the docs.
//!
//! Heads (requests and responses) are written as text, so seeds read like
//! HTTP: a first line (`GET /path?q` or `200`), then `name: value` lines;
//! `*N name: value` is that field N times (an origin may repeat a field
//! tens of thousands of times); a blank line ends the head. Fields that
//! `HeaderName` / `HeaderValue` refuse are skipped, as a server would
//! refuse them, and so are fields past `http`'s own limit of 32,768.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tiercache_core::backend::{InProcessSharedTier, KeyFormat};
use tiercache_core::fuzz_targets::block_on;
use tiercache_core::fuzz_targets::envelope_format as envelope;
use tiercache_core::{Cache, CacheKey, Codec, Postcard};
use tower_layer::Layer;
use tower_service::Service;

use crate::http::freshness::{self, DefaultTtl, Lifetime};
use crate::http::key::{RequestKey, VariantKey};
use crate::http::layer::Config;
use crate::http::policy::{
    CacheControl, NOT_STORED, none_match, request_no_cache, split_list, strip_for_storage,
    take_tags, vary_extra,
};
use crate::http::response::{
    CACHE_STATUS, CACHE_STATUS_HIT, headers_fit, number_value, strong_etag,
};
use crate::http::service::uri_tag;
use crate::http::store::Plan;
use crate::http::{CacheHandle, CachedResponse, HttpCacheLayer, MAX_HEADERS, ResponseCodec};

/// Most fields one `*N` line of a response makes (past `http`'s limit of
/// 32,768).
const MAX_REPEAT: usize = 40_000;
/// Most fields one `*N` line of a request makes (servers refuse requests
/// with more than a few hundred fields long before this).
const MAX_REQUEST_REPEAT: usize = 1024;
/// Most bytes one `*N` line makes, so a long value is not repeated into
/// gigabytes.
const MAX_REPEAT_BYTES: usize = 1 << 20;
/// The layer's `max_body_size` in [`http_layer`].
const MAX_BODY: usize = 16 * 1024;
/// The cache's `max_value_size` in [`http_layer`].
const MAX_VALUE: usize = 1 << 20;
/// The cache's `compress_at` in [`http_layer`].
const COMPRESS_AT: usize = 1024;
/// The namespace of the caches here.
const NS: &str = "fz";

// ---------------------------------------------------------------------------
// Heads from text

/// `data` cut at its first blank line: the head and what follows.
fn split_blank(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[]),
    }
}

/// A head: its first line and its fields (see the module docs), a `*N`
/// line making at most `max_repeat` fields.
fn parse_head(head: &[u8], max_repeat: usize) -> (&[u8], HeaderMap) {
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (times, line) = repeat_prefix(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        let times = times
            .min(max_repeat)
            .min(MAX_REPEAT_BYTES / (colon + value.len() + 1))
            .max(1);
        for _ in 0..times {
            if headers.try_append(name.clone(), value.clone()).is_err() {
                break;
            }
        }
    }
    (first.strip_suffix(b"\r").unwrap_or(first), headers)
}

/// `*N ` at the start of a line: the count (at most [`MAX_REPEAT`]) and
/// the rest of the line.
fn repeat_prefix(line: &[u8]) -> (usize, &[u8]) {
    if let Some(rest) = line.strip_prefix(b"*") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest.get(digits) == Some(&b' ') {
            let n = rest[..digits].iter().fold(0usize, |n, d| {
                n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
            });
            return (n.min(MAX_REPEAT), &rest[digits + 1..]);
        }
    }
    (1, line)
}

/// A status line: its leading digits, if a status; else 200.
fn status_of(line: &[u8]) -> StatusCode {
    let digits: Vec<u8> = line
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(u8::is_ascii_digit)
        .take(5)
        .collect();
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK)
}

/// A request line `METHOD URI`: a method `http` accepts (else `GET`) and a
/// URI it accepts (else `/`).
fn request_line(line: &[u8]) -> (Method, Uri) {
    let (m, u) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (&b"GET"[..], line),
    };
    let method = Method::from_bytes(m).unwrap_or(Method::GET);
    let uri = Uri::try_from(u).unwrap_or_else(|_| Uri::from_static("/"));
    (method, uri)
}

// ---------------------------------------------------------------------------
// Stored responses

/// [`CachedResponse::decode`] ([`ResponseCodec`]) on `data`, and on `data`
/// behind a valid format byte (the current one and the first) and status
/// (200).
///
/// Invariants: a decoded response has at most [`MAX_HEADERS`] fields;
/// it encodes (with its meta, tags and variants) to bytes that decode to an
/// equal response and encode to the same bytes again (the encoding is
/// canonical); `thread_copy()` is equal; the codec and serde (postcard)
/// paths agree.
pub fn cached_response(data: &[u8]) {
    check_decode(data);
    for format in [2, 1] {
        let mut framed = Vec::with_capacity(data.len() + 3);
        framed.extend_from_slice(&[format, 0, 200]);
        framed.extend_from_slice(data);
        check_decode(&framed);
    }
}

fn check_decode(bytes: &[u8]) {
    let decoded = CachedResponse::decode(bytes);
    assert_eq!(
        ResponseCodec.decode(bytes).as_ref().ok(),
        decoded.as_ref().ok(),
        "the codec is the decode"
    );
    if let Ok(r) = decoded {
        check_codec(&r);
    }
}

/// The round trips every stored response must survive.
fn check_codec(r: &CachedResponse) {
    assert!(r.headers().len() <= MAX_HEADERS);
    let mut out = Vec::new();
    r.encode(&mut out);
    let back = CachedResponse::decode(&out).expect("an encoding decodes");
    assert_eq!(&back, r);
    let mut again = Vec::new();
    back.encode(&mut again);
    assert_eq!(again, out, "canonical encoding");
    let mut via = Vec::new();
    ResponseCodec.encode(r, &mut via).expect("encode");
    assert_eq!(via, out);
    let copy = r.thread_copy();
    assert_eq!(&copy, r, "thread_copy is equal");
    assert_eq!(ResponseCodec.thread_copy(r).as_ref(), Some(r));
    let mut ser = Vec::new();
    Postcard.encode(r, &mut ser).expect("serde encode");
    let de: CachedResponse = Postcard.decode(&ser).expect("serde decode");
    assert_eq!(&de, r, "serde round trip");
}

// ---------------------------------------------------------------------------
// Origin response headers

thread_local! {
    /// Layers for their configs: the defaults with `vary(accept)`; and
    /// shared-cache freshness (`default_ttl(None)`) with a targeted field
    /// of its own (RFC 9213).
    static LAYERS: [HttpCacheLayer; 2] = block_on(async {
        let cache = || {
            Cache::builder(NS)
                .local_only()
                .build_with_codec(ResponseCodec)
                .expect("cache")
        };
        [
            HttpCacheLayer::new(cache()).vary([header::ACCEPT]),
            HttpCacheLayer::new(cache())
                .default_ttl(None)
                .targeted_cache_control(HeaderName::from_static("tiercache-cache-control")),
        ]
    });
}

/// An origin's response (`STATUS`, fields, blank line, body: see the
/// module docs) through the layer's storage policy, in the order a load
/// applies it: tags (`take_tags`), the plan (`Config::plan`: status,
/// `Set-Cookie`, `vary_extra`, the field count, `CacheControl` /
/// targeted fields, freshness and age), `strip_for_storage`,
/// `CachedResponse::new`, and the stored response's encoding; and the
/// freshness functions on their own. Under two configurations: the
/// defaults with `vary(accept)`, and `default_ttl(None)` with a targeted
/// field.
///
/// Invariants: `Cache-Control` parses the same split over several fields
/// or joined in one, repeated, or in upper case, `no-store` / `private`
/// added are obeyed, and a targeted field absent leaves `Cache-Control` in
/// charge; `vary_extra` is an error exactly for `*`, unreadable values and
/// names that are not header names, and otherwise lists, sorted and once
/// each, the names the configured ones miss, after which nothing is
/// missing; tags are removed from the map either way, are distinct and
/// non-empty, and percent-encoded they parse back the same; a plan is
/// refused for a 206, a status not configured, `Set-Cookie`, `Vary: *`, too
/// many fields, `no-store`, `private`, `no-cache`, and a plan made has a
/// non-zero TTL no longer than the freshness asked (plus any
/// `stale-while-revalidate`; a negative one at most the negative TTL),
/// refreshes no later than it expires, never past `must-revalidate`, and keeps it at
/// least its `stale-if-error`; an explicit lifetime is `s-maxage`, else
/// `max-age`; the initial age is at least the `Age` plus the response
/// delay; stripping removes every hop-by-hop field, the fields
/// `Connection` names, `set-cookie`, and returns the ETag, and stripping
/// again changes nothing; the stored response holds exactly the stripped
/// fields plus `etag`, `x-cache`, `age`, `cache-status`, and survives its
/// codec with its meta and tags.
pub fn response_headers(data: &[u8]) {
    let (head, body) = split_blank(data);
    let (first, headers) = parse_head(head, MAX_REPEAT);
    let status = status_of(first);
    let body = Bytes::copy_from_slice(body);
    check_freshness(status, &headers);
    LAYERS.with(|layers| {
        for layer in layers {
            let _ = policy(&layer.config, status, &headers, &body);
        }
    });
}

/// What a load stores for a response: the response (with its meta and
/// tags), its tags and its plan.
struct Stored {
    cached: CachedResponse,
    tags: Vec<String>,
    plan: Plan,
}

/// The layer's storage policy on a response, checked at each step (see
/// [`response_headers`]); what a load would store, if anything (before the
/// engine's own limits on tags and size).
fn policy(c: &Config, status: StatusCode, headers: &HeaderMap, body: &Bytes) -> Option<Stored> {
    let cc = CacheControl::parse(headers);
    check_cache_control(headers, &cc);
    check_targeted(c, headers, &cc);
    check_vary(headers, &c.vary);

    let mut h = headers.clone();
    let tags = take_tags(&mut h, &c.tags_header);
    let named = headers.get_all(&c.tags_header).iter().count();
    assert!(
        !h.contains_key(&c.tags_header),
        "the tags header is removed"
    );
    assert_eq!(h.len(), headers.len() - named, "nothing else is removed");
    let tags = match tags {
        Ok(tags) => {
            check_tags(&tags, &c.tags_header);
            tags
        }
        Err(e) => {
            assert!(
                headers.get_all(&c.tags_header).iter().any(|v| {
                    std::str::from_utf8(v.as_bytes()).is_err() || v.as_bytes().contains(&b'%')
                }),
                "tags refused ({}) but every value is UTF-8 without escapes",
                e.as_str()
            );
            return None;
        }
    };

    let now = SystemTime::now();
    let plan = c.plan(status, &h, now, now);
    check_plan(c, status, &h, &plan);
    // Later: a response a second late, and one whose request went out a
    // minute before it came back.
    let _ = c.plan(status, &h, now, now + Duration::from_secs(1));
    let _ = c.plan(status, &h, now - Duration::from_secs(60), now);
    if status.is_server_error() {
        return None;
    }
    let plan = plan.ok()?;
    if body.len() > c.max_body_size {
        return None;
    }
    if let Some(own) = &c.own_targeted {
        h.remove(own);
    }

    let connection_names: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    let etag_before = h.get(header::ETAG).cloned();
    let etag = strip_for_storage(&mut h);
    assert_eq!(etag, etag_before, "the first ETag is returned");
    for n in NOT_STORED
        .iter()
        .map(|n| HeaderName::from_static(n))
        .chain([header::SET_COOKIE, header::ETAG])
        .chain(connection_names)
    {
        assert!(!h.contains_key(&n), "{n} is stored");
    }
    let mut again = h.clone();
    assert_eq!(strip_for_storage(&mut again), None);
    assert_eq!(again, h, "stripping twice changes nothing");

    // As a load does: the length of a body it knows.
    if !h.contains_key(header::CONTENT_LENGTH)
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
    {
        h.insert(header::CONTENT_LENGTH, number_value(body.len() as u64));
    }
    let cached = CachedResponse::new(status, h.clone(), body.clone(), etag.clone())
        .expect("the plan checked the field count");
    check_cached(&cached, status, &h, etag.as_ref(), body);
    let cached = cached.with_meta(plan.meta).with_tags(tags.clone());
    assert_eq!(cached.meta().origin_etag, etag.is_some());
    assert_eq!(cached.tags(), &tags[..]);
    check_codec(&cached);
    Some(Stored { cached, tags, plan })
}

fn check_cache_control(headers: &HeaderMap, cc: &CacheControl) {
    let values: Vec<&HeaderValue> = headers.get_all(header::CACHE_CONTROL).iter().collect();
    if values.is_empty() {
        assert_eq!(cc, &CacheControl::default(), "no field, no directive");
    }
    if headers.len() > 4096 {
        // (Rebuilding maps of tens of thousands of fields is slow in debug
        // builds, where `http` checks its map on every removal.)
        return;
    }
    let others = || {
        let mut h = headers.clone();
        h.remove(header::CACHE_CONTROL);
        h
    };
    // A list field: one field per item, or all joined, or repeated, parse
    // alike (when every value is text).
    if values.iter().all(|v| v.to_str().is_ok()) && !values.is_empty() {
        let joined: Vec<u8> = values
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b","[..]);
        let mut h = others();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(&joined).expect("joined values"),
        );
        assert_eq!(&CacheControl::parse(&h), cc, "joined into one field");
        let upper = HeaderValue::from_bytes(&joined.to_ascii_uppercase()).expect("upper");
        h.insert(header::CACHE_CONTROL, upper);
        assert_eq!(
            &CacheControl::parse(&h),
            cc,
            "directives are case-insensitive"
        );
    }
    let mut h = headers.clone();
    if values.len() < 16 {
        for v in &values {
            h.append(header::CACHE_CONTROL, (*v).clone());
        }
        assert_eq!(&CacheControl::parse(&h), cc, "repeated");
    }
    if h.try_append(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, private"),
    )
    .is_ok()
    {
        let more = CacheControl::parse(&h);
        assert!(more.no_store && more.private);
        assert_eq!((more.max_age, more.s_maxage), (cc.max_age, cc.s_maxage));
    }
    let asks = request_no_cache(headers);
    if headers.contains_key(header::CACHE_CONTROL) {
        assert_eq!(
            asks, cc.no_cache,
            "Cache-Control decides, Pragma is ignored"
        );
    }
}

/// RFC 9213: the first targeted field present (with a directive) decides.
fn check_targeted(c: &Config, headers: &HeaderMap, cc: &CacheControl) {
    let chosen = c.cache_control(headers);
    if !c.targeted.iter().any(|t| headers.contains_key(t)) {
        assert_eq!(&chosen, cc, "no targeted field: Cache-Control decides");
    }
}

fn check_vary(headers: &HeaderMap, configured: &[HeaderName]) {
    let extra = vary_extra(headers, configured);
    let mut refusable = false;
    for v in headers.get_all(header::VARY) {
        match v.to_str() {
            Err(_) => refusable = true,
            Ok(text) => {
                for item in split_list(text) {
                    refusable |= item == "*" || HeaderName::from_bytes(item.as_bytes()).is_err();
                }
            }
        }
    }
    let Ok(extra) = extra else {
        assert!(refusable, "vary_extra refused a readable Vary of names");
        return;
    };
    assert!(!refusable, "vary_extra took a Vary it should refuse");
    assert!(
        extra.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
        "sorted, once each: {extra:?}"
    );
    assert!(extra.iter().all(|n| !configured.contains(n)));
    let unconfigured =
        vary_extra(headers, &[]).expect("refusal does not depend on the configuration");
    assert!(
        extra.iter().all(|n| unconfigured.contains(n)),
        "configured headers shrink the extra ones"
    );
    let all: Vec<HeaderName> = configured.iter().chain(&extra).cloned().collect();
    assert_eq!(vary_extra(headers, &all), Ok(Vec::new()), "nothing missing");
}

/// `tag` percent-encoded so that it is one item of a tags header.
fn encode_tag(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    for b in tag.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b',' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check_tags(tags: &[String], name: &HeaderName) {
    assert!(tags.iter().all(|t| !t.is_empty()), "no empty tag");
    let distinct: HashSet<&String> = tags.iter().collect();
    assert_eq!(distinct.len(), tags.len(), "no duplicate tag");
    let line = tags
        .iter()
        .map(|t| encode_tag(t))
        .collect::<Vec<_>>()
        .join(" ");
    let mut h = HeaderMap::new();
    h.insert(
        name.clone(),
        HeaderValue::from_str(&line).expect("encoded tags are a header value"),
    );
    assert_eq!(
        take_tags(&mut h, name).as_deref(),
        Ok(tags),
        "tags percent-encoded parse back"
    );
}

fn check_plan(c: &Config, status: StatusCode, h: &HeaderMap, plan: &Result<Plan, &'static str>) {
    let cc = c.cache_control(h);
    let positive = c.statuses.contains(&status);
    let negative = !positive && c.negative_statuses.contains(&status);
    let refused = status == StatusCode::PARTIAL_CONTENT
        || !(positive || negative)
        || h.contains_key(header::SET_COOKIE)
        || vary_extra(h, &c.vary).is_err()
        || !headers_fit(h)
        || cc.no_store
        || cc.private
        || cc.no_cache;
    let p = match plan {
        Ok(p) => p,
        Err(_) => return,
    };
    assert!(!refused, "a plan for what must not be stored: {cc:?}");
    assert_eq!(vary_extra(h, &c.vary).as_ref(), Ok(&p.variants));
    assert!(p.ttl.is_none_or(|t| !t.is_zero()), "stored, already stale");
    if negative {
        assert!(
            p.ttl.is_some_and(|t| t <= c.negative_ttl),
            "a negative for at most the negative TTL: {:?}",
            p.ttl
        );
        assert_eq!(p.refresh_after, None);
    }
    if let (Some(r), Some(t)) = (p.refresh_after, p.ttl) {
        assert!(r <= t, "refresh after {r:?}, expiry {t:?}");
    }
    if let (Some(t), Some(asked)) = (p.ttl, cc.s_maxage.or(cc.max_age)) {
        let swr = cc.stale_while_revalidate.unwrap_or(0);
        assert!(
            t <= Duration::from_secs(asked.saturating_add(swr)),
            "TTL {t:?} within the freshness asked ({asked} s, swr {swr} s)"
        );
    }
    if cc.revalidate_when_stale() {
        assert_eq!(p.refresh_after, None, "no stale-while-revalidate");
        assert_eq!(p.meta.stale_if_error, 0, "no stale-if-error");
    }
    assert!(p.keep >= Duration::from_secs(p.meta.stale_if_error));
}

/// The freshness functions on a response's fields.
fn check_freshness(status: StatusCode, h: &HeaderMap) {
    let now = SystemTime::now();
    let cc = CacheControl::parse(h);
    for default in [
        DefaultTtl::CacheTtl,
        DefaultTtl::Fixed(Duration::from_secs(60)),
        DefaultTtl::Heuristic,
    ] {
        match freshness::lifetime(h, &cc, status, now, default) {
            Lifetime::Explicit(d) => {
                if let Some(s) = cc.s_maxage.or(cc.max_age) {
                    assert_eq!(d, Duration::from_secs(s), "s-maxage, else max-age");
                }
            }
            Lifetime::Heuristic(d) => assert!(d <= freshness::MAX_HEURISTIC),
            Lifetime::CacheTtl | Lifetime::None => {
                assert!(cc.s_maxage.or(cc.max_age).is_none());
            }
        }
    }
    let age = freshness::age_value(h);
    assert!(freshness::initial_age(h, now, now) >= age);
    let later = now + Duration::from_secs(5);
    assert!(freshness::initial_age(h, now, later) >= age.saturating_add(Duration::from_secs(5)));
    for name in [header::DATE, header::EXPIRES, header::LAST_MODIFIED] {
        if let Some(Some(_)) = freshness::date(h, &name) {
            let first = h.get(&name).expect("a date field");
            assert!(h.get_all(&name).iter().all(|v| v == first), "{name}");
        }
    }
}

fn check_cached(
    cached: &CachedResponse,
    status: StatusCode,
    stored: &HeaderMap,
    etag: Option<&HeaderValue>,
    body: &Bytes,
) {
    assert_eq!(cached.status(), status);
    assert_eq!(cached.body(), body);
    let want_etag = etag.cloned().unwrap_or_else(|| strong_etag(body));
    assert_eq!(cached.etag(), &want_etag);
    let h = cached.headers();
    let own = [
        header::ETAG,
        HeaderName::from_static("x-cache"),
        header::AGE,
        CACHE_STATUS,
    ];
    let replaced = stored.get_all(CACHE_STATUS).iter().count();
    assert_eq!(
        h.len(),
        stored.len() - replaced + own.len(),
        "the stored fields and the cache's own"
    );
    assert_eq!(h.get(header::ETAG), Some(&want_etag));
    assert_eq!(
        h.get("x-cache").map(HeaderValue::as_bytes),
        Some(&b"hit"[..])
    );
    assert_eq!(
        h.get(header::AGE).map(HeaderValue::as_bytes),
        Some(&b"0"[..])
    );
    let status_field = h.get(CACHE_STATUS).expect("cache-status");
    assert!(
        status_field
            .as_bytes()
            .ends_with(CACHE_STATUS_HIT.as_bytes()),
        "{status_field:?}"
    );
    for name in stored.keys().filter(|n| !own.contains(n)) {
        // A small Content-Length is stored as the number it says (`03` is
        // served as `3`, from static memory; found by this target);
        // everything else as it came.
        let number = |v: &HeaderValue| v.to_str().ok().and_then(|s| s.parse::<u64>().ok());
        let same = |a: &HeaderValue, b: &HeaderValue| {
            a == b
                || (name == header::CONTENT_LENGTH && number(a).is_some() && number(a) == number(b))
        };
        let (got, want) = (h.get_all(name), stored.get_all(name));
        assert!(
            got.iter().count() == want.iter().count()
                && got.iter().zip(want.iter()).all(|(a, b)| same(a, b)),
            "{name} stored as it came"
        );
    }
    check_codec(cached);
}

// ---------------------------------------------------------------------------
// Request headers

/// A client's request (`METHOD URI`, fields) through the key and the
/// request-side policy: `RequestKey` rendering and hashing (with no vary
/// headers, `accept`, and `accept`, `accept-language` and the request's
/// first field; query sorted or not), `request_no_cache`, `none_match`.
///
/// Invariants: the key is the method, the path, the query (its non-empty
/// parameters sorted, with `sort_query`), then `|name=value` per vary
/// header with the values escaped (printable ASCII, `%XX` for the rest)
/// and joined by `,`, so it reads back to the request's values; a vary
/// value changed changes the key; sorted keys ignore the parameters'
/// order; the key hashes (streamed from the request's parts, as on a local
/// hit) and stores exactly as its rendered `String`; `If-None-Match`
/// matches an ETag equal to it (weak or not) and `*` matches anything; a
/// variant's key (RFC 9111 4.1) extends its request's and hashes as it
/// renders.
pub fn request_headers(data: &[u8]) {
    let (head, _) = split_blank(data);
    let (first, headers) = parse_head(head, MAX_REQUEST_REPEAT);
    let (method, uri) = request_line(first);

    let mut vary3 = vec![header::ACCEPT, header::ACCEPT_LANGUAGE];
    vary3.extend(headers.keys().next().cloned());
    let vary_sets: [&[HeaderName]; 3] = [&[], &[header::ACCEPT], &vary3];
    for vary in vary_sets {
        for sort_query in [false, true] {
            check_request_key(&method, &uri, &headers, vary, sort_query);
        }
    }

    let asks = request_no_cache(&headers);
    if headers.contains_key(header::CACHE_CONTROL) {
        assert_eq!(asks, CacheControl::parse(&headers).no_cache);
    }
    let strong = strong_etag(b"");
    for inm in headers.get_all(header::IF_NONE_MATCH).iter().take(8) {
        let _ = none_match(inm, &strong);
        assert_eq!(
            none_match(inm, &HeaderValue::from_static("W/\"fz\"")),
            none_match(inm, &HeaderValue::from_static("\"fz\"")),
            "weak comparison"
        );
        if let Ok(text) = inm.to_str() {
            if !text.contains(',') && !text.trim().is_empty() {
                assert!(none_match(inm, inm), "{text:?} matches itself");
            }
            if split_list(text).any(|t| t == "*") {
                assert!(none_match(inm, &strong), "* matches");
            }
        }
    }
}

fn check_request_key(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    vary: &[HeaderName],
    sort_query: bool,
) {
    let rk = RequestKey {
        method,
        uri,
        headers,
        vary,
        sort_query,
    };
    let s = rk.render();
    let names = [header::ACCEPT_LANGUAGE, header::COOKIE];
    let names = &names[..vary.len().min(2)];
    let vk = VariantKey { base: rk, names };
    let vs = vk.render();
    assert!(
        vs.strip_prefix(&s).is_some_and(|r| r.starts_with(" ||")),
        "a variant's key {vs:?} extends its request's {s:?}"
    );
    for f in [
        KeyFormat::new("pages", 250),
        KeyFormat::new("pages", 48),
        KeyFormat::new("pages", 1 << 20),
    ] {
        assert_eq!(f.hash(&rk), f.hash(&s), "a request hashes as its key");
        assert_eq!(f.storage_key(&rk), f.storage_key(&s));
        assert_eq!(f.hash(&vk), f.hash(&vs), "a variant hashes as its key");
    }

    // Method and path.
    let start = format!("{} {}", method.as_str(), uri.path());
    let mut rest = s
        .strip_prefix(&start)
        .unwrap_or_else(|| panic!("{s:?} starts with {start:?}"));
    // Query.
    if let Some(q) = uri.query().filter(|q| !q.is_empty()) {
        rest = rest.strip_prefix('?').expect("the query follows");
        let end = if vary.is_empty() {
            rest.len()
        } else {
            rest.find(' ').expect("vary headers follow the query")
        };
        let got = &rest[..end];
        rest = &rest[end..];
        if sort_query && q.contains('&') {
            let mut want: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            want.sort_unstable();
            assert_eq!(got, want.join("&"), "sorted query");
            // Any order of the parameters gives the same key.
            let reversed: Vec<&str> = q.split('&').rev().collect();
            if let Ok(other) = Uri::try_from(format!("{}?{}", uri.path(), reversed.join("&"))) {
                let rk2 = RequestKey { uri: &other, ..rk };
                if uri.authority().is_none() {
                    assert_eq!(rk2.render(), s, "parameter order ignored");
                }
            }
        } else {
            assert_eq!(got, q);
        }
    }
    // Vary headers: each reads back to the request's values.
    if vary.is_empty() {
        assert!(rest.is_empty(), "{s:?}");
        return;
    }
    rest = rest
        .strip_prefix(' ')
        .expect("a space before the vary headers");
    for name in vary {
        rest = rest
            .strip_prefix('|')
            .and_then(|r| r.strip_prefix(name.as_str()))
            .and_then(|r| r.strip_prefix('='))
            .unwrap_or_else(|| panic!("|{name}= in {s:?}"));
        let end = rest.find('|').unwrap_or(rest.len());
        let escaped = &rest[..end];
        rest = &rest[end..];
        assert!(
            escaped.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "escaped value {escaped:?}"
        );
        let want: Vec<u8> = headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b","[..]);
        assert_eq!(unescape(escaped), want, "{name} reads back");
    }
    assert!(rest.is_empty(), "nothing after the vary headers: {s:?}");

    // Another value of a vary header is another key.
    let mut other = headers.clone();
    if other
        .try_append(vary[0].clone(), HeaderValue::from_static("x"))
        .is_ok()
    {
        let rk2 = RequestKey {
            headers: &other,
            ..rk
        };
        assert_ne!(rk2.render(), s, "a vary value changed the key");
    }
}

/// `%XX` escapes decoded (the key's escaping of header values).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("escape");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The whole layer

/// An origin answering every request with the same fuzzed response.
#[derive(Clone)]
struct Origin {
    status: StatusCode,
    headers: Arc<HeaderMap>,
    body: Bytes,
    calls: Arc<AtomicUsize>,
    no_handle: Arc<AtomicBool>,
    ranged: Arc<AtomicBool>,
}

impl Service<Request<()>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if req.extensions().get::<CacheHandle>().is_none() {
            self.no_handle.store(true, Ordering::Relaxed);
        }
        if req.headers().contains_key(header::RANGE) {
            self.ranged.store(true, Ordering::Relaxed);
        }
        let mut resp = Response::new(Full::new(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = (*self.headers).clone();
        ready(Ok(resp))
    }
}

/// A response as a client sees it: status, fields, body.
#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn send<S>(svc: &mut S, req: Request<()>) -> Seen
where
    S: Service<Request<()>, Response = Response<crate::CacheBody<Full<Bytes>>>, Error = Infallible>,
{
    futures::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .expect("ready");
    let resp = svc.call(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("infallible").to_bytes();
    Seen {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `s` without the fields that differ between two answers from one stored
/// response (`age`, `x-cache`, `cache-status`).
fn without_own(s: &Seen) -> Seen {
    let mut headers = s.headers.clone();
    headers.remove(header::AGE);
    headers.remove("x-cache");
    headers.remove(CACHE_STATUS);
    Seen {
        status: s.status,
        headers,
        body: s.body.clone(),
    }
}

/// A request (`METHOD URI`, fields), a blank line, the origin's response
/// (`STATUS`, fields), a blank line, the origin's body: the request goes
/// three times through an [`HttpCacheLayer`] (the defaults, `vary(accept,
/// x-fuzz-run)`, `sort_query`, `honor_request_no_cache`, bodies up to 16
/// KiB) over that origin: twice to one cache, once to another cache on the
/// same in-process shared tier. The caches serve [`REBUILD_EVERY`] runs;
/// each run's requests carry their own `x-fuzz-run`, so no run sees
/// another's entries.
///
/// Invariants: the layer never fails internally; every request that
/// reaches the origin carries the cache handle, and a load never a `Range`;
/// the tags header never reaches the client; the origin being the same each time, the three
/// answers are the same but for `age`, `x-cache` and `Cache-Status` (a
/// response stored comes back from the local tier and, through its codec,
/// from the shared tier exactly as it was first served); an answer is the
/// origin's status or one the request asked for (304 with a validator, 206
/// or 416 with a range), its body the origin's, a range of it, or empty; a
/// cacheable request's answer says `x-cache` hit, miss or stale and carries
/// this cache's `Cache-Status` member; a response
/// the policy stores (tags, plan, body size; within the engine's limits
/// and fresh for a while) is loaded once and then served as a hit, from
/// each cache; one it refuses goes to the origin every time.
pub fn http_layer(data: &[u8]) {
    let (req_head, rest) = split_blank(data);
    let (resp_head, body) = split_blank(rest);
    let (line, req_headers) = parse_head(req_head, MAX_REQUEST_REPEAT);
    let (method, uri) = request_line(line);
    let (line, resp_headers) = parse_head(resp_head, MAX_REPEAT);
    let status = status_of(line);
    let body = Bytes::copy_from_slice(body);
    block_on(run_layer(
        method,
        uri,
        req_headers,
        status,
        resp_headers,
        body,
    ));
}

/// A request field naming the run, one of the layers' vary headers: no run
/// sees the entries of another.
const RUN_HEADER: HeaderName = HeaderName::from_static("x-fuzz-run");
/// Runs between fresh caches (making two caches costs more than a run).
const REBUILD_EVERY: u64 = 64;

/// The two layers of [`http_layer`] (over one in-process shared tier) and
/// the runs so far.
struct Rig {
    layers: Option<(HttpCacheLayer, HttpCacheLayer)>,
    runs: u64,
}

thread_local! {
    static RIG: std::cell::RefCell<Rig> = const {
        std::cell::RefCell::new(Rig { layers: None, runs: 0 })
    };
}

/// The layers for this run (made afresh every [`REBUILD_EVERY`] runs, in
/// the runtime) and the run's number.
fn rig() -> (HttpCacheLayer, HttpCacheLayer, u64) {
    RIG.with(|r| {
        let mut r = r.borrow_mut();
        r.runs += 1;
        if r.runs % REBUILD_EVERY == 1 {
            r.layers = None;
        }
        let (a, b) = r.layers.get_or_insert_with(|| {
            let tier = InProcessSharedTier::default();
            let layer = || {
                let cache = Cache::builder(NS)
                    .shared_tier(tier.clone())
                    .no_bus()
                    .ttl_jitter(0.0)
                    .negative_jitter(0.0)
                    .max_value_size(MAX_VALUE)
                    .compress_at(COMPRESS_AT)
                    .build_with_codec(ResponseCodec)
                    .expect("cache");
                HttpCacheLayer::new(cache)
                    .vary([header::ACCEPT, RUN_HEADER])
                    .sort_query(true)
                    .honor_request_no_cache(true)
                    .max_body_size(MAX_BODY)
            };
            (layer(), layer())
        });
        (a.clone(), b.clone(), r.runs)
    })
}

/// What the engine does with a response the policy stores: `Some(true)`
/// it keeps it (long enough for three requests), `Some(false)` it refuses
/// it (its tags or size), `None` hard to say (near a limit).
fn engine_keeps(stored: &Stored, uri_tag: Option<String>) -> Option<bool> {
    let tags: Vec<&str> = stored
        .tags
        .iter()
        .map(String::as_str)
        .chain(uri_tag.as_deref())
        .collect();
    if envelope::check_tags(tags.iter().copied()).is_err() {
        return Some(false);
    }
    let mut payload = Vec::new();
    stored.cached.encode(&mut payload);
    let tag_bytes: usize = tags.iter().map(|t| t.len() + 16).sum();
    if payload.len() + tag_bytes + 64 > MAX_VALUE / 2 {
        return (payload.len() > MAX_VALUE).then_some(false);
    }
    let long = |d: Option<Duration>| d.is_none_or(|d| d >= Duration::from_secs(5));
    (long(stored.plan.ttl) && long(stored.plan.refresh_after)).then_some(true)
}

async fn run_layer(
    method: Method,
    uri: Uri,
    mut req_headers: HeaderMap,
    status: StatusCode,
    resp_headers: HeaderMap,
    body: Bytes,
) {
    let (a, b, run) = rig();
    req_headers.remove(&RUN_HEADER);
    if req_headers
        .try_insert(RUN_HEADER, HeaderValue::from(run))
        .is_err()
    {
        // A map full to `http`'s limit: the run cannot be told apart.
        return;
    }
    let origin = Origin {
        status,
        headers: Arc::new(resp_headers.clone()),
        body: body.clone(),
        calls: Arc::default(),
        no_handle: Arc::default(),
        ranged: Arc::default(),
    };
    let request = || {
        let mut r = Request::new(());
        *r.method_mut() = method.clone();
        *r.uri_mut() = uri.clone();
        *r.headers_mut() = req_headers.clone();
        r
    };
    let mut sa = a.layer(origin.clone());
    let mut sb = b.layer(origin.clone());
    let seen = [
        send(&mut sa, request()).await,
        send(&mut sa, request()).await,
        send(&mut sb, request()).await,
    ];

    let c = &a.config;
    for l in [&a, &b] {
        assert_eq!(
            l.config.internal_failures.load(Ordering::Relaxed),
            0,
            "the layer failed internally"
        );
    }
    assert!(
        !origin.no_handle.load(Ordering::Relaxed),
        "a request reached the origin without the cache handle"
    );
    let first = without_own(&seen[0]);
    for (i, s) in seen.iter().enumerate() {
        assert!(
            !s.headers.contains_key(&c.tags_header),
            "answer {i} carries the tags header"
        );
        assert_eq!(without_own(s), first, "answer {i} differs from the first");
    }

    let cacheable = c.methods.contains(&method)
        && (c.cache_authorized || !req_headers.contains_key(header::AUTHORIZATION));
    assert!(
        !(cacheable && method != Method::HEAD && origin.ranged.load(Ordering::Relaxed)),
        "a load was sent with a Range"
    );
    let s = &seen[0];
    let asked = |name: header::HeaderName| req_headers.contains_key(name);
    let status_ok = s.status == status
        || (s.status == StatusCode::NOT_MODIFIED
            && (asked(header::IF_NONE_MATCH) || asked(header::IF_MODIFIED_SINCE)))
        || ((s.status == StatusCode::PARTIAL_CONTENT
            || s.status == StatusCode::RANGE_NOT_SATISFIABLE)
            && asked(header::RANGE));
    assert!(status_ok, "answered {} for an origin's {status}", s.status);
    if s.status == StatusCode::PARTIAL_CONTENT && s.status != status {
        let range = s
            .headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split_once('/'))
            .and_then(|(r, len)| Some((r.split_once('-')?, len.parse::<usize>().ok()?)))
            .and_then(|((a, b), len)| {
                Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?, len))
            });
        let (start, end, len) = range.expect("a 206 says its range");
        assert_eq!(len, body.len());
        assert_eq!(s.body, body.slice(start..=end), "the range of the body");
    } else {
        assert!(
            s.body == body || s.body.is_empty(),
            "the body is the origin's (or none)"
        );
    }
    if cacheable {
        let x = s.headers.get("x-cache").map(HeaderValue::as_bytes);
        assert!(
            matches!(x, Some(b"hit" | b"miss" | b"stale")),
            "x-cache {x:?}"
        );
        for (i, s) in seen.iter().enumerate() {
            let status = s.headers.get(CACHE_STATUS).map(HeaderValue::as_bytes);
            assert!(
                status.is_some_and(|v| v.windows(9).any(|w| w == b"tiercache")),
                "answer {i}: Cache-Status {status:?}"
            );
        }
    }

    let calls = origin.calls.load(Ordering::Relaxed);
    let revalidate = c.request_no_cache && request_no_cache(&req_headers);
    let stored = if cacheable && method != Method::HEAD {
        policy(c, status, &resp_headers, &body)
    } else {
        None
    };
    let keeps = match &stored {
        None => Some(false),
        Some(st) => {
            let tag_uri = !c.vary.is_empty() || !st.plan.variants.is_empty();
            engine_keeps(st, tag_uri.then(|| uri_tag(c, &uri)))
        }
    };
    match keeps {
        Some(true) if !revalidate => {
            assert_eq!(calls, 1, "a stored response is loaded once");
            for (i, s) in seen.iter().enumerate().skip(1) {
                let x = s.headers.get("x-cache").map(HeaderValue::as_bytes);
                assert_eq!(x, Some(&b"hit"[..]), "answer {i} is a hit");
            }
        }
        Some(false) => assert_eq!(calls, 3, "a response not stored is loaded every time"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::Config as PropConfig;

    use super::*;
    use crate::fuzz_targets;

    // Failures are not persisted (no proptest-regressions files in the
    // source tree): a failing input becomes a named test or a fuzz seed.
    fn config(cases: u32) -> PropConfig {
        PropConfig {
            cases,
            failure_persistence: None,
            ..PropConfig::default()
        }
    }

    /// A header name: one the layer acts on, mostly.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec![
                "cache-control", "pragma", "vary", "x-cache-tags", "set-cookie", "connection",
                "etag", "age", "x-cache", "content-length", "expires", "keep-alive",
                "transfer-encoding", "if-none-match", "accept", "accept-language", "authorization",
                "content-type", "date", "Cache-Control", "X-Custom", "cdn-cache-control",
                "tiercache-cache-control", "expires", "last-modified", "range", "if-range",
                "if-modified-since", "cache-status", "cookie",
            ]).prop_map(str::to_owned),
            1 => "[a-zA-Z0-9!#$&'*+.^_`|~-]{0,12}",
            1 => ".{0,6}",
        ]
    }

    /// A header value: directives, lists, tags, ETags, or anything.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "(max-age|s-maxage|no-store|no-cache|private|public)(=\"?[0-9]{0,22}\"?)?(, ?(max-age|s-maxage|no-cache|private)(=[0-9a-z]{0,22})?){0,3}",
            Just("max-age=99999999999".to_owned()),
            Just("max-age=18446744073709551615".to_owned()),
            "(accept|cookie|\\*|Accept-Language)(, ?(accept|cookie|\\*)){0,2}",
            "([a-z:]{1,8}|caf%C3%A9|café|%[0-9A-Fa-f]{0,2}|100%25)([ ,]{1,2}[a-z:%0-9é]{1,8}){0,4}",
            "(W/)?\"[a-z0-9]{0,8}\"(, ?(W/)?\"[a-z0-9]{0,8}\"){0,2}|\\*",
            "(must-revalidate|proxy-revalidate|stale-while-revalidate=[0-9]{1,3}|stale-if-error=[0-9]{1,3})(, max-age=[0-9]{1,3})?",
            prop::sample::select(vec![
                "Sun, 09 Sep 2001 01:46:40 GMT",
                "Thu, 01 Jan 2099 00:00:00 GMT",
                "Sunday, 09-Sep-01 01:46:40 GMT",
                "Sun Sep  9 01:46:40 2001",
                "0",
                "-1",
                "bytes=0-3",
                "bytes=-2",
                "bytes=5-",
                "bytes=9-1",
                "bytes=0-1,3-4",
                "items=0-1",
            ])
            .prop_map(str::to_owned),
            "[ -~]{0,24}",
            ".{0,12}",
        ]
    }

    /// A head's line: a field, a few of it, or (with weight `many`) tens
    /// of thousands of one the layer does not remove (removing those from
    /// a map is quadratic in debug builds, where `http` checks its map on
    /// every removal; the fuzzer, optimized, repeats any field).
    fn line(many: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            40 => (name(), value()).prop_map(|(n, v)| format!("{n}: {v}")),
            4 => (2usize..40, name(), value()).prop_map(|(k, n, v)| format!("*{k} {n}: {v}")),
            many => (prop::sample::select(vec!["x-many", "content-type", "accept"]), value())
                .prop_map(|(n, v)| format!("*33000 {n}: {v}")),
        ]
    }

    fn response() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![
                prop::sample::select(vec![200u16, 203, 204, 301, 404, 410, 304, 500, 302]),
                100u16..1000,
            ],
            vec(line(1), 0..8),
            prop_oneof![
                Just(Vec::new()),
                vec(any::<u8>(), 0..64),
                (0usize..3).prop_map(|n| vec![b'b'; n * 12_000])
            ],
        )
            .prop_map(|(status, lines, body)| {
                let mut out = format!("{status}\n{}\n\n", lines.join("\n")).into_bytes();
                out.extend_from_slice(&body);
                out
            })
    }

    fn request() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                4 => Just("GET"), 2 => Just("HEAD"), 1 => Just("POST"), 1 => Just("PATCH"), 1 => Just("X")
            ],
            prop_oneof![
                "/[a-z0-9/]{0,12}(\\?([a-z]{0,3}(=[a-z0-9]{0,3})?&?){0,6})?",
                Just("http://example.com/a?b=1&a=2".to_owned()),
                "[ -~]{0,20}",
            ],
            vec(line(0), 0..6),
        )
            .prop_map(|(m, uri, lines)| format!("{m} {uri}\n{}", lines.join("\n")))
    }

    fn raw_encoding() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(200u16), 100u16..1000],
            vec((name(), "[ -~]{0,16}"), 0..6),
            vec(any::<u8>(), 0..64),
            proptest::option::of("\"[a-z0-9]{0,8}\""),
        )
            .prop_map(|(status, fields, body, etag)| {
                let mut h = HeaderMap::new();
                for (n, v) in fields {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(n.as_bytes()),
                        HeaderValue::from_str(&v),
                    ) {
                        h.append(n, v);
                    }
                }
                let etag = etag.and_then(|e| HeaderValue::from_str(&e).ok());
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let r =
                    CachedResponse::new(status, h, Bytes::from(body), etag).expect("few fields");
                let mut out = Vec::new();
                r.encode(&mut out);
                out
            })
    }

    fn mutated(bytes: Vec<u8>, edits: Vec<(usize, u8)>, cut: Option<usize>) -> Vec<u8> {
        let mut b = bytes;
        for (at, v) in edits {
            let i = at % (b.len() + 1);
            match v % 3 {
                0 if i < b.len() => b[i] = v,
                1 if i < b.len() => b[i] ^= 1 << (v % 8),
                _ => b.insert(i, v),
            }
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        b
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn cached_response(data in vec(any::<u8>(), 0..512)) {
            fuzz_targets::cached_response(&data);
        }

        #[test]
        fn cached_response_near_valid(
            bytes in raw_encoding(),
            edits in vec((any::<usize>(), any::<u8>()), 0..3),
            cut in proptest::option::of(any::<usize>()),
        ) {
            fuzz_targets::cached_response(&bytes);
            fuzz_targets::cached_response(&bytes[3..]);
            fuzz_targets::cached_response(&mutated(bytes, edits, cut));
        }

        #[test]
        fn response_headers(data in vec(any::<u8>(), 0..512)) {
            fuzz_targets::response_headers(&data);
        }

        #[test]
        fn response_headers_structured(data in response()) {
            fuzz_targets::response_headers(&data);
        }

        #[test]
        fn request_headers(data in vec(any::<u8>(), 0..512)) {
            fuzz_targets::request_headers(&data);
        }

        #[test]
        fn request_headers_structured(data in request()) {
            fuzz_targets::request_headers(data.as_bytes());
        }
    }

    proptest! {
        // Each case sends three requests through the layer.
        #![proptest_config(config(256))]

        #[test]
        fn http_layer(req in request(), resp in response()) {
            let mut data = req.into_bytes();
            data.extend_from_slice(b"\n\n");
            data.extend_from_slice(&resp);
            fuzz_targets::http_layer(&data);
        }

        #[test]
        fn http_layer_bytes(data in vec(any::<u8>(), 0..256)) {
            fuzz_targets::http_layer(&data);
        }
    }

    /// Found by the `response_headers` fuzz target: a Content-Length with
    /// leading zeros is stored as its number.
    #[test]
    fn content_length_with_leading_zeros() {
        fuzz_targets::response_headers(
            b"203\ncontent-length: 03\ncache-control: max-age=60\n\nabc",
        );
        fuzz_targets::http_layer(b"GET /p\n\n200\ncontent-length: 03\n\nabc");
    }

    #[test]
    fn the_issue_inputs_pass() {
        let mut planted = vec![0x01, 0x00, 0xc8, 0x00, 0x81, 0x80, 0x02];
        planted.extend(std::iter::repeat_n(0u8, 32_769));
        fuzz_targets::cached_response(&planted);
        for head in [
            "200\ncache-control: max-age=99999999999",
            "200\ncache-control: max-age=18446744073709551615",
            "200\n*32769 x-many: v",
            "200\nx-cache-tags: products category:café",
        ] {
            fuzz_targets::response_headers(head.as_bytes());
            fuzz_targets::http_layer(format!("GET /p\n\n{head}\n\nbody").as_bytes());
        }
        let big_tag = format!("200\nx-cache-tags: {}", "t".repeat(65_536));
        fuzz_targets::response_headers(big_tag.as_bytes());
        fuzz_targets::http_layer(format!("GET /p\n\n{big_tag}").as_bytes());
    }
}
