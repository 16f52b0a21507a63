//! Shared-tier hit: `RedisSharedTier::get` of a 1 KiB value against a raw
//! redis-rs `GET` of the same key over the same kind of connection (one
//! multiplexed connection), both with 64 concurrent tasks, in the same run,
//! against a redis-server started by the testkit; and the whole engine's
//! `Cache::get` with the local tier off (every call a shared-tier hit).
//!
//! Then W2, the path a fresh or scaled-out instance lives on: 200,000
//! distinct keys written through one instance and read by a fresh one with
//! its local tier on, 64 tasks, so each read is a local miss, a shared hit
//! and a local fill. Its baseline is raw redis-rs `GET` of the same storage
//! keys over one multiplexed connection, in interleaved rounds of the same
//! run; the summary prints the median ratio and its spread, for a 100-byte
//! JSON value and a 1 KiB one (target: at least 0.9 of raw), and the same
//! reader with shared-tier read batching off. Beside them, what moka alone
//! takes to do the local fill (a miss and an insert per key, no Redis), as a
//! fraction of the raw `GET`s' time: the part of W2 that no change outside
//! the local tier can remove.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redis::aio::MultiplexedConnection;
use tiercache_core::Cache;
use tiercache_core::backend::SharedTier;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::RedisServer;

const TASKS: u64 = 64;
const KEY: &str = "bench:shared_hit";

/// `n` operations split over 64 tasks, each task running its share one
/// after another; `op` gets each operation's index modulo [`W2_KEYS`] (W2
/// reads that key; the single-key benches ignore it). Returns the wall time.
async fn concurrent<F, Fut>(n: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    op(i % W2_KEYS).await;
                    i += TASKS;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// A raw redis-rs `GET` of `key`.
async fn raw_get(conn: &mut MultiplexedConnection, key: &str) -> Option<Bytes> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
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
            concurrent(iters, move |_| {
                let mut raw = raw.clone();
                let raw_key = raw_key.clone();
                async move {
                    let v = raw_get(&mut raw, &raw_key).await;
                    assert_eq!(v.map(|v| v.len()), Some(1024));
                }
            })
        })
    });
    group.bench_function("tier_get", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let tier = tier.clone();
            concurrent(iters, move |_| {
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
            concurrent(iters, move |_| {
                let cache = cache.clone();
                async move {
                    let v = cache.get(&1).await;
                    assert_eq!(v.map(|v| v.len()), Some(1024));
                }
            })
        })
    });
    group.finish();
    w2(c, &rt, &tier, &raw);
    drop(server);
}

/// W2's key count.
const W2_KEYS: u64 = 200_000;

/// A JSON document of about `len` bytes.
fn json_of(len: usize) -> String {
    let item = r#"{"id":17,"name":"desk lamp","price":1999,"stock":12}"#;
    let mut s = String::from("[");
    while s.len() + item.len() + 2 <= len {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(item);
    }
    while s.len() + 1 < len {
        s.push(' ');
    }
    s.push(']');
    s
}

