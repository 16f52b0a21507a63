//! Fills: what a load (or an insert) writes to the shared tier (under its fill
//! ticket) and the local tier (under the [`fence`](super::fence)), with
//! jittered TTLs, and the tag index the local tier keeps.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::envelope::{self, Times};
use crate::error::{EncodeError, SharedError};
use crate::key::{CacheKey, KeyHash, TagHash};
use crate::shared::FillTicket;

use super::config::{self};
use super::fence::FenceMark;
use super::local::LocalData;
use super::types::Life;
use super::{Decoded, Entry, Inner, LocalMode, jittered, log_due, scratch};

/// Why a fill's value is not stored.
enum Refused {
    /// The codec failed (or panicked).
    Codec(EncodeError),
    /// A tag cannot be recorded exactly.
    Tags(EncodeError),
    /// Over `max_value_size`.
    Oversized,
}

impl<K, V> Inner<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// [`Cache::insert_entry`].
    pub(super) async fn insert(self: &Arc<Self>, key: &K, entry: Entry<V>) {
        let inner = self;
        // Values written before now are older than this one.
        let at = inner.clock().wall_ms();
        let (sk, h) = inner.keys.storage_key_and_hash(key);
        // Revoke loads in flight (here and elsewhere) that would put back an
        // older value: the shared tier first, then the local tier (the other
        // order lets a read in between copy the old shared value back into
        // the local tier), then fill with a fresh ticket.
        let ticket = match &inner.shared {
            Some(s) => match s.invalidate(std::slice::from_ref(&sk)).await {
                Ok(()) => {
                    inner.apply_local(&[h], &[], at);
                    match s.begin_fill(&inner.config.namespace, &sk, None).await {
                        Ok(t) => Some(t),
                        Err(e) => {
                            inner.shared_error(&e);
                            None
                        }
                    }
                }
                Err(e) => {
                    // The old value stays in the shared tier until a retry
                    // deletes it; meanwhile this instance takes none of it.
                    inner.shared_error(&e);
                    inner.retry_shared_invalidation(
                        vec![sk.clone()],
                        vec![h],
                        vec![key.render()],
                        Vec::new(),
                        true,
                        at,
                    );
                    inner.apply_local(&[h], &[], at);
                    None
                }
            },
            None => {
                inner.apply_local(&[h], &[], at);
                None
            }
        };
        let mark = inner.fence.mark();
        if let Some(b) = &inner.bloom {
            b.add(h);
        }
        let life = entry.life();
        let value = Arc::new(entry.value);
        inner
            .fill(&sk, h, mark, ticket, Some(value), entry.tags, life)
            .await;
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
    pub(super) async fn begin_fill(&self, sk: &str, lease: Option<Duration>) -> Option<FillTicket> {
        let s = self.shared.as_ref()?;
        match s.begin_fill(&self.config.namespace, sk, lease).await {
            Ok(t) => Some(t),
            Err(e) => {
                self.shared_error(&e);
                None
            }
        }
    }

    pub(super) async fn abort_fill(&self, sk: &str, ticket: Option<FillTicket>) {
        if let (Some(s), Some(t)) = (&self.shared, ticket)
            && t.lease.is_some()
            && let Err(e) = s.abort_fill(sk, &t).await
        {
            self.shared_error(&e);
        }
    }

    /// Writes a loaded value (or a negative) to both tiers, unless an
    /// invalidation overtook the load. Returns its written time.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fill(
        &self,
        sk: &str,
        h: KeyHash,
        mark: FenceMark,
        ticket: Option<FillTicket>,
        value: Option<Arc<V>>,
        tags: Vec<String>,
        life: Life,
    ) -> u64 {
        let c = &self.config;
        let now = self.clock().wall_ms();
        let negative = value.is_none();
        // A per-entry TTL can come from outside (an origin's `max-age`):
        // clamped before any arithmetic, like every duration here.
        let base = if negative {
            c.negative_ttl
        } else {
            life.ttl.unwrap_or(c.ttl).min(config::MAX_LIFE)
        };
        if base.is_zero() {
            self.abort_fill(sk, ticket).await;
            return now;
        }
        let lived = jittered(
            base,
            if negative {
                c.negative_jitter
            } else {
                c.ttl_jitter
            },
        );
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let life_ms = millis(lived);
        let fresh_ms = now.saturating_add(life_ms);
        let soft_ms = match life.refresh_after.or(c.soft_ttl) {
            Some(s) if !negative => now.saturating_add(millis(s).min(life_ms)),
            _ => fresh_ms,
        };
        let stale_ms = if negative {
            fresh_ms
        } else {
            let grace = life.grace.unwrap_or(c.grace).min(config::MAX_LIFE);
            fresh_ms.saturating_add(millis(grace))
        };
        let times = Times {
            written_ms: now,
            soft_ms,
            fresh_ms,
            stale_ms,
        };
        // Tags that cannot be recorded exactly are never stored: a cut tag
        // would never match its invalidation.
        if let Err(e) = envelope::check_tags(tags.iter().map(String::as_str)) {
            self.unrecordable_tags(sk, &e);
            self.abort_fill(sk, ticket).await;
            return now;
        }
        let mut versions = vec![0u64; tags.len()];
        let mut ticket = ticket;
        if let (Some(s), Some(t)) = (&self.shared, &ticket)
            && !tags.is_empty()
        {
            match s.tag_versions(&c.namespace, &tags).await {
                Ok(v) if v.len() == tags.len() => {
                    if v.iter().any(|&x| x > t.tag_clock) {
                        // A tag of this entry was invalidated while loading.
                        self.stats.fills_revoked(1);
                        self.abort_fill(sk, ticket).await;
                        return now;
                    }
                    versions = v;
                }
                other => {
                    let e = match other {
                        Err(e) => e,
                        Ok(_) => {
                            SharedError::Server("tag_versions answered the wrong count".into())
                        }
                    };
                    self.shared_error(&e);
                    self.abort_fill(sk, ticket.take()).await;
                }
            }
        }
        let tagged: Vec<(String, u64)> = tags.iter().cloned().zip(versions).collect();
        // Written under the clear epoch its ticket carried (read before the
        // load began): a clear since makes it stale, or gone, to every
        // reader. The ticket also tells this instance of a clear it missed.
        let epoch = match &ticket {
            Some(t) => {
                self.learn_epochs(t.epochs);
                t.epochs.epoch
            }
            None => 0,
        };
        // Only a fill that will be written to the shared tier (one holding
        // its ticket) needs its envelope; the value is encoded either way,
        // for its size (the local tier's weight, and `max_value_size`).
        let written = ticket.is_some();
        let encoded = scratch::with_scratch(|payload| {
            if let Some(v) = &value {
                std::panic::catch_unwind(AssertUnwindSafe(|| self.codec.encode(v, payload)))
                    .unwrap_or_else(|_| Err(EncodeError("the codec panicked".into())))
                    .map_err(Refused::Codec)?;
            }
            // Both bounds: readers refuse a payload that decompresses past
            // `max_value_size` (a size prefix is never taken on trust).
            if payload.len() > c.max_value_size {
                return Err(Refused::Oversized);
            }
            let bytes = written
                .then(|| {
                    envelope::encode_at_epoch(
                        epoch,
                        negative,
                        times,
                        &tagged,
                        payload,
                        c.compress_at,
                    )
                })
                .transpose()
                .map_err(Refused::Tags)?;
            if bytes.as_ref().is_some_and(|b| b.len() > c.max_value_size) {
                return Err(Refused::Oversized);
            }
            Ok((bytes, payload.len()))
        });
        let (bytes, weight) = match encoded {
            Ok(e) => e,
            Err(refused) => {
                match refused {
                    Refused::Codec(e) => {
                        tracing::warn!(key = sk, error = %e, "value could not be encoded; not cached");
                    }
                    Refused::Tags(e) => self.unrecordable_tags(sk, &e),
                    Refused::Oversized => self.stats.oversized(1),
                }
                self.abort_fill(sk, ticket).await;
                return now;
            }
        };
        if let (Some(s), Some(t), Some(bytes)) = (&self.shared, &ticket, bytes) {
            match s
                .commit_fill(
                    sk,
                    t,
                    Bytes::from(bytes),
                    Duration::from_millis(stale_ms - now),
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    self.stats.fills_revoked(1);
                    return now;
                }
                Err(e) => self.shared_error(&e),
            }
        }
        let tag_hashes: Box<[TagHash]> = tags.iter().map(|t| TagHash::of(t)).collect();
        self.fill_local(
            h,
            mark,
            LocalData::new(
                value,
                times,
                self.clock().now(),
                now,
                self.local_cap(),
                tag_hashes,
                weight,
            ),
        );
        now
    }

    pub(super) fn local_cap(&self) -> Duration {
        let cap = self.config.local_ttl.unwrap_or(Duration::MAX);
        match self.mode() {
            LocalMode::Trusted => cap,
            _ => cap.min(self.config.unsynced_ttl()),
        }
    }

    pub(super) fn fill_local_decoded(&self, h: KeyHash, mark: FenceMark, d: Decoded<V>) {
        if self.local.is_none() {
            return;
        }
        self.fill_local(
            h,
            mark,
            LocalData::new(
                d.value,
                d.times,
                self.clock().now(),
                self.clock().wall_ms(),
                self.local_cap(),
                d.tags,
                d.weight,
            ),
        );
    }

    pub(super) fn fill_local(&self, h: KeyHash, mark: FenceMark, mut data: LocalData<V>) {
        let Some(local) = &self.local else { return };
        // Fresh only until the next soft clear after the load began.
        data.generation = mark.generation;
        let tags = data.tags.clone().unwrap_or_default();
        // Checked before inserting, with no invalidation recorded between
        // the check and the insert: a fill overtaken by an invalidation
        // that has already been recorded never shows its entry, not even
        // for a moment; one recorded after the insert evicts it.
        let admitted = self.fence.admit(mark, h, &tags, || {
            if !tags.is_empty() {
                self.index_tags(h, &tags);
            }
            local.insert(h, data);
            self.hot.changed(&h);
        });
        if !admitted {
            self.stats.fills_revoked(1);
            return;
        }
        // Checked after inserting too (redundant under the gate; one atomic
        // load when nothing was invalidated).
        if self.fence.revoked(mark, h, &tags) {
            local.invalidate(&h);
            self.hot.changed(&h);
            self.stats.fills_revoked(1);
        }
    }

    pub(super) fn tag_index(&self) -> std::sync::MutexGuard<'_, HashMap<TagHash, Vec<KeyHash>>> {
        self.tag_index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers which local entries carry which tags, so a tag invalidation
    /// evicts exactly those (entries evicted meanwhile are pruned lazily).
    pub(super) fn index_tags(&self, h: KeyHash, tags: &[TagHash]) {
        let Some(local) = &self.local else { return };
        let mut index = self.tag_index();
        for t in tags {
            let keys = index.entry(*t).or_default();
            if keys.len() >= 1024 && keys.len().is_power_of_two() {
                keys.retain(|k| local.contains_key(k));
            }
            keys.push(h);
        }
        if index.len() > 100_000 {
            index.retain(|_, keys| {
                keys.retain(|k| local.contains_key(k));
                !keys.is_empty()
            });
        }
    }

    /// A value not stored because its tags cannot be recorded exactly:
    /// counted, logged once per interval.
    pub(super) fn unrecordable_tags(&self, sk: &str, e: &crate::error::EncodeError) {
        self.stats.unrecordable_tags(1);
        if log_due(self.clock(), &self.last_tags_log_ms) {
            tracing::warn!(
                ns = %self.config.namespace,
                key = sk,
                error = %e,
                total = self.stats.snapshot().unrecordable_tags,
                "value served but not cached: its tags cannot be recorded exactly"
            );
        }
    }
}
