//! Two engine `Cache`s ("instances") sharing one real Redis.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use tiercache_core::{Cache, SharedTier};
use tiercache_redis::{RedisBus, RedisSharedTier};
use tiercache_testkit::{RedisServer, redis_command};

async fn instance(url: &str, ns: &str) -> (Cache<u64, String>, RedisSharedTier) {
    let tier = RedisSharedTier::builder().url(url).build().await.unwrap();
    let bus = RedisBus::connect(url).await.unwrap();
    let cache = Cache::<u64, String>::builder(ns)
        .shared_tier(tier.clone())
        .bus(bus)
        .local_capacity(0)
        .build()
        .unwrap();
    (cache, tier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_caches_share_one_redis() {
    let server = RedisServer::start().unwrap();
    let ns = common::unique("cache");
    let (a, _) = instance(&server.url(), &ns).await;
    let (b, tier_b) = instance(&server.url(), &ns).await;

    // A value loaded by one instance is read by the other without a load.
    let v = a
        .get_or_load(&1, || async { Some("one".to_owned()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("one"));
    let got = b
        .get_or_load(&1, || async { panic!("b must read a's value from redis") })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("one"));

    // Corrupt bytes under a key are a miss, and get deleted.
    let sk = b.key_format().storage_key(&2u64);
    let port = server.port();
    let raw_key = format!("{{{sk}}}");
    tokio::task::block_in_place(|| redis_command(port, &["SET", &raw_key, "garbage \u{7f}\u{0}"]))
        .unwrap();
    assert_eq!(b.get(&2).await, None, "a corrupt value is a miss");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tier_b.get(&sk).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the corrupt value was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.stats().corrupt_values >= 1);
    let loaded = b
        .get_or_load(&2, || async { Some("two".to_owned()) })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref().map(String::as_str), Some("two"));
    assert_eq!(a.get(&2).await.as_deref().map(String::as_str), Some("two"));

    // An invalidation by one instance is seen by the other.
    a.invalidate(&1).await;
    assert_eq!(b.get(&1).await, None);
}
