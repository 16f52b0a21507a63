//! The cached form of an HTTP response and its compact encoding.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tiercache_core::{Codec, DecodeError, EncodeError};

/// A response as the cache holds it: status, headers (without hop-by-hop
/// headers, `set-cookie` and the tags header), the body as shared [`Bytes`]
/// and a strong ETag computed once when it was filled.
///
/// Serving it clones the header map and the `Bytes` handle: the body is never
/// copied on a hit.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    etag: HeaderValue,
    meta: Meta,
    /// The tags it was stored with (kept when a revalidation refreshes it).
    tags: Vec<String>,
    /// Not a response but a pointer to its variants (RFC 9111 4.1): the
    /// request headers the response under this key varies on. Empty for a
    /// response.
    variants: Vec<HeaderName>,
}

/// What the cache knew of a response when it stored it (RFC 9111 4.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Its age when it reached the cache (4.2.3's corrected initial age),
    /// in seconds: every `Age` served adds the time it has been stored.
    pub(crate) initial_age: u64,
    /// Its freshness lifetime, in seconds.
    pub(crate) lifetime: u64,
    /// How long past its lifetime it may be served when the origin fails
    /// (`stale-if-error`, or the cache's grace; 0 with `must-revalidate`).
    pub(crate) stale_if_error: u64,
    /// The ETag is the origin's (not one the cache computed): it may be
    /// sent to the origin in `If-None-Match`.
    pub(crate) origin_etag: bool,
}

impl fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("etag", &self.etag)
            .field("meta", &self.meta)
            .field("tags", &self.tags)
            .field("variants", &self.variants)
            .finish()
    }
}

/// Most header fields (values, counting each of a repeated name) a stored
/// response may carry, the cache's own three included. A response with more
/// is not stored; stored bytes claiming more are corrupt. It bounds what a
/// decode allocates, and keeps every map far below `http`'s own limit (a
/// `HeaderMap` panics past 32,768 entries).
pub const MAX_HEADERS: usize = 1024;

/// A response the cache cannot hold: it carries more than [`MAX_HEADERS`]
/// header fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{count} header fields, more than the {MAX_HEADERS} a stored response may carry")]
pub struct TooManyHeaders {
    /// The response's header fields, with the cache's own.
    pub count: usize,
}

/// Whether a response with `headers` fits [`MAX_HEADERS`] once stored (with
/// the cache's own fields and a `content-length`).
pub(crate) fn headers_fit(headers: &HeaderMap) -> bool {
    headers.len().saturating_add(OWN_HEADERS + 1) <= MAX_HEADERS
}

