//! Issue #13: the randomized checker, with a nemesis.
//!
//! Writers change rows of a real Postgres table: two through the app (each
//! commit, then `invalidate` on the writer's instance) and one with plain
//! SQL, which the sidecar (running in this process) turns into shared-tier
//! deletes and bus messages. Readers read every key through three `Cache`
//! instances (one Redis shared tier, one NATS bus). Meanwhile a nemesis
//! injects faults at random, one at a time:
//!
//! - it pauses the NATS server with SIGSTOP (a hung bus), or kills it with
//!   SIGKILL and restarts it;
//! - it pauses Redis with SIGSTOP, or kills it with SIGKILL and restarts it
//!   (empty: the test kit's Redis keeps nothing on disk);
//! - it restarts an app instance (a new `Cache`: a cold local tier and new
//!   connections, as a restarted process has);
//! - with the `logical` source, it crashes the sidecar (its task aborted:
//!   connections dropped, nothing flushed, no farewell) and starts a new one,
//!   which resumes from the replication slot.
//!
//! The `notify` source is at most once by design (a change committed while
//! it is down is never delivered; its docs say so), so its sidecar is not
//! crashed ([`Source::faults`]).
//!
//! The checker asserts the staleness bound: no read that started later than
//! a write's commit plus the bound (and scheduling slack) returns a version
//! older than that write. For a plain-SQL write the bound runs from when the
//! change reached a running sidecar, as DESIGN.md states it: a write
//! committed while the sidecar was down (or within [`SIDECAR_REACH`] before
//! its crash) reached it when the new sidecar connected. The checker
//! reports, for T = 10 ms, 100 ms and the bound, how many writes were
//! visible on every instance within T (no read started later than that
//! returned an older version), and asserts that after quiescence every tier
//! equals Postgres. It draws the lag of every write over time, with the
//! faults marked, to `nemesis/nemesis-<source>.svg` in the workspace's
//! target directory ([`plot_dir`]).
//!
//! `tests/nemesis.rs` runs it once per source for [`duration_from_env`]
//! (`NEMESIS_SECS`, default 30 s); `examples/nemesis.rs` makes a long run:
//!
//! ```text
//! cargo run --release -p tiercache-e2e --example nemesis -- --secs 600 --source logical
//! ```
//!
//! Either prints a progress line every [`PROGRESS_EVERY`] and the figures
//! at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use rand::Rng;
use tiercache::core::{Cache, DEFAULT_STALENESS_BOUND};
use tiercache_nats::NatsBus;
use tiercache_redis::RedisSharedTier;
use tiercache_sidecar::{Shutdown, ShutdownTrigger, Sidecar};
use tiercache_testkit::{NatsServer, Postgres, RedisServer};

use crate::postgres::{
    assert_tiers_match_postgres, bump, create_kv, pg, tiers_match_postgres, version_of,
};

/// How often a run prints its progress line.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long a run lasts when `NEMESIS_SECS` is not set.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);

const KEYS: i64 = 16;
const INSTANCES: usize = 3;
const BOUND: Duration = DEFAULT_STALENESS_BOUND;
/// Timer and scheduling slack on top of the bound (two cores, a loaded CI).
const SLACK: Duration = Duration::from_millis(250);
/// A plain-SQL change committed this long before a sidecar crash may not
/// have reached it (the `logical` source polls every 20 ms, then deletes and
/// publishes): it reaches the next sidecar.
pub const SIDECAR_REACH: Duration = Duration::from_millis(100);

struct Write {
    key: i64,
    version: i64,
    committed: Instant,
    /// Written with plain SQL (the sidecar invalidates), not by the app.
    by_sql: bool,
    /// When the change reached what invalidates it: the commit, or for a
    /// plain-SQL write committed while the sidecar was down, when the next
    /// sidecar connected. The bound runs from here.
    reached: Instant,
}

struct Read {
    instance: usize,
    key: i64,
    version: i64,
    started: Instant,
}

