//! Issue #13: leases that hold across instances, proven with two OS
//! processes on a real Redis (standalone, Sentinel and Cluster).
//!
//! The test binary runs itself a second time as the peer instance
//! (`lease_peer`, which does nothing unless `LEASE_PEER` is set). Both
//! processes build a `Cache` on the same shared tier and, at the same
//! wall-clock instant, send many concurrent reads of the same cold key(s).
//! The "database" is a counter in a separate redis-server: every origin
//! load increments it, so the loads of both processes are counted in one
//! place.
//!
//! - `one_load_across_two_processes_*`: 40 readers per process of one cold
//!   key, a 100 ms loader (shorter than `lease_wait`): exactly one load.
//! - `stale_within_grace_is_served_while_the_holder_loads`: the key is past
//!   its TTL but within grace; a slow loader (600 ms). Exactly one load, and
//!   the readers of the process that does not hold the lease answer with the
//!   stale copy at once instead of waiting.
//! - `get_many_takes_leases_across_two_processes`: both processes batch-load
//!   the same 20 cold keys: each key is loaded once in all.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use tiercache::core::{Cache, Entry, Outcome};
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{RedisCluster, RedisSentinelSet, RedisServer};

const READERS: usize = 40;
const FAST_LOAD: Duration = Duration::from_millis(100);
const SLOW_LOAD: Duration = Duration::from_millis(600);
const BATCH_KEYS: u64 = 20;

/// Where the shared tier is.
#[derive(Clone, Debug)]
enum Shared {
    Standalone(String),
    Sentinel(Vec<String>, String),
    Cluster(Vec<String>),
}

impl Shared {
    fn kind(&self) -> &'static str {
        match self {
            Shared::Standalone(_) => "standalone",
            Shared::Sentinel(..) => "sentinel",
            Shared::Cluster(_) => "cluster",
        }
    }

    fn to_env(&self) -> String {
        match self {
            Shared::Standalone(u) => format!("standalone|{u}"),
            Shared::Sentinel(urls, master) => format!("sentinel|{master}|{}", urls.join(",")),
            Shared::Cluster(urls) => format!("cluster|{}", urls.join(",")),
        }
    }

    fn from_env(s: &str) -> Self {
        let mut parts = s.split('|');
        match parts.next().unwrap() {
            "standalone" => Shared::Standalone(parts.next().unwrap().to_owned()),
            "sentinel" => {
                let master = parts.next().unwrap().to_owned();
                let urls = parts
                    .next()
                    .unwrap()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                Shared::Sentinel(urls, master)
            }
            _ => Shared::Cluster(
                parts
                    .next()
                    .unwrap()
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
            ),
        }
    }

    async fn tier(&self) -> RedisSharedTier {
        let b = RedisSharedTier::builder();
        let b = match self {
            Shared::Standalone(u) => b.url(u.clone()),
            Shared::Sentinel(urls, master) => b.sentinel(urls.clone(), master.clone()),
            Shared::Cluster(urls) => b.cluster(urls.clone()),
        };
        b.build().await.unwrap()
    }
}

/// What one process was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Concurrent `get_or_load` of one cold key, fast loader.
    Cold,
    /// Concurrent `fetch` of a key past its TTL, within grace; slow loader.
    Stale,
    /// Concurrent `get_many_or_load` of the same cold keys.
    Batch,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Cold => "cold",
            Scenario::Stale => "stale",
            Scenario::Batch => "batch",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "cold" => Scenario::Cold,
            "stale" => Scenario::Stale,
            _ => Scenario::Batch,
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The origin: counts a load of `key` in the "database" Redis, takes
/// `delay`, and answers `v:{key}`.
async fn origin_load(db: String, counter: String, key: u64, delay: Duration) -> String {
    let client = redis::Client::open(db).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = c.hincr(&counter, key.to_string(), 1).await.unwrap();
    tokio::time::sleep(delay).await;
    format!("v:{key}")
}

