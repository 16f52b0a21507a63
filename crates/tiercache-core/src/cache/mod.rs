//! The cache: read path, fills, write path.

mod config;
mod epochs;
mod fence;
mod flight;
mod hot;
mod local;
#[cfg(all(test, tiercache_loom))]
mod loom_tests;
mod outbox;
mod sync;

pub use config::{
    CacheBuilder, DEFAULT_STALENESS_BOUND, MIN_STALENESS_BOUND, embedded_bus, embedded_shared_tier,
};

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use rand::Rng;
use tracing::Instrument;

use crate::bloom::BloomGuard;
use crate::bus::Bus;
use crate::codec::Codec;
use crate::envelope::{self, Times};
use crate::error::{ConfigError, DecodeError, Error, SharedError};
use crate::key::{CacheKey, KeyFormat, KeyHash, ShowKey, TagHash};
use crate::message::{Invalidation, MessageCodec};
use crate::shared::{FillTicket, SharedTier};
use crate::stats::{CacheStats, Stats};

use config::{Config, Tier as TierChoice};
use fence::{Fence, FenceMark};
use flight::{Flights, Leader, LeaseSignal, Loaded, Role, WaitEnd};
use hot::HotSlots;
use local::{LocalData, LocalTier};
use outbox::{Outbox, Sent};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A value to cache, with the tags it carries and, optionally, its own TTL.
///
/// Tags work like a CDN's surrogate keys: one
/// [`invalidate_tag`](Cache::invalidate_tag) drops every entry carrying it.
#[derive(Clone, Debug)]
pub struct Entry<V> {
    /// The value.
    pub value: V,
    /// Tags of the entry.
    pub tags: Vec<String>,
    /// A TTL for this entry instead of the cache's (still jittered).
    pub ttl: Option<Duration>,
    /// Refresh-ahead for this entry instead of the cache's `soft_ttl`: once
    /// this old (and still fresh), a read serves it and refreshes it in the
    /// background, once. At or past the TTL: no refresh-ahead.
    pub refresh_after: Option<Duration>,
    /// How long past its TTL this entry may be served stale (the origin
    /// failing or slow) instead of the cache's `grace`.
    pub grace: Option<Duration>,
}

impl<V> Entry<V> {
    /// An untagged entry with the cache's TTL.
    pub fn new(value: V) -> Self {
        Self {
            value,
            tags: Vec::new(),
            ttl: None,
            refresh_after: None,
            grace: None,
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds tags.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Sets this entry's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets this entry's refresh-ahead point ([`refresh_after`](Self::refresh_after)).
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.refresh_after = Some(after);
        self
    }

    /// Sets this entry's grace ([`grace`](Self::grace)).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    fn life(&self) -> Life {
        Life {
            ttl: self.ttl,
            refresh_after: self.refresh_after,
            grace: self.grace,
        }
    }
}

/// An entry's own times, where it has any (else the cache's settings).
#[derive(Clone, Copy, Debug, Default)]
struct Life {
    ttl: Option<Duration>,
    refresh_after: Option<Duration>,
    grace: Option<Duration>,
}

impl<V> From<V> for Entry<V> {
    fn from(value: V) -> Self {
        Entry::new(value)
    }
}

/// A fresh local entry, borrowed (see [`Cache::with_local`]).
#[derive(Debug)]
pub struct LocalHit<'a, V> {
    /// The value; `None` for a cached "no such item".
    pub value: Option<&'a Arc<V>>,
    /// When the value was loaded from the origin, in ms since the Unix epoch.
    pub written_ms: u64,
    /// How long ago that was.
    pub age: Duration,
}

/// Which tier answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The in-process tier.
    Local,
    /// The shared tier (Redis).
    Shared,
}

/// How a lookup was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A fresh entry in a tier.
    Hit(Tier),
    /// This caller's load (or another instance's, after a lease wait).
    Loaded,
    /// Another caller's load in this process, waited for.
    Collapsed,
    /// A stale value (past its TTL, within grace) because the origin failed
    /// or was slow.
    Stale,
    /// The Bloom guard knew the key cannot exist.
    Rejected,
}

impl Outcome {
    /// Whether the answer came from the cache without waiting for the origin.
    pub fn is_hit(self) -> bool {
        matches!(self, Outcome::Hit(_) | Outcome::Rejected)
    }
}

/// The answer to [`Cache::fetch`]: the value and how it was found.
#[derive(Debug)]
pub struct Fetched<V> {
    /// The value; `None` when the origin has no such item.
    pub value: Option<Arc<V>>,
    /// How the lookup was answered.
    pub outcome: Outcome,
    /// When the value was loaded from the origin, in ms since the Unix epoch.
    pub written_ms: u64,
    /// Its age when found, where the local tier's clock already told it
    /// (a local hit reads no wall clock).
    age: Option<Duration>,
}

impl<V> Clone for Fetched<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            outcome: self.outcome,
            written_ms: self.written_ms,
            age: self.age,
        }
    }
}

impl<V> Fetched<V> {
    /// How long ago the value was loaded from the origin.
    pub fn age(&self) -> Duration {
        self.age
            .unwrap_or_else(|| Duration::from_millis(now_ms().saturating_sub(self.written_ms)))
    }
}

/// Why the whole local tier was dropped (the `reason` label of
/// `tiercache_local_flush_reasons_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushReason {
    Requested,
    SharedFailover,
    BusEnded,
    BusHeardAgain,
    SequenceGap,
    BusReconnected,
    BusDisconnected,
    MessagesDropped,
    OriginSilent,
}

