//! The local half of the fill-race rule: a load that began before an
//! invalidation of its key or one of its tags must not fill the local tier.
//!
//! Every invalidation takes the next value of a clock and records it against
//! the key (or tag); a load remembers the clock when it began. A fill checks,
//! *before* inserting, whether anything it depends on was invalidated since
//! it began, and then stores nothing ([`Fence::admit`]). The check and the
//! insert happen under the fence's gate (read side), which recording an
//! invalidation takes (write side): no invalidation is recorded between a
//! fill's check and its insert. Invalidation records first and evicts
//! second, so whichever order the two race in, the stale entry is gone, and
//! one overtaken by an invalidation already recorded is never visible at
//! all, not even for a moment (a loom model once found that moment, when
//! the check and the insert were not under the gate: a read that began
//! after `invalidate` returned could get the old value). The fill checks
//! again after inserting, which the gate makes redundant; it costs one
//! atomic load.
//!
//! Records are kept for `retention` (longer than the hard load timeout), and a
//! load older than that never fills, so the maps stay small.
//!
//! The records also remember the wall-clock time of each invalidation, for
//! the shared half: an entry read from the shared tier that was written
//! before an invalidation this instance has applied is older than that
//! invalidation ([`Fence::superseded`]), whatever the shared tier says. The
//! shared tier can hold one when the invalidation's delete failed there (a
//! hung or unreachable Redis) and is still being retried.

use std::collections::HashMap;
use std::time::Duration;

use crate::clock::{Clock, Instant};

use crate::key::{KeyHash, TagHash};
use crate::sync_shim::Ordering::{Acquire, SeqCst};
use crate::sync_shim::{AtomicU64, Mutex, MutexGuard, RwLock};

pub(crate) struct Fence {
    clock: AtomicU64,
    all: AtomicU64,
    /// The generations a local entry is fresh in (see
    /// [`Fence::generations`]): the current one in the low 32 bits, and
    /// one revived by [`Fence::revive`] in the high 32 (equal to the
    /// current one when none is).
    soft: AtomicU64,
    /// The generation parked by [`Fence::park`], plus one (0: none).
    parked: AtomicU64,
    /// The wall-clock ms of the latest key or tag invalidation recorded.
    latest_ms: AtomicU64,
    /// Fills check and insert under the read side; invalidations record
    /// under the write side.
    gate: RwLock<()>,
    records: Mutex<Records>,
    /// Keys and tags whose shared-tier invalidation failed and is being
    /// retried (see [`Fence::hold`]), and how many are held (read without
    /// the lock).
    holds: Mutex<Holds>,
    holding: AtomicU64,
    retention: Duration,
    /// Where the time is read (the cache's clock).
    time: Clock,
}

/// One invalidation: its clock value, when (monotonic), and when (wall
/// clock, ms since the Unix epoch).
type Record = (u64, Instant, u64);

#[derive(Default)]
struct Records {
    keys: HashMap<KeyHash, Record>,
    tags: HashMap<TagHash, Record>,
    /// Prune when the records outnumber this: twice what the last prune
    /// kept, so a burst of invalidations (a bulk update, a writer filling
    /// many keys) costs amortised O(1) each, not a pass over every record.
    prune_over: usize,
}

/// Held keys and tags: how many holds each has, and when the first began.
#[derive(Default)]
struct Holds {
    keys: HashMap<KeyHash, (u32, Instant)>,
    tags: HashMap<TagHash, (u32, Instant)>,
}

/// A hold outlives no retry: the engine gives a shared-tier invalidation
/// up after five minutes.
const HOLD_AT_MOST: Duration = Duration::from_secs(300);

/// Records are never pruned below this many.
const PRUNE_FLOOR: usize = 8192;

/// The soft-clear generations a local entry is fresh in (see
/// [`Fence::generations`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generations {
    /// New loads carry this one.
    pub(crate) current: u32,
    /// Revived after a park (equal to `current` when none is).
    pub(crate) revived: u32,
}

impl Generations {
    /// Whether an entry of generation `g` may be fresh.
    #[inline]
    pub(crate) fn admits(self, g: u32) -> bool {
        g == self.current || g == self.revived
    }
}

/// What a load remembers from when it began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FenceMark {
    at: u64,
    began: Instant,
    /// The soft-clear generation (see [`Fence::soft_clear`]).
    pub(crate) generation: u32,
}

