//! tiercache: cache-aside middleware for Rust services. A two-tier cache (moka
//! in process, Redis shared) that guards the origin against penetration,
//! stampedes and avalanches, and propagates invalidations to every instance.
//!
//! This facade re-exports the member crates behind features: `core` always;
//! `redis`, `nats` and `tower` behind features of those names (`full` for all).
//!
//! ```
//! use std::time::Duration;
//! use tiercache::core::Cache;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let users: Cache<u64, String> = Cache::builder("users")
//!     .ttl(Duration::from_secs(60))
//!     .build()?;
//! let name = users.get_or_load(&7, || async { Some("ada".to_string()) }).await?;
//! assert_eq!(name.as_deref().map(String::as_str), Some("ada"));
//! # Ok(()) }
//! ```
#![deny(unreachable_pub)]

/// The engine: [`Cache`](tiercache_core::Cache), the tier and bus traits, the
/// embedded in-process implementations.
pub use tiercache_core as core;

/// The shared tier and a pub/sub bus on Redis (standalone, Sentinel, Cluster).
#[cfg(feature = "redis")]
pub use tiercache_redis as redis;

/// The invalidation bus on NATS (core subjects or JetStream).
#[cfg(feature = "nats")]
pub use tiercache_nats as nats;

/// tower layers: a generic service cache and an HTTP response cache.
#[cfg(feature = "tower")]
pub use tiercache_tower as tower;
