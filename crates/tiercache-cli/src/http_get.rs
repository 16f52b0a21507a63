//! A plain HTTP/1.1 GET over a `TcpStream`, for `stats` (http:// only):
//! the metrics endpoints of the example and the sidecar serve plain HTTP,
//! and a full client (hyper, reqwest) would be most of the binary.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;

/// The largest response read (a metrics page is far smaller).
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

fn scrape_err(url: &str, reason: impl Into<String>) -> Error {
    Error::Scrape {
        url: url.to_owned(),
        reason: reason.into(),
        source: None,
    }
}

/// Splits `http://host[:port][/path]` into the address, the Host header
/// and the path.
fn split_url(url: &str) -> Result<(String, String, String), Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| scrape_err(url, "only http:// URLs are supported"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(scrape_err(url, "expected http://HOST:PORT/PATH"));
    }
    let has_port = match authority.rfind(']') {
        Some(b) => authority[b..].contains(':'),
        None => authority.contains(':'),
    };
    let addr = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_owned(), path))
}

/// Decodes a chunked body.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let head = std::str::from_utf8(&b[..eol]).ok()?;
        let size_hex = head.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size..)?;
        b = b.strip_prefix(b"\r\n")?;
    }
}

/// GETs `url` and returns the body as text.
///
/// # Errors
///
/// [`Error::Scrape`]: a bad URL, a connection or read failure, a timeout,
/// a status other than 200, or a body that is not UTF-8.
pub(crate) async fn get(url: &str, timeout: Duration) -> Result<String, Error> {
    let (addr, host, path) = split_url(url)?;
    let io = |reason: &str| {
        let reason = reason.to_owned();
        move |e: std::io::Error| Error::Scrape {
            url: url.to_owned(),
            reason: format!("{reason}: {e}"),
            source: Some(e),
        }
    };
    let fetch = async {
        let mut s = TcpStream::connect(&addr)
            .await
            .map_err(io("cannot connect"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nUser-Agent: tiercache-cli\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(io("cannot send the request"))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE)
            .read_to_end(&mut buf)
            .await
            .map_err(io("cannot read the response"))?;
        Ok::<_, Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| scrape_err(url, format!("no response within {timeout:?}")))??;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(scrape_err(url, "the response ended inside its head"));
        }
        Err(e) => return Err(scrape_err(url, format!("not an HTTP response: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    if code != 200 {
        return Err(scrape_err(
            url,
            format!("HTTP {code} {}", resp.reason.unwrap_or("")),
        ));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let raw = &buf[head_len..];
    let body = if header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(raw).ok_or_else(|| scrape_err(url, "a malformed chunked body"))?
    } else if let Some(len) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok())
    {
        raw.get(..len)
            .ok_or_else(|| scrape_err(url, "the body is shorter than its Content-Length"))?
            .to_vec()
    } else {
        raw.to_vec()
    };
    String::from_utf8(body).map_err(|_| scrape_err(url, "the body is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, h, p) = split_url("http://127.0.0.1:9187/metrics").unwrap();
        assert_eq!(
            (a.as_str(), h.as_str(), p.as_str()),
            ("127.0.0.1:9187", "127.0.0.1:9187", "/metrics")
        );
        let (a, _, p) = split_url("http://example").unwrap();
        assert_eq!((a.as_str(), p.as_str()), ("example:80", "/"));
        let (a, _, _) = split_url("http://[::1]/m").unwrap();
        assert_eq!(a, "[::1]:80");
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///").is_err());
    }

    #[test]
    fn chunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert_eq!(dechunk(b"ff\r\nabc"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }
}
