//! The embedded quickstart: no servers. A simulated product database with a
//! few milliseconds of latency sits behind a tiercache `Cache` on the embedded
//! default (local moka tier + in-process shared tier and bus). 64 concurrent
//! clients read Zipf-distributed product ids (more ids than the local tier
//! holds), 5% of them for ids that do not exist, while 1% of operations are
//! writes that invalidate. The same workload then runs with no cache, and the
//! two are compared in a table.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};
use tiercache::core::{BloomGuardConfig, Cache, CacheStats};

const PRODUCTS: u64 = 20_000;
const REQUESTS: u64 = 120_000;
const CLIENTS: u64 = 64;
const MISSING_SHARE: f64 = 0.05;
const WRITE_SHARE: f64 = 0.01;
const ORIGIN_LATENCY_MS: (u64, u64) = (2, 5);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: i64,
    category: String,
    description: String,
}

/// A slow, counted, in-memory "database".
struct Origin {
    rows: RwLock<HashMap<u64, Product>>,
    reads: AtomicU64,
}

impl Origin {
    fn new() -> Self {
        let rows = (1..=PRODUCTS)
            .map(|id| {
                (
                    id,
                    Product {
                        id,
                        name: format!("Product #{id}"),
                        price_cents: (id as i64 * 37) % 10_000,
                        category: format!("category-{}", id % 40),
                        description: "A sturdy, well-reviewed item. ".repeat(6),
                    },
                )
            })
            .collect();
        Self {
            rows: RwLock::new(rows),
            reads: AtomicU64::new(0),
        }
    }

    async fn find(&self, id: u64) -> Option<Product> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let ms = rand::rng().random_range(ORIGIN_LATENCY_MS.0..=ORIGIN_LATENCY_MS.1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.rows.read().unwrap().get(&id).cloned()
    }

    async fn update_price(&self, id: u64) {
        tokio::time::sleep(Duration::from_millis(ORIGIN_LATENCY_MS.0)).await;
        if let Some(p) = self.rows.write().unwrap().get_mut(&id) {
            p.price_cents += 1;
        }
    }
}

#[derive(Default)]
struct Run {
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
    origin_reads: u64,
    stats: Option<CacheStats>,
}

fn pick(rng: &mut impl Rng, zipf: &Zipf<f64>) -> u64 {
    if rng.random_bool(MISSING_SHARE) {
        1_000_000 + rng.random_range(0..1_000_000)
    } else {
        zipf.sample(rng) as u64
    }
}

async fn run(name: &str, origin: Arc<Origin>, cache: Option<Cache<u64, Product>>) -> Run {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let origin = origin.clone();
        let cache = cache.clone();
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let zipf = Zipf::new(PRODUCTS as f64, 1.0).unwrap();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            for _ in 0..REQUESTS / CLIENTS {
                let (id, write) = {
                    let mut rng = rand::rng();
                    (pick(&mut rng, &zipf), rng.random_bool(WRITE_SHARE))
                };
                let t = Instant::now();
                if write {
                    let id = id.min(PRODUCTS);
                    origin.update_price(id).await;
                    if let Some(c) = &cache {
                        c.invalidate(&id).await;
                    }
                } else {
                    let found = match &cache {
                        Some(c) => {
                            let o = origin.clone();
                            c.get_or_load(&id, move || async move { o.find(id).await })
                                .await
                                .unwrap()
                                .is_some()
                        }
                        None => origin.find(id).await.is_some(),
                    };
                    debug_assert_eq!(found, id <= PRODUCTS);
                }
                hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
            hist
        }));
    }
    let progress = {
        let done = done.clone();
        let name = name.to_owned();
        let cache = cache.clone();
        let tty = std::io::stdout().is_terminal();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let n = done.load(Ordering::Relaxed);
                let hit = cache.as_ref().map(|c| {
                    let s = c.stats();
                    let hits = s.local_hits + s.shared_hits + s.bloom_rejections;
                    100.0 * hits as f64 / (hits + s.misses).max(1) as f64
                });
                let (start, end) = if tty { ("\r", "") } else { ("", "\n") };
                print!(
                    "{start}  {name:<9} {:>6}/{REQUESTS} requests  {:>5.1}%{}{end}",
                    n,
                    100.0 * n as f64 / REQUESTS as f64,
                    hit.map(|h| format!("  hit ratio {h:.1}%"))
                        .unwrap_or_default()
                );
                let _ = std::io::stdout().flush();
                if n >= REQUESTS / CLIENTS * CLIENTS {
                    if tty {
                        println!();
                    }
                    return;
                }
            }
        })
    };
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for c in clients {
        latency.add(c.await.unwrap()).unwrap();
    }
    let elapsed = started.elapsed();
    let _ = progress.await;
    Run {
        elapsed,
        latency: Some(latency),
        origin_reads: origin.reads.load(Ordering::Relaxed),
        stats: cache.map(|c| c.stats()),
    }
}

