//! Issue #17, "A NATS cluster": three nats-servers routed to each other (the
//! test kit's `NatsCluster`), three cache instances, each bus given every
//! node as a seed; the node instance A is connected to is killed (SIGKILL)
//! while a writer invalidates and readers read under load.
//!
//! - `nats_cluster_jetstream_resumes_after_node_loss`: JetStream, the stream
//!   replicated on all three nodes (R3), and its leader moved onto A's node
//!   before the kill (the worst case: the stream has to elect a new leader
//!   before anyone can resume). A reconnects to another node and resumes
//!   after its last sequence: its subscription reports
//!   `Connected { resumed: true }`, it sees no gap in the writer's sequence
//!   numbers, and every invalidation the writer made reaches every instance
//!   (none lost across the node loss).
//!   A keeps its local tier (stale) while away.
//! - `nats_cluster_jetstream_keeps_the_local_tier_across_node_loss`: the
//!   same with the stream's leader on another node, so the writer is heard
//!   all along: A resumes without a local flush, and what it kept is fresh
//!   again once the replay is in and the writer has been heard live.
//! - `nats_cluster_core_flushes_after_node_loss`: core subjects. A reconnects
//!   to another node, is told `Connected { resumed: false }` and flushes its
//!   local tier, as DESIGN.md's rules say.
//!
//! In both, the checker (as in the nemesis) asserts the staleness bound: no
//! read that started later than a write's commit plus the bound (and
//! scheduling slack) returns an older version; and after quiescence every
//! instance reads what the origin holds. Each run prints
//! `nats_cluster reconnect_ms=...`: from the kill to A's bus being live
//! again (its subscription's `Connected`). At the end the killed node is
//! restarted and must rejoin the cluster.
//!
//! Instance W (the writer) is given the two other nodes as seeds, so it is
//! not on the killed node; A and B are given all three, in different orders.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tiercache::core::backend::{Bus, BusEvent};
use tiercache::core::{Cache, CacheStats, DEFAULT_STALENESS_BOUND};
use tiercache_nats::NatsBus;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{NatsCluster, RedisServer};

const NODES: usize = 3;
const KEYS: u64 = 16;
const STREAM: &str = "TIERCACHE_CLUSTER";
const REPLICAS: usize = 3;
const BOUND: Duration = DEFAULT_STALENESS_BOUND;
/// Timer and scheduling slack on top of the bound (two cores, a loaded CI).
const SLACK: Duration = Duration::from_millis(250);
/// Load before the kill, and after A is back.
const WARM: Duration = Duration::from_millis(1500);
const AFTER: Duration = Duration::from_secs(2);
/// Generous limit for anything that waits on an election or a reconnect.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// A sanity bound on the reconnect (kill -> A's bus live again): the client
/// reconnects at once to another seed (backoff at most 2 s), and a
/// JetStream subscription also waits for the stream's new leader (a Raft
/// election, a few seconds). Generous: this is not a speed test.
const RECONNECT_BOUND: Duration = Duration::from_secs(30);

/// Instances: A (its node is killed), B (a bystander), W (the writer).
const A: usize = 0;
const B: usize = 1;
const W: usize = 2;

/// Runs one at a time: each starts three nats-servers and a Redis on two
/// shared cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Core,
    /// The stream's leader on the killed node (`true`: the stream elects a
    /// new one, and the writer's publishes wait for it), or elsewhere.
    JetStream {
        leader_on_a: bool,
    },
}

impl Mode {
    fn jetstream(self) -> bool {
        matches!(self, Mode::JetStream { .. })
    }
}

/// The origin: each key's version.
type Db = Arc<Mutex<HashMap<u64, u64>>>;

struct Write {
    key: u64,
    version: u64,
    committed: Instant,
}

struct Read {
    instance: usize,
    key: u64,
    version: u64,
    started: Instant,
}

/// When an instance applied each (origin, seq).
type AppliedLog = Arc<Mutex<HashMap<(u64, u64), Instant>>>;

