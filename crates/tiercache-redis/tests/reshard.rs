//! Redis Cluster resharding under load: three instances read, load,
//! insert, invalidate keys and tags while a quarter of the slots migrate to
//! a new master and back (`redis-cli --cluster reshard`). No caller sees an
//! error, no read returns a value older than an invalidation that finished
//! more than the staleness bound (plus slack) before it began, the writer
//! included, and the writer reads its own write at once.
//!
//! Writers hold their rows' lock (one per tag group here) across the
//! origin's change and the cache call, as an application's transaction
//! holds the row lock across `UPDATE` and its write-through. Without it, two
//! writers of one key race as in any cache-aside store: one changes the
//! origin to v, another to v + 1 and invalidates, then the first's
//! `insert(v)` lands in the cache last and stays until its TTL. (Slow calls
//! while slots move made that race common enough to be seen here.)
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiercache_core::{Cache, Entry};
use tiercache_redis::{RedisBus, RedisSharedTier};
use tiercache_testkit::{RedisCluster, RedisServer};

const KEYS: u64 = 400;
const GROUPS: u64 = 10;
/// The caches' staleness bound, and the slack a loaded machine needs.
const BOUND: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_secs(1);

/// The origin: each key's current version.
#[derive(Default)]
struct Origin {
    versions: Mutex<HashMap<u64, u64>>,
    /// Per key: when an invalidation of it finished, and the version it
    /// made current.
    done: Mutex<HashMap<u64, Vec<(Instant, u64)>>>,
}

impl Origin {
    fn read(&self, k: u64) -> u64 {
        *self.versions.lock().unwrap().get(&k).unwrap_or(&0)
    }

    fn bump(&self, k: u64) -> u64 {
        let mut v = self.versions.lock().unwrap();
        let e = v.entry(k).or_insert(0);
        *e += 1;
        *e
    }

    fn finished(&self, k: u64, version: u64) {
        self.done
            .lock()
            .unwrap()
            .entry(k)
            .or_default()
            .push((Instant::now(), version));
    }

    /// The newest version a read of `k` that began at `at` must see.
    fn floor(&self, k: u64, at: Instant) -> u64 {
        self.done.lock().unwrap().get(&k).map_or(0, |d| {
            d.iter()
                .filter(|(t, _)| *t + BOUND + SLACK < at)
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(0)
        })
    }
}

fn group(k: u64) -> String {
    format!("group:{}", k % GROUPS)
}

async fn read(c: &Cache<u64, u64>, origin: &Arc<Origin>, k: u64) -> Result<u64, String> {
    read_how(c, origin, k).await.map(|(v, _)| v)
}

/// [`read`], and how the cache answered (for the report of a late own
/// write).
async fn read_how(
    c: &Cache<u64, u64>,
    origin: &Arc<Origin>,
    k: u64,
) -> Result<(u64, String), String> {
    let o = Arc::clone(origin);
    let got = c
        .fetch(&k, move || async move {
            Ok::<_, Infallible>(Some(Entry::new(o.read(k)).tag(group(k))))
        })
        .await
        .map_err(|e| e.to_string())?;
    let how = format!("{:?}, written_ms {}", got.outcome, got.written_ms);
    got.value
        .map(|v| (*v, how))
        .ok_or_else(|| "no value".to_owned())
}

