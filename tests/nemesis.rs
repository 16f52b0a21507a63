//! Issue #13: the randomized checker, with a nemesis.
//!
//! Writers change rows of a real Postgres table: two through the app (each
//! commit, then `invalidate` on the writer's instance) and one with plain
//! SQL, which the sidecar (notify source, running in this process) turns
//! into shared-tier deletes and bus messages. Readers read every key through
//! three `Cache` instances (one Redis shared tier, one NATS bus). Meanwhile
//! a nemesis injects faults at random: it pauses the NATS server with
//! SIGSTOP (a hung bus), kills it with SIGKILL and restarts it, and restarts
//! an app instance (a new `Cache`: a cold local tier and a new bus
//! connection, as a restarted process has).
//!
//! The checker asserts the staleness bound: no read that started later than
//! a write's commit plus the bound (and scheduling slack) returns a version
//! older than that write. It reports, for T = 10 ms, 100 ms and the bound,
//! how many writes were visible on every instance within T of their commit
//! (no read started later than that returned an older version), and
//! asserts that after quiescence every tier equals Postgres. It draws the
//! commit-to-visible lag of every write over time, with the faults marked,
//! to `target/nemesis/nemesis.svg`.
//!
//! Run for `NEMESIS_SECS` seconds (default 45; a long run:
//! `NEMESIS_SECS=600 cargo test --release --test nemesis -- --nocapture`,
//! which prints a progress line every 10 s).
//!
//! Not injected here: faults of Redis (a shared-tier delete that fails
//! leaves the old value in Redis; see the issue note) and of the sidecar
//! (the bound runs from the moment a change reaches the sidecar, which a
//! read-based checker cannot see).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

mod common;

use common::postgres::{assert_tiers_match_postgres, bump, create_kv, pg, version_of};
use plotters::prelude::*;
use rand::Rng;
use tiercache::core::{Cache, DEFAULT_STALENESS_BOUND};
use tiercache_nats::NatsBus;
use tiercache_redis::RedisSharedTier;
use tiercache_testkit::{NatsServer, Postgres, RedisServer};

const KEYS: i64 = 16;
const INSTANCES: usize = 3;
const BOUND: Duration = DEFAULT_STALENESS_BOUND;
/// Timer and scheduling slack on top of the bound (two cores, a loaded CI).
const SLACK: Duration = Duration::from_millis(250);

struct Write {
    key: i64,
    version: i64,
    committed: Instant,
}

struct Read {
    instance: usize,
    key: i64,
    version: i64,
    started: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    BusPaused,
    BusKilled,
    InstanceRestarted,
}

struct Injected {
    fault: Fault,
    from: Instant,
    to: Instant,
}

