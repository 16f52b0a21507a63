//! `Cache::get` on a local hit against raw `moka::sync::Cache::get` (the local
//! tier's own cache type; `moka::future` too, for reference) on the same
//! keys, in the same run: over 1,024 keys
//! in turn (each read once in a while: moka answers, the per-thread hot
//! slots only cost their check) and on one hot key (the hot slots answer).
//! Also 10,000 concurrent `get_or_load` calls on one cold key with a 20 ms
//! loader (exactly one loader call, checked on every iteration), beside the
//! same 10,000 tasks waiting on one bare tokio watch channel, and two threads taking a
//! `Bytes` clone of one hot value on every hit: per-thread copies
//! ([`Codec::thread_copy`], as `RawBytes` makes them) against one value
//! both threads share (the same codec without copies).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tiercache::core::backend::{InProcessBus, InProcessSharedTier};
use tiercache::core::{Cache, Codec, DecodeError, EncodeError, RawBytes};

const KEYS: u64 = 1024;

fn local_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let value = Arc::new("v".repeat(256));

    let raw: moka::sync::Cache<u64, Arc<String>> =
        moka::sync::Cache::builder().max_capacity(100_000).build();
    // moka's async cache, what async code usually reaches for.
    let raw_future: moka::future::Cache<u64, Arc<String>> =
        moka::future::Cache::builder().max_capacity(100_000).build();
    let cache: Cache<u64, String> = rt.block_on(async {
        let cache = Cache::builder("bench")
            .shared_tier(InProcessSharedTier::default())
            .bus(InProcessBus::new())
            .ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for k in 0..KEYS {
            raw.insert(k, value.clone());
            raw_future.insert(k, value.clone()).await;
            let v = (*value).clone();
            cache
                .get_or_load(&k, move || async move { Some(v) })
                .await
                .unwrap();
        }
        cache
    });

    struct PerEntry;
    impl moka::Expiry<u64, Arc<String>> for PerEntry {
        fn expire_after_create(
            &self,
            _: &u64,
            _: &Arc<String>,
            _: std::time::Instant,
        ) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }
    let per_entry: moka::sync::Cache<u64, Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(100_000_000)
        .weigher(|_, v: &Arc<String>| v.len() as u32)
        .expire_after(PerEntry)
        .build();
    let ttl_only: moka::sync::Cache<u64, Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(100_000_000)
        .weigher(|_, v: &Arc<String>| v.len() as u32)
        .time_to_live(Duration::from_secs(3600))
        .build();
    rt.block_on(async {
        for k in 0..KEYS {
            per_entry.insert(k, value.clone());
            ttl_only.insert(k, value.clone());
        }
    });
    let mut g = c.benchmark_group("local_hit");
    g.bench_function(
        BenchmarkId::new("moka_weigher_per_entry_expiry", KEYS),
        |b| {
            let mut k = 0u64;
            b.to_async(&rt).iter(|| {
                k = (k + 1) % KEYS;
                let m = &per_entry;
                async move { std::hint::black_box(m.get(&k)) }
            })
        },
    );
    g.bench_function(BenchmarkId::new("moka_weigher_ttl", KEYS), |b| {
        let mut k = 0u64;
        b.to_async(&rt).iter(|| {
            k = (k + 1) % KEYS;
            let m = &ttl_only;
            async move { std::hint::black_box(m.get(&k)) }
        })
    });
    let kf = cache.key_format().clone();
    g.bench_function("key_hash_only", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k = (k + 1) % KEYS;
            std::hint::black_box(kf.hash(&k))
        })
    });
    g.bench_function(BenchmarkId::new("raw_moka_get", KEYS), |b| {
        let mut k = 0u64;
        b.to_async(&rt).iter(|| {
            k = (k + 1) % KEYS;
            let raw = &raw;
            async move { std::hint::black_box(raw.get(&k)) }
        })
    });
    g.bench_function(BenchmarkId::new("raw_moka_future_get", KEYS), |b| {
        let mut k = 0u64;
        b.to_async(&rt).iter(|| {
            k = (k + 1) % KEYS;
            let raw = &raw_future;
            async move { std::hint::black_box(raw.get(&k).await) }
        })
    });
    g.bench_function(BenchmarkId::new("raw_moka_get", "hot_key"), |b| {
        let raw = &raw;
        b.to_async(&rt)
            .iter(|| async move { std::hint::black_box(raw.get(&7)) })
    });
    g.bench_function(BenchmarkId::new("tiercache_get", "hot_key"), |b| {
        let cache = &cache;
        b.to_async(&rt)
            .iter(|| async move { std::hint::black_box(cache.get(&7).await) })
    });
    g.bench_function(BenchmarkId::new("tiercache_get_local", KEYS), |b| {
        let mut k = 0u64;
        b.to_async(&rt).iter(|| {
            k = (k + 1) % KEYS;
            let cache = &cache;
            async move { std::hint::black_box(cache.get_local(&k)) }
        })
    });
    g.bench_function(BenchmarkId::new("tiercache_get", KEYS), |b| {
        let mut k = 0u64;
        b.to_async(&rt).iter(|| {
            k = (k + 1) % KEYS;
            let cache = &cache;
            async move { std::hint::black_box(cache.get(&k).await) }
        })
    });
    g.bench_function(BenchmarkId::new("tiercache_get_or_load", KEYS), |b| {
        let mut k = 0u64;
        b.to_async(&rt).iter(|| {
            k = (k + 1) % KEYS;
            let cache = &cache;
            async move { std::hint::black_box(cache.get_or_load(&k, || async { None }).await.unwrap()) }
        })
    });
    g.finish();
}

