use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use tiercache_core::Cache;
use tower_layer::Layer;

use super::freshness::DefaultTtl;
use super::handle::CacheHandle;
use super::response::CachedResponse;
use super::service::HttpCache;
use crate::rate_log::LogEvery;

/// `CDN-Cache-Control` (RFC 9213).
const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The settings of an [`HttpCacheLayer`], shared by its services and handles.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) cache: Cache<String, CachedResponse>,
    pub(crate) methods: Vec<Method>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) negative_statuses: Vec<StatusCode>,
    pub(crate) negative_ttl: Duration,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) sort_query: bool,
    pub(crate) tags_header: HeaderName,
    pub(crate) max_body_size: usize,
    pub(crate) request_no_cache: bool,
    pub(crate) cache_authorized: bool,
    pub(crate) default_ttl: DefaultTtl,
    /// Targeted cache-control fields (RFC 9213), most specific first.
    pub(crate) targeted: Vec<HeaderName>,
    /// Our own targeted field, stripped from responses.
    pub(crate) own_targeted: Option<HeaderName>,
    pub(crate) keep_for_revalidation: Duration,
    /// Responses not stored because their tags cannot be recorded.
    pub(crate) tags_rejected: Arc<AtomicU64>,
    pub(crate) tags_log: LogEvery,
    /// Requests on which the cache failed internally (and failed open).
    pub(crate) internal_failures: Arc<AtomicU64>,
    pub(crate) failure_log: LogEvery,
}

/// An HTTP response cache in front of an `http::Request` / `http::Response`
/// service. See the [module docs](crate::http) for the rules.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use http::header::ACCEPT;
/// use tiercache_core::Cache;
/// use tiercache_tower::{CachedResponse, HttpCacheLayer, ResponseCodec};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache: Cache<String, CachedResponse> = Cache::builder("pages")
///     .ttl(Duration::from_secs(60))
///     .build_with_codec(ResponseCodec)?;
/// let layer = HttpCacheLayer::new(cache)
///     .vary([ACCEPT])
///     .sort_query(true)
///     .negative_ttl(Duration::from_secs(5))
///     .max_body_size(256 * 1024);
/// let app: Router = Router::new()
///     .route("/products", get(|| async { "[]" }))
///     .route_layer(layer);
/// # drop(app); Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpCacheLayer {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for HttpCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("HttpCacheLayer")
            .field("cache", &c.cache)
            .field("methods", &c.methods)
            .field("statuses", &c.statuses)
            .field("negative_statuses", &c.negative_statuses)
            .field("negative_ttl", &c.negative_ttl)
            .field("vary", &c.vary)
            .field("sort_query", &c.sort_query)
            .field("tags_header", &c.tags_header)
            .field("max_body_size", &c.max_body_size)
            .field("request_no_cache", &c.request_no_cache)
            .field("cache_authorized", &c.cache_authorized)
            .field("default_ttl", &c.default_ttl)
            .field("targeted", &c.targeted)
            .field("keep_for_revalidation", &c.keep_for_revalidation)
            .finish()
    }
}

impl HttpCacheLayer {
    /// A layer caching in `cache`, with the defaults: `GET` and `HEAD`;
    /// statuses 200, 203, 204, 301 cached, 404 and 410 cached for the
    /// negative TTL (30 s); no vary headers; tags from `x-cache-tags`; bodies
    /// up to 512 KiB; request `no-cache` ignored; requests with
    /// `Authorization` not cached.
    pub fn new(cache: Cache<String, CachedResponse>) -> Self {
        Self {
            config: Arc::new(Config {
                cache,
                methods: vec![Method::GET, Method::HEAD],
                statuses: vec![
                    StatusCode::OK,
                    StatusCode::NON_AUTHORITATIVE_INFORMATION,
                    StatusCode::NO_CONTENT,
                    StatusCode::MOVED_PERMANENTLY,
                ],
                negative_statuses: vec![StatusCode::NOT_FOUND, StatusCode::GONE],
                negative_ttl: Duration::from_secs(30),
                vary: Vec::new(),
                sort_query: false,
                tags_header: HeaderName::from_static("x-cache-tags"),
                max_body_size: 512 * 1024,
                request_no_cache: false,
                cache_authorized: false,
                default_ttl: DefaultTtl::CacheTtl,
                targeted: vec![CDN_CACHE_CONTROL],
                own_targeted: None,
                keep_for_revalidation: Duration::from_secs(300),
                tags_rejected: Arc::default(),
                tags_log: LogEvery::default(),
                internal_failures: Arc::default(),
                failure_log: LogEvery::default(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The methods whose responses are cached (others pass through).
    /// Default `GET`, `HEAD`. Only safe methods belong here.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.edit(|c| c.methods = methods.into_iter().collect())
    }

    /// The statuses cached for the response's `max-age` / `s-maxage` or the
    /// cache's TTL. Default 200, 203, 204, 301.
    pub fn statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.edit(|c| c.statuses = statuses.into_iter().collect())
    }

    /// The statuses cached as negatives ("no such resource"): the response
    /// itself is stored for the [negative TTL](Self::negative_ttl) (or a
    /// shorter `max-age`). Default 404, 410.
    pub fn negative_statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.edit(|c| c.negative_statuses = statuses.into_iter().collect())
    }

    /// How long a negative response is cached (jittered by the cache's
    /// `ttl_jitter`). Default 30 s.
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.edit(|c| c.negative_ttl = ttl)
    }

    /// Request headers that are part of every key (e.g. `accept`,
    /// `accept-language`). A response whose `Vary` names a header not listed
    /// here, or `Vary: *`, is not cached. Default: none.
    pub fn vary(self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.edit(|c| c.vary = headers.into_iter().collect())
    }

    /// Sort the query's parameters in the key (`?b=2&a=1` and `?a=1&b=2`
    /// share an entry). Default off.
    pub fn sort_query(self, sort: bool) -> Self {
        self.edit(|c| c.sort_query = sort)
    }

    /// The response header in which a handler names the tags of its response
    /// (comma or space separated). It is removed from every response.
    /// Default `x-cache-tags`.
    pub fn tags_header(self, name: HeaderName) -> Self {
        self.edit(|c| c.tags_header = name)
    }

    /// Bodies larger than this stream through uncached (nothing is lost: the
    /// bytes read so far are replayed before the rest). Default 512 KiB.
    /// Keep it below the cache's `max_value_size` (default 1 MiB), which
    /// still applies to the stored entry (a larger one is served, not stored).
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.edit(|c| c.max_body_size = bytes)
    }

