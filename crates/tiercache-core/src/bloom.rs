//! The Bloom guard: answers "absent" for keys the origin cannot have, without
//! calling it.
//!
//! Built from a key-universe loader (every key the origin has), kept current
//! by "created" invalidations and local inserts, and rebuilt periodically so
//! deleted keys stop costing false positives. It never answers "absent" for a
//! key the origin has:
//! - until the first build finishes it answers "maybe" for everything;
//! - a build that fails keeps the previous filter;
//! - keys created while a rebuild is running are added to the new filter
//!   before it is used;
//! - while the bus is down or silent, "created" messages may be missed at
//!   any moment: it answers "maybe" for everything;
//! - after a loss signal (the bus disconnected, went silent, skipped a
//!   sequence number or dropped messages, or came back; the shared tier
//!   failed over), a "created" message may have been missed: it answers
//!   "maybe" for everything until a rebuild that started after the signal
//!   has completed, and that rebuild starts at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bloomfilter::Bloom;
use futures::future::BoxFuture;

use crate::key::KeyHash;

/// Loads every key the origin has, rendered as the cache renders keys.
pub(crate) type UniverseLoader = Arc<
    dyn Fn() -> BoxFuture<'static, Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Sync,
>;

/// Configuration of a cache's Bloom guard.
#[derive(Clone)]
pub struct BloomGuardConfig {
    pub(crate) universe: UniverseLoader,
    pub(crate) expected_items: usize,
    pub(crate) false_positive_rate: f64,
    pub(crate) rebuild_every: Duration,
}

impl std::fmt::Debug for BloomGuardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BloomGuardConfig")
            .field("expected_items", &self.expected_items)
            .field("false_positive_rate", &self.false_positive_rate)
            .field("rebuild_every", &self.rebuild_every)
            .finish()
    }
}

impl BloomGuardConfig {
    /// A guard whose key universe comes from `universe`: an async function
    /// returning every key the origin has (as the cache's key type renders
    /// them with `Display`). Defaults: sized for 100,000 keys (grown to fit
    /// what the universe returns), 1% false positives, rebuilt every 10 minutes.
    pub fn new<F, Fut, E>(universe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Vec<String>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let universe: UniverseLoader = Arc::new(move || {
            let fut = universe();
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        Self {
            universe,
            expected_items: 100_000,
            false_positive_rate: 0.01,
            rebuild_every: Duration::from_secs(600),
        }
    }

    /// Sizes the filter for at least `n` keys.
    pub fn expected_items(mut self, n: usize) -> Self {
        self.expected_items = n;
        self
    }

    /// The target false-positive rate, in (0, 1).
    pub fn false_positive_rate(mut self, p: f64) -> Self {
        self.false_positive_rate = p;
        self
    }

    /// How often the filter is rebuilt from the universe.
    pub fn rebuild_every(mut self, every: Duration) -> Self {
        self.rebuild_every = every;
        self
    }
}

pub(crate) struct BloomGuard {
    filter: RwLock<Option<Bloom<KeyHash>>>,
    /// Keys created while a rebuild is loading the universe.
    pending: Mutex<Option<Vec<KeyHash>>>,
    /// Loss signals seen so far.
    losses: AtomicU64,
    /// The loss signals a completed rebuild covers (it started after them).
    /// Below `losses`, the filter may lack a created key: it answers "maybe".
    covered: AtomicU64,
    /// The bus is down or silent: nothing it should carry can be relied on.
    bus_down: AtomicBool,
    /// Wakes the rebuild task early, after a loss signal.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    pub(crate) config: BloomGuardConfig,
}

impl BloomGuard {
    pub(crate) fn new(config: BloomGuardConfig) -> Self {
        Self {
            filter: RwLock::new(None),
            pending: Mutex::new(None),
            losses: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            bus_down: AtomicBool::new(false),
            wake: Arc::new(tokio::sync::Notify::new()),
            config,
        }
    }

    /// A loss signal: a "created" message may have been missed. Until a
    /// rebuild that starts after this completes, every key may exist.
    pub(crate) fn suspect(&self) {
        self.losses.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// The bus went down or silent: "maybe" for every key until it is back
    /// and a rebuild after that has completed.
    pub(crate) fn bus_down(&self) {
        self.bus_down.store(true, Ordering::Release);
        self.suspect();
    }

    /// The bus is live again: what it missed is a loss signal.
    pub(crate) fn bus_up(&self) {
        // The signal first: no reader sees the bus up and the loss covered.
        self.suspect();
        self.bus_down.store(false, Ordering::Release);
    }

    /// Whether the bus is down, or a loss signal is not yet covered by a
    /// completed rebuild.
    pub(crate) fn is_suspect(&self) -> bool {
        self.bus_down.load(Ordering::Acquire)
            || self.covered.load(Ordering::Acquire) < self.losses.load(Ordering::Acquire)
    }

    /// `false` only when the key is certainly absent.
    pub(crate) fn may_contain(&self, key: KeyHash) -> bool {
        if self.is_suspect() {
            return true;
        }
        match &*self.filter.read().unwrap_or_else(|p| p.into_inner()) {
            Some(f) => f.check(&key),
            None => true,
        }
    }

    /// Whether the first build has finished.
    pub(crate) fn is_ready(&self) -> bool {
        self.filter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub(crate) fn add(&self, key: KeyHash) {
        // Pending first: a rebuild swapping in its filter after this point
        // replays it; one that swapped before is updated below.
        if let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            p.push(key);
        }
        if let Some(f) = self
            .filter
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f.set(&key);
        }
    }

    /// Rebuilds the filter from the universe. On failure the old filter stays.
    pub(crate) async fn rebuild(
        &self,
        hash: impl Fn(&str) -> KeyHash,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        // The losses this rebuild covers: those seen before it starts
        // collecting created keys and loading the universe.
        let losses = self.losses.load(Ordering::Acquire);
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        let keys = match (self.config.universe)().await {
            Ok(k) => k,
            Err(e) => {
                *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(e);
            }
        };
        let size = self.config.expected_items.max(keys.len() * 2).max(1);
        let mut filter = match Bloom::new_for_fp_rate(size, self.config.false_positive_rate) {
            Ok(f) => f,
            Err(e) => {
                *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(e.into());
            }
        };
        for k in &keys {
            filter.set(&hash(k));
        }
        let mut slot = self.filter.write().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            for k in pending {
                filter.set(&k);
            }
        }
        *slot = Some(filter);
        drop(slot);
        self.covered.fetch_max(losses, Ordering::AcqRel);
        Ok(keys.len())
    }
}