impl Fence {
    pub(crate) fn new(retention: Duration, clock: Clock) -> Self {
        Self {
            clock: AtomicU64::new(0),
            all: AtomicU64::new(0),
            soft: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            latest_ms: AtomicU64::new(0),
            gate: RwLock::new(()),
            records: Mutex::new(Records::default()),
            holds: Mutex::new(Holds::default()),
            holding: AtomicU64::new(0),
            retention,
            time: clock,
        }
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mark(&self) -> FenceMark {
        FenceMark {
            at: self.clock.load(SeqCst),
            began: self.time.now(),
            generation: self.generations().current,
        }
    }

    #[cfg(test)]
    pub(crate) fn invalidate_key(&self, key: KeyHash) {
        self.invalidate_key_at(key, self.time.wall_ms());
    }

    /// Records an invalidation of `key` that happened at `wall` (ms since the
    /// Unix epoch; for [`superseded`](Self::superseded)).
    pub(crate) fn invalidate_key_at(&self, key: KeyHash, wall: u64) {
        let now = self.time.now();
        let _closed = self.close_gate();
        let mut r = self.records();
        let v = self.clock.fetch_add(1, SeqCst) + 1;
        // Keep the later wall time: an older invalidation applied late (a
        // delayed message, a retry replaying its time) must not let values
        // written between the two pass `superseded`.
        let wall = r.keys.get(&key).map_or(wall, |(.., ms)| wall.max(*ms));
        r.keys.insert(key, (v, now, wall));
        self.latest_ms.fetch_max(wall, SeqCst);
        self.prune(&mut r, now);
    }

    #[cfg(test)]
    pub(crate) fn invalidate_tag(&self, tag: TagHash) {
        self.invalidate_tag_at(tag, self.time.wall_ms());
    }

    /// Records an invalidation of `tag` that happened at `wall`.
    pub(crate) fn invalidate_tag_at(&self, tag: TagHash, wall: u64) {
        let now = self.time.now();
        let _closed = self.close_gate();
        let mut r = self.records();
        let v = self.clock.fetch_add(1, SeqCst) + 1;
        // Keep the later wall time: an older invalidation applied late (a
        // delayed message, a retry replaying its time) must not let values
        // written between the two pass `superseded`.
        let wall = r.tags.get(&tag).map_or(wall, |(.., ms)| wall.max(*ms));
        r.tags.insert(tag, (v, now, wall));
        self.latest_ms.fetch_max(wall, SeqCst);
        self.prune(&mut r, now);
    }

    /// `keys` and `tags` were invalidated here but their shared-tier
    /// invalidation failed and is being retried: until it lands
    /// ([`release`](Self::release)), the shared tier may hold an old value
    /// written *after* the invalidation (a load elsewhere that began before
    /// it, whose fill the unbumped version let through), which
    /// [`superseded`](Self::superseded) cannot tell by its time. Such values
    /// are not taken here meanwhile, so this instance reads its own write.
    pub(crate) fn hold(&self, keys: &[KeyHash], tags: &[TagHash]) {
        let now = self.time.now();
        let mut h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            h.keys.entry(*k).or_insert((0, now)).0 += 1;
        }
        for t in tags {
            h.tags.entry(*t).or_insert((0, now)).0 += 1;
        }
        self.holding
            .store((h.keys.len() + h.tags.len()) as u64, SeqCst);
    }

    /// The retry of a [`hold`](Self::hold) landed.
    pub(crate) fn release(&self, keys: &[KeyHash], tags: &[TagHash]) {
        let mut h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        fn drop_one<T: std::hash::Hash + Eq>(m: &mut HashMap<T, (u32, Instant)>, k: &T) {
            if let Some(e) = m.get_mut(k) {
                e.0 = e.0.saturating_sub(1);
                if e.0 == 0 {
                    m.remove(k);
                }
            }
        }
        for k in keys {
            drop_one(&mut h.keys, k);
        }
        for t in tags {
            drop_one(&mut h.tags, t);
        }
        self.holding
            .store((h.keys.len() + h.tags.len()) as u64, SeqCst);
    }

    /// Whether `key`, or one of `tags`, is held (see [`hold`](Self::hold)).
    /// One atomic load when nothing is.
    pub(crate) fn is_held(&self, key: KeyHash, tags: &[TagHash]) -> bool {
        if self.holding.load(SeqCst) == 0 {
            return false;
        }
        let now = self.time.now();
        let mut h = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let live =
            |(_, since): &(u32, Instant)| now.saturating_duration_since(*since) < HOLD_AT_MOST;
        h.keys.retain(|_, v| live(v));
        h.tags.retain(|_, v| live(v));
        self.holding
            .store((h.keys.len() + h.tags.len()) as u64, SeqCst);
        h.keys.contains_key(&key) || tags.iter().any(|t| h.tags.contains_key(t))
    }

