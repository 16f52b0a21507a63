//! Loom models of the in-process concurrency the engine relies on.
//!
//! Each model runs the engine's real [`Flights`], [`Fence`] and [`HotSlots`]
//! (built on loom's primitives through `crate::sync_shim`) and replays, step
//! for step, what `cache/mod.rs` does around them; loom then runs every
//! interleaving of the model's threads (up to a preemption bound where one
//! is given) and each one must satisfy the model's assertions. The tiers
//! are loom mutexes around a value (moka's operations are linearizable),
//! the origin an atomic; a load runs inline on its leader's thread rather
//! than in a task of its own. Shared-tier fill tickets are not modelled: the
//! models with invalidations run a cache whose shared tier is off.
//!
//! - [`singleflight_one_load_per_key`]: callers miss the same key at once.
//!   Each follows `Inner::fetch` (local read),
//!   `Inner::fetch_slow` (fence mark, `Flights::ended`, shared read,
//!   `Flights::join`), `Inner::recheck_before_loading` (the leader's local
//!   reread, and its shared reread when `ended` has moved) and
//!   `Inner::run_load` (mark, load, shared and local fill, then
//!   `Leader::complete`). Exactly one load runs and every caller gets its
//!   value, whichever tiers are on.
//! - [`detach_then_read_sees_the_write`]: a caller reads the key as above
//!   while a writer changes the origin, invalidates the key
//!   (`Inner::apply_local`: fence record, `Flights::detach`, eviction) and
//!   then reads it too. The local tier never ends up holding the old value,
//!   and the writer's read never gets it through a flight (it does not join
//!   the detached one), and never from the local tier: `Inner::fill_local`
//!   checks and inserts under the fence's gate. (Before the gate, this
//!   model found a read that got the old value; see the test.)
//! - [`fence_fill_vs_invalidation`]: a fill (`Inner::run_load`'s mark and
//!   load, then `Inner::fill_local`'s check, tag index, insert, check and
//!   removal) races `Inner::apply_local` for the key, for one of its tags,
//!   and `Inner::flush_local_because` (`Fence::invalidate_all`): whichever
//!   comes first, the tier never ends up holding the value loaded before
//!   the invalidation.
//! - [`hot_copy_never_outlives_a_change`]: one thread reads the key through
//!   its hot slot as `Inner::with_local_entry` does (`HotSlots::with`, else
//!   `HotSlots::stamp`, the moka read, `HotSlots::put`) while another
//!   changes moka and then bumps the epochs, as `Inner::fill_local`
//!   (`HotSlots::changed`) and `Inner::flush_local_because`
//!   (`HotSlots::changed_all`) do. Once the writer is done, the reader's hot
//!   slot never answers with the old value. Loom runs every model thread on
//!   one OS thread, so `thread_local` hands them all the same slots: only
//!   the reader uses them, as in the engine, where copies are per thread
//!   and only the epochs cross threads.
//!
//! Run them with
//! `RUSTFLAGS="--cfg tiercache_loom" CARGO_TARGET_DIR=target/loom cargo test -p tiercache-core --release --lib loom_tests`
//! (`scripts/test.sh` does). `LOOM_MAX_PREEMPTIONS` overrides every
//! model's preemption bound; each model prints how many interleavings it
//! ran.
#![allow(
    clippy::unwrap_used,
    reason = "test code; clippy's allow-unwrap-in-tests does not see `cfg(all(test, ..))`"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic as plain;
use std::time::Duration;

use futures::FutureExt;
use loom::sync::Mutex;
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use loom::thread;

use super::fence::{Fence, FenceMark};
use super::flight::{Flights, Loaded, Role, Waiter};
use super::hot::HotSlots;
use super::local::LocalData;
use crate::clock::Clock;
use crate::envelope::Times;
use crate::key::{KeyHash, TagHash};

/// The key every model reads and invalidates.
const KEY: KeyHash = KeyHash(7);
/// The tag its fills carry in [`fence_fill_vs_invalidation`].
const TAG: TagHash = TagHash(3);
/// The origin's value before the write.
const OLD: u64 = 1;
/// The origin's value after the write.
const NEW: u64 = 2;

/// Runs `model` under loom with at most `bound` preemptions per
/// interleaving (`None`: all of them; `LOOM_MAX_PREEMPTIONS` overrides)
/// and prints how many interleavings it ran.
fn check(name: &str, bound: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    let runs = Arc::new(plain::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = bound;
    }
    let bound = builder.preemption_bound;
    let started = std::time::Instant::now();
    builder.check(move || {
        counted.fetch_add(1, plain::Ordering::Relaxed);
        model();
    });
    println!(
        "loom {name}: {} interleavings (preemption bound {bound:?}) in {:.2?}",
        runs.load(plain::Ordering::Relaxed),
        started.elapsed()
    );
}

