//! Shared-tier hit: `RedisSharedTier::get` of a 1 KiB value against a raw
//! redis-rs `GET` of the same key over the same kind of connection (one
//! multiplexed connection), both with 64 concurrent tasks, in the same run,
//! against a redis-server started by the testkit; and the whole engine's
//! `Cache::get` with the local tier off (every call a shared-tier hit).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tiercache_core::Cache;
use tiercache_core::backend::SharedTier;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::RedisServer;

const TASKS: u64 = 64;
const KEY: &str = "bench:shared_hit";

/// Runs `iters` operations spread over 64 tasks; returns the wall time.
async fn concurrent<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let per_task = iters.div_ceil(TASKS);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    op().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Normalise to `iters` operations (per_task * TASKS may exceed it).
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_task * TASKS) as f64)
}

fn shared_hit(c: &mut Criterion) {
    let server = RedisServer::start().expect("redis-server from the testkit");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let value = Bytes::from(vec![0xA5u8; 1024]);
    let (tier, raw) = rt.block_on(async {
        let tier = RedisSharedTier::builder()
            .url(server.url())
            .call_timeout(Duration::from_secs(1))
            .build()
            .await
            .unwrap();
        tier.set(KEY, value.clone(), Duration::from_secs(3600))
            .await
            .unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let raw = client.get_multiplexed_async_connection().await.unwrap();
        (tier, raw)
    });
    // The tier stores the value at `{<storage key>}`.
    let raw_key = format!("{{{KEY}}}");

    let mut group = c.benchmark_group("shared_hit_1KiB_64_tasks");
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw_redis_get", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = raw.clone();
            let raw_key = raw_key.clone();
            concurrent(iters, move || {
                let mut raw = raw.clone();
                let raw_key = raw_key.clone();
                async move {
                    let v: Option<Bytes> = redis::cmd("GET")
                        .arg(&raw_key)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    assert_eq!(v.map(|v| v.len()), Some(1024));
                }
            })
        })
    });
    group.bench_function("tier_get", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let tier = tier.clone();
            concurrent(iters, move || {
                let tier = tier.clone();
                async move {
                    let v = tier.get(KEY).await.unwrap();
                    assert_eq!(v.map(|v| v.len()), Some(1024));
                }
            })
        })
    });
    // The whole engine on a shared-tier hit: the local tier is off, so every
    // `Cache::get` goes to Redis, decodes the envelope and the value.
    let cache: Cache<u64, String> = rt.block_on(async {
        let cache = Cache::builder("bench")
            .shared_tier(tier.clone())
            .no_bus()
            .local_capacity(0)
            .compress_at(usize::MAX)
            .ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        // A 1 KiB string: serde decodes it as one copy (a Vec<u8> would be
        // decoded byte by byte, which measures serde, not the cache).
        cache.insert(&1, "a".repeat(1024)).await;
        cache
    });
    group.bench_function("cache_get_local_tier_off", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let cache = cache.clone();
            concurrent(iters, move || {
                let cache = cache.clone();
                async move {
                    let v = cache.get(&1).await;
                    assert_eq!(v.map(|v| v.len()), Some(1024));
                }
            })
        })
    });
    group.finish();
    drop(server);
}

criterion_group!(benches, shared_hit);
criterion_main!(benches);