/// One process's part: build the cache, wait for the common start, read.
/// Returns (reads, how many answered with a stale copy, the slowest
/// answer of a stale read in ms).
async fn play(
    scenario: Scenario,
    shared: &Shared,
    db: &str,
    ns: &str,
    start_at_ms: u64,
) -> (usize, usize, u128) {
    let cache: Cache<u64, String> = Cache::builder(ns)
        .shared_tier(shared.tier().await)
        .no_bus()
        .ttl(Duration::from_secs(1))
        .ttl_jitter(0.0)
        .grace(Duration::from_secs(60))
        .build()
        .unwrap();
    let counter = format!("loads:{ns}");
    tokio::time::sleep(Duration::from_millis(start_at_ms.saturating_sub(now_ms()))).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..READERS {
        let (cache, db, counter) = (cache.clone(), db.to_owned(), counter.clone());
        tasks.push(tokio::spawn(async move {
            match scenario {
                Scenario::Cold => {
                    let v = cache
                        .get_or_load(&1, move || async move {
                            Some(origin_load(db, counter, 1, FAST_LOAD).await)
                        })
                        .await
                        .unwrap();
                    assert_eq!(v.as_deref().map(String::as_str), Some("v:1"));
                    (false, 0)
                }
                Scenario::Stale => {
                    let f = cache
                        .fetch(&1, move || async move {
                            let v = origin_load(db, counter, 1, SLOW_LOAD).await;
                            Ok::<_, std::io::Error>(Some(Entry::new(v)))
                        })
                        .await
                        .unwrap();
                    assert!(f.value.is_some());
                    (f.outcome == Outcome::Stale, started.elapsed().as_millis())
                }
                Scenario::Batch => {
                    let keys: Vec<u64> = (1..=BATCH_KEYS).collect();
                    let got = cache
                        .get_many_or_load(&keys, move |missing: Vec<u64>| async move {
                            let mut out = HashMap::new();
                            for k in missing {
                                out.insert(
                                    k,
                                    origin_load(db.clone(), counter.clone(), k, Duration::ZERO)
                                        .await,
                                );
                            }
                            tokio::time::sleep(FAST_LOAD).await;
                            Ok::<_, std::io::Error>(out)
                        })
                        .await
                        .unwrap();
                    for (k, v) in keys.iter().zip(got) {
                        assert_eq!(v.as_deref().cloned(), Some(format!("v:{k}")));
                    }
                    (false, 0)
                }
            }
        }));
    }
    let mut stale = 0;
    let mut slowest_stale = 0;
    for t in tasks {
        let (was_stale, ms) = t.await.unwrap();
        if was_stale {
            stale += 1;
            slowest_stale = slowest_stale.max(ms);
        }
    }
    (READERS, stale, slowest_stale)
}

/// The peer process's entry point: a no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_peer() {
    let Ok(scenario) = std::env::var("LEASE_PEER") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let (reads, stale, slowest) = play(
        Scenario::parse(&scenario),
        &Shared::from_env(&var("LEASE_SHARED")),
        &var("LEASE_DB"),
        &var("LEASE_NS"),
        var("LEASE_START_AT_MS").parse().unwrap(),
    )
    .await;
    println!("LEASE_RESULT {reads} {stale} {slowest}");
}