/// Which tiers the modelled cache has.
#[derive(Clone, Copy, Debug)]
struct Tiers {
    /// The local tier (moka).
    local: bool,
    /// The shared tier.
    shared: bool,
}

/// A caller's answer and where it came from. A flight's outcome is read
/// once the model's threads have joined, when every flight has completed: a
/// wait inside a model thread would block on tokio's channel, which loom
/// does not see.
enum Answer {
    /// Found in the local tier, by the caller's first read or by its
    /// reread as a leader (`recheck_before_loading`).
    Local(u64),
    /// Found in the shared tier, by the first read or the leader's reread.
    Shared(u64),
    /// The outcome of the load the caller led.
    Led(Waiter<u64>),
    /// The outcome of another caller's flight, which the caller joined.
    Joined(Waiter<u64>),
}

impl Answer {
    /// Where the answer came from.
    fn source(&self) -> &'static str {
        match self {
            Answer::Local(_) => "local",
            Answer::Shared(_) => "shared",
            Answer::Led(_) => "led",
            Answer::Joined(_) => "joined",
        }
    }

    /// The value the caller ends up with. Called after every leader has
    /// completed, so a flight's outcome is ready at its first poll.
    fn value(self) -> Option<u64> {
        match self {
            Answer::Local(v) | Answer::Shared(v) => Some(v),
            Answer::Led(w) | Answer::Joined(w) => {
                let outcome = w.wait().now_or_never().expect("every flight has completed");
                outcome.expect("loads do not fail here").value.map(|v| *v)
            }
        }
    }
}

/// What a model notes about its fills, for its assertions.
struct Notes {
    /// Set once an invalidation has been recorded in the fence. A loom
    /// atomic: a fill that reads it set before its first fence check
    /// happens after the record, so the check must see it; one that reads
    /// it unset may have checked before the record (loom lets a load read
    /// a value older than the last one stored, as the memory model does).
    recorded: AtomicBool,
    /// Fills whose first fence check passed while `recorded` read unset.
    checked_early: plain::AtomicUsize,
    /// Fills inserted and then removed by their second fence check.
    unfilled: plain::AtomicUsize,
}

impl Default for Notes {
    fn default() -> Self {
        Self {
            recorded: AtomicBool::new(false),
            checked_early: plain::AtomicUsize::new(0),
            unfilled: plain::AtomicUsize::new(0),
        }
    }
}

/// One cache of one key, as `cache/mod.rs`'s `Inner` holds it, with the
/// origin behind it.
struct World {
    /// The origin's current value.
    origin: AtomicU64,
    /// How many loads ran.
    loads: AtomicUsize,
    /// The local tier (moka), when on.
    local: Option<Mutex<Option<u64>>>,
    /// The shared tier, when on.
    shared: Option<Mutex<Option<u64>>>,
    /// `Inner::tag_index`: the local entries each tag carries.
    tag_index: Mutex<HashMap<TagHash, Vec<KeyHash>>>,
    /// The local fill-race fence.
    fence: Fence,
    /// Singleflight.
    flights: Arc<Flights<u64>>,
    /// The order some steps ran in.
    notes: Notes,
}

impl World {
    /// A cold cache with `tiers` in front of an origin holding [`OLD`].
    fn new(tiers: Tiers) -> Self {
        Self {
            origin: AtomicU64::new(OLD),
            loads: AtomicUsize::new(0),
            local: tiers.local.then(|| Mutex::new(None)),
            shared: tiers.shared.then(|| Mutex::new(None)),
            tag_index: Mutex::new(HashMap::new()),
            fence: Fence::new(Duration::from_secs(3600), Clock::default()),
            flights: Arc::new(Flights::new()),
            notes: Notes::default(),
        }
    }

    /// A local read (`Inner::local_fresh`; every entry is fresh here).
    fn local_get(&self) -> Option<u64> {
        *self.local.as_ref()?.lock().unwrap()
    }

    /// A shared read (`Inner::shared_find`; a miss when the tier is off).
    fn shared_get(&self) -> Option<u64> {
        *self.shared.as_ref()?.lock().unwrap()
    }

