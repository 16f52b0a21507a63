//! Two engine `Cache`s ("instances") sharing one real Redis.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use tiercache_core::Cache;
use tiercache_core::backend::SharedTier;
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

/// Singleflight over a real Redis, where a shared-tier read takes a round
/// trip: callers whose read misses just before a load fills Redis, and who
/// join just after that load ended, must not load again. With the local
/// tier on and off (then only Redis can tell them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_overlapping_the_end_of_a_load_do_not_load_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let server = RedisServer::start().unwrap();
    for local in [true, false] {
        let ns = common::unique("overlap");
        // A budget no loaded CI machine can miss: a failed fill would
        // rightly let a later caller load again.
        let tier = RedisSharedTier::builder()
            .url(server.url())
            .call_timeout(Duration::from_secs(10))
            .build()
            .await
            .unwrap();
        let bus = RedisBus::connect(server.url()).await.unwrap();
        let mut builder = Cache::<u64, String>::builder(&ns)
            .shared_tier(tier)
            .bus(bus);
        if !local {
            builder = builder.local_capacity(0);
        }
        let cache = builder.build().unwrap();
        // The bus's first connect detaches loads in flight (invalidations
        // sent before it may be lost): wait for it, with or without a
        // local tier.
        while !cache.local_trusted() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for key in 0..20u64 {
            let calls = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..1_000 {
                let cache = cache.clone();
                let calls = calls.clone();
                tasks.push(tokio::spawn(async move {
                    cache
                        .get_or_load(&key, move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            Some(format!("v{key}"))
                        })
                        .await
                }));
            }
            for t in tasks {
                let v = t.await.unwrap().unwrap();
                assert_eq!(
                    v.as_deref().map(String::as_str),
                    Some(format!("v{key}").as_str())
                );
            }
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "local tier {local}, key {key}: one origin call; {:?}",
                cache.stats()
            );
        }
    }
}
