//! Replica reads: shared-tier read throughput of the engine (`Cache::get`
//! with the local tier off, so every read is a shared-tier read, batched by
//! the engine as it is in production), 64 concurrent tasks, against
//! Sentinel sets started by the testkit, in the same run:
//!
//! - `master`: `read_from_replicas(false)` on a set with two replicas;
//! - `1 replica`: `read_from_replicas(true)` on a set with one replica;
//! - `2 replicas`: `read_from_replicas(true)` on the set with two.
//!
//! Each replica read also reads the keys' versions from the master (the
//! consistency check, see `tiercache_redis`'s `replica` module), so the
//! master still answers one command per batch: the gain is the values'
//! bytes, and it grows with value size. Criterion times each mode; the
//! summary runs the three in interleaved rounds and prints each replica
//! mode's median throughput ratio to master-only reads, with its range,
//! for a 100-byte value and a 4 KiB one.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tiercache_core::Cache;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::RedisSentinelSet;

const TASKS: u64 = 64;
const KEYS: u64 = 2_000;
const ROUNDS: usize = 7;
const READS_PER_ROUND: u64 = 40_000;

/// `n` reads of distinct keys (modulo [`KEYS`]) over 64 tasks; the wall time.
async fn concurrent(cache: &Cache<u64, Vec<u8>>, n: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    let got = cache.get(&(i % KEYS)).await;
                    assert!(got.is_some(), "key {} missing", i % KEYS);
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

async fn cache(set: &RedisSentinelSet, replicas: bool, ns: &str) -> Cache<u64, Vec<u8>> {
    let tier = RedisSharedTier::builder()
        .sentinel(set.sentinel_urls(), set.master_name())
        .call_timeout(Duration::from_secs(1))
        .read_from_replicas(replicas)
        .build()
        .await
        .unwrap();
    let want = if replicas {
        set.replica_ports().len()
    } else {
        0
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tier.replicas_in_use().len() < want {
        assert!(Instant::now() < deadline, "replicas never in use");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Cache::<u64, Vec<u8>>::builder(ns)
        .shared_tier(tier)
        .local_capacity(0)
        .build()
        .unwrap()
}

fn replica_read(c: &mut Criterion) {
    let one = RedisSentinelSet::start(1).expect("a Sentinel set with one replica");
    let two = RedisSentinelSet::start(2).expect("a Sentinel set with two replicas");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut summary = Vec::new();
    for (label, size) in [("100B", 100usize), ("4KiB", 4096)] {
        let ns = format!("bench-replica-{label}");
        let modes = rt.block_on(async {
            let master = cache(&two, false, &ns).await;
            // Another namespace on the other set: caches of one namespace
            // in one process hear each other's invalidations.
            let ns_one = format!("{ns}-one");
            let r1 = cache(&one, true, &ns_one).await;
            let r2 = cache(&two, true, &ns).await;
            // The same keys and values in both sets, through their masters.
            let writer_one = cache(&one, false, &ns_one).await;
            for k in 0..KEYS {
                master.insert(&k, vec![0xA5; size]).await;
                writer_one.insert(&k, vec![0xA5; size]).await;
            }
            // Let the replicas catch up.
            tokio::time::sleep(Duration::from_secs(1)).await;
            [("master", master), ("1 replica", r1), ("2 replicas", r2)]
        });

        let mut group = c.benchmark_group(format!("replica_read/{label}"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(3));
        for (name, cache) in &modes {
            group.bench_function(*name, |b| {
                b.to_async(&rt)
                    .iter_custom(|iters| async move { concurrent(cache, iters).await });
            });
        }
        group.finish();

        // Interleaved rounds: each mode's throughput over master-only's.
        let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut master_rate = Vec::new();
        rt.block_on(async {
            for _ in 0..ROUNDS {
                let mut rates = [0f64; 3];
                for (i, (_, cache)) in modes.iter().enumerate() {
                    let d = concurrent(cache, READS_PER_ROUND).await;
                    rates[i] = READS_PER_ROUND as f64 / d.as_secs_f64();
                }
                master_rate.push(rates[0]);
                ratios[0].push(rates[1] / rates[0]);
                ratios[1].push(rates[2] / rates[0]);
            }
        });
        master_rate.sort_by(f64::total_cmp);
        for r in &mut ratios {
            r.sort_by(f64::total_cmp);
        }
        summary.push(format!(
            "  {label:<5} master-only median {:.0} reads/s; 1 replica {:.3}x (range {:.3}-{:.3}); \
             2 replicas {:.3}x (range {:.3}-{:.3}); {ROUNDS} rounds",
            master_rate[master_rate.len() / 2],
            ratios[0][ROUNDS / 2],
            ratios[0][0],
            ratios[0][ROUNDS - 1],
            ratios[1][ROUNDS / 2],
            ratios[1][0],
            ratios[1][ROUNDS - 1],
        ));
    }
    println!("\nreplica_read: throughput relative to master-only reads (same run)");
    for line in summary {
        println!("{line}");
    }
}

criterion_group!(benches, replica_read);
criterion_main!(benches);