    /// Everything is stale (a soft clear): a local entry filled by a load
    /// that began before now carries an older generation, and is served only
    /// as a stale copy. A parked generation is not revived after it.
    pub(crate) fn soft_clear(&self) {
        let _closed = self.close_gate();
        self.next_generation();
    }

    /// Moves to a new generation that alone is fresh; returns the one left.
    fn next_generation(&self) -> u32 {
        let old = self.soft.load(SeqCst) as u32;
        let new = u64::from(old.wrapping_add(1));
        self.soft.store(new << 32 | new, SeqCst);
        old
    }

    /// Everything is stale for now, but kept (the bus disconnected, and may
    /// replay what it misses): as [`soft_clear`](Self::soft_clear), except
    /// that [`revive`](Self::revive) can make the entries of the current
    /// generation fresh again. Parking while parked (no soft clear since)
    /// changes nothing.
    pub(crate) fn park(&self) {
        let _closed = self.close_gate();
        if self.parked_last(self.parked.load(SeqCst)).is_some() {
            return;
        }
        let old = self.next_generation();
        self.parked.store(u64::from(old) + 1, SeqCst);
    }

    /// The entries parked by the last [`park`](Self::park) are fresh again
    /// (the bus replayed everything it had missed, and the replayed
    /// invalidations evicted what changed), unless a soft clear or another
    /// park came since. Returns whether they were.
    pub(crate) fn revive(&self) -> bool {
        let _closed = self.close_gate();
        let Some(parked) = self.parked_last(self.parked.swap(0, SeqCst)) else {
            return false;
        };
        let current = self.soft.load(SeqCst) as u32;
        self.soft
            .store(u64::from(parked) << 32 | u64::from(current), SeqCst);
        true
    }

    /// The generation `parked` (a value of `self.parked`) names, if it is
    /// the one just before the current one (no soft clear or park since).
    fn parked_last(&self, parked: u64) -> Option<u32> {
        let g = (parked.checked_sub(1)?) as u32;
        (g.wrapping_add(1) == self.soft.load(SeqCst) as u32).then_some(g)
    }

    /// Whether entries of generation `g` are parked (kept across a bus
    /// disconnect, not yet revived): neither fresh nor fit to serve as a
    /// stale copy, since an invalidation of theirs may not have been
    /// replayed yet.
    pub(crate) fn is_parked(&self, g: u32) -> bool {
        let parked = self.parked.load(Acquire);
        parked != 0 && (parked - 1) as u32 == g
    }

    /// Whether a generation is parked.
    pub(crate) fn parks(&self) -> bool {
        self.parked.load(Acquire) != 0
    }

    /// Forgets a parked generation (its entries were flushed, or may have
    /// missed invalidations for good).
    pub(crate) fn unpark(&self) {
        self.parked.store(0, SeqCst);
    }

    /// The generations a local entry is fresh in: it carries the one its
    /// load began in. Cut to 32 bits (an entry has room for that much);
    /// only equality is ever asked.
    #[inline]
    pub(crate) fn generations(&self) -> Generations {
        let v = self.soft.load(Acquire);
        Generations {
            current: v as u32,
            revived: (v >> 32) as u32,
        }
    }

    /// Everything is invalid (the local tier was flushed).
    pub(crate) fn invalidate_all(&self) {
        let _closed = self.close_gate();
        let v = self.clock.fetch_add(1, SeqCst) + 1;
        self.all.fetch_max(v, SeqCst);
    }