fn pct(n: u64, of: u64) -> String {
    format!("{:.1}%", 100.0 * n as f64 / of.max(1) as f64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "tiercache quickstart: embedded default (local tier + in-process shared tier and bus), no servers"
    );
    println!(
        "workload: {REQUESTS} requests from {CLIENTS} clients, {PRODUCTS} products (Zipf s=1), {:.0}% lookups of missing ids, {:.0}% writes, origin latency {}-{} ms\n",
        MISSING_SHARE * 100.0,
        WRITE_SHARE * 100.0,
        ORIGIN_LATENCY_MS.0,
        ORIGIN_LATENCY_MS.1
    );

    let origin = Arc::new(Origin::new());
    let universe_origin = origin.clone();
    let cache: Cache<u64, Product> = Cache::builder("products")
        // About 2,500 products fit: fewer than the 20,000 in the key set.
        .local_capacity(1024 * 1024)
        .ttl(Duration::from_secs(60))
        .ttl_jitter(0.2)
        .negative_ttl(Duration::from_secs(10))
        .bloom_guard(
            BloomGuardConfig::new(move || {
                let o = universe_origin.clone();
                async move {
                    let ids: Vec<String> =
                        o.rows.read().unwrap().keys().map(u64::to_string).collect();
                    Ok::<_, std::io::Error>(ids)
                }
            })
            .expected_items(PRODUCTS as usize),
        )
        .build()?;
    while !cache.bloom_ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let cached = run("cached", origin.clone(), Some(cache)).await;
    let plain = run("no cache", Arc::new(Origin::new()), None).await;

    let s = cached.stats.clone().unwrap_or_default();
    let reads = s.local_hits + s.shared_hits + s.misses + s.bloom_rejections;
    let lat = |r: &Run, q: f64| {
        r.latency
            .as_ref()
            .map(|h| format!("{:.3} ms", h.value_at_quantile(q) as f64 / 1000.0))
            .unwrap_or_default()
    };
    let rps = |r: &Run| format!("{:.0}", REQUESTS as f64 / r.elapsed.as_secs_f64());
    let rows: Vec<(&str, String, String)> = vec![
        ("requests", REQUESTS.to_string(), REQUESTS.to_string()),
        (
            "wall time",
            format!("{:.2} s", cached.elapsed.as_secs_f64()),
            format!("{:.2} s", plain.elapsed.as_secs_f64()),
        ),
        ("requests/s", rps(&cached), rps(&plain)),
        ("p50 latency", lat(&cached, 0.5), lat(&plain, 0.5)),
        ("p99 latency", lat(&cached, 0.99), lat(&plain, 0.99)),
        (
            "origin reads",
            cached.origin_reads.to_string(),
            plain.origin_reads.to_string(),
        ),
        (
            "local tier hits",
            format!("{} ({})", s.local_hits, pct(s.local_hits, reads)),
            "-".into(),
        ),
        (
            "shared tier hits",
            format!("{} ({})", s.shared_hits, pct(s.shared_hits, reads)),
            "-".into(),
        ),
        (
            "misses (loads)",
            format!("{} ({})", s.misses, pct(s.misses, reads)),
            "-".into(),
        ),
        ("collapsed waiters", s.collapsed.to_string(), "-".into()),
        ("negative hits", s.negative_hits.to_string(), "-".into()),
        (
            "Bloom rejections",
            s.bloom_rejections.to_string(),
            "-".into(),
        ),
        (
            "invalidations",
            s.invalidations_sent.to_string(),
            "-".into(),
        ),
        ("local evictions", s.evictions.to_string(), "-".into()),
    ];
    println!("\n  {:<20} {:>22} {:>14}", "", "tiercache", "no cache");
    println!("  {}", "-".repeat(58));
    for (label, a, b) in rows {
        println!("  {label:<20} {a:>22} {b:>14}");
    }
    println!(
        "\n  origin load cut to {} of the uncached run; throughput x{:.1}",
        pct(cached.origin_reads, plain.origin_reads),
        plain.elapsed.as_secs_f64() / cached.elapsed.as_secs_f64()
    );
    Ok(())
}