    /// `Inner::fill_local`: checked against the fence and inserted under
    /// its gate (`Fence::admit`), checked again after, removed if revoked
    /// meanwhile.
    fn fill_local(&self, mark: FenceMark, v: u64, tags: &[TagHash]) {
        let Some(local) = &self.local else { return };
        let recorded = self.notes.recorded.load(SeqCst);
        let admitted = self.fence.admit(mark, KEY, tags, || {
            if !recorded {
                self.notes
                    .checked_early
                    .fetch_add(1, plain::Ordering::Relaxed);
            }
            if !tags.is_empty() {
                // `Inner::index_tags`.
                let mut index = self.tag_index.lock().unwrap();
                for t in tags {
                    index.entry(*t).or_default().push(KEY);
                }
            }
            *local.lock().unwrap() = Some(v);
        });
        if !admitted {
            return;
        }
        if self.fence.revoked(mark, KEY, tags) {
            *local.lock().unwrap() = None;
            self.notes.unfilled.fetch_add(1, plain::Ordering::Relaxed);
        }
    }

    /// `Inner::run_load` (no lease): mark, load, fill the shared tier, then
    /// the local tier, as `Inner::fill` does. Returns the value loaded.
    fn run_load(&self, tags: &[TagHash]) -> u64 {
        let mark = self.fence.mark();
        self.loads.fetch_add(1, SeqCst);
        let v = self.origin.load(SeqCst);
        if let Some(shared) = &self.shared {
            *shared.lock().unwrap() = Some(v);
        }
        self.fill_local(mark, v, tags);
        v
    }

    /// A lookup of the key: `Cache::fetch_revalidating`'s local read, then
    /// `Inner::fetch_slow`, `Inner::recheck_before_loading`, and the load its
    /// leader spawns (`Cache::spawn_load`).
    fn read(&self) -> Answer {
        if let Some(v) = self.local_get() {
            return Answer::Local(v);
        }
        // `fetch_slow`: the mark and `ended` before the shared read.
        let mark = self.fence.mark();
        let ended = self.flights.ended(&KEY);
        if let Some(v) = self.shared_get() {
            self.fill_local(mark, v, &[]);
            return Answer::Shared(v);
        }
        match self.flights.join(KEY) {
            Role::Waiter(w) => Answer::Joined(w),
            Role::Leader(leader, w) => {
                // `recheck_before_loading`: the local tier again, and the shared
                // tier again if a flight of the key's bucket ended since.
                let mut done = self
                    .local_get()
                    .map(|v| (v, Answer::Local as fn(u64) -> Answer));
                if done.is_none()
                    && self.flights.ended(&KEY) != ended
                    && let Some(v) = self.shared_get()
                {
                    self.fill_local(mark, v, &[]);
                    done = Some((v, Answer::Shared));
                }
                if let Some((v, answer)) = done {
                    leader.complete(Ok(loaded(v)));
                    return answer(v);
                }
                // The load's task: `run_load`, then `Leader::complete`.
                let v = self.run_load(&[]);
                leader.complete(Ok(loaded(v)));
                Answer::Led(w)
            }
        }
    }

    /// `Inner::apply_local` for the key: record in the fence, detach its
    /// flight, evict.
    fn invalidate_key(&self) {
        self.fence.invalidate_key(KEY);
        self.notes.recorded.store(true, SeqCst);
        self.flights.detach(KEY);
        if let Some(local) = &self.local {
            *local.lock().unwrap() = None;
        }
    }

    /// `Inner::apply_local` for a tag: record in the fence, detach every
    /// flight, evict the entries the tag index lists.
    fn invalidate_tag(&self, tag: TagHash) {
        self.fence.invalidate_tag(tag);
        self.notes.recorded.store(true, SeqCst);
        self.flights.detach_all();
        let tagged = self
            .tag_index
            .lock()
            .unwrap()
            .remove(&tag)
            .unwrap_or_default();
        if let Some(local) = &self.local {
            let mut local = local.lock().unwrap();
            if tagged.contains(&KEY) {
                *local = None;
            }
        }
    }

    /// `Inner::flush_local_because` (a requested flush): record in the
    /// fence, detach every flight, clear the local tier.
    fn flush(&self) {
        self.fence.invalidate_all();
        self.notes.recorded.store(true, SeqCst);
        self.flights.detach_all();
        if let Some(local) = &self.local {
            *local.lock().unwrap() = None;
        }
    }
}

/// A load's outcome holding `v`.
fn loaded(v: u64) -> Loaded<u64> {
    Loaded {
        value: Some(Arc::new(v)),
        written_ms: 0,
    }
}

