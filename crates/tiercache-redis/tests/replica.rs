//! Replica reads (`read_from_replicas(true)`) against real Sentinel sets and
//! a real Cluster: where reads and writes go, the consistency cost (a
//! lagging replica never puts an invalidated value back into a local tier),
//! and replicas that die.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tiercache_core::backend::SharedTier;
use tiercache_core::{Cache, Entry};
use tiercache_redis::{BuildError, RedisBus, RedisSharedTier, RedisSharedTierBuilder};
use tiercache_testkit::{RedisCluster, RedisSentinelSet, redis_command};

use common::unique;

/// The engine's default staleness bound, and the slack a loaded CI machine
/// gets on top of it.
const BOUND: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_secs(3);

fn sentinel_builder(set: &RedisSentinelSet, replicas: bool) -> RedisSharedTierBuilder {
    RedisSharedTier::builder()
        .sentinel(set.sentinel_urls(), set.master_name())
        .call_timeout(Duration::from_millis(200))
        .read_from_replicas(replicas)
}

fn cluster_builder(cluster: &RedisCluster, replicas: bool) -> RedisSharedTierBuilder {
    RedisSharedTier::builder()
        .cluster(cluster.urls())
        .call_timeout(Duration::from_millis(200))
        .read_from_replicas(replicas)
}

/// An engine instance on `tier`, hearing invalidations on the bus at
/// `bus_url`; `local`: whether it has a local tier.
async fn instance(
    tier: RedisSharedTier,
    bus_url: &str,
    ns: &str,
    local: bool,
) -> Cache<u64, String> {
    let bus = RedisBus::connect(bus_url).await.unwrap();
    let mut b = Cache::<u64, String>::builder(ns).shared_tier(tier).bus(bus);
    if !local {
        b = b.local_capacity(0);
    }
    let cache = b.build().unwrap();
    // Let it subscribe before anything is published.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cache
}