impl CachedResponse {
    /// A cached response. `etag`: the origin's, or `None` for a strong one
    /// computed from the body (`"` + xxh3-128 hex + `"`).
    ///
    /// # Errors
    ///
    /// [`TooManyHeaders`] when `headers`, with the `etag`, `x-cache` and
    /// `age` the cache adds, hold more than [`MAX_HEADERS`] fields.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        etag: Option<HeaderValue>,
    ) -> Result<Self, TooManyHeaders> {
        let count = headers.len().saturating_add(OWN_HEADERS);
        if count > MAX_HEADERS {
            return Err(TooManyHeaders { count });
        }
        let meta = Meta {
            origin_etag: etag.is_some(),
            ..Meta::default()
        };
        let etag = etag.unwrap_or_else(|| strong_etag(&body));
        for (name, value) in headers.iter_mut() {
            intern(name, value);
        }
        // The served map is complete up front: a hit clones it and overwrites
        // `age` (and `x-cache` unless a hit) in place, with no insertion.
        headers.insert(header::ETAG, etag.clone());
        headers.insert(
            HeaderName::from_static("x-cache"),
            HeaderValue::from_static("hit"),
        );
        headers.insert(header::AGE, HeaderValue::from_static("0"));
        // RFC 9211: the members of caches nearer the origin stay, ours last.
        let cache_status = super::serve::appended(
            headers.get(CACHE_STATUS),
            HeaderValue::from_static(CACHE_STATUS_HIT),
        );
        headers.insert(CACHE_STATUS, cache_status);
        Ok(Self {
            status,
            headers,
            body,
            etag,
            meta,
            tags: Vec::new(),
            variants: Vec::new(),
        })
    }

    /// The entry stored under a request's key when the response varies on
    /// request headers the key does not hold: it names them, and each
    /// variant is stored under its own key ([`VariantKey`](super::key::VariantKey)).
    pub(crate) fn variants_marker(names: Vec<HeaderName>) -> Self {
        Self {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            etag: HeaderValue::from_static("\"\""),
            meta: Meta::default(),
            tags: Vec::new(),
            variants: names,
        }
    }

    /// The request headers the variants vary on, when this is a marker
    /// ([`variants_marker`](Self::variants_marker)).
    pub(crate) fn variants(&self) -> Option<&[HeaderName]> {
        (!self.variants.is_empty()).then_some(&self.variants[..])
    }

    /// This response with the tags it is stored under.
    pub(crate) fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// The tags it was stored with.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// This response with what the cache knew of it when storing it.
    pub(crate) fn with_meta(mut self, meta: Meta) -> Self {
        self.meta = Meta {
            origin_etag: self.meta.origin_etag,
            ..meta
        };
        self
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Its age when it reached the cache (RFC 9111 4.2.3), which every
    /// `Age` served from it includes.
    pub fn initial_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.meta.initial_age)
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers served: the stored ones plus `etag`, and `x-cache` and
    /// `age` (placeholders, set per response).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The entity tag.
    pub fn etag(&self) -> &HeaderValue {
        &self.etag
    }

    /// A copy that shares no reference-counted memory with `self`: body,
    /// ETag and header values are copied (common values stay static).
    ///
    /// A hit clones the headers and the body; on a response every core
    /// serves, each clone writes a reference count all cores share. The
    /// cache keeps one copy per thread for its hottest entries
    /// ([`ResponseCodec`]'s [`thread_copy`](Codec::thread_copy)), so those
    /// writes stay on the serving core's own memory.
    pub fn thread_copy(&self) -> Self {
        // Never more than MAX_HEADERS fields (checked where one is made);
        // the fallible calls keep even a broken invariant from panicking.
        let mut headers =
            HeaderMap::try_with_capacity(self.headers.len().min(MAX_HEADERS)).unwrap_or_default();
        for (name, value) in &self.headers {
            let name = static_name(name.as_str().as_bytes()).unwrap_or_else(|| {
                HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or(name.clone())
            });
            let mut value = copy_value(value);
            intern(&name, &mut value);
            if headers.try_append(name, value).is_err() {
                return self.clone();
            }
        }
        Self {
            status: self.status,
            headers,
            body: Bytes::copy_from_slice(&self.body),
            etag: copy_value(&self.etag),
            meta: self.meta,
            tags: self.tags.clone(),
            variants: self.variants.clone(),
        }
    }

    /// The compact encoding ([`ResponseCodec`]'s).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        put_len(
            out,
            usize::try_from(self.meta.initial_age).unwrap_or(usize::MAX),
        );
        put_len(
            out,
            usize::try_from(self.meta.lifetime).unwrap_or(usize::MAX),
        );
        put_len(
            out,
            usize::try_from(self.meta.stale_if_error).unwrap_or(usize::MAX),
        );
        out.push(u8::from(self.meta.origin_etag) | if self.variants.is_empty() { 0 } else { 2 });
        put_len(out, self.tags.len());
        for t in &self.tags {
            put_bytes(out, t.as_bytes());
        }
        if !self.variants.is_empty() {
            put_len(out, self.variants.len());
            for n in &self.variants {
                put_bytes(out, n.as_str().as_bytes());
            }
        }
        put_bytes(out, self.etag.as_bytes());
        put_len(out, self.headers.len());
        for (name, value) in &self.headers {
            put_bytes(out, name.as_str().as_bytes());
            put_bytes(out, value.as_bytes());
        }
        put_bytes(out, &self.body);
    }

    /// Decodes [`encode`](Self::encode)'s output; any other bytes are an
    /// error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let format = r.take(1)?[0];
        if format != FORMAT && format != FORMAT_V1 {
            return Err(DecodeError::Corrupt(format!(
                "cached response format {format}, expected {FORMAT}"
            )));
        }
        let status = r.take(2)?;
        let status = StatusCode::from_u16(u16::from_be_bytes([status[0], status[1]]))
            .map_err(|e| corrupt(&e))?;
        let mut tags = Vec::new();
        let mut variants = Vec::new();
        let meta = if format == FORMAT_V1 {
            // Written before the cache kept ages: none known.
            Meta::default()
        } else {
            let secs = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
            let initial_age = secs(r.len()?);
            let lifetime = secs(r.len()?);
            let stale_if_error = secs(r.len()?);
            let flags = r.take(1)?[0];
            if flags > 3 {
                return Err(DecodeError::Corrupt(format!("unknown flags {flags}")));
            }
            let n = r.len()?;
            if n > r.0.len() {
                return Err(DecodeError::Corrupt("tag count past the end".into()));
            }
            tags.reserve(n);
            for _ in 0..n {
                let t = std::str::from_utf8(r.bytes()?).map_err(|e| corrupt(&e))?;
                tags.push(t.to_owned());
            }
            if flags & 2 != 0 {
                let n = r.len()?;
                if n == 0 || n > r.0.len() || n > MAX_HEADERS {
                    return Err(DecodeError::Corrupt("bad variant header count".into()));
                }
                for _ in 0..n {
                    variants.push(HeaderName::from_bytes(r.bytes()?).map_err(|e| corrupt(&e))?);
                }
            }
            Meta {
                initial_age,
                lifetime,
                stale_if_error,
                origin_etag: flags & 1 != 0,
            }
        };
        let etag = HeaderValue::from_bytes(r.bytes()?).map_err(|e| corrupt(&e))?;
        let count = r.len()?;
        if count > MAX_HEADERS {
            return Err(DecodeError::Corrupt(format!(
                "{count} header fields, more than {MAX_HEADERS}"
            )));
        }
        if count > r.0.len() {
            return Err(DecodeError::Corrupt("header count past the end".into()));
        }
        let mut headers = HeaderMap::try_with_capacity(count).map_err(|e| corrupt(&e))?;
        for _ in 0..count {
            let raw = r.bytes()?;
            let name = match static_name(raw) {
                Some(n) => n,
                None => HeaderName::from_bytes(raw).map_err(|e| corrupt(&e))?,
            };
            let mut value = HeaderValue::from_bytes(r.bytes()?).map_err(|e| corrupt(&e))?;
            intern(&name, &mut value);
            headers.try_append(name, value).map_err(|e| corrupt(&e))?;
        }
        let body = Bytes::copy_from_slice(r.bytes()?);
        if !r.0.is_empty() {
            return Err(DecodeError::Corrupt("trailing bytes after response".into()));
        }
        Ok(Self {
            status,
            headers,
            body,
            etag,
            meta,
            tags,
            variants,
        })
    }
}

