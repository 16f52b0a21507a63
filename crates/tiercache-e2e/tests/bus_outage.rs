//! Issue #4: the bus server is killed (SIGKILL) between a write and a read,
//! then restarted on the same port; no instance may serve the old value after
//! reconnecting. Once for NATS (core subjects) and once for Redis pub/sub.
//!
//! Three `Cache` instances, each with its own Redis shared-tier handle and
//! its own bus connection, share one Redis for the shared tier (which stays
//! up) and one bus server (which is killed). TTLs are long (600 s), so only
//! invalidation (or the engine's outage rules) can make a value go away.
//! While the bus is down, local life is capped at `UNSYNCED` (and a window
//! later the local tier is bypassed).
//!
//! Three scenarios per bus:
//! - `write_during_outage`: warm, kill the bus, wait until every instance has
//!   processed `Disconnected` (its local tier kept but stale, and capped),
//!   write + invalidate on instance 0 (its publish fails; the shared tier is
//!   still invalidated),
//!   read on the others: they serve the new value at the latest once the
//!   unsynced bound has passed. Restart; once every instance trusts its
//!   local tier again nobody serves the old value, and a new invalidation
//!   reaches the others over the restored bus within 1 s.
//! - `fill_during_outage_then_write`: a local copy made while the bus is
//!   down (capped) on instance 1 survives the write on instance 0; it is
//!   served no longer than the unsynced bound; stats show the flushes and
//!   the disconnect; after the restart nobody serves the old value.
//! - `a_writer_dropped_during_an_outage_says_farewell`: a writer dropped
//!   with an invalidation still queued; once the bus is back its queue
//!   drains and its farewell follows (flushed out of the client before the
//!   bus goes), so the others trust their local tiers again.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiercache::core::Cache;
use tiercache_e2e::bus_server::{BusServer, Kind};
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::RedisServer;

const KEY: u64 = 42;
const INSTANCES: usize = 3;
/// Local life while the bus is down.
const UNSYNCED: Duration = Duration::from_millis(500);
/// Scheduling slack on top of the unsynced bound.
const SLACK: Duration = Duration::from_millis(150);
/// How long a propagated invalidation may take over a live bus.
const PROPAGATION: Duration = Duration::from_secs(1);
/// Generous limit for a state change that depends on reconnect backoff.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The "database" the loaders read.
type Db = Arc<Mutex<String>>;

struct Setup {
    name: &'static str,
    // Held so the servers live as long as the test.
    _shared: RedisServer,
    bus: BusServer,
    caches: Vec<Cache<u64, String>>,
    db: Db,
}

async fn setup(kind: Kind) -> Setup {
    let name = match kind {
        Kind::NatsCore => "nats",
        Kind::NatsJetStream => "nats jetstream",
        Kind::RedisPubSub => "redis pub/sub",
    };
    let shared = RedisServer::start().unwrap();
    let bus = BusServer::start(kind);
    let ns = format!("outage{:x}", rand::random::<u32>());
    let mut caches = Vec::new();
    for _ in 0..INSTANCES {
        let tier = RedisSharedTier::builder()
            .url(shared.url())
            .build()
            .await
            .unwrap();
        let cache: Cache<u64, String> = Cache::builder(ns.as_str())
            .shared_tier(tier)
            .bus_arc(bus.connect(kind).await)
            // Long TTLs: only invalidation can make a value go away.
            .ttl(Duration::from_secs(600))
            .unsynced_local_ttl(UNSYNCED)
            .build()
            .unwrap();
        caches.push(cache);
    }
    let s = Setup {
        name,
        _shared: shared,
        bus,
        caches,
        db: Arc::new(Mutex::new("v1".to_owned())),
    };
    // Fills are capped until each bus reports itself live.
    s.wait_all("trusted at start", |c| c.local_trusted()).await;
    s
}

impl Setup {
    fn set_db(&self, v: &str) {
        *self.db.lock().unwrap() = v.to_owned();
    }