/// `calls=` of `cmdstat_<cmd>` in `INFO commandstats` of the node on `port`.
fn calls(port: u16, cmd: &str) -> u64 {
    let info = redis_command(port, &["INFO", "commandstats"])
        .unwrap()
        .as_text()
        .unwrap();
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn text(v: &Option<Arc<String>>) -> Option<&str> {
    v.as_deref().map(String::as_str)
}

async fn wait_for_replicas(tier: &RedisSharedTier, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tier.replicas_in_use().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas in use: {:?}, want {n}",
            tier.replicas_in_use()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the Cluster read connection routes by a slot map with all
/// three replicas.
async fn wait_for_cluster_replicas(tier: &RedisSharedTier) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tier
        .replicas_in_use()
        .first()
        .is_none_or(|r| r.split(',').count() < 3)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas in use: {:?}",
            tier.replicas_in_use()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the replica on `port` holds the value key of `sk` (`READONLY`
/// first, for a Cluster replica; a Cluster replica of another slot answers
/// `MOVED`, which is a no).
fn replica_has(port: u16, sk: &str) -> bool {
    let key = format!("{{{sk}}}");
    let replies =
        tiercache_testkit::redis_pipeline(port, &[&["READONLY"], &["EXISTS", &key]]).unwrap();
    replies.get(1) == Some(&tiercache_testkit::Resp::Integer(1))
}

/// Waits until the value key of `sk` is on the replicas in `ports`: on
/// every one (`all`, Sentinel) or on one of them (Cluster: the replica of
/// its slot).
fn wait_replicated(ports: &[u16], sk: &str, all: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = if all {
            ports.iter().all(|p| replica_has(*p, sk))
        } else {
            ports.iter().any(|p| replica_has(*p, sk))
        };
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sk} never reached the replicas {ports:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn replica_reads_need_replicas_to_name() {
    let e = RedisSharedTier::builder()
        .url("redis://127.0.0.1:1")
        .read_from_replicas(true)
        .connect_lazily(true)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BuildError::Config {
                field: "read_from_replicas",
                ..
            }
        ),
        "{e}"
    );
    // Off, the same builder is fine.
    let off = RedisSharedTier::builder()
        .url("redis://127.0.0.1:1")
        .read_from_replicas(false)
        .connect_lazily(true)
        .build()
        .await
        .unwrap();
    assert_eq!(off.replica_stats(), None);
}

/// Reads go to the replicas, spread over both; fills, leases, versions and
/// tag checks stay on the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_replica_reads_go_to_replicas_and_writes_to_the_master() {
    let set = RedisSentinelSet::start(2).unwrap();
    let master = set.master_port().unwrap();
    let replicas = set.replica_ports();
    assert_eq!(replicas.len(), 2);
    let bus_url = format!("redis://127.0.0.1:{master}");
    let ns = unique("rr");
    let writer = instance(
        sentinel_builder(&set, false).build().await.unwrap(),
        &bus_url,
        &ns,
        true,
    )
    .await;
    let tier = sentinel_builder(&set, true).build().await.unwrap();
    wait_for_replicas(&tier, 2).await;
    let reader = instance(tier.clone(), &bus_url, &ns, false).await;

    for k in 0..20u64 {
        writer
            .insert_entry(&k, Entry::new(format!("v{k}")).tag("even"))
            .await;
    }
    let last = writer.key_format().storage_key(&19u64);
    tokio::task::block_in_place(|| wait_replicated(&replicas, &last, true));

    let mget_before: Vec<u64> = replicas.iter().map(|p| calls(*p, "mget")).collect();
    let master_mget = calls(master, "mget");
    let master_get = calls(master, "get");
    for round in 0..10 {
        for k in 0..20u64 {
            let got = reader.get(&k).await;
            assert_eq!(text(&got), Some(format!("v{k}").as_str()), "round {round}");
        }
    }
    let stats = tier.replica_stats().unwrap();
    assert!(stats.served >= 200, "{stats:?}");
    assert_eq!((stats.stale, stats.fallback), (0, 0), "{stats:?}");
    for (p, before) in replicas.iter().zip(&mget_before) {
        assert!(
            calls(*p, "mget") > *before,
            "replica {p} served no read (reads are spread over every replica)"
        );
    }
    // The master answered versions (and tag versions): one MGET per read
    // at most, and never a value GET.
    assert!(calls(master, "mget") - master_mget <= 2 * 200);
    assert!(
        calls(master, "get") - master_get < 20,
        "value reads went to the master (only clear epochs may be read there)"
    );

    // A miss: the fill's ticket, lease and commit run on the master, never
    // on a replica (writes there would fail with READONLY anyway).
    let evalsha: Vec<u64> = replicas.iter().map(|p| calls(*p, "evalsha")).collect();
    let master_evalsha = calls(master, "evalsha") + calls(master, "eval");
    let got = reader
        .get_or_load(&100, || async { Some("loaded".to_owned()) })
        .await
        .unwrap();
    assert_eq!(text(&got), Some("loaded"));
    assert!(calls(master, "evalsha") + calls(master, "eval") > master_evalsha);
    for (p, before) in replicas.iter().zip(&evalsha) {
        assert_eq!(calls(*p, "evalsha"), *before, "replica {p} ran a script");
    }
}

/// The consistency cost on Sentinel: a replica that stopped following its
/// master still answers reads with the old values. An instance reading from
/// it (built before it lagged, so it keeps it until its next health check)
/// never returns the old value past the staleness bound after an
/// invalidation by another instance, of the key or of its tag, not even
/// when the master already holds a newer value; an instance started after
/// the invalidation (which never heard it) never takes the old value either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_lagging_replica_never_refills_a_local_tier() {
    let set = RedisSentinelSet::start(1).unwrap();
    let master = set.master_port().unwrap();
    let replica = set.replica_ports()[0];
    let bus_url = format!("redis://127.0.0.1:{master}");
    let ns = unique("lag");
    let writer = instance(
        sentinel_builder(&set, false).build().await.unwrap(),
        &bus_url,
        &ns,
        true,
    )
    .await;
    // A health interval longer than the test: the lagging replica stays in
    // use, so every read below goes through the version check.
    let tier = sentinel_builder(&set, true)
        .health_interval(Duration::from_secs(120))
        .build()
        .await
        .unwrap();
    wait_for_replicas(&tier, 1).await;
    let reader = instance(tier.clone(), &bus_url, &ns, true).await;

    lagging_replica_scenario(&writer, &reader, &tier, &[replica], true, |pause| {
        if pause {
            set.pause_replication(replica).unwrap();
        } else {
            set.resume_replication(replica, Duration::from_secs(20))
                .unwrap();
        }
    })
    .await;

    // An instance started while the replica lags: its health check finds
    // the replica's link down and leaves it out.
    tokio::task::block_in_place(|| set.pause_replication(replica)).unwrap();
    writer.invalidate(&1).await;
    writer.insert(&1, "v3".to_owned()).await;
    let late_tier = sentinel_builder(&set, true).build().await.unwrap();
    assert!(
        late_tier.replicas_in_use().is_empty(),
        "{:?}",
        late_tier.replicas_in_use()
    );
    let late = instance(late_tier.clone(), &bus_url, &ns, true).await;
    assert_eq!(text(&late.get(&1).await), Some("v3"));
    assert!(late_tier.replica_stats().unwrap().fallback >= 1);
    tokio::task::block_in_place(|| set.resume_replication(replica, Duration::from_secs(20)))
        .unwrap();
}

