//! [`CacheBuilder::build`]: the engine assembled from the builder's settings.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::time::Duration;

use bytes::Bytes;

use crate::bloom::BloomGuard;
use crate::bus::Bus;
use crate::codec::{Codec, Postcard};
use crate::error::ConfigError;
use crate::key::{CacheKey, KeyFormat};
use crate::message::{Invalidation, MessageCodec};
use crate::shared::SharedTier;
use crate::stats::Stats;

use super::batch::ReadBatch;
use super::config::{Backend, embedded_bus, embedded_shared_tier};
use super::fence::Fence;
use super::flight::Flights;
use super::hot::HotSlots;
use super::local;
use super::outbox::{self, Outbox};
use super::{Cache, CacheBuilder, Inner, LocalMode};

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Builds the cache, storing values with the default codec
    /// ([`Postcard`]). Must be called inside a tokio runtime (the cache runs
    /// its bus listener and Bloom rebuilds as tasks).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tiercache_core::Cache;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let users: Cache<u64, String> = Cache::builder("doc-build").build()?;
    /// # drop(users);
    ///
    /// // A setting out of range fails the build, naming the setting.
    /// let refused = Cache::<u64, String>::builder("doc-build-refused")
    ///     .ttl(Duration::ZERO)
    ///     .build();
    /// assert_eq!(refused.err().ok_or("a zero TTL is refused")?.field, "ttl");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the setting at fault when one is out of range,
    /// or `runtime` when called outside a tokio runtime.
    pub fn build(self) -> Result<Cache<K, V>, ConfigError>
    where
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.build_with_codec(Postcard)
    }

    /// Builds the cache, storing values with `codec`: for values that are
    /// not serde types, or to store them in another format. Otherwise as
    /// [`build`](Self::build).
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tiercache_core::{Cache, RawBytes};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Values that are bytes already, stored as they are. Any `Codec<V>`
    /// // of your own goes here the same way.
    /// let pages: Cache<String, Bytes> = Cache::builder("doc-build-with-codec")
    ///     .build_with_codec(RawBytes)?;
    /// let page = pages
    ///     .get_or_load(&"/".to_string(), || async { Some(Bytes::from_static(b"<html>")) })
    ///     .await?;
    /// assert_eq!(page.as_deref(), Some(&Bytes::from_static(b"<html>")));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_with_codec<C: Codec<V>>(self, codec: C) -> Result<Cache<K, V>, ConfigError> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("runtime", "build the cache inside a tokio runtime"))?;
        let codec: Arc<dyn Codec<V>> = Arc::new(codec);
        let config = self.config;
        let stats = Arc::new(Stats::new(&config.namespace));
        let local = (config.local_capacity > 0).then(|| {
            local::tier(
                config.local_capacity,
                config.ttl.max(config.negative_ttl) + config.grace,
                Arc::clone(&stats),
            )
        });
        let shared: Option<Arc<dyn SharedTier>> = match self.shared {
            Backend::Embedded => Some(Arc::new(embedded_shared_tier().clone())),
            Backend::Off => None,
            Backend::Given(s) => Some(s),
        };
        let bus: Option<Arc<dyn Bus>> = match self.bus {
            Backend::Embedded => Some(Arc::new(embedded_bus().clone())),
            Backend::Off => None,
            Backend::Given(b) => Some(b),
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
        let reads = shared
            .as_ref()
            .filter(|_| config.batch_shared_reads)
            .map(|s| ReadBatch::new(Arc::clone(s), runtime.clone()));
        let inner = Arc::new(Inner {
            keys: KeyFormat::new(config.namespace.as_str(), config.max_key_len),
            local,
            hot: HotSlots::new(),
            shared,
            reads,
            // Until the bus reports itself live, fills are capped.
            mode: AtomicU8::new(if bus.is_some() {
                LocalMode::Capped
            } else {
                LocalMode::Trusted
            } as u8),
            bus,
            codec,
            flights: Arc::new(Flights::new()),
            fence: Fence::new(retention, config.clock.clone()),
            epochs: super::clear::KnownEpochs::default(),
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
        // Series counted off the hot path, registered at 0 now so that
        // dashboards and alerts see them before their first event.
        let ns = &inner.config.namespace;
        for reason in super::FlushReason::ALL {
            metrics::counter!("tiercache_local_flush_reasons_total", "namespace" => ns.clone(), "reason" => reason.as_str())
                .increment(0);
        }
        for mode in [super::ClearMode::Hard, super::ClearMode::Soft] {
            metrics::counter!("tiercache_clears_total", "namespace" => ns.clone(), "mode" => mode.as_str())
                .increment(0);
        }
        super::coherence::start(&inner, &runtime);
        Ok(Cache { inner })
    }
}