    /// `get_or_load` on instance `i`; the loader reads the "database".
    async fn read(&self, i: usize) -> String {
        let db = self.db.clone();
        let v = self.caches[i]
            .get_or_load(&KEY, move || {
                // The guard is dropped before the future is built.
                let v = db.lock().unwrap().clone();
                async move { Some(v) }
            })
            .await
            .unwrap()
            .expect("the key exists");
        (*v).clone()
    }

    /// Waits until `cond` holds on every instance; returns how long each
    /// instance took.
    async fn wait_all(
        &self,
        what: &str,
        cond: impl Fn(&Cache<u64, String>) -> bool,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let mut took: Vec<Option<Duration>> = vec![None; self.caches.len()];
        while took.iter().any(Option::is_none) {
            for (i, c) in self.caches.iter().enumerate() {
                if took[i].is_none() && cond(c) {
                    took[i] = Some(start.elapsed());
                }
            }
            assert!(
                start.elapsed() < STATE_TIMEOUT,
                "[{}] not every instance {what} within {STATE_TIMEOUT:?}: {took:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        took.into_iter().map(Option::unwrap).collect()
    }

    /// Kills the bus and waits until every instance has processed
    /// `Disconnected` (local tier parked, capped). Returns when each noticed.
    async fn kill_bus(&mut self) -> Vec<Duration> {
        self.bus.kill();
        self.wait_all("noticed the bus down", |c| !c.local_trusted())
            .await
    }

    /// Restarts the bus and waits until every instance trusts its local tier
    /// again. Returns (restart call duration, trusted per instance after the
    /// restart returned).
    async fn restart_bus(&mut self) -> (Duration, Vec<Duration>) {
        let start = Instant::now();
        self.bus.restart();
        let restart = start.elapsed();
        let trusted = self
            .wait_all("trusted after the restart", |c| c.local_trusted())
            .await;
        (restart, trusted)
    }

    /// Reads `value` on every instance (the check that matters most: no
    /// instance serves an old value once the bus is back).
    async fn assert_all_read(&self, value: &str, when: &str) {
        for i in 0..self.caches.len() {
            let got = self.read(i).await;
            assert_eq!(got, value, "[{}] instance {i} {when}", self.name);
        }
    }

    /// A new write over the restored bus: database -> `value`, invalidated
    /// on instance `writer`; every other instance must apply it and read the
    /// new value within `PROPAGATION`. Returns the slowest apply time.
    async fn assert_propagates(&self, writer: usize, value: &str) -> Duration {
        let mut receivers: Vec<_> = self.caches.iter().map(|c| c.subscribe_applied()).collect();
        self.set_db(value);
        let start = Instant::now();
        let seq = self.caches[writer]
            .invalidate(&KEY)
            .await
            .unwrap_or_else(|| panic!("[{}] publish over the restored bus failed", self.name));
        let origin = self.caches[writer].instance_id();
        let mut slowest = Duration::ZERO;
        for (i, rx) in receivers.iter_mut().enumerate() {
            if i == writer {
                continue;
            }
            let applied = tokio::time::timeout(PROPAGATION, async {
                loop {
                    let a = rx.recv().await.unwrap();
                    if a.sender_instance == origin && a.seq == seq {
                        return a.at;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "[{}] instance {i} did not apply the invalidation within {PROPAGATION:?}",
                    self.name
                )
            });
            slowest = slowest.max(applied.saturating_duration_since(start));
            let got = self.read(i).await;
            assert_eq!(
                got, value,
                "[{}] instance {i} after the invalidation over the restored bus",
                self.name
            );
        }
        slowest
    }
}

/// Reads on instance `i` for `dur`, recording when (since `since`) each read
/// started and what it returned.
async fn read_for(s: &Setup, i: usize, since: Instant, dur: Duration) -> Vec<(Duration, String)> {
    let mut seen = Vec::new();
    while since.elapsed() < dur {
        let at = since.elapsed();
        let v = s.read(i).await;
        seen.push((at, v));
        // A local hit completes without yielding: give the runtime its turn.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    seen
}

/// The latest start of a read that returned `old`, if any.
fn last_old(seen: &[(Duration, String)], old: &str) -> Option<Duration> {
    seen.iter().filter(|(_, v)| v == old).map(|(t, _)| *t).max()
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

fn ms_all(ds: &[Duration]) -> String {
    ds.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
}

async fn write_during_outage(kind: Kind) {
    let mut s = setup(kind).await;
    let name = s.name;

    // Warm: every instance holds v1 (locally and in Redis).
    s.assert_all_read("v1", "while warming").await;
    for c in &s.caches {
        assert_eq!(c.get(&KEY).await.as_deref().map(String::as_str), Some("v1"));
    }
    let before: Vec<_> = s.caches.iter().map(|c| c.stats()).collect();

    // The bus dies; every instance notices (flush + cap) before the write.
    let noticed = s.kill_bus().await;

    // The write: the database changes, instance 0 invalidates. Its publish
    // fails, but the shared tier and its own local tier are invalidated.
    s.set_db("v2");
    let write = Instant::now();
    let seq = s.caches[0].invalidate(&KEY).await;
    let invalidate_took = write.elapsed();
    assert_eq!(
        seq, None,
        "[{name}] the publish cannot succeed with the bus down"
    );
    assert!(s.caches[0].stats().invalidations_unsent > before[0].invalidations_unsent);

    // Reads while the bus is down: v1 at most until the unsynced bound.
    let watch = UNSYNCED + SLACK + Duration::from_millis(200);
    let (r1, r2) = tokio::join!(read_for(&s, 1, write, watch), read_for(&s, 2, write, watch));
    for (i, seen) in [(1, &r1), (2, &r2)] {
        if let Some(t) = last_old(seen, "v1") {
            assert!(
                t <= UNSYNCED + SLACK,
                "[{name}] instance {i} served v1 {} after the write, beyond the unsynced bound {}",
                ms(t),
                ms(UNSYNCED)
            );
        }
        assert_eq!(
            seen.last().map(|(_, v)| v.as_str()),
            Some("v2"),
            "[{name}] instance {i} while the bus is down"
        );
    }
    assert_eq!(s.read(0).await, "v2", "[{name}] the writer itself");

    // The bus comes back on the same port.
    let (restart, trusted) = s.restart_bus().await;
    s.assert_all_read("v2", "after the bus reconnected").await;
    for (i, c) in s.caches.iter().enumerate() {
        let st = c.stats();
        assert!(
            st.bus_disconnects > before[i].bus_disconnects,
            "[{name}] {i}: {st:?}"
        );
        // Kept (stale) on Disconnected, flushed on
        // Connected { resumed: false }: what was missed is gone.
        assert!(
            st.local_parks > before[i].local_parks,
            "[{name}] {i}: {st:?}"
        );
        assert!(
            st.local_flushes > before[i].local_flushes,
            "[{name}] {i}: {st:?}"
        );
        assert_eq!(st.local_revivals, before[i].local_revivals, "[{name}] {i}");
    }

    // A new write reaches the others over the restored bus.
    let propagated = s.assert_propagates(2, "v3").await;
    s.assert_all_read("v3", "after the write over the restored bus")
        .await;

    println!(
        "[{name}] write during outage: Disconnected processed after kill in [{}]; \
         invalidate with the bus down took {}; v1 reads after the write: instance 1 {} of {}, instance 2 {} of {}; \
         restart took {}, trusted again {} after it returned [{}]; \
         next invalidation applied everywhere within {}",
        ms_all(&noticed),
        ms(invalidate_took),
        r1.iter().filter(|(_, v)| v == "v1").count(),
        r1.len(),
        r2.iter().filter(|(_, v)| v == "v1").count(),
        r2.len(),
        ms(restart),
        ms(*trusted.iter().max().unwrap()),
        ms_all(&trusted),
        ms(propagated),
    );
}

async fn fill_during_outage_then_write(kind: Kind) {
    let mut s = setup(kind).await;
    let name = s.name;

    s.assert_all_read("v1", "while warming").await;
    let before: Vec<_> = s.caches.iter().map(|c| c.stats()).collect();

    let noticed = s.kill_bus().await;
    for (i, c) in s.caches.iter().enumerate() {
        let st = c.stats();
        assert!(
            st.local_parks > before[i].local_parks,
            "[{name}] {i} kept its local tier, stale: {st:?}"
        );
        assert!(
            st.bus_disconnects > before[i].bus_disconnects,
            "[{name}] {i}: {st:?}"
        );
    }

    // Instance 1 makes a local copy while the bus is down: capped life.
    let filled = Instant::now();
    assert_eq!(s.read(1).await, "v1");
    let after_fill = s.caches[1].stats();
    assert_eq!(
        s.read(1).await,
        "v1",
        "[{name}] a local hit while the bus is down"
    );
    assert!(
        s.caches[1].stats().local_hits > after_fill.local_hits,
        "[{name}] the copy is local"
    );

    // The write on instance 0 while the bus is down: instance 1 cannot hear it.
    s.set_db("v2");
    assert_eq!(s.caches[0].invalidate(&KEY).await, None);
    let seen = read_for(&s, 1, filled, UNSYNCED + SLACK + Duration::from_millis(200)).await;
    let old = last_old(&seen, "v1");
    if let Some(t) = old {
        assert!(
            t <= UNSYNCED + SLACK,
            "[{name}] instance 1's capped copy served {} after it was filled (bound {})",
            ms(t),
            ms(UNSYNCED)
        );
    }
    assert_eq!(seen.last().map(|(_, v)| v.as_str()), Some("v2"));
    // Instance 2 made no copy since the flush: it goes to Redis and the origin.
    assert_eq!(s.read(2).await, "v2");

    // Another capped copy on instance 1, then the bus comes back: Connected
    // { resumed: false } flushes it; nobody serves an old value.
    assert_eq!(s.read(1).await, "v2");
    let flushes = s.caches[1].stats().local_flushes;
    let (restart, trusted) = s.restart_bus().await;
    assert!(
        s.caches[1].stats().local_flushes > flushes,
        "[{name}] flushed on reconnect"
    );
    s.assert_all_read("v2", "after the bus reconnected").await;
    let propagated = s.assert_propagates(2, "v3").await;

    let st = s.caches[1].stats();
    println!(
        "[{name}] fill during outage: Disconnected processed after kill in [{}]; \
         instance 1's capped copy last served {} after its fill ({} reads, {} of v1); \
         restart took {}, trusted again [{}]; next invalidation applied within {}; \
         instance 1 stats: local_flushes {} (+{}), bus_disconnects {}",
        ms_all(&noticed),
        old.map_or("never".into(), ms),
        seen.len(),
        seen.iter().filter(|(_, v)| v == "v1").count(),
        ms(restart),
        ms_all(&trusted),
        ms(propagated),
        st.local_flushes,
        st.local_flushes - before[1].local_flushes,
        st.bus_disconnects,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_write_during_outage() {
    write_during_outage(Kind::NatsCore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_pubsub_write_during_outage() {
    write_during_outage(Kind::RedisPubSub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_fill_during_outage_then_write() {
    fill_during_outage_then_write(Kind::NatsCore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_pubsub_fill_during_outage_then_write() {
    fill_during_outage_then_write(Kind::RedisPubSub).await;
}

/// A writer dropped while its bus is down (a restarted process whose old
/// self still had an invalidation queued): once the bus is back, its
/// queue drains and its farewell follows, so the others trust their local
/// tiers again at once, rather than capping them for minutes as they would
/// for an origin gone silent with messages maybe stuck.
async fn a_writer_dropped_during_an_outage_says_farewell(kind: Kind) {
    let mut s = setup(kind).await;
    s.set_db("v2");
    s.caches[0].invalidate(&KEY).await.expect("published");
    s.kill_bus().await;
    s.set_db("v3");
    // Queued: the bus is down.
    let _ = s.caches[0].invalidate(&KEY).await;
    let writer = s.caches.remove(0);
    drop(writer);
    let (_, trusted) = s.restart_bus().await;
    println!("[{}] trusted again after the restart: {trusted:?}", s.name);
    s.assert_all_read("v3", "after the dropped writer's queue drained")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_a_writer_dropped_during_an_outage_says_farewell() {
    a_writer_dropped_during_an_outage_says_farewell(Kind::NatsCore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_pubsub_a_writer_dropped_during_an_outage_says_farewell() {
    a_writer_dropped_during_an_outage_says_farewell(Kind::RedisPubSub).await;
}
