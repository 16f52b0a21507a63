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
