//! The caches: products by id and lists by category, both in namespace
//! `products`, sharing one Redis connection and one bus.
//!
//! | cache | key | tags | origin |
//! |---|---|---|---|
//! | `products` | the id (`42`) | — | `SELECT .. WHERE id = $1` |
//! | `lists` | `list:<category>` | `category:<category>` | `SELECT .. WHERE category = $1` |
//!
//! The sidecar (examples/products/sidecar.toml) maps every changed row to
//! key `{id}` and tag `category:{category}` of namespace `products`: the row's
//! entry and its category's list (old and new category on a move) drop on
//! every instance. The app itself never invalidates.

use std::sync::Arc;
use std::time::Duration;

use tiercache_core::{BloomGuardConfig, Bus, Cache, Outcome, SharedTier, Tier};
use tiercache_nats::NatsBus;
use tiercache_redis::{RedisBus, RedisSharedTier};

use crate::config::Settings;
use crate::db::{Db, Product};

/// The namespace of both caches, as in the sidecar's rule.
pub const NAMESPACE: &str = "products";

/// Both caches.
#[derive(Clone, Debug)]
pub struct Caches {
    pub products: Cache<i64, Product>,
    pub lists: Cache<String, Vec<Product>>,
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
            (Some(Arc::new(builder.connect().await?)), kind)
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

    let mut products = Cache::<i64, Product>::builder(NAMESPACE)
        .bloom_guard(bloom)
        .ttl(ttl)
        .ttl_jitter(0.2)
        .negative_ttl(negative_ttl)
        .negative_jitter(0.2)
        .grace(Duration::from_secs(60));
    let mut lists = Cache::<String, Vec<Product>>::builder(NAMESPACE)
        .ttl(ttl)
        .ttl_jitter(0.2)
        .grace(Duration::from_secs(60));
    if let Some(s) = shared {
        products = products.shared_tier_arc(Arc::clone(&s));
        lists = lists.shared_tier_arc(s);
    }
    if let Some(b) = bus {
        products = products.bus_arc(Arc::clone(&b));
        lists = lists.bus_arc(b);
    }
    Ok(Caches {
        products: products.build()?,
        lists: lists.build()?,
        shared: shared_kind,
        bus: bus_kind,
    })
}

/// The list cache's key for a category.
pub fn list_key(category: &str) -> String {
    format!("list:{category}")
}

/// The tag of every entry that depends on a category.
pub fn category_tag(category: &str) -> String {
    format!("category:{category}")
}

/// The `x-cache-tier` header value of a hit: which part of the cache answered.
pub fn x_cache_tier(outcome: Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Hit(Tier::Local) => Some("local"),
        Outcome::Hit(Tier::Shared) => Some("shared"),
        Outcome::Rejected => Some("bloom"),
        _ => None,
    }
}

/// The `x-cache` header value of a lookup.
pub fn x_cache(outcome: Outcome) -> &'static str {
    match outcome {
        // A Bloom rejection is answered by the cache too.
        Outcome::Hit(_) | Outcome::Rejected => "hit",
        Outcome::Stale => "stale",
        _ => "miss",
    }
}