    /// The gate's write side, held while an invalidation is recorded. Every
    /// holder leaves the guarded state consistent, so a poisoned gate is
    /// used as it is.
    fn close_gate(&self) -> crate::sync_shim::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `insert` (a fill of `key` with `tags` by a load that began at
    /// `mark`) unless the load was overtaken by an invalidation, with no
    /// invalidation recorded between the check and the insert. Returns
    /// whether it ran.
    pub(crate) fn admit(
        &self,
        mark: FenceMark,
        key: KeyHash,
        tags: &[TagHash],
        insert: impl FnOnce(),
    ) -> bool {
        let _open = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.revoked(mark, key, tags) {
            return false;
        }
        insert();
        true
    }

    fn prune(&self, r: &mut Records, now: Instant) {
        if r.keys.len() + r.tags.len() <= r.prune_over.max(PRUNE_FLOOR) {
            return;
        }
        let keep = |(_, at, _): &mut Record| now.saturating_duration_since(*at) < self.retention;
        r.keys.retain(|_, v| keep(v));
        r.tags.retain(|_, v| keep(v));
        // After a burst, give the memory back.
        if r.keys.capacity() > 4 * r.keys.len().max(PRUNE_FLOOR) {
            r.keys.shrink_to(2 * r.keys.len());
        }
        if r.tags.capacity() > 4 * r.tags.len().max(PRUNE_FLOOR) {
            r.tags.shrink_to(2 * r.tags.len());
        }
        r.prune_over = 2 * (r.keys.len() + r.tags.len());
    }

    /// Records held (keys and tags).
    #[cfg(test)]
    fn held(&self) -> usize {
        let r = self.records();
        r.keys.len() + r.tags.len()
    }

    /// Whether a load that began at `mark` for `key` with `tags` was overtaken
    /// by an invalidation.
    pub(crate) fn revoked(&self, mark: FenceMark, key: KeyHash, tags: &[TagHash]) -> bool {
        if self.time.now().saturating_duration_since(mark.began) >= self.retention {
            return true;
        }
        if self.clock.load(SeqCst) == mark.at {
            return false;
        }
        if self.all.load(SeqCst) > mark.at {
            return true;
        }
        let r = self.records();
        r.keys.get(&key).is_some_and(|(v, ..)| *v > mark.at)
            || tags
                .iter()
                .any(|t| r.tags.get(t).is_some_and(|(v, ..)| *v > mark.at))
    }

    /// Whether an entry of `key` with `tags`, written at `written_ms` (wall
    /// clock), is older than an invalidation of the key or of one of the
    /// tags that this instance applied. Takes no lock when the entry is at
    /// least as young as every recorded invalidation.
    pub(crate) fn superseded(&self, key: KeyHash, tags: &[TagHash], written_ms: u64) -> bool {
        if written_ms >= self.latest_ms.load(SeqCst) {
            return false;
        }
        let r = self.records();
        r.keys.get(&key).is_some_and(|(.., ms)| *ms > written_ms)
            || tags
                .iter()
                .any(|t| r.tags.get(t).is_some_and(|(.., ms)| *ms > written_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;

    /// A fence whose retention is a minute, on a clock the test moves.
    fn fence() -> (Fence, MockClock) {
        let clock = MockClock::new();
        (
            Fence::new(Duration::from_secs(60), Clock::Mock(clock.clone())),
            clock,
        )
    }

    #[test]
    fn only_invalidations_after_the_mark_revoke() {
        let (f, _) = fence();
        let k = KeyHash(1);
        let t = TagHash(2);
        f.invalidate_key(k);
        let m = f.mark();
        assert!(
            !f.revoked(m, k, &[t]),
            "an invalidation before the load began does not revoke"
        );
        f.invalidate_key(KeyHash(99));
        assert!(
            !f.revoked(m, k, &[t]),
            "another key's invalidation does not revoke"
        );
        f.invalidate_tag(t);
        assert!(
            f.revoked(m, k, &[t]),
            "a tag invalidated during the load revokes"
        );
        assert!(
            !f.revoked(m, k, &[]),
            "an untagged entry ignores tag invalidations"
        );
        let m2 = f.mark();
        f.invalidate_all();
        assert!(
            f.revoked(m2, k, &[]),
            "a flush revokes everything in flight"
        );
    }

    #[test]
    fn an_invalidation_after_a_load_began_refuses_its_fill() {
        let (f, _) = fence();
        let k = KeyHash(1);
        let mut filled = Vec::new();
        let before = f.mark();
        f.invalidate_key(k);
        assert!(
            !f.admit(before, k, &[], || filled.push("old")),
            "the load that began before the invalidation does not fill"
        );
        let after = f.mark();
        assert!(
            f.admit(after, k, &[], || filled.push("new")),
            "a load that began after it does"
        );
        assert!(
            f.admit(before, KeyHash(2), &[], || filled.push("other key")),
            "a fill of another key is not concerned"
        );
        assert_eq!(filled, ["new", "other key"], "a refused fill never inserts");
    }

    #[test]
    fn a_load_older_than_the_retention_never_fills() {
        let (f, clock) = fence();
        let k = KeyHash(1);
        let m = f.mark();
        clock.advance(Duration::from_secs(59));
        assert!(!f.revoked(m, k, &[]), "within the retention");
        clock.advance(Duration::from_secs(1));
        assert!(
            f.revoked(m, k, &[]),
            "its invalidations may have been forgotten: refused"
        );
        assert!(!f.admit(m, k, &[], || panic!("must not insert")));
    }

    #[test]
    fn records_past_the_retention_are_pruned() {
        let (f, clock) = fence();
        for i in 0..8192 {
            f.invalidate_key(KeyHash(i));
        }
        clock.advance(Duration::from_secs(61));
        f.invalidate_key(KeyHash(u128::MAX));
        f.invalidate_tag(TagHash(1));
        let r = f.records();
        assert_eq!(
            (r.keys.len(), r.tags.len()),
            (1, 1),
            "only the records within the retention are kept"
        );
    }

    #[test]
    fn entries_written_before_an_applied_invalidation_are_superseded() {
        let (f, clock) = fence();
        let (k, t) = (KeyHash(1), TagHash(2));
        let before = f.time.wall_ms();
        f.invalidate_key_at(KeyHash(7), before);
        assert!(
            !f.superseded(KeyHash(7), &[], before),
            "written in the invalidation's millisecond"
        );
        assert!(!f.superseded(k, &[t], before), "nothing recorded yet");
        clock.advance(Duration::from_millis(1));
        f.invalidate_key(k);
        assert!(
            f.superseded(k, &[], before),
            "written before the key's invalidation"
        );
        assert!(
            !f.superseded(KeyHash(9), &[], before),
            "another key's invalidation does not matter"
        );
        assert!(
            !f.superseded(k, &[], u64::MAX),
            "written after every invalidation"
        );
        f.invalidate_tag(t);
        assert!(
            f.superseded(KeyHash(9), &[t], before),
            "written before its tag's invalidation"
        );
    }

    #[test]
    fn an_older_invalidation_applied_late_keeps_the_later_time() {
        let (f, _clock) = fence();
        let k = KeyHash(7);
        f.invalidate_key_at(k, 2000);
        f.invalidate_key_at(k, 1000);
        assert!(f.superseded(k, &[], 1500));
        let t = TagHash(8);
        f.invalidate_tag_at(t, 2000);
        f.invalidate_tag_at(t, 1000);
        assert!(f.superseded(KeyHash(9), &[t], 1500));
    }

    #[test]
    fn held_keys_and_tags_until_released_or_too_old() {
        let (f, clock) = fence();
        let (k, other, t) = (KeyHash(1), KeyHash(2), TagHash(7));
        assert!(!f.is_held(k, &[]));
        f.hold(&[k], &[t]);
        f.hold(&[k], &[]);
        assert!(f.is_held(k, &[]) && f.is_held(other, &[t]) && !f.is_held(other, &[]));
        f.release(&[k], &[t]);
        assert!(f.is_held(k, &[]), "held twice, released once");
        assert!(!f.is_held(other, &[t]));
        f.release(&[k], &[]);
        assert!(!f.is_held(k, &[]));
        f.hold(&[k], &[]);
        clock.advance(HOLD_AT_MOST);
        assert!(!f.is_held(k, &[]), "a hold outlives no retry");
    }

    #[test]
    fn a_burst_is_pruned_once_it_is_past_retention_not_on_every_record() {
        let (f, clock) = fence();
        for k in 0..20_000u128 {
            f.invalidate_key(KeyHash(k));
        }
        assert_eq!(f.held(), 20_000, "within retention: every record kept");
        clock.advance(Duration::from_secs(61));
        // The next prune is due once the records double what the last one
        // kept; it drops everything past retention.
        let mut recorded = 0;
        while f.held() > recorded {
            f.invalidate_key(KeyHash(1_000_000 + recorded as u128));
            recorded += 1;
            assert!(recorded <= 20_000, "never pruned");
        }
        assert!(f.held() <= 20_000, "{}", f.held());
        // What was pruned no longer revokes or supersedes; what is kept does.
        let m = f.mark();
        assert!(!f.superseded(KeyHash(5), &[], 0), "pruned");
        assert!(f.superseded(KeyHash(1_000_000), &[], 0), "kept");
        assert!(!f.revoked(m, KeyHash(5), &[]));
    }
}
