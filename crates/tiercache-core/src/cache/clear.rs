//! Clearing a whole namespace at once, in O(1) on the shared tier.
//!
//! The shared tier keeps the namespace's clear epochs ([`ClearEpochs`]): a
//! clear raises the epoch, and a hard one raises the floor to it too. Every
//! value is written under the epoch its fill ticket carried (taken before
//! its load), and a reader judges it by that ([`ClearEpochs::judge`]):
//! under the floor it is gone, under the epoch it is stale (served only
//! within grace, as any entry past its TTL). Nothing is scanned or deleted:
//! old values expire with their TTL.
//!
//! Each instance knows the epochs ([`KnownEpochs`]) from:
//! - its own clears, and the clears on the bus (a message of their own);
//! - the fill tickets its loads take;
//! - a read of the shared tier before its first shared read and again
//!   before the first one after each loss signal (a gap, silence, a
//!   reconnect: a clear may have been lost with the messages), and then
//!   periodically (every four staleness bounds while the bus is live, every
//!   half bound otherwise): a clear whose message never came and whose loss
//!   nothing signalled (its sender, never heard before, crashed between the
//!   shared tier and the bus) is learnt within that period.
//!
//! Newer epochs, however learnt, clear the local tier as the clear did:
//! hard flushes it, soft makes every entry stale (the fence's soft-clear
//! generation, which every local entry records).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::message::ClearNote;
use crate::shared::ClearEpochs;

use super::{ClearMode, FlushReason, Inner, LocalMode};

/// The clear epochs an instance knows. Read without a lock (two atomics);
/// changed under one. Raised floor first, so a reader that sees an epoch
/// sees its floor.
#[derive(Default)]
pub(crate) struct KnownEpochs {
    epoch: AtomicU64,
    floor: AtomicU64,
    /// Held while the two change.
    write: Mutex<()>,
    /// Read from the shared tier at least once since the last loss signal.
    ready: AtomicBool,
    /// Loss signals so far: a read that began before one does not make the
    /// epochs ready.
    suspects: AtomicU64,
    /// One read of the epochs at a time for callers that need them ready
    /// ([`Inner::epochs_ready`]): a fresh instance's first burst of shared
    /// reads sends one, not one per caller.
    refreshing: tokio::sync::Mutex<()>,
    /// Reads of the epochs for [`Inner::epochs_ready`] finished so far.
    attempts: AtomicU64,
}

