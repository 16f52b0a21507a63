//! What may be cached, for how long, and what is stored: `Cache-Control`,
//! `Vary`, `Set-Cookie`, hop-by-hop headers, tags, `If-None-Match`.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The directives of `Cache-Control` this cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` header of `headers`. Unknown directives
    /// are ignored; a malformed age counts as 0 (not cacheable).
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
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
                let age = || arg.map(|a| a.parse::<u64>().unwrap_or(0));
                if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case("no-cache") {
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case("private") {
                    cc.private = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    cc.max_age = cc.max_age.or(Some(age().unwrap_or(0)));
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    cc.s_maxage = cc.s_maxage.or(Some(age().unwrap_or(0)));
                }
            }
        }
        cc
    }

    /// The freshness the response asks a shared cache for: `s-maxage`, else
    /// `max-age`.
    pub(crate) fn shared_max_age(&self) -> Option<Duration> {
        self.s_maxage.or(self.max_age).map(Duration::from_secs)
    }
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

/// Whether the response's `Vary` is covered by the configured headers (which
/// are part of every key). `Vary: *`, or a header not configured: no.
pub(crate) fn vary_covered(headers: &HeaderMap, configured: &[HeaderName]) -> bool {
    for value in headers.get_all(header::VARY) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for name in split_list(value) {
            if name == "*" {
                return false;
            }
            if !configured
                .iter()
                .any(|c| c.as_str().eq_ignore_ascii_case(name))
            {
                return false;
            }
        }
    }
    true
}

/// Items of a comma-separated header list, trimmed, empty ones skipped.
pub(crate) fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Removes the tags header and returns the tags it named (comma or space
/// separated, duplicates dropped, order kept).
pub(crate) fn take_tags(headers: &mut HeaderMap, name: &HeaderName) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    if let header::Entry::Occupied(e) = headers.entry(name) {
        let (_, values) = e.remove_entry_mult();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split([',', ' ', '\t']).filter(|t| !t.is_empty()) {
                if !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_owned());
                }
            }
        }
    }
    tags
}

/// Headers that describe one connection, never a stored response (RFC 9110
/// 7.6.1), plus those the cache sets itself.
const NOT_STORED: [&str; 11] = [
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
        assert_eq!(cc.shared_max_age(), Some(Duration::from_secs(10)));
        let cc = CacheControl::parse(&map(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "Private"),
        ]));
        assert!(cc.private);
        assert_eq!(cc.shared_max_age(), Some(Duration::from_secs(60)));
        assert!(CacheControl::parse(&map(&[("cache-control", "no-store")])).no_store);
        assert_eq!(
            CacheControl::parse(&map(&[("cache-control", "max-age=soon")])).shared_max_age(),
            Some(Duration::ZERO)
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
        assert!(vary_covered(&map(&[("vary", "Accept")]), &configured));
        assert!(!vary_covered(
            &map(&[("vary", "accept, cookie")]),
            &configured
        ));
        assert!(!vary_covered(&map(&[("vary", "*")]), &configured));
        let mut h = map(&[("x-cache-tags", "a, b c"), ("x-cache-tags", "a,d")]);
        let name = HeaderName::from_static("x-cache-tags");
        assert_eq!(take_tags(&mut h, &name), ["a", "b", "c", "d"]);
        assert!(h.is_empty());
        let etag = HeaderValue::from_static("\"abc\"");
        assert!(none_match(
            &HeaderValue::from_static("\"x\", W/\"abc\""),
            &etag
        ));
        assert!(none_match(&HeaderValue::from_static("*"), &etag));
        assert!(!none_match(&HeaderValue::from_static("\"abd\""), &etag));
    }
}