/// The cache's own header names, in static memory: cloning one on a hit
/// writes no reference count (a name made from bytes is shared memory).
fn static_name(bytes: &[u8]) -> Option<HeaderName> {
    match bytes {
        b"x-cache" => Some(HeaderName::from_static("x-cache")),
        b"cache-status" => Some(CACHE_STATUS),
        _ => None,
    }
}

/// `value` in memory of its own (same bytes, same sensitivity).
fn copy_value(value: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(mut copy) => {
            copy.set_sensitive(value.is_sensitive());
            copy
        }
        Err(_) => value.clone(),
    }
}

/// Header values common enough to serve from static memory: a hit clones
/// a stored value with every response, and a static one costs nothing to
/// clone (a shared one is a reference count that every core writes).
const COMMON_VALUES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "text/html",
    "text/html; charset=utf-8",
    "text/plain",
    "text/plain; charset=utf-8",
    "text/css",
    "text/javascript",
    "application/javascript",
    "application/octet-stream",
    "application/xml",
    "image/png",
    "image/jpeg",
    "image/svg+xml",
    "gzip",
    "br",
    "zstd",
    "accept-encoding",
    "accept",
    "public",
    "nosniff",
    // The layer's own `x-cache` values.
    "hit",
    "miss",
    "stale",
    CACHE_STATUS_HIT,
];

/// Swaps `value` for its static twin when it is one of [`COMMON_VALUES`],
/// or a small `content-length` or `age`.
fn intern(name: &HeaderName, value: &mut HeaderValue) {
    if name == header::CONTENT_LENGTH || name == header::AGE {
        if let Some(n) = value.to_str().ok().and_then(|v| v.parse::<u64>().ok())
            && n < STATIC_NUMBERS
        {
            *value = number_value(n);
        }
        return;
    }
    if let Some(s) = COMMON_VALUES
        .iter()
        .find(|s| s.as_bytes() == value.as_bytes())
    {
        *value = HeaderValue::from_static(s);
    }
}

