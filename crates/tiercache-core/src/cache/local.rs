//! The local tier and its entries. Each entry carries its own deadlines,
//! checked on a hit against the cache's [`Clock`](crate::clock::Clock) (a
//! TSC read, quanta, outside tests); moka's single TTL, on moka's own clock,
//! only bounds how long an expired entry lingers before it is dropped.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::clock::Instant;

use super::config::MAX_LIFE;
use super::fence::Generations;
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
    /// The soft-clear generation of the load that filled it: fresh only
    /// while it is the current one (see `Fence::soft_clear`). In the
    /// padding after `weight`, so it costs no memory.
    pub(crate) generation: u32,
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
            generation: self.generation,
            refreshing: self.refreshing.clone(),
        }
    }
}
/// Synchronous moka: a local hit never awaits, so the HTTP layer can answer
/// it inside `Service::call` ([`Cache::get_local`](crate::Cache::get_local)).
pub(crate) type LocalTier<V> = moka::sync::Cache<KeyHash, LocalEntry<V>, KeyHashBuilder>;

/// The wall-clock time `ms` as a deadline on the monotonic clock, given
/// that `now` and `now_ms` are the same moment. `ms` may come from the
/// shared tier (any bytes at all) or from a TTL an origin chose: the span is
/// clamped before it touches the clock, so no value can overflow an
/// `Instant`; a time already past is `now`.
pub(crate) fn deadline(now: Instant, now_ms: u64, ms: u64) -> Instant {
    let ahead = Duration::from_millis(ms.saturating_sub(now_ms)).min(MAX_LIFE * 2);
    now.checked_add(ahead).unwrap_or(now)
}

/// What an entry costs in memory beyond its value's encoded bytes: moka's
/// own bookkeeping for it (its node, deque entries, the key), this entry's
/// fields, the value's `Arc` and the allocator's headers. Measured by
/// `benches/memory.rs` (about 500 bytes in use per entry with the engine's
/// configuration of moka, about 380 for moka holding an `Arc` under a `u64`
/// with no TTL and no weigher), so that `local_capacity` bounds resident
/// memory rather than a fraction of it.
pub(crate) const ENTRY_OVERHEAD: usize = 512;

/// The local tier: at most `capacity` bytes of entries (each weighs its
/// encoded size plus [`ENTRY_OVERHEAD`], [`LocalData::weight`]), evictions for
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
        // Not sized up front (`initial_capacity`): a table sized for the
        // capacity spreads a small working set over more memory than the
        // CPU's caches hold, and a local hit took 1.7x raw moka's time
        // instead of 1.1x (`benches/local_hit.rs`); a fresh instance pays
        // for the table's growth once instead.
        .weigher(|_: &KeyHash, e: &LocalData<V>| e.weight)
        .time_to_live(linger)
        // The listener makes moka take a per-key lock on every insert: a
        // third of what moka's fill alone costs (`benches/shared_hit.rs`),
        // but no difference in W2 itself (alternated A/B of the binaries,
        // 3 runs each), while without it the 1 KiB memory case held 3.5 MiB
        // more resident at the same live heap. Kept, and exact.
        .eviction_listener(move |_, _, cause| {
            if cause == moka::notification::RemovalCause::Size {
                stats.evictions(1);
            }
        })
        .build_with_hasher(KeyHashBuilder)
}

