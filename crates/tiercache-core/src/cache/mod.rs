//! The cache engine, one idea per file:
//!
//! - [`types`]: the public types of a lookup ([`Entry`], [`Fetched`], ...);
//! - [`api`]: the [`Cache`] face users call, handing work to the engine;
//! - [`read`]: the local tier, then the shared tier;
//! - [`load`]: the miss path, singleflight ([`flight`]), leases, batches;
//! - [`fill`]: writes to both tiers, under fill tickets and the [`fence`];
//! - [`invalidate`]: shared tier, local tier, bus, in that order;
//! - [`clear`]: a whole namespace at once, by its clear epochs;
//! - [`coherence`]: the bus listener (liveness, gaps, origins, trust);
//! - [`build`]: the engine assembled from the builder ([`config`]).
//!
//! This file holds the engine's state ([`Inner`]) and what every part of it
//! shares.

mod api;
mod batch;
mod build;
mod clear;
mod coherence;
mod config;
#[cfg(feature = "config")]
mod config_file;
mod epochs;
mod fence;
mod fill;
mod flight;
mod hot;
mod invalidate;
mod load;
mod local;
#[cfg(all(test, tiercache_loom))]
mod loom_tests;
mod outbox;
mod read;
mod scratch;
mod types;

pub use config::{
    CacheBuilder, DEFAULT_STALENESS_BOUND, MIN_STALENESS_BOUND, embedded_bus, embedded_shared_tier,
};
#[cfg(feature = "config")]
pub use config_file::{CacheConfig, ConfigFileError, SETTINGS as CONFIG_SETTINGS};
pub use types::{Applied, ClearMode, Entry, Fetched, LocalHit, Outcome, Tier};

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

use crate::bloom::BloomGuard;
use crate::bus::Bus;
use crate::clock::Clock;
use crate::codec::Codec;
use crate::envelope::Times;
use crate::error::SharedError;
use crate::key::{KeyFormat, KeyHash, TagHash};
use crate::message::MessageCodec;
use crate::shared::SharedTier;
use crate::stats::{BusState, SharedErrorKind, Stats};

use config::Config;
use fence::Fence;
use flight::Flights;
use hot::HotSlots;
use local::LocalTier;
use outbox::Outbox;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the whole local tier was dropped (the `reason` label of
/// `tiercache_local_flush_reasons_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushReason {
    Requested,
    Cleared,
    SharedFailover,
    BusEnded,
    BusHeardAgain,
    SequenceGap,
    BusReconnected,
    MessagesDropped,
    OriginSilent,
}

impl FlushReason {
    /// Every reason (each is registered at 0 when a cache is built, so a
    /// scrape shows the series before the first flush).
    const ALL: [FlushReason; 9] = [
        FlushReason::Requested,
        FlushReason::Cleared,
        FlushReason::SharedFailover,
        FlushReason::BusEnded,
        FlushReason::BusHeardAgain,
        FlushReason::SequenceGap,
        FlushReason::BusReconnected,
        FlushReason::MessagesDropped,
        FlushReason::OriginSilent,
    ];

    fn as_str(self) -> &'static str {
        match self {
            FlushReason::Requested => "requested",
            FlushReason::Cleared => "cleared",
            FlushReason::SharedFailover => "shared_tier_reconnected_or_failed_over",
            FlushReason::BusEnded => "bus_subscription_ended",
            FlushReason::BusHeardAgain => "bus_heard_after_silence",
            FlushReason::SequenceGap => "sequence_gap",
            FlushReason::BusReconnected => "bus_reconnected",
            FlushReason::MessagesDropped => "messages_dropped",
            FlushReason::OriginSilent => "origin_silent",
        }
    }
}

impl LocalMode {
    /// The bus state this mode stands for (for the `tiercache_bus_state`
    /// gauge).
    pub(crate) fn bus_state(self) -> BusState {
        match self {
            LocalMode::Trusted => BusState::Live,
            LocalMode::Capped => BusState::Disconnected,
            LocalMode::Bypass => BusState::Silent,
        }
    }
}

