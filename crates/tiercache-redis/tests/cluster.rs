//! Against a real six-node Redis Cluster.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use tiercache_core::backend::{SharedEvent, SharedTier, conformance};
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{RedisCluster, redis_command};

use common::{two_instances, unique, wait_event};

async fn tier(cluster: &RedisCluster) -> RedisSharedTier {
    RedisSharedTier::builder()
        .cluster(cluster.urls())
        .call_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

/// Writes and reads `n` keys (spread over every slot range); true if all worked.
async fn all_keys_work(t: &RedisSharedTier, ns: &str, n: usize) -> bool {
    for i in 0..n {
        let key = format!("{ns}:{i}");
        let v = Bytes::from(i.to_string());
        if t.set(&key, v.clone(), Duration::from_secs(60))
            .await
            .is_err()
        {
            return false;
        }
        if t.get(&key).await.ok().flatten() != Some(v) {
            return false;
        }
    }
    true
}

/// Waits until every replica has finished its initial sync: a replica killed
/// over before that has no data and is never promoted. (The testkit's
/// `RedisCluster::start` waits for `cluster_state:ok` only.)
fn wait_for_replicas_in_sync(cluster: &RedisCluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let synced = cluster.ports().into_iter().all(|p| {
            let info = redis_command(p, &["INFO", "replication"])
                .ok()
                .and_then(|r| r.as_text())
                .unwrap_or_default();
            !info.contains("role:slave") || info.contains("master_link_status:up")
        });
        if synced {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas did not sync within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conforms_and_shares_between_instances() {
    let cluster = RedisCluster::start().unwrap();
    let a = tier(&cluster).await;
    conformance::shared_tier(&a).await;
    two_instances(&a, &tier(&cluster).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn keeps_working_after_a_master_fails_over() {
    let mut cluster = RedisCluster::start().unwrap();
    let t = tier(&cluster).await;
    let mut events = t.events().unwrap();
    let ns = unique("cfail");
    assert!(all_keys_work(&t, &ns, 60).await);
    tokio::task::block_in_place(|| wait_for_replicas_in_sync(&cluster));
    let victim = tokio::task::block_in_place(|| cluster.master_ports()).unwrap()[0];
    tokio::task::block_in_place(|| cluster.kill_node(victim));
    tokio::task::block_in_place(|| cluster.wait_for_state_ok(Duration::from_secs(30))).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut working = false;
    while tokio::time::Instant::now() < deadline {
        if all_keys_work(&t, &ns, 60).await {
            working = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        working,
        "every slot answers again after the replica took over"
    );
    assert!(
        wait_event(&mut events, SharedEvent::FailedOver, Duration::from_secs(5)).await,
        "a FailedOver event is emitted"
    );
    // Tags and fills still work on the new topology.
    let tags = vec!["t".to_owned()];
    t.invalidate_tags(&ns, &tags).await.unwrap();
    assert!(t.tag_versions(&ns, &tags).await.unwrap()[0] > 0);
    let keys: Vec<String> = (0..60).map(|i| format!("{ns}:{i}")).collect();
    t.invalidate(&keys).await.unwrap();
    assert!(t.get_many(&keys).await.unwrap().iter().all(Option::is_none));
}