async fn instance(ns: &str, redis: &str, nats: &str) -> Cache<i64, i64> {
    let tier = RedisSharedTier::builder().url(redis).build().await.unwrap();
    let bus = NatsBus::builder()
        .url(nats)
        .retry_on_initial_connect(true)
        .connect()
        .await
        .unwrap();
    Cache::builder(ns)
        .shared_tier(tier)
        .bus(bus)
        // Long TTLs: only invalidation (or the outage rules) removes a value.
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// The instances, replaceable while the run goes on.
type Instances = Arc<Vec<RwLock<Cache<i64, i64>>>>;

fn current(instances: &Instances, i: usize) -> Cache<i64, i64> {
    instances[i].read().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_beyond_the_bound_under_a_nemesis() {
    let run_for = Duration::from_secs(
        std::env::var("NEMESIS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(45),
    );
    let postgres = Postgres::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let nats = Arc::new(Mutex::new(NatsServer::start().unwrap()));
    let nats_url = nats.lock().unwrap().url();
    let admin = pg(&postgres.url()).await;
    create_kv(&admin, KEYS).await;
    let ns = format!("nemesis{:x}", rand::random::<u32>());
    let mut list = Vec::new();
    for _ in 0..INSTANCES {
        list.push(RwLock::new(instance(&ns, &redis.url(), &nats_url).await));
    }
    let instances: Instances = Arc::new(list);
    // The sidecar: plain-SQL changes of `kv` become invalidations of `ns`.
    let config = tiercache_sidecar::Config::parse(&format!(
        r#"
        [source]
        kind = "notify"
        database_url = "{pg}"
        poll_interval_ms = 20

        [redis]
        url = "{redis}"

        [bus]
        kind = "nats"
        url = "{nats_url}"

        [http]
        listen = ""

        [retry]
        initial_ms = 20
        max_ms = 500

        [[rules]]
        table = "kv"
        namespace = "{ns}"
        keys = ["{{id}}"]
        "#,
        pg = postgres.url(),
        redis = redis.url(),
    ))
    .unwrap();
    postgres
        .psql(&tiercache_sidecar::setup_sql(&config).unwrap())
        .unwrap();
    let sidecar = tiercache_sidecar::Sidecar::from_config(config)
        .await
        .unwrap();
    let (sidecar_stop, shutdown) = tiercache_sidecar::Shutdown::new();
    let sidecar_task = {
        let sc = sidecar.clone();
        tokio::spawn(async move { sc.run(shutdown).await })
    };
    assert!(
        sidecar
            .status()
            .wait_connected(1, Duration::from_secs(30))
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Vec::<Write>::new()));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let faults = Arc::new(Mutex::new(Vec::<Injected>::new()));
    let mut tasks = Vec::new();

    // Writers, on instances 0 and 1.
    for w in 0..2usize {
        let (instances, stop, writes) = (instances.clone(), stop.clone(), writes.clone());
        let db = pg(&postgres.url()).await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = ((n * 7 + w as u64 * 5) % KEYS as u64) as i64;
                let version = bump(&db, key).await;
                let committed = Instant::now();
                writes.lock().unwrap().push(Write {
                    key,
                    version,
                    committed,
                });
                // The app's own invalidation (it may wait up to the bound
                // when the bus hangs).
                current(&instances, w).invalidate(&key).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // A writer with plain SQL: the sidecar invalidates.
    {
        let (stop, writes) = (stop.clone(), writes.clone());
        let db = pg(&postgres.url()).await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = ((n * 11 + 3) % KEYS as u64) as i64;
                let version = bump(&db, key).await;
                writes.lock().unwrap().push(Write {
                    key,
                    version,
                    committed: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    // Readers, two per instance.
    for r in 0..INSTANCES * 2 {
        let i = r % INSTANCES;
        let (instances, stop, reads) = (instances.clone(), stop.clone(), reads.clone());
        let db = Arc::new(pg(&postgres.url()).await);
        tasks.push(tokio::spawn(async move {
            let mut n = r as u64 + 1;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = ((n >> 33) % KEYS as u64) as i64;
                let started = Instant::now();
                let db = db.clone();
                let v = current(&instances, i)
                    .try_get_or_load(&key, move || async move {
                        Ok::<_, tokio_postgres::Error>(Some(version_of(&db, key).await?))
                    })
                    .await
                    .unwrap()
                    .expect("every key exists");
                reads.lock().unwrap().push(Read {
                    instance: i,
                    key,
                    version: *v,
                    started,
                });
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    // The nemesis.
    {
        let (instances, stop, faults, nats) = (
            instances.clone(),
            stop.clone(),
            faults.clone(),
            nats.clone(),
        );
        let (writes, reads) = (writes.clone(), reads.clone());
        let (ns, redis_url, nats_url) = (ns.clone(), redis.url(), nats_url.clone());
        tasks.push(tokio::spawn(async move {
            let mut last_progress = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let (pause, fault, hold, victim) = {
                    let mut rng = rand::rng();
                    (
                        Duration::from_millis(rng.random_range(1000..2500)),
                        match rng.random_range(0..3) {
                            0 => Fault::BusPaused,
                            1 => Fault::BusKilled,
                            _ => Fault::InstanceRestarted,
                        },
                        Duration::from_millis(rng.random_range(300..1500)),
                        rng.random_range(0..INSTANCES),
                    )
                };
                tokio::time::sleep(pause).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let from = Instant::now();
                match fault {
                    Fault::BusPaused => {
                        nats.lock().unwrap().pause();
                        tokio::time::sleep(hold).await;
                        nats.lock().unwrap().resume();
                    }
                    Fault::BusKilled => {
                        let n = nats.clone();
                        tokio::task::spawn_blocking(move || n.lock().unwrap().kill())
                            .await
                            .unwrap();
                        tokio::time::sleep(hold).await;
                        let n = nats.clone();
                        tokio::task::spawn_blocking(move || n.lock().unwrap().restart().unwrap())
                            .await
                            .unwrap();
                    }
                    Fault::InstanceRestarted => {
                        let fresh = instance(&ns, &redis_url, &nats_url).await;
                        *instances[victim].write().unwrap() = fresh;
                    }
                }
                faults.lock().unwrap().push(Injected {
                    fault,
                    from,
                    to: Instant::now(),
                });
                if last_progress.elapsed() >= Duration::from_secs(10) {
                    last_progress = Instant::now();
                    println!(
                        "nemesis: {:.0} s of {:.0} s, {} faults, {} writes, {} reads",
                        start.elapsed().as_secs_f64(),
                        run_for.as_secs_f64(),
                        faults.lock().unwrap().len(),
                        writes.lock().unwrap().len(),
                        reads.lock().unwrap().len()
                    );
                }
            }
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    nats.lock().unwrap().resume();
    sidecar_stop.trigger();
    sidecar_task.await.unwrap().unwrap();

    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let reads = std::mem::take(&mut *reads.lock().unwrap());
    let faults = std::mem::take(&mut *faults.lock().unwrap());

    // Per key, the reads and the writes in time order.
    let mut reads_of: HashMap<i64, Vec<&Read>> = HashMap::new();
    for r in &reads {
        reads_of.entry(r.key).or_default().push(r);
    }
    for v in reads_of.values_mut() {
        v.sort_by_key(|r| r.started);
    }
    let mut writes_of: HashMap<i64, Vec<&Write>> = HashMap::new();
    for w in &writes {
        writes_of.entry(w.key).or_default().push(w);
    }
    for v in writes_of.values_mut() {
        v.sort_by_key(|w| w.committed);
    }
    // The check, in one sweep per key: a read must return at least every
    // version committed more than the bound (+ slack) before it started.
    let mut beyond = Vec::new();
    for (key, rs) in &reads_of {
        let ws = writes_of.get(key).map(Vec::as_slice).unwrap_or_default();
        let (mut next, mut required, mut since) = (0, 0i64, None);
        for r in rs {
            while next < ws.len() && ws[next].committed + BOUND + SLACK < r.started {
                if ws[next].version > required {
                    required = ws[next].version;
                    since = Some(ws[next].committed);
                }
                next += 1;
            }
            if r.version < required {
                beyond.push(format!(
                    "instance {} read key {} = v{} {:?} after v{} committed",
                    r.instance,
                    r.key,
                    r.version,
                    since.map(|c| r.started - c).unwrap_or_default(),
                    required
                ));
            }
        }
    }
    // Each write's visibility lag: the latest start after its commit of a
    // read that returned an older version. Reads are scanned up to 5 s past
    // the commit (anything later is past the bound, and reported above).
    let window = Duration::from_secs(5);
    let mut lags: Vec<(Instant, Duration)> = Vec::new();
    for w in &writes {
        let rs = reads_of.get(&w.key).map(Vec::as_slice).unwrap_or_default();
        let from = rs.partition_point(|r| r.started <= w.committed);
        let lag = rs[from..]
            .iter()
            .take_while(|r| r.started <= w.committed + window)
            .filter(|r| r.version < w.version)
            .map(|r| r.started - w.committed)
            .max()
            .unwrap_or_default();
        lags.push((w.committed, lag));
    }
    let within = |t: Duration| lags.iter().filter(|(_, l)| *l <= t).count();
    let mut counts: HashMap<Fault, usize> = HashMap::new();
    for f in &faults {
        *counts.entry(f.fault).or_default() += 1;
    }
    println!(
        "nemesis: {:.0} s, {} reads, {} writes, faults {:?}; visible on every instance within 10 ms: {} of {}, within 100 ms: {} of {}, within the bound ({:?}): {} of {}; stale reads beyond the bound (+{:?} slack): {}",
        run_for.as_secs_f64(),
        reads.len(),
        writes.len(),
        counts,
        within(Duration::from_millis(10)),
        writes.len(),
        within(Duration::from_millis(100)),
        writes.len(),
        BOUND,
        within(BOUND),
        writes.len(),
        SLACK,
        beyond.len()
    );
    draw(start, &lags, &faults);
    for b in beyond.iter().take(10) {
        println!("  beyond the bound: {b}");
    }
    assert!(
        writes.len() > 100 && reads.len() > 1000 && !faults.is_empty(),
        "the run did real work"
    );
    assert!(
        beyond.is_empty(),
        "{} stale reads beyond the bound",
        beyond.len()
    );

    // Quiescence: every instance's local tier and Redis equal Postgres.
    for i in 0..INSTANCES {
        let c = current(&instances, i);
        let start = Instant::now();
        while !c.local_trusted() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instance {i} never trusted again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let caches: Vec<_> = (0..INSTANCES).map(|i| current(&instances, i)).collect();
    assert_tiers_match_postgres(&admin, KEYS, &ns, &redis.url(), &caches).await;
}

/// The commit-to-visible lag of every write over the run, the faults as
/// shaded spans, the bound as a line: `target/nemesis/nemesis.svg`.
fn draw(start: Instant, lags: &[(Instant, Duration)], faults: &[Injected]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nemesis");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nemesis.svg");
    let end = lags
        .iter()
        .map(|(t, _)| t.duration_since(start).as_secs_f64())
        .fold(1.0, f64::max);
    let top = lags
        .iter()
        .map(|(_, l)| l.as_secs_f64() * 1000.0)
        .fold(BOUND.as_secs_f64() * 1500.0, f64::max);
    let root = SVGBackend::new(&path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "commit-to-visible lag per write, with injected faults",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("lag (ms)")
        .draw()
        .unwrap();
    for f in faults {
        let color = match f.fault {
            Fault::BusPaused => RGBColor(255, 200, 120),
            Fault::BusKilled => RGBColor(255, 150, 150),
            Fault::InstanceRestarted => RGBColor(170, 200, 255),
        };
        let (a, b) = (
            f.from.duration_since(start).as_secs_f64(),
            f.to.duration_since(start)
                .as_secs_f64()
                .max(f.from.duration_since(start).as_secs_f64() + 0.05),
        );
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b, top)],
                color.mix(0.5).filled(),
            )))
            .unwrap();
    }
    chart
        .draw_series(LineSeries::new(
            [
                (0.0, BOUND.as_secs_f64() * 1000.0),
                (end, BOUND.as_secs_f64() * 1000.0),
            ],
            &RED,
        ))
        .unwrap()
        .label("staleness bound");
    chart
        .draw_series(lags.iter().map(|(t, l)| {
            Circle::new(
                (
                    t.duration_since(start).as_secs_f64(),
                    l.as_secs_f64() * 1000.0,
                ),
                2,
                BLUE.filled(),
            )
        }))
        .unwrap()
        .label("a write");
    root.present().unwrap();
    println!(
        "plot: {} (orange: bus paused, red: bus killed, blue: instance restarted)",
        path.display()
    );
}
