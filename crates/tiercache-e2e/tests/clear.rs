//! `Cache::clear`, hard and soft, across three instances on real servers:
//! Redis standalone and Cluster as the shared tier, NATS and Redis pub/sub
//! as the bus; and a clear while Redis hangs (SIGSTOP), which each instance
//! applies at once and the shared tier takes once Redis answers again.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tiercache::core::backend::{Bus, SharedTier};
use tiercache::core::{Cache, ClearMode};
use tiercache_e2e::bus_server::{BusServer, Kind};
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{RedisCluster, RedisServer};

const KEYS: u64 = 40;
/// The staleness bound the caches run with (the default).
const BOUND: Duration = Duration::from_millis(500);
/// Slack over the bound for a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// Where the shared tier runs.
enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    async fn tier(&self) -> Arc<dyn SharedTier> {
        let b = RedisSharedTier::builder().call_timeout(Duration::from_millis(200));
        let b = match self {
            Redis::Standalone(s) => b.url(s.url()),
            Redis::Cluster(c) => b.cluster(c.urls()),
        };
        Arc::new(b.build().await.unwrap())
    }
}

fn ns() -> String {
    format!("clear{:x}", rand::random::<u32>())
}

async fn instance(ns: &str, tier: Arc<dyn SharedTier>, bus: Arc<dyn Bus>) -> Cache<u64, String> {
    let c = Cache::builder(ns)
        .shared_tier_arc(tier)
        .bus_arc(bus)
        .staleness_bound(BOUND)
        .grace(Duration::from_secs(120))
        .build()
        .unwrap();
    // Until its bus reports itself live, an instance does not trust its
    // local tier; wait for that so the local copies below are real.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.local_trusted() {
        assert!(Instant::now() < deadline, "bus not live within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c
}

async fn origin_down(c: &Cache<u64, String>, k: u64) -> Option<String> {
    c.try_get_or_load(&k, || async { Err::<Option<String>, _>("origin down") })
        .await
        .ok()
        .flatten()
        .map(|v| (*v).clone())
}

/// Polls until no instance has a fresh value of any key; how long that took.
async fn until_all_gone(caches: &[Cache<u64, String>], what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let mut left = 0;
        for c in caches {
            for k in 0..KEYS {
                if c.get(&k).await.is_some() {
                    left += 1;
                }
            }
        }
        if left == 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < BOUND + SLACK,
            "{what}: {left} fresh values left after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn three_instances_clear(redis: Redis, kind: Kind) {
    let bus_server = match (&redis, kind) {
        // Redis pub/sub on the standalone server itself.
        (Redis::Standalone(_), Kind::RedisPubSub) => None,
        _ => Some(BusServer::start(kind)),
    };
    let bus_url = match (&bus_server, &redis) {
        (Some(s), _) => s.url(),
        (None, Redis::Standalone(s)) => s.url(),
        (None, Redis::Cluster(_)) => unreachable!(),
    };
    let connect = |kind| {
        let url = bus_url.clone();
        async move {
            match kind {
                Kind::RedisPubSub => {
                    Arc::new(tiercache_redis::RedisBus::connect(url).await.unwrap()) as Arc<dyn Bus>
                }
                _ => {
                    let b = tiercache_nats::NatsBus::builder().url(url);
                    let b = if kind == Kind::NatsJetStream {
                        b.jetstream("TIERCACHE_TESTS")
                    } else {
                        b
                    };
                    Arc::new(b.build().await.unwrap()) as Arc<dyn Bus>
                }
            }
        }
    };
    let name = ns();
    let mut caches = Vec::new();
    for _ in 0..3 {
        caches.push(instance(&name, redis.tier().await, connect(kind).await).await);
    }
    for k in 0..KEYS {
        caches[0].insert(&k, format!("old{k}")).await;
    }
    for c in &caches {
        for k in 0..KEYS {
            assert_eq!(c.get(&k).await, Some(Arc::new(format!("old{k}"))));
        }
    }

    // Hard: gone everywhere within the bound, not even served in grace.
    assert!(caches[1].clear(ClearMode::Hard).await.is_some());
    let took = until_all_gone(&caches, "hard clear").await;
    eprintln!("hard clear seen by all three within {took:?}");
    for c in &caches {
        assert_eq!(
            origin_down(c, 7).await,
            None,
            "a hard clear leaves no stale copy"
        );
    }
    let cold = instance(&name, redis.tier().await, connect(kind).await).await;
    assert_eq!(cold.get(&7).await, None, "gone for a new instance too");

    // Loads after the clear are current everywhere.
    for k in 0..KEYS {
        let v = caches[2]
            .get_or_load(&k, || async move { Some(format!("new{k}")) })
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some(&format!("new{k}")));
    }
    for c in caches.iter().chain([&cold]) {
        assert_eq!(c.get(&9).await.as_deref(), Some(&"new9".to_string()));
    }

    // Soft: stale everywhere within the bound; served while the origin fails.
    caches[0].clear(ClearMode::Soft).await;
    let took = until_all_gone(&caches, "soft clear").await;
    eprintln!("soft clear seen by all three within {took:?}");
    for c in caches.iter().chain([&cold]) {
        assert_eq!(origin_down(c, 11).await.as_deref(), Some("new11"));
    }
    let v = cold
        .get_or_load(&11, || async { Some("newer11".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&"newer11".to_string()));
    let deadline = Instant::now() + BOUND + SLACK;
    for c in &caches {
        while c.get(&11).await.as_deref() != Some(&"newer11".to_string()) {
            assert!(
                Instant::now() < deadline,
                "the reload reaches every instance"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(bus_server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_standalone_nats() {
    three_instances_clear(
        Redis::Standalone(RedisServer::start().unwrap()),
        Kind::NatsCore,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_standalone_nats_jetstream() {
    three_instances_clear(
        Redis::Standalone(RedisServer::start().unwrap()),
        Kind::NatsJetStream,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_standalone_redis_pubsub() {
    three_instances_clear(
        Redis::Standalone(RedisServer::start().unwrap()),
        Kind::RedisPubSub,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_cluster_nats() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start().unwrap())
        .await
        .unwrap();
    three_instances_clear(Redis::Cluster(cluster), Kind::NatsCore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_cluster_redis_pubsub() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start().unwrap())
        .await
        .unwrap();
    // Redis pub/sub on a server of its own beside the cluster.
    let bus = BusServer::start(Kind::RedisPubSub);
    let redis = Redis::Cluster(cluster);
    let name = ns();
    let mut caches = Vec::new();
    for _ in 0..3 {
        caches.push(
            instance(
                &name,
                redis.tier().await,
                bus.connect(Kind::RedisPubSub).await,
            )
            .await,
        );
    }
    for k in 0..KEYS {
        caches[0].insert(&k, format!("old{k}")).await;
    }
    for c in &caches {
        assert!(c.get(&3).await.is_some());
    }
    caches[2].clear(ClearMode::Hard).await;
    until_all_gone(&caches, "hard clear on Cluster over Redis pub/sub").await;
}

/// Redis hangs (SIGSTOP) while an instance clears: every instance drops its
/// local copies at once (the message says so), the shared tier keeps the
/// old values until Redis answers again, then the retry lands: a new
/// instance finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_while_redis_hangs_is_applied_here_and_retried_there() {
    let mut server = RedisServer::start().unwrap();
    let bus = BusServer::start(Kind::NatsCore);
    let redis_url = server.url();
    let tier = || {
        let url = redis_url.clone();
        async move {
            Arc::new(
                RedisSharedTier::builder()
                    .url(url)
                    .call_timeout(Duration::from_millis(200))
                    .build()
                    .await
                    .unwrap(),
            ) as Arc<dyn SharedTier>
        }
    };
    let name = ns();
    let a = instance(&name, tier().await, bus.connect(Kind::NatsCore).await).await;
    let b = instance(&name, tier().await, bus.connect(Kind::NatsCore).await).await;
    for k in 0..KEYS {
        a.insert(&k, format!("old{k}")).await;
    }
    for k in 0..KEYS {
        assert!(b.get(&k).await.is_some());
    }
    server.pause();
    a.clear(ClearMode::Hard).await;
    // The local tiers alone (a read past them would wait on the hung Redis).
    let start = Instant::now();
    for c in [&a, &b] {
        for k in 0..KEYS {
            while c.get_local(&k).is_some() {
                assert!(
                    start.elapsed() < BOUND + SLACK,
                    "key {k} still local after {:?}",
                    start.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.resume();
    // The retry backs off up to a second; then a new instance, which has
    // never seen the message, finds the namespace cleared.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let epochs = tier().await.clear_epochs(&name).await.unwrap();
        if epochs.floor >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clear reached Redis after it resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cold = instance(&name, tier().await, bus.connect(Kind::NatsCore).await).await;
    for k in 0..KEYS {
        assert_eq!(cold.get(&k).await, None, "key {k} cleared in Redis too");
    }
}
