//! The rule suite against a real redis-server (shared tier), and two
//! instances exchanging tag invalidations over a real nats-server.
//!
//! Needs `redis-server` and `nats-server` on the PATH (the testkit names the
//! Debian packages when they are missing).
#![allow(missing_docs, clippy::unwrap_used)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Env;
use tiercache_core::backend::InProcessBus;
use tiercache_nats::NatsBus;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{NatsServer, RedisServer};

async fn redis_tier(url: &str) -> RedisSharedTier {
    RedisSharedTier::builder()
        .url(url)
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

/// Every rule of the suite, one after another, on one redis-server (each
/// rule in its own namespaces).
#[test]
fn rules_on_redis() {
    let redis = RedisServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = Env {
            tier: Arc::new(redis_tier(&redis.url()).await),
            bus: Arc::new(InProcessBus::new()),
        };
        for (name, rule) in common::all() {
            eprintln!("rule {name} on redis");
            rule(env.clone()).await;
        }
    });
    drop(rt);
    drop(redis);
}

/// The RFC conformance table (issue 12) on one redis-server, every case at
/// once (each in its own namespace).
#[test]
fn rfc_conformance_on_redis() {
    let redis = RedisServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = Env {
            tier: Arc::new(redis_tier(&redis.url()).await),
            bus: Arc::new(InProcessBus::new()),
        };
        common::rfc::run(env).await;
    });
    drop(rt);
    drop(redis);
}

/// Two instances, each with its own Redis and NATS connections: a tag
/// invalidated through one router is dropped by the other.
#[test]
fn two_instances_on_redis_and_nats() {
    let redis = RedisServer::start().unwrap();
    let nats = NatsServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let instance = || async {
            Env {
                tier: Arc::new(redis_tier(&redis.url()).await),
                bus: Arc::new(NatsBus::builder().url(nats.url()).build().await.unwrap()),
            }
        };
        let (a, b) = (instance().await, instance().await);
        common::two_instances(a, b).await;
    });
    drop(rt);
    drop((redis, nats));
}
