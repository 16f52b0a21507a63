//! Fan-out: the time from `invalidate` on one instance to the entry being
//! evicted on all 7 others, 8 `Cache` instances each with its own bus
//! connection, NATS (core) against Redis pub/sub in the same run, against
//! servers started by the testkit.
//!
//! The shared tier is one `InProcessSharedTier` shared by the 8 instances, so
//! the measurement is about the bus. Each iteration warms the key on every
//! instance (not timed), then instance 0 invalidates it; the sample is the
//! latest `Applied::at` among the 7 others minus the moment `invalidate` was
//! called. Criterion reports the mean per fan-out ("fanout/nats",
//! "fanout/redis_pubsub"); every sample (warm-up included) also goes into a
//! list whose p50/p90/p99/p99.9 are printed at the end of the run (p99.9
//! is the sample below which 99.9% fall: read it with `n`, as a run of a
//! few thousand samples holds only a few above it).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tiercache_core::backend::{Bus, InProcessSharedTier, SharedTier};
use tiercache_core::{Applied, Cache};
use tiercache_nats::NatsBus;
use tiercache_redis::RedisBus;
use tiercache_testkit::{NatsServer, RedisServer};
use tokio::sync::broadcast::Receiver;

const INSTANCES: usize = 8;
/// A fan-out not complete after this is a lost invalidation: the bench fails.
const LOST_AFTER: Duration = Duration::from_secs(5);

/// One fleet of 8 instances on one bus.
struct Fleet {
    caches: Vec<Cache<u64, u64>>,
    /// `subscribe_applied()` of instances 1..8.
    receivers: Vec<Receiver<Applied>>,
    next_key: u64,
    /// Every fan-out time measured.
    samples: Arc<Mutex<Vec<Duration>>>,
}

impl Fleet {
    async fn new(name: &str, buses: Vec<Arc<dyn Bus>>) -> Self {
        let shared: Arc<dyn SharedTier> = Arc::new(InProcessSharedTier::default());
        let ns = format!("fanout{name}{:x}", rand::random::<u32>());
        let caches: Vec<Cache<u64, u64>> = buses
            .into_iter()
            .map(|bus| {
                Cache::builder(ns.as_str())
                    .shared_tier_arc(shared.clone())
                    .bus_arc(bus)
                    .ttl(Duration::from_secs(600))
                    .build()
                    .unwrap()
            })
            .collect();
        // Wait until every subscription is live.
        let start = Instant::now();
        while !caches.iter().all(|c| c.local_trusted()) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name}: bus not live"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let receivers = caches[1..].iter().map(|c| c.subscribe_applied()).collect();
        Fleet {
            caches,
            receivers,
            next_key: 0,
            samples: Arc::default(),
        }
    }

    /// One fan-out: warm a fresh key everywhere, then time the invalidation
    /// until the last of the 7 other instances has applied it.
    async fn fanout(&mut self) -> Duration {
        self.next_key += 1;
        let key = self.next_key;
        for c in &self.caches {
            let v = c.get_or_load(&key, move || async move { Some(key) }).await;
            assert_eq!(v.unwrap().as_deref(), Some(&key));
        }
        let origin = self.caches[0].instance_id();
        let start = Instant::now();
        let seq = self.caches[0].invalidate(&key).await.expect("published");
        let mut last = start;
        for rx in &mut self.receivers {
            let at = tokio::time::timeout(LOST_AFTER, async {
                loop {
                    let a = rx.recv().await.expect("applied stream");
                    if a.sender_instance == origin && a.seq == seq {
                        return a.at;
                    }
                }
            })
            .await
            .expect("an invalidation was not applied everywhere");
            last = last.max(at);
        }
        let took = last.saturating_duration_since(start);
        self.samples.lock().unwrap().push(took);
        took
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(name: &str, samples: &Mutex<Vec<Duration>>) {
    let mut s = std::mem::take(&mut *samples.lock().unwrap());
    if s.is_empty() {
        eprintln!("fanout/{name}: no samples");
        return;
    }
    s.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    eprintln!(
        "fanout/{name:<12} publish -> evicted on all {} others: n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs",
        INSTANCES - 1,
        s.len(),
        us(percentile(&s, 0.50)),
        us(percentile(&s, 0.90)),
        us(percentile(&s, 0.99)),
        us(percentile(&s, 0.999)),
        us(*s.last().unwrap()),
    );
}

fn fanout(c: &mut Criterion) {
    let nats = NatsServer::start().expect("nats-server from the testkit");
    let redis_bus = RedisServer::start().expect("redis-server from the testkit");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let (nats_fleet, redis_fleet) = rt.block_on(async {
        let mut nb: Vec<Arc<dyn Bus>> = Vec::new();
        let mut rb: Vec<Arc<dyn Bus>> = Vec::new();
        for _ in 0..INSTANCES {
            nb.push(Arc::new(
                NatsBus::builder().url(nats.url()).build().await.unwrap(),
            ));
            rb.push(Arc::new(RedisBus::connect(redis_bus.url()).await.unwrap()));
        }
        (Fleet::new("nats", nb).await, Fleet::new("redis", rb).await)
    });
    let fleets = [
        ("nats", Arc::new(tokio::sync::Mutex::new(nats_fleet))),
        (
            "redis_pubsub",
            Arc::new(tokio::sync::Mutex::new(redis_fleet)),
        ),
    ];

    let mut group = c.benchmark_group("fanout");
    for (name, fleet) in &fleets {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let fleet = fleet.clone();
                async move {
                    let mut fleet = fleet.lock().await;
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += fleet.fanout().await;
                    }
                    total
                }
            })
        });
    }
    group.finish();

    for (name, fleet) in &fleets {
        let samples = rt.block_on(async { fleet.lock().await.samples.clone() });
        report(name, &samples);
    }
    drop(fleets);
    drop(rt);
    drop((nats, redis_bus));
}

criterion_group!(benches, fanout);
criterion_main!(benches);
