//! A randomized consistency check in the style of a linearizability checker.
//!
//! Writers update rows of a real Postgres table and invalidate; readers read
//! through three `Cache` instances (separate local tiers, one Redis, one bus).
//! Every read is recorded with its start time; every invalidation with when
//! each instance applied it. The checker proves that no read that started
//! after an invalidation had been applied on its instance returned a value
//! older than the write that invalidation was for, reports how long each
//! instance took to apply each invalidation, and, once the run quiesces,
//! that every instance and Redis agree with Postgres.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiercache::core::Cache;
use tiercache::core::backend::Bus;
use tiercache_e2e::postgres::{assert_tiers_match_postgres, bump, create_kv, pg, version_of};
use tiercache_redis::{RedisBus, RedisSharedTier};
use tiercache_testkit::{NatsServer, Postgres, RedisServer};

const KEYS: i64 = 24;
const INSTANCES: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(6);

struct Write {
    key: i64,
    version: i64,
    instance: usize,
    seq: u64,
    published: Instant,
}

/// When an instance applied each (origin, seq).
type AppliedLog = Arc<Mutex<HashMap<(u64, u64), Instant>>>;

struct Read {
    instance: usize,
    key: i64,
    version: i64,
    started: Instant,
}

async fn run_check(name: &str, buses: Vec<Arc<dyn Bus>>) {
    let postgres = Postgres::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let admin = pg(&postgres.url()).await;
    create_kv(&admin, KEYS).await;

    let ns = format!("consistency{:x}", rand::random::<u32>());
    let mut caches = Vec::new();
    for bus in buses {
        let tier = RedisSharedTier::builder()
            .url(redis.url())
            .build()
            .await
            .unwrap();
        let cache: Cache<i64, i64> = Cache::builder(ns.as_str())
            .shared_tier(tier)
            .bus_arc(bus)
            // Long TTLs: only invalidation can make a value go away.
            .ttl(Duration::from_secs(600))
            .build()
            .unwrap();
        caches.push(cache);
    }
    // Every instance's record of when it applied what: (origin, seq) -> time.
    let applied: Vec<AppliedLog> = (0..INSTANCES).map(|_| AppliedLog::default()).collect();
    for (i, c) in caches.iter().enumerate() {
        let mut rx = c.subscribe_applied();
        let log = applied[i].clone();
        tokio::spawn(async move {
            while let Ok(a) = rx.recv().await {
                log.lock().unwrap().insert((a.sender_instance, a.seq), a.at);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Vec::<Write>::new()));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let mut tasks = Vec::new();
    for (w, cache) in caches.iter().take(2).enumerate() {
        let (cache, stop, writes) = (cache.clone(), stop.clone(), writes.clone());
        let db = pg(&postgres.url()).await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = ((n * 7 + w as u64 * 13) % KEYS as u64) as i64;
                let version = bump(&db, key).await;
                // Committed; now invalidate (the writer's own instance applies
                // it before this returns).
                let seq = cache.invalidate(&key).await.expect("published");
                writes.lock().unwrap().push(Write {
                    key,
                    version,
                    instance: w,
                    seq,
                    published: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    for r in 0..INSTANCES * 2 {
        let instance = r % INSTANCES;
        let (cache, stop, reads) = (caches[instance].clone(), stop.clone(), reads.clone());
        let db = Arc::new(pg(&postgres.url()).await);
        tasks.push(tokio::spawn(async move {
            let mut n = r as u64;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = ((n >> 33) % KEYS as u64) as i64;
                let started = Instant::now();
                let db = db.clone();
                let v = cache
                    .try_get_or_load(&key, move || async move {
                        Ok::<_, tokio_postgres::Error>(Some(version_of(&db, key).await?))
                    })
                    .await
                    .unwrap()
                    .expect("every key exists");
                reads.lock().unwrap().push(Read {
                    instance,
                    key,
                    version: *v,
                    started,
                });
                // A local hit completes without ever yielding; give the
                // runtime (loads, bus listeners, writers) its turn.
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(RUN_FOR).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Quiesce: let the last messages arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Taken out of their mutexes: no guard lives across the awaits below.
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let reads = std::mem::take(&mut *reads.lock().unwrap());
    let origin_of: Vec<u64> = caches.iter().map(|c| c.instance_id()).collect();

    // When each write's invalidation was applied on each instance.
    let mut lags = Vec::new();
    let mut not_applied = 0usize;
    let mut apply_time: Vec<Vec<Option<Instant>>> = Vec::new();
    for w in writes.iter() {
        let mut per_instance = Vec::new();
        let mut worst = Duration::ZERO;
        for (i, log) in applied.iter().enumerate() {
            let at = if i == w.instance {
                Some(w.published)
            } else {
                log.lock()
                    .unwrap()
                    .get(&(origin_of[w.instance], w.seq))
                    .copied()
            };
            match at {
                Some(t) => worst = worst.max(t.saturating_duration_since(w.published)),
                None => not_applied += 1,
            }
            per_instance.push(at);
        }
        lags.push(worst);
        apply_time.push(per_instance);
    }
    // The check: a read that started after the invalidation of write W was
    // applied on its instance must return at least W's version.
    let mut stale = Vec::new();
    let mut by_key: HashMap<i64, Vec<usize>> = HashMap::new();
    for (wi, w) in writes.iter().enumerate() {
        by_key.entry(w.key).or_default().push(wi);
    }
    for r in reads.iter() {
        let required = by_key
            .get(&r.key)
            .into_iter()
            .flatten()
            .filter(|&&wi| apply_time[wi][r.instance].is_some_and(|t| t < r.started))
            .map(|&wi| writes[wi].version)
            .max()
            .unwrap_or(0);
        if r.version < required {
            stale.push(format!(
                "instance {} read key {} = v{} but v{} had been invalidated there before the read began",
                r.instance, r.key, r.version, required
            ));
        }
    }
    lags.sort();
    let within = |ms: u64| {
        lags.iter()
            .filter(|l| **l <= Duration::from_millis(ms))
            .count()
    };
    let p = |q: f64| {
        lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "[{name}] {} reads, {} writes; {} of {} invalidations visible on every instance within 10 ms, {} within 100 ms; apply lag p50 {:?} p99 {:?} max {:?}; stale reads: {}; never applied: {}",
        reads.len(),
        writes.len(),
        within(10),
        writes.len(),
        within(100),
        p(0.5),
        p(0.99),
        lags.last().copied().unwrap_or_default(),
        stale.len(),
        not_applied
    );
    for s in stale.iter().take(10) {
        println!("  stale: {s}");
    }
    assert!(
        writes.len() > 100 && reads.len() > 1000,
        "the run did real work"
    );
    assert_eq!(not_applied, 0, "every invalidation reached every instance");
    assert!(stale.is_empty(), "{} stale reads", stale.len());

    // Quiesced: every instance and Redis agree with Postgres.
    assert_tiers_match_postgres(&admin, KEYS, &ns, &redis.url(), &caches).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistency_with_redis_pubsub() {
    let bus_server = RedisServer::start().unwrap();
    let mut buses: Vec<Arc<dyn Bus>> = Vec::new();
    for _ in 0..INSTANCES {
        buses.push(Arc::new(RedisBus::connect(bus_server.url()).await.unwrap()));
    }
    run_check("redis pub/sub", buses).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistency_with_nats() {
    let nats = NatsServer::start().unwrap();
    let mut buses: Vec<Arc<dyn Bus>> = Vec::new();
    for _ in 0..INSTANCES {
        buses.push(Arc::new(
            tiercache_nats::NatsBus::builder()
                .url(nats.url())
                .build()
                .await
                .unwrap(),
        ));
    }
    run_check("nats", buses).await;
}
