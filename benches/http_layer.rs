//! Requests per second through an axum router with `HttpCacheLayer` on a
//! local hit, against baselines in the same run:
//!
//! - `cached_local_hit`: the layer in front of a handler; every request is a
//!   local hit;
//! - `no_layer_same_bytes`: the same router without the layer, the handler
//!   returning the same bytes (target: the hit at most 15% slower);
//! - `uncached_origin_1ms`: no layer, the handler's origin takes 1 ms
//!   (target: the hit at least 20x its throughput);
//! - `cached_origin_1ms`: that same slow handler behind the layer (hits).
//!
//! Each iteration sends a batch of requests through `oneshot` on clones of
//! the router, 64 in flight (each a spawned task) on a multi-thread runtime
//! with two workers. A summary of requests per second and the ratios is
//! printed at the end, for that client shape and for 64 connection-like
//! tasks that each send their requests one after another. Every router is
//! served after `with_state(())`, as `axum::serve` does.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use http_body_util::BodyExt;
use tiercache_core::Cache;
use tiercache_core::backend::{InProcessBus, InProcessSharedTier};
use tiercache_tower::{CachedResponse, HttpCacheLayer, ResponseCodec};
use tower::ServiceExt;

const BATCH: usize = 2048;
const IN_FLIGHT: usize = 64;

fn payload() -> Bytes {
    let item = r#"{"id":1,"name":"lamp","price":1999,"tags":["home","light"]}"#;
    let mut s = String::from("[");
    while s.len() < 1000 {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    Bytes::from(s)
}

fn fast_router(body: Bytes) -> Router {
    Router::new().route(
        "/item",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

fn slow_router(body: Bytes) -> Router {
    Router::new().route(
        "/item",
        get(move || {
            let body = body.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ([(header::CONTENT_TYPE, "application/json")], body)
            }
        }),
    )
}

async fn one(router: Router) -> usize {
    let req = Request::get("/item").body(Body::empty()).unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

async fn batch(router: &Router, n: usize) {
    let total: usize = futures::stream::iter(0..n)
        .map(|_| tokio::spawn(one(router.clone())))
        .buffer_unordered(IN_FLIGHT)
        .map(|r| r.unwrap())
        .fold(0, |a, b| async move { a + b })
        .await;
    assert!(total >= n);
}

/// `n` requests from `IN_FLIGHT` tasks, each sending its share one after
/// another, as connections do.
async fn connections(router: &Router, n: usize) {
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move {
                let mut total = 0;
                for _ in 0..n / IN_FLIGHT {
                    total += one(router.clone()).await;
                }
                total
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total >= n);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("W")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .unwrap();
    let body = payload();
    let cache = |ns: &str| {
        let _guard = rt.enter();
        Cache::<String, CachedResponse>::builder(ns)
            .shared_tier(InProcessSharedTier::default())
            .bus(InProcessBus::new())
            .ttl(Duration::from_secs(3600))
            .build_with_codec(ResponseCodec)
            .unwrap()
    };
    let hot = cache("bench-hot");
    let hot_slow = cache("bench-hot-slow");
    // `with_state(())` turns each handler into a route once, as
    // `axum::serve` does (through `into_make_service`); without it a
    // `Router` rebuilds every handler's route, layer and all, per request.
    let routers: Vec<(&str, Router)> = vec![
        (
            "cached_local_hit",
            fast_router(body.clone()).layer(HttpCacheLayer::new(hot.clone())),
        ),
        ("no_layer_same_bytes", fast_router(body.clone())),
        ("uncached_origin_1ms", slow_router(body.clone())),
        (
            "cached_origin_1ms",
            slow_router(body.clone()).layer(HttpCacheLayer::new(hot_slow.clone())),
        ),
    ]
    .into_iter()
    .map(|(name, router)| (name, router.with_state(())))
    .collect();
    // Warm: the bus live (local tier trusted), the entries filled.
    rt.block_on(async {
        for cache in [&hot, &hot_slow] {
            while !cache.local_trusted() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for (_, r) in &routers {
            batch(r, 256).await;
        }
    });

    let mut group = c.benchmark_group("http_layer");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for (name, router) in &routers {
        group.bench_function(*name, |b| b.to_async(&rt).iter(|| batch(router, BATCH)));
    }
    group.finish();

    // Profiling one variant (`--profile-time`): no summary, which would run
    // them all.
    if std::env::args().any(|a| a == "--profile-time") {
        return;
    }
    // A summary with the ratios, in two client shapes: a task spawned per
    // request (as above), and `IN_FLIGHT` connection-like tasks sending
    // their requests one after another (less client overhead per request,
    // so the layer's own cost weighs more). Variants are interleaved round
    // by round so that load from other processes hits them alike; the best
    // round of each counts.
    for (shape, clients) in [("a task per request", false), ("connection loops", true)] {
        let mut best = vec![0.0f64; routers.len()];
        // Per round, the hit against no layer measured next to it: a drift
        // in machine load between rounds cancels out of this ratio.
        let mut round_ratios = Vec::new();
        for _ in 0..8 {
            let mut this_round = vec![0.0f64; routers.len()];
            for (i, (name, router)) in routers.iter().enumerate() {
                let rps = rt.block_on(async {
                    let started = Instant::now();
                    let mut n = 0;
                    while started.elapsed() < Duration::from_millis(250) {
                        if clients {
                            connections(router, BATCH).await;
                        } else {
                            batch(router, BATCH).await;
                        }
                        n += BATCH;
                    }
                    n as f64 / started.elapsed().as_secs_f64()
                });
                if std::env::var_os("HTTP_LAYER_ROUNDS").is_some() {
                    eprintln!("round {shape} {name}: {rps:.0}");
                }
                best[i] = best[i].max(rps);
                this_round[i] = rps;
            }
            let of = |n: &str| {
                routers
                    .iter()
                    .position(|(k, _)| *k == n)
                    .map_or(0.0, |i| this_round[i])
            };
            round_ratios.push(1.0 - of("cached_local_hit") / of("no_layer_same_bytes"));
        }
        round_ratios.sort_by(f64::total_cmp);
        let median_slower = (round_ratios[3] + round_ratios[4]) / 2.0 * 100.0;
        let rps: Vec<(&str, f64)> = routers.iter().map(|(n, _)| *n).zip(best).collect();
        let get = |n: &str| rps.iter().find(|(k, _)| *k == n).map_or(0.0, |(_, v)| *v);
        println!(
            "\nhttp_layer summary, {shape} (requests/s, best of 8 interleaved rounds of 250 ms, {IN_FLIGHT} in flight):"
        );
        for (name, v) in &rps {
            println!("  {name:<22} {v:>12.0}");
        }
        let hit = get("cached_local_hit");
        println!(
            "  hit vs no layer:        {:.1}% slower (target <= 15%)",
            (1.0 - hit / get("no_layer_same_bytes")) * 100.0
        );
        println!("    (median of the 8 rounds' own ratios: {median_slower:.1}% slower)");
        println!(
            "  hit vs 1 ms origin:     {:.1}x (target >= 20x)",
            hit / get("uncached_origin_1ms")
        );
        println!(
            "  cached 1 ms origin vs uncached: {:.1}x",
            get("cached_origin_1ms") / get("uncached_origin_1ms")
        );
    }
    let stats = hot.stats();
    println!(
        "  hot cache: local hits {}, loads {}",
        stats.local_hits, stats.loads
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
