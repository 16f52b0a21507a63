//! The local half of the fill-race rule: a load that began before an
//! invalidation of its key or one of its tags must not fill the local tier.
//!
//! Every invalidation takes the next value of a clock and records it against
//! the key (or tag); a load remembers the clock when it began. A fill checks,
//! *before* inserting, whether anything it depends on was invalidated since
//! it began, and then stores nothing; it checks again *after* inserting, and
//! removes its entry if so. Invalidation records first and evicts second, so
//! whichever order the two race in, the stale entry is gone; and one
//! overtaken by an invalidation already applied is never visible at all.
//!
//! Records are kept for `retention` (longer than the hard load timeout), and a
//! load older than that never fills, so the maps stay small.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::key::{KeyHash, TagHash};

pub(crate) struct Fence {
    clock: AtomicU64,
    all: AtomicU64,
    records: Mutex<Records>,
    retention: Duration,
}

#[derive(Default)]
struct Records {
    keys: HashMap<KeyHash, (u64, Instant)>,
    tags: HashMap<TagHash, (u64, Instant)>,
}

/// What a load remembers from when it began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FenceMark {
    at: u64,
    began: Instant,
}

impl Fence {
    pub(crate) fn new(retention: Duration) -> Self {
        Self {
            clock: AtomicU64::new(0),
            all: AtomicU64::new(0),
            records: Mutex::new(Records::default()),
            retention,
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mark(&self) -> FenceMark {
        FenceMark {
            at: self.clock.load(SeqCst),
            began: Instant::now(),
        }
    }

    pub(crate) fn invalidate_key(&self, key: KeyHash) {
        let now = Instant::now();
        let mut r = self.records();
        let v = self.clock.fetch_add(1, SeqCst) + 1;
        r.keys.insert(key, (v, now));
        self.prune(&mut r, now);
    }

    pub(crate) fn invalidate_tag(&self, tag: TagHash) {
        let now = Instant::now();
        let mut r = self.records();
        let v = self.clock.fetch_add(1, SeqCst) + 1;
        r.tags.insert(tag, (v, now));
        self.prune(&mut r, now);
    }

    /// Everything is invalid (the local tier was flushed).
    pub(crate) fn invalidate_all(&self) {
        let v = self.clock.fetch_add(1, SeqCst) + 1;
        self.all.fetch_max(v, SeqCst);
    }

    fn prune(&self, r: &mut Records, now: Instant) {
        if r.keys.len() + r.tags.len() > 8192 {
            let keep = |(_, at): &mut (u64, Instant)| now.duration_since(*at) < self.retention;
            r.keys.retain(|_, v| keep(v));
            r.tags.retain(|_, v| keep(v));
        }
    }

    /// Whether a load that began at `mark` for `key` with `tags` was overtaken
    /// by an invalidation.
    pub(crate) fn revoked(&self, mark: FenceMark, key: KeyHash, tags: &[TagHash]) -> bool {
        if mark.began.elapsed() >= self.retention {
            return true;
        }
        if self.clock.load(SeqCst) == mark.at {
            return false;
        }
        if self.all.load(SeqCst) > mark.at {
            return true;
        }
        let r = self.records();
        r.keys.get(&key).is_some_and(|(v, _)| *v > mark.at)
            || tags
                .iter()
                .any(|t| r.tags.get(t).is_some_and(|(v, _)| *v > mark.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_invalidations_after_the_mark_revoke() {
        let f = Fence::new(Duration::from_secs(60));
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
}