/// Numbers below this are header values in static memory.
const STATIC_NUMBERS: u64 = 16_384;

/// A number as a header value (`age`, `content-length`). Below
/// [`STATIC_NUMBERS`] it points into one string of every such number, made
/// once per process (70 KB): cloning it allocates nothing and writes no
/// reference count shared between cores, which a hit does with every
/// response.
pub(crate) fn number_value(n: u64) -> HeaderValue {
    // The smallest numbers (every `Age` of a fresh hit) as ready values: a
    // clone is all a hit pays, not the slicing and checks below.
    static SMALL: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    if n < SMALL_NUMBERS {
        let small = SMALL.get_or_init(|| (0..SMALL_NUMBERS).map(static_number_value).collect());
        if let Some(v) = usize::try_from(n).ok().and_then(|i| small.get(i)) {
            return v.clone();
        }
    }
    static_number_value(n)
}

/// Numbers below this are ready header values (40 KB).
const SMALL_NUMBERS: u64 = 1024;

/// [`number_value`] without the table of small numbers.
fn static_number_value(n: u64) -> HeaderValue {
    static DIGITS: OnceLock<&'static str> = OnceLock::new();
    if n >= STATIC_NUMBERS {
        return HeaderValue::from(n);
    }
    let digits = DIGITS.get_or_init(|| {
        let mut s = String::with_capacity(72_000);
        for i in 0..STATIC_NUMBERS {
            let _ = write!(s, "{i}");
        }
        Box::leak(s.into_boxed_str())
    });
    // Where `n` starts: after every shorter number, then `n`'s rank among
    // numbers of its length.
    let (start, len) = match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        100..=999 => (190 + (n - 100) * 3, 3),
        1000..=9999 => (2890 + (n - 1000) * 4, 4),
        _ => (38_890 + (n - 10_000) * 5, 5),
    };
    let range = usize::try_from(start).ok().map(|s| s..s + len);
    match range.and_then(|r| digits.get(r)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// `"` + the xxh3-128 of `body` in hex + `"`.
pub(crate) fn strong_etag(body: &[u8]) -> HeaderValue {
    let h = xxhash_rust::xxh3::xxh3_128(body);
    let s = format!("\"{h:032x}\"");
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The encoding written: status, meta (ages, lifetime, flags), ETag,
/// headers, body.
const FORMAT: u8 = 2;
/// The encoding before meta; still read.
const FORMAT_V1: u8 = 1;

/// Fields the cache adds to every stored response: `etag`, `x-cache`, `age`,
/// `cache-status`.
const OWN_HEADERS: usize = 4;

/// `Cache-Status` (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Its value on a hit.
pub(crate) const CACHE_STATUS_HIT: &str = "tiercache; hit";

fn corrupt(e: &dyn fmt::Display) -> DecodeError {
    DecodeError::Corrupt(e.to_string())
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Corrupt("cached response truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let mut n: usize = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            n |= usize::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or_else(|| DecodeError::Corrupt("length overflows".into()))?;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError::Corrupt("length too long".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }
}

/// The [`Codec`] of [`CachedResponse`]: a compact binary form (status,
/// ETag, headers as name/value byte strings, body), no serde in between.
/// Use it with `.build_with_codec(ResponseCodec)`; `.build()` works
/// too (serde, through the same encoding).
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseCodec;

impl Codec<CachedResponse> for ResponseCodec {
    fn encode(&self, value: &CachedResponse, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        value.encode(out);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<CachedResponse, DecodeError> {
        CachedResponse::decode(bytes)
    }

    fn thread_copy(&self, value: &CachedResponse) -> Option<CachedResponse> {
        Some(value.thread_copy())
    }
}

impl serde::Serialize for CachedResponse {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(self.body.len() + 64);
        self.encode(&mut out);
        serializer.serialize_bytes(&out)
    }
}

impl<'de> serde::Deserialize<'de> for CachedResponse {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = CachedResponse;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an encoded cached response")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<CachedResponse, E> {
                CachedResponse::decode(v).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<CachedResponse, E> {
                self.visit_bytes(&v)
            }
        }
        deserializer.deserialize_bytes(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedResponse {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        CachedResponse::new(StatusCode::OK, h, Bytes::from_static(b"{\"id\":1}"), None)
            .expect("few headers")
    }

    #[test]
    fn codec_round_trips_and_rejects_garbage() {
        let r = sample();
        let mut out = Vec::new();
        ResponseCodec.encode(&r, &mut out).expect("encode");
        assert_eq!(ResponseCodec.decode(&out).expect("decode"), r);
        for cut in 0..out.len() {
            assert!(ResponseCodec.decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        assert!(ResponseCodec.decode(&[0xff; 40]).is_err());
        let mut longer = out.clone();
        longer.push(0);
        assert!(ResponseCodec.decode(&longer).is_err());
    }

    /// Issue 11, case 2: stored bytes with 32,769 header fields are a
    /// decode error (the engine deletes them), never a panic.
    #[test]
    fn many_header_fields_are_an_error_not_a_panic() {
        // `01 00c8 00 818002` then 32,769 zero bytes: format 1, status 200,
        // an empty ETag, 32,769 headers (each an empty name, which the count
        // check refuses before any map is made).
        let mut planted = vec![0x01, 0x00, 0xc8, 0x00, 0x81, 0x80, 0x02];
        planted.extend(std::iter::repeat_n(0u8, 32_769));
        match ResponseCodec.decode(&planted) {
            Err(DecodeError::Corrupt(why)) => assert!(why.contains("32769"), "{why}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        // 32,769 values of one header, as an origin could send them: not
        // storable, with a typed error.
        let mut h = HeaderMap::new();
        for _ in 0..32_769 {
            h.append("x-many", HeaderValue::from_static("v"));
        }
        let err = CachedResponse::new(StatusCode::OK, h, Bytes::new(), None).unwrap_err();
        assert_eq!(err.count, 32_769 + OWN_HEADERS);
        // At the limit it is stored, and its bytes round-trip.
        let mut h = HeaderMap::new();
        for i in 0..MAX_HEADERS - OWN_HEADERS {
            h.append("x-many", HeaderValue::from(i));
        }
        let r = CachedResponse::new(StatusCode::OK, h, Bytes::new(), None).expect("at the limit");
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(CachedResponse::decode(&out).expect("decode"), r);
        assert_eq!(r.thread_copy(), r);
    }

    #[test]
    fn thread_copy_is_equal_and_unshared() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-custom", HeaderValue::from_str("v1").expect("value"));
        let mut secret = HeaderValue::from_static("s");
        secret.set_sensitive(true);
        h.insert("x-secret", secret);
        let body = Bytes::from(vec![7u8; 100]);
        let r = CachedResponse::new(StatusCode::OK, h, body, None).expect("few headers");
        let c = r.thread_copy();
        assert_eq!(c, r);
        assert_ne!(c.body().as_ptr(), r.body().as_ptr(), "body copied");
        assert_ne!(c.etag().as_bytes().as_ptr(), r.etag().as_bytes().as_ptr());
        let custom = |x: &CachedResponse| x.headers()["x-custom"].as_bytes().as_ptr();
        assert_ne!(custom(&c), custom(&r), "values copied");
        assert!(c.headers()["x-secret"].is_sensitive());
        // Static values stay static: the same memory.
        let ct = |x: &CachedResponse| x.headers()["content-type"].as_bytes().as_ptr();
        assert_eq!(ct(&c), ct(&r));
        let hit = |x: &CachedResponse| x.headers()["x-cache"].as_bytes().as_ptr();
        assert_eq!(hit(&c), hit(&r));
    }

    #[test]
    fn serde_round_trips() {
        let r = sample();
        let mut out = Vec::new();
        tiercache_core::Postcard
            .encode(&r, &mut out)
            .expect("encode");
        let back: CachedResponse = tiercache_core::Postcard.decode(&out).expect("decode");
        assert_eq!(back, r);
    }

    #[test]
    fn numbers_are_decimal() {
        for n in (0..20_000u64).chain([86_400, u64::MAX]) {
            assert_eq!(number_value(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn etag_is_strong_and_stable() {
        let a = strong_etag(b"hello");
        assert_eq!(a, strong_etag(b"hello"));
        assert_ne!(a, strong_etag(b"hello!"));
        let s = a.to_str().expect("ascii");
        assert!(
            s.starts_with('"') && s.ends_with('"') && s.len() == 34,
            "{s}"
        );
    }
}