#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    errors: AtomicU64,
    stale: AtomicU64,
    /// Own writes not read back at once.
    own_write_late: AtomicU64,
    /// Own writes not read back within the staleness bound.
    unread_writes: AtomicU64,
    writes: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_a_quarter_of_the_slots_under_load_and_back() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start().unwrap())
        .await
        .unwrap();
    let bus_server = RedisServer::start().unwrap();
    let ns = common::unique("reshard");
    let mut caches = Vec::new();
    let mut tiers = Vec::new();
    for _ in 0..3 {
        let tier = RedisSharedTier::builder()
            .cluster(cluster.urls())
            .call_timeout(Duration::from_secs(1))
            .build()
            .await
            .unwrap();
        let bus = RedisBus::connect(bus_server.url()).await.unwrap();
        tiers.push(tier.clone());
        caches.push(
            Cache::<u64, u64>::builder(ns.as_str())
                .shared_tier(tier)
                .bus(bus)
                .staleness_bound(BOUND)
                .build()
                .unwrap(),
        );
    }
    let origin = Arc::new(Origin::default());
    // The rows' locks: one per tag group, so a tag invalidation holds every
    // row it changes.
    let rows: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new((0..GROUPS).map(|_| tokio::sync::Mutex::new(())).collect());
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    // Readers: every instance, several tasks each.
    for (i, c) in caches.iter().enumerate() {
        for t in 0..4u64 {
            let (c, origin, tally, stop) = (
                c.clone(),
                Arc::clone(&origin),
                Arc::clone(&tally),
                Arc::clone(&stop),
            );
            tasks.push(tokio::spawn(async move {
                let mut k = (i as u64 * 131 + t * 17) % KEYS;
                while !stop.load(Ordering::Relaxed) {
                    k = (k * 7 + 3) % KEYS;
                    let began = Instant::now();
                    match read(&c, &origin, k).await {
                        Ok(v) => {
                            if v < origin.floor(k, began) {
                                tally.stale.fetch_add(1, Ordering::Relaxed);
                                eprintln!(
                                    "stale: key {k} read {v}, floor {}",
                                    origin.floor(k, began)
                                );
                            }
                        }
                        Err(e) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("error: key {k}: {e}");
                        }
                    }
                    tally.ops.fetch_add(1, Ordering::Relaxed);
                    // A local hit never suspends: without a pause the
                    // readers would hold both workers and starve the loads.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }
    // One writer per instance: invalidate a key, insert a key, or
    // invalidate a tag, then read its own write at once.
    for (i, c) in caches.iter().enumerate() {
        let tier = tiers[i].clone();
        let rows = Arc::clone(&rows);
        let keyfmt = tiercache_core::backend::KeyFormat::new(ns.as_str(), 250);
        let (c, origin, tally, stop) = (
            c.clone(),
            Arc::clone(&origin),
            Arc::clone(&tally),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = i as u64;
            while !stop.load(Ordering::Relaxed) {
                n += 3;
                let k = (n * 37) % KEYS;
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let row = rows[(k % GROUPS) as usize].lock().await;
                let (keys, written) = match n % 3 {
                    0 => {
                        let v = origin.bump(k);
                        c.invalidate(&k).await;
                        (vec![(k, v)], k)
                    }
                    1 => {
                        let v = origin.bump(k);
                        c.insert_entry(&k, Entry::new(v).tag(group(k))).await;
                        (vec![(k, v)], k)
                    }
                    _ => {
                        let g = k % GROUPS;
                        let bumped: Vec<(u64, u64)> = (0..KEYS)
                            .filter(|x| x % GROUPS == g)
                            .map(|x| (x, origin.bump(x)))
                            .collect();
                        c.invalidate_tag(&group(k)).await;
                        (bumped, k)
                    }
                };
                drop(row);
                for (key, v) in &keys {
                    origin.finished(*key, *v);
                }
                let want = keys
                    .iter()
                    .find(|(x, _)| *x == written)
                    .map_or(0, |(_, v)| *v);
                let wrote_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                match read_how(&c, &origin, written).await {
                    Ok((v, _)) if v >= want => {}
                    Ok((v, how)) => {
                        // Read-your-writes missed: reported with what Redis
                        // holds, and checked again past the bound.
                        tally.own_write_late.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "own write not read at once: op {}, key {written} read {v}, wrote {want} \
                             (op {at_ms}..{wrote_ms} ms), answered {how}",
                            ["invalidate", "insert", "invalidate_tag"][(n % 3) as usize]
                        );
                        match tier.inspect(&keyfmt.storage_key(&written)).await {
                            Ok(i) => eprintln!(
                                "  redis: version {} lease {} ttl {:?} value {:?}",
                                i.version,
                                i.lease_held,
                                i.ttl,
                                i.value.as_deref().map(tiercache_core::backend::describe_envelope)
                            ),
                            Err(e) => eprintln!("  inspect failed: {e}"),
                        }
                        let st = c.stats();
                        eprintln!(
                            "  writer: shared errors {}, superseded {}",
                            st.shared_errors, st.shared_superseded
                        );
                        tokio::time::sleep(BOUND + SLACK).await;
                        if read(&c, &origin, written).await.is_ok_and(|v| v < want) {
                            tally.unread_writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("error after own write: {e}");
                    }
                }
                tally.writes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let rate = |d: Duration| {
        let before = tally.ops.load(Ordering::Relaxed);
        let tally = Arc::clone(&tally);
        async move {
            tokio::time::sleep(d).await;
            (tally.ops.load(Ordering::Relaxed) - before) as f64 / d.as_secs_f64()
        }
    };
    let baseline = rate(Duration::from_secs(3)).await;

    // A quarter of the slots to a new master, while the load runs.
    let ops_before = tally.ops.load(Ordering::Relaxed);
    let started = Instant::now();
    let (new_port, cluster_back) = tokio::task::spawn_blocking(move || {
        let port = cluster.add_master().unwrap();
        cluster.move_slots(None, port, 4096).unwrap();
        (port, cluster)
    })
    .await
    .unwrap();
    let mut cluster = cluster_back;
    let out_secs = started.elapsed().as_secs_f64();
    let during_out = (tally.ops.load(Ordering::Relaxed) - ops_before) as f64 / out_secs;
    assert!(cluster.slots_of(new_port).unwrap() >= 4000, "slots moved");

    // And back to one of the original masters.
    let ops_before = tally.ops.load(Ordering::Relaxed);
    let started = Instant::now();
    let (to, c2) = tokio::task::spawn_blocking(move || {
        let to = *cluster
            .master_ports()
            .unwrap()
            .iter()
            .find(|p| **p != new_port)
            .unwrap();
        cluster.move_slots(Some(new_port), to, 4096).unwrap();
        (to, cluster)
    })
    .await
    .unwrap();
    cluster = c2;
    let back_secs = started.elapsed().as_secs_f64();
    let during_back = (tally.ops.load(Ordering::Relaxed) - ops_before) as f64 / back_secs;
    assert_eq!(cluster.slots_of(new_port).unwrap(), 0, "slots moved back");
    assert!(cluster.slots_of(to).unwrap() > 4096);

    let after = rate(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "reads/s: before {baseline:.0}; while 4096 slots moved out ({out_secs:.1} s) {during_out:.0} ({:.2}x); back ({back_secs:.1} s) {during_back:.0} ({:.2}x); after {after:.0}",
        during_out / baseline,
        during_back / baseline
    );
    eprintln!(
        "writes {}, of which not read back at once by their writer {}",
        tally.writes.load(Ordering::Relaxed),
        tally.own_write_late.load(Ordering::Relaxed)
    );
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "errors to callers");
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0, "stale reads");
    assert_eq!(
        tally.own_write_late.load(Ordering::Relaxed),
        0,
        "own writes not read back at once"
    );
    assert_eq!(
        tally.unread_writes.load(Ordering::Relaxed),
        0,
        "own writes unread within the bound"
    );
    assert!(tally.ops.load(Ordering::Relaxed) > 1000, "the load ran");
    drop(cluster);
}
