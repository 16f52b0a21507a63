//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tiercache_core::backend::BusEvent;
use tiercache_nats::{NatsBus, NatsBusBuilder};

/// A subscription's events.
pub type Events = BoxStream<'static, BusEvent>;

/// A builder for `url` with a short heartbeat (500 ms).
pub fn builder(url: &str) -> NatsBusBuilder {
    NatsBus::builder()
        .url(url)
        .heartbeat(Duration::from_millis(500))
}

/// A stream name unique to this test.
pub fn stream_name() -> String {
    format!("TC{:012x}", rand_u64() & 0xffff_ffff_ffff)
}

/// A random name starting with `prefix`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// The next event that `pred` accepts, within `within`; panics naming `what`
/// otherwise. Events skipped on the way are returned too.
pub async fn expect<F>(
    events: &mut Events,
    within: Duration,
    what: &str,
    mut pred: F,
) -> (BusEvent, Vec<BusEvent>)
where
    F: FnMut(&BusEvent) -> bool,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ev)) if pred(&ev) => return (ev, skipped),
            Ok(Some(ev)) => skipped.push(ev),
            Ok(None) => panic!("stream ended while waiting for {what}; saw {skipped:?}"),
            Err(_) => panic!("no {what} within {within:?}; saw {skipped:?}"),
        }
    }
}

/// Whether `ev` is a message.
pub fn is_message(ev: &BusEvent) -> bool {
    matches!(ev, BusEvent::Message(_))
}

/// Runs blocking test-kit calls (start/kill/restart) off the async workers.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Every event the stream yields within `window`.
pub async fn drain_for(events: &mut Events, window: Duration) -> Vec<BusEvent> {
    let deadline = tokio::time::Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.next()).await {
        out.push(ev);
    }
    out
}

/// Waits (up to 5 s) until `bus`'s own connection has noticed it is down.
pub async fn until_down(bus: &NatsBus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while bus.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bus did not notice the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