/// What a subscription reported, besides messages and heartbeats.
type EventLog = Arc<Mutex<Vec<(Instant, BusEvent)>>>;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn read(cache: &Cache<u64, u64>, db: &Db, key: u64) -> u64 {
    let db = db.clone();
    let v = cache
        .get_or_load(&key, move || {
            let v = db.lock().unwrap().get(&key).copied();
            async move { v }
        })
        .await
        .unwrap()
        .expect("every key exists");
    *v
}

/// Moves the stream's leader onto `node` (leader step-downs elect a random
/// new one) and returns whether it got there.
async fn move_stream_leader(cluster: &NatsCluster, bus: &NatsBus, node: usize) -> bool {
    for _ in 0..12 {
        let leader = blocking(|| cluster.wait_for_stream_leader(STREAM, STATE_TIMEOUT)).unwrap();
        if leader == node {
            return true;
        }
        let answer = bus
            .client()
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}"),
                "".into(),
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&answer.payload).into_owned();
        assert!(text.contains("\"success\":true"), "step-down: {text}");
        // The old leader's view changes at once; give the election a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Subscribes on `bus` and records every event but messages and heartbeats.
async fn record_events(bus: &NatsBus, ns: &str) -> EventLog {
    let events = EventLog::default();
    let mut sub = bus.subscribe(ns).await.unwrap();
    let log = events.clone();
    tokio::spawn(async move {
        while let Some(ev) = sub.next().await {
            if !matches!(ev, BusEvent::Message(_) | BusEvent::Heartbeat) {
                log.lock().unwrap().push((Instant::now(), ev));
            }
        }
    });
    events
}

