//! The local tier's entries and their expiry.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::envelope::Times;
use crate::key::{KeyHash, TagHash};

/// One local entry: the decoded value behind an `Arc`, so a hit copies a
/// pointer and decodes nothing.
pub(crate) struct LocalData<V> {
    pub(crate) value: Option<Arc<V>>,
    pub(crate) written_ms: u64,
    /// Refresh-ahead point, when refresh-ahead is on.
    pub(crate) soft: Option<Instant>,
    /// Fresh until here.
    pub(crate) fresh: Instant,
    /// Kept (for stale serving) until here; equal to `fresh` without grace.
    pub(crate) stale: Instant,
    /// Whether a hit must read the clock (soft or grace in play); without
    /// either, moka's own expiry at `fresh` is the whole check.
    pub(crate) needs_clock: bool,
    pub(crate) tags: Box<[TagHash]>,
    pub(crate) weight: u32,
    pub(crate) refreshing: AtomicBool,
}

pub(crate) type LocalEntry<V> = Arc<LocalData<V>>;
pub(crate) type LocalTier<V> = moka::future::Cache<KeyHash, LocalEntry<V>>;

pub(crate) struct LocalExpiry;

impl<V> Expiry<KeyHash, LocalEntry<V>> for LocalExpiry {
    fn expire_after_create(
        &self,
        _: &KeyHash,
        v: &LocalEntry<V>,
        now: Instant,
    ) -> Option<Duration> {
        Some(v.stale.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _: &KeyHash,
        v: &LocalEntry<V>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.stale.saturating_duration_since(now))
    }
}

impl<V> LocalData<V> {
    /// A local entry for shared-tier `times`, living no longer than `cap`
    /// from now (the local TTL, or the unsynced bound while the bus is down).
    pub(crate) fn new(
        value: Option<Arc<V>>,
        times: Times,
        now_ms: u64,
        cap: Duration,
        tags: Box<[TagHash]>,
        weight: usize,
    ) -> Self {
        let now = Instant::now();
        let at = |ms: u64| now + Duration::from_millis(ms.saturating_sub(now_ms));
        let fresh = match now.checked_add(cap) {
            Some(limit) => at(times.fresh_ms).min(limit),
            None => at(times.fresh_ms),
        };
        let soft = (times.soft_ms < times.fresh_ms).then(|| at(times.soft_ms).min(fresh));
        let stale = at(times.stale_ms).max(fresh);
        Self {
            value,
            written_ms: times.written_ms,
            soft,
            fresh,
            stale,
            needs_clock: soft.is_some() || stale > fresh,
            tags,
            weight: u32::try_from(weight.saturating_add(96)).unwrap_or(u32::MAX),
            refreshing: AtomicBool::new(false),
        }
    }
}
