//! Against real Sentinels, a master and replicas.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tiercache_core::backend::{SharedEvent, SharedTier, conformance};
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{RedisSentinelSet, redis_command};

use common::{two_instances, unique, until_working, wait_event};

async fn tier(set: &RedisSentinelSet) -> RedisSharedTier {
    RedisSharedTier::builder()
        .sentinel(set.sentinel_urls(), set.master_name())
        .call_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conforms_and_shares_between_instances() {
    let set = RedisSentinelSet::start(1).unwrap();
    let a = tier(&set).await;
    conformance::shared_tier(&a).await;
    two_instances(&a, &tier(&set).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn follows_the_master_through_a_failover() {
    let mut set = RedisSentinelSet::start(2).unwrap();
    let t = tier(&set).await;
    let mut events = t.events().unwrap();
    let ns = unique("failover");
    assert!(
        until_working(&t, &format!("{ns}:warm"), Duration::from_secs(5))
            .await
            .is_some()
    );

    // Load while the master dies.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (t, stop, ok) = (t.clone(), stop.clone(), ok.clone());
        let key = format!("{ns}:load{i}");
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if t.set(&key, Bytes::from_static(b"v"), Duration::from_secs(60))
                    .await
                    .is_ok()
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                let _ = t.get(&key).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = tokio::task::block_in_place(|| set.kill_master()).unwrap();
    let new = tokio::task::block_in_place(|| set.wait_for_failover(old, Duration::from_secs(30)))
        .unwrap();
    assert_ne!(old, new);
    let before = ok.load(Ordering::Relaxed);

    assert!(
        wait_event(
            &mut events,
            SharedEvent::FailedOver,
            Duration::from_secs(10)
        )
        .await,
        "a FailedOver event is emitted"
    );
    let key = format!("{ns}:after");
    assert!(
        until_working(&t, &key, Duration::from_secs(10))
            .await
            .is_some()
    );
    t.set(
        &key,
        Bytes::from_static(b"on-the-new-master"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "the load's writes succeed again"
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    // The write landed on the new master.
    let got = tokio::task::block_in_place(|| redis_command(new, &["GET", &format!("{{{key}}}")]))
        .unwrap();
    assert_eq!(got.as_text().as_deref(), Some("on-the-new-master"));
    let role = tokio::task::block_in_place(|| redis_command(new, &["ROLE"])).unwrap();
    assert_eq!(
        role.as_array().and_then(|r| r[0].as_text()).as_deref(),
        Some("master")
    );
}
