//! The cache key of a request: `GET /products/1?a=1 |accept=application/json`.
//!
//! [`RequestKey`] borrows the request's parts and writes the key straight
//! into the engine's hasher, so a local hit neither allocates nor copies it;
//! it is rendered into a `String` only when the lookup goes on to the shared
//! tier or the origin.

use std::fmt;

use http::{HeaderMap, HeaderName, Method, Uri};
use tiercache_core::CacheKey;

use super::layer::Config;

/// Query parameters sorted on the stack; longer queries sort in a `Vec`.
const STACK_PARAMS: usize = 16;

/// `METHOD path[?query]`, then ` ` and `|name=value` for each configured
/// vary header (in configuration order; absent headers give an empty value,
/// several values are joined with `,`). With `sort_query` the query's
/// parameters are sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry.
#[derive(Clone, Copy)]
pub(crate) struct RequestKey<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) vary: &'a [HeaderName],
    pub(crate) sort_query: bool,
}

impl Config {
    /// The key of a request with this method, URI and headers.
    pub(crate) fn key<'a>(
        &'a self,
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> RequestKey<'a> {
        RequestKey {
            method,
            uri,
            headers,
            vary: &self.vary,
            sort_query: self.sort_query,
        }
    }
}

impl CacheKey for RequestKey<'_> {
    fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        out.write_str(self.method.as_str())?;
        out.write_char(' ')?;
        out.write_str(self.uri.path())?;
        if let Some(q) = self.uri.query().filter(|q| !q.is_empty()) {
            out.write_char('?')?;
            if self.sort_query && q.contains('&') {
                write_sorted(q, out)?;
            } else {
                out.write_str(q)?;
            }
        }
        if !self.vary.is_empty() {
            out.write_char(' ')?;
            for name in self.vary {
                out.write_char('|')?;
                out.write_str(name.as_str())?;
                out.write_char('=')?;
                for (i, v) in self.headers.get_all(name).iter().enumerate() {
                    if i > 0 {
                        out.write_char(',')?;
                    }
                    write_escaped(v.as_bytes(), out)?;
                }
            }
        }
        Ok(())
    }
}

/// The key of one variant of a response that varies on request headers the
/// configuration does not key on (RFC 9111 4.1): the request's key, then
/// ` ||` and, for each header the response named, `|name=value` (its field
/// lines combined, whitespace around commas dropped) or `|name` when the
/// request has none.
#[derive(Clone, Copy)]
pub(crate) struct VariantKey<'a> {
    pub(crate) base: RequestKey<'a>,
    pub(crate) names: &'a [HeaderName],
}

impl CacheKey for VariantKey<'_> {
    fn write_key<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        self.base.write_key(out)?;
        out.write_str(" ||")?;
        for name in self.names {
            out.write_char('|')?;
            out.write_str(name.as_str())?;
            let mut first = true;
            for value in self.base.headers.get_all(name) {
                out.write_char(if first { '=' } else { ',' })?;
                first = false;
                let mut members = value.as_bytes().split(|&b| b == b',').peekable();
                while let Some(m) = members.next() {
                    write_escaped(m.trim_ascii(), out)?;
                    if members.peek().is_some() {
                        out.write_char(',')?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The query's non-empty parameters, sorted, joined with `&`.
fn write_sorted<W: fmt::Write + ?Sized>(q: &str, out: &mut W) -> fmt::Result {
    let mut stack = [""; STACK_PARAMS];
    let mut heap = Vec::new();
    let mut n = 0;
    for p in q.split('&').filter(|p| !p.is_empty()) {
        if n < STACK_PARAMS {
            stack[n] = p;
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&stack);
            }
            heap.push(p);
        }
        n += 1;
    }
    let params = if n > STACK_PARAMS {
        &mut heap[..]
    } else {
        &mut stack[..n]
    };
    params.sort_unstable();
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.write_char('&')?;
        }
        out.write_str(p)?;
    }
    Ok(())
}