impl FlushReason {
    fn as_str(self) -> &'static str {
        match self {
            FlushReason::Requested => "requested",
            FlushReason::SharedFailover => "shared_tier_reconnected_or_failed_over",
            FlushReason::BusEnded => "bus_subscription_ended",
            FlushReason::BusHeardAgain => "bus_heard_after_silence",
            FlushReason::SequenceGap => "sequence_gap",
            FlushReason::BusReconnected => "bus_reconnected",
            FlushReason::BusDisconnected => "bus_disconnected",
            FlushReason::MessagesDropped => "messages_dropped",
            FlushReason::OriginSilent => "origin_silent",
        }
    }
}

/// Whether the local tier may be trusted (hot path reads one atomic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LocalMode {
    /// The bus is live: the local tier is read and filled normally.
    Trusted = 0,
    /// The bus is down: reads go on, fills live at most the staleness bound (`unsynced_ttl`).
    Capped = 1,
    /// The bus went silent: the local tier is not read at all.
    Bypass = 2,
}

/// A two-tier cache in front of an origin. Cheap to clone (an `Arc`).
///
/// See the [crate docs](crate) for the read and write paths.
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.config.namespace)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

pub(crate) struct Inner<K, V> {
    pub(crate) config: Config,
    pub(crate) keys: KeyFormat,
    pub(crate) local: Option<LocalTier<V>>,
    /// Per-thread copies of hot local entries (see [`hot`]).
    hot: HotSlots<V>,
    pub(crate) shared: Option<Arc<dyn SharedTier>>,
    pub(crate) bus: Option<Arc<dyn Bus>>,
    codec: Arc<dyn Codec<V>>,
    flights: Arc<Flights<V>>,
    pub(crate) fence: Fence,
    pub(crate) bloom: Option<BloomGuard>,
    pub(crate) stats: Arc<Stats>,
    mode: AtomicU8,
    pub(crate) instance: u64,
    /// Publishes invalidations in order (with the bus).
    outbox: Option<Outbox>,
    last_publish_log_ms: AtomicU64,
    pub(crate) messages: MessageCodec,
    last_shared_log_ms: AtomicU64,
    last_tags_log_ms: AtomicU64,
    tag_index: std::sync::Mutex<HashMap<TagHash, Vec<KeyHash>>>,
    pub(crate) applied: tokio::sync::broadcast::Sender<Applied>,
    _key: PhantomData<fn(K)>,
}

