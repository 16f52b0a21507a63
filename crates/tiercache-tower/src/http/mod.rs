//! An HTTP response cache for `http::Request` / `http::Response` services
//! (axum, hyper, tonic-style stacks): [`HttpCacheLayer`].
//!
//! # The rules
//!
//! The layer is an HTTP cache by RFC 9111, with one difference from a proxy,
//! by choice: a response with no freshness information of its own is
//! stored for the cache's TTL (an application's own handlers rarely set
//! caching headers). [`default_ttl(None)`](HttpCacheLayer::default_ttl)
//! gives shared-cache behaviour instead.
//!
//! - **Methods**: `GET` is looked up; `HEAD` is answered from the stored
//!   `GET` response (its headers and validators, no body), and goes to the
//!   origin unstored when there is none. Requests with `Authorization` pass
//!   through unless [`cache_authorized`](HttpCacheLayer::cache_authorized).
//! - **Invalidation after unsafe methods** (RFC 9111 4.4): a 2xx or 3xx
//!   answer to `POST`, `PUT`, `DELETE`, `PATCH` (any method that is not
//!   safe) drops the stored responses of its URI, and of the `Location` and
//!   `Content-Location` it names on the same origin, on every instance,
//!   before the answer is returned.
//! - **Key**: method, path and query (parameters sorted with
//!   [`sort_query`](HttpCacheLayer::sort_query)), then the request headers
//!   configured with [`vary`](HttpCacheLayer::vary):
//!   `GET /products/1?a=1 |accept=application/json`.
//! - **Vary** (RFC 9111 4.1): a response whose `Vary` names other request
//!   headers is stored per variant: under its key a marker names the
//!   headers, and each variant has a key of its own with those headers'
//!   values (field lines combined, whitespace around commas dropped).
//!   `Vary: *` is never reused.
//! - **Freshness** (4.2): `s-maxage`, else `max-age`, else `Expires` minus
//!   `Date`; an `Expires` in the past or that is not a date means stale.
//!   The age a response already had (its `Age`, its `Date`, the time the
//!   origin took) counts against it, and the `Age` served is that plus the
//!   time stored. A response stale on arrival is not stored. Without
//!   freshness information, see [`default_ttl`](HttpCacheLayer::default_ttl).
//!   `CDN-Cache-Control` (RFC 9213), and a field of this cache's own
//!   ([`targeted_cache_control`](HttpCacheLayer::targeted_cache_control)),
//!   replace `Cache-Control` for this cache when present.
//! - **Not stored**: `no-store`, `private`, `no-cache`, a `Set-Cookie`, a
//!   206, a 5xx, a status not configured (200, 203, 204, 301 by default;
//!   404 and 410 as negatives, for the negative TTL or a shorter
//!   freshness).
//! - **Validation** (4.3): the origin's `ETag` and `Last-Modified` are
//!   kept. A stale response is kept a while
//!   ([`keep_for_revalidation`](HttpCacheLayer::keep_for_revalidation)) and
//!   revalidated with one conditional request per key (singleflight): a 304
//!   refreshes its headers and freshness and its stored body is served. A
//!   client's `If-None-Match` (or `If-Modified-Since`) is answered with 304
//!   from a fresh stored response; with nothing stored it is forwarded.
//! - **Stale**: `stale-while-revalidate` serves the stored response while
//!   one background refresh runs; `stale-if-error` (or the cache's `grace`)
//!   serves it when the origin fails. `must-revalidate`, `proxy-revalidate`
//!   and `s-maxage` forbid serving it stale.
//! - **Ranges**: a single `bytes` range of a stored 200 is served as 206
//!   (416 when it cannot be satisfied); other range requests get the whole
//!   200. A range request on a miss loads and stores the whole response.
//! - **Tags**: the handler names the tags of its response in `x-cache-tags`
//!   ([`tags_header`](HttpCacheLayer::tags_header)), comma or space
//!   separated (UTF-8, or percent-encoded), like a CDN's surrogate keys;
//!   the layer records them and removes the header from every response,
//!   stored or not. [`CacheHandle::invalidate_tag`] drops them all, on every
//!   instance. A response whose tags cannot be recorded exactly is not
//!   stored.
//! - **Headers added**: `x-cache: hit | miss | stale` and `Cache-Status`
//!   (RFC 9211: `tiercache; hit`, `tiercache; fwd=uri-miss`,
//!   `tiercache; fwd=stale`, `fwd=bypass` or `fwd=method` on requests not
//!   looked up), and `age`, on every response that went through a lookup.
//!   Stored responses carry an `ETag`: the origin's, or a strong one
//!   computed once from the body.
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
//!   `tiercache_not_stored_total`, not as a failed load. A load that
//!   panicked or passed the cache's hard timeout answers 500 / 504. A panic
//!   inside the cache sends the request on to the service.
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
//!     .build_with_codec(ResponseCodec)?;
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
pub(crate) mod freshness;
mod future;
mod handle;
pub(crate) mod key;
pub(crate) mod layer;
pub(crate) mod load;
pub(crate) mod policy;
pub(crate) mod response;
pub(crate) mod serve;
pub(crate) mod service;
pub(crate) mod store;

pub use body::CacheBody;
pub use future::ResponseFuture;
pub use handle::CacheHandle;
#[cfg(feature = "axum")]
pub use handle::MissingCacheHandle;
pub use layer::HttpCacheLayer;
pub use response::{CachedResponse, MAX_HEADERS, ResponseCodec, TooManyHeaders};
pub use service::HttpCache;
