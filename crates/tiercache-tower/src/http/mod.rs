//! An HTTP response cache for `http::Request` / `http::Response` services
//! (axum, hyper, tonic-style stacks): [`HttpCacheLayer`].
//!
//! # The rules
//!
//! - **Methods**: only `GET` and `HEAD` are looked up by default
//!   ([`methods`](HttpCacheLayer::methods)); other requests pass through.
//!   Requests with `Authorization` pass through unless
//!   [`cache_authorized`](HttpCacheLayer::cache_authorized).
//! - **Key**: method, path and query (parameters sorted with
//!   [`sort_query`](HttpCacheLayer::sort_query)), then the request headers
//!   configured with [`vary`](HttpCacheLayer::vary):
//!   `GET /products/1?a=1 |accept=application/json`.
//! - **Vary**: the configured headers are part of every key up front. A
//!   response whose `Vary` names a header that is not configured (it would
//!   need a different key), or `Vary: *`, is not stored.
//! - **Statuses**: 200, 203, 204, 301 are stored; 404 and 410 are stored as
//!   negatives (the response itself, for the negative TTL or a shorter
//!   `max-age`). Others are not stored.
//! - **Cache-Control** of the response: `no-store`, `private`, `no-cache`
//!   are not stored; `s-maxage`, else `max-age`, is the TTL (0: not stored);
//!   without either the cache's TTL applies. A response setting a cookie is
//!   never stored.
//! - **Tags**: the handler names the tags of its response in `x-cache-tags`
//!   ([`tags_header`](HttpCacheLayer::tags_header)), comma or space
//!   separated, like a CDN's surrogate keys; the layer records them and
//!   removes the header from every response, stored or not.
//!   [`CacheHandle::invalidate_tag`] drops them all, on every instance.
//! - **Headers added**: `x-cache: hit | miss | stale` and `age` on every
//!   response that went through a lookup; stored responses carry an `ETag`
//!   (the origin's, or a strong one computed once at fill time from the
//!   body's xxh3-128), and `If-None-Match` is answered with 304 from the
//!   cache (conditional headers are not forwarded on a load).
//! - **Bodies** larger than [`max_body_size`](HttpCacheLayer::max_body_size)
//!   stream through uncached, intact. A stored body is shared [`Bytes`]: a
//!   hit clones a handle, never the bytes. A stored response carries its
//!   `content-length`.
//! - **A local hit is answered inside `call`**: the key is hashed from the
//!   request's parts as they stand (no key string is built), the inner
//!   service is not cloned and no future is boxed; the response is the
//!   stored header map cloned, with `age` set in place.
//! - **Request `no-cache`** reloads (invalidating the key everywhere) only
//!   with [`honor_request_no_cache`](HttpCacheLayer::honor_request_no_cache).
//! - **Errors** of the service are never stored. Requests waiting on a load
//!   whose response could not be stored call the service themselves. A
//!   response that is fine but may not be stored counts under
//!   `tiercache_not_stored_total`, not as a failed load. A load
//!   that panicked or passed the cache's hard timeout answers 500 / 504.
//!   With the cache's `grace`, a service error or a 5xx response on an
//!   expired entry serves the stale copy (`x-cache: stale`) instead.
//!
//! [`Bytes`]: bytes::Bytes
//!
//! # A whole router
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, extract::Path, http::StatusCode, response::IntoResponse, routing::get};
//! use tiercache_core::Cache;
//! use tiercache_tower::{CacheHandle, CachedResponse, HttpCacheLayer, ResponseCodec};
//! use tower::ServiceExt;
//!
//! async fn product(Path(id): Path<u64>) -> impl IntoResponse {
//!     if id > 100 {
//!         return StatusCode::NOT_FOUND.into_response(); // cached 30 s
//!     }
//!     let tags = format!("products product:{id}");
//!     (
//!         [("x-cache-tags", tags), ("cache-control", "max-age=60".into())],
//!         format!("{{\"id\":{id}}}"),
//!     )
//!         .into_response()
//! }
//!
//! async fn update(Path(id): Path<u64>, cache: CacheHandle) -> StatusCode {
//!     // ... write to the database ...
//!     cache.invalidate_tag(&format!("product:{id}")).await;
//!     StatusCode::NO_CONTENT
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache: Cache<String, CachedResponse> = Cache::builder("shop-pages")
//!     .ttl(Duration::from_secs(300))
//!     .codec(ResponseCodec)
//!     .build_with_codec()?;
//! let app = Router::new()
//!     .route("/products/{id}", get(product).put(update))
//!     .layer(HttpCacheLayer::new(cache));
//!
//! let get = || axum::http::Request::get("/products/1").body(axum::body::Body::empty());
//! let first = app.clone().oneshot(get()?).await?;
//! assert_eq!(first.headers()["x-cache"], "miss");
//! assert!(first.headers().get("x-cache-tags").is_none());
//! let second = app.clone().oneshot(get()?).await?;
//! assert_eq!(second.headers()["x-cache"], "hit");
//! # Ok(()) }
//! ```

mod body;
mod future;
mod handle;
mod key;
mod layer;
mod policy;
mod response;
mod service;

pub use body::CacheBody;
pub use future::ResponseFuture;
pub use handle::CacheHandle;
pub use layer::HttpCacheLayer;
pub use response::{CachedResponse, MAX_HEADERS, ResponseCodec, TooManyHeaders};
pub use service::HttpCache;