/// An invalidation from another instance, applied here (see [`Cache::applied`]).
#[derive(Clone, Debug)]
pub struct Applied {
    /// The instance that sent it.
    pub origin: u64,
    /// Its sequence number at that instance.
    pub seq: u64,
    /// The keys it dropped.
    pub keys: Vec<String>,
    /// The tags it dropped.
    pub tags: Vec<String>,
    /// When it had been applied here (local entries evicted, fills revoked).
    pub at: std::time::Instant,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether a warning rate-limited by `last` (the time it was last logged)
/// is due: at most one per [`LOG_EVERY_MS`], however many threads ask.
fn log_due(last: &AtomicU64) -> bool {
    let now = now_ms();
    let seen = last.load(Ordering::Relaxed);
    now.saturating_sub(seen) >= LOG_EVERY_MS
        && last
            .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// The interval of rate-limited warnings.
const LOG_EVERY_MS: u64 = 10_000;

fn jittered(base: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return base;
    }
    let f = 1.0 - jitter * rand::rng().random::<f64>();
    base.mul_f64(f).max(Duration::from_millis(1))
}

/// What the shared tier had for a key.
enum SharedFind<V> {
    Fresh(Decoded<V>),
    Stale(Decoded<V>),
    Miss,
}

struct Decoded<V> {
    value: Option<Arc<V>>,
    times: Times,
    tags: Box<[TagHash]>,
    weight: usize,
}

impl<K, V> Cache<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A builder for a cache in `namespace` (a short name shared by every
    /// instance caching the same data, e.g. `"products"`).
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder<K, V> {
        CacheBuilder::new(namespace)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// This instance's id on the bus.
    pub fn instance_id(&self) -> u64 {
        self.inner.instance
    }

    /// The key format (how keys become storage keys).
    pub fn key_format(&self) -> &KeyFormat {
        &self.inner.keys
    }

    /// A stream of the invalidations from other instances as this instance
    /// applies them, with the time each was applied: for consistency checkers
    /// and staleness measurements. Costs nothing while nobody subscribes.
    pub fn applied(&self) -> tokio::sync::broadcast::Receiver<Applied> {
        self.inner.applied.subscribe()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        self.inner.stats.snapshot()
    }

    /// How long past its TTL an entry may be served stale by default (the
    /// builder's [`grace`](CacheBuilder::grace); an [`Entry`] may set its
    /// own).
    pub fn grace(&self) -> Duration {
        self.inner.config.grace
    }

    /// Whether the local tier is currently trusted (the bus is live).
    pub fn local_trusted(&self) -> bool {
        self.inner.mode() == LocalMode::Trusted
    }

    /// Entries in the local tier (approximate, as moka counts).
    pub fn local_entry_count(&self) -> u64 {
        self.inner.local.as_ref().map_or(0, |l| l.entry_count())
    }

    /// Whether the Bloom guard (if any) has finished its first build.
    pub fn bloom_ready(&self) -> bool {
        self.inner.bloom.as_ref().is_some_and(BloomGuard::is_ready)
    }

    /// Drops every local entry (the shared tier is untouched).
    pub fn flush_local(&self) {
        self.inner.flush_local_because(FlushReason::Requested);
    }

    /// The answer of the local tier alone, without awaiting: `Some` when a
    /// fresh local entry is there (its value `None` for a cached "no such
    /// item"), counted as a local hit; `None` otherwise, and then
    /// [`fetch`](Self::fetch) (or another async lookup) is the way on.
    ///
    /// An entry due for refresh-ahead answers `None`, so that the caller's
    /// `fetch`, which has the loader, serves it and starts the refresh.
    ///
    /// `key` may be any [`CacheKey`] that renders the same text as the `K` it
    /// stands for (a `str` for a `String` key, say), so a caller can look up
    /// a key it never builds as a `K`. Middleware uses this to answer a local
    /// hit inside `Service::call`, with no future to box.
    ///
    /// ```
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<String, u32> = Cache::builder("doc-get-local").local_only().build()?;
    /// cache.insert(&"a".to_string(), 1).await;
    /// let hit = cache.get_local("a").ok_or("a local hit")?;
    /// assert_eq!(hit.value.as_deref(), Some(&1));
    /// assert!(cache.get_local("b").is_none());
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn get_local<Q: CacheKey + ?Sized>(&self, key: &Q) -> Option<Fetched<V>> {
        self.with_local(key, |hit| Fetched {
            value: hit.value.cloned(),
            outcome: Outcome::Hit(Tier::Local),
            written_ms: hit.written_ms,
            age: Some(hit.age),
        })
    }

    /// [`get_local`](Self::get_local) without taking the value: `f` sees it
    /// borrowed (a hit clones no `Arc`, so cores serving the same hot entry
    /// write no shared reference count) and its answer is returned. `None`
    /// (and `f` not called) when `get_local` would answer `None`.
    ///
    /// `f` runs inside the local tier's lookup: keep it short, and a lookup
    /// of this cache from inside it may miss the local tier.
    ///
    /// ```
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<String, String> = Cache::builder("doc-with-local").local_only().build()?;
    /// cache.insert(&"a".to_string(), "apple".to_string()).await;
    /// let len = cache.with_local("a", |hit| hit.value.map(|v| v.len()));
    /// assert_eq!(len, Some(Some(5)));
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn with_local<Q, R>(&self, key: &Q, f: impl FnOnce(LocalHit<'_, V>) -> R) -> Option<R>
    where
        Q: CacheKey + ?Sized,
    {
        let inner = &self.inner;
        inner
            .with_local_entry(&inner.keys.hash(key), |e| {
                let now = quanta::Instant::now();
                if now >= e.fresh || e.soft.is_some_and(|s| now >= s) {
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

    /// The fresh value under `key`, from either tier; never calls the origin.
    /// `None` when absent, expired, or cached as "no such item".
    pub async fn get(&self, key: &K) -> Option<Arc<V>> {
        self.lookup(key).await.and_then(|f| f.value)
    }

    /// The fresh entry under `key` from either tier, with how it was found
    /// and its age; never calls the origin. `None` when absent or expired;
    /// a cached "no such item" is `Some` with no value.
    ///
    /// ```
    /// use tiercache_core::{Cache, Outcome, Tier};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<String, u32> = Cache::builder("doc-lookup").build()?;
    /// assert!(cache.lookup(&"a".to_string()).await.is_none());
    /// cache.insert(&"a".to_string(), 1).await;
    /// let found = cache.lookup(&"a".to_string()).await.ok_or("a hit")?;
    /// assert_eq!(found.outcome, Outcome::Hit(Tier::Local));
    /// assert_eq!(found.value.as_deref(), Some(&1));
    /// # Ok(()) }
    /// ```
    pub async fn lookup(&self, key: &K) -> Option<Fetched<V>> {
        let h = self.inner.keys.hash(key);
        let local = self.inner.with_fresh_local(&h, |e| {
            self.inner.stats.local_hits(1);
            if e.value.is_none() {
                self.inner.stats.negative_hits(1);
            }
            Fetched {
                value: e.value.clone(),
                outcome: Outcome::Hit(Tier::Local),
                written_ms: e.written_ms,
                age: Some(quanta::Instant::now().saturating_duration_since(e.written)),
            }
        });
        if local.is_some() {
            return local;
        }
        let sk = self.inner.keys.storage_key(key);
        let mark = self.inner.fence.mark();
        match self.inner.shared_find(&sk, h).await {
            SharedFind::Fresh(d) => {
                self.inner.stats.shared_hits(1);
                if d.value.is_none() {
                    self.inner.stats.negative_hits(1);
                }
                let found = Fetched {
                    value: d.value.clone(),
                    outcome: Outcome::Hit(Tier::Shared),
                    written_ms: d.times.written_ms,
                    age: None,
                };
                self.inner.fill_local_decoded(h, mark, d);
                Some(found)
            }
            _ => {
                self.inner.stats.misses(1);
                None
            }
        }
    }

    /// The value under `key`, loading it with `loader` on a miss. The loader
    /// returns `None` when the origin has no such item (cached as a negative
    /// entry). Errors only when the load panicked, was cancelled or timed out.
    pub async fn get_or_load<F, Fut>(&self, key: &K, loader: F) -> Result<Option<Arc<V>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        self.fetch(key, move || {
            let fut = loader();
            async move { Ok::<_, std::convert::Infallible>(fut.await.map(Entry::new)) }
        })
        .await
        .map(|f| f.value)
    }

    /// [`get_or_load`](Self::get_or_load) with a fallible loader. Loader
    /// errors are never cached; waiters of the same load all get the error
    /// (or a stale value, within grace).
    pub async fn try_get_or_load<F, Fut, E>(
        &self,
        key: &K,
        loader: F,
    ) -> Result<Option<Arc<V>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.fetch(key, move || {
            let fut = loader();
            async move { fut.await.map(|o| o.map(Entry::new)) }
        })
        .await
        .map(|f| f.value)
    }

    /// The general lookup: the loader returns an [`Entry`] (value, tags,
    /// TTL), and the answer says how it was found ([`Fetched`]).
    pub async fn fetch<F, Fut, E>(&self, key: &K, loader: F) -> Result<Fetched<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.fetch_revalidating(key, |_| loader()).await
    }

    /// [`fetch`](Self::fetch) with a loader that is given the value it
    /// replaces, when there is one at hand: the stale value (past its TTL,
    /// within grace) on a load, the current value on a refresh-ahead. An
    /// HTTP cache uses it to revalidate (a conditional request) instead of
    /// loading the whole response again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tiercache_core::{Cache, Entry};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<u64, String> = Cache::builder("doc-revalidating")
    ///     .ttl(Duration::from_millis(20)).ttl_jitter(0.0)
    ///     .grace(Duration::from_secs(60))
    ///     .build()?;
    /// let load = |old: Option<std::sync::Arc<String>>| async move {
    ///     let next = match old.as_deref() {
    ///         Some(v) => format!("{v}+"),     // revalidated from the old value
    ///         None => "v1".to_string(),
    ///     };
    ///     Ok::<_, std::convert::Infallible>(Some(Entry::new(next)))
    /// };
    /// assert_eq!(cache.fetch_revalidating(&1, load).await?.value.as_deref().map(String::as_str), Some("v1"));
    /// tokio::time::sleep(Duration::from_millis(50)).await;
    /// assert_eq!(cache.fetch_revalidating(&1, load).await?.value.as_deref().map(String::as_str), Some("v1+"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`fetch`](Self::fetch).
    pub async fn fetch_revalidating<F, Fut, E>(
        &self,
        key: &K,
        loader: F,
    ) -> Result<Fetched<V>, Error>
    where
        F: FnOnce(Option<Arc<V>>) -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = &self.inner;
        let h = inner.keys.hash(key);
        let mut stale = None;
        if let Some(e) = inner.local_entry(&h) {
            let now = quanta::Instant::now();
            let fresh = now < e.fresh;
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
                });
            }
            if e.value.is_some() && now < e.stale {
                stale = Some(Fetched {
                    value: e.value.clone(),
                    outcome: Outcome::Stale,
                    written_ms: e.written_ms,
                    age: None,
                });
            }
        }
        self.fetch_slow(key, h, stale, loader)
            .instrument(
                tracing::debug_span!("tiercache.fetch", ns = %inner.config.namespace, key = %ShowKey(key)),
            )
            .await
    }

    async fn fetch_slow<F, Fut, E>(
        &self,
        key: &K,
        h: KeyHash,
        mut stale: Option<Fetched<V>>,
        loader: F,
    ) -> Result<Fetched<V>, Error>
    where
        F: FnOnce(Option<Arc<V>>) -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = &self.inner;
        if let Some(b) = &inner.bloom
            && !b.may_contain(h)
        {
            inner.stats.bloom_rejections(1);
            return Ok(Fetched {
                value: None,
                outcome: Outcome::Rejected,
                written_ms: now_ms(),
                age: None,
            });
        }
        let sk = inner.keys.storage_key(key);
        let mark = inner.fence.mark();
        let ended = inner.flights.ended(&h);
        match inner.shared_find(&sk, h).await {
            SharedFind::Fresh(d) => {
                inner.stats.shared_hits(1);
                if d.value.is_none() {
                    inner.stats.negative_hits(1);
                }
                let out = Fetched {
                    value: d.value.clone(),
                    outcome: Outcome::Hit(Tier::Shared),
                    written_ms: d.times.written_ms,
                    age: None,
                };
                let refresh = d.times.soft_ms < d.times.fresh_ms && now_ms() >= d.times.soft_ms;
                let current = d.value.clone();
                inner.fill_local_decoded(h, mark, d);
                if refresh {
                    self.refresh_at(sk, h, move || loader(current));
                }
                return Ok(out);
            }
            SharedFind::Stale(d) => {
                if stale.is_none() && d.value.is_some() {
                    stale = Some(Fetched {
                        value: d.value,
                        outcome: Outcome::Stale,
                        written_ms: d.times.written_ms,
                        age: None,
                    });
                }
            }
            SharedFind::Miss => {}
        }
        inner.stats.misses(1);
        let (waiter, outcome) = match inner.flights.join(h) {
            Role::Waiter(w) => {
                inner.stats.collapsed(1);
                (w, Outcome::Collapsed)
            }
            Role::Leader(leader, w) => {
                match inner.settled_meanwhile(leader, &h, &sk, mark, ended).await {
                    // The load this caller missed finished between its tier
                    // reads and its join: take its fill, load nothing.
                    Ok(done) => {
                        return Ok(Fetched {
                            value: done.value,
                            outcome: Outcome::Collapsed,
                            written_ms: done.written_ms,
                            age: None,
                        });
                    }
                    Err(leader) => {
                        let old = stale.as_ref().and_then(|st| st.value.clone());
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
        let result = match &stale {
            None => waiter.wait().await,
            // With a stale copy within grace at hand: answer with it as soon
            // as the load finds another instance holding the key's lease
            // (that instance is loading it; this one would only wait), or
            // once `soft_timeout` has passed.
            Some(st) => {
                let wait = async {
                    match waiter.wait_or_elsewhere().await {
                        WaitEnd::Done(r) => Ok(r),
                        WaitEnd::Elsewhere => Err(()),
                    }
                };
                let ended = match inner.config.soft_timeout {
                    Some(soft) => tokio::time::timeout(soft, wait).await.unwrap_or(Err(())),
                    None => wait.await,
                };
                match ended {
                    Ok(r) => r,
                    Err(()) => {
                        inner.stats.stale_served(1);
                        return Ok(st.clone());
                    }
                }
            }
        };
        match result {
            Ok(l) => Ok(Fetched {
                value: l.value,
                outcome,
                written_ms: l.written_ms,
                age: None,
            }),
            Err(e) => match stale {
                // An answer the loader would not have stored is not a failure
                // of the origin: no stale copy stands in for it.
                Some(st) if !e.is_not_stored() => {
                    inner.stats.stale_served(1);
                    tracing::debug!(error = %e, "origin failed; serving stale");
                    Ok(st)
                }
                _ => Err(e),
            },
        }
    }

    fn refresh<F, Fut, E>(&self, key: &K, h: KeyHash, loader: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.refresh_at(self.inner.keys.storage_key(key), h, loader);
    }

    fn refresh_at<F, Fut, E>(&self, sk: String, h: KeyHash, loader: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        if let Role::Leader(leader, _) = self.inner.flights.join(h) {
            self.inner.stats.refreshes(1);
            // Its caller already has the current value: no hurry.
            self.spawn_load(leader, sk, h, loader(), true);
        }
    }

    /// Runs `fut` as the load of the flight `leader` leads. A `patient`
    /// load (its callers have a value to answer with) waits for another
    /// instance's fill as long as that instance's lease lives, rather than
    /// `lease_wait`.
    fn spawn_load<Fut, E>(&self, leader: Leader<V>, sk: String, h: KeyHash, fut: Fut, patient: bool)
    where
        Fut: Future<Output = Result<Option<Entry<V>>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
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

    /// Loads the missing ones of `keys` with one call of `loader`, which gets
    /// every key no tier had (and no other caller is already loading) and
    /// returns the values it found; keys it leaves out are cached as absent.
    /// The answer is in the order of `keys`.
    pub async fn get_many_or_load<F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, Error>
    where
        K: Clone + Eq + Hash,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = &self.inner;
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
                        .settled_meanwhile(l, &hashes[i], &sk, mark, ended)
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
            let mark = inner.fence.mark();
            let tickets = futures::future::join_all(
                leads
                    .iter()
                    .map(|(_, sk, ..)| inner.begin_fill(sk, inner.config.lease_ttl)),
            )
            .await;
            let (held, mut mine): (Vec<_>, Vec<_>) = leads
                .into_iter()
                .zip(tickets)
                .partition(|(_, t)| t.as_ref().is_some_and(|t| t.lease_held_elsewhere));
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
                let inner = Arc::clone(&self.inner);
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

    /// Stores `value` under `key` in both tiers, as a fresh load would, and
    /// tells other instances to drop their copies.
    pub async fn insert(&self, key: &K, value: V) {
        self.insert_entry(key, Entry::new(value)).await
    }

    /// [`insert`](Self::insert) with tags and TTL.
    pub async fn insert_entry(&self, key: &K, entry: Entry<V>) {
        let inner = &self.inner;
        // Values written before now are older than this one.
        let at = now_ms();
        let (sk, h) = inner.keys.both(key);
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
                    inner.shared_error(&e);
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

    /// Drops `key` everywhere: the shared tier, this instance's local tier,
    /// and (over the bus) every other instance's. Loads of it in flight
    /// anywhere will not fill.
    ///
    /// Returns the bus sequence number of the message sent, if one was.
    pub async fn invalidate(&self, key: &K) -> Option<u64> {
        self.invalidate_many(std::slice::from_ref(key), &[]).await
    }

    /// Drops every entry tagged `tag`, everywhere, in O(1).
    ///
    /// Returns the bus sequence number of the message sent, if one was.
    pub async fn invalidate_tag(&self, tag: &str) -> Option<u64> {
        self.invalidate_many(&[], &[tag]).await
    }

    /// Drops `keys` and every entry tagged with one of `tags`, everywhere, as
    /// one bus message.
    ///
    /// Returns the bus sequence number of the message sent, if one was.
    pub async fn invalidate_many(&self, keys: &[K], tags: &[&str]) -> Option<u64> {
        let inner = &self.inner;
        let at = now_ms();
        let rendered: Vec<String> = keys.iter().map(|k| k.render()).collect();
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        let sks: Vec<String> = keys.iter().map(|k| inner.keys.storage_key(k)).collect();
        let hashes: Vec<KeyHash> = keys.iter().map(|k| inner.keys.hash(k)).collect();
        // The shared tier first: evicting locally first would let a read in
        // between copy the old shared value back into the local tier.
        let done = inner.shared_invalidate(&sks, &tags).await;
        inner.apply_local(&hashes, &tags, at);
        if !done {
            inner.retry_shared_invalidation(sks, hashes, rendered.clone(), tags.clone(), false, at);
        }
        inner.publish(rendered, tags, false, at).await
    }

    /// Tells Bloom guards (here and, over the bus, everywhere) that `key` now
    /// exists at the origin, and drops any negative entry for it.
    pub async fn created(&self, key: &K) {
        let inner = &self.inner;
        let at = now_ms();
        let (sk, h) = inner.keys.both(key);
        if let Some(b) = &inner.bloom {
            b.add(h);
        }
        let sks = vec![sk];
        let done = inner.shared_invalidate(&sks, &[]).await;
        inner.apply_local(&[h], &[], at);
        if !done {
            inner.retry_shared_invalidation(sks, vec![h], vec![key.render()], Vec::new(), true, at);
        }
        inner
            .publish(vec![key.render()], Vec::new(), true, at)
            .await;
    }

    /// Rebuilds the Bloom guard from its universe loader now (it also
    /// rebuilds on its own schedule). Returns how many keys it holds.
    pub async fn rebuild_bloom(&self) -> Result<usize, BoxError> {
        match &self.inner.bloom {
            Some(b) => {
                let keys = self.inner.keys.clone();
                b.rebuild(|k| keys.hash(k)).await
            }
            None => Ok(0),
        }
    }
}

/// One key of a batch load: the key, its storage key and hash, and the
/// flight it leads.
type BatchLead<K, V> = (K, String, KeyHash, Leader<V>);

impl<K, V> Inner<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    #[inline]
    fn mode(&self) -> LocalMode {
        match self.mode.load(Ordering::Relaxed) {
            0 => LocalMode::Trusted,
            1 => LocalMode::Capped,
            _ => LocalMode::Bypass,
        }
    }

    pub(crate) fn set_mode(&self, mode: LocalMode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
        self.hot.changed_all();
    }

    /// The local entry under `h` (fresh or not), from this thread's hot
    /// slots or moka; `None` when the local tier is off, not trusted, or
    /// has no such entry.
    #[inline]
    fn local_entry(&self, h: &KeyHash) -> Option<LocalData<V>> {
        self.with_local_entry(h, LocalData::clone)
    }

    /// `f` on the local entry under `h` (fresh or not), borrowed from this
    /// thread's hot slots or read from moka.
    #[inline]
    fn with_local_entry<R>(&self, h: &KeyHash, f: impl FnOnce(&LocalData<V>) -> R) -> Option<R> {
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
    fn local_for_read(&self) -> Option<&LocalTier<V>> {
        match self.mode() {
            LocalMode::Bypass => None,
            _ => self.local.as_ref(),
        }
    }

    /// `f` on the fresh local entry under `h`, if there is one.
    #[inline]
    fn with_fresh_local<R>(&self, h: &KeyHash, f: impl FnOnce(&LocalData<V>) -> R) -> Option<R> {
        self.with_local_entry(h, |e| (quanta::Instant::now() < e.fresh).then(|| f(e)))
            .flatten()
    }

    /// The fresh local entry under `h`, counted as a local hit: `Some(value)`
    /// (the value itself `None` for a negative entry), or `None` on a miss.
    #[inline]
    fn local_fresh(&self, h: &KeyHash) -> Option<Option<Arc<V>>> {
        self.with_fresh_local(h, |e| {
            self.stats.local_hits(1);
            e.value.clone()
        })
    }

    /// Double-checked singleflight, for a caller that has just become the
    /// `leader` of a load of `h`. It may have missed the tiers just before
    /// another load of the key filled them and ended its flight. That load
    /// filled the local tier before it ended, so a fresh local entry is
    /// taken as it is; and if a flight of the key's bucket ended since
    /// `ended` was read (before this caller's shared read), the shared tier
    /// is read once more. With an answer, the flight is completed with it
    /// (counted as collapsed) and the answer returned; without, the leader
    /// is handed back to load.
    async fn settled_meanwhile(
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

    fn shared_for_read(&self) -> Option<&Arc<dyn SharedTier>> {
        self.shared.as_ref()
    }

    /// Deletes `sks` and bumps `tags` in the shared tier; whether both
    /// succeeded (no shared tier: nothing to do).
    async fn shared_invalidate(&self, sks: &[String], tags: &[String]) -> bool {
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
    fn retry_shared_invalidation(
        self: &Arc<Self>,
        sks: Vec<String>,
        hashes: Vec<KeyHash>,
        rendered: Vec<String>,
        tags: Vec<String>,
        created: bool,
        at_ms: u64,
    ) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut backoff = Duration::from_millis(20);
            loop {
                tokio::time::sleep(backoff).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.shared_invalidate(&sks, &tags).await {
                    inner.apply_local(&hashes, &tags, at_ms);
                    inner.publish(rendered, tags, created, at_ms).await;
                    return;
                }
                if started.elapsed() > Duration::from_secs(300) {
                    tracing::error!(ns = %inner.config.namespace, keys = ?rendered, ?tags, "shared-tier invalidation given up; the old value stays there until its TTL");
                    metrics::counter!("tiercache_shared_invalidations_given_up_total", "namespace" => inner.config.namespace.clone())
                        .increment(1);
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
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

    pub(crate) fn flush_local_because(&self, reason: FlushReason) {
        // Every reason but the user's own may hide a lost "created".
        if reason != FlushReason::Requested {
            self.bloom_suspect();
        }
        self.fence.invalidate_all();
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

    pub(crate) fn shared_error(&self, e: &SharedError) {
        self.stats.shared_errors(1);
        if log_due(&self.last_shared_log_ms) {
            tracing::warn!(
                ns = %self.config.namespace,
                error = %e,
                total_errors = self.stats.snapshot().shared_errors,
                "shared tier failing; serving from the local tier and the origin"
            );
        }
    }

    /// A value not stored because its tags cannot be recorded exactly:
    /// counted, logged once per interval.
    fn unrecordable_tags(&self, sk: &str, e: &crate::error::EncodeError) {
        self.stats.unrecordable_tags(1);
        if log_due(&self.last_tags_log_ms) {
            tracing::warn!(
                ns = %self.config.namespace,
                key = sk,
                error = %e,
                total = self.stats.snapshot().unrecordable_tags,
                "value served but not cached: its tags cannot be recorded exactly"
            );
        }
    }

    async fn shared_find(&self, sk: &str, h: KeyHash) -> SharedFind<V> {
        let Some(shared) = self.shared_for_read() else {
            return SharedFind::Miss;
        };
        match shared.get(sk).await {
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
    async fn accept_shared(&self, sk: &str, h: KeyHash, bytes: &[u8]) -> SharedFind<V> {
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
        let now = now_ms();
        if now >= env.times.stale_ms {
            return SharedFind::Miss;
        }
        let tags: Box<[TagHash]> = env.tags.iter().map(|(t, _)| TagHash::of(t)).collect();
        if self.fence.superseded(h, &tags, env.times.written_ms) {
            self.stats.shared_superseded(1);
            tracing::debug!(
                key = sk,
                "shared value older than an invalidation applied here; miss"
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
            weight: bytes.len(),
        };
        if now < env.times.fresh_ms {
            SharedFind::Fresh(d)
        } else {
            SharedFind::Stale(d)
        }
    }

    async fn corrupt(&self, sk: &str, e: &DecodeError) -> SharedFind<V> {
        self.stats.corrupt_values(1);
        tracing::warn!(key = sk, error = %e, "undecodable value in the shared tier; deleted");
        if let Some(s) = &self.shared
            && let Err(e) = s.delete(sk).await
        {
            self.shared_error(&e);
        }
        SharedFind::Miss
    }

    fn local_cap(&self) -> Duration {
        let cap = self.config.local_ttl.unwrap_or(Duration::MAX);
        match self.mode() {
            LocalMode::Trusted => cap,
            _ => cap.min(self.config.unsynced_ttl()),
        }
    }

    fn fill_local_decoded(&self, h: KeyHash, mark: FenceMark, d: Decoded<V>) {
        if self.local.is_none() {
            return;
        }
        self.fill_local(
            h,
            mark,
            LocalData::new(
                d.value,
                d.times,
                now_ms(),
                self.local_cap(),
                d.tags,
                d.weight,
            ),
        );
    }

    fn fill_local(&self, h: KeyHash, mark: FenceMark, data: LocalData<V>) {
        let Some(local) = &self.local else { return };
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

    async fn run_load<Fut, E>(
        self: Arc<Self>,
        sk: String,
        h: KeyHash,
        fut: Fut,
        lease: LeaseSignal,
        patient: bool,
    ) -> flight::Outcome<V>
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
        let started = Instant::now();
        let result = fut.await;
        self.stats
            .load_seconds
            .record(started.elapsed().as_secs_f64());
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
    async fn run_batch<Fut, E>(
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
        let started = Instant::now();
        let hard = self.config.hard_timeout;
        let result = tokio::time::timeout(hard, AssertUnwindSafe(fut).catch_unwind()).await;
        self.stats
            .load_seconds
            .record(started.elapsed().as_secs_f64());
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

    async fn begin_fill(&self, sk: &str, lease: Option<Duration>) -> Option<FillTicket> {
        let s = self.shared.as_ref()?;
        match s.begin_fill(&self.config.namespace, sk, lease).await {
            Ok(t) => Some(t),
            Err(e) => {
                self.shared_error(&e);
                None
            }
        }
    }

    async fn abort_fill(&self, sk: &str, ticket: Option<FillTicket>) {
        if let (Some(s), Some(t)) = (&self.shared, ticket)
            && t.lease.is_some()
            && let Err(e) = s.abort_fill(sk, &t).await
        {
            self.shared_error(&e);
        }
    }

    /// Another instance holds the lease: poll the shared tier for its fill,
    /// up to `wait`.
    async fn wait_for_lease_holder(
        &self,
        sk: &str,
        h: KeyHash,
        wait: Duration,
    ) -> Option<Loaded<V>> {
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        while Instant::now() < deadline {
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
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

    /// Writes a loaded value (or a negative) to both tiers, unless an
    /// invalidation overtook the load. Returns its written time.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
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
        let now = now_ms();
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
        let mut payload = Vec::new();
        if let Some(v) = &value
            && let Err(e) =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.codec.encode(v, &mut payload)))
                    .unwrap_or_else(|_| Err(crate::error::EncodeError("the codec panicked".into())))
        {
            tracing::warn!(key = sk, error = %e, "value could not be encoded; not cached");
            self.abort_fill(sk, ticket).await;
            return now;
        }
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
        let bytes = match envelope::encode(negative, times, &tagged, &payload, c.compress_at) {
            Ok(b) => b,
            Err(e) => {
                self.unrecordable_tags(sk, &e);
                self.abort_fill(sk, ticket).await;
                return now;
            }
        };
        // Both bounds: readers refuse a payload that decompresses past
        // `max_value_size` (a size prefix is never taken on trust).
        if bytes.len() > c.max_value_size || payload.len() > c.max_value_size {
            self.stats.oversized(1);
            self.abort_fill(sk, ticket).await;
            return now;
        }
        let weight = bytes.len();
        if let (Some(s), Some(t)) = (&self.shared, &ticket) {
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
            LocalData::new(value, times, now, self.local_cap(), tag_hashes, weight),
        );
        now
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

    fn tag_index(&self) -> std::sync::MutexGuard<'_, HashMap<TagHash, Vec<KeyHash>>> {
        self.tag_index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers which local entries carry which tags, so a tag invalidation
    /// evicts exactly those (entries evicted meanwhile are pruned lazily).
    fn index_tags(&self, h: KeyHash, tags: &[TagHash]) {
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

    /// Publishes an invalidation through the outbox: `Some(seq)` once it is
    /// out; `None` when it is not (yet): it stays queued and goes out in
    /// order once the bus takes it. A hung bus holds the writer at most the
    /// staleness bound: past it, the other instances have stopped trusting
    /// their local tiers anyway. `at_ms` is when the change happened here
    /// (before any value it supersedes was replaced).
    async fn publish(
        &self,
        keys: Vec<String>,
        tags: Vec<String>,
        created: bool,
        at_ms: u64,
    ) -> Option<u64> {
        let outbox = self.outbox.as_ref()?;
        let mut msg = Invalidation {
            origin: self.instance,
            namespace: self.config.namespace.clone(),
            keys,
            tags,
            created,
            seq: 0,
            source_time_ms: at_ms,
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
                if log_due(&self.last_publish_log_ms) {
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
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Builds the cache with the default codec ([`Postcard`](crate::Postcard))
    /// unless one was given. Must be called inside a tokio runtime (the cache
    /// runs its bus listener and Bloom rebuilds as tasks).
    pub fn build(mut self) -> Result<Cache<K, V>, ConfigError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.default_codec();
        self.build_with_codec()
    }

    /// Builds the cache with the codec given to [`codec`](Self::codec), for
    /// values that are not serde types.
    pub fn build_with_codec(self) -> Result<Cache<K, V>, ConfigError> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("runtime", "build the cache inside a tokio runtime"))?;
        let codec = self.codec.ok_or_else(|| {
            ConfigError::new("codec", "no codec given; call .codec(..) or use build()")
        })?;
        let config = self.config;
        let stats = Arc::new(Stats::new(&config.namespace));
        let local = (config.local_capacity > 0).then(|| {
            let evictions = Arc::clone(&stats);
            moka::sync::Cache::builder()
                .max_capacity(config.local_capacity)
                .weigher(|_: &KeyHash, e: &LocalData<V>| e.weight)
                // Entries carry their own deadlines (checked on every hit);
                // moka's one TTL bounds how long an expired one lingers.
                .time_to_live(config.ttl.max(config.negative_ttl) + config.grace)
                .eviction_listener(move |_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        evictions.evictions(1);
                    }
                })
                .build_with_hasher(crate::key::KeyHashBuilder)
        });
        let shared: Option<Arc<dyn SharedTier>> = match self.shared {
            TierChoice::Embedded => Some(Arc::new(embedded_shared_tier().clone())),
            TierChoice::Off => None,
            TierChoice::Given(s) => Some(s),
        };
        let bus: Option<Arc<dyn Bus>> = match self.bus {
            TierChoice::Embedded => Some(Arc::new(embedded_bus().clone())),
            TierChoice::Off => None,
            TierChoice::Given(b) => Some(b),
        };
        let messages = match &self.signing_key {
            Some(k) => MessageCodec::signed(k),
            None => MessageCodec::unsigned(),
        };
        let retention = config.hard_timeout + Duration::from_secs(5);
        let instance: u64 = rand::random();
        let outbox = bus.as_ref().map(|b| {
            let (codec, ns) = (messages.clone(), config.namespace.clone());
            let beat: outbox::Beat = Box::new(move |seq, farewell| {
                let msg = if farewell {
                    Invalidation::farewell(instance, ns.as_str(), seq)
                } else {
                    Invalidation::heartbeat(instance, ns.as_str(), seq)
                };
                Bytes::from(codec.encode(&msg))
            });
            Outbox::start(
                Arc::clone(b),
                config.namespace.clone(),
                config.staleness_bound.max(Duration::from_secs(1)),
                config.heartbeat(),
                beat,
                &runtime,
            )
        });
        let inner = Arc::new(Inner {
            keys: KeyFormat::new(config.namespace.as_str(), config.max_key_len),
            local,
            hot: HotSlots::new(),
            shared,
            // Until the bus reports itself live, fills are capped.
            mode: AtomicU8::new(if bus.is_some() {
                LocalMode::Capped
            } else {
                LocalMode::Trusted
            } as u8),
            bus,
            codec,
            flights: Arc::new(Flights::new()),
            fence: Fence::new(retention),
            bloom: self.bloom.map(BloomGuard::new),
            stats,
            instance,
            outbox,
            last_publish_log_ms: AtomicU64::new(0),
            messages,
            last_shared_log_ms: AtomicU64::new(0),
            last_tags_log_ms: AtomicU64::new(0),
            tag_index: std::sync::Mutex::new(HashMap::new()),
            applied: tokio::sync::broadcast::channel(4096).0,
            config,
            _key: PhantomData,
        });
        sync::start(&inner, &runtime);
        Ok(Cache { inner })
    }
}