    /// Honour a request's `Cache-Control: no-cache` (or `Pragma: no-cache`):
    /// invalidate the key everywhere and load it again. Off by default: a
    /// shared cache should not let any client force origin loads.
    pub fn honor_request_no_cache(self, honor: bool) -> Self {
        self.edit(|c| c.request_no_cache = honor)
    }

    /// Cache responses to requests carrying `Authorization` (they are keyed
    /// like any other request, so only enable this when the response does
    /// not depend on who asks, or the header is in [`vary`](Self::vary)).
    /// Default off: such requests pass through.
    pub fn cache_authorized(self, cache: bool) -> Self {
        self.edit(|c| c.cache_authorized = cache)
    }

    /// Freshness for responses that carry none of their own (no
    /// `s-maxage`, `max-age` or `Expires`):
    ///
    /// - `Some(d)`: they are fresh for `d`. Without this call, the cache's
    ///   TTL: what an application's own handlers, which rarely set caching
    ///   headers, want.
    /// - `None`: shared-cache behaviour (RFC 9111 4.2.2). Only a response
    ///   with a `Last-Modified` gets heuristic freshness, 10% of its age
    ///   (at most a day), and only for the statuses the RFC allows (or with
    ///   `public`); others are not stored. Use it in front of an origin you
    ///   do not control.
    ///
    /// A response's own freshness always wins, and an `Expires` in the past
    /// or one that is not a date makes it stale (not stored).
    pub fn default_ttl(self, ttl: Option<Duration>) -> Self {
        self.edit(|c| {
            c.default_ttl = match ttl {
                Some(d) => DefaultTtl::Fixed(d),
                None => DefaultTtl::Heuristic,
            }
        })
    }

    /// A response header of this cache's own that, when present, replaces
    /// `Cache-Control` for it (RFC 9213 targeted cache control), ahead of
    /// `CDN-Cache-Control` (always honoured). It is removed from the
    /// responses the layer sends. For example `Tiercache-Cache-Control:
    /// max-age=600` caches for ten minutes what browsers get as
    /// `Cache-Control: no-cache`.
    pub fn targeted_cache_control(self, name: HeaderName) -> Self {
        self.edit(|c| {
            c.targeted = vec![name.clone(), CDN_CACHE_CONTROL];
            c.own_targeted = Some(name);
        })
    }

    /// How long past its freshness a response stays stored to be
    /// revalidated with a conditional request (`If-None-Match` /
    /// `If-Modified-Since`; a 304 refreshes it without its body). It is
    /// served stale in that time only as `stale-if-error` or the cache's
    /// grace allow, never past `must-revalidate`. Default 5 minutes.
    pub fn keep_for_revalidation(self, keep: Duration) -> Self {
        self.edit(|c| c.keep_for_revalidation = keep)
    }

    /// A handle to invalidate keys and tags (an axum extractor too). Take it
    /// after configuring the layer.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(Arc::clone(&self.config))
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<String, CachedResponse> {
        &self.config.cache
    }
}

impl<S> Layer<S> for HttpCacheLayer {
    type Service = HttpCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCache::new(inner, Arc::clone(&self.config))
    }
}