impl KnownEpochs {
    /// The epochs known now.
    pub(crate) fn get(&self) -> ClearEpochs {
        let epoch = self.epoch.load(Ordering::Acquire);
        let floor = self.floor.load(Ordering::Acquire);
        ClearEpochs { epoch, floor }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in `seen`: which clear it shows that was not known yet (a hard
    /// one when the floor rose), if any. Takes no lock when it shows none.
    fn learn(&self, seen: ClearEpochs) -> Option<ClearMode> {
        let known = self.get();
        if seen.epoch <= known.epoch && seen.floor <= known.floor {
            return None;
        }
        let _held = self.lock();
        let known = self.get();
        let mode = if seen.floor > known.floor {
            ClearMode::Hard
        } else if seen.epoch > known.epoch {
            ClearMode::Soft
        } else {
            return None;
        };
        self.floor
            .store(seen.floor.max(known.floor), Ordering::Release);
        self.epoch
            .store(seen.epoch.max(known.epoch), Ordering::Release);
        Some(mode)
    }

    /// Follows the shared tier back to `lower`, if nothing changed since
    /// `read_at` was known (when the shared tier was asked).
    fn go_back(&self, read_at: ClearEpochs, lower: ClearEpochs) -> bool {
        let _held = self.lock();
        if self.get() != read_at {
            return false;
        }
        self.epoch.store(lower.epoch, Ordering::Release);
        self.floor.store(lower.floor, Ordering::Release);
        true
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The epochs after a clear of a namespace without a shared tier.
fn next(known: ClearEpochs, mode: ClearMode) -> ClearEpochs {
    let epoch = known.epoch.saturating_add(1);
    ClearEpochs {
        epoch,
        floor: if mode == ClearMode::Hard {
            epoch
        } else {
            known.floor
        },
    }
}

impl<K, V> Inner<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// [`Cache::clear`](crate::Cache::clear): the shared tier, then here,
    /// then the bus.
    pub(super) async fn clear(self: &Arc<Self>, mode: ClearMode) -> Option<u64> {
        let at = self.clock().wall_ms();
        let hard = mode == ClearMode::Hard;
        let known = self.epochs.get();
        let epochs = match &self.shared {
            Some(s) => match s.clear(&self.config.namespace, hard, known.epoch).await {
                Ok(e) => Some(e),
                Err(e) => {
                    self.shared_error(&e);
                    None
                }
            },
            None => Some(next(known, mode)),
        };
        metrics::counter!(
            "tiercache_clears_total",
            "namespace" => self.config.namespace.clone(),
            "mode" => mode.as_str()
        )
        .increment(1);
        tracing::info!(ns = %self.config.namespace, mode = mode.as_str(), ?epochs, "namespace cleared");
        match epochs {
            Some(e) => {
                // Learnt here first, unless a concurrent reading of the same
                // epochs did it (and cleared the local tier).
                self.learn_epochs(e);
            }
            None => {
                // The shared tier keeps its values until the retry lands;
                // this instance and the others drop their local copies now.
                self.clear_local(mode);
                let weak = Arc::downgrade(self);
                self.retry_shared(format!("clear ({})", mode.as_str()), move || {
                    let weak = weak.clone();
                    async move {
                        let Some(inner) = weak.upgrade() else {
                            return true;
                        };
                        let known = inner.epochs.get().epoch;
                        let Some(s) = &inner.shared else { return true };
                        match s.clear(&inner.config.namespace, hard, known).await {
                            Ok(e) => {
                                inner.learn_epochs(e);
                                inner.publish_clear(mode, Some(e), at).await;
                                true
                            }
                            Err(e) => {
                                inner.shared_error(&e);
                                false
                            }
                        }
                    }
                });
            }
        }
        self.publish_clear(mode, epochs, at).await
    }

    /// Publishes a clear: `epochs` are the namespace's after it (`None`
    /// when the shared tier could not be reached).
    async fn publish_clear(
        &self,
        mode: ClearMode,
        epochs: Option<ClearEpochs>,
        at_ms: u64,
    ) -> Option<u64> {
        let e = epochs.unwrap_or_default();
        let note = ClearNote {
            hard: mode == ClearMode::Hard,
            epoch: e.epoch,
            floor: e.floor,
        };
        self.publish_message(Vec::new(), Vec::new(), false, Some(note), at_ms)
            .await
    }

    /// A clear heard on the bus: learnt, or applied here as it says when
    /// its sender could not reach the shared tier (epochs 0).
    pub(super) fn apply_clear_note(&self, note: ClearNote) -> ClearMode {
        let mode = if note.hard {
            ClearMode::Hard
        } else {
            ClearMode::Soft
        };
        if note.epoch == 0 {
            self.clear_local(mode);
        } else {
            self.learn_epochs(ClearEpochs {
                epoch: note.epoch,
                floor: note.floor,
            });
        }
        mode
    }

    /// Takes in epochs read anywhere (a clear, a ticket, the shared tier):
    /// a clear not known yet is applied here.
    pub(super) fn learn_epochs(&self, seen: ClearEpochs) {
        if let Some(mode) = self.epochs.learn(seen) {
            tracing::debug!(ns = %self.config.namespace, mode = mode.as_str(), ?seen, "clear learnt");
            self.clear_local(mode);
        }
    }

    /// The local side of a clear: hard flushes the local tier; soft makes
    /// every entry stale. Either way no caller from now on joins a load
    /// that began before.
    fn clear_local(&self, mode: ClearMode) {
        match mode {
            ClearMode::Hard => self.flush_local_because(FlushReason::Cleared),
            ClearMode::Soft => {
                self.fence.soft_clear();
                self.flights.detach_all();
            }
        }
    }

    /// Reads the epochs from the shared tier; whether that worked. The
    /// shared tier is the authority: epochs it holds that are newer are
    /// learnt, and older ones followed back (it lost them in a restart or a
    /// failover, or a forged message raised them here; either way its
    /// values are judged by its own count).
    pub(super) async fn refresh_epochs(&self) -> bool {
        let Some(s) = &self.shared else {
            self.epochs.ready.store(true, Ordering::Release);
            return true;
        };
        let before = self.epochs.get();
        let suspects = self.epochs.suspects.load(Ordering::Acquire);
        match s.clear_epochs(&self.config.namespace).await {
            Ok(e) => {
                if (e.epoch < before.epoch || e.floor < before.floor)
                    && self.epochs.go_back(before, e)
                {
                    tracing::warn!(ns = %self.config.namespace, known = ?before, shared = ?e, "the shared tier's clear epochs went back; following them");
                }
                self.learn_epochs(e);
                if self.epochs.suspects.load(Ordering::Acquire) == suspects {
                    self.epochs.ready.store(true, Ordering::Release);
                }
                true
            }
            Err(e) => {
                self.shared_error(&e);
                false
            }
        }
    }

    /// A loss signal (a bus gap, silence, a reconnect, a failover): a clear
    /// may have been missed with the messages, so the epochs are read again
    /// before the next shared value is judged.
    pub(super) fn epochs_suspect(&self) {
        self.epochs.suspects.fetch_add(1, Ordering::AcqRel);
        self.epochs.ready.store(false, Ordering::Release);
    }

    /// Whether shared-tier values can be judged: the epochs were read at
    /// least once since the last loss signal (read now if not).
    pub(super) async fn epochs_ready(&self) -> bool {
        if self.epochs.is_ready() {
            return true;
        }
        // Callers arriving together share one read: the others wait for
        // it, and take its outcome (a failed read is not repeated by each
        // waiter in turn, which under an outage would queue them behind one
        // call timeout each).
        let seen = self.epochs.attempts.load(Ordering::Acquire);
        let _one = self.epochs.refreshing.lock().await;
        if self.epochs.is_ready() {
            return true;
        }
        if self.epochs.attempts.load(Ordering::Acquire) != seen {
            return false;
        }
        let ok = self.refresh_epochs().await;
        self.epochs.attempts.fetch_add(1, Ordering::AcqRel);
        ok && self.epochs.is_ready()
    }

    /// How long until the epochs are read again: a clear whose message was
    /// lost is learnt within this.
    pub(super) fn epochs_refresh_every(&self) -> Duration {
        let bound = self.config.staleness_bound;
        match (self.bus.is_some(), self.mode()) {
            (true, LocalMode::Trusted) => bound * 4,
            _ => bound / 2,
        }
    }

    /// Runs `attempt` in the background until it succeeds (backoff from
    /// 20 ms to 1 s); gives up after 5 minutes, logged as `what` and counted.
    pub(super) fn retry_shared<F, Fut>(self: &Arc<Self>, what: String, attempt: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let clock = self.clock().clone();
        let ns = self.config.namespace.clone();
        tokio::spawn(async move {
            let started = clock.now();
            let mut backoff = Duration::from_millis(20);
            loop {
                tokio::time::sleep(backoff).await;
                if attempt().await {
                    return;
                }
                if clock.now().saturating_duration_since(started) > Duration::from_secs(300) {
                    tracing::error!(ns = %ns, what, "shared-tier write given up; the old values stay there until their TTL");
                    metrics::counter!("tiercache_shared_invalidations_given_up_total", "namespace" => ns)
                        .increment(1);
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
    }
}
