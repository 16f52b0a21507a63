//! Loads: the miss path, singleflight (one load per key per process, see
//! [`flight`](super::flight)), leases across instances, refresh-ahead and
//! batch loads.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tracing::Instrument;

use crate::error::{Error, SharedError};
use crate::key::{CacheKey, KeyHash};
use crate::shared::FillTicket;

use super::fence::FenceMark;
use super::flight::{self, Leader, LeaseSignal, Loaded, Role, StaleCopy, WaitEnd, Waiter};
use super::local::deadline;
use super::types::Life;
use super::{BoxError, Entry, Fetched, Inner, Outcome, SharedFind};

/// One key of a batch load: the key, its storage key and hash, and the
/// flight it leads.
type BatchLead<K, V> = (K, String, KeyHash, Leader<V>);

impl<K, V> Inner<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// The miss path of [`Cache::fetch_revalidating`]: the shared tier, then
    /// a load (led here or joined). `stale` is the caller's local copy past
    /// its TTL and within grace, if any.
    ///
    /// A caller that finds a load of its key in flight, led by a caller that
    /// missed both tiers, joins it before reading the shared tier: in a
    /// stampede one caller reads the shared tier and loads, and the others
    /// only wait (with the leader's stale copy, if it found one).
    pub(super) async fn fetch_slow<F, Fut, E>(
        self: &Arc<Self>,
        key: &K,
        h: KeyHash,
        mut stale: Option<StaleCopy<V>>,
        loader: F,
    ) -> Result<Fetched<V>, Error>
    where
        F: FnOnce(Option<Arc<V>>) -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = self;
        if let Some(b) = &inner.bloom
            && !b.may_contain(h)
        {
            inner.stats.bloom_rejections(1);
            return Ok(inner.answer(None, Outcome::Rejected, inner.clock().wall_ms()));
        }
        if let Some((waiter, leaders)) = inner.flights.join_early(&h) {
            inner.stats.misses(1);
            inner.stats.collapsed(1);
            let now = inner.clock().now();
            let stale = stale.or(leaders).filter(|st| now < st.until);
            return inner.await_flight(waiter, Outcome::Collapsed, stale).await;
        }
        let sk = inner.keys.storage_key(key);
        let mark = inner.fence.mark();
        let ended = inner.flights.ended(&h);
        match inner.shared_find(&sk, h).await {
            SharedFind::Fresh(d) => {
                let out = inner.shared_hit(&d);
                let refresh = d.times.soft_ms < d.times.fresh_ms
                    && inner.clock().wall_ms() >= d.times.soft_ms;
                let current = d.value.clone();
                inner.fill_local_decoded(h, mark, d);
                if refresh {
                    self.refresh_at(sk, h, move || loader(current));
                }
                return Ok(out);
            }
            SharedFind::Stale(d) => {
                if stale.is_none()
                    && let Some(value) = d.value
                {
                    let clock = inner.clock();
                    stale = Some(StaleCopy {
                        value,
                        written_ms: d.times.written_ms,
                        until: deadline(clock.now(), clock.wall_ms(), d.times.stale_ms),
                    });
                }
            }
            SharedFind::Miss => {}
        }
        inner.stats.misses(1);
        let (waiter, outcome) = match inner.flights.join_miss(h, stale.clone()) {
            Role::Waiter(w) => {
                inner.stats.collapsed(1);
                (w, Outcome::Collapsed)
            }
            Role::Leader(leader, w) => {
                match inner
                    .recheck_before_loading(leader, &h, &sk, mark, ended)
                    .await
                {
                    // The load this caller missed finished between its tier
                    // reads and its join: take its fill, load nothing.
                    Ok(done) => {
                        return Ok(inner.answer(done.value, Outcome::Collapsed, done.written_ms));
                    }
                    Err(leader) => {
                        let old = stale.as_ref().map(|st| Arc::clone(&st.value));
                        // With a stale copy, callers are answered with it
                        // while another instance loads: this load may wait
                        // for that fill as long as the lease lives.
                        let patient = old.is_some();
                        self.spawn_load(leader, sk, h, loader(old), patient);
                        (w, Outcome::Loaded)
                    }
                }
            }
        };
        inner.await_flight(waiter, outcome, stale).await
    }

    /// Waits for a flight's outcome, answered as `outcome`. With a stale copy
    /// at hand the wait is shorter: the copy answers as soon as the load
    /// finds another instance holding the key's lease (that instance is
    /// loading it; this one would only wait), once `soft_timeout` has
    /// passed, or when the load fails.
    async fn await_flight(
        &self,
        waiter: Waiter<V>,
        outcome: Outcome,
        stale: Option<StaleCopy<V>>,
    ) -> Result<Fetched<V>, Error> {
        let loaded = match stale {
            None => waiter.wait().await?,
            Some(st) => {
                let wait = async {
                    match waiter.wait_or_elsewhere().await {
                        WaitEnd::Done(r) => Some(r),
                        WaitEnd::Elsewhere => None,
                    }
                };
                let ended = match self.config.soft_timeout {
                    Some(soft) => tokio::time::timeout(soft, wait).await.unwrap_or(None),
                    None => wait.await,
                };
                match ended {
                    Some(Ok(l)) => l,
                    // An answer the loader would not have stored is not a
                    // failure of the origin: no stale copy stands in for it.
                    Some(Err(e)) if e.is_not_stored() => return Err(e),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "origin failed; serving stale");
                        return Ok(self.serve_stale(st));
                    }
                    None => return Ok(self.serve_stale(st)),
                }
            }
        };
        Ok(self.answer(loaded.value, outcome, loaded.written_ms))
    }

    /// The answer a stale copy gives (counted).
    fn serve_stale(&self, stale: StaleCopy<V>) -> Fetched<V> {
        self.stats.stale_served(1);
        self.answer(Some(stale.value), Outcome::Stale, stale.written_ms)
    }

    pub(super) fn refresh<F, Fut, E>(self: &Arc<Self>, key: &K, h: KeyHash, loader: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.refresh_at(self.keys.storage_key(key), h, loader);
    }

    pub(super) fn refresh_at<F, Fut, E>(self: &Arc<Self>, sk: String, h: KeyHash, loader: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        if let Role::Leader(leader, _) = self.flights.join(h) {
            self.stats.refreshes(1);
            // Its caller already has the current value: no hurry.
            self.spawn_load(leader, sk, h, loader(), true);
        }
    }

    pub(super) fn spawn_load<Fut, E>(
        self: &Arc<Self>,
        leader: Leader<V>,
        sk: String,
        h: KeyHash,
        fut: Fut,
        patient: bool,
    ) where
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = Arc::clone(self);
        let span = tracing::debug_span!("tiercache.load", ns = %inner.config.namespace, key = %sk);
        tokio::spawn(
            async move {
                let hard = inner.config.hard_timeout;
                let signal = leader.lease_signal();
                let run =
                    AssertUnwindSafe(Arc::clone(&inner).run_load(sk, h, fut, signal, patient))
                        .catch_unwind();
                let outcome = match tokio::time::timeout(hard, run).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => {
                        inner.stats.load_errors(1);
                        tracing::warn!("loader panicked");
                        Err(Error::LoaderPanicked)
                    }
                    Err(_) => {
                        inner.stats.load_errors(1);
                        inner.stats.load_timeouts(1);
                        Err(Error::Timeout(hard))
                    }
                };
                leader.complete(outcome);
            }
            .instrument(span),
        );
    }

    /// [`Cache::get_many_or_load`].
    pub(super) async fn get_many<F, Fut, E>(
        self: &Arc<Self>,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, Error>
    where
        K: Clone + Eq + Hash,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = self;
        let mut out: Vec<Option<Arc<V>>> = vec![None; keys.len()];
        let mut pending = Vec::new();
        let hashes: Vec<KeyHash> = keys.iter().map(|k| inner.keys.hash(k)).collect();
        for (i, h) in hashes.iter().enumerate() {
            if let Some(value) = inner.local_fresh(h) {
                out[i] = value;
                continue;
            }
            if inner.bloom.as_ref().is_some_and(|b| !b.may_contain(*h)) {
                inner.stats.bloom_rejections(1);
                continue;
            }
            pending.push(i);
        }
        if pending.is_empty() {
            return Ok(out);
        }
        let sks: Vec<String> = pending
            .iter()
            .map(|&i| inner.keys.storage_key(&keys[i]))
            .collect();
        let mark = inner.fence.mark();
        let ended: Vec<u64> = pending
            .iter()
            .map(|&i| inner.flights.ended(&hashes[i]))
            .collect();
        let found = match inner.shared_for_read() {
            Some(s) => match s.get_many(&sks).await {
                Ok(v) if v.len() == sks.len() => v,
                Ok(_) => {
                    inner.shared_error(&SharedError::Server(
                        "get_many answered the wrong count".into(),
                    ));
                    vec![None; sks.len()]
                }
                Err(e) => {
                    inner.shared_error(&e);
                    vec![None; sks.len()]
                }
            },
            None => vec![None; sks.len()],
        };
        let mut missing = Vec::new();
        for (n, ((&i, sk), bytes)) in pending.iter().zip(sks).zip(found).enumerate() {
            if let Some(bytes) = bytes
                && let SharedFind::Fresh(d) = inner.accept_shared(&sk, hashes[i], &bytes).await
            {
                inner.stats.shared_hits(1);
                out[i] = d.value.clone();
                inner.fill_local_decoded(hashes[i], mark, d);
                continue;
            }
            inner.stats.misses(1);
            missing.push((i, sk, ended[n]));
        }
        let mut waits = Vec::new();
        let mut leads = Vec::new();
        for (i, sk, ended) in missing {
            match inner.flights.join(hashes[i]) {
                Role::Waiter(w) => {
                    inner.stats.collapsed(1);
                    waits.push((i, w));
                }
                Role::Leader(l, w) => {
                    match inner
                        .recheck_before_loading(l, &hashes[i], &sk, mark, ended)
                        .await
                    {
                        Ok(done) => out[i] = done.value,
                        Err(l) => {
                            leads.push((keys[i].clone(), sk, hashes[i], l));
                            waits.push((i, w));
                        }
                    }
                }
            }
        }
        if !leads.is_empty() {
            // Leases, as a single load takes them: the keys another instance
            // is loading are awaited in the shared tier (up to `lease_wait`,
            // all at once) instead of loaded here too; the loader gets the
            // rest, and those whose wait ran out.
            //
            // The first key (in storage-key order) is a gate, asked alone:
            // a batch that finds it held elsewhere takes no lease at all and
            // waits for every key. Two instances batch-loading the same keys
            // at once would otherwise split the leases between them, each
            // wait for the other's keys before loading its own (the loader
            // is called once), and both load everything when the waits run
            // out.
            let mark = inner.fence.mark();
            leads.sort_by(|a, b| a.1.cmp(&b.1));
            let lease_ttl = inner.config.lease_ttl;
            let gate = inner.begin_fill(&leads[0].1, lease_ttl).await;
            let gate_held = gate.as_ref().is_some_and(|t| t.lease_held_elsewhere);
            let rest =
                futures::future::join_all(leads[1..].iter().map(|(_, sk, ..)| {
                    inner.begin_fill(sk, if gate_held { None } else { lease_ttl })
                }))
                .await;
            let tickets = std::iter::once(gate).chain(rest);
            let (held, mut mine): (Vec<_>, Vec<_>) =
                leads.into_iter().zip(tickets).partition(|(_, t)| {
                    gate_held || t.as_ref().is_some_and(|t| t.lease_held_elsewhere)
                });
            if !held.is_empty() {
                inner.stats.lease_waits(held.len() as u64);
                let waited = futures::future::join_all(held.iter().map(|((_, sk, h, _), _)| {
                    inner.wait_for_lease_holder(sk, *h, inner.config.lease_wait)
                }))
                .await;
                for (lead, found) in held.into_iter().zip(waited) {
                    match found {
                        Some(loaded) => {
                            inner.stats.lease_wait_hits(1);
                            lead.0.3.complete(Ok(loaded));
                        }
                        None => mine.push(lead),
                    }
                }
            }
            if !mine.is_empty() {
                let fut = loader(mine.iter().map(|((k, ..), _)| k.clone()).collect());
                let inner = Arc::clone(self);
                tokio::spawn(
                    async move { inner.run_batch(mark, mine, fut).await }
                        .instrument(tracing::debug_span!("tiercache.load_many")),
                );
            }
        }
        for (i, w) in waits {
            out[i] = w.wait().await?.value;
        }
        Ok(out)
    }
}

