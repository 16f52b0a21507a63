//! The tiercache engine: a two-tier cache (moka in process, a shared tier such
//! as Redis behind it) that keeps the origin safe from penetration, stampedes
//! and avalanches and keeps every instance's copy honest.
//!
//! ```
//! use std::time::Duration;
//! use tiercache_core::Cache;
//!
//! # #[derive(serde::Serialize, serde::Deserialize)]
//! # struct Product { id: u64, name: String }
//! # async fn db_find(id: u64) -> Option<Product> { Some(Product { id, name: "lamp".into() }) }
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The embedded default: a local tier plus an in-process shared tier and
//! // bus. Give it `.shared_tier(..)` and `.bus(..)` (Redis, NATS) to share.
//! let products: Cache<u64, Product> = Cache::builder("products")
//!     .ttl(Duration::from_secs(300))
//!     .ttl_jitter(0.1)
//!     .negative_ttl(Duration::from_secs(30))
//!     .build()?;
//!
//! // One origin call per key per process, however many callers miss at once.
//! let p = products.get_or_load(&42, || db_find(42)).await?;
//! assert_eq!(p.map(|p| p.id), Some(42));
//!
//! // After a write: drop it here, in the shared tier and on every instance.
//! products.invalidate(&42).await;
//! # Ok(()) }
//! ```
//!
//! # The read path
//!
//! [`Cache::fetch`] (and its shorthands [`get_or_load`](Cache::get_or_load),
//! [`try_get_or_load`](Cache::try_get_or_load),
//! [`get_many_or_load`](Cache::get_many_or_load)):
//!
//! 1. **Local tier** (moka, bounded by bytes, per-entry expiry) holding
//!    `Arc<V>`: a hit formats and hashes the key on the stack and returns a
//!    clone of the `Arc`; nothing awaits, so middleware can answer it inside
//!    `Service::call` ([`Cache::get_local`], [`Cache::with_local`]). Each
//!    thread keeps copies of the few entries it reads most, valid until
//!    anything changes their key, so a hot key is served without moka's
//!    per-read bookkeeping or any write to memory another core reads.
//! 2. **Bloom guard** (opt-in, [`BloomGuardConfig`]): a definite "absent"
//!    answers without the shared tier or the origin.
//! 3. **Shared tier** ([`SharedTier`](backend::SharedTier)): a hit is decoded and copied into the
//!    local tier for no longer than its remaining life; undecodable bytes are
//!    a miss, deleted and counted.
//! 4. **Singleflight**: one load per key per process, in its own task; across
//!    instances a lease lets one load while the others wait briefly.
//! 5. **Fill** with a jittered TTL; `None` is cached as a negative entry with
//!    its own TTL; errors are never cached. Refresh-ahead, grace (stale on
//!    error) and soft/hard load timeouts are builder settings.
//!
//! # The write path and consistency
//!
//! [`Cache::invalidate`], [`Cache::invalidate_tag`]: delete in the shared
//! tier, evict locally, publish an [`Invalidation`](backend::Invalidation) on
//! the [`Bus`](backend::Bus). A load that began before an invalidation of its
//! key or tag does not fill either tier (fill tickets in the shared tier, a
//! fence locally). A bus that drops, goes silent or skips a sequence number
//! makes the cache flush and cap its local tier.
//!
//! # For backend implementors
//!
//! A crate that implements a shared tier or a bus (Redis, NATS), or that
//! publishes invalidations without a cache (a sidecar), finds what it needs
//! in [`backend`]: the traits, their events and errors, the in-process
//! implementations, the bus message and its codec, the key format and the
//! conformance suites. The crate root keeps what an application uses:
//! [`Cache`] and its [`CacheBuilder`], what a lookup returns ([`Entry`],
//! [`Fetched`], [`Outcome`], [`Tier`], [`LocalHit`]), the errors ([`Error`],
//! [`ConfigError`], [`NotStored`]), value codecs ([`Codec`], [`Postcard`],
//! [`RawBytes`], with [`DecodeError`] and [`EncodeError`]), keys
//! ([`CacheKey`], [`ShowKey`]), [`BloomGuardConfig`], [`CacheStats`],
//! [`Applied`], [`embedded_shared_tier`] and [`embedded_bus`].
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
#![deny(unreachable_pub)]

pub mod backend;
mod bloom;
mod bus;
mod cache;
mod clock;
mod codec;
// Crate-private: `fuzz_targets::envelope_format` re-exports the little that
// tests and fuzz targets outside need, to plant stored values.
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(unreachable_pub))]
mod envelope;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz_targets;
mod key;
mod message;
mod shared;
mod stats;
mod sync_shim;

pub use bloom::BloomGuardConfig;
pub use cache::{
    Applied, Cache, CacheBuilder, ClearMode, DEFAULT_STALENESS_BOUND, Entry, Fetched, LocalHit,
    MIN_STALENESS_BOUND, Outcome, Tier, embedded_bus, embedded_shared_tier,
};
#[cfg(feature = "config")]
pub use cache::{CONFIG_SETTINGS, CacheConfig, ConfigFileError};
pub use codec::{Codec, Postcard, RawBytes};
pub use error::{ConfigError, DecodeError, EncodeError, Error, NotStored};
pub use key::{CacheKey, ShowKey};
pub use stats::CacheStats;

/// A clock tests drive (the `test-util` feature); not an API.
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub use clock::MockClock;

#[cfg(test)]
mod conformance_tests {
    #[tokio::test]
    async fn in_process_shared_tier_conforms() {
        crate::backend::conformance::shared_tier(&crate::backend::InProcessSharedTier::default())
            .await;
    }

    #[tokio::test]
    async fn in_process_bus_conforms() {
        let bus = crate::backend::InProcessBus::new();
        crate::backend::conformance::bus_with_heartbeat(
            &bus,
            &bus.clone(),
            std::time::Duration::from_secs(2),
        )
        .await;
    }
}
