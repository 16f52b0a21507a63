//! Invalidation: the shared tier first, then the local tier, then the bus;
//! the retry of a failed shared-tier delete; local flushes and the trust the
//! local tier has (see [`coherence`](super::coherence) for the receiving side).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::key::{CacheKey, KeyHash, TagHash};
use crate::message::{ClearNote, Invalidation};

use super::outbox::Sent;
use super::{FlushReason, Inner, LocalMode, log_due};

impl<K, V> Inner<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// [`Cache::invalidate_many`].
    pub(super) async fn invalidate_many(
        self: &Arc<Self>,
        keys: &[K],
        tags: &[&str],
    ) -> Option<u64> {
        let inner = self;
        let at = inner.clock().wall_ms();
        let rendered: Vec<String> = keys.iter().map(|k| k.render()).collect();
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        let sks: Vec<String> = keys.iter().map(|k| inner.keys.storage_key(k)).collect();
        let hashes: Vec<KeyHash> = keys.iter().map(|k| inner.keys.hash(k)).collect();
        // The shared tier first: evicting locally first would let a read in
        // between copy the old shared value back into the local tier.
        let done = inner.shared_invalidate(&sks, &tags).await;
        if !done {
            inner.retry_shared_invalidation(
                sks,
                hashes.clone(),
                rendered.clone(),
                tags.clone(),
                false,
                at,
            );
        }
        inner.apply_local(&hashes, &tags, at);
        inner.publish(rendered, tags, false, at).await
    }

    /// [`Cache::mark_created`].
    pub(super) async fn mark_created(self: &Arc<Self>, key: &K) {
        let inner = self;
        let at = inner.clock().wall_ms();
        let (sk, h) = inner.keys.storage_key_and_hash(key);
        if let Some(b) = &inner.bloom {
            b.add(h);
        }
        let sks = vec![sk];
        let done = inner.shared_invalidate(&sks, &[]).await;
        if !done {
            inner.retry_shared_invalidation(sks, vec![h], vec![key.render()], Vec::new(), true, at);
        }
        inner.apply_local(&[h], &[], at);
        inner
            .publish(vec![key.render()], Vec::new(), true, at)
            .await;
    }
}

