//! Client-side sharding over independent Redis servers
//! (`ShardedSharedTier` over `RedisSharedTier`s), on real redis-servers:
//! the shared-tier contract, the share of keys that moves when a server is
//! added, and a dead server failing its own keys open.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tiercache_core::Cache;
use tiercache_core::backend::{ShardedSharedTier, SharedTier, conformance};
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::RedisServer;

const KEYS: u64 = 3_000;

async fn redis(server: &RedisServer) -> (String, Arc<dyn SharedTier>) {
    let tier = RedisSharedTier::builder()
        .url(server.url())
        // Generous for the live servers (a slow answer would count as a
        // load below); the dead one refuses at once.
        .call_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    (server.url(), Arc::new(tier))
}

async fn sharded(servers: &[&RedisServer]) -> Arc<ShardedSharedTier> {
    let mut shards = Vec::new();
    for s in servers {
        shards.push(redis(s).await);
    }
    Arc::new(ShardedSharedTier::new(shards).unwrap())
}

fn instance(ns: &str, tier: Arc<ShardedSharedTier>) -> Cache<u64, String> {
    Cache::<u64, String>::builder(ns)
        .shared_tier_arc(tier)
        .no_bus()
        .local_capacity(0)
        .build()
        .unwrap()
}

/// Reads every key through `c`; how many the origin had to load.
async fn read_all(c: &Cache<u64, String>) -> u64 {
    let loads = Arc::new(AtomicU64::new(0));
    for k in 0..KEYS {
        let loads = Arc::clone(&loads);
        let v = c
            .get_or_load(&k, move || async move {
                loads.fetch_add(1, Ordering::Relaxed);
                Some(format!("v{k}"))
            })
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some(&format!("v{k}")), "key {k}");
    }
    loads.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_keep_the_shared_tier_contract() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start().unwrap()).collect();
    let tier = sharded(&servers.iter().collect::<Vec<_>>()).await;
    conformance::shared_tier(tier.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_server_moves_about_a_quarter_of_three_servers_keys() {
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start().unwrap()).collect();
    let ns = common::unique("sharded");
    let three = sharded(&[&servers[0], &servers[1], &servers[2]]).await;
    assert_eq!(
        read_all(&instance(&ns, three)).await,
        KEYS,
        "all loaded once"
    );

    // Every server got a share.
    for s in &servers[..3] {
        let reply = tokio::task::block_in_place(|| {
            tiercache_testkit::redis_command(s.port(), &["DBSIZE"]).unwrap()
        });
        let n: i64 = reply.as_text().unwrap().parse().unwrap();
        assert!(n > (KEYS / 4) as i64, "a server holds {n} keys");
    }

    // A fourth server: a fresh instance finds the keys that stayed, and
    // loads the ones that moved to the new server (about 1/4).
    let four = sharded(&servers.iter().collect::<Vec<_>>()).await;
    let moved = read_all(&instance(&ns, four)).await;
    let share = moved as f64 / KEYS as f64;
    eprintln!("3 -> 4 servers: {moved} of {KEYS} keys moved ({share:.3}; ideal 0.25)");
    assert!(
        (0.2..0.3).contains(&share),
        "{share:.3} of the keys moved, not about a quarter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_fails_its_own_keys_open() {
    let mut servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start().unwrap()).collect();
    let ns = common::unique("sharded-dead");
    let tier = sharded(&servers.iter().collect::<Vec<_>>()).await;
    let c = instance(&ns, Arc::clone(&tier));
    assert_eq!(read_all(&c).await, KEYS);
    assert_eq!(read_all(&c).await, 0, "all from the shared tier");

    // Kill one that is not the namespace's home (its loss would keep every
    // fill out of the shared tier, by design).
    let probe = format!("\u{0}tiercache-namespace:{ns}");
    let home = tier.shard_of(&probe);
    let dead = (home + 1) % 3;
    tokio::task::block_in_place(|| servers[dead].kill());
    let on_dead = (0..KEYS)
        .filter(|k| tier.shard_of(&format!("{ns}:{k}")) == dead)
        .count() as u64;
    let loads = read_all(&c).await;
    eprintln!("one of three servers dead: {loads} loads for {on_dead} keys on it");
    assert_eq!(
        loads, on_dead,
        "only the dead server's keys go to the origin"
    );
    assert!(c.stats().shared_errors > 0, "counted");
}