/// Runs `scenario` in this process and in a peer process at once; returns
/// the loads per key, and each process's (reads, stale answers, slowest
/// stale answer in ms).
async fn both(
    scenario: Scenario,
    shared: &Shared,
    db: &RedisServer,
    prepare: impl AsyncFnOnce(&str),
) -> (HashMap<String, i64>, Vec<(usize, usize, u128)>) {
    let ns = format!("lease{:x}", rand::random::<u32>());
    prepare(&ns).await;
    let start_at = now_ms() + 1500;
    let peer = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lease_peer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LEASE_PEER", scenario.name())
        .env("LEASE_SHARED", shared.to_env())
        .env("LEASE_DB", db.url())
        .env("LEASE_NS", &ns)
        .env("LEASE_START_AT_MS", start_at.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let here = play(scenario, shared, &db.url(), &ns, start_at).await;
    let out = tokio::task::spawn_blocking(move || peer.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "the peer process failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.split_once("LEASE_RESULT ").map(|(_, r)| r.trim()))
        .unwrap_or_else(|| panic!("no result from the peer: {text}"));
    let n: Vec<u128> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    let there = (
        usize::try_from(n[0]).unwrap(),
        usize::try_from(n[1]).unwrap(),
        n[2],
    );
    let client = redis::Client::open(db.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let loads: HashMap<String, i64> = c.hgetall(format!("loads:{ns}")).await.unwrap();
    (loads, vec![here, there])
}

async fn one_load_across_two_processes(shared: Shared) {
    let db = RedisServer::start().unwrap();
    let (loads, results) = both(Scenario::Cold, &shared, &db, async |_| {}).await;
    assert_eq!(
        loads.get("1"),
        Some(&1),
        "{shared:?}: one origin load for {} readers in two processes: {loads:?}",
        2 * READERS
    );
    println!(
        "[{}] {} concurrent readers of a cold key in two processes: {:?} origin load(s)",
        shared.kind(),
        results.iter().map(|r| r.0).sum::<usize>(),
        loads.get("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_across_two_processes_standalone() {
    if std::env::var("LEASE_PEER").is_ok() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    one_load_across_two_processes(Shared::Standalone(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_across_two_processes_sentinel() {
    if std::env::var("LEASE_PEER").is_ok() {
        return;
    }
    let set = tokio::task::spawn_blocking(|| RedisSentinelSet::start(1).unwrap())
        .await
        .unwrap();
    one_load_across_two_processes(Shared::Sentinel(
        set.sentinel_urls(),
        set.master_name().to_owned(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_across_two_processes_cluster() {
    if std::env::var("LEASE_PEER").is_ok() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start().unwrap())
        .await
        .unwrap();
    one_load_across_two_processes(Shared::Cluster(cluster.urls())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_within_grace_is_served_while_the_holder_loads() {
    if std::env::var("LEASE_PEER").is_ok() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    let db = RedisServer::start().unwrap();
    let shared = Shared::Standalone(redis.url());
    let prepare_shared = shared.clone();
    let (loads, results) = both(Scenario::Stale, &shared, &db, async move |ns: &str| {
        // A value stored with a 1 s TTL and a minute of grace, then let
        // expire: stale, servable within grace.
        let cache: Cache<u64, String> = Cache::builder(ns)
            .shared_tier(prepare_shared.tier().await)
            .no_bus()
            .ttl(Duration::from_secs(1))
            .ttl_jitter(0.0)
            .grace(Duration::from_secs(60))
            .build()
            .unwrap();
        cache.insert(&1, "old".to_owned()).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    })
    .await;
    assert_eq!(loads.get("1"), Some(&1), "one load in all: {loads:?}");
    // The process whose load found the lease held elsewhere answered every
    // reader with the stale copy, long before the holder's slow load ended.
    let waiter = results
        .iter()
        .find(|r| r.1 > 0)
        .unwrap_or_else(|| panic!("no process served the stale copy: {results:?}"));
    assert_eq!(
        waiter.1, READERS,
        "every reader of the waiting process: {results:?}"
    );
    assert!(
        waiter.2 < SLOW_LOAD.as_millis(),
        "stale answers came at once, not after the holder's load: {results:?}"
    );
    println!(
        "stale within grace while the other process loads: {} of {} readers answered stale, the slowest after {} ms (the load takes {} ms); {:?} load(s)",
        waiter.1,
        waiter.0,
        waiter.2,
        SLOW_LOAD.as_millis(),
        loads.get("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_takes_leases_across_two_processes() {
    if std::env::var("LEASE_PEER").is_ok() {
        return;
    }
    let redis = RedisServer::start().unwrap();
    let db = RedisServer::start().unwrap();
    let (loads, _) = both(
        Scenario::Batch,
        &Shared::Standalone(redis.url()),
        &db,
        async |_| {},
    )
    .await;
    assert_eq!(loads.len() as u64, BATCH_KEYS, "{loads:?}");
    assert!(
        loads.values().all(|n| *n == 1),
        "each key loaded once across both processes: {loads:?}"
    );
    let total: i64 = loads.values().sum();
    println!("get_many_or_load of {BATCH_KEYS} cold keys from two processes: {total} key loads");
}
