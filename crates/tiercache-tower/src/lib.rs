//! tiercache as tower middleware.
//!
//! Two layers, each in front of any [`Service`](tower_service::Service):
//!
//! - [`CacheLayer`] (module [`generic`]): caches a service's responses under
//!   a key computed from the request (`Fn(&Req) -> Option<String>`, `None`
//!   bypasses the cache), through a [`tiercache_core::Cache`]: both tiers,
//!   singleflight, jittered TTLs, tags, negatives by a predicate.
//! - [`HttpCacheLayer`] (module [`http`]): an HTTP response cache for
//!   `http::Request` / `http::Response` services (axum, hyper, tonic-style
//!   stacks) that follows `Cache-Control`, `Vary`, `Set-Cookie`, answers
//!   `If-None-Match` with 304, adds `x-cache` and `age`, and takes tags from
//!   the handler (`x-cache-tags`) like a CDN's surrogate keys.
//!
//! ```
//! use axum::{Router, routing::get};
//! use tiercache_core::Cache;
//! use tiercache_tower::{CacheHandle, CachedResponse, HttpCacheLayer};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache: Cache<String, CachedResponse> = Cache::builder("pages").build()?;
//!
//! async fn product() -> ([(&'static str, &'static str); 1], &'static str) {
//!     ([("x-cache-tags", "products product:1")], r#"{"id":1}"#)
//! }
//! async fn update(cache: CacheHandle) -> &'static str {
//!     cache.invalidate_tag("product:1").await;
//!     "ok"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/products/1", get(product).put(update))
//!     .layer(HttpCacheLayer::new(cache));
//! # drop(app); Ok(()) }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
#![deny(unreachable_pub)]

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod generic;
pub mod http;
mod rate_log;

pub use generic::{CacheLayer, CacheService};
#[cfg(feature = "axum")]
pub use http::MissingCacheHandle;
pub use http::{
    CacheBody, CacheHandle, CachedResponse, HttpCache, HttpCacheLayer, ResponseCodec,
    TooManyHeaders,
};

/// The boxed error of the generic layer (as in tower's own middleware).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
