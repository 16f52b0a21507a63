//! The caches: an HTTP response cache in front of the read routes, and a row
//! cache of products by id below it, sharing one Redis connection and one
//! bus.
//!
//! | cache | namespace | key | tags | tiers |
//! |---|---|---|---|---|
//! | responses ([`HttpCacheLayer`]) | `products-http` | `GET /products/42`, `GET /products?category=books` | `product:42`, `category:books` (from `x-cache-tags`) | local + Redis |
//! | rows (`Cache<i64, Product>`) | `products` | `42` | — | Redis only; Bloom guard on ids, negatives |
//!
//! A `GET` the response cache cannot answer runs its handler, and the
//! product handler reads its row through the row cache: a Bloom rejection
//! or a cached "no such row" never reaches Postgres, and one load per id
//! per process (singleflight, a Redis lease across processes) serves every
//! request waiting for it.
//!
//! The sidecar (examples/products/sidecar.toml) maps every changed row to
//! key `{id}` of `products` (and, on an insert, "created", which feeds the
//! Bloom guards), then to tags `product:{id}` and `category:{category}` (old
//! and new row) of `products-http`, in that order. The app itself never
//! invalidates.
//!
//! Why the row cache has no local tier: the two namespaces travel as two bus
//! messages, and nothing orders their delivery on an instance. With a
//! local row tier, an instance that applied the response message first
//! could rebuild the response from its old local row and store it again,
//! everywhere, until its TTL. Without one, a response rebuilt after the
//! response message reads the row from Redis, where the sidecar deleted it
//! before it sent the response message. The response cache's local tier
//! answers the hot reads anyway.

use std::sync::Arc;
use std::time::Duration;

use tiercache_core::backend::{Bus, SharedTier};
use tiercache_core::{BloomGuardConfig, Cache, CacheConfig};
use tiercache_nats::NatsBus;
use tiercache_redis::{RedisBus, RedisSharedTier};
use tiercache_tower::{CachedResponse, HttpCacheLayer, ResponseCodec};

use crate::config::Settings;
use crate::db::{Db, Product};

/// The row cache's namespace, as in the sidecar's first rule.
pub const ROWS_NAMESPACE: &str = "products";

/// The response cache's namespace, as in the sidecar's second rule.
pub const HTTP_NAMESPACE: &str = "products-http";

/// Both caches.
#[derive(Clone, Debug)]
pub struct Caches {
    /// Products by id: Redis only, Bloom guard, negatives.
    pub products: Cache<i64, Product>,
    /// The response cache of the read routes.
    pub http: HttpCacheLayer,
    /// `redis`, or `embedded` without REDIS_URL.
    pub shared: &'static str,
    /// `nats`, `nats-jetstream`, `redis` or `embedded`.
    pub bus: &'static str,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects the shared tier and the bus the settings name (lazily: servers
/// that are down at start are retried in the background, and reads go to
/// Postgres meanwhile) and builds both caches.
pub async fn build(settings: &Settings, db: &Db) -> Result<Caches, BoxError> {
    let (shared, shared_kind): (Option<Arc<dyn SharedTier>>, _) = match &settings.redis_url {
        Some(url) => {
            let tier = RedisSharedTier::builder()
                .url(url.as_str())
                .connect_lazily(true)
                .build()
                .await?;
            (Some(Arc::new(tier)), "redis")
        }
        None => (None, "embedded"),
    };
    let (bus, bus_kind): (Option<Arc<dyn Bus>>, _) = match (&settings.nats_url, &settings.redis_url)
    {
        (Some(url), _) => {
            let mut builder = NatsBus::builder()
                .url(url.as_str())
                .name("tiercache-products")
                .retry_on_initial_connect(true);
            let kind = if settings.nats_stream.is_empty() {
                "nats"
            } else {
                builder = builder.jetstream(settings.nats_stream.as_str());
                "nats-jetstream"
            };
            (Some(Arc::new(builder.build().await?)), kind)
        }
        (None, Some(url)) => (
            Some(Arc::new(RedisBus::connect(url.as_str()).await?)),
            "redis",
        ),
        (None, None) => (None, "embedded"),
    };

    let universe_db = db.clone();
    let bloom = BloomGuardConfig::new(move || {
        let db = universe_db.clone();
        async move { db.all_ids().await }
    })
    .expected_items(100_000)
    .false_positive_rate(0.001)
    .rebuild_every(Duration::from_secs(600));

    let ttl = Duration::from_secs(settings.ttl_secs.max(1));
    let negative_ttl = Duration::from_secs(settings.negative_ttl_secs);
    let grace = Duration::from_secs(60);

    let mut products = Cache::<i64, Product>::builder(ROWS_NAMESPACE)
        // No local tier: see the module docs.
        .local_capacity(0)
        .bloom_guard(bloom)
        .ttl(ttl)
        .ttl_jitter(0.2)
        .negative_ttl(negative_ttl)
        .negative_jitter(0.2)
        .grace(grace);
    let mut responses = Cache::<String, CachedResponse>::builder(HTTP_NAMESPACE)
        .ttl(ttl)
        .ttl_jitter(0.2)
        .grace(grace);
    // Operators tune both caches without a rebuild: a file, then the
    // environment, over the flags.
    let file = settings.cache_config.as_deref();
    products = products.config(&CacheConfig::load(file, Some("rows"), "PRODUCTS_ROWS_")?);
    responses = responses.config(&CacheConfig::load(
        file,
        Some("responses"),
        "PRODUCTS_RESPONSES_",
    )?);
    if let Some(s) = shared {
        products = products.shared_tier_arc(Arc::clone(&s));
        responses = responses.shared_tier_arc(s);
    }
    if let Some(b) = bus {
        products = products.bus_arc(Arc::clone(&b));
        responses = responses.bus_arc(b);
    }
    let http = HttpCacheLayer::new(responses.build_with_codec(ResponseCodec)?)
        // `?category=a&x=1` and `?x=1&category=a` share an entry.
        .sort_query(true)
        // A 404 the database confirmed; the handler marks a Bloom
        // rejection `no-store` (see routes.rs).
        .negative_ttl(negative_ttl);
    // The handlers set no caching headers: without `default_ttl`, the
    // response cache's own TTL (jittered) applies to what they answer.
    Ok(Caches {
        products: products.build()?,
        http,
        shared: shared_kind,
        bus: bus_kind,
    })
}

/// The tag of every response that shows product `id` (its page, and its
/// 404).
pub fn product_tag(id: i64) -> String {
    format!("product:{id}")
}

/// The tag of every response that lists a category, as the sidecar renders
/// it from the row (`category:{category}`).
pub fn category_tag(category: &str) -> String {
    format!("category:{category}")
}

/// Tags for the `x-cache-tags` header: the layer splits the header on commas
/// and whitespace and percent-decodes each tag, so those bytes (and `%`,
/// and anything not printable ASCII) are percent-encoded here; the tag the
/// layer records is then exactly `tag`.
pub fn tags_header(tags: &[&str]) -> String {
    let mut out = String::new();
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for b in tag.bytes() {
            if b.is_ascii_graphic() && b != b'%' && b != b',' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}