/// A fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The NATS server paused (SIGSTOP), then resumed: a hung bus.
    BusPaused,
    /// The NATS server killed (SIGKILL), then restarted on its port.
    BusKilled,
    /// An app instance replaced by a new `Cache` (cold local tier, new
    /// connections).
    InstanceRestarted,
    /// Redis paused (SIGSTOP), then resumed.
    RedisPaused,
    /// Redis killed (SIGKILL), then restarted empty on its port.
    RedisKilled,
    /// The sidecar's task aborted, then a new sidecar started (only with
    /// the `logical` source, which resumes from its replication slot).
    SidecarKilled,
}

/// The sidecar's change source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Triggers and LISTEN/NOTIFY (at most once).
    Notify,
    /// A logical replication slot (nothing lost across sidecar crashes).
    Logical,
}

impl Source {
    /// Both sources.
    pub const ALL: [Source; 2] = [Source::Notify, Source::Logical];

    /// The name the sidecar's configuration uses (`notify`, `logical`).
    pub fn name(self) -> &'static str {
        match self {
            Source::Notify => "notify",
            Source::Logical => "logical",
        }
    }

    /// Every fault the source is run against: all of them, except the
    /// sidecar crash for `notify` (at most once by design).
    pub fn faults(self) -> &'static [Fault] {
        match self {
            Source::Notify => &[
                Fault::BusPaused,
                Fault::BusKilled,
                Fault::InstanceRestarted,
                Fault::RedisPaused,
                Fault::RedisKilled,
            ],
            Source::Logical => &[
                Fault::BusPaused,
                Fault::BusKilled,
                Fault::InstanceRestarted,
                Fault::RedisPaused,
                Fault::RedisKilled,
                Fault::SidecarKilled,
            ],
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .into_iter()
            .find(|source| source.name() == s)
            .ok_or_else(|| format!("unknown source {s:?} (notify or logical)"))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How long a test run lasts: `NEMESIS_SECS` seconds, or
/// [`DEFAULT_DURATION`].
pub fn duration_from_env() -> Duration {
    std::env::var("NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_DURATION, Duration::from_secs)
}

/// Where the plots go: `nemesis/` in the workspace's target directory
/// (`CARGO_TARGET_DIR` when set, a relative one taken from the workspace
/// root; `target/` otherwise).
pub fn plot_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("crates/tiercache-e2e is two levels below the workspace root");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    target.join("nemesis")
}

/// The figures of a run (the staleness bound held, or the run panicked).
#[derive(Clone, Debug)]
pub struct Report {
    /// The sidecar's source.
    pub source: Source,
    /// How long the run lasted (before quiescence).
    pub duration: Duration,
    /// Reads made, through every instance.
    pub reads: usize,
    /// Writes committed (through the app and with plain SQL).
    pub writes: usize,
    /// Faults injected, by kind.
    pub faults: HashMap<Fault, usize>,
    /// Writes visible on every instance within 10 ms.
    pub within_10ms: usize,
    /// Writes visible on every instance within 100 ms.
    pub within_100ms: usize,
    /// Writes visible on every instance within the staleness bound.
    pub within_bound: usize,
    /// The plot of the lags, with the faults marked.
    pub plot: PathBuf,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut faults: Vec<_> = self.faults.iter().collect();
        faults.sort_by_key(|(fault, _)| format!("{fault:?}"));
        write!(
            f,
            "nemesis ({} source): {:.0} s, {} reads, {} writes, faults {:?}; visible on every instance within 10 ms: {} of {}, within 100 ms: {} of {}, within the bound ({:?}): {} of {}",
            self.source,
            self.duration.as_secs_f64(),
            self.reads,
            self.writes,
            faults,
            self.within_10ms,
            self.writes,
            self.within_100ms,
            self.writes,
            BOUND,
            self.within_bound,
            self.writes,
        )
    }
}

/// A running sidecar: its task and how to stop it.
struct SidecarRun {
    task: tokio::task::JoinHandle<Result<(), tiercache_sidecar::Error>>,
    stop: ShutdownTrigger,
}

