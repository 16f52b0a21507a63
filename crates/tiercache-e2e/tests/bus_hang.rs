//! Issue #13: the staleness bound holds when the bus hangs, and the Bloom
//! guard never answers "absent" for a created key across bus outages.
//!
//! The bus server is paused with SIGSTOP (alive, its sockets open, nothing
//! answering: a partition looks the same), not killed: no instance is told
//! that anything is wrong; only the missing heartbeats say so. Once each for
//! NATS core, NATS JetStream and Redis pub/sub, on real servers from the
//! test kit, with a real Redis shared tier that stays up.
//!
//! - `stale_reads_end_within_the_bound_*`: two instances hold a key in
//!   their local tiers; the bus hangs; the database changes and the writer
//!   invalidates (shared tier deleted, publish stuck). From the write on, the
//!   reader reads in a loop: every read that starts later than the
//!   staleness bound (plus scheduling slack) after the write must return the
//!   new value. When the bus resumes, the reader trusts its local tier
//!   again and hits it.
//! - `created_keys_are_never_absent_*`: two instances with a Bloom guard
//!   over the same "database". Keys are created on one instance while the
//!   bus is live, hung, and down (killed), and the other instance must
//!   never answer "absent" for any of them later than the bound after its
//!   creation; the creating instance must not even once.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiercache::core::{BloomGuardConfig, Cache, DEFAULT_STALENESS_BOUND, Entry, Outcome};
use tiercache_e2e::bus_server::{BusServer, Kind};
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::RedisServer;

/// The bound under test: the default.
const BOUND: Duration = DEFAULT_STALENESS_BOUND;
/// Timer and scheduling slack on top of the bound (two cores, a loaded CI).
const SLACK: Duration = Duration::from_millis(250);
const KEY: u64 = 7;
/// A state change that depends on reconnect backoff or a Bloom rebuild.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

async fn wait_until(what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < STATE_TIMEOUT,
            "{what}: not within {STATE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.0}ms", d.as_secs_f64() * 1000.0)
}

/// Two caches of one namespace on the Redis shared tier at `shared` and
/// the bus at `bus`.
async fn pair<V>(
    kind: Kind,
    shared: &RedisServer,
    bus: &BusServer,
    build: impl Fn(tiercache::core::CacheBuilder<u64, V>) -> tiercache::core::CacheBuilder<u64, V>,
) -> Vec<Cache<u64, V>>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let ns = format!("hang{:x}", rand::random::<u32>());
    let mut caches = Vec::new();
    for _ in 0..2 {
        let tier = RedisSharedTier::builder()
            .url(shared.url())
            .build()
            .await
            .unwrap();
        let b = Cache::builder(ns.as_str())
            .shared_tier(tier)
            .bus_arc(bus.connect(kind).await)
            // Long TTLs: only invalidation can make a value go away.
            .ttl(Duration::from_secs(600));
        caches.push(build(b).build().unwrap());
    }
    for c in &caches {
        let c = c.clone();
        wait_until("trusted at start", move || c.local_trusted()).await;
    }
    caches
}

