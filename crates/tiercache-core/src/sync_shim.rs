//! The synchronization primitives the engine's in-process concurrency is
//! built on (singleflight, the fence and its gate, per-bucket epochs, hot slots): the
//! standard library's, or loom's in the crate's own tests built with
//! `RUSTFLAGS="--cfg tiercache_loom"` for the loom models
//! (`cache/loom_tests.rs`). Loom is a dev-dependency, so any other build
//! under that cfg (the library for a dependent, doc tests) keeps `std`.
//!
//! Plain re-exports: a normal build uses `std::sync` itself, with no
//! wrapper in between. `Arc` is not here: the engine's `Arc`s are method
//! receivers (`self: &Arc<Self>`) and values handed to moka and callers,
//! which loom's `Arc` cannot stand in for, and they order nothing.
//!
//! The cfg is `tiercache_loom`, not `loom`: `--cfg loom` would also switch
//! tokio to its own loom build, which does not compile outside loom's tests.

#[cfg(all(test, tiercache_loom))]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(all(test, tiercache_loom))]
pub(crate) use loom::sync::{Mutex, MutexGuard, RwLock, RwLockWriteGuard};

#[cfg(not(all(test, tiercache_loom)))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(all(test, tiercache_loom)))]
pub(crate) use std::sync::{Mutex, MutexGuard, RwLock, RwLockWriteGuard};