/// The stampede's loader: the wall time of 10,000 callers is read against it.
const LOADER: Duration = Duration::from_millis(20);

fn cold_stampede(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache: Cache<u64, String> = rt.block_on(async {
        Cache::builder("stampede")
            .shared_tier(InProcessSharedTier::default())
            .bus(InProcessBus::new())
            .build()
            .unwrap()
    });
    let mut g = c.benchmark_group("cold_key_stampede");
    g.sample_size(10);
    let mut key = 0u64;
    g.bench_function("10000_concurrent_get_or_load_20ms_loader", |b| {
        b.to_async(&rt).iter(|| {
            key += 1;
            let cache = cache.clone();
            async move {
                let calls = Arc::new(AtomicUsize::new(0));
                let mut tasks = Vec::with_capacity(10_000);
                for _ in 0..10_000 {
                    let cache = cache.clone();
                    let calls = calls.clone();
                    tasks.push(tokio::spawn(async move {
                        cache
                            .get_or_load(&key, move || async move {
                                calls.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(LOADER).await;
                                Some("loaded".to_string())
                            })
                            .await
                    }));
                }
                for t in tasks {
                    assert!(t.await.unwrap().unwrap().is_some());
                }
                assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one loader call");
            }
        })
    });
    // The floor: the same 10,000 tasks waiting on one tokio watch channel
    // that a task fills after the loader's 20 ms. What `get_or_load` adds
    // to a stampede is the gap between the two.
    g.bench_function("10000_tasks_on_one_watch_channel_20ms", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, rx) = tokio::sync::watch::channel(None::<Arc<String>>);
            // The "load" starts first, as the first caller's does.
            tokio::spawn(async move {
                tokio::time::sleep(LOADER).await;
                tx.send_replace(Some(Arc::new("loaded".to_string())));
            });
            let mut tasks = Vec::with_capacity(10_000);
            for _ in 0..10_000 {
                let mut rx = rx.clone();
                tasks.push(tokio::spawn(async move {
                    let v = rx.wait_for(Option::is_some).await.unwrap();
                    v.clone()
                }));
            }
            for t in tasks {
                assert!(t.await.unwrap().is_some());
            }
        })
    });
    g.finish();
}

/// `RawBytes` without its thread copies: every thread serves the one value.
struct SharedBytes;

impl Codec<Bytes> for SharedBytes {
    fn encode(&self, value: &Bytes, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        RawBytes.encode(value, out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Bytes, DecodeError> {
        RawBytes.decode(bytes)
    }
}

fn hot_key_two_threads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let build = |codec_copies: bool| -> Cache<u64, Bytes> {
        rt.block_on(async {
            let b = Cache::builder(if codec_copies { "copies" } else { "shared" })
                .local_only()
                .ttl(Duration::from_secs(3600));
            let cache = if codec_copies {
                b.build_with_codec(RawBytes).unwrap()
            } else {
                b.build_with_codec(SharedBytes).unwrap()
            };
            cache.insert(&1, Bytes::from(vec![7u8; 512])).await;
            cache
        })
    };
    let mut g = c.benchmark_group("hot_key_two_threads");
    for (name, cache) in [
        ("thread_copies", build(true)),
        ("one_shared_value", build(false)),
    ] {
        // Per hit: each of two threads takes and drops a clone of the
        // body, as a response that carries it would.
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..2 {
                        s.spawn(|| {
                            for _ in 0..iters {
                                let body = cache
                                    .with_local(&1u64, |hit| hit.value.map(|v| Bytes::clone(v)))
                                    .flatten()
                                    .unwrap();
                                std::hint::black_box(body);
                            }
                        });
                    }
                });
                started.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, local_hit, cold_stampede, hot_key_two_threads);
criterion_main!(benches);