/// Starts a sidecar for `config` and waits until its source is connected.
async fn start_sidecar(config: &tiercache_sidecar::Config) -> SidecarRun {
    let sidecar = Sidecar::from_config(config.clone()).await.unwrap();
    let (stop, shutdown) = Shutdown::new();
    let task = {
        let sc = sidecar.clone();
        tokio::spawn(async move { sc.run(shutdown).await })
    };
    assert!(
        sidecar
            .status()
            .wait_connected(1, Duration::from_secs(30))
            .await,
        "the sidecar connects to its source"
    );
    SidecarRun { task, stop }
}

/// Runs are made one at a time (in one process): two at once would share
/// the two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Injected {
    fault: Fault,
    from: Instant,
    to: Instant,
}

impl Injected {
    /// The fault and its span, in seconds since `start` (the run's).
    fn describe(&self, start: Instant) -> String {
        format!(
            "{:?} from {:.3} s to {:.3} s",
            self.fault,
            (self.from - start).as_secs_f64(),
            (self.to - start).as_secs_f64()
        )
    }
}

async fn instance(ns: &str, redis: &str, nats: &str) -> Cache<i64, i64> {
    let tier = RedisSharedTier::builder().url(redis).build().await.unwrap();
    let bus = NatsBus::builder()
        .url(nats)
        .retry_on_initial_connect(true)
        .build()
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

/// Runs the checker for `run_for` against real servers (started here, from
/// the test kit) with the `source` sidecar, the nemesis injecting `kinds` of
/// faults at random (see the module docs), printing a progress line every
/// [`PROGRESS_EVERY`] and the figures at the end.
///
/// # Panics
///
/// When a read returned a version older than the bound allows, when a tier
/// disagrees with Postgres after quiescence, when the run did too little
/// work to judge (under 100 writes or 1,000 reads, or no fault), and when a
/// server or the sidecar cannot be started.
pub async fn run(source: Source, kinds: &[Fault], run_for: Duration) -> Report {
    assert!(!kinds.is_empty(), "the nemesis needs a fault to inject");
    let kinds = kinds.to_vec();
    let _one = ONE_AT_A_TIME.lock().await;
    let postgres = Postgres::start().unwrap();
    let redis = Arc::new(Mutex::new(RedisServer::start().unwrap()));
    let redis_url = redis.lock().unwrap().url();
    let nats = Arc::new(Mutex::new(NatsServer::start().unwrap()));
    let nats_url = nats.lock().unwrap().url();
    let admin = pg(&postgres.url()).await;
    create_kv(&admin, KEYS).await;
    let ns = format!("nemesis{:x}", rand::random::<u32>());
    let mut list = Vec::new();
    for _ in 0..INSTANCES {
        list.push(RwLock::new(instance(&ns, &redis_url, &nats_url).await));
    }
    let instances: Instances = Arc::new(list);
    // The sidecar: plain-SQL changes of `kv` become invalidations of `ns`.
    let config = tiercache_sidecar::Config::parse(&format!(
        r#"
        [source]
        kind = "{kind}"
        database_url = "{pg}"
        poll_interval_ms = 20
        slot = "{ns}"

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
        kind = source.name(),
        pg = postgres.url(),
        redis = redis_url,
    ))
    .unwrap();
    postgres
        .psql(&tiercache_sidecar::setup_sql(&config).unwrap())
        .unwrap();
    let sidecar = Arc::new(tokio::sync::Mutex::new(start_sidecar(&config).await));
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
                    by_sql: false,
                    reached: committed,
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
                let committed = Instant::now();
                writes.lock().unwrap().push(Write {
                    key,
                    version,
                    committed,
                    by_sql: true,
                    reached: committed,
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
        let (instances, stop, faults, nats, redis) = (
            instances.clone(),
            stop.clone(),
            faults.clone(),
            nats.clone(),
            redis.clone(),
        );
        let (sidecar, config) = (sidecar.clone(), config.clone());
        let (ns, redis_url, nats_url) = (ns.clone(), redis_url.clone(), nats_url.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (pause, fault, hold, victim) = {
                    let mut rng = rand::rng();
                    (
                        Duration::from_millis(rng.random_range(1000..2500)),
                        kinds[rng.random_range(0..kinds.len())],
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
                    Fault::RedisPaused => {
                        redis.lock().unwrap().pause();
                        tokio::time::sleep(hold).await;
                        redis.lock().unwrap().resume();
                    }
                    Fault::RedisKilled => {
                        let r = redis.clone();
                        tokio::task::spawn_blocking(move || r.lock().unwrap().kill())
                            .await
                            .unwrap();
                        tokio::time::sleep(hold).await;
                        let r = redis.clone();
                        tokio::task::spawn_blocking(move || r.lock().unwrap().restart().unwrap())
                            .await
                            .unwrap();
                    }
                    Fault::SidecarKilled => {
                        let mut run = sidecar.lock().await;
                        run.task.abort();
                        let _ = (&mut run.task).await;
                        tokio::time::sleep(hold).await;
                        *run = start_sidecar(&config).await;
                    }
                }
                faults.lock().unwrap().push(Injected {
                    fault,
                    from,
                    to: Instant::now(),
                });
            }
        }));
    }
    // The progress line.
    let progress = {
        let (faults, writes, reads) = (faults.clone(), writes.clone(), reads.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + PROGRESS_EVERY,
                PROGRESS_EVERY,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                println!(
                    "nemesis ({source} source): {:.0} s of {:.0} s, {} faults, {} writes, {} reads",
                    start.elapsed().as_secs_f64(),
                    run_for.as_secs_f64(),
                    faults.lock().unwrap().len(),
                    writes.lock().unwrap().len(),
                    reads.lock().unwrap().len()
                );
            }
        })
    };
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    progress.abort();
    for t in tasks {
        t.await.unwrap();
    }
    nats.lock().unwrap().resume();
    redis.lock().unwrap().resume();
    // Quiescence first, then the sidecar stops: its farewell goes out on a
    // bus it has reconnected to. Stopped while it still reconnects after
    // the last fault (a NATS client backs off up to 2 s), its farewell may
    // not go out within `FAREWELL_WAIT`, and the instances then rightly
    // cap local life for minutes (a stuck outbox, as far as they know).
    let faults_so_far = faults.clone();
    await_trusted(&instances, move || {
        faults_so_far
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.describe(start))
            .collect::<Vec<_>>()
            .join(", ")
    })
    .await;
    // And the sidecar has applied every change: one it was still retrying
    // (Redis paused at the end, say) would be left half done by the stop,
    // for the next sidecar to redo from the slot.
    let converged = Instant::now();
    loop {
        let caches: Vec<_> = (0..INSTANCES).map(|i| current(&instances, i)).collect();
        match tiers_match_postgres(&admin, KEYS, &ns, &redis_url, &caches).await {
            Ok(()) => break,
            Err(e) => assert!(
                converged.elapsed() < Duration::from_secs(30),
                "the tiers never converged with the sidecar running: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let SidecarRun { task, stop } = Arc::try_unwrap(sidecar)
        .ok()
        .expect("the nemesis has ended")
        .into_inner();
    stop.trigger();
    task.await.unwrap().unwrap();

    let mut writes = std::mem::take(&mut *writes.lock().unwrap());
    let reads = std::mem::take(&mut *reads.lock().unwrap());
    let faults = std::mem::take(&mut *faults.lock().unwrap());
    let sidecar_down: Vec<(Instant, Instant)> = faults
        .iter()
        .filter(|f| f.fault == Fault::SidecarKilled)
        .map(|f| (f.from.checked_sub(SIDECAR_REACH).unwrap_or(f.from), f.to))
        .collect();
    for w in writes.iter_mut().filter(|w| w.by_sql) {
        if let Some((_, back)) = sidecar_down
            .iter()
            .find(|(down, back)| *down <= w.committed && w.committed <= *back)
        {
            w.reached = *back;
        }
    }

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
        v.sort_by_key(|w| w.reached);
    }
    // The check, in one sweep per key: a read must return at least every
    // version that reached its invalidator more than the bound (+ slack)
    // before the read started.
    let mut beyond = Vec::new();
    for (key, rs) in &reads_of {
        let ws = writes_of.get(key).map(Vec::as_slice).unwrap_or_default();
        let (mut next, mut required, mut since, mut by_sql) = (0, 0i64, None, false);
        for r in rs {
            while next < ws.len() && ws[next].reached + BOUND + SLACK < r.started {
                if ws[next].version > required {
                    required = ws[next].version;
                    since = Some(ws[next].reached);
                    by_sql = ws[next].by_sql;
                }
                next += 1;
            }
            if r.version < required {
                beyond.push(format!(
                    "at {:.3} s, instance {} read key {} = v{} {:?} after v{} ({}) reached its invalidator",
                    (r.started - start).as_secs_f64(),
                    r.instance,
                    r.key,
                    r.version,
                    since.map(|c| r.started - c).unwrap_or_default(),
                    required,
                    if by_sql { "plain SQL" } else { "by the app" },
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
        let from = rs.partition_point(|r| r.started <= w.reached);
        let lag = rs[from..]
            .iter()
            .take_while(|r| r.started <= w.reached + window)
            .filter(|r| r.version < w.version)
            .map(|r| r.started - w.reached)
            .max()
            .unwrap_or_default();
        lags.push((w.reached, lag));
    }
    let within = |t: Duration| lags.iter().filter(|(_, l)| *l <= t).count();
    let mut counts: HashMap<Fault, usize> = HashMap::new();
    for f in &faults {
        *counts.entry(f.fault).or_default() += 1;
    }
    let report = Report {
        source,
        duration: run_for,
        reads: reads.len(),
        writes: writes.len(),
        faults: counts,
        within_10ms: within(Duration::from_millis(10)),
        within_100ms: within(Duration::from_millis(100)),
        within_bound: within(BOUND),
        plot: draw(source, start, &lags, &faults),
    };
    println!(
        "{report}; stale reads beyond the bound (+{SLACK:?} slack): {}",
        beyond.len()
    );
    for b in beyond.iter().take(10) {
        println!("  beyond the bound: {b}");
    }
    for f in &faults {
        println!("  fault {}", f.describe(start));
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

    // The last write of every key, to read a quiescence failure by.
    let mut last: Vec<&Write> = writes_of
        .values()
        .filter_map(|ws| ws.last().copied())
        .collect();
    last.sort_by_key(|w| w.key);
    let last: Vec<String> = last
        .iter()
        .map(|w| {
            format!(
                "{}=v{} ({} at {:.3} s)",
                w.key,
                w.version,
                if w.by_sql { "SQL" } else { "app" },
                (w.committed - start).as_secs_f64()
            )
        })
        .collect();
    println!("  last writes: {}", last.join(", "));

    // Quiescence: every instance's local tier and Redis equal Postgres.
    await_trusted(&instances, || "the sidecar stopped".to_owned()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let caches: Vec<_> = (0..INSTANCES).map(|i| current(&instances, i)).collect();
    assert_tiers_match_postgres(&admin, KEYS, &ns, &redis_url, &caches).await;
    report
}

/// Waits until every instance trusts its local tier again (at most 30 s
/// each); `context` says what happened, should one never do.
async fn await_trusted(instances: &Instances, context: impl Fn() -> String) {
    for i in 0..INSTANCES {
        let c = current(instances, i);
        let start = Instant::now();
        while !c.local_trusted() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instance {i} never trusted again: {:?}; {}",
                c.stats(),
                context()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The commit-to-visible lag of every write over the run, the faults as
/// shaded spans, the bound as a line, to `nemesis-<source>.svg` in
/// [`plot_dir`]; returns its path.
fn draw(
    source: Source,
    start: Instant,
    lags: &[(Instant, Duration)],
    faults: &[Injected],
) -> PathBuf {
    let dir = plot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("nemesis-{}.svg", source.name()));
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
            "visible lag per write (from its commit, or from the sidecar's return), with injected faults",
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
            Fault::RedisPaused => RGBColor(200, 240, 160),
            Fault::RedisKilled => RGBColor(110, 200, 110),
            Fault::SidecarKilled => RGBColor(210, 170, 255),
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
        "plot: {} (orange: bus paused, red: bus killed, blue: instance restarted, light green: Redis paused, green: Redis killed, purple: sidecar killed)",
        path.display()
    );
    // The chart borrows `path` until the end.
    path.clone()
}
