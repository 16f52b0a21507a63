//! Load test for the running products stack (`scripts/stack.sh up`).
//!
//! ```text
//! cargo run --release -p tiercache-products -- --seed 10000   # once, with DATABASE_URL set
//! cargo run --release -p tiercache-products --example loadtest  # 127.0.0.1:8081 and :8082
//! cargo run --release -p tiercache-products --example loadtest -- --duration 5 --concurrency 32 http://127.0.0.1:8081
//! ```
//!
//! Three phases, each bounded in requests and time, requests spread over the
//! instances given (loopback only):
//!
//! 1. **cached reads**: `GET /products/{id}` over a warmed hot set;
//! 2. **uncached reads**: ids first rewritten through `PUT` (so the sidecar
//!    invalidated them everywhere), then each read exactly once: every read
//!    is a miss that goes to Postgres;
//! 3. **reads during an invalidation storm**: phase 1 again while writers
//!    `PUT` hot ids continuously (each one invalidated on every instance).
//!
//! Prints requests per second, p50 and p99 latency, and how the cache
//! answered (`x-cache`).
#![allow(missing_docs)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

/// The seeder's categories (examples/products/db.rs), used to find ids.
const CATEGORIES: &[&str] = &[
    "books", "games", "music", "garden", "kitchen", "toys", "tools", "sports",
];

#[derive(Debug, Parser)]
#[command(name = "loadtest", about = "Load-tests the products stack on loopback")]
struct Args {
    /// Base URLs of the app instances (loopback only).
    #[arg(default_values_t = ["http://127.0.0.1:8081".to_string(), "http://127.0.0.1:8082".to_string()])]
    urls: Vec<String>,
    /// Concurrent readers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Longest run of one phase, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Most requests of one phase.
    #[arg(long, default_value_t = 300_000)]
    max_requests: u64,
    /// Ids in the hot set (phases 1 and 3).
    #[arg(long, default_value_t = 1000)]
    hot: usize,
    /// Ids read once each in phase 2 (at most the ids found).
    #[arg(long, default_value_t = 4000)]
    cold: usize,
    /// Concurrent writers in phase 3.
    #[arg(long, default_value_t = 4)]
    writers: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

struct Answer {
    status: u16,
    x_cache: Option<String>,
    body: Bytes,
}

impl Http {
    fn new(pool: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(pool)
                .build(connector),
        }
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<String>,
    ) -> Result<Answer, BoxError> {
        let mut req = http::Request::builder().method(method).uri(url);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let x_cache = resp
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(Answer {
                status,
                x_cache,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| format!("{method} {url}: timed out"))?
    }
}

/// What one phase measured.
struct Tally {
    latency: Histogram<u64>,
    hits: u64,
    misses: u64,
    stale: u64,
    errors: u64,
    requests: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            hits: 0,
            misses: 0,
            stale: 0,
            errors: 0,
            requests: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, o: &Tally) {
        let _ = self.latency.add(&o.latency);
        self.hits += o.hits;
        self.misses += o.misses;
        self.stale += o.stale;
        self.errors += o.errors;
        self.requests += o.requests;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }

    fn record(&mut self, started: Instant, result: Result<Answer, BoxError>) {
        self.requests += 1;
        let _ = self
            .latency
            .record(started.elapsed().as_micros().max(1) as u64);
        match result {
            Ok(a) if a.status == 200 => match a.x_cache.as_deref() {
                Some("hit") => self.hits += 1,
                Some("stale") => self.stale += 1,
                _ => self.misses += 1,
            },
            Ok(a) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!(
                        "status {}: {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    ));
                }
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.to_string());
                }
            }
        }
    }

    fn print(&self, name: &str, elapsed: Duration, extra: &str) {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let rps = self.requests as f64 / elapsed.as_secs_f64();
        println!(
            "{name:<28} {:>8} req {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   hit/miss/stale {}/{}/{}   errors {}{extra}",
            self.requests,
            rps,
            ms(0.50),
            ms(0.99),
            self.hits,
            self.misses,
            self.stale,
            self.errors,
        );
        if let Some(e) = &self.first_error {
            println!("{:<28} first error: {e}", "");
        }
    }
}

