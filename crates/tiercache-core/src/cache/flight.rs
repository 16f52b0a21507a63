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
use crate::clock::Instant;
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

/// A copy past its TTL and within grace that a caller found, which it may
/// answer with while a load goes on (see `Inner::fetch_slow`).
pub(crate) struct StaleCopy<V> {
    pub(crate) value: Arc<V>,
    pub(crate) written_ms: u64,
    /// Served no later than this.
    pub(crate) until: Instant,
}

impl<V> Clone for StaleCopy<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            written_ms: self.written_ms,
            until: self.until,
        }
    }
}

pub(crate) type LoadResult<V> = Result<Loaded<V>, Error>;
type Slot<V> = Option<LoadResult<V>>;
type FlightMap<V> = HashMap<KeyHash, InFlight<V>>;

/// A flight as callers find it in the map.
struct InFlight<V> {
    id: u64,
    rx: watch::Receiver<Slot<V>>,
    elsewhere: watch::Receiver<bool>,
    /// Led by a caller that missed both tiers (not a refresh or a batch):
    /// later callers may join it before reading the shared tier themselves
    /// ([`Flights::join_early`]).
    miss: bool,
    /// The stale copy that caller found, for early joiners to answer with.
    stale: Option<StaleCopy<V>>,
}

impl<V> InFlight<V> {
    fn waiter(&self) -> Waiter<V> {
        Waiter {
            rx: self.rx.clone(),
            elsewhere: self.elsewhere.clone(),
        }
    }
}

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

    /// Joins the load of `key` in flight, or becomes its leader (of a
    /// refresh or a batch load: callers do not join it early).
    pub(crate) fn join(self: &Arc<Self>, key: KeyHash) -> Role<V> {
        self.join_as(key, false, None)
    }

    /// [`join`](Self::join) for a caller that missed both tiers, with the
    /// stale copy it found, if any. Leading, it lets later callers join
    /// before their own shared read and hands them `stale`.
    pub(crate) fn join_miss(
        self: &Arc<Self>,
        key: KeyHash,
        stale: Option<StaleCopy<V>>,
    ) -> Role<V> {
        self.join_as(key, true, stale)
    }

    /// Joins the load of `key` in flight if a caller that missed both tiers
    /// leads it, with the stale copy that caller found: what this caller
    /// would learn from the shared tier is what the leader learned, or the
    /// load's outcome. A refresh's flight is not joined: the shared tier
    /// still has a fresh value for the asking.
    ///
    /// The flight is detached when its key is invalidated, so a caller that
    /// arrives after an invalidation never joins a load from before it.
    pub(crate) fn join_early(&self, key: &KeyHash) -> Option<(Waiter<V>, Option<StaleCopy<V>>)> {
        let map = self.map();
        let f = map.get(key).filter(|f| f.miss)?;
        Some((f.waiter(), f.stale.clone()))
    }

    fn join_as(self: &Arc<Self>, key: KeyHash, miss: bool, stale: Option<StaleCopy<V>>) -> Role<V> {
        let mut map = self.map();
        if let Some(f) = map.get(&key) {
            // A finished flight whose leader has not yet removed it still
            // answers its waiters correctly: the value is in the channel.
            return Role::Waiter(f.waiter());
        }
        let (tx, rx) = watch::channel(None);
        let (elsewhere, elsewhere_rx) = watch::channel(false);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(
            key,
            InFlight {
                id,
                rx: rx.clone(),
                elsewhere: elsewhere_rx.clone(),
                miss,
                stale,
            },
        );
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
        if map.get(&self.key).is_some_and(|f| f.id == self.id) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn flights() -> Arc<Flights<String>> {
        Arc::new(Flights::new())
    }

    fn loaded(v: &str) -> LoadResult<String> {
        Ok(Loaded {
            value: Some(Arc::new(v.to_owned())),
            written_ms: 7,
        })
    }

    /// The value of an outcome, or its error.
    fn value(r: LoadResult<String>) -> Result<Option<String>, Error> {
        r.map(|l| l.value.map(|v| (*v).clone()))
    }

    fn lead(f: &Arc<Flights<String>>, key: KeyHash) -> (Leader<String>, Waiter<String>) {
        match f.join(key) {
            Role::Leader(l, w) => (l, w),
            Role::Waiter(_) => panic!("expected to lead the load of {key:?}"),
        }
    }

    fn follow(f: &Arc<Flights<String>>, key: KeyHash) -> Waiter<String> {
        match f.join(key) {
            Role::Waiter(w) => w,
            Role::Leader(..) => panic!("expected to join the load of {key:?} in flight"),
        }
    }

    /// Every waiter of `ws`, awaited with a bound: none may hang.
    async fn outcomes(ws: Vec<Waiter<String>>) -> Vec<Result<Option<String>, Error>> {
        let mut out = Vec::new();
        for w in ws {
            let r = tokio::time::timeout(Duration::from_secs(5), w.wait())
                .await
                .expect("a waiter is woken");
            out.push(value(r));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_caller_leads_and_every_other_gets_its_outcome() {
        let f = flights();
        let k = KeyHash(1);
        let (leader, own) = lead(&f, k);
        let early = follow(&f, k);
        // One waiter already parked on the channel when the outcome lands.
        let parked = tokio::spawn(follow(&f, k).wait());
        tokio::task::yield_now().await;
        leader.complete(loaded("v"));
        let late = own; // awaited only after the outcome was published
        let parked = parked.await.unwrap().unwrap();
        assert_eq!(parked.written_ms, 7);
        assert_eq!(parked.value.as_deref().map(String::as_str), Some("v"));
        for r in outcomes(vec![early, late]).await {
            assert_eq!(r.unwrap().as_deref(), Some("v"));
        }
    }

    #[test]
    fn a_completed_flight_is_removed_and_counted() {
        let f = flights();
        let (k, other) = (KeyHash(1), KeyHash(2));
        assert_eq!((f.ended(&k), f.ended(&other)), (0, 0));
        let (leader, _) = lead(&f, k);
        let _ = follow(&f, k);
        assert_eq!(f.ended(&k), 0, "not counted while in flight");
        leader.complete(loaded("v"));
        assert_eq!(f.ended(&k), 1, "counted once it completed");
        assert_eq!(f.ended(&other), 0, "another bucket's count is untouched");
        assert!(f.map().is_empty(), "the flight is gone");
        let _next = lead(&f, k);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_reaches_every_waiter_and_is_not_kept() {
        let f = flights();
        let k = KeyHash(3);
        let (leader, own) = lead(&f, k);
        let other = follow(&f, k);
        leader.complete(Err(Error::Timeout(Duration::from_secs(2))));
        for r in outcomes(vec![own, other]).await {
            assert!(
                matches!(r, Err(Error::Timeout(d)) if d == Duration::from_secs(2)),
                "got {r:?}"
            );
        }
        let _retry = lead(&f, k);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_dropped_without_an_outcome_cancels_its_waiters() {
        let f = flights();
        let k = KeyHash(4);
        let (leader, own) = lead(&f, k);
        let parked = tokio::spawn(follow(&f, k).wait());
        let other = follow(&f, k);
        tokio::task::yield_now().await;
        drop(leader);
        assert!(matches!(parked.await.unwrap(), Err(Error::LoaderCancelled)));
        for r in outcomes(vec![own, other]).await {
            assert!(matches!(r, Err(Error::LoaderCancelled)), "got {r:?}");
        }
        assert_eq!(f.ended(&k), 0, "a cancelled flight filled nothing");
        assert!(f.map().is_empty(), "and is gone: the next caller leads");
        let _next = lead(&f, k);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_task_panics_cancels_its_waiters() {
        let f = flights();
        let k = KeyHash(5);
        let (leader, _) = lead(&f, k);
        let waiter = follow(&f, k);
        let task = tokio::spawn(async move {
            let _leader = leader;
            tokio::task::yield_now().await;
            panic!("loader bug");
        });
        let r = tokio::time::timeout(Duration::from_secs(5), waiter.wait())
            .await
            .expect("the waiter is woken");
        assert!(
            matches!(r, Err(Error::LoaderCancelled)),
            "got {:?}",
            value(r)
        );
        assert!(task.await.unwrap_err().is_panic());
        let _next = lead(&f, k);
    }

    /// Detaching (an invalidation) leaves the old flight to its waiters,
    /// and its end does not remove the new flight of the same key.
    #[tokio::test(start_paused = true)]
    async fn a_detached_flight_answers_its_waiters_while_new_callers_lead_anew() {
        let f = flights();
        let k = KeyHash(6);
        let (old, old_own) = lead(&f, k);
        let old_waiter = follow(&f, k);
        f.detach(k);
        let (new, new_own) = lead(&f, k);
        old.complete(loaded("old"));
        let joined_after = follow(&f, k);
        new.complete(loaded("new"));
        let got = outcomes(vec![old_own, old_waiter, new_own, joined_after]).await;
        let got: Vec<_> = got.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(got, ["old", "old", "new", "new"]);
        assert_eq!(f.ended(&k), 2);
    }

    #[test]
    fn detach_all_detaches_every_key() {
        let f = flights();
        let (_a, _) = lead(&f, KeyHash(1));
        let (_b, _) = lead(&f, KeyHash(2));
        f.detach_all();
        let _a2 = lead(&f, KeyHash(1));
        let _b2 = lead(&f, KeyHash(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_held_elsewhere_ends_the_wait_early_but_not_the_flight() {
        let f = flights();
        let k = KeyHash(7);
        let (leader, own) = lead(&f, k);
        let impatient = tokio::spawn(follow(&f, k).wait_or_elsewhere());
        let patient = follow(&f, k);
        tokio::task::yield_now().await;
        leader.lease_signal().held_elsewhere();
        assert!(matches!(impatient.await.unwrap(), WaitEnd::Elsewhere));
        // Raised already: a caller arriving now is told at once.
        assert!(matches!(
            follow(&f, k).wait_or_elsewhere().await,
            WaitEnd::Elsewhere
        ));
        assert!(!f.map().is_empty(), "the flight goes on");
        let finished = follow(&f, k);
        leader.complete(loaded("filled elsewhere"));
        for r in outcomes(vec![own, patient]).await {
            assert_eq!(r.unwrap().as_deref(), Some("filled elsewhere"));
        }
        // Once there is an outcome, it wins over the lease signal.
        match finished.wait_or_elsewhere().await {
            WaitEnd::Done(r) => assert_eq!(value(r).unwrap().as_deref(), Some("filled elsewhere")),
            WaitEnd::Elsewhere => panic!("the outcome was already there"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_lease_still_sees_a_cancelled_flight() {
        let f = flights();
        let k = KeyHash(8);
        let (leader, _) = lead(&f, k);
        // The load keeps its lease signal (it raises it later), so only the
        // outcome's channel closes.
        let signal = leader.lease_signal();
        let waiting = tokio::spawn(follow(&f, k).wait_or_elsewhere());
        tokio::task::yield_now().await;
        drop(leader);
        match tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap()
        {
            WaitEnd::Done(r) => assert!(matches!(r, Err(Error::LoaderCancelled))),
            WaitEnd::Elsewhere => panic!("the lease was never held elsewhere"),
        }
        drop(signal);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_miss_flight_is_joined_early_and_it_hands_out_its_stale_copy() {
        let f = flights();
        let (refresh, miss) = (KeyHash(1), KeyHash(2));
        let _refreshing = lead(&f, refresh);
        assert!(
            f.join_early(&refresh).is_none(),
            "a refresh's flight leaves callers to read the shared tier"
        );
        assert!(f.join_early(&miss).is_none(), "nothing in flight");
        let copy = StaleCopy {
            value: Arc::new("old".to_owned()),
            written_ms: 3,
            until: crate::clock::Clock::default().now(),
        };
        let Role::Leader(leader, _) = f.join_miss(miss, Some(copy)) else {
            panic!("expected to lead");
        };
        let (waiter, stale) = f.join_early(&miss).expect("joined early");
        let stale = stale.expect("the leader's stale copy");
        assert_eq!((stale.value.as_str(), stale.written_ms), ("old", 3));
        leader.complete(loaded("new"));
        assert_eq!(value(waiter.wait().await).unwrap().as_deref(), Some("new"));
        assert!(
            f.join_early(&miss).is_none(),
            "a completed flight is not joined"
        );
        f.detach(refresh);
        assert!(f.map().is_empty());
    }
}
