//! Singleflight: one load per key per process; every other caller waits for
//! it and gets the same result.
//!
//! The load runs in its own task, so a caller that gives up (is dropped) does
//! not cancel it for the others. The task's outcome reaches waiters through a
//! watch channel; if the task dies without an outcome (its runtime shut down,
//! it was aborted) the sender is dropped and every waiter wakes with
//! [`Error::LoaderCancelled`]. A panicking loader is caught in the task and
//! reported as [`Error::LoaderPanicked`]. Nobody hangs.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::epochs::KeyEpochs;
use crate::error::Error;
use crate::key::KeyHash;
use crate::sync_shim::{AtomicU64, Mutex, MutexGuard, Ordering};

/// What a load produced: the value (None: the origin has none) and when.
pub(crate) struct Loaded<V> {
    pub(crate) value: Option<Arc<V>>,
    pub(crate) written_ms: u64,
}

impl<V> Clone for Loaded<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            written_ms: self.written_ms,
        }
    }
}

pub(crate) type LoadResult<V> = Result<Loaded<V>, Error>;
type Slot<V> = Option<LoadResult<V>>;
type FlightMap<V> = HashMap<KeyHash, (u64, watch::Receiver<Slot<V>>, watch::Receiver<bool>)>;

pub(crate) struct Flights<V> {
    map: Mutex<FlightMap<V>>,
    next_id: AtomicU64,
    /// Completed flights, counted per bucket of keys (see [`Flights::ended`]).
    ended: KeyEpochs,
}

pub(crate) enum Role<V> {
    Leader(Leader<V>, Waiter<V>),
    Waiter(Waiter<V>),
}

/// Completes a flight. Dropped without completing: waiters get
/// [`Error::LoaderCancelled`].
pub(crate) struct Leader<V> {
    flights: Arc<Flights<V>>,
    key: KeyHash,
    id: u64,
    tx: watch::Sender<Slot<V>>,
    elsewhere: Arc<watch::Sender<bool>>,
}

pub(crate) struct Waiter<V> {
    rx: watch::Receiver<Slot<V>>,
    elsewhere: watch::Receiver<bool>,
}

/// Tells a flight's callers that another instance holds the key's lease:
/// this load waits for that instance's fill, and a caller with a stale copy
/// at hand may answer with it instead of waiting too.
#[derive(Clone)]
pub(crate) struct LeaseSignal(Arc<watch::Sender<bool>>);

impl LeaseSignal {
    pub(crate) fn held_elsewhere(&self) {
        self.0.send_replace(true);
    }
}

/// How a [`Waiter::wait_or_elsewhere`] ended.
pub(crate) enum WaitEnd<V> {
    /// The flight's outcome.
    Done(LoadResult<V>),
    /// Another instance holds the lease; the flight goes on.
    Elsewhere,
}

impl<V> Flights<V> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            ended: KeyEpochs::new(),
        }
    }

    /// How many flights of keys sharing `key`'s bucket have completed. A
    /// caller reads it before its tier reads; if it has moved by the time
    /// the caller leads a load, a load may have filled the tiers after the
    /// caller read them, and the caller reads them again.
    pub(crate) fn ended(&self, key: &KeyHash) -> u64 {
        self.ended.get(key)
    }

    fn map(&self) -> MutexGuard<'_, FlightMap<V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the load of `key` in flight, or becomes its leader.
    pub(crate) fn join(self: &Arc<Self>, key: KeyHash) -> Role<V> {
        let mut map = self.map();
        if let Some((_, rx, elsewhere)) = map.get(&key) {
            // A finished flight whose leader has not yet removed it still
            // answers its waiters correctly: the value is in the channel.
            return Role::Waiter(Waiter {
                rx: rx.clone(),
                elsewhere: elsewhere.clone(),
            });
        }
        let (tx, rx) = watch::channel(None);
        let (elsewhere, elsewhere_rx) = watch::channel(false);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key, (id, rx.clone(), elsewhere_rx.clone()));
        Role::Leader(
            Leader {
                flights: Arc::clone(self),
                key,
                id,
                tx,
                elsewhere: Arc::new(elsewhere),
            },
            Waiter {
                rx,
                elsewhere: elsewhere_rx,
            },
        )
    }
}

impl<V> Flights<V> {
    /// Detaches the load of `key` in flight, if any: its waiters still get
    /// its outcome, but callers arriving from now on start a new load. Called
    /// when `key` is invalidated, so no caller whose lookup began after an
    /// invalidation is handed a value loaded before it.
    pub(crate) fn detach(&self, key: KeyHash) {
        self.map().remove(&key);
    }

    /// Detaches every load in flight (a tag invalidation or a flush: which
    /// loads it concerns is not known until they finish).
    pub(crate) fn detach_all(&self) {
        self.map().clear();
    }
}

impl<V> Leader<V> {
    /// The signal its load raises when another instance holds the lease.
    pub(crate) fn lease_signal(&self) -> LeaseSignal {
        LeaseSignal(Arc::clone(&self.elsewhere))
    }

    /// Publishes the outcome to every waiter and ends the flight.
    pub(crate) fn complete(self, outcome: LoadResult<V>) {
        // Counted before the flight is removed: a caller that joins after
        // the removal (under the map's lock) sees the count moved.
        self.flights.ended.bump(&self.key);
        // Remove first: a caller arriving after this starts a new load rather
        // than reading a result that is about to be superseded.
        self.remove();
        self.tx.send_replace(Some(outcome));
    }

    fn remove(&self) {
        let mut map = self.flights.map();
        if map.get(&self.key).is_some_and(|(id, ..)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl<V> Drop for Leader<V> {
    fn drop(&mut self) {
        self.remove();
    }
}

impl<V> Waiter<V> {
    /// Waits for the flight's outcome, or until its load finds another
    /// instance holding the lease.
    pub(crate) async fn wait_or_elsewhere(self) -> WaitEnd<V> {
        let mut elsewhere = self.elsewhere.clone();
        let mut rx = self.rx.clone();
        // No `.await` inside the arms: the arms' futures borrow the channels.
        let held = tokio::select! {
            biased;
            slot = rx.wait_for(Option::is_some) => {
                return WaitEnd::Done(match slot {
                    Ok(slot) => match &*slot {
                        Some(Ok(l)) => Ok(l.clone()),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(Error::LoaderCancelled),
                    },
                    Err(_) => Err(Error::LoaderCancelled),
                });
            }
            held = elsewhere.wait_for(|b| *b) => held.is_ok(),
        };
        if held {
            WaitEnd::Elsewhere
        } else {
            // The leader is gone: its outcome (or cancellation) decides.
            WaitEnd::Done(self.wait().await)
        }
    }

    /// Waits for the flight's outcome.
    pub(crate) async fn wait(mut self) -> LoadResult<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(slot) => match &*slot {
                Some(Ok(l)) => Ok(l.clone()),
                Some(Err(e)) => Err(e.clone()),
                None => Err(Error::LoaderCancelled),
            },
            Err(_) => Err(Error::LoaderCancelled),
        }
    }
}