impl<K, V> Inner<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    pub(crate) fn set_mode(&self, mode: LocalMode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
        self.hot.changed_all();
        if self.bus.is_some() {
            self.stats.bus_state(mode.bus_state());
        }
    }

    /// Deletes `sks` and bumps `tags` in the shared tier; whether both
    /// succeeded (no shared tier: nothing to do).
    pub(super) async fn shared_invalidate(&self, sks: &[String], tags: &[String]) -> bool {
        let Some(s) = &self.shared else {
            return true;
        };
        let mut done = true;
        if !sks.is_empty()
            && let Err(e) = s.invalidate(sks).await
        {
            self.shared_error(&e);
            done = false;
        }
        if !tags.is_empty()
            && let Err(e) = s.invalidate_tags(&self.config.namespace, tags).await
        {
            self.shared_error(&e);
            done = false;
        }
        done
    }

    /// A shared-tier invalidation failed (a timeout, a dropped connection):
    /// the old value would stay in the shared tier, and every instance
    /// would copy it back after evicting its own. Retried in the background
    /// until it succeeds (backoff from 20 ms to 1 s, given up after 5
    /// minutes, counted); then the keys are evicted here and the message is
    /// published again, for the copies made from the old value meanwhile.
    pub(super) fn retry_shared_invalidation(
        self: &Arc<Self>,
        sks: Vec<String>,
        hashes: Vec<KeyHash>,
        rendered: Vec<String>,
        tags: Vec<String>,
        created: bool,
        at_ms: u64,
    ) {
        let what = format!("invalidation of keys {rendered:?} and tags {tags:?}");
        // Until it lands, this instance takes no shared value of them (see
        // `Fence::hold`).
        let tag_hashes: Vec<TagHash> = tags.iter().map(|t| TagHash::of(t)).collect();
        self.fence.hold(&hashes, &tag_hashes);
        let weak = Arc::downgrade(self);
        self.retry_shared(what, move || {
            let (weak, sks, hashes) = (weak.clone(), sks.clone(), hashes.clone());
            let (rendered, tags, tag_hashes) = (rendered.clone(), tags.clone(), tag_hashes.clone());
            async move {
                let Some(inner) = weak.upgrade() else {
                    return true;
                };
                if !inner.shared_invalidate(&sks, &tags).await {
                    return false;
                }
                inner.fence.release(&hashes, &tag_hashes);
                inner.apply_local(&hashes, &tags, at_ms);
                inner.publish(rendered, tags, created, at_ms).await;
                true
            }
        });
    }

    /// Evicts keys and tags locally, revoking local fills in flight.
    /// Evicts `keys` and `tags` here, and revokes the loads and fills of
    /// them in flight. `at_ms` is when the invalidation happened at its
    /// source (wall clock, never later than now): shared-tier values written
    /// before it are not taken (see [`Fence::superseded`]).
    pub(crate) fn apply_local(&self, keys: &[KeyHash], tags: &[String], at_ms: u64) {
        for &h in keys {
            self.fence.invalidate_key_at(h, at_ms);
            self.flights.detach(h);
            if let Some(l) = &self.local {
                l.invalidate(&h);
                self.hot.changed(&h);
            }
        }
        for tag in tags {
            let t = TagHash::of(tag);
            self.fence.invalidate_tag_at(t, at_ms);
            self.flights.detach_all();
            let tagged = self.tag_index().remove(&t).unwrap_or_default();
            if let Some(l) = &self.local {
                for h in tagged {
                    l.invalidate(&h);
                }
                self.hot.changed_all();
            }
        }
    }

    /// Publishes an invalidation through the outbox: `Some(seq)` once it is
    /// out; `None` when it is not (yet): it stays queued and goes out in
    /// order once the bus takes it. A hung bus holds the writer at most the
    /// staleness bound: past it, the other instances have stopped trusting
    /// their local tiers anyway. `at_ms` is when the change happened here
    /// (before any value it supersedes was replaced).
    pub(super) async fn publish(
        &self,
        keys: Vec<String>,
        tags: Vec<String>,
        created: bool,
        at_ms: u64,
    ) -> Option<u64> {
        self.publish_message(keys, tags, created, None, at_ms).await
    }

    /// [`publish`](Self::publish), for a clear too.
    pub(super) async fn publish_message(
        &self,
        keys: Vec<String>,
        tags: Vec<String>,
        created: bool,
        clear: Option<ClearNote>,
        at_ms: u64,
    ) -> Option<u64> {
        let outbox = self.outbox.as_ref()?;
        let mut msg = Invalidation {
            sender_instance: self.instance,
            namespace: self.config.namespace.clone(),
            keys,
            tags,
            created,
            seq: 0,
            source_time_ms: at_ms,
            clear,
        };
        let encode = |seq| {
            msg.seq = seq;
            Bytes::from(self.messages.encode(&msg))
        };
        match outbox.publish(encode, self.config.staleness_bound).await {
            Sent::Out(seq) => {
                self.stats.invalidations_sent(1);
                Some(seq)
            }
            Sent::Late(queued) => {
                self.stats.invalidations_unsent(1);
                if log_due(self.clock(), &self.last_publish_log_ms) {
                    tracing::warn!(
                        ns = %self.config.namespace,
                        queued = queued.is_some(),
                        "invalidation not published in time; queued in order and retried (receivers that cannot hear the bus stop trusting their local tiers within the staleness bound)"
                    );
                }
                None
            }
        }
    }

    pub(crate) fn flush_local_because(&self, reason: FlushReason) {
        // Every reason but the user's own (a flush, a clear) may hide a
        // lost "created".
        if !matches!(reason, FlushReason::Requested | FlushReason::Cleared) {
            self.bloom_suspect();
            // ... and a lost clear: the epochs are read again first.
            self.epochs_suspect();
        }
        self.fence.invalidate_all();
        self.fence.unpark();
        // Loads in flight are detached when invalidations may have been
        // missed while they ran (the bus) or the user asked: no caller from
        // now on joins one. A shared-tier reconnect or failover loses no
        // invalidation a load could have raced (loads read the origin), so
        // singleflight holds across it: one load per key at a time.
        if reason != FlushReason::SharedFailover {
            self.flights.detach_all();
        }
        if let Some(l) = &self.local {
            l.invalidate_all();
            self.hot.changed_all();
        }
        self.stats.local_flushes(1);
        metrics::counter!(
            "tiercache_local_flush_reasons_total",
            "namespace" => self.config.namespace.clone(),
            "reason" => reason.as_str()
        )
        .increment(1);
        tracing::debug!(ns = %self.config.namespace, reason = reason.as_str(), "local tier flushed");
    }

    /// The bus disconnected, and may replay what it misses: every local
    /// entry is stale (served only as a stale copy) but kept, and no caller
    /// joins a load in flight. A later `Connected { resumed: true }` makes
    /// them fresh again ([`revive_local`](Self::revive_local)); anything
    /// else that says messages were missed flushes them.
    pub(crate) fn park_local(&self) {
        self.fence.park();
        self.flights.detach_all();
        self.stats.local_parks(1);
        tracing::debug!(ns = %self.config.namespace, "local tier kept while the bus is away");
    }

    /// The bus resumed after replaying everything it had missed (and the
    /// replayed invalidations evicted what changed): the entries kept by
    /// [`park_local`](Self::park_local) are fresh again.
    pub(crate) fn revive_local(&self) {
        if self.fence.revive() {
            self.stats.local_revivals(1);
            tracing::debug!(ns = %self.config.namespace, "kept local tier fresh again: the bus replayed what it missed");
        }
    }

    /// A loss signal for the Bloom guard (see [`BloomGuard::suspect`]).
    pub(crate) fn bloom_suspect(&self) {
        if let Some(b) = &self.bloom {
            b.suspect();
        }
    }

    /// The bus is down or silent (`true`), or live again (`false`), as the
    /// Bloom guard needs to know.
    pub(crate) fn bloom_bus_down(&self, down: bool) {
        match &self.bloom {
            Some(b) if down => b.bus_down(),
            Some(b) => b.bus_up(),
            None => {}
        }
    }
}
