//! The embedded shared tier: one per process, shared by every cache that is
//! given a clone of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;

use super::{ClearEpochs, FillTicket, SharedTier};
use crate::clock::{Clock, Instant};
use crate::error::SharedError;

/// How long a key's version is remembered after an invalidation. Fill tickets
/// older than this are refused (a forgotten version reads as 0, which a ticket
/// taken after an invalidation cannot match), so it only needs to outlive the
/// longest load.
const VERSION_RETENTION: Duration = Duration::from_secs(600);

#[derive(Clone)]
struct Stored {
    bytes: Bytes,
    ttl: Duration,
}

struct StoredExpiry;

impl Expiry<String, Stored> for StoredExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        v: &Stored,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        v: &Stored,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

#[derive(Default)]
struct Meta {
    clock: u64,
    versions: HashMap<String, (u64, Instant)>,
    leases: HashMap<String, (u64, Instant)>,
    tag_clocks: HashMap<String, u64>,
    tags: HashMap<(String, String), u64>,
    clears: HashMap<String, ClearEpochs>,
    next_token: u64,
}

impl Meta {
    fn prune(&mut self, now: Instant) {
        if self.versions.len() > 4096 {
            self.versions
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < VERSION_RETENTION);
        }
        if self.leases.len() > 4096 {
            self.leases.retain(|_, (_, until)| *until > now);
        }
    }
}

/// A shared tier that lives in this process: the embedded default.
///
/// It is bounded by bytes (entries are weighed by their length) and honours
/// per-entry TTLs, versions, leases and tag versions exactly as the Redis tier
/// does, so a single process with no servers is a complete deployment. Clones
/// share the same store.
#[derive(Clone)]
pub struct InProcessSharedTier {
    values: moka::sync::Cache<String, Stored>,
    meta: Arc<Mutex<Meta>>,
    /// For leases, version retention and version clocks. A value's TTL
    /// runs on moka's own clock.
    clock: Clock,
}

impl std::fmt::Debug for InProcessSharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessSharedTier")
            .field("entries", &self.values.entry_count())
            .finish()
    }
}

impl Default for InProcessSharedTier {
    fn default() -> Self {
        Self::new(256 * 1024 * 1024)
    }
}

