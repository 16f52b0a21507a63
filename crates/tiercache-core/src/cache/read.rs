//! Reads: the local tier (trusted or not, with its hot copies), then the shared
//! tier (decoded, checked against tag versions and applied invalidations).
//! A miss goes on to [`load`](super::load).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::Instrument;

use crate::envelope::{self};
use crate::error::{DecodeError, Error};
use crate::key::{CacheKey, KeyHash, ShowKey, TagHash};
use crate::shared::{Cleared, SharedTier};

use super::flight::StaleCopy;
use super::local::{LocalData, LocalTier};
use super::{
    BoxError, Decoded, Entry, Fetched, Inner, LocalHit, LocalMode, Outcome, SharedFind, Tier,
};

impl<K, V> Inner<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// [`Cache::with_local`].
    #[inline]
    pub(super) fn with_local<Q, R>(
        &self,
        key: &Q,
        f: impl FnOnce(LocalHit<'_, V>) -> R,
    ) -> Option<R>
    where
        Q: CacheKey + ?Sized,
    {
        let inner = self;
        inner
            .with_local_entry(&inner.keys.hash(key), |e| {
                let now = inner.clock().now();
                if now >= e.fresh_until(inner.fence.generations())
                    || e.soft.is_some_and(|s| now >= s)
                {
                    return None;
                }
                inner.stats.local_hits(1);
                if e.value.is_none() {
                    inner.stats.negative_hits(1);
                }
                Some(f(LocalHit {
                    value: e.value.as_ref(),
                    written_ms: e.written_ms,
                    age: now.saturating_duration_since(e.written),
                }))
            })
            .flatten()
    }

    /// [`Cache::lookup`].
    pub(super) async fn lookup(&self, key: &K) -> Option<Fetched<V>> {
        let h = self.keys.hash(key);
        let local = self.with_fresh_local(&h, |e| {
            self.stats.local_hits(1);
            if e.value.is_none() {
                self.stats.negative_hits(1);
            }
            Fetched {
                value: e.value.clone(),
                outcome: Outcome::Hit(Tier::Local),
                written_ms: e.written_ms,
                age: Some(self.clock().now().saturating_duration_since(e.written)),
                clock: self.clock().clone(),
            }
        });
        if local.is_some() {
            return local;
        }
        let sk = self.keys.storage_key(key);
        let mark = self.fence.mark();
        match self.shared_find(&sk, h).await {
            SharedFind::Fresh(d) => {
                let found = self.shared_hit(&d);
                self.fill_local_decoded(h, mark, d);
                Some(found)
            }
            _ => {
                self.stats.misses(1);
                None
            }
        }
    }

    /// [`Cache::fetch_revalidating`]: the local tier, then the miss path.
    pub(super) async fn fetch<F, Fut, E>(
        self: &Arc<Self>,
        key: &K,
        loader: F,
    ) -> Result<Fetched<V>, Error>
    where
        F: FnOnce(Option<Arc<V>>) -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = self;
        let h = inner.keys.hash(key);
        let mut stale = None;
        if let Some(e) = inner.local_entry(&h) {
            let now = inner.clock().now();
            let fresh = now < e.fresh_until(inner.fence.generations());
            let refresh = fresh
                && e.soft.is_some_and(|s| now >= s)
                && e.refreshing
                    .as_ref()
                    .is_some_and(|r| !r.swap(true, Ordering::AcqRel));
            if fresh {
                inner.stats.local_hits(1);
                if e.value.is_none() {
                    inner.stats.negative_hits(1);
                }
                if refresh {
                    let current = e.value.clone();
                    self.refresh(key, h, move || loader(current));
                }
                return Ok(Fetched {
                    value: e.value,
                    outcome: Outcome::Hit(Tier::Local),
                    written_ms: e.written_ms,
                    age: Some(now.saturating_duration_since(e.written)),
                    clock: inner.clock().clone(),
                });
            }
            // A copy kept across a bus disconnect may predate an
            // invalidation not yet replayed: no stale copy until revived.
            if let Some(value) = &e.value
                && now < e.stale
                && !inner.fence.is_parked(e.generation)
            {
                stale = Some(StaleCopy {
                    value: Arc::clone(value),
                    written_ms: e.written_ms,
                    until: e.stale,
                });
            }
        }
        // Boxed: the miss path's future is large, and a caller's future that
        // holds it inline is copied whole each time it moves (into a spawned
        // task, say), hits included.
        Box::pin(self.fetch_slow(key, h, stale, loader).instrument(
            tracing::debug_span!("tiercache.fetch", ns = %inner.config.namespace, key = %ShowKey(key)),
        ))
        .await
    }
}