/// Callers miss a cold key at once: one load, and every caller gets its
/// value. With the local tier off, only the `ended` recheck keeps a caller
/// that read the shared tier just before the first load filled it from
/// loading again. Two callers are checked exhaustively, three up to four
/// preemptions.
#[test]
fn singleflight_one_load_per_key() {
    let all = [
        Tiers {
            local: true,
            shared: true,
        },
        Tiers {
            local: false,
            shared: true,
        },
        Tiers {
            local: true,
            shared: false,
        },
    ];
    for (callers, bound) in [(2, None), (3, Some(4))] {
        for tiers in all {
            let name = format!("singleflight, {callers} callers, {tiers:?}");
            check(&name, bound, move || {
                let world = Arc::new(World::new(tiers));
                let threads: Vec<_> = (0..callers)
                    .map(|_| {
                        let world = Arc::clone(&world);
                        thread::spawn(move || world.read())
                    })
                    .collect();
                // Every caller joins before any answer is read: a waiter's
                // flight may be led by another caller.
                let answers: Vec<Answer> = threads.into_iter().map(|t| t.join().unwrap()).collect();
                let values: Vec<_> = answers.into_iter().map(Answer::value).collect();
                assert_eq!(world.loads.load(SeqCst), 1, "{tiers:?}: one load per key");
                assert_eq!(values, vec![Some(OLD); callers], "{tiers:?}");
            });
        }
    }
}

/// What a run of [`detach_model`] ended with.
struct Detached {
    /// The writer's read: its value.
    value: Option<u64>,
    /// The writer's read: where the value came from.
    from: &'static str,
    /// Whether the old value it may have read came from the fill window
    /// that [`detach_then_read_sees_the_write`] describes: the caller's
    /// fill passed its first fence check before the invalidation was
    /// recorded, and its second check removed its entry.
    window: bool,
}

/// The model of [`detach_then_read_sees_the_write`]: a caller reads the key
/// while a writer changes the origin, invalidates the key and then reads it
/// itself. Checks that the local tier never ends up holding the old value.
fn detach_model() -> Detached {
    let world = Arc::new(World::new(Tiers {
        local: true,
        shared: false,
    }));
    let caller = {
        let world = Arc::clone(&world);
        thread::spawn(move || world.read())
    };
    let writer = {
        let world = Arc::clone(&world);
        thread::spawn(move || {
            world.origin.store(NEW, SeqCst);
            world.invalidate_key();
            world.read()
        })
    };
    let first = caller.join().unwrap();
    let second = writer.join().unwrap();
    let first = first.value();
    assert!(matches!(first, Some(OLD | NEW)), "{first:?}");
    let from = second.source();
    let value = second.value();
    let held = world.local_get();
    assert!(
        matches!(held, None | Some(NEW)),
        "the local tier kept {held:?}, loaded before the invalidation"
    );
    let notes = &world.notes;
    Detached {
        value,
        from,
        window: notes.checked_early.load(plain::Ordering::Relaxed) == 1
            && notes.unfilled.load(plain::Ordering::Relaxed) == 1,
    }
}

/// A read that begins after an invalidation gets the new value: it never
/// joins a load that began before the invalidation (`Flights::detach`), and
/// the local tier never shows the old value, not even for a moment
/// (`Inner::fill_local` checks and inserts under the fence's gate).
///
/// Before the gate, loom found the moment: an invalidation recorded and
/// applied between a fill's first fence check and its insert was not seen
/// by the check, and the entry inserted after it was visible until the
/// second check removed it; a read in between answered the old value (its
/// first read, or its reread as a leader, which also completed its own
/// flight with it). `window` in the failure message says whether a run went
/// through that moment.
#[test]
fn detach_then_read_sees_the_write() {
    check("detach", Some(5), move || {
        let run = detach_model();
        assert_eq!(
            run.value,
            Some(NEW),
            "a read after the invalidation, from {} (through the fill window: {})",
            run.from,
            run.window
        );
    });
}

/// How [`fence_fill_vs_invalidation`]'s writer invalidates.
#[derive(Clone, Copy, Debug)]
enum Invalidate {
    /// The key (`apply_local`'s keys).
    Key,
    /// A tag the fill carries (`apply_local`'s tags).
    Tag,
    /// Everything (`flush_local_because`).
    All,
}

/// A fill races an invalidation of its key, of its tag or of everything:
/// the local tier never ends up holding the value loaded before it.
#[test]
fn fence_fill_vs_invalidation() {
    for how in [Invalidate::Key, Invalidate::Tag, Invalidate::All] {
        check(&format!("fence, {how:?}"), None, move || {
            let world = Arc::new(World::new(Tiers {
                local: true,
                shared: false,
            }));
            let filler = {
                let world = Arc::clone(&world);
                thread::spawn(move || world.run_load(&[TAG]))
            };
            let writer = {
                let world = Arc::clone(&world);
                thread::spawn(move || {
                    world.origin.store(NEW, SeqCst);
                    match how {
                        Invalidate::Key => world.invalidate_key(),
                        Invalidate::Tag => world.invalidate_tag(TAG),
                        Invalidate::All => world.flush(),
                    }
                })
            };
            filler.join().unwrap();
            writer.join().unwrap();
            let held = world.local_get();
            assert!(
                matches!(held, None | Some(NEW)),
                "{how:?}: the local tier kept {held:?}, loaded before the invalidation"
            );
        });
    }
}

