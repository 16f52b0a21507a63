use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tiercache_core::Cache;
use tower_layer::Layer;

use super::service::CacheService;

pub(crate) type TagsFn<Resp> = Arc<dyn Fn(&Resp) -> Vec<String> + Send + Sync>;
pub(crate) type PredicateFn<Resp> = Arc<dyn Fn(&Resp) -> bool + Send + Sync>;

/// Settings shared by every clone of the service.
pub(crate) struct Settings<Resp, K> {
    pub(crate) cache: Cache<String, Resp>,
    pub(crate) key: Arc<K>,
    pub(crate) tags: Option<TagsFn<Resp>>,
    pub(crate) negative: Option<PredicateFn<Resp>>,
    pub(crate) negative_ttl: Duration,
}

impl<Resp, K> Clone for Settings<Resp, K> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            key: Arc::clone(&self.key),
            tags: self.tags.clone(),
            negative: self.negative.clone(),
            negative_ttl: self.negative_ttl,
        }
    }
}

/// Caches the responses of a [`Service`](tower_service::Service) through a
/// [`Cache<String, Resp>`](tiercache_core::Cache). See the
/// [module docs](crate::generic).
///
/// `key` computes the cache key of a request (`None`: not cached, the request
/// goes to the inner service).
pub struct CacheLayer<Resp, K> {
    settings: Arc<Settings<Resp, K>>,
}

impl<Resp, K> Clone for CacheLayer<Resp, K> {
    fn clone(&self) -> Self {
        Self {
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<Resp, K> fmt::Debug for CacheLayer<Resp, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.settings.cache)
            .field("tags", &self.settings.tags.is_some())
            .field("negative", &self.settings.negative.is_some())
            .field("negative_ttl", &self.settings.negative_ttl)
            .finish()
    }
}

impl<Resp, K> CacheLayer<Resp, K>
where
    Resp: Send + Sync + 'static,
{
    /// A layer caching in `cache` under the key `key` gives each request.
    /// No tags, no negatives, the cache's TTL.
    pub fn new(cache: Cache<String, Resp>, key: K) -> Self {
        Self {
            settings: Arc::new(Settings {
                cache,
                key: Arc::new(key),
                tags: None,
                negative: None,
                negative_ttl: Duration::from_secs(30),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Settings<Resp, K>)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    /// The tags of a response (one
    /// [`invalidate_tag`](tiercache_core::Cache::invalidate_tag) drops every
    /// response carrying the tag).
    pub fn tags<F>(self, tags: F) -> Self
    where
        F: Fn(&Resp) -> Vec<String> + Send + Sync + 'static,
    {
        self.edit(|s| s.tags = Some(Arc::new(tags)))
    }

    /// Which responses are negatives ("no such item"): they are cached for
    /// the [negative TTL](Self::negative_ttl) only. Default: none.
    pub fn negative<F>(self, is_negative: F) -> Self
    where
        F: Fn(&Resp) -> bool + Send + Sync + 'static,
    {
        self.edit(|s| s.negative = Some(Arc::new(is_negative)))
    }

    /// How long a negative response is cached (jittered by the cache's
    /// `ttl_jitter`). Default 30 s.
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.edit(|s| s.negative_ttl = ttl)
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<String, Resp> {
        &self.settings.cache
    }
}

impl<S, Resp, K> Layer<S> for CacheLayer<Resp, K> {
    type Service = CacheService<S, Resp, K>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, Arc::clone(&self.settings))
    }
}