impl<K, V> Inner<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Double-checked singleflight, for a caller that has just become the
    /// `leader` of a load of `h`. It may have missed the tiers just before
    /// another load of the key filled them and ended its flight. That load
    /// filled the local tier before it ended, so a fresh local entry is
    /// taken as it is; and if a flight of the key's bucket ended since
    /// `ended` was read (before this caller's shared read), the shared tier
    /// is read once more. With an answer, the flight is completed with it
    /// (counted as collapsed) and the answer returned; without, the leader
    /// is handed back to load.
    pub(super) async fn recheck_before_loading(
        &self,
        leader: Leader<V>,
        h: &KeyHash,
        sk: &str,
        mark: FenceMark,
        ended: u64,
    ) -> Result<Loaded<V>, Leader<V>> {
        let mut done = self.with_fresh_local(h, |e| Loaded {
            value: e.value.clone(),
            written_ms: e.written_ms,
        });
        if done.is_none()
            && self.flights.ended(h) != ended
            && let SharedFind::Fresh(d) = self.shared_find(sk, *h).await
        {
            done = Some(Loaded {
                value: d.value.clone(),
                written_ms: d.times.written_ms,
            });
            self.stats.shared_hits(1);
            self.fill_local_decoded(*h, mark, d);
        }
        let Some(done) = done else {
            return Err(leader);
        };
        self.stats.collapsed(1);
        leader.complete(Ok(done.clone()));
        Ok(done)
    }

    pub(super) async fn run_load<Fut, E>(
        self: Arc<Self>,
        sk: String,
        h: KeyHash,
        fut: Fut,
        lease: LeaseSignal,
        patient: bool,
    ) -> flight::LoadResult<V>
    where
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let mark = self.fence.mark();
        let ticket = self.begin_fill(&sk, self.config.lease_ttl).await;
        if ticket.as_ref().is_some_and(|t| t.lease_held_elsewhere) {
            // Callers with a stale copy within grace answer with it now.
            lease.held_elsewhere();
            self.stats.lease_waits(1);
            let wait = match (patient, self.config.lease_ttl) {
                (true, Some(ttl)) => ttl.max(self.config.lease_wait),
                _ => self.config.lease_wait,
            };
            if let Some(found) = self.wait_for_lease_holder(&sk, h, wait).await {
                self.stats.lease_wait_hits(1);
                return Ok(found);
            }
        }
        self.stats.loads(1);
        let started = self.clock().now();
        let result = fut.await;
        self.stats.load_seconds.record(
            self.clock()
                .now()
                .saturating_duration_since(started)
                .as_secs_f64(),
        );
        match result {
            Err(e) => {
                let e: BoxError = e.into();
                if e.is::<crate::NotStored>() {
                    self.stats.not_stored(1);
                } else {
                    self.stats.load_errors(1);
                }
                self.abort_fill(&sk, ticket).await;
                Err(Error::Load(Arc::from(e)))
            }
            Ok(None) => {
                let written_ms = self
                    .fill(&sk, h, mark, ticket, None, Vec::new(), Life::default())
                    .await;
                Ok(Loaded {
                    value: None,
                    written_ms,
                })
            }
            Ok(Some(entry)) => {
                let life = entry.life();
                let value = Arc::new(entry.value);
                if let Some(b) = &self.bloom {
                    b.add(h);
                }
                let written_ms = self
                    .fill(
                        &sk,
                        h,
                        mark,
                        ticket,
                        Some(Arc::clone(&value)),
                        entry.tags,
                        life,
                    )
                    .await;
                Ok(Loaded {
                    value: Some(value),
                    written_ms,
                })
            }
        }
    }

    /// Runs a batch load for `leads`, each with the fill ticket (and lease)
    /// taken after `mark`.
    pub(super) async fn run_batch<Fut, E>(
        self: Arc<Self>,
        mark: FenceMark,
        leads: Vec<(BatchLead<K, V>, Option<FillTicket>)>,
        fut: Fut,
    ) where
        K: Eq + Hash,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let (leads, tickets): (Vec<_>, Vec<_>) = leads.into_iter().unzip();
        self.stats.loads(1);
        let started = self.clock().now();
        let hard = self.config.hard_timeout;
        let result = tokio::time::timeout(hard, AssertUnwindSafe(fut).catch_unwind()).await;
        self.stats.load_seconds.record(
            self.clock()
                .now()
                .saturating_duration_since(started)
                .as_secs_f64(),
        );
        let mut found = match result {
            Ok(Ok(Ok(map))) => map,
            other => {
                self.stats.load_errors(1);
                let err = match other {
                    Ok(Ok(Err(e))) => Error::Load(Arc::from(e.into())),
                    Ok(Err(_)) => Error::LoaderPanicked,
                    _ => {
                        self.stats.load_timeouts(1);
                        Error::Timeout(hard)
                    }
                };
                for ((_, sk, _, leader), ticket) in leads.into_iter().zip(tickets) {
                    self.abort_fill(&sk, ticket).await;
                    leader.complete(Err(err.clone()));
                }
                return;
            }
        };
        for ((key, sk, h, leader), ticket) in leads.into_iter().zip(tickets) {
            let value = found.remove(&key).map(Arc::new);
            if value.is_some()
                && let Some(b) = &self.bloom
            {
                b.add(h);
            }
            let written_ms = self
                .fill(
                    &sk,
                    h,
                    mark,
                    ticket,
                    value.clone(),
                    Vec::new(),
                    Life::default(),
                )
                .await;
            leader.complete(Ok(Loaded { value, written_ms }));
        }
    }

    /// Another instance holds the lease: poll the shared tier for its fill,
    /// up to `wait`.
    pub(super) async fn wait_for_lease_holder(
        &self,
        sk: &str,
        h: KeyHash,
        wait: Duration,
    ) -> Option<Loaded<V>> {
        let clock = self.clock();
        let deadline = clock.now() + wait.min(super::config::MAX_LIFE);
        let mut pause = Duration::from_millis(2);
        while clock.now() < deadline {
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(clock.now()))).await;
            pause = (pause * 2).min(Duration::from_millis(25));
            let mark = self.fence.mark();
            if let SharedFind::Fresh(d) = self.shared_find(sk, h).await {
                let loaded = Loaded {
                    value: d.value.clone(),
                    written_ms: d.times.written_ms,
                };
                self.fill_local_decoded(h, mark, d);
                return Some(loaded);
            }
        }
        None
    }
}
