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