/// A reader that has never seen the keys: local tier on and large enough
/// for all of them, no bus (its local entries live at most the staleness
/// bound, which no round outlasts per key: each key is read once).
fn fresh_reader(tier: &RedisSharedTier, ns: &str, batch: bool) -> Cache<u64, String> {
    Cache::builder(ns)
        .batch_shared_reads(batch)
        .shared_tier(tier.clone())
        .no_bus()
        .local_capacity(512 * 1024 * 1024)
        .compress_at(usize::MAX)
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// Keys `0..n` read by 64 tasks through a fresh reader: each a local miss,
/// a shared hit and a local fill.
async fn w2_engine(tier: &RedisSharedTier, ns: &str, n: u64, len: usize, batch: bool) -> Duration {
    let reader = fresh_reader(tier, ns, batch);
    concurrent(n, move |k| {
        let reader = reader.clone();
        async move {
            let v = reader.get(&k).await;
            assert_eq!(v.map(|v| v.len()), Some(len), "key {k}");
        }
    })
    .await
}

/// A local fill without Redis: for each key, a moka `get` (a miss) and an
/// `insert` of a fresh copy of the value, on moka configured as the
/// engine's local tier is (a 128-bit key, a weigher, a TTL, an eviction
/// listener, an entry of the engine's entry's size). What any design that
/// fills moka on a shared hit pays on top of the `GET`.
async fn w2_moka_fill(n: u64, value: &str) -> Duration {
    type Entry = ([u64; 11], Arc<String>);
    let evicted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let moka: moka::sync::Cache<u128, Entry> = moka::sync::Cache::builder()
        .max_capacity(512 * 1024 * 1024)
        .weigher(|_, e: &Entry| u32::try_from(e.1.len() + 512).unwrap_or(u32::MAX))
        .time_to_live(Duration::from_secs(3600))
        .eviction_listener(move |_, _, cause| {
            if cause == moka::notification::RemovalCause::Size {
                evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .build();
    let value = value.to_owned();
    concurrent(n, move |k| {
        let moka = moka.clone();
        let copy = Arc::new(value.clone());
        async move {
            let k = u128::from(k);
            assert!(moka.get(&k).is_none());
            moka.insert(k, ([0; 11], copy));
        }
    })
    .await
}

/// The same keys' storage keys read with raw redis-rs `GET`.
async fn w2_raw(raw: &MultiplexedConnection, ns: &str, n: u64) -> Duration {
    let raw = raw.clone();
    let ns = ns.to_owned();
    concurrent(n, move |k| {
        let mut raw = raw.clone();
        let key = format!("{{{ns}:{k}}}");
        async move {
            assert!(raw_get(&mut raw, &key).await.is_some(), "{key}");
        }
    })
    .await
}

fn w2(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    tier: &RedisSharedTier,
    raw: &MultiplexedConnection,
) {
    let rounds: usize = std::env::var("W2_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // `W2_PROFILE=1`: only the 1 KiB engine reads, round after round (for
    // `perf record`); no baseline, no summary.
    let profile = std::env::var_os("W2_PROFILE").is_some();
    let mut summary = Vec::new();
    for (label, len) in [("100B", 100usize), ("1KiB", 1024)] {
        if profile && len != 1024 {
            continue;
        }
        let ns = format!("w2-{label}");
        let value = json_of(len);
        assert_eq!(value.len(), len);
        // One instance writes every key.
        rt.block_on(async {
            let writer = fresh_reader(tier, &ns, true);
            let value = value.clone();
            concurrent(W2_KEYS, move |k| {
                let writer = writer.clone();
                let value = value.clone();
                async move { writer.insert(&k, value).await }
            })
            .await;
        });

        if profile {
            for _ in 0..rounds {
                let t = rt.block_on(w2_engine(tier, &ns, W2_KEYS, len, true));
                eprintln!(
                    "w2 {label} engine: {:.0}/s",
                    W2_KEYS as f64 / t.as_secs_f64()
                );
            }
            continue;
        }
        let mut group = c.benchmark_group(format!("w2_shared_hit_{label}_64_tasks"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(10);
        group.bench_function("raw_redis_get", |b| {
            b.to_async(rt).iter_custom(|iters| {
                let ns = ns.clone();
                async move { w2_raw(raw, &ns, iters).await }
            })
        });
        group.bench_function("fresh_instance_get", |b| {
            b.to_async(rt).iter_custom(|iters| {
                let ns = ns.clone();
                async move {
                    // A fresh reader per 200,000 keys: every read stays a
                    // local miss.
                    let mut total = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = (iters - done).min(W2_KEYS);
                        total += w2_engine(tier, &ns, n, len, true).await;
                        done += n;
                    }
                    total
                }
            })
        });
        group.finish();

        // Interleaved rounds over all 200,000 keys, each engine round on a
        // fresh reader; the ratio is taken per round, so drift in machine
        // load between rounds cancels out.
        let mut ratios = Vec::new();
        let mut unbatched = Vec::new();
        let mut fills = Vec::new();
        for _ in 0..rounds {
            let (raw_t, engine_t, plain_t, fill_t) = rt.block_on(async {
                let raw_t = w2_raw(raw, &ns, W2_KEYS).await;
                let engine_t = w2_engine(tier, &ns, W2_KEYS, len, true).await;
                let plain_t = w2_engine(tier, &ns, W2_KEYS, len, false).await;
                let fill_t = w2_moka_fill(W2_KEYS, &value).await;
                (raw_t, engine_t, plain_t, fill_t)
            });
            let per_s = |t: Duration| W2_KEYS as f64 / t.as_secs_f64();
            let ratio = raw_t.as_secs_f64() / engine_t.as_secs_f64();
            eprintln!(
                "w2 {label}: raw {:.0}/s, fresh instance {:.0}/s (ratio {ratio:.3}), \
                 unbatched {:.0}/s, moka fill alone {:.0}/s",
                per_s(raw_t),
                per_s(engine_t),
                per_s(plain_t),
                per_s(fill_t)
            );
            ratios.push(ratio);
            fills.push(fill_t.as_secs_f64() / raw_t.as_secs_f64());
            unbatched.push(raw_t.as_secs_f64() / plain_t.as_secs_f64());
        }
        unbatched.sort_by(f64::total_cmp);
        ratios.sort_by(f64::total_cmp);
        fills.sort_by(f64::total_cmp);
        summary.push((label, ratios, unbatched, fills));
    }
    println!("\nW2 summary (200,000 distinct keys, fresh instance vs raw GET, 64 tasks):");
    for (label, r, u, f) in summary {
        println!(
            "  {label:<5} median {:.3} of raw (range {:.3}-{:.3}, {} rounds; target >= 0.9); \
             reads unbatched: {:.3} ({:.3}-{:.3}); moka's fill alone takes {:.3} \
             ({:.3}-{:.3}) of the raw GET's time",
            r[r.len() / 2],
            r[0],
            r[r.len() - 1],
            r.len(),
            u[u.len() / 2],
            u[0],
            u[u.len() - 1],
            f[f.len() / 2],
            f[0],
            f[f.len() - 1],
        );
    }
}

criterion_group!(benches, shared_hit);
criterion_main!(benches);
