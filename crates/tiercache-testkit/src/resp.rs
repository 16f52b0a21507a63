//! A minimal blocking RESP2 client, enough to probe and steer test servers
//! without depending on a Redis client library.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{Result, TestkitError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (a server-side error is a reply, not a [`TestkitError`]).
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<Resp>),
}

impl Resp {
    /// The text of a simple string or bulk string (lossy UTF-8), or the
    /// decimal form of an integer.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Integer(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[Resp]> {
        match self {
            Resp::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }
}

/// Sends one command to the Redis (or Sentinel) server on `127.0.0.1:port`
/// over a fresh connection and returns its reply.
///
/// ```no_run
/// # fn main() -> tiercache_testkit::Result<()> {
/// use tiercache_testkit::{redis_command, Resp};
/// let reply = redis_command(6380, &["PING"])?;
/// assert_eq!(reply, Resp::Simple("PONG".into()));
/// # Ok(()) }
/// ```
pub fn redis_command(port: u16, args: &[&str]) -> Result<Resp> {
    let mut replies = redis_pipeline(port, &[args])?;
    replies
        .pop()
        .ok_or_else(|| TestkitError::Command("no reply".to_owned()))
}

/// Sends several commands over one connection (e.g. `AUTH` then `GET`) and
/// returns one reply per command.
pub fn redis_pipeline(port: u16, commands: &[&[&str]]) -> Result<Vec<Resp>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut request = Vec::new();
    for args in commands {
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in *args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
    }
    (&stream).write_all(&request)?;
    let mut reader = BufReader::new(&stream);
    commands.iter().map(|_| read_reply(&mut reader)).collect()
}

fn protocol_error(what: &str) -> TestkitError {
    TestkitError::Command(format!("RESP protocol error: {what}"))
}

fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(TestkitError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed by the server",
        )));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn parse_len(text: &str) -> Result<i64> {
    text.parse::<i64>()
        .map_err(|_| protocol_error(&format!("bad length {text:?}")))
}

pub(crate) fn read_reply(reader: &mut impl BufRead) -> Result<Resp> {
    let line = read_line(reader)?;
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| protocol_error("empty line"))?;
    match kind {
        "+" => Ok(Resp::Simple(rest.to_owned())),
        "-" => Ok(Resp::Error(rest.to_owned())),
        ":" => Ok(Resp::Integer(parse_len(rest)?)),
        "$" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(Resp::Nil);
            }
            let len = usize::try_from(len).map_err(|_| protocol_error("bulk length"))?;
            let mut bytes = vec![0; len + 2];
            reader.read_exact(&mut bytes)?;
            bytes.truncate(len);
            Ok(Resp::Bulk(bytes))
        }
        "*" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(Resp::Nil);
            }
            (0..len)
                .map(|_| read_reply(reader))
                .collect::<Result<Vec<_>>>()
                .map(Resp::Array)
        }
        other => Err(protocol_error(&format!("unexpected type byte {other:?}"))),
    }
}

/// `PING` answered (`+PONG`, or `-NOAUTH` when a password is set).
pub(crate) fn ping_ok(port: u16) -> bool {
    match redis_command(port, &["PING"]) {
        Ok(Resp::Simple(s)) => s == "PONG",
        Ok(Resp::Error(e)) => e.starts_with("NOAUTH"),
        _ => false,
    }
}

/// Runs a command that must answer with text (e.g. `INFO`, `CLUSTER NODES`).
pub(crate) fn text_command(port: u16, args: &[&str]) -> Result<String> {
    match redis_command(port, args)? {
        Resp::Error(e) => Err(TestkitError::Command(format!(
            "{args:?} on port {port}: {e}"
        ))),
        reply => reply.as_text().ok_or_else(|| {
            TestkitError::Command(format!(
                "{args:?} on port {port}: unexpected reply {reply:?}"
            ))
        }),
    }
}

/// The value of `field:` in an `INFO` reply.
pub(crate) fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies() {
        let raw = b"*3\r\n$3\r\nfoo\r\n:42\r\n*2\r\n+OK\r\n$-1\r\n";
        let reply = read_reply(&mut &raw[..]).expect("parse");
        assert_eq!(
            reply,
            Resp::Array(vec![
                Resp::Bulk(b"foo".to_vec()),
                Resp::Integer(42),
                Resp::Array(vec![Resp::Simple("OK".into()), Resp::Nil]),
            ])
        );
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n";
        assert_eq!(info_field(info, "role").as_deref(), Some("master"));
        assert_eq!(info_field(info, "connected_slaves").as_deref(), Some("2"));
        assert_eq!(info_field(info, "missing"), None);
    }
}
