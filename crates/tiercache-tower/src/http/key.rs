//! The cache key of a request: `GET /products/1?a=1 |accept=application/json`.

use std::fmt::Write;

use http::{HeaderMap, HeaderName, Method, Uri};

/// `METHOD path[?query]`, then ` ` and `|name=value` for each configured
/// vary header (in configuration order; absent headers give an empty value,
/// several values are joined with `,`). With `sort_query` the query's
/// parameters are sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry.
pub(crate) fn request_key(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    vary: &[HeaderName],
    sort_query: bool,
) -> String {
    let path = uri.path();
    let query = uri.query().filter(|q| !q.is_empty());
    let mut key = String::with_capacity(
        method.as_str().len() + path.len() + query.map_or(0, |q| q.len() + 1) + 2 + 32 * vary.len(),
    );
    key.push_str(method.as_str());
    key.push(' ');
    key.push_str(path);
    if let Some(q) = query {
        key.push('?');
        if sort_query && q.contains('&') {
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            params.sort_unstable();
            for (i, p) in params.iter().enumerate() {
                if i > 0 {
                    key.push('&');
                }
                key.push_str(p);
            }
        } else {
            key.push_str(q);
        }
    }
    if !vary.is_empty() {
        key.push(' ');
        for name in vary {
            key.push('|');
            key.push_str(name.as_str());
            key.push('=');
            for (i, v) in headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                for &b in v.as_bytes() {
                    // `|` and non-printable bytes escaped: keys stay unambiguous.
                    if b == b'|' || b == b'%' || !(0x20..0x7f).contains(&b) {
                        let _ = write!(key, "%{b:02X}");
                    } else {
                        key.push(char::from(b));
                    }
                }
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keys() {
        let uri: Uri = "/products/1?b=2&a=1".parse().expect("uri");
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("application/json"));
        assert_eq!(
            request_key(&Method::GET, &uri, &h, &[], false),
            "GET /products/1?b=2&a=1"
        );
        assert_eq!(
            request_key(&Method::GET, &uri, &h, &[http::header::ACCEPT], true),
            "GET /products/1?a=1&b=2 |accept=application/json"
        );
        let vary = [http::header::ACCEPT, http::header::ACCEPT_LANGUAGE];
        h.insert("accept", HeaderValue::from_static("a|b"));
        assert_eq!(
            request_key(&Method::HEAD, &"/x".parse().expect("uri"), &h, &vary, true),
            "HEAD /x |accept=a%7Cb|accept-language="
        );
    }
}
