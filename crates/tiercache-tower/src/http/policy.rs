//! What may be cached, for how long, and what is stored: `Cache-Control`,
//! `Vary`, `Set-Cookie`, hop-by-hop headers, tags, `If-None-Match`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The directives of `Cache-Control` (or a targeted field, RFC 9213) this
/// cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` header of `headers`. Unknown directives
    /// are ignored; a malformed age counts as 0 (stale).
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        Self::parse_field(headers, &header::CACHE_CONTROL).unwrap_or_default()
    }

    /// The directives for this cache: the first of the `targeted` fields
    /// (RFC 9213: most specific first) that is present and valid, and only
    /// it; else `Cache-Control`.
    pub(crate) fn for_cache(headers: &HeaderMap, targeted: &[HeaderName]) -> Self {
        targeted
            .iter()
            .find_map(|name| Self::parse_field(headers, name).filter(|cc| *cc != Self::default()))
            .unwrap_or_else(|| Self::parse(headers))
    }

    /// The directives of every `name` field; `None` when there is none.
    fn parse_field(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut values = headers.get_all(name).iter().peekable();
        values.peek()?;
        let mut cc = CacheControl::default();
        for value in values {
            let Ok(value) = value.to_str() else {
                // Unreadable: be safe.
                cc.no_store = true;
                continue;
            };
            for directive in split_list(value) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive, None),
                };
                let secs = || Some(arg.map_or(0, delta_seconds));
                let is = |d: &str| name.eq_ignore_ascii_case(d);
                if is("no-store") {
                    cc.no_store = true;
                } else if is("no-cache") {
                    cc.no_cache = true;
                } else if is("private") {
                    cc.private = true;
                } else if is("public") {
                    cc.public = true;
                } else if is("must-revalidate") {
                    cc.must_revalidate = true;
                } else if is("proxy-revalidate") {
                    cc.proxy_revalidate = true;
                } else if is("max-age") {
                    cc.max_age = cc.max_age.or(secs());
                } else if is("s-maxage") {
                    cc.s_maxage = cc.s_maxage.or(secs());
                } else if is("stale-while-revalidate") {
                    cc.stale_while_revalidate = cc.stale_while_revalidate.or(secs());
                } else if is("stale-if-error") {
                    cc.stale_if_error = cc.stale_if_error.or(secs());
                }
            }
        }
        Some(cc)
    }

    /// Whether a stale copy must never be served without the origin's
    /// word (`must-revalidate`, or `proxy-revalidate` for a shared cache;
    /// `s-maxage` implies `proxy-revalidate`, RFC 9111 5.2.2.10).
    pub(crate) fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// A `delta-seconds` value (RFC 9111 1.2.2): digits only; one too large to
/// represent is the largest (the engine clamps it further); anything else
/// is malformed and counts as 0 (stale).
pub(crate) fn delta_seconds(arg: &str) -> u64 {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    arg.parse::<u64>().unwrap_or(u64::MAX)
}

/// Whether a request asks to bypass stored responses (`Cache-Control:
/// no-cache`, or `Pragma: no-cache` without `Cache-Control`).
pub(crate) fn request_no_cache(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CACHE_CONTROL) {
        return CacheControl::parse(headers).no_cache;
    }
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .any(|d| d.eq_ignore_ascii_case("no-cache"))
}

/// The request headers a response varies on beyond the `configured` ones
/// (which are part of every key), lowercased, sorted and deduplicated:
/// `Ok(vec![])` when the key already covers it. `Err(())` for `Vary: *`
/// or a `Vary` that cannot be read: such a response is never reused.
pub(crate) fn vary_extra(
    headers: &HeaderMap,
    configured: &[HeaderName],
) -> Result<Vec<HeaderName>, ()> {
    let mut extra: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::VARY) {
        let value = value.to_str().map_err(|_| ())?;
        for name in split_list(value) {
            if name == "*" {
                return Err(());
            }
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ())?;
            if !configured.contains(&name) && !extra.contains(&name) {
                extra.push(name);
            }
        }
    }
    extra.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(extra)
}

/// Items of a comma-separated header list, trimmed, empty ones skipped.
pub(crate) fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Why a response's tags cannot be recorded exactly (the response is then
/// not stored: a tag dropped or changed would never match its invalidation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TagError {
    /// The header's bytes are not UTF-8.
    NotUtf8,
    /// A `%` not followed by two hex digits, or an escape that decodes to
    /// bytes that are not UTF-8.
    BadEscape,
}

impl TagError {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            TagError::NotUtf8 => "the tags header is not UTF-8",
            TagError::BadEscape => "a tag has a malformed percent-escape",
        }
    }
}

/// Removes the tags header and returns the tags it named: comma or space
/// separated, each percent-decoded (RFC 3986: `caf%C3%A9` is `café`; raw
/// UTF-8 is accepted too), duplicates dropped, order kept.
///
/// # Errors
///
/// [`TagError`] when the tags cannot be recorded exactly. The header is
/// removed either way.
pub(crate) fn take_tags(
    headers: &mut HeaderMap,
    name: &HeaderName,
) -> Result<Vec<String>, TagError> {
    let mut tags: Vec<String> = Vec::new();
    if let header::Entry::Occupied(e) = headers.entry(name) {
        let (_, values) = e.remove_entry_mult();
        for value in values {
            parse_tags(value.as_bytes(), &mut tags)?;
        }
    }
    // Duplicates dropped in one pass (a header may name many thousands).
    let mut seen = std::collections::HashSet::with_capacity(tags.len());
    tags.retain(|t| seen.insert(t.clone()));
    Ok(tags)
}