/// How [`hot_copy_never_outlives_a_change`]'s writer changes the key.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// A fill of a new value, then `HotSlots::changed`.
    Fill,
    /// An eviction, then `HotSlots::changed`.
    Evict,
    /// A flush, then `HotSlots::changed_all`.
    Flush,
}

/// A local entry holding `v`, fresh for an hour.
fn entry(v: u64) -> LocalData<u64> {
    let times = Times {
        written_ms: 0,
        soft_ms: u64::MAX,
        fresh_ms: 3_600_000,
        stale_ms: 3_600_000,
    };
    LocalData::new(
        Some(Arc::new(v)),
        times,
        Clock::default().now(),
        0,
        Duration::from_secs(3600),
        Box::new([]),
        8,
    )
}

/// Moka's entry for the key and the hot slots in front of it.
struct Hot {
    /// The local tier's entry for the key.
    moka: Mutex<Option<LocalData<u64>>>,
    /// The hot slots.
    hot: HotSlots<u64>,
}

impl Hot {
    /// `Inner::with_local_entry`: the hot slot's copy, else moka's entry,
    /// offered to the slot under the epochs read before the moka read.
    fn read(&self) -> Option<u64> {
        if let Some(v) = self.hot.with(&KEY, value_of) {
            return v;
        }
        let stamp = self.hot.stamp(&KEY);
        let e = self.moka.lock().unwrap().clone()?;
        self.hot.put(KEY, stamp, &e, |_| None);
        value_of(&e)
    }

    /// What the hot slot alone answers.
    fn copy(&self) -> Option<u64> {
        self.hot.with(&KEY, value_of).flatten()
    }
}

/// The value a local entry holds.
fn value_of(e: &LocalData<u64>) -> Option<u64> {
    e.value.as_deref().copied()
}

/// A thread reads the key through its hot slot while another changes it
/// in moka: once the change is done, the slot never answers with the old
/// value. Also checks that the model is not vacuous: in some interleavings
/// the slot does serve the old value before the change.
#[test]
fn hot_copy_never_outlives_a_change() {
    let served = Arc::new(plain::AtomicUsize::new(0));
    for change in [Change::Fill, Change::Evict, Change::Flush] {
        let served = Arc::clone(&served);
        check(&format!("hot, {change:?}"), None, move || {
            let cache = Arc::new(Hot {
                moka: Mutex::new(Some(entry(OLD))),
                hot: HotSlots::new(),
            });
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let cache = Arc::clone(&cache);
                let done = Arc::clone(&done);
                thread::spawn(move || {
                    match change {
                        // `Inner::fill_local`: insert, then `changed`.
                        Change::Fill => {
                            *cache.moka.lock().unwrap() = Some(entry(NEW));
                            cache.hot.changed(&KEY);
                        }
                        // `Inner::apply_local`: evict, then `changed`.
                        Change::Evict => {
                            *cache.moka.lock().unwrap() = None;
                            cache.hot.changed(&KEY);
                        }
                        // `Inner::flush_local_because`: clear, then
                        // `changed_all`.
                        Change::Flush => {
                            *cache.moka.lock().unwrap() = None;
                            cache.hot.changed_all();
                        }
                    }
                    done.store(true, SeqCst);
                })
            };
            // The second read in a row through the slot copies the entry.
            for _ in 0..2 {
                let v = cache.read();
                assert!(matches!(v, Some(OLD | NEW) | None), "{v:?}");
            }
            let finished = done.load(SeqCst);
            let copy = cache.copy();
            if finished {
                assert_ne!(
                    copy,
                    Some(OLD),
                    "{change:?}: the hot slot served a copy older than the change"
                );
            } else if copy == Some(OLD) {
                served.fetch_add(1, plain::Ordering::Relaxed);
            }
            writer.join().unwrap();
            let after = cache.copy();
            assert_ne!(after, Some(OLD), "{change:?}: once the writer has joined");
        });
    }
    assert!(
        served.load(plain::Ordering::Relaxed) > 0,
        "the hot slot never served a copy: the model checks nothing"
    );
}