impl<V> LocalData<V> {
    /// Until when this entry is fresh, given the soft-clear `generations`
    /// that are fresh: a soft clear (or a park) since it was filled makes it
    /// stale now (its write time is never later than now).
    #[inline]
    pub(crate) fn fresh_until(&self, generations: Generations) -> Instant {
        if generations.admits(self.generation) {
            self.fresh
        } else {
            self.written.min(self.fresh)
        }
    }

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
        let at = |ms: u64| deadline(now, now_ms, ms);
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
            weight: u32::try_from(weight.saturating_add(ENTRY_OVERHEAD)).unwrap_or(u32::MAX),
            generation: 0,
            refreshing: soft.map(|_| Arc::new(AtomicBool::new(false))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::clock::{Clock, MockClock};

    const HOUR: Duration = Duration::from_secs(3600);

    /// One moment on `clock`, monotonic and wall, as the engine reads it.
    fn moment(clock: &MockClock) -> (Instant, u64) {
        let c = Clock::Mock(clock.clone());
        (c.now(), c.wall_ms())
    }

    fn times(written_ms: u64, soft_ms: u64, fresh_ms: u64, stale_ms: u64) -> Times {
        Times {
            written_ms,
            soft_ms,
            fresh_ms,
            stale_ms,
        }
    }

    fn entry(times: Times, now: Instant, now_ms: u64, cap: Duration) -> LocalData<String> {
        LocalData::new(
            Some(Arc::new("v".to_owned())),
            times,
            now,
            now_ms,
            cap,
            Box::new([]),
            10,
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_are_the_stored_times_on_the_local_clock() {
        let clock = MockClock::new();
        let (now, now_ms) = moment(&clock);
        let e = entry(
            times(now_ms, now_ms + 100, now_ms + 1000, now_ms + 5000),
            now,
            now_ms,
            HOUR,
        );
        assert_eq!(e.written, now);
        assert_eq!(e.soft, Some(now + ms(100)));
        assert_eq!(e.fresh, now + ms(1000));
        assert_eq!(e.stale, now + ms(5000));
        assert_eq!(e.written_ms, now_ms);
        // Read as the engine does (`now < fresh`), on the clock as it moves.
        let c = Clock::Mock(clock.clone());
        clock.advance(ms(999));
        assert!(c.now() < e.fresh, "fresh for its last millisecond");
        clock.advance(ms(1));
        assert!(c.now() >= e.fresh, "expired at its deadline");
        assert!(c.now() < e.stale, "still within grace");
        tokio::time::sleep(ms(4000)).await;
        assert!(c.now() >= e.stale, "tokio's paused time moves it too");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_bounds_freshness_and_the_refresh_point() {
        let clock = MockClock::new();
        let (now, now_ms) = moment(&clock);
        // While the bus is down: at most the unsynced bound, here 200 ms.
        let e = entry(
            times(now_ms, now_ms + 500, now_ms + 1000, now_ms + 5000),
            now,
            now_ms,
            ms(200),
        );
        assert_eq!(e.fresh, now + ms(200));
        assert_eq!(e.soft, Some(e.fresh), "never after the capped freshness");
        assert_eq!(e.stale, now + ms(5000), "grace is not cut by the cap");
        // Grace shorter than the cap: stale is never before fresh.
        let e = entry(times(now_ms, 0, now_ms + 1000, now_ms), now, now_ms, HOUR);
        assert_eq!(e.stale, e.fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_entry_is_aged_and_a_past_deadline_is_already_over() {
        let (now, now_ms) = moment(&MockClock::new());
        let e = entry(
            times(now_ms - 3000, now_ms - 2000, now_ms - 1, now_ms - 1),
            now,
            now_ms,
            HOUR,
        );
        assert_eq!(now.duration_since(e.written), ms(3000), "written 3 s ago");
        assert_eq!(e.fresh, now, "expired before it was read: not fresh");
        assert!(now >= e.fresh);
        assert_eq!(e.stale, now);
        // Written "later" than now (another machine's clock ahead): age 0.
        let e = entry(
            times(now_ms + 60_000, 0, now_ms + 90_000, 0),
            now,
            now_ms,
            HOUR,
        );
        assert_eq!(e.written, now);
        assert_eq!(e.fresh, now + ms(90_000));
    }

    #[test]
    fn times_from_outside_cannot_overflow_the_clock() {
        let c = Clock::System;
        let (now, now_ms) = (c.now(), c.wall_ms());
        for t in [
            times(0, u64::MAX - 1, u64::MAX, u64::MAX),
            times(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
            times(0, 0, 0, u64::MAX),
        ] {
            for cap in [Duration::ZERO, HOUR, Duration::MAX] {
                let e = entry(t, now, now_ms, cap);
                assert!(e.fresh <= now + MAX_LIFE, "{t:?} {cap:?}");
                assert!(e.stale >= e.fresh && e.stale <= now + MAX_LIFE * 2);
                assert!(e.soft.is_none_or(|s| s <= e.fresh));
                assert!(e.written <= now);
            }
        }
    }

    #[test]
    fn refresh_ahead_only_when_the_soft_point_comes_first() {
        let (now, now_ms) = (Clock::System.now(), 1_000_000);
        let (fresh_ms, cap) = (now_ms + 1000, HOUR);
        let e = entry(
            times(now_ms, fresh_ms, fresh_ms, fresh_ms),
            now,
            now_ms,
            cap,
        );
        assert!(e.soft.is_none() && e.refreshing.is_none(), "no soft TTL");
        let e = entry(
            times(now_ms, now_ms + 10, fresh_ms, fresh_ms),
            now,
            now_ms,
            cap,
        );
        assert_eq!(e.soft, Some(now + ms(10)));
        let flag = e.refreshing.as_ref().expect("a refresh flag");
        assert!(!flag.load(Ordering::Acquire), "no refresh started yet");
    }

    #[test]
    fn weight_tags_and_copies() {
        let (now, now_ms) = (Clock::System.now(), 1_000_000);
        let t = times(now_ms, now_ms + 10, now_ms + 1000, now_ms + 1000);
        let untagged = entry(t, now, now_ms, HOUR);
        assert_eq!(
            untagged.weight as usize,
            10 + ENTRY_OVERHEAD,
            "its size and the overhead"
        );
        assert!(untagged.tags.is_none(), "no tags: no allocation");
        let huge: LocalData<String> = LocalData::new(
            None,
            t,
            now,
            now_ms,
            HOUR,
            Box::new([TagHash(1)]),
            usize::MAX,
        );
        assert_eq!(huge.weight, u32::MAX, "saturates");
        assert_eq!(huge.tags.as_deref(), Some(&[TagHash(1)][..]));
        // A thread's copy: the same deadlines and flag around another value.
        let other = Arc::new("copy".to_owned());
        let copy = untagged.with_value(Some(Arc::clone(&other)));
        assert!(Arc::ptr_eq(copy.value.as_ref().unwrap(), &other));
        assert_eq!(
            (
                copy.written,
                copy.soft,
                copy.fresh,
                copy.stale,
                copy.weight,
                copy.written_ms
            ),
            (
                untagged.written,
                untagged.soft,
                untagged.fresh,
                untagged.stale,
                untagged.weight,
                untagged.written_ms
            )
        );
        assert!(Arc::ptr_eq(
            copy.refreshing.as_ref().unwrap(),
            untagged.refreshing.as_ref().unwrap()
        ));
        // A clone shares the value itself.
        let clone = untagged.clone();
        assert!(Arc::ptr_eq(
            clone.value.as_ref().unwrap(),
            untagged.value.as_ref().unwrap()
        ));
    }

    #[test]
    fn the_tier_is_bounded_by_weight_and_counts_only_size_evictions() {
        let stats = Arc::new(Stats::new("local-unit"));
        let t: LocalTier<String> = tier(15_000, HOUR, Arc::clone(&stats));
        let (now, now_ms) = (Clock::System.now(), 1_000_000);
        let fill = |k: u128| {
            let e = LocalData::new(
                Some(Arc::new(k.to_string())),
                times(now_ms, 0, now_ms + 60_000, now_ms + 60_000),
                now,
                now_ms,
                HOUR,
                Box::new([]),
                1000 - ENTRY_OVERHEAD,
            );
            assert_eq!(e.weight, 1000);
            t.insert(KeyHash(k), e);
        };
        for k in 0..50 {
            fill(k);
        }
        t.run_pending_tasks();
        assert!(t.weighted_size() <= 15_000, "{}", t.weighted_size());
        assert!(t.entry_count() <= 15, "{}", t.entry_count());
        let evicted = stats.snapshot().evictions;
        assert_eq!(
            evicted,
            50 - t.entry_count(),
            "every entry dropped for size is counted"
        );
        // Removed by the engine (an invalidation): not an eviction.
        let kept = (0..50).find(|k| t.contains_key(&KeyHash(*k))).unwrap();
        t.invalidate(&KeyHash(kept));
        t.run_pending_tasks();
        assert_eq!(stats.snapshot().evictions, evicted);
    }
}