/// Adds the tags of one header value to `tags`, duplicates included (see
/// [`take_tags`]).
pub(crate) fn parse_tags(value: &[u8], tags: &mut Vec<String>) -> Result<(), TagError> {
    let value = std::str::from_utf8(value).map_err(|_| TagError::NotUtf8)?;
    for raw in value.split([',', ' ', '\t']).filter(|t| !t.is_empty()) {
        tags.push(percent_decode(raw)?);
    }
    Ok(())
}

/// `s` with its `%XX` escapes decoded.
fn percent_decode(s: &str) -> Result<String, TagError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(TagError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| TagError::BadEscape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| TagError::BadEscape)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TagError::BadEscape)
}

/// Headers that describe one connection, never a stored response (RFC 9110
/// 7.6.1), plus those the cache sets itself.
pub(crate) const NOT_STORED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "age",
    "x-cache",
];

/// Strips what must not be stored: hop-by-hop headers (and those `Connection`
/// names), `set-cookie`, the cache's own `age` / `x-cache`, and the ETag
/// (returned; it is stored apart).
pub(crate) fn strip_for_storage(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in NOT_STORED {
        headers.remove(n);
    }
    headers.remove(header::SET_COOKIE);
    headers.remove(header::ETAG)
}

/// Whether `If-None-Match` matches `etag` (weak comparison, RFC 9110 13.1.2).
pub(crate) fn none_match(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let opaque = |t: &str| -> String { t.trim().trim_start_matches("W/").to_owned() };
    let ours = opaque(etag);
    split_list(list).any(|t| t == "*" || opaque(t) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cache_control() {
        let cc = CacheControl::parse(&map(&[(
            "cache-control",
            "public, max-age=60, s-maxage=\"10\"",
        )]));
        assert_eq!(cc.s_maxage.or(cc.max_age), Some(10));
        let cc = CacheControl::parse(&map(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "Private"),
        ]));
        assert!(cc.private);
        assert_eq!(cc.s_maxage.or(cc.max_age), Some(60));
        assert!(CacheControl::parse(&map(&[("cache-control", "no-store")])).no_store);
        assert_eq!(
            CacheControl::parse(&map(&[("cache-control", "max-age=soon")])).max_age,
            Some(0)
        );
        assert!(request_no_cache(&map(&[("pragma", "no-cache")])));
        assert!(!request_no_cache(&map(&[
            ("cache-control", "max-age=5"),
            ("pragma", "no-cache")
        ])));
    }

    #[test]
    fn vary_and_tags_and_etags() {
        let configured = [header::ACCEPT];
        assert_eq!(
            vary_extra(&map(&[("vary", "Accept")]), &configured),
            Ok(vec![])
        );
        assert_eq!(
            vary_extra(
                &map(&[
                    ("vary", "cookie, accept"),
                    ("vary", "Accept-Language, cookie")
                ]),
                &configured
            ),
            Ok(vec![header::ACCEPT_LANGUAGE, header::COOKIE])
        );
        assert_eq!(vary_extra(&map(&[("vary", "*")]), &configured), Err(()));
        assert_eq!(vary_extra(&map(&[("vary", "a b")]), &configured), Err(()));
        let mut h = map(&[("x-cache-tags", "a, b c"), ("x-cache-tags", "a,d")]);
        let name = HeaderName::from_static("x-cache-tags");
        assert_eq!(
            take_tags(&mut h, &name),
            Ok(vec!["a".into(), "b".into(), "c".into(), "d".into()])
        );
        assert!(h.is_empty());
        let etag = HeaderValue::from_static("\"abc\"");
        assert!(none_match(
            &HeaderValue::from_static("\"x\", W/\"abc\""),
            &etag
        ));
        assert!(none_match(&HeaderValue::from_static("*"), &etag));
        assert!(!none_match(&HeaderValue::from_static("\"abd\""), &etag));
    }

    /// Issue 11, case 5: UTF-8 and percent-encoded tags are recorded
    /// exactly; tags that cannot be are an error, never silently dropped.
    #[test]
    fn tags_are_utf8_or_percent_encoded_or_refused() {
        let name = HeaderName::from_static("x-cache-tags");
        let mut h = HeaderMap::new();
        h.append(
            &name,
            HeaderValue::from_bytes("products category:café".as_bytes()).expect("value"),
        );
        assert_eq!(
            take_tags(&mut h, &name),
            Ok(vec!["products".into(), "category:café".into()])
        );
        let mut h = map(&[("x-cache-tags", "category:caf%C3%A9 100%25 products")]);
        assert_eq!(
            take_tags(&mut h, &name),
            Ok(vec![
                "category:café".into(),
                "100%".into(),
                "products".into()
            ])
        );
        for bad in [&b"a%"[..], b"a%4", b"a%zz", b"%ff%fe", b"ok \xff"] {
            let mut h = HeaderMap::new();
            h.append(&name, HeaderValue::from_bytes(bad).expect("value"));
            assert!(take_tags(&mut h, &name).is_err(), "{bad:?}");
            assert!(h.is_empty(), "the header is removed either way");
        }
    }
}
