//! The [`Cache`] face: what users call, each method handing its work to the
//! engine ([`read`](super::read), [`load`](super::load), [`fill`](super::fill),
//! [`invalidate`](super::invalidate)).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::bloom::BloomGuard;
use crate::error::Error;
use crate::key::{CacheKey, KeyFormat, ShowKey};
use crate::stats::CacheStats;
use tracing::Instrument;

use super::{
    Applied, BoxError, Cache, CacheBuilder, ClearMode, Entry, Fetched, FlushReason, LocalHit,
    LocalMode, Outcome, Tier,
};

impl<K, V> Cache<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A builder for a cache in `namespace` (a short name shared by every
    /// instance caching the same data, e.g. `"products"`). See
    /// [`CacheBuilder`] for the settings and an example.
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
    pub fn subscribe_applied(&self) -> tokio::sync::broadcast::Receiver<Applied> {
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
    /// # Examples
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
            clock: self.inner.clock().clone(),
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
    /// # Examples
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
        self.inner.with_local(key, f)
    }

    /// The fresh value under `key`, from either tier; never calls the origin.
    /// `None` when absent, expired, or cached as "no such item".
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-get").build()?;
    /// assert!(users.get(&1).await.is_none());
    /// users.insert(&1, "ada".to_string()).await;
    /// assert_eq!(users.get(&1).await.as_deref().map(String::as_str), Some("ada"));
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: &K) -> Option<Arc<V>> {
        self.lookup(key).await.and_then(|f| f.value)
    }

    /// The fresh entry under `key` from either tier, with how it was found
    /// and its age; never calls the origin. `None` when absent or expired;
    /// a cached "no such item" is `Some` with no value.
    ///
    /// # Examples
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
        self.inner.lookup(key).await
    }

    /// The value under `key`, loading it with `loader` on a miss. The loader
    /// returns `None` when the origin has no such item (cached as a negative
    /// entry). One load per key per process: callers that miss the same key
    /// meanwhile wait for it.
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::Cache;
    /// # async fn db_name(id: u64) -> Option<String> { (id == 7).then(|| "ada".to_string()) }
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-get-or-load").build()?;
    /// let name = users.get_or_load(&7, || db_name(7)).await?;
    /// assert_eq!(name.as_deref().map(String::as_str), Some("ada"));
    /// // "No such user" is cached too (for the negative TTL).
    /// assert_eq!(users.get_or_load(&8, || db_name(8)).await?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The loader itself cannot fail; the call fails with
    /// [`Error::LoaderPanicked`] when it panicked, [`Error::Timeout`] when it
    /// ran past the [`hard_timeout`](CacheBuilder::hard_timeout), and
    /// [`Error::LoaderCancelled`] when its task was aborted. A caller that
    /// waited on another caller's fallible load of the same key
    /// ([`try_get_or_load`](Self::try_get_or_load), [`fetch`](Self::fetch))
    /// gets that load's [`Error::Load`]. A stale value within
    /// [`grace`](CacheBuilder::grace) answers instead of an error. Failures of
    /// the shared tier or the bus never surface.
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
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io;
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-try-get-or-load").build()?;
    /// let name = users
    ///     .try_get_or_load(&1, || async { Ok::<_, io::Error>(Some("ada".to_string())) })
    ///     .await?;
    /// assert_eq!(name.as_deref().map(String::as_str), Some("ada"));
    ///
    /// // The origin fails: the caller gets its error, and nothing is cached.
    /// let failed = users
    ///     .try_get_or_load(&2, || async { Err::<Option<String>, _>(io::Error::other("db down")) })
    ///     .await;
    /// let err = failed.err().ok_or("the load failed")?;
    /// assert!(err.loader_error::<io::Error>().is_some());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Load`] with the loader's error (see
    /// [`Error::loader_error`]), unless a stale value within
    /// [`grace`](CacheBuilder::grace) answers; otherwise as
    /// [`get_or_load`](Self::get_or_load).
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
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tiercache_core::{Cache, Entry, Outcome};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let products: Cache<u64, String> = Cache::builder("doc-fetch").build()?;
    /// let load = || async {
    ///     // Tagged for `invalidate_tag`, with a TTL of its own.
    ///     let entry = Entry::new("lamp".to_string())
    ///         .tag("category:7")
    ///         .ttl(Duration::from_secs(60));
    ///     Ok::<_, std::io::Error>(Some(entry))
    /// };
    /// let first = products.fetch(&42, load).await?;
    /// assert_eq!(first.outcome, Outcome::Loaded);
    /// let again = products.fetch(&42, load).await?;
    /// assert!(again.outcome.is_hit());
    /// assert_eq!(again.value.as_deref().map(String::as_str), Some("lamp"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Load`] with the loader's error (never cached),
    /// [`Error::LoaderPanicked`], [`Error::Timeout`] past the
    /// [`hard_timeout`](CacheBuilder::hard_timeout), or
    /// [`Error::LoaderCancelled`]; a caller that waited on another caller's
    /// load of the key gets that load's error. A stale value within
    /// [`grace`](CacheBuilder::grace) answers instead (outcome
    /// [`Outcome::Stale`]), except for a loader's
    /// [`NotStored`](crate::NotStored). Failures of the shared tier or the
    /// bus never surface.
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
    /// # Examples
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
        self.inner.fetch(key, loader).await
    }

    /// Loads the missing ones of `keys` with one call of `loader`, which gets
    /// every key no tier had (and no other caller is already loading) and
    /// returns the values it found; keys it leaves out are cached as absent.
    /// The answer is in the order of `keys`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-get-many").build()?;
    /// users.insert(&1, "ada".to_string()).await;
    /// // One origin call for the keys no tier had: 2 and 3 (3 does not exist).
    /// let found = users
    ///     .get_many_or_load(&[1, 2, 3], |missing: Vec<u64>| async move {
    ///         assert_eq!(missing, [2, 3]);
    ///         Ok::<_, std::io::Error>(HashMap::from([(2, "bo".to_string())]))
    ///     })
    ///     .await?;
    /// let names: Vec<Option<&str>> =
    ///     found.iter().map(|v| v.as_deref().map(String::as_str)).collect();
    /// assert_eq!(names, [Some("ada"), Some("bo"), None]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// When the loader fails ([`Error::Load`], never cached), panics
    /// ([`Error::LoaderPanicked`]) or runs past the
    /// [`hard_timeout`](CacheBuilder::hard_timeout) ([`Error::Timeout`]), the
    /// whole call fails; so it does with the error of another caller's load
    /// of one of the keys that it waited on. No stale value stands in.
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
        self.inner.get_many(keys, loader).await
    }

    /// Stores `value` under `key` in both tiers, as a fresh load would, and
    /// tells other instances to drop their copies.
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-insert").build()?;
    /// // After writing the new value to the origin:
    /// users.insert(&1, "ada".to_string()).await;
    /// assert_eq!(users.get(&1).await.as_deref().map(String::as_str), Some("ada"));
    /// # Ok(()) }
    /// ```
    pub async fn insert(&self, key: &K, value: V) {
        self.insert_entry(key, Entry::new(value)).await
    }

    /// [`insert`](Self::insert) with tags and TTL.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tiercache_core::{Cache, Entry};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let products: Cache<u64, String> = Cache::builder("doc-insert-entry").build()?;
    /// let lamp = Entry::new("lamp".to_string())
    ///     .tag("category:7")
    ///     .ttl(Duration::from_secs(60));
    /// products.insert_entry(&42, lamp).await;
    /// assert!(products.get(&42).await.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn insert_entry(&self, key: &K, entry: Entry<V>) {
        let span = tracing::debug_span!("tiercache.insert", ns = %self.inner.config.namespace, key = %ShowKey(key));
        self.inner.insert(key, entry).instrument(span).await
    }

    /// Drops `key` everywhere: the shared tier, this instance's local tier,
    /// and (over the bus) every other instance's. Loads of it in flight
    /// anywhere will not fill.
    ///
    /// Returns the bus sequence number of the message sent, if one was.
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-invalidate").build()?;
    /// users.insert(&1, "ada".to_string()).await;
    /// // After a write at the origin:
    /// users.invalidate(&1).await;
    /// assert!(users.get(&1).await.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn invalidate(&self, key: &K) -> Option<u64> {
        self.invalidate_many(std::slice::from_ref(key), &[]).await
    }

    /// Drops every entry tagged `tag`, everywhere, in O(1).
    ///
    /// Returns the bus sequence number of the message sent, if one was.
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::{Cache, Entry};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let products: Cache<u64, String> = Cache::builder("doc-invalidate-tag").build()?;
    /// products.insert_entry(&1, Entry::new("lamp".to_string()).tag("category:7")).await;
    /// products.insert_entry(&2, Entry::new("desk".to_string()).tag("category:7")).await;
    /// // Every product of category 7 changed:
    /// products.invalidate_tag("category:7").await;
    /// assert!(products.get(&1).await.is_none());
    /// assert!(products.get(&2).await.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Option<u64> {
        self.invalidate_many(&[], &[tag]).await
    }

    /// Drops `keys` and every entry tagged with one of `tags`, everywhere, as
    /// one bus message.
    ///
    /// Returns the bus sequence number of the message sent, if one was.
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::{Cache, Entry};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let products: Cache<u64, String> = Cache::builder("doc-invalidate-many").build()?;
    /// products.insert(&1, "lamp".to_string()).await;
    /// products.insert_entry(&2, Entry::new("desk".to_string()).tag("category:7")).await;
    /// products.invalidate_many(&[1], &["category:7"]).await;
    /// assert!(products.get(&1).await.is_none());
    /// assert!(products.get(&2).await.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_many(&self, keys: &[K], tags: &[&str]) -> Option<u64> {
        let span = tracing::debug_span!("tiercache.invalidate", ns = %self.inner.config.namespace, keys = keys.len(), ?tags);
        self.inner
            .invalidate_many(keys, tags)
            .instrument(span)
            .await
    }

    /// Drops the whole namespace, everywhere, in O(1): on the shared tier
    /// (a new clear epoch, no scan), here, and over the bus on every other
    /// instance (within the staleness bound, like any invalidation).
    ///
    /// - [`ClearMode::Hard`]: every entry is gone.
    /// - [`ClearMode::Soft`]: every entry is stale; the next read of a key
    ///   loads it, and its old value is served within its
    ///   [`grace`](CacheBuilder::grace) meanwhile (while another instance
    ///   holds the key's lease, or when the origin fails).
    ///
    /// Loads in flight when the clear happens do not put their values back
    /// as fresh. If the shared tier cannot be reached, this instance and the
    /// others clear their local tiers now and the shared tier is cleared by
    /// a background retry. An instance that may have missed the message
    /// (any loss signal: a gap, silence, a reconnect) reads the clear from
    /// the shared tier before its next shared read; one whose loss nothing
    /// signalled (a sender it never heard before crashed before publishing)
    /// learns it from a periodic read: within four staleness bounds on a
    /// live bus, half a bound without one.
    ///
    /// Returns the bus sequence number of the message sent, if one was.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tiercache_core::{Cache, ClearMode};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let prices: Cache<u64, u32> = Cache::builder("doc-clear")
    ///     .grace(Duration::from_secs(60))
    ///     .build()?;
    /// prices.insert(&1, 100).await;
    /// prices.insert(&2, 200).await;
    ///
    /// // Soft: stale, yet served within grace while the origin fails.
    /// prices.clear(ClearMode::Soft).await;
    /// assert!(prices.get(&1).await.is_none(), "not fresh any more");
    /// let down = prices
    ///     .try_get_or_load(&1, || async { Err::<Option<u32>, _>("origin down") })
    ///     .await?;
    /// assert_eq!(down.as_deref(), Some(&100));
    ///
    /// // Hard: gone.
    /// prices.clear(ClearMode::Hard).await;
    /// let loaded = prices.get_or_load(&2, || async { Some(250) }).await?;
    /// assert_eq!(loaded.as_deref(), Some(&250));
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self, mode: ClearMode) -> Option<u64> {
        let span = tracing::debug_span!("tiercache.clear", ns = %self.inner.config.namespace, mode = mode.as_str());
        self.inner.clear(mode).instrument(span).await
    }

    /// Tells Bloom guards (here and, over the bus, everywhere) that `key` now
    /// exists at the origin, and drops any negative entry for it.
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::Cache;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-mark-created").build()?;
    /// // User 2 does not exist yet: "no such user" is cached.
    /// assert_eq!(users.get_or_load(&2, || async { None }).await?, None);
    ///
    /// // After creating user 2 at the origin: the negative entry goes, and
    /// // Bloom guards (here and on every instance) learn the key.
    /// users.mark_created(&2).await;
    /// let bo = users.get_or_load(&2, || async { Some("bo".to_string()) }).await?;
    /// assert_eq!(bo.as_deref().map(String::as_str), Some("bo"));
    /// # Ok(()) }
    /// ```
    pub async fn mark_created(&self, key: &K) {
        let span = tracing::debug_span!("tiercache.mark_created", ns = %self.inner.config.namespace, key = %ShowKey(key));
        self.inner.mark_created(key).instrument(span).await
    }

    /// Rebuilds the Bloom guard from its universe loader now (it also
    /// rebuilds on its own schedule). Returns how many keys it holds; 0
    /// without a Bloom guard.
    ///
    /// # Examples
    ///
    /// ```
    /// use tiercache_core::{BloomGuardConfig, Cache};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-rebuild-bloom")
    ///     .bloom_guard(BloomGuardConfig::new(|| async {
    ///         Ok::<_, std::io::Error>(vec!["1".to_string(), "2".to_string()])
    ///     }))
    ///     .build()?;
    /// assert_eq!(users.rebuild_bloom().await?, 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The universe loader's error (the guard keeps its current filter), or
    /// why the filter could not be sized.
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