impl InProcessSharedTier {
    /// A store that holds at most about `capacity_bytes` of values.
    pub fn new(capacity_bytes: u64) -> Self {
        let values = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|k: &String, v: &Stored| {
                u32::try_from(k.len() + v.bytes.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(StoredExpiry)
            .build();
        let clock = Clock::default();
        Self {
            values,
            meta: Arc::new(Mutex::new(Meta {
                clock: now_micros(&clock),
                ..Meta::default()
            })),
            clock,
        }
    }

    /// Reads the time from `clock` instead of the system's, for its leases
    /// and versions (the `test-util` feature; not an API). Values still
    /// expire on moka's clock.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn with_clock(mut self, clock: crate::MockClock) -> Self {
        self.clock = Clock::Mock(clock);
        self
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        // A panic while holding this lock cannot leave Meta inconsistent (every
        // update is a single map operation), so a poisoned lock is used as is.
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores raw bytes under `key`, as another program sharing the store
    /// might (tests use it to plant corrupt values).
    pub fn put_raw(&self, key: &str, bytes: Bytes, ttl: Duration) {
        self.values.insert(key.to_owned(), Stored { bytes, ttl });
    }

    /// Whether a value is stored under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
}

fn now_micros(clock: &Clock) -> u64 {
    u64::try_from(clock.since_epoch().as_micros()).unwrap_or(u64::MAX)
}

#[async_trait]
impl SharedTier for InProcessSharedTier {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, SharedError> {
        Ok(self.values.get(key).map(|s| s.bytes))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, SharedError> {
        Ok(keys
            .iter()
            .map(|k| self.values.get(k).map(|s| s.bytes))
            .collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), SharedError> {
        self.values
            .insert(key.to_owned(), Stored { bytes: value, ttl });
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), SharedError> {
        self.values.invalidate(key);
        Ok(())
    }

    async fn begin_fill(
        &self,
        namespace: &str,
        key: &str,
        lease_ttl: Option<Duration>,
    ) -> Result<FillTicket, SharedError> {
        let now = self.clock.now();
        let mut m = self.meta();
        m.prune(now);
        let version = m.versions.get(key).map_or(0, |(v, _)| *v);
        let tag_clock = m.tag_clocks.get(namespace).copied().unwrap_or(0);
        let mut lease = None;
        let mut held = false;
        if let Some(ttl) = lease_ttl {
            match m.leases.get(key) {
                Some((_, until)) if *until > now => held = true,
                _ => {
                    m.next_token += 1;
                    let token = m.next_token;
                    m.leases.insert(key.to_owned(), (token, now + ttl));
                    lease = Some(token);
                }
            }
        }
        Ok(FillTicket {
            version,
            tag_clock,
            lease,
            lease_held_elsewhere: held,
            epochs: m.clears.get(namespace).copied().unwrap_or_default(),
        })
    }

    async fn commit_fill(
        &self,
        key: &str,
        ticket: &FillTicket,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, SharedError> {
        let mut m = self.meta();
        release(&mut m, key, ticket);
        let current = m.versions.get(key).map_or(0, |(v, _)| *v);
        if current != ticket.version {
            return Ok(false);
        }
        // Stored while holding the meta lock so an invalidation cannot slip
        // between the version check and the write.
        self.values
            .insert(key.to_owned(), Stored { bytes: value, ttl });
        Ok(true)
    }

    async fn abort_fill(&self, key: &str, ticket: &FillTicket) -> Result<(), SharedError> {
        release(&mut self.meta(), key, ticket);
        Ok(())
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), SharedError> {
        let now = self.clock.now();
        let mut m = self.meta();
        for key in keys {
            m.clock = (m.clock + 1).max(now_micros(&self.clock));
            let v = m.clock;
            m.versions.insert(key.clone(), (v, now));
            m.leases.remove(key);
            self.values.invalidate(key);
        }
        Ok(())
    }

    async fn tag_versions(
        &self,
        namespace: &str,
        tags: &[String],
    ) -> Result<Vec<u64>, SharedError> {
        let m = self.meta();
        Ok(tags
            .iter()
            .map(|t| {
                m.tags
                    .get(&(namespace.to_owned(), t.clone()))
                    .copied()
                    .unwrap_or(0)
            })
            .collect())
    }

    async fn invalidate_tags(&self, namespace: &str, tags: &[String]) -> Result<(), SharedError> {
        let mut m = self.meta();
        for tag in tags {
            let clock = m.tag_clocks.get(namespace).copied().unwrap_or(0);
            let v = (clock + 1).max(now_micros(&self.clock));
            m.tag_clocks.insert(namespace.to_owned(), v);
            m.tags.insert((namespace.to_owned(), tag.clone()), v);
        }
        Ok(())
    }

    async fn clear_epochs(&self, namespace: &str) -> Result<ClearEpochs, SharedError> {
        Ok(self
            .meta()
            .clears
            .get(namespace)
            .copied()
            .unwrap_or_default())
    }

    async fn clear(
        &self,
        namespace: &str,
        hard: bool,
        after: u64,
    ) -> Result<ClearEpochs, SharedError> {
        let mut m = self.meta();
        let e = m.clears.entry(namespace.to_owned()).or_default();
        e.epoch = e.epoch.max(after).saturating_add(1);
        if hard {
            e.floor = e.epoch;
        }
        Ok(*e)
    }
}

fn release(m: &mut Meta, key: &str, ticket: &FillTicket) {
    if let Some(token) = ticket.lease
        && m.leases.get(key).is_some_and(|(t, _)| *t == token)
    {
        m.leases.remove(key);
    }
}
