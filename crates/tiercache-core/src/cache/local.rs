//! The local tier and its entries. Each entry carries its own deadlines,
//! checked on a hit against the cache's [`Clock`](crate::clock::Clock) (a
//! TSC read, quanta, outside tests); moka's single TTL, on moka's own clock,
//! only bounds how long an expired entry lingers before it is dropped.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::clock::Instant;

use super::config::MAX_LIFE;
use crate::envelope::Times;
use crate::key::{KeyHash, KeyHashBuilder, TagHash};
use crate::stats::Stats;

/// One local entry: the decoded value behind an `Arc`, so a hit copies a
/// pointer and decodes nothing.
///
/// Stored by value in moka, which clones it on every hit: every field is
/// `Copy` or an `Arc`, and untagged entries without refresh-ahead carry no
/// `Arc` but the value's, so a hit costs one reference-count increment.
pub(crate) struct LocalData<V> {
    pub(crate) value: Option<Arc<V>>,
    pub(crate) written_ms: u64,
    /// `written_ms` on the local clock, for ages without a wall-clock read.
    pub(crate) written: Instant,
    /// Refresh-ahead point, when refresh-ahead is on.
    pub(crate) soft: Option<Instant>,
    /// Fresh until here.
    pub(crate) fresh: Instant,
    /// Kept (for stale serving) until here; equal to `fresh` without grace.
    pub(crate) stale: Instant,
    pub(crate) tags: Option<Arc<[TagHash]>>,
    pub(crate) weight: u32,
    /// Set once a refresh-ahead has been started (only with a soft TTL).
    pub(crate) refreshing: Option<Arc<AtomicBool>>,
}

pub(crate) type LocalEntry<V> = LocalData<V>;

impl<V> Clone for LocalData<V> {
    fn clone(&self) -> Self {
        self.with_value(self.value.clone())
    }
}

impl<V> LocalData<V> {
    /// This entry's deadlines, tags and flags around another `value` (a
    /// thread's copy of this one).
    pub(crate) fn with_value(&self, value: Option<Arc<V>>) -> Self {
        Self {
            value,
            written_ms: self.written_ms,
            written: self.written,
            soft: self.soft,
            fresh: self.fresh,
            stale: self.stale,
            tags: self.tags.clone(),
            weight: self.weight,
            refreshing: self.refreshing.clone(),
        }
    }
}
/// Synchronous moka: a local hit never awaits, so the HTTP layer can answer
/// it inside `Service::call` ([`Cache::get_local`](crate::Cache::get_local)).
pub(crate) type LocalTier<V> = moka::sync::Cache<KeyHash, LocalEntry<V>, KeyHashBuilder>;

/// The local tier: at most `capacity` bytes of entries (each weighs its
/// encoded size plus its overhead, [`LocalData::weight`]), evictions for
/// size counted in `stats`. Entries expire by their own deadlines; moka
/// drops one at the latest `linger` after it was written (the longest an
/// entry can live: its TTL and grace).
pub(crate) fn tier<V: Send + Sync + 'static>(
    capacity: u64,
    linger: Duration,
    stats: Arc<Stats>,
) -> LocalTier<V> {
    moka::sync::Cache::builder()
        .max_capacity(capacity)
        .weigher(|_: &KeyHash, e: &LocalData<V>| e.weight)
        .time_to_live(linger)
        .eviction_listener(move |_, _, cause| {
            if cause == moka::notification::RemovalCause::Size {
                stats.evictions(1);
            }
        })
        .build_with_hasher(KeyHashBuilder)
}

impl<V> LocalData<V> {
    /// A local entry for shared-tier `times`, living no longer than `cap`
    /// from now (the local TTL, or the unsynced bound while the bus is down).
    /// `now` and `now_ms` are the same moment on the cache's clock,
    /// monotonic and wall.
    pub(crate) fn new(
        value: Option<Arc<V>>,
        times: Times,
        now: Instant,
        now_ms: u64,
        cap: Duration,
        tags: Box<[TagHash]>,
        weight: usize,
    ) -> Self {
        // `times` may come from the shared tier (any bytes at all) or from
        // a TTL an origin chose: each span is clamped before it touches the
        // clock, so no value can overflow an `Instant`.
        let at = |ms: u64| {
            let ahead = Duration::from_millis(ms.saturating_sub(now_ms)).min(MAX_LIFE * 2);
            now.checked_add(ahead).unwrap_or(now)
        };
        let fresh = at(times.fresh_ms).min(now.checked_add(cap.min(MAX_LIFE)).unwrap_or(now));
        let soft = (times.soft_ms < times.fresh_ms).then(|| at(times.soft_ms).min(fresh));
        let stale = at(times.stale_ms).max(fresh);
        let age = Duration::from_millis(now_ms.saturating_sub(times.written_ms)).min(MAX_LIFE);
        Self {
            value,
            written_ms: times.written_ms,
            written: now.checked_sub(age).unwrap_or(now),
            soft,
            fresh,
            stale,
            tags: (!tags.is_empty()).then(|| Arc::from(tags)),
            weight: u32::try_from(weight.saturating_add(96)).unwrap_or(u32::MAX),
            refreshing: soft.map(|_| Arc::new(AtomicBool::new(false))),
        }
    }
}