#[derive(Clone, Debug, serde::Deserialize)]
struct Product {
    id: i64,
    name: String,
    price_cents: i64,
    category: String,
}

fn check_loopback(url: &str) -> Result<(), BoxError> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback || uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs on loopback are load-tested").into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let urls: Vec<String> = args
        .urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    for u in &urls {
        check_loopback(u)?;
    }
    let concurrency = args.concurrency.clamp(1, 1024);
    let http = Http::new(concurrency + args.writers + 8);
    let limit = Duration::from_secs(args.duration.clamp(1, 120));

    // Ids (and their rows) from the category lists.
    let mut products = Vec::new();
    for c in CATEGORIES {
        let a = http
            .send("GET", &format!("{}/products?category={c}", urls[0]), None)
            .await?;
        if a.status != 200 {
            return Err(format!("GET /products?category={c}: status {}", a.status).into());
        }
        products.extend(serde_json::from_slice::<Vec<Product>>(&a.body)?);
    }
    products.sort_by_key(|p| p.id);
    products.dedup_by_key(|p| p.id);
    if products.len() < 20 {
        return Err(format!(
            "only {} products found; seed first: DATABASE_URL=... cargo run --release -p tiercache-products -- --seed 10000",
            products.len()
        )
        .into());
    }
    let hot_n = args.hot.clamp(10, products.len() / 2);
    let hot: Arc<Vec<Product>> = Arc::new(products[..hot_n].to_vec());
    let cold_pool = &products[hot_n..];
    let cold: Vec<Product> = cold_pool[..args.cold.min(cold_pool.len())].to_vec();
    println!(
        "instances: {}   products found: {}   hot set: {}   cold reads: {}   readers: {}   phase limit: {}s / {} requests",
        urls.join(" "),
        products.len(),
        hot.len(),
        cold.len(),
        concurrency,
        limit.as_secs(),
        args.max_requests
    );

    // Warm the hot set on every instance.
    run_list(
        &http,
        &urls,
        hot.iter().map(|p| p.id).collect(),
        concurrency,
        true,
    )
    .await;

    // 1. Cached reads.
    let (t, elapsed) = read_hot(&http, &urls, &hot, concurrency, limit, args.max_requests).await;
    t.print("cached reads", elapsed, "");

    // 2. Uncached reads: rewrite the ids through the API (the sidecar drops
    //    them everywhere), let the invalidations land, then read each once.
    let rewrites = cold.clone();
    let put_errors = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(Mutex::new(rewrites));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(32) {
        let (http, urls, queue, put_errors) = (
            http.clone(),
            urls.clone(),
            Arc::clone(&queue),
            Arc::clone(&put_errors),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(p) = queue.lock().await.pop() else {
                    return;
                };
                if put(&http, &urls[p.id as usize % urls.len()], &p, &p.name)
                    .await
                    .is_err()
                {
                    put_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cold_ids: Vec<i64> = cold
        .iter()
        .map(|p| p.id)
        .take(args.max_requests as usize)
        .collect();
    let started = Instant::now();
    let t = run_list(&http, &urls, cold_ids, concurrency, false).await;
    t.print(
        "uncached reads",
        started.elapsed(),
        &format!(
            "   ({} PUT errors before)",
            put_errors.load(Ordering::Relaxed)
        ),
    );

    // 3. Reads during an invalidation storm.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let write_errors = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (http, urls, hot, stop, writes, write_errors) = (
            http.clone(),
            urls.clone(),
            Arc::clone(&hot),
            Arc::clone(&stop),
            Arc::clone(&writes),
            Arc::clone(&write_errors),
        );
        writers.push(tokio::spawn(async move {
            let mut n = w as u64 + 1;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let p = &hot[(n >> 33) as usize % hot.len()];
                let name = format!("{} (rev {})", base_name(&p.name), n % 1000);
                match put(&http, &urls[(n >> 13) as usize % urls.len()], p, &name).await {
                    Ok(()) => writes.fetch_add(1, Ordering::Relaxed),
                    Err(_) => write_errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let (t, elapsed) = read_hot(&http, &urls, &hot, concurrency, limit, args.max_requests).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let w = writes.load(Ordering::Relaxed);
    t.print(
        "reads during invalidations",
        elapsed,
        &format!(
            "   ({w} PUTs, {:.0}/s, {} failed)",
            w as f64 / elapsed.as_secs_f64(),
            write_errors.load(Ordering::Relaxed)
        ),
    );
    // Leave the names as they were.
    let restore: Vec<Product> = hot.iter().cloned().collect();
    for chunk in restore.chunks(64) {
        let futs = chunk
            .iter()
            .map(|p| put(&http, &urls[0], p, base_name(&p.name)));
        futures::future::join_all(futs).await;
    }
    Ok(())
}

/// The name without a " (rev N)" suffix added by an earlier storm.
fn base_name(name: &str) -> &str {
    name.split(" (rev ").next().unwrap_or(name)
}

async fn put(http: &Http, base: &str, p: &Product, name: &str) -> Result<(), BoxError> {
    let body = serde_json::json!({
        "name": name,
        "price_cents": p.price_cents,
        "category": p.category,
    })
    .to_string();
    let a = http
        .send("PUT", &format!("{base}/products/{}", p.id), Some(body))
        .await?;
    if a.status == 200 {
        Ok(())
    } else {
        Err(format!("PUT {}: status {}", p.id, a.status).into())
    }
}

/// Random reads of the hot set until `limit` or `max` requests.
async fn read_hot(
    http: &Http,
    urls: &[String],
    hot: &Arc<Vec<Product>>,
    concurrency: usize,
    limit: Duration,
    max: u64,
) -> (Tally, Duration) {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (http, urls, hot, issued) = (
            http.clone(),
            urls.to_vec(),
            Arc::clone(hot),
            Arc::clone(&issued),
        );
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let mut n = w as u64 * 7 + 3;
            while started.elapsed() < limit && issued.fetch_add(1, Ordering::Relaxed) < max {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = hot[(n >> 33) as usize % hot.len()].id;
                let url = format!("{}/products/{id}", urls[(n >> 17) as usize % urls.len()]);
                let at = Instant::now();
                let r = http.send("GET", &url, None).await;
                t.record(at, r);
            }
            t
        }));
    }
    let mut total = Tally::new();
    for task in tasks {
        if let Ok(t) = task.await {
            total.merge(&t);
        }
    }
    (total, started.elapsed())
}

/// Reads each id once (`all_instances`: once on every instance).
async fn run_list(
    http: &Http,
    urls: &[String],
    ids: Vec<i64>,
    concurrency: usize,
    all_instances: bool,
) -> Tally {
    let mut jobs: Vec<String> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if all_instances {
            jobs.extend(urls.iter().map(|u| format!("{u}/products/{id}")));
        } else {
            jobs.push(format!("{}/products/{id}", urls[i % urls.len()]));
        }
    }
    let queue = Arc::new(Mutex::new(jobs));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, queue) = (http.clone(), Arc::clone(&queue));
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            loop {
                let Some(url) = queue.lock().await.pop() else {
                    return t;
                };
                let at = Instant::now();
                let r = http.send("GET", &url, None).await;
                t.record(at, r);
            }
        }));
    }
    let mut total = Tally::new();
    for task in tasks {
        if let Ok(t) = task.await {
            total.merge(&t);
        }
    }
    total
}
