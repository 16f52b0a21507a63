//! Counters per bucket of keys: a change to a key bumps its bucket's count,
//! and a reader that saw a count before its own reads can tell afterwards
//! whether a key of that bucket may have changed meanwhile (a false alarm
//! from another key in the bucket costs a recheck, nothing worse).

use crate::key::KeyHash;
use crate::sync_shim::{AtomicU64, Ordering};

/// Buckets (a power of two).
const BUCKETS: usize = 256;

/// One counter per bucket of key hashes.
pub(crate) struct KeyEpochs(Box<[AtomicU64]>);

impl KeyEpochs {
    pub(crate) fn new() -> Self {
        Self((0..BUCKETS).map(|_| AtomicU64::new(0)).collect())
    }

    #[inline]
    fn bucket(&self, h: &KeyHash) -> &AtomicU64 {
        // `BUCKETS` is a power of two; the index is always in range.
        &self.0[(h.0 as usize) & (BUCKETS - 1)]
    }

    /// The count of `h`'s bucket.
    #[inline]
    pub(crate) fn get(&self, h: &KeyHash) -> u64 {
        self.bucket(h).load(Ordering::Acquire)
    }

    /// Counts a change to `h`.
    #[inline]
    pub(crate) fn bump(&self, h: &KeyHash) {
        self.bucket(h).fetch_add(1, Ordering::AcqRel);
    }
}