async fn stale_reads_end_within_the_bound(kind: Kind) {
    let shared = RedisServer::start().unwrap();
    let mut bus = BusServer::start(kind);
    let caches: Vec<Cache<u64, String>> = pair(kind, &shared, &bus, |b| b).await;
    let (writer, reader) = (&caches[0], &caches[1]);
    let db = Arc::new(Mutex::new("v1".to_owned()));
    let read = |c: &Cache<u64, String>| {
        let db = db.clone();
        let c = c.clone();
        async move {
            let v = c
                .get_or_load(&KEY, move || {
                    let v = db.lock().unwrap().clone();
                    async move { Some(v) }
                })
                .await
                .unwrap()
                .expect("the key exists");
            (*v).clone()
        }
    };
    // Warm: both hold v1 locally, and the reader hits its local tier.
    assert_eq!(read(writer).await, "v1");
    assert_eq!(read(reader).await, "v1");
    let hits = reader.stats().local_hits;
    assert_eq!(read(reader).await, "v1");
    assert!(reader.stats().local_hits > hits, "{kind:?}: warm local hit");

    // The bus hangs. Nobody is told.
    bus.pause();
    let paused = Instant::now();
    // Let the hang get a little old first, as in the report.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The write: the database changes, then the writer invalidates (the
    // shared tier is deleted at once; its publish hangs up to the bound).
    *db.lock().unwrap() = "v2".to_owned();
    let write = Instant::now();
    let invalidate = tokio::spawn({
        let w = writer.clone();
        async move { w.invalidate(&KEY).await }
    });

    let mut seen: Vec<(Duration, String)> = Vec::new();
    while write.elapsed() < BOUND + SLACK + Duration::from_millis(500) {
        let at = write.elapsed();
        seen.push((at, read(reader).await));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let published = invalidate.await.unwrap();
    let last_old = seen
        .iter()
        .filter(|(_, v)| v == "v1")
        .map(|(t, _)| *t)
        .max();
    if let Some(t) = last_old {
        assert!(
            t <= BOUND + SLACK,
            "{kind:?}: the reader served v1 {} after the write; the bound is {}",
            ms(t),
            ms(BOUND)
        );
    }
    assert_eq!(seen.last().unwrap().1, "v2", "{kind:?}");
    assert!(
        !reader.local_trusted(),
        "{kind:?}: the hung bus is not trusted"
    );

    // The bus resumes: trusted again, v2 everywhere, and the reader hits
    // its local tier again.
    bus.resume();
    let hung_for = paused.elapsed();
    let back = wait_until("trusted after resume", || {
        reader.local_trusted() && writer.local_trusted()
    })
    .await;
    assert_eq!(read(reader).await, "v2");
    assert_eq!(read(writer).await, "v2");
    let hits = reader.stats().local_hits;
    assert_eq!(read(reader).await, "v2");
    assert!(
        reader.stats().local_hits > hits,
        "{kind:?}: local hits again"
    );
    println!(
        "[{kind:?}] bus hung {}; last v1 read {} after the write ({} reads, {} of them v1); \
         publish {}; trusted again {} after resume",
        ms(hung_for),
        last_old.map_or("never".to_owned(), ms),
        seen.len(),
        seen.iter().filter(|(_, v)| v == "v1").count(),
        if published.is_some() {
            "went out"
        } else {
            "timed out"
        },
        ms(back),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_end_within_the_bound_nats_core() {
    stale_reads_end_within_the_bound(Kind::NatsCore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_end_within_the_bound_nats_jetstream() {
    stale_reads_end_within_the_bound(Kind::NatsJetStream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_end_within_the_bound_redis_pubsub() {
    stale_reads_end_within_the_bound(Kind::RedisPubSub).await;
}

/// What happens to the bus while keys are created.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    Hang,
    Kill,
}

async fn created_keys_are_never_absent(kind: Kind) {
    let shared = RedisServer::start().unwrap();
    let mut bus = BusServer::start(kind);
    // The "database": the ids that exist. The Bloom guard's universe reads it.
    let db: Arc<Mutex<BTreeSet<u64>>> = Arc::new(Mutex::new((1..=100).collect()));
    let caches: Vec<Cache<u64, u64>> = pair(kind, &shared, &bus, |b| {
        let db = db.clone();
        b.bloom_guard(BloomGuardConfig::new(move || {
            let ids: Vec<String> = db.lock().unwrap().iter().map(u64::to_string).collect();
            async move { Ok::<_, std::io::Error>(ids) }
        }))
    })
    .await;
    for c in &caches {
        let c = c.clone();
        wait_until("bloom built", move || c.bloom_ready()).await;
    }
    let (creator, other) = (&caches[0], &caches[1]);
    let read = |c: &Cache<u64, u64>, id: u64| {
        let db = db.clone();
        let c = c.clone();
        async move {
            let f = c
                .fetch(&id, move || {
                    let found = db.lock().unwrap().contains(&id).then_some(id);
                    async move { Ok::<_, std::io::Error>(found.map(Entry::new)) }
                })
                .await
                .unwrap();
            (f.value.is_some(), f.outcome)
        }
    };
    // A key nobody created is rejected by the guard: it works.
    assert_eq!(read(other, 5000).await, (false, Outcome::Rejected));

    let mut next_id = 1000;
    let mut report = Vec::new();
    for fault in [Fault::None, Fault::Hang, Fault::Kill, Fault::None] {
        match fault {
            Fault::None => {}
            Fault::Hang => bus.pause(),
            Fault::Kill => bus.kill(),
        }
        // Let the fault settle in (or not: half the keys are created at once).
        let mut created: Vec<(u64, Instant)> = Vec::new();
        for round in 0..6 {
            if round == 3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let id = next_id;
            next_id += 1;
            db.lock().unwrap().insert(id);
            creator.mark_created(&id).await;
            created.push((id, Instant::now()));
            // Read-your-writes: the creating instance, at once.
            assert!(
                read(creator, id).await.0,
                "{kind:?}/{fault:?}: {id} absent on its creator"
            );
        }
        // The other instance, read in a loop: "absent" only within the bound.
        let mut rejected_late = Vec::new();
        let (mut reads, mut absent_within_bound) = (0u32, 0u32);
        let watch = Instant::now();
        while watch.elapsed() < BOUND + SLACK + Duration::from_millis(300) {
            for (id, at) in &created {
                let (found, outcome) = read(other, *id).await;
                reads += 1;
                if !found && at.elapsed() > BOUND + SLACK {
                    rejected_late.push((*id, ms(at.elapsed()), outcome));
                } else if !found {
                    absent_within_bound += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            rejected_late.is_empty(),
            "{kind:?}/{fault:?}: created keys answered absent past the bound: {rejected_late:?}"
        );
        report.push(format!(
            "{fault:?}: {reads} reads of {} created keys, {absent_within_bound} absent (all within the bound)",
            created.len()
        ));
        match fault {
            Fault::None => {}
            Fault::Hang => bus.resume(),
            Fault::Kill => bus.restart(),
        }
        for c in &caches {
            let c = c.clone();
            wait_until("trusted after the fault", move || c.local_trusted()).await;
        }
    }
    // After the outages the guard works again: rebuilt, rejecting unknown
    // keys, knowing every created one.
    let start = Instant::now();
    while read(other, 5001).await.1 != Outcome::Rejected {
        assert!(
            start.elapsed() < STATE_TIMEOUT,
            "{kind:?}: the guard never rejects again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in 1000..next_id {
        assert!(read(other, id).await.0, "{kind:?}: {id} after the outages");
    }
    println!(
        "[{kind:?}] created keys never absent past the bound; {}",
        report.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_keys_are_never_absent_nats_core() {
    created_keys_are_never_absent(Kind::NatsCore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_keys_are_never_absent_redis_pubsub() {
    created_keys_are_never_absent(Kind::RedisPubSub).await;
}

/// What the heartbeats cost: a cache with the default bound asks its bus
/// for a heartbeat every fifth of the liveness window (100 ms). Counted on
/// a subscription over 3 s: each heartbeat is one probe message through
/// the server and back (NATS; a JetStream bus probes the same way) or one
/// `PING` round trip on the subscription's connection (Redis pub/sub).
async fn heartbeat_pace(kind: Kind) {
    use futures::StreamExt;
    let server = BusServer::start(kind);
    let bus = server.connect(kind).await;
    let asked = BOUND.mul_f64(0.8) / 4;
    bus.heartbeat_at_least(asked);
    let mut sub = bus.subscribe("pace").await.unwrap();
    let window = Duration::from_secs(3);
    let start = Instant::now();
    let mut beats = 0u32;
    while let Ok(Some(ev)) = tokio::time::timeout_at((start + window).into(), sub.next()).await {
        if ev == tiercache::core::backend::BusEvent::Heartbeat {
            beats += 1;
        }
    }
    let per_second = f64::from(beats) / window.as_secs_f64();
    println!(
        "[{kind:?}] heartbeats asked every {}: {beats} in {window:?} ({per_second:.1}/s per subscription)",
        ms(asked)
    );
    let expected = window.as_secs_f64() / asked.as_secs_f64();
    assert!(
        f64::from(beats) >= expected * 0.5 && f64::from(beats) <= expected * 1.5 + 2.0,
        "{kind:?}: {beats} heartbeats in {window:?}, asked every {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pace_nats() {
    heartbeat_pace(Kind::NatsCore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pace_redis_pubsub() {
    heartbeat_pace(Kind::RedisPubSub).await;
}
