//! What a local hit of `HttpCacheLayer` costs, in instructions, against
//! the bare service: a repeatable count where the criterion bench
//! (`benches/http_layer.rs`) measures time. Run it under callgrind twice
//! with different request counts; the difference over the difference in
//! requests is the cost per request, startup excluded:
//!
//! ```text
//! cargo build --release -p tiercache-tower --example hit_cost
//! valgrind --tool=callgrind target/release/examples/hit_cost 20000 layer   # or `plain`
//! valgrind --tool=callgrind target/release/examples/hit_cost 60000 layer
//! ```
//!
//! With a third argument `router`, each request takes the path of
//! `benches/http_layer.rs` instead: an axum `Router` (after
//! `with_state(())`), a task spawned per request, `oneshot`, and the body
//! collected; the ratio of the two costs per request is the bench's
//! throughput ratio on a machine with nothing else running. A fourth
//! argument `loop` sends them from one task, as the bench's
//! connection-like loops do.
#![allow(missing_docs, clippy::unwrap_used)]
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, header};
use bytes::Bytes;
use tiercache_core::Cache;
use tiercache_core::backend::{InProcessBus, InProcessSharedTier};
use tiercache_tower::{CachedResponse, HttpCacheLayer, ResponseCodec};
use tower::{Layer, Service, ServiceExt};

fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let layered = std::env::args().nth(2).as_deref() == Some("layer");
    let routed = std::env::args().nth(3).as_deref() == Some("router");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let body = Bytes::from(vec![b'x'; 1000]);
        let origin = tower::service_fn(move |_req: Request<Body>| {
            let body = body.clone();
            async move {
                let mut r = Response::new(Body::from(body));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
                Ok::<_, Infallible>(r)
            }
        });
        let cache = Cache::<String, CachedResponse>::builder("hc")
            .shared_tier(InProcessSharedTier::default())
            .bus(InProcessBus::new())
            .ttl(Duration::from_secs(3600))
            .build_with_codec(ResponseCodec)
            .unwrap();
        while !cache.local_trusted() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if routed {
            return through_router(n, layered, cache).await;
        }
        let mut svc = HttpCacheLayer::new(cache).layer(origin.clone());
        let mut plain = origin;
        for _ in 0..3 {
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(Request::get("/item").body(Body::empty()).unwrap())
                .await
                .unwrap();
            drop(r);
        }
        for _ in 0..n {
            let req = Request::get("/item").body(Body::empty()).unwrap();
            if layered {
                let r = svc.ready().await.unwrap().call(req).await.unwrap();
                std::hint::black_box(r);
            } else {
                let r = plain.ready().await.unwrap().call(req).await.unwrap();
                std::hint::black_box(r);
            }
        }
    });
}

/// `n` requests as `benches/http_layer.rs` sends them.
async fn through_router(n: usize, layered: bool, cache: Cache<String, CachedResponse>) {
    use http_body_util::BodyExt;
    let body = Bytes::from(vec![b'x'; 1000]);
    let router = axum::Router::new().route(
        "/item",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let router = if layered {
        router.layer(HttpCacheLayer::new(cache))
    } else {
        router
    }
    .with_state(());
    // `loop` as a fourth argument: no task per request, as the bench's
    // connection-like loops send them.
    let spawn = std::env::args().nth(4).as_deref() != Some("loop");
    for _ in 0..n + 3 {
        let router = router.clone();
        let one = async move {
            let req = Request::get("/item").body(Body::empty()).unwrap();
            let resp = router.oneshot(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes().len()
        };
        let len = if spawn {
            tokio::spawn(one).await.unwrap()
        } else {
            one.await
        };
        assert_eq!(len, 1000);
    }
}