/// A header value with `|`, `%` and non-printable bytes as `%XX`, so keys
/// stay unambiguous.
fn write_escaped<W: fmt::Write + ?Sized>(value: &[u8], out: &mut W) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = value;
    while !rest.is_empty() {
        let plain = rest
            .iter()
            .position(|&b| b == b'|' || b == b'%' || !(0x20..0x7f).contains(&b))
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(plain);
        // Printable ASCII: always valid UTF-8.
        out.write_str(std::str::from_utf8(run).map_err(|_| fmt::Error)?)?;
        let Some((&b, after)) = tail.split_first() else {
            break;
        };
        out.write_char('%')?;
        out.write_char(char::from(HEX[usize::from(b >> 4)]))?;
        out.write_char(char::from(HEX[usize::from(b & 0xf)]))?;
        rest = after;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(method: &Method, uri: &str, h: &HeaderMap, vary: &[HeaderName], sort: bool) -> String {
        let uri: Uri = uri.parse().expect("uri");
        RequestKey {
            method,
            uri: &uri,
            headers: h,
            vary,
            sort_query: sort,
        }
        .render()
    }

    #[test]
    fn keys() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("application/json"));
        assert_eq!(
            key(&Method::GET, "/products/1?b=2&a=1", &h, &[], false),
            "GET /products/1?b=2&a=1"
        );
        assert_eq!(
            key(
                &Method::GET,
                "/products/1?b=2&a=1",
                &h,
                &[http::header::ACCEPT],
                true
            ),
            "GET /products/1?a=1&b=2 |accept=application/json"
        );
        let vary = [http::header::ACCEPT, http::header::ACCEPT_LANGUAGE];
        h.insert("accept", HeaderValue::from_static("a|b"));
        assert_eq!(
            key(&Method::HEAD, "/x", &h, &vary, true),
            "HEAD /x |accept=a%7Cb|accept-language="
        );
        h.insert(
            "accept",
            HeaderValue::from_bytes(b"\xff%x\t").expect("value"),
        );
        h.append("accept", HeaderValue::from_static("b"));
        assert_eq!(
            key(&Method::GET, "/x", &h, &vary[..1], false),
            "GET /x |accept=%FF%25x%09,b"
        );
    }

    #[test]
    fn rfc9111_4_1_variant_keys_normalise_and_tell_absent_from_empty() {
        let uri: Uri = "/x".parse().expect("uri");
        let names = [http::header::ACCEPT_ENCODING, http::header::ACCEPT_LANGUAGE];
        let variant = |h: &HeaderMap| {
            VariantKey {
                base: RequestKey {
                    method: &Method::GET,
                    uri: &uri,
                    headers: h,
                    vary: &[],
                    sort_query: false,
                },
                names: &names,
            }
            .render()
        };
        let mut a = HeaderMap::new();
        a.insert("accept-encoding", HeaderValue::from_static("gzip,  br"));
        let mut b = HeaderMap::new();
        b.append("accept-encoding", HeaderValue::from_static("gzip"));
        b.append("accept-encoding", HeaderValue::from_static(" br"));
        assert_eq!(
            variant(&a),
            "GET /x |||accept-encoding=gzip,br|accept-language"
        );
        assert_eq!(variant(&a), variant(&b), "field lines combined");
        let mut empty = a.clone();
        empty.insert("accept-language", HeaderValue::from_static(""));
        assert_ne!(variant(&a), variant(&empty), "absent is not empty");
        let mut c = HeaderMap::new();
        c.insert("accept-encoding", HeaderValue::from_static("gzip|br"));
        assert_ne!(variant(&a), variant(&c));
    }

    #[test]
    fn long_queries_sort_the_same_as_short_ones() {
        let params: Vec<String> = (0..40).rev().map(|i| format!("p{i:02}=1")).collect();
        let mut sorted = params.clone();
        sorted.sort();
        let uri = format!("/q?{}&&", params.join("&"));
        assert_eq!(
            key(&Method::GET, &uri, &HeaderMap::new(), &[], true),
            format!("GET /q?{}", sorted.join("&"))
        );
        assert_eq!(
            key(&Method::GET, "/q?&b&a", &HeaderMap::new(), &[], true),
            "GET /q?a&b"
        );
    }
}