/// The scenario on one topology: `lag(true)` makes the replicas lag,
/// `lag(false)` lets them catch up; `all`: every replica holds every key
/// (Sentinel), or one does (Cluster).
async fn lagging_replica_scenario(
    writer: &Cache<u64, String>,
    reader: &Cache<u64, String>,
    tier: &RedisSharedTier,
    replicas: &[u16],
    all: bool,
    mut lag: impl FnMut(bool),
) {
    // Key 1 plain, keys 2 and 3 tagged; all in the reader's local tier,
    // and on the replicas.
    writer.insert(&1, "v1".to_owned()).await;
    writer
        .insert_entry(&2, Entry::new("v1".to_owned()).tag("t"))
        .await;
    writer
        .insert_entry(&3, Entry::new("v1".to_owned()).tag("u"))
        .await;
    for k in [1u64, 2, 3] {
        let sk = writer.key_format().storage_key(&k);
        tokio::task::block_in_place(|| wait_replicated(replicas, &sk, all));
        assert_eq!(text(&reader.get(&k).await), Some("v1"));
    }

    tokio::task::block_in_place(|| lag(true));
    // Invalidate by key and by tag, and replace keys 1 and 2 on the master:
    // the replicas keep v1 (an older, replaced value), the master has v2.
    // Key 3 is only tag-invalidated: the master has no value.
    let stale_before = tier.replica_stats().unwrap().stale;
    writer.invalidate(&1).await;
    writer.invalidate_tag("t").await;
    writer.invalidate_tag("u").await;
    let invalidated = tokio::time::Instant::now();
    writer.insert(&1, "v2".to_owned()).await;
    writer
        .insert_entry(&2, Entry::new("v2".to_owned()).tag("t"))
        .await;
    for k in [1u64, 2, 3] {
        let sk = writer.key_format().storage_key(&k);
        let lagging = replicas.iter().any(|p| replica_has(*p, &sk));
        assert!(lagging, "key {k}: the replica lags and still has v1");
    }

    // Within the staleness bound the reader has the new state, and then
    // never v1 again: its local tier dropped the keys, it reads through
    // the shared tier (the lagging replica, then the master), many times.
    let want = |k: u64| if k == 3 { None } else { Some("v2") };
    for k in [1u64, 2, 3] {
        loop {
            let got = reader.get(&k).await;
            if text(&got) == want(k) {
                break;
            }
            assert!(
                invalidated.elapsed() < BOUND + SLACK,
                "key {k}: {:?} past the staleness bound",
                text(&got)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for _ in 0..50 {
        for k in [1u64, 2, 3] {
            assert_eq!(text(&reader.get(&k).await), want(k), "key {k}");
        }
    }
    let stats = tier.replica_stats().unwrap();
    assert!(
        stats.stale > stale_before,
        "the version check refused the replica's v1: {stats:?}"
    );

    tokio::task::block_in_place(|| lag(false));
    // Caught up: the replicas serve v2, the reader converges on them.
    let served = tier.replica_stats().unwrap().served;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tier.replica_stats().unwrap().served == served {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads never came back to the replicas"
        );
        for k in [1u64, 2, 3] {
            // A fresh local miss each time: the shared tier answers.
            reader.flush_local();
            assert_eq!(text(&reader.get(&k).await), want(k), "key {k}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The consistency cost on Cluster: redis-rs routes reads to a slot's
/// replica whatever its link to the master, so the version check is all
/// that stands between a lagging replica and the local tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_lagging_replica_never_refills_a_local_tier() {
    let cluster = RedisCluster::start().unwrap();
    let replicas = cluster.replica_ports().unwrap();
    let bus_url = cluster.urls()[0].clone();
    let ns = unique("clag");
    let writer = instance(
        cluster_builder(&cluster, false).build().await.unwrap(),
        &bus_url,
        &ns,
        true,
    )
    .await;
    let tier = cluster_builder(&cluster, true).build().await.unwrap();
    wait_for_cluster_replicas(&tier).await;
    let reader = instance(tier.clone(), &bus_url, &ns, true).await;

    lagging_replica_scenario(&writer, &reader, &tier, &replicas, false, |pause| {
        for &p in &replicas {
            if pause {
                cluster.pause_replication(p).unwrap();
            } else {
                cluster
                    .resume_replication(p, Duration::from_secs(20))
                    .unwrap();
            }
        }
    })
    .await;
    assert!(
        tier.replica_stats().unwrap().stale >= 1,
        "{:?}",
        tier.replica_stats()
    );

    // An instance started after the invalidation never heard of it: only
    // the version check keeps the lagging replica's old value out.
    let sk = writer.key_format().storage_key(&7u64);
    writer.insert(&7, "old".to_owned()).await;
    tokio::task::block_in_place(|| wait_replicated(&replicas, &sk, false));
    for &p in &replicas {
        tokio::task::block_in_place(|| cluster.pause_replication(p)).unwrap();
    }
    writer.invalidate(&7).await;
    writer.insert(&7, "new".to_owned()).await;
    let late_tier = cluster_builder(&cluster, true).build().await.unwrap();
    wait_for_cluster_replicas(&late_tier).await;
    let late = instance(late_tier.clone(), &bus_url, &ns, true).await;
    for _ in 0..20 {
        assert_eq!(text(&late.get(&7).await), Some("new"));
    }
    let stats = late_tier.replica_stats().unwrap();
    assert!(
        stats.stale >= 1,
        "the lagging replica's value was refused: {stats:?}"
    );
    for &p in &replicas {
        tokio::task::block_in_place(|| cluster.resume_replication(p, Duration::from_secs(20)))
            .unwrap();
    }
    let served = late_tier.replica_stats().unwrap().served;
    let late2 = instance(late_tier.clone(), &bus_url, &ns, false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while late_tier.replica_stats().unwrap().served == served {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads never came back to the replica"
        );
        assert_eq!(text(&late2.get(&7).await), Some("new"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Load on `tier` (plain `get`s that must all succeed with the right
/// value) while `fault` runs; returns (reads, errors, wrong values).
async fn under_load(
    tier: &RedisSharedTier,
    keys: &[String],
    fault: impl FnOnce(),
) -> (u64, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (tier, stop, ok, errors, wrong) = (
            tier.clone(),
            stop.clone(),
            ok.clone(),
            errors.clone(),
            wrong.clone(),
        );
        let keys = keys.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                match tier.get(key).await {
                    Ok(Some(v)) if v.as_ref() == key.as_bytes() => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(_) => wrong.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("read error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(fault);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    )
}

async fn seed(tier: &RedisSharedTier, prefix: &str) -> Vec<String> {
    let keys: Vec<String> = (0..32).map(|i| format!("{prefix}:{i}")).collect();
    for k in &keys {
        tier.set(k, Bytes::from(k.clone()), Duration::from_secs(600))
            .await
            .unwrap();
    }
    keys
}

/// Replicas that hang (SIGSTOP) or die (SIGKILL): reads fall back to the
/// master, and no caller sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_replica_that_dies_falls_back_to_the_master() {
    let mut set = RedisSentinelSet::start(2).unwrap();
    let replicas = set.replica_ports();
    let tier = sentinel_builder(&set, true).build().await.unwrap();
    wait_for_replicas(&tier, 2).await;
    let keys = seed(&tier, &unique("die")).await;
    let last = keys.last().unwrap().clone();
    tokio::task::block_in_place(|| wait_replicated(&replicas, &last, true));

    let (ok, errors, wrong) = under_load(&tier, &keys, || {
        set.server_mut(replicas[0]).unwrap().pause();
    })
    .await;
    assert_eq!((errors, wrong), (0, 0), "{ok} reads ok");
    assert_eq!(
        tier.replicas_in_use(),
        vec![format!("127.0.0.1:{}", replicas[1])]
    );

    let (ok, errors, wrong) = under_load(&tier, &keys, || {
        set.server_mut(replicas[1]).unwrap().kill();
    })
    .await;
    assert_eq!((errors, wrong), (0, 0), "{ok} reads ok");
    assert!(tier.replicas_in_use().is_empty());
    let stats = tier.replica_stats().unwrap();
    assert!(stats.fallback > 0 && stats.served > 0, "{stats:?}");
    set.server_mut(replicas[0]).unwrap().resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_replica_reads_and_a_replica_that_dies() {
    let mut cluster = RedisCluster::start().unwrap();
    let replicas = cluster.replica_ports().unwrap();
    let masters = cluster.master_ports().unwrap();
    let tier = cluster_builder(&cluster, true).build().await.unwrap();
    wait_for_cluster_replicas(&tier).await;
    let keys = seed(&tier, &unique("cdie")).await;
    for k in &keys {
        tokio::task::block_in_place(|| wait_replicated(&replicas, k, false));
    }
    let before: Vec<u64> = replicas.iter().map(|p| calls(*p, "mget")).collect();
    let master_get: Vec<u64> = masters.iter().map(|p| calls(*p, "get")).collect();
    let replica_evalsha: Vec<u64> = replicas.iter().map(|p| calls(*p, "evalsha")).collect();
    for k in &keys {
        assert_eq!(tier.get(k).await.unwrap(), Some(Bytes::from(k.clone())));
    }
    assert!(
        replicas
            .iter()
            .zip(&before)
            .all(|(p, b)| calls(*p, "mget") > *b),
        "every replica served reads"
    );
    assert_eq!(
        masters.iter().map(|p| calls(*p, "get")).collect::<Vec<_>>(),
        master_get,
        "no value read went to a master"
    );
    // Fills and invalidations run on the masters.
    let ns = unique("cfill");
    let sk = format!("{ns}:x");
    let t = tier
        .begin_fill(&ns, &sk, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(t.lease.is_some());
    assert!(
        tier.commit_fill(&sk, &t, Bytes::from_static(b"x"), Duration::from_secs(60))
            .await
            .unwrap()
    );
    tier.invalidate(std::slice::from_ref(&sk)).await.unwrap();
    assert_eq!(
        replicas
            .iter()
            .map(|p| calls(*p, "evalsha"))
            .collect::<Vec<_>>(),
        replica_evalsha,
        "no script ran on a replica"
    );

    let victim = replicas[0];
    let (ok, errors, wrong) = under_load(&tier, &keys, || cluster.kill_node(victim)).await;
    assert_eq!((errors, wrong), (0, 0), "{ok} reads ok");
    // redis-rs sends a dead replica's reads to its shard's master at once;
    // once the cluster flags the replica failing, the read connection is
    // rebuilt without it.
    let gone = format!("127.0.0.1:{victim}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tier.replicas_in_use().iter().any(|r| r.contains(&gone)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            tier.replicas_in_use()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, errors, wrong) = under_load(&tier, &keys, || ()).await;
    assert_eq!((errors, wrong), (0, 0), "{ok} reads ok");
}

/// The test kit removes a master (slots moved away, forgotten by every
/// node) while a tier with replica reads goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kit_removes_a_master_under_replica_reads() {
    let mut cluster = RedisCluster::start().unwrap();
    let tier = cluster_builder(&cluster, true)
        .call_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let keys = seed(&tier, &unique("rm")).await;
    let masters = cluster.master_ports().unwrap();
    let gone = masters[1];
    tokio::task::block_in_place(|| cluster.remove_master(gone)).unwrap();
    let now = cluster.master_ports().unwrap();
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&gone));
    assert!(!cluster.ports().contains(&gone));
    for p in cluster.ports() {
        let nodes = redis_command(p, &["CLUSTER", "NODES"])
            .unwrap()
            .as_text()
            .unwrap();
        assert!(
            !nodes.contains(&format!(":{gone}@")),
            "node {p} still knows {gone}"
        );
    }
    let total: usize = now.iter().map(|p| cluster.slots_of(*p).unwrap()).sum();
    assert_eq!(total, 16384);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for k in &keys {
        loop {
            match tier.get(k).await {
                Ok(Some(v)) => {
                    assert_eq!(v, Bytes::from(k.clone()));
                    break;
                }
                other => {
                    assert!(tokio::time::Instant::now() < deadline, "{k}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