async fn node_loss(mode: Mode) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = blocking(|| match mode {
        Mode::Core => NatsCluster::start(NODES),
        Mode::JetStream { .. } => NatsCluster::start_jetstream(NODES),
    })
    .unwrap();
    let redis = blocking(RedisServer::start).unwrap();
    let ns = format!("cluster{:x}", rand::random::<u32>());
    let urls = cluster.urls();
    let names: Vec<String> = (0..3).map(|i| format!("{ns}-instance{i}")).collect();

    // A and B: every node a seed, in different orders; W: the two nodes A
    // is not on (found once A is connected).
    let connect = |seeds: Vec<String>, name: String| async move {
        let mut builder = NatsBus::builder().urls(seeds).name(name);
        if mode.jetstream() {
            builder = builder.jetstream(STREAM).jetstream_replicas(REPLICAS);
        }
        builder.build().await.unwrap()
    };
    let bus_a = connect(urls.clone(), names[A].clone()).await;
    let node_a = blocking(|| cluster.wait_for_client(&names[A], STATE_TIMEOUT)).unwrap();
    let mut reversed = urls.clone();
    reversed.reverse();
    let bus_b = connect(reversed, names[B].clone()).await;
    let others: Vec<String> = (0..NODES)
        .filter(|&i| i != node_a)
        .map(|i| cluster.url(i))
        .collect();
    let bus_w = connect(others, names[W].clone()).await;
    let node_b = blocking(|| cluster.wait_for_client(&names[B], STATE_TIMEOUT)).unwrap();
    let node_w = blocking(|| cluster.wait_for_client(&names[W], STATE_TIMEOUT)).unwrap();
    assert_ne!(node_w, node_a, "W was given only the other nodes");

    let stream_leader_on_a = match mode {
        Mode::Core => false,
        Mode::JetStream { leader_on_a: true } => move_stream_leader(&cluster, &bus_a, node_a).await,
        Mode::JetStream { leader_on_a: false } => {
            assert!(
                move_stream_leader(&cluster, &bus_a, node_w).await,
                "the stream's leader moved off A's node"
            );
            false
        }
    };
    let meta_leader = match mode {
        Mode::Core => None,
        Mode::JetStream { .. } => blocking(|| cluster.jetstream_meta_leader()).unwrap(),
    };

    // A second subscription on A's (and B's) connection records what the
    // bus reports across the node loss (the cache's own subscription goes
    // through the same code on the same connection).
    let events: EventLog = record_events(&bus_a, &ns).await;
    let events_b: EventLog = record_events(&bus_b, &ns).await;

    let mut caches = Vec::new();
    for bus in [bus_a.clone(), bus_b.clone(), bus_w] {
        let tier = RedisSharedTier::builder()
            .url(redis.url())
            .build()
            .await
            .unwrap();
        let cache: Cache<u64, u64> = Cache::builder(ns.as_str())
            .shared_tier(tier)
            .bus(bus)
            // Long TTLs: only invalidation (or the outage rules) removes a value.
            .ttl(Duration::from_secs(600))
            .build()
            .unwrap();
        caches.push(cache);
    }
    let applied: Vec<AppliedLog> = (0..caches.len()).map(|_| AppliedLog::default()).collect();
    for (i, c) in caches.iter().enumerate() {
        let mut rx = c.subscribe_applied();
        let log = applied[i].clone();
        tokio::spawn(async move {
            while let Ok(a) = rx.recv().await {
                log.lock().unwrap().insert((a.sender_instance, a.seq), a.at);
            }
        });
    }
    let start = Instant::now();
    while !caches.iter().all(Cache::local_trusted) {
        assert!(
            start.elapsed() < STATE_TIMEOUT,
            "instances trusted at start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let db: Db = Arc::new(Mutex::new((0..KEYS).map(|k| (k, 1)).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Vec::<Write>::new()));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let invalidations = Arc::new(AtomicU64::new(0));
    let unsent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    {
        let (cache, db, stop, writes) =
            (caches[W].clone(), db.clone(), stop.clone(), writes.clone());
        let (invalidations, unsent) = (invalidations.clone(), unsent.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = (n * 7) % KEYS;
                let version = {
                    let mut db = db.lock().unwrap();
                    let v = db.entry(key).or_insert(0);
                    *v += 1;
                    *v
                };
                writes.lock().unwrap().push(Write {
                    key,
                    version,
                    committed: Instant::now(),
                });
                // Committed; now invalidate. A publish that fails (a stream
                // electing a leader) is queued and retried by the engine.
                if cache.invalidate(&key).await.is_none() {
                    unsent.fetch_add(1, Ordering::Relaxed);
                }
                invalidations.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for r in 0..caches.len() * 2 {
        let instance = r % caches.len();
        let (cache, db, stop, reads) = (
            caches[instance].clone(),
            db.clone(),
            stop.clone(),
            reads.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = r as u64 + 1;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = (n >> 33) % KEYS;
                let started = Instant::now();
                let version = read(&cache, &db, key).await;
                reads.lock().unwrap().push(Read {
                    instance,
                    key,
                    version,
                    started,
                });
                // A local hit completes without yielding: give the runtime its turn.
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }

    tokio::time::sleep(WARM).await;
    let before: Vec<CacheStats> = caches.iter().map(Cache::stats).collect();
    let events_before = events.lock().unwrap().len();
    let events_b_before = events_b.lock().unwrap().len();

    // The node A is connected to dies.
    let killed = Instant::now();
    blocking(|| cluster.kill(node_a));
    let back = loop {
        let seen = events.lock().unwrap()[events_before..]
            .iter()
            .find(|(_, ev)| matches!(ev, BusEvent::Connected { .. }))
            .map(|(at, _)| *at);
        if let Some(at) = seen {
            break at;
        }
        assert!(
            killed.elapsed() < STATE_TIMEOUT,
            "[{mode:?}] A's bus not live again within {STATE_TIMEOUT:?}; events: {:?}",
            events.lock().unwrap()[events_before..].to_vec()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let reconnect = back.saturating_duration_since(killed);
    let node_a_now = blocking(|| cluster.wait_for_client(&names[A], STATE_TIMEOUT)).unwrap();
    assert_ne!(node_a_now, node_a, "A reconnected to another node");
    assert!(bus_a.is_connected());

    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Quiescence: the writer's queued publishes go out; every instance
    // applies what it will.
    let origin = caches[W].instance_id();
    let made = invalidations.load(Ordering::Relaxed);
    let expected: BTreeSet<u64> = (1..=made).collect();
    let missing_on = |i: usize| -> Vec<u64> {
        let log = applied[i].lock().unwrap();
        expected
            .iter()
            .copied()
            .filter(|s| !log.contains_key(&(origin, *s)))
            .collect()
    };
    let quiesce = Instant::now();
    while mode.jetstream()
        && (!missing_on(A).is_empty() || !missing_on(B).is_empty())
        && quiesce.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (missing_a, missing_b) = (missing_on(A), missing_on(B));

    // The checker: a read must return at least every version committed more
    // than the bound (+ slack) before the read started.
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let reads = std::mem::take(&mut *reads.lock().unwrap());
    let mut writes_of: HashMap<u64, Vec<&Write>> = HashMap::new();
    for w in &writes {
        writes_of.entry(w.key).or_default().push(w);
    }
    let mut reads_of: HashMap<u64, Vec<&Read>> = HashMap::new();
    for r in &reads {
        reads_of.entry(r.key).or_default().push(r);
    }
    let mut beyond = Vec::new();
    let mut reads_by_a_while_down = 0usize;
    for (key, rs) in reads_of.iter_mut() {
        rs.sort_by_key(|r| r.started);
        let ws = writes_of.get(key).map(Vec::as_slice).unwrap_or_default();
        let (mut next, mut required) = (0, 0u64);
        for r in rs.iter() {
            if r.instance == A && r.started >= killed && r.started <= back {
                reads_by_a_while_down += 1;
            }
            while next < ws.len() && ws[next].committed + BOUND + SLACK < r.started {
                required = required.max(ws[next].version);
                next += 1;
            }
            if r.version < required {
                beyond.push(format!(
                    "at {:+.3} s from the kill, instance {} read key {key} = v{} after v{required}",
                    r.started.saturating_duration_since(killed).as_secs_f64()
                        - killed.saturating_duration_since(r.started).as_secs_f64(),
                    r.instance,
                    r.version,
                ));
            }
        }
    }

    let after: Vec<CacheStats> = caches.iter().map(Cache::stats).collect();
    let seen: Vec<BusEvent> = events.lock().unwrap()[events_before..]
        .iter()
        .map(|(_, ev)| ev.clone())
        .collect();
    let seen_b: Vec<BusEvent> = events_b.lock().unwrap()[events_b_before..]
        .iter()
        .map(|(_, ev)| ev.clone())
        .collect();
    let delta = |i: usize, f: fn(&CacheStats) -> u64| f(&after[i]) - f(&before[i]);
    let flushes_a = delta(A, |s| s.local_flushes);
    let report = format!(
        "nats_cluster reconnect_ms={:.0} mode={mode:?} killed=n{node_a} (stream leader there: {stream_leader_on_a}, meta leader before: {}) A now on n{node_a_now}, B on n{node_b}, W on n{node_w}; \
         {} writes ({} publishes late/queued), {} reads ({} by A while it reconnected); stale reads beyond the bound: {}; \
         invalidations missing after quiescence: A {}, B {}; A: disconnects +{}, flushes +{}, parks +{}, revivals +{}, messages lost +{}, silences +{}; B: flushes +{}, parks +{}, revivals +{}, silences +{}; A's bus events: {seen:?}, B's: {seen_b:?}",
        reconnect.as_secs_f64() * 1000.0,
        meta_leader.map_or("none".to_owned(), |l| format!("n{l}")),
        writes.len(),
        unsent.load(Ordering::Relaxed),
        reads.len(),
        reads_by_a_while_down,
        beyond.len(),
        missing_a.len(),
        missing_b.len(),
        delta(A, |s| s.bus_disconnects),
        flushes_a,
        delta(A, |s| s.local_parks),
        delta(A, |s| s.local_revivals),
        delta(A, |s| s.messages_lost),
        delta(A, |s| s.bus_silences),
        delta(B, |s| s.local_flushes),
        delta(B, |s| s.local_parks),
        delta(B, |s| s.local_revivals),
        delta(B, |s| s.bus_silences),
    );
    eprintln!("{report}");
    for b in beyond.iter().take(10) {
        eprintln!("  beyond the bound: {b}");
    }

    assert!(
        writes.len() > 100 && reads.len() > 1000,
        "the run did real work: {report}"
    );
    assert!(beyond.is_empty(), "stale reads beyond the bound: {report}");
    assert!(
        reconnect < RECONNECT_BOUND,
        "reconnect beyond {RECONNECT_BOUND:?}: {report}"
    );
    assert!(
        matches!(seen.first(), Some(BusEvent::Disconnected)),
        "A's bus reported the loss first: {report}"
    );
    assert!(
        delta(A, |s| s.bus_disconnects) >= 1,
        "A's cache saw the disconnect: {report}"
    );
    match mode {
        Mode::JetStream { leader_on_a } => {
            // Kept its local tier across the disconnect (stale meanwhile).
            assert!(delta(A, |s| s.local_parks) >= 1, "{report}");
            if !leader_on_a {
                // The writer was heard all along: A resumed without a
                // flush, and trusted what it had kept once the replay was
                // in and the writer heard live.
                assert_eq!(flushes_a, 0, "A resumed without a flush: {report}");
                assert!(
                    delta(A, |s| s.local_revivals) >= 1,
                    "A's kept local tier was fresh again: {report}"
                );
            }
            // Resumed after its last sequence: no `resumed: false` (which
            // would flush), no gap in the writer's sequence numbers (which
            // would count lost messages and flush), nothing lost.
            assert!(
                seen.iter()
                    .all(|ev| !matches!(ev, BusEvent::Connected { resumed: false })),
                "A resumed every time: {report}"
            );
            assert!(
                seen.contains(&BusEvent::Connected { resumed: true }),
                "{report}"
            );
            assert!(
                seen_b
                    .iter()
                    .all(|ev| !matches!(ev, BusEvent::Connected { resumed: false })),
                "B resumed every time: {report}"
            );
            assert_eq!(delta(A, |s| s.messages_lost), 0, "no gap on A: {report}");
            assert_eq!(delta(B, |s| s.messages_lost), 0, "no gap on B: {report}");
            assert!(
                missing_a.is_empty() && missing_b.is_empty(),
                "every invalidation reached A and B (missing on A: {:?}, on B: {:?}): {report}",
                &missing_a[..missing_a.len().min(20)],
                &missing_b[..missing_b.len().min(20)],
            );
        }
        Mode::Core => {
            // Whatever was published while A was away is lost to it: it is
            // told so and flushes what it kept.
            assert!(
                seen.contains(&BusEvent::Connected { resumed: false }),
                "{report}"
            );
            assert!(flushes_a >= 1, "A flushed on the reconnect: {report}");
            assert_eq!(delta(A, |s| s.local_revivals), 0, "{report}");
        }
    }

    // Quiesced: every instance reads what the origin holds.
    for (i, c) in caches.iter().enumerate() {
        let start = Instant::now();
        while !c.local_trusted() {
            assert!(
                start.elapsed() < STATE_TIMEOUT,
                "instance {i} trusted again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for key in 0..KEYS {
            let want = db.lock().unwrap()[&key];
            assert_eq!(read(c, &db, key).await, want, "instance {i}, key {key}");
        }
    }

    // The killed node comes back and rejoins.
    blocking(|| {
        cluster.restart(node_a).unwrap();
        cluster.wait_for_routes(STATE_TIMEOUT).unwrap();
        if mode.jetstream() {
            cluster
                .wait_for_jetstream_meta_leader(STATE_TIMEOUT)
                .unwrap();
            cluster
                .wait_for_stream_leader(STREAM, STATE_TIMEOUT)
                .unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_cluster_jetstream_resumes_after_node_loss() {
    node_loss(Mode::JetStream { leader_on_a: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_cluster_jetstream_keeps_the_local_tier_across_node_loss() {
    node_loss(Mode::JetStream { leader_on_a: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_cluster_core_flushes_after_node_loss() {
    node_loss(Mode::Core).await;
}