impl<K, V> Inner<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    #[inline]
    pub(super) fn mode(&self) -> LocalMode {
        match self.mode.load(Ordering::Relaxed) {
            0 => LocalMode::Trusted,
            1 => LocalMode::Capped,
            _ => LocalMode::Bypass,
        }
    }

    /// The local entry under `h` (fresh or not), from this thread's hot
    /// slots or moka; `None` when the local tier is off, not trusted, or
    /// has no such entry.
    #[inline]
    pub(super) fn local_entry(&self, h: &KeyHash) -> Option<LocalData<V>> {
        self.with_local_entry(h, LocalData::clone)
    }

    /// `f` on the local entry under `h` (fresh or not), borrowed from this
    /// thread's hot slots or read from moka.
    #[inline]
    pub(super) fn with_local_entry<R>(
        &self,
        h: &KeyHash,
        f: impl FnOnce(&LocalData<V>) -> R,
    ) -> Option<R> {
        let local = self.local_for_read()?;
        let mut f = Some(f);
        if let Some(r) = self.hot.with(h, |e| f.take().map(|f| f(e))).flatten() {
            return Some(r);
        }
        let stamp = self.hot.stamp(h);
        let e = local.get(h)?;
        self.hot.put(*h, stamp, &e, |v| self.codec.thread_copy(v));
        f.map(|f| f(&e))
    }

    #[inline]
    pub(super) fn local_for_read(&self) -> Option<&LocalTier<V>> {
        match self.mode() {
            LocalMode::Bypass => None,
            _ => self.local.as_ref(),
        }
    }

    /// `f` on the fresh local entry under `h`, if there is one.
    #[inline]
    pub(super) fn with_fresh_local<R>(
        &self,
        h: &KeyHash,
        f: impl FnOnce(&LocalData<V>) -> R,
    ) -> Option<R> {
        let generations = self.fence.generations();
        self.with_local_entry(h, |e| {
            (self.clock().now() < e.fresh_until(generations)).then(|| f(e))
        })
        .flatten()
    }

    /// The fresh local entry under `h`, counted as a local hit: `Some(value)`
    /// (the value itself `None` for a negative entry), or `None` on a miss.
    #[inline]
    pub(super) fn local_fresh(&self, h: &KeyHash) -> Option<Option<Arc<V>>> {
        self.with_fresh_local(h, |e| {
            self.stats.local_hits(1);
            e.value.clone()
        })
    }

    pub(super) fn shared_for_read(&self) -> Option<&Arc<dyn SharedTier>> {
        self.shared.as_ref()
    }

    /// Counts a fresh shared-tier hit (and a negative one) and makes its
    /// answer.
    pub(super) fn shared_hit(&self, d: &Decoded<V>) -> Fetched<V> {
        self.stats.shared_hits(1);
        if d.value.is_none() {
            self.stats.negative_hits(1);
        }
        self.answer(
            d.value.clone(),
            Outcome::Hit(Tier::Shared),
            d.times.written_ms,
        )
    }

    pub(super) async fn shared_find(&self, sk: &str, h: KeyHash) -> SharedFind<V> {
        let Some(shared) = self.shared_for_read() else {
            return SharedFind::Miss;
        };
        let got = match &self.reads {
            Some(reads) => reads.get(sk).await,
            None => shared.get(sk).await.map_err(Arc::new),
        };
        match got {
            Ok(Some(bytes)) => self.accept_shared(sk, h, &bytes).await,
            Ok(None) => SharedFind::Miss,
            Err(e) => {
                self.shared_error(&e);
                SharedFind::Miss
            }
        }
    }

    /// Decodes and checks a shared-tier value of `sk` (hash `h`): corrupt
    /// ones are deleted and counted, newer formats left alone, tag-invalidated
    /// ones ignored, and so are ones written before an invalidation this
    /// instance applied (their delete failed in the shared tier and is being
    /// retried; a load will overwrite them).
    pub(super) async fn accept_shared(&self, sk: &str, h: KeyHash, bytes: &[u8]) -> SharedFind<V> {
        // Judged by the namespace's clear epochs, which must be known.
        if !self.epochs_ready().await {
            return SharedFind::Miss;
        }
        let env = match envelope::decode_limited(bytes, self.config.max_value_size) {
            Ok(e) => e,
            Err(DecodeError::FutureVersion(v)) => {
                self.stats.foreign_versions(1);
                tracing::debug!(
                    key = sk,
                    version = v,
                    "shared value of a newer format; miss"
                );
                return SharedFind::Miss;
            }
            Err(e) => return self.corrupt(sk, &e).await,
        };
        let now = self.clock().wall_ms();
        if now >= env.times.stale_ms {
            return SharedFind::Miss;
        }
        let tags: Box<[TagHash]> = env.tags.iter().map(|(t, _)| TagHash::of(t)).collect();
        if self.fence.superseded(h, &tags, env.times.written_ms) || self.fence.is_held(h, &tags) {
            self.stats.shared_superseded(1);
            tracing::debug!(
                key = sk,
                "shared value older than an invalidation applied here; miss"
            );
            return SharedFind::Miss;
        }
        let cleared = self.epochs.get().judge(env.epoch);
        if cleared == Cleared::Gone {
            self.stats.shared_superseded(1);
            tracing::debug!(
                key = sk,
                epoch = env.epoch,
                "shared value older than a hard clear; miss"
            );
            return SharedFind::Miss;
        }
        if !env.tags.is_empty() {
            let names: Vec<String> = env.tags.iter().map(|(t, _)| t.clone()).collect();
            match self.shared.as_ref() {
                Some(s) => match s.tag_versions(&self.config.namespace, &names).await {
                    Ok(current) => {
                        let recorded = env.tags.iter().map(|(_, v)| *v);
                        if current.len() != names.len() || !current.iter().copied().eq(recorded) {
                            return SharedFind::Miss;
                        }
                    }
                    Err(e) => {
                        self.shared_error(&e);
                        return SharedFind::Miss;
                    }
                },
                None => return SharedFind::Miss,
            }
        }
        let value = if env.negative {
            None
        } else {
            // A codec that panics on some bytes makes them corrupt, like any
            // other undecodable value: deleted and counted, never a panic in
            // the caller's request.
            let decoded =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.codec.decode(&env.payload)))
                    .unwrap_or_else(|_| Err(DecodeError::Corrupt("the codec panicked".into())));
            match decoded {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => return self.corrupt(sk, &e).await,
            }
        };
        let d = Decoded {
            value,
            times: env.times,
            tags,
            weight: env.payload.len(),
        };
        if now < env.times.fresh_ms && cleared == Cleared::Current {
            SharedFind::Fresh(d)
        } else {
            SharedFind::Stale(d)
        }
    }

    pub(super) async fn corrupt(&self, sk: &str, e: &DecodeError) -> SharedFind<V> {
        self.stats.corrupt_values(1);
        tracing::warn!(key = sk, error = %e, "undecodable value in the shared tier; deleted");
        if let Some(s) = &self.shared
            && let Err(e) = s.delete(sk).await
        {
            self.shared_error(&e);
        }
        SharedFind::Miss
    }
}
