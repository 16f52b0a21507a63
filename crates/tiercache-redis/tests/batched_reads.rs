//! Shared-tier reads batched while others are in flight, against a real
//! redis-server: a fresh instance's concurrent local misses go out as fewer
//! commands than keys (`MGET`), each caller gets its own key's value, and a
//! paused server fails the batches within the call budget rather than
//! stranding their callers.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tiercache_core::Cache;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{RedisServer, Resp, redis_command};

const KEYS: u64 = 2000;

async fn tier(url: &str) -> RedisSharedTier {
    RedisSharedTier::builder()
        .url(url)
        .call_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap()
}

fn instance(tier: &RedisSharedTier, ns: &str, batch: bool) -> Cache<u64, String> {
    Cache::builder(ns)
        .shared_tier(tier.clone())
        .no_bus()
        .batch_shared_reads(batch)
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn value(k: u64) -> String {
    format!("{{\"id\":{k},\"name\":\"item {k}\"}}")
}

/// Calls of `command` since the last `CONFIG RESETSTAT`.
fn calls(port: u16, command: &str) -> u64 {
    let Resp::Bulk(info) =
        tokio::task::block_in_place(|| redis_command(port, &["INFO", "commandstats"])).unwrap()
    else {
        panic!("INFO answers a bulk string");
    };
    let info = String::from_utf8(info).unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// Every key read once by 64 tasks on `reader`; checks each value.
async fn read_all(reader: &Cache<u64, String>) {
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let reader = reader.clone();
            tokio::spawn(async move {
                let mut k = t;
                while k < KEYS {
                    let got = reader.get(&k).await;
                    assert_eq!(got.as_deref(), Some(&value(k)), "key {k}");
                    k += 64;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_instance_reads_concurrent_misses_in_batches() {
    let server = RedisServer::start().unwrap();
    let ns = common::unique("batch");
    let tier = tier(&server.url()).await;
    let writer = instance(&tier, &ns, true);
    for k in 0..KEYS {
        writer.insert(&k, value(k)).await;
    }
    let port = server.port();
    let reset = || {
        tokio::task::block_in_place(|| redis_command(port, &["CONFIG", "RESETSTAT"])).unwrap();
    };

    // Batched (the default): every caller gets its own key's value, from
    // fewer commands than keys.
    reset();
    let reader = instance(&tier, &ns, true);
    read_all(&reader).await;
    let (gets, mgets) = (calls(port, "get"), calls(port, "mget"));
    assert!(mgets >= 1, "no MGET sent ({gets} GETs)");
    assert!(
        gets + mgets < KEYS,
        "{gets} GETs and {mgets} MGETs for {KEYS} keys: nothing was batched"
    );
    assert_eq!(reader.stats().shared_hits, KEYS);
    assert_eq!(reader.stats().loads, 0);

    // Off: one GET per key, besides the GETs of the namespace's clear
    // epochs: each instance alive (three) reads them once at start and,
    // having no bus, again every half staleness bound (250 ms by default).
    reset();
    let started = std::time::Instant::now();
    let plain = instance(&tier, &ns, false);
    read_all(&plain).await;
    let epoch_reads = 3 * (2 + started.elapsed().as_millis() as u64 / 250);
    assert_eq!(calls(port, "mget"), 0);
    let gets = calls(port, "get");
    assert!(
        (KEYS..=KEYS + epoch_reads).contains(&gets),
        "{gets} GETs for {KEYS} keys (and at most {epoch_reads} reads of the clear epochs)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_server_fails_batched_reads_within_the_budget_and_they_recover() {
    let mut server = RedisServer::start().unwrap();
    let ns = common::unique("batch-pause");
    let tier = tier(&server.url()).await;
    let writer = instance(&tier, &ns, true);
    for k in 0..256 {
        writer.insert(&k, value(k)).await;
    }
    let reader = instance(&tier, &ns, true);
    let loads = Arc::new(AtomicU64::new(0));

    // Paused mid-load: every concurrent miss falls through to the origin
    // once its batch times out; none waits on a batch that never answers.
    server.pause();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..256u64)
        .map(|k| {
            let (reader, loads) = (reader.clone(), Arc::clone(&loads));
            tokio::spawn(async move {
                reader
                    .get_or_load(&k, || async move {
                        loads.fetch_add(1, Ordering::AcqRel);
                        Some(value(k))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for (k, t) in tasks.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("a read stranded while redis is paused")
            .unwrap();
        assert_eq!(got.as_deref(), Some(&value(k as u64)));
    }
    assert!(
        reader.stats().shared_errors >= 1,
        "the failed reads are counted"
    );
    assert_eq!(loads.load(Ordering::Acquire), 256, "each key loaded once");
    assert!(started.elapsed() < Duration::from_secs(20));
    server.resume();

    // Back: a fresh instance reads every key from redis again, batched.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let fresh = instance(&tier, &ns, true);
    loop {
        let got = futures::future::join_all((0..256u64).map(|k| {
            let fresh = fresh.clone();
            async move { fresh.get(&k).await }
        }))
        .await;
        if got.iter().all(Option::is_some) {
            for (k, v) in got.into_iter().enumerate() {
                assert_eq!(v.as_deref(), Some(&value(k as u64)));
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads did not recover after redis resumed"
        );
        fresh.flush_local();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
