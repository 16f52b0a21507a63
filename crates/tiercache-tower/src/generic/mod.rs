//! A caching layer for any [`Service`](tower_service::Service).
//!
//! The response of the inner service is cached in a
//! [`Cache<String, Resp>`](tiercache_core::Cache) under a key computed from
//! the request. A request whose key function answers `None` goes straight to
//! the inner service.
//!
//! - One call of the inner service per key per process, however many
//!   requests miss at once (the engine's singleflight); across instances the
//!   engine's leases apply.
//! - A service error is never cached. The request whose call failed gets the
//!   service's own error (boxed, so it can be downcast); requests that waited
//!   for that call get the engine's [`Error::Load`](tiercache_core::Error)
//!   (its source names the failure).
//! - Tags come from an optional `Fn(&Resp) -> Vec<String>`; a response the
//!   optional negative predicate accepts is cached for the negative TTL only.
//!
//! `poll_ready` is honoured: the ready inner service is the one called (the
//! service is cloned and the clone swapped in, as tower's own middleware do).
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tiercache_core::Cache;
//! use tiercache_tower::CacheLayer;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let cache: Cache<String, String> = Cache::builder("greetings").build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         CacheLayer::new(cache, |name: &String| Some(format!("hello:{name}")))
//!             .tags(|_greeting: &String| vec!["greetings".to_owned()]),
//!     )
//!     .service(service_fn(|name: String| async move {
//!         Ok::<_, Infallible>(format!("hello, {name}"))
//!     }));
//! let answer = svc.oneshot("ada".to_owned()).await?;
//! assert_eq!(answer, "hello, ada");
//! # Ok(()) }
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::CacheLayer;
pub use service::CacheService;