/// Whether the local tier may be trusted (hot path reads one atomic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LocalMode {
    /// The bus is live: the local tier is read and filled normally.
    Trusted = 0,
    /// The bus is down: reads go on, fills live at most the staleness bound (`unsynced_ttl`).
    Capped = 1,
    /// The bus went silent: the local tier is not read at all.
    Bypass = 2,
}

/// A two-tier cache in front of an origin. Cheap to clone (an `Arc`).
///
/// See the [crate docs](crate) for the read and write paths.
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.config.namespace)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

pub(crate) struct Inner<K, V> {
    pub(crate) config: Config,
    pub(crate) keys: KeyFormat,
    pub(crate) local: Option<LocalTier<V>>,
    /// Per-thread copies of hot local entries (see [`hot`]).
    hot: HotSlots<V>,
    pub(crate) shared: Option<Arc<dyn SharedTier>>,
    /// Reads of `shared`, batched while others are in flight (see [`batch`]).
    reads: Option<Arc<batch::ReadBatch>>,
    pub(crate) bus: Option<Arc<dyn Bus>>,
    codec: Arc<dyn Codec<V>>,
    flights: Arc<Flights<V>>,
    pub(crate) fence: Fence,
    /// The namespace's clear epochs as this instance knows them (see
    /// [`clear`]).
    pub(crate) epochs: clear::KnownEpochs,
    pub(crate) bloom: Option<BloomGuard>,
    pub(crate) stats: Arc<Stats>,
    mode: AtomicU8,
    pub(crate) instance: u64,
    /// Publishes invalidations in order (with the bus).
    outbox: Option<Outbox>,
    last_publish_log_ms: AtomicU64,
    pub(crate) messages: MessageCodec,
    last_shared_log_ms: AtomicU64,
    last_tags_log_ms: AtomicU64,
    tag_index: std::sync::Mutex<HashMap<TagHash, Vec<KeyHash>>>,
    pub(crate) applied: tokio::sync::broadcast::Sender<Applied>,
    _key: PhantomData<fn(K)>,
}

impl<K, V> Inner<K, V> {
    /// Where this cache reads the time (see [`crate::clock`]).
    #[inline]
    pub(crate) fn clock(&self) -> &Clock {
        &self.config.clock
    }

    /// An answer found outside the local tier: its age is read from the
    /// wall clock when asked.
    pub(super) fn answer(
        &self,
        value: Option<Arc<V>>,
        outcome: Outcome,
        written_ms: u64,
    ) -> Fetched<V> {
        Fetched {
            value,
            outcome,
            written_ms,
            age: None,
            clock: self.clock().clone(),
        }
    }
}

/// Whether a warning rate-limited by `last` (the time it was last logged)
/// is due: at most one per [`LOG_EVERY_MS`], however many threads ask.
fn log_due(clock: &Clock, last: &AtomicU64) -> bool {
    let now = clock.wall_ms();
    let seen = last.load(Ordering::Relaxed);
    now.saturating_sub(seen) >= LOG_EVERY_MS
        && last
            .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// The interval of rate-limited warnings.
const LOG_EVERY_MS: u64 = 10_000;

fn jittered(base: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return base;
    }
    let f = 1.0 - jitter * rand::rng().random::<f64>();
    base.mul_f64(f).max(Duration::from_millis(1))
}

/// What the shared tier had for a key.
enum SharedFind<V> {
    Fresh(Decoded<V>),
    Stale(Decoded<V>),
    Miss,
}

struct Decoded<V> {
    value: Option<Arc<V>>,
    times: Times,
    tags: Box<[TagHash]>,
    weight: usize,
}

impl<K, V> Inner<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    pub(crate) fn shared_error(&self, e: &SharedError) {
        let kind = match e {
            SharedError::Timeout => SharedErrorKind::Timeout,
            SharedError::BreakerOpen => SharedErrorKind::BreakerOpen,
            SharedError::Unavailable(_) => SharedErrorKind::Unavailable,
            SharedError::Server(_) => SharedErrorKind::Server,
        };
        self.stats.shared_errors(kind, 1);
        if log_due(self.clock(), &self.last_shared_log_ms) {
            tracing::warn!(
                ns = %self.config.namespace,
                error = %e,
                total_errors = self.stats.snapshot().shared_errors,
                "shared tier failing; serving from the local tier and the origin"
            );
        }
    }
}
