//! Free loopback ports.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use crate::error::{Result, TestkitError};

/// Ports already handed out by this process; never handed out twice, so tests
/// running in parallel threads do not race each other for the same port.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0,
/// read the port, release it).
///
/// A port is never returned twice by the same process. Another process may
/// still take it before the server binds it; the servers in this crate detect
/// "address already in use" and retry with a new port.
pub fn free_port() -> Result<u16> {
    for _ in 0..200 {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let mut used = handed_out()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if used.insert(port) {
            return Ok(port);
        }
    }
    Err(TestkitError::Io(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "could not find a free port on 127.0.0.1",
    )))
}
