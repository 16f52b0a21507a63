//! Redis killed under a concurrent `get_or_load` load: callers see no error,
//! singleflight keeps the origin to one load per key at a time, and the shared
//! tier is used again within two seconds of Redis coming back.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiercache_core::Cache;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{RedisServer, Resp, redis_command};

/// An origin that records, per key, how many loads run at once.
#[derive(Default)]
struct Origin {
    calls: AtomicU64,
    in_flight: Mutex<HashMap<u64, u32>>,
    max_in_flight: AtomicU64,
}

impl Origin {
    async fn load(&self, key: u64) -> Option<String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let now = {
            let mut m = self.in_flight.lock().unwrap();
            let n = m.entry(key).or_default();
            *n += 1;
            *n
        };
        self.max_in_flight
            .fetch_max(u64::from(now), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(3)).await;
        *self.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
        Some(format!("value-{key}"))
    }
}

fn dbsize(port: u16) -> i64 {
    match redis_command(port, &["DBSIZE"]) {
        Ok(Resp::Integer(n)) => n,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_reaches_no_caller() {
    let mut server = RedisServer::start().unwrap();
    let port = server.port();
    let tier = RedisSharedTier::builder()
        .url(server.url())
        .call_timeout(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    // Local tier off and short TTLs: every lookup goes to Redis or the origin.
    let cache: Cache<u64, String> = Cache::builder(common::unique("fault"))
        .shared_tier(tier)
        .no_bus()
        .local_capacity(0)
        .ttl(Duration::from_millis(300))
        .build()
        .unwrap();
    let origin = Arc::new(Origin::default());
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let (cache, origin, stop, errors, requests) = (
            cache.clone(),
            origin.clone(),
            stop.clone(),
            errors.clone(),
            requests.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 31 + 7) % 40;
                let key = i;
                let o = origin.clone();
                match cache
                    .get_or_load(&key, move || async move { o.load(key).await })
                    .await
                {
                    Ok(Some(v)) if *v == format!("value-{key}") => {}
                    other => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("caller saw {other:?}");
                    }
                }
                requests.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        dbsize(port) > 0,
        "the shared tier is in use before the kill"
    );
    tokio::task::block_in_place(|| server.kill());
    let before_down = requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during_down = requests.load(Ordering::Relaxed) - before_down;
    assert!(
        during_down > 100,
        "requests kept being answered while Redis was down: {during_down}"
    );

    tokio::task::block_in_place(|| server.restart()).unwrap();
    let back = Instant::now();
    let mut used_again = None;
    while back.elapsed() < Duration::from_secs(5) {
        if dbsize(port) > 0 {
            used_again = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let used_again = used_again.expect("the cache writes to Redis again after it restarts");
    let stats = cache.stats();
    eprintln!(
        "requests={} origin_calls={} shared_errors={} back_in_use_after={:?}",
        requests.load(Ordering::Relaxed),
        origin.calls.load(Ordering::Relaxed),
        stats.shared_errors,
        used_again
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no error reached a caller"
    );
    assert_eq!(
        origin.max_in_flight.load(Ordering::Relaxed),
        1,
        "at most one load in flight per key in this instance"
    );
    assert!(
        stats.shared_errors > 0,
        "the outage was noticed and counted"
    );
    assert!(
        used_again < Duration::from_secs(2),
        "shared tier used again within 2 s: {used_again:?}"
    );
}

/// A hung Redis makes an invalidation's delete fail, so the old value stays
/// in Redis until the writer's background retry gets through. An instance
/// that applied the invalidation (over the bus) and reads Redis in between
/// must not take that value: it was written before the invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_left_by_a_failed_delete_is_not_served_after_redis_returns() {
    let mut server = RedisServer::start().unwrap();
    let port = server.port();
    let bus = tiercache_core::backend::InProcessBus::new();
    let ns = common::unique("leftover");
    let tier = || {
        RedisSharedTier::builder()
            .url(server.url())
            .call_timeout(Duration::from_millis(50))
            // Open after one failure, for long: the writer's delete is never
            // sent while Redis hangs, and its retry waits out the cooldown.
            .breaker(1, Duration::from_secs(3))
            .build()
    };
    let writer: Cache<u64, String> = Cache::builder(ns.as_str())
        .shared_tier(tier().await.unwrap())
        .bus(bus.clone())
        .build()
        .unwrap();
    let reader: Cache<u64, String> = Cache::builder(ns.as_str())
        .shared_tier(tier().await.unwrap())
        .bus(bus.clone())
        .build()
        .unwrap();
    let version = Arc::new(AtomicU64::new(1));
    let load =
        |v: Arc<AtomicU64>| move || async move { Some(format!("v{}", v.load(Ordering::SeqCst))) };
    let mut exercised = 0;
    for key in 0..5u64 {
        version.store(1, Ordering::SeqCst);
        assert_eq!(
            writer
                .get_or_load(&key, load(version.clone()))
                .await
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("v1")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The value's Redis key: `{<storage key>}` (see the crate docs).
        let sk = format!("{{{}}}", writer.key_format().storage_key(&key));
        server.pause();
        // A read that times out opens the writer's breaker (the GET waits in
        // Redis's socket, harmless), so its delete below is never sent.
        writer
            .get_or_load(&(1000 + key), load(version.clone()))
            .await
            .unwrap();
        // The origin changes; the writer invalidates while Redis hangs.
        version.store(2, Ordering::SeqCst);
        writer.invalidate(&key).await;
        server.resume();
        let left = !matches!(redis_command(port, &["EXISTS", &sk]), Ok(Resp::Integer(0)));
        let before = reader.stats().shared_superseded;
        let got = reader
            .get_or_load(&key, load(version.clone()))
            .await
            .unwrap();
        assert_eq!(
            got.as_deref().map(String::as_str),
            Some("v2"),
            "key {key}: the reader served the value the failed delete left in Redis"
        );
        if left && reader.stats().shared_superseded > before {
            exercised += 1;
        }
        // Let the writer's retry and the breakers settle before the next key.
        tokio::time::sleep(Duration::from_millis(3500)).await;
    }
    assert!(
        exercised > 0,
        "no round left the old value in Redis for the reader to refuse"
    );
}
