//! Hot slots: a few local entries per thread, in front of moka.
//!
//! A moka read is a concurrent-map lookup plus bookkeeping written from every
//! core: the entry's last-access time, its reference count, a read-log
//! channel and, every 64 reads, a pass over that log. For the handful of
//! keys a thread serves over and over, that bookkeeping is most of the cost
//! of a hit and all of its cross-core traffic. Each thread keeps its own
//! copies of the last entries it read (direct-mapped by key hash), and a hit
//! there touches no line another core writes.
//!
//! A copy is good only while nothing about its key has changed since it was
//! taken: every change to the local tier (a fill or an eviction of a key, a
//! tag eviction, a flush, a change of trust) bumps an epoch *after* moka has
//! changed, and a copy carries the epochs read *before* the moka read it
//! came from. A copy is served only while its key's bucket epoch and the
//! global epoch are unchanged; its own deadlines are checked by the caller
//! as for any local entry.
//!
//! Moka still sees a share of the reads (every [`RECORD_EVERY`]th hit on a
//! copy goes to moka), so its admission and eviction policy keeps
//! knowing which keys are hot. Only small entries are copied, so what the
//! slots keep alive beyond moka's own bound stays small: at most
//! [`SLOTS`] entries of [`MAX_WEIGHT`] encoded bytes per thread and cache
//! (512 KiB), freed with the cache.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use thread_local::ThreadLocal;

use super::epochs::KeyEpochs;
use super::local::LocalData;
use crate::key::KeyHash;
use crate::sync_shim::{AtomicU64, Ordering};

/// Slots per thread, direct-mapped by key hash.
const SLOTS: usize = 32;
/// One hit in this many on a copy is read from moka instead.
const RECORD_EVERY: u32 = 16;
/// Entries weighing more than this (encoded bytes) are not copied.
const MAX_WEIGHT: u32 = 16 * 1024;

/// The epochs a copy was taken under.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    global: u64,
    bucket: u64,
}

/// One direct-mapped slot: the copy it holds, if any, and the last key
/// read from moka through it. A key is copied on its second read in a row
/// through its slot, so keys read once cost a slot nothing, and a hot key is
/// not pushed out by a key read once.
///
/// The copy is held as `Any` (a [`HotCopy<V>`]), so the cache's types carry no
/// `Send` bound for the sake of thread-local storage; its box is reused by
/// later copies.
#[derive(Default)]
struct Slot {
    h: Option<KeyHash>,
    seen: Option<KeyHash>,
    stamp: Stamp,
    uses: u32,
    data: Option<Box<dyn Any + Send>>,
}

/// A thread's copy of a local entry.
struct HotCopy<V> {
    /// What hits on this thread are served: the entry, with the codec's
    /// [`thread_copy`](crate::Codec::thread_copy) of its value when the
    /// codec makes one.
    data: LocalData<V>,
    /// The value in moka the copy was made from: while moka still holds the
    /// same `Arc`, a refreshed stamp keeps the copy instead of making
    /// another. Holding it also keeps its address from being reused.
    source: Option<Arc<V>>,
}

impl<V> HotCopy<V> {
    fn of(data: &LocalData<V>, copy: impl FnOnce(&V) -> Option<V>) -> Self {
        let value = data
            .value
            .as_ref()
            .map(|v| copy(v).map_or_else(|| v.clone(), Arc::new));
        Self {
            data: data.with_value(value),
            source: data.value.clone(),
        }
    }
}

type Slots = RefCell<[Slot; SLOTS]>;

pub(crate) struct HotSlots<V> {
    slots: ThreadLocal<Slots>,
    global: AtomicU64,
    /// Per-key epochs: a change to a key voids copies of the keys sharing
    /// its bucket, nothing else.
    buckets: KeyEpochs,
    _value: PhantomData<fn() -> V>,
}

impl<V: Send + Sync + 'static> HotSlots<V> {
    pub(crate) fn new() -> Self {
        Self {
            slots: ThreadLocal::new(),
            global: AtomicU64::new(0),
            buckets: KeyEpochs::new(),
            _value: PhantomData,
        }
    }

    #[inline]
    fn slot_index(h: &KeyHash) -> usize {
        ((h.0 >> 64) as usize) & (SLOTS - 1)
    }

    /// The epochs to stamp a copy with: read before the moka read.
    #[inline]
    pub(crate) fn stamp(&self, h: &KeyHash) -> Stamp {
        Stamp {
            global: self.global.load(Ordering::Acquire),
            bucket: self.buckets.get(h),
        }
    }

    /// `f` on this thread's valid copy of `h`, unless this read is one moka
    /// should see. `f` runs with the slots borrowed: a lookup it makes in
    /// the same cache misses them (and reads moka), nothing worse.
    #[inline]
    pub(crate) fn with<R>(&self, h: &KeyHash, f: impl FnOnce(&LocalData<V>) -> R) -> Option<R> {
        let slots = self.slots.get()?;
        let mut slots = slots.try_borrow_mut().ok()?;
        let slot = slots.get_mut(Self::slot_index(h))?;
        if slot.h != Some(*h) {
            return None;
        }
        if slot.stamp != self.stamp(h) {
            return None;
        }
        slot.uses = slot.uses.wrapping_add(1);
        if slot.uses % RECORD_EVERY == 0 {
            return None;
        }
        slot.data
            .as_ref()?
            .downcast_ref::<HotCopy<V>>()
            .map(|c| f(&c.data))
    }

    /// `data` was just read from moka for `h` (after `stamp` was taken):
    /// copy it if `h` has earned its slot. `copy` makes the value's
    /// per-thread copy (`None`: share it); it runs only when the slot does
    /// not already hold a copy of this very value.
    #[inline]
    pub(crate) fn put(
        &self,
        h: KeyHash,
        stamp: Stamp,
        data: &LocalData<V>,
        copy: impl FnOnce(&V) -> Option<V>,
    ) {
        if data.weight > MAX_WEIGHT {
            return;
        }
        let slots = self
            .slots
            .get_or(|| RefCell::new(std::array::from_fn(|_| Slot::default())));
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return;
        };
        let Some(slot) = slots.get_mut(Self::slot_index(&h)) else {
            return;
        };
        if slot.h != Some(h) {
            if slot.seen != Some(h) {
                slot.seen = Some(h);
                return;
            }
            slot.h = Some(h);
            slot.uses = 1;
        }
        slot.stamp = stamp;
        let held = slot
            .data
            .as_mut()
            .and_then(|d| d.downcast_mut::<HotCopy<V>>());
        if let Some(held) = held {
            let same = match (&held.source, &data.value) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                // Same moka value: keep its copy, take the rest (deadlines,
                // tags) as moka has them now.
                let value = held.data.value.take();
                held.data = data.with_value(value);
                return;
            }
            *held = HotCopy::of(data, copy);
            return;
        }
        slot.data = Some(Box::new(HotCopy::of(data, copy)));
    }

    /// `h` changed in moka (filled or evicted): copies of it are void.
    #[inline]
    pub(crate) fn changed(&self, h: &KeyHash) {
        self.buckets.bump(h);
    }

    /// Anything may have changed (tag eviction, flush, trust): every copy
    /// is void.
    pub(crate) fn changed_all(&self) {
        self.global.fetch_add(1, Ordering::AcqRel);
    }
}
