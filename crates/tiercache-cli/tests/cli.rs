//! The `tiercache` binary against real Redis and NATS (tiercache-testkit)
//! and real `Cache` instances: each verb's effect on the instances.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiercache_core::backend::{Bus, KeyFormat, SharedTier};
use tiercache_core::{Cache, Entry};
use tiercache_nats::NatsBus;
use tiercache_redis::{RedisBus, RedisSharedTier};
use tiercache_testkit::{NatsServer, RedisServer};

/// The staleness bound the instances run with (the engine's default).
const BOUND: Duration = Duration::from_millis(500);
/// Slack over the bound for a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(4);
const KEY: &str = "a shared s3cret key";

fn ns(prefix: &str) -> String {
    format!("{prefix}{:x}", rand::random::<u32>())
}

/// The binary, with no TIERCACHE_* variable of the test's environment.
fn tiercache() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiercache"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TIERCACHE_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

async fn run(args: Vec<String>) -> Output {
    run_env(args, Vec::new()).await
}

async fn run_env(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut c = tiercache();
        c.args(&args).envs(env);
        c.output().unwrap()
    })
    .await
    .unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tiercache failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BusKind {
    Nats,
    RedisPubSub,
}

/// Servers, and how the CLI reaches them.
struct Setup {
    redis: RedisServer,
    _nats: Option<NatsServer>,
    kind: BusKind,
    bus_url: String,
    /// The connection arguments (flags for NATS, a --config file for Redis
    /// pub/sub, with the signing key from the environment).
    conn: Vec<String>,
    env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start(kind: BusKind) -> Self {
        let redis = RedisServer::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (nats, bus_url, conn, env) = match kind {
            BusKind::Nats => {
                let nats = NatsServer::start().unwrap();
                let url = nats.url();
                let conn = strings(&[
                    "--redis-url",
                    &redis.url(),
                    "--nats-url",
                    &url,
                    "--signing-key",
                    KEY,
                ]);
                (Some(nats), url, conn, Vec::new())
            }
            BusKind::RedisPubSub => {
                // The sidecar's file: a [source] and [[rules]] the CLI
                // does not need, [redis], and [bus] without a URL (the
                // Redis bus defaults to redis.url).
                let path = dir.path().join("sidecar.toml");
                std::fs::write(
                    &path,
                    format!(
                        "[source]\nkind = \"notify\"\ndatabase_url = \"postgres://x@127.0.0.1:1/db\"\n\n\
                         [redis]\nurl = \"{}\"\n\n[bus]\nkind = \"redis\"\n\n\
                         [[rules]]\ntable = \"t\"\nnamespace = \"n\"\nkeys = [\"{{id}}\"]\n",
                        redis.url()
                    ),
                )
                .unwrap();
                let conn = vec!["--config".to_owned(), path.display().to_string()];
                let env = vec![("TIERCACHE_SIGNING_KEY", KEY.to_owned())];
                (None, redis.url(), conn, env)
            }
        };
        Setup {
            redis,
            _nats: nats,
            kind,
            bus_url,
            conn,
            env,
            _dir: dir,
        }
    }

    async fn bus(&self) -> Arc<dyn Bus> {
        match self.kind {
            BusKind::Nats => Arc::new(
                NatsBus::builder()
                    .url(self.bus_url.clone())
                    .build()
                    .await
                    .unwrap(),
            ),
            BusKind::RedisPubSub => {
                Arc::new(RedisBus::connect(self.bus_url.clone()).await.unwrap())
            }
        }
    }

    async fn tier(&self) -> RedisSharedTier {
        RedisSharedTier::builder()
            .url(self.redis.url())
            .build()
            .await
            .unwrap()
    }

    /// An instance of `ns`, once its bus is live.
    async fn instance(&self, ns: &str) -> Cache<String, String> {
        let c = Cache::builder(ns)
            .shared_tier(self.tier().await)
            .bus_arc(self.bus().await)
            .staleness_bound(BOUND)
            .grace(Duration::from_secs(120))
            .signing_key(KEY)
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.local_trusted() {
            assert!(Instant::now() < deadline, "bus not live within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c
    }

    async fn cli(&self, verb: &[&str]) -> Output {
        let mut args = strings(verb);
        args.extend(self.conn.iter().cloned());
        run_env(args, self.env.clone()).await
    }
}

fn k(s: &str) -> String {
    s.to_owned()
}

/// Polls `cond` until it holds, for at most the bound plus slack.
async fn within_bound(what: &str, mut cond: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < BOUND + SLACK,
            "{what}: not within {:?}",
            BOUND + SLACK
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn origin_down(c: &Cache<String, String>, key: &str) -> Option<String> {
    c.try_get_or_load(&key.to_owned(), || async {
        Err::<Option<String>, _>(std::io::Error::other("origin down"))
    })
    .await
    .ok()
    .flatten()
    .map(|v| (*v).clone())
}

/// invalidate --key, --tag; clear --soft, clear; over one bus kind.
async fn invalidate_and_clear(kind: BusKind) {
    let setup = Setup::start(kind);
    let ns = ns("cli");
    let cache = setup.instance(&ns).await;
    let tier = setup.tier().await;
    let format = KeyFormat::new(ns.as_str(), 250);

    cache.insert(&k("k1"), "v1".into()).await;
    cache
        .insert_entry(&k("k2"), Entry::new("v2".to_owned()).tag("t"))
        .await;
    cache.insert(&k("other"), "o".into()).await;
    for key in ["k1", "k2", "other"] {
        assert!(cache.get_local(&k(key)).is_some(), "{key} not local");
    }
    let flushes = cache.stats().local_flushes;

    // invalidate --key: gone from Redis at once, from the instance within
    // the bound.
    let out = setup
        .cli(&["invalidate", "--namespace", &ns, "--key", "k1"])
        .await;
    let text = ok(&out);
    assert!(text.contains("invalidated 1 key(s) and 0 tag(s)"), "{text}");
    assert!(text.contains("published 1 message(s)"), "{text}");
    assert_eq!(tier.get(&format.storage_key("k1")).await.unwrap(), None);
    let took = within_bound("invalidate --key", async || {
        cache.get_local(&k("k1")).is_none()
    })
    .await;
    eprintln!("{kind:?}: --key evicted within {took:?}");
    assert_eq!(
        cache.get(&k("k1")).await,
        None,
        "a miss after the invalidation"
    );

    // invalidate --tag: the tagged entry goes, the untagged stays.
    let out = setup
        .cli(&["invalidate", "--namespace", &ns, "--tag", "t"])
        .await;
    ok(&out);
    within_bound("invalidate --tag", async || {
        cache.get_local(&k("k2")).is_none()
    })
    .await;
    assert_eq!(
        cache.get(&k("k2")).await,
        None,
        "the tagged entry is stale everywhere"
    );

    // Neither flushed the instance's local tier, not even once the sender
    // went quiet (its farewell): the unrelated key is still a local hit
    // after several liveness windows.
    tokio::time::sleep(BOUND * 4).await;
    assert!(
        cache.get_local(&k("other")).is_some(),
        "an unrelated key left the local tier"
    );
    assert_eq!(
        cache.stats().local_flushes,
        flushes,
        "the local tier was flushed"
    );
    assert!(cache.stats().invalidations_received >= 2);

    // clear --soft: stale, served by a failing load within grace.
    cache.insert(&k("a"), "old".into()).await;
    let out = setup.cli(&["clear", "--namespace", &ns, "--soft"]).await;
    let text = ok(&out);
    assert!(text.contains("cleared (soft): epoch 1, floor 0"), "{text}");
    within_bound("clear --soft", async || cache.get(&k("a")).await.is_none()).await;
    assert_eq!(origin_down(&cache, "a").await.as_deref(), Some("old"));

    // clear (hard): gone, even for a failing load.
    cache.insert(&k("b"), "old".into()).await;
    let out = setup.cli(&["clear", "--namespace", &ns]).await;
    let text = ok(&out);
    assert!(text.contains("cleared (hard): epoch 2, floor 2"), "{text}");
    within_bound("clear", async || cache.get(&k("b")).await.is_none()).await;
    assert_eq!(origin_down(&cache, "b").await, None);
    assert_eq!(origin_down(&cache, "a").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidate_and_clear_over_nats() {
    invalidate_and_clear(BusKind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidate_and_clear_over_redis_pubsub() {
    invalidate_and_clear(BusKind::RedisPubSub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_reports_a_stored_key_a_missing_one_and_garbage() {
    let setup = Setup::start(BusKind::RedisPubSub);
    let ns = ns("insp");
    let cache = setup.instance(&ns).await;
    cache
        .insert_entry(&k("p1"), Entry::new("value".to_owned()).tag("t1").tag("t2"))
        .await;
    cache.invalidate_tag("t2").await;

    let out = setup
        .cli(&["inspect", "--namespace", &ns, "--key", "p1"])
        .await;
    let text = ok(&out);
    for want in [
        format!("storage key:  {ns}:p1"),
        format!("redis key:    {{{ns}:p1}}"),
        "stored:       yes (".to_owned(),
        "ttl:          ".to_owned(),
        "version:      ".to_owned(),
        "lease:        free".to_owned(),
        "clear epochs: epoch 0, floor 0".to_owned(),
        "envelope:     format v1, value, uncompressed".to_owned(),
        "written:      20".to_owned(),
        "fresh until:  ".to_owned(),
        "freshness:    fresh".to_owned(),
        "clear epoch:  0 -> current".to_owned(),
        "tags:         2".to_owned(),
        "\"t1\": recorded version 0, now 0: current".to_owned(),
        "\"t2\": recorded version 0, now ".to_owned(),
        "invalidated since written".to_owned(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("ttl:          -"), "{text}");

    // After a soft clear the value is stale by its epoch.
    ok(&setup.cli(&["clear", "--namespace", &ns, "--soft"]).await);
    let text = ok(&setup
        .cli(&["inspect", "--namespace", &ns, "--key", "p1"])
        .await);
    assert!(text.contains("clear epochs: epoch 1, floor 0"), "{text}");
    assert!(text.contains("clear epoch:  0 -> stale"), "{text}");

    // A key never stored.
    let text = ok(&setup
        .cli(&["inspect", "--namespace", &ns, "--key", "nope"])
        .await);
    assert!(text.contains("stored:       no: not stored"), "{text}");
    assert!(text.contains("ttl:          -"), "{text}");
    assert!(!text.contains("envelope:"), "{text}");

    // Bytes that are no envelope: reported, not a crash.
    let tier = setup.tier().await;
    let sk = KeyFormat::new(ns.as_str(), 250).storage_key("junk");
    tier.set(
        &sk,
        bytes::Bytes::from_static(b"\x00garbage"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let text = ok(&setup
        .cli(&["inspect", "--namespace", &ns, "--key", "junk"])
        .await);
    assert!(text.contains("stored:       yes (8 bytes)"), "{text}");
    assert!(text.contains("envelope:     undecodable ("), "{text}");
}

/// Reads the child's standard error until a line contains `want`.
fn wait_for_line(r: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "stderr ended before {want:?}"
        );
        if line.contains(want) {
            return;
        }
    }
}

async fn watch_prints(kind: BusKind) {
    let setup = Setup::start(kind);
    let ns = ns("watch");
    let cache = setup.instance(&ns).await;
    let mut args = strings(&["watch", "--namespace", &ns, "--count", "1"]);
    args.extend(setup.conn.iter().cloned());
    let mut child = tiercache()
        .args(&args)
        .envs(setup.env.clone())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    tokio::task::block_in_place(|| wait_for_line(&mut stderr, "watching namespace"));
    // The subscription may reach the server a moment after the line:
    // invalidate until the watcher has printed its line and exited.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        cache.invalidate(&k("w1")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("watch --count 1 did not exit");
        }
    }
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{status}: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let origin = format!("origin={:016x}", cache.instance_id());
    assert!(lines[0].contains(&origin), "{out}");
    assert!(lines[0].contains("keys=[\"w1\"] tags=[]"), "{out}");
    assert!(lines[0].contains(" lag="), "{out}");
    assert!(lines[0].contains(" seq="), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_prints_an_instances_invalidation_over_nats() {
    watch_prints(BusKind::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_prints_an_instances_invalidation_over_redis_pubsub() {
    watch_prints(BusKind::RedisPubSub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_reports_badly_signed_messages() {
    let setup = Setup::start(BusKind::Nats);
    let ns = ns("bad");
    let mut child = tiercache()
        .args(strings(&[
            "watch",
            "--namespace",
            &ns,
            "--count",
            "1",
            "--nats-url",
            &setup.bus_url,
            "--signing-key",
            "another shared key",
        ]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    tokio::task::block_in_place(|| wait_for_line(&mut stderr, "watching namespace"));
    let bus = setup.bus().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        bus.publish(&ns, bytes::Bytes::from_static(b"TCI\x01\x01not signed"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("watch did not exit");
        }
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.contains("dropped: "), "{out}");
}

/// A one-page HTTP server: every request gets `body`.
async fn serve_metrics(body: &'static str, chunked: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let resp = if chunked {
                    let (a, b) = body.split_at(body.len() / 2);
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                        a.len(),
                        b.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                s.write_all(resp.as_bytes()).await.unwrap();
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

const PAGE: &str = "\
# TYPE tiercache_hits_total counter
tiercache_hits_total{namespace=\"products\",tier=\"local\"} 800
tiercache_hits_total{namespace=\"products\",tier=\"shared\"} 150
tiercache_misses_total{namespace=\"products\"} 50
tiercache_loads_total{namespace=\"products\"} 48
tiercache_collapsed_waiters_total{namespace=\"products\"} 7
tiercache_bloom_rejections_total{namespace=\"products\"} 3
tiercache_negative_hits_total{namespace=\"products\"} 2
tiercache_invalidations_sent_total{namespace=\"products\"} 11
tiercache_invalidations_received_total{namespace=\"products\"} 13
tiercache_messages_lost_total{namespace=\"products\"} 0
tiercache_local_flushes_total{namespace=\"products\"} 1
tiercache_bus_state{namespace=\"products\",state=\"live\"} 0
tiercache_bus_state{namespace=\"products\",state=\"disconnected\"} 0
tiercache_bus_state{namespace=\"products\",state=\"silent\"} 1
tiercache_local_entries{namespace=\"products\"} 120
tiercache_local_bytes{namespace=\"products\"} 12595
# TYPE tiercache_commit_to_evict_seconds histogram
tiercache_commit_to_evict_seconds_bucket{namespace=\"products\",le=\"0.001\"} 0
tiercache_commit_to_evict_seconds_bucket{namespace=\"products\",le=\"0.01\"} 50
tiercache_commit_to_evict_seconds_bucket{namespace=\"products\",le=\"0.1\"} 100
tiercache_commit_to_evict_seconds_bucket{namespace=\"products\",le=\"+Inf\"} 100
tiercache_commit_to_evict_seconds_sum{namespace=\"products\"} 1.5
tiercache_commit_to_evict_seconds_count{namespace=\"products\"} 100
tiercache_hits_total{namespace=\"users\",tier=\"local\"} 0
tiercache_hits_total{namespace=\"users\",tier=\"shared\"} 0
tiercache_misses_total{namespace=\"users\"} 0
not a metric line {
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_prints_a_table_per_namespace() {
    for chunked in [false, true] {
        let addr = serve_metrics(PAGE, chunked).await;
        let out = run(strings(&[
            "stats",
            "--url",
            &format!("http://{addr}/metrics"),
        ]))
        .await;
        let text = ok(&out);
        for want in [
            "namespace products\n",
            "  bus state               silent\n",
            "  local hit ratio         80.0%  (800 of 1000)\n",
            "  shared hit ratio        75.0%  (150 of 200)\n",
            "  loads                   48\n",
            "  collapsed waiters       7\n",
            "  bloom rejections        3\n",
            "  negative hits           2\n",
            "  invalidations sent      11\n",
            "  invalidations received  13\n",
            "  messages lost           0\n",
            "  local flushes           1\n",
            "  local entries           120\n",
            "  local bytes             12.3 KiB\n",
            "  commit-to-evict p50     10.0ms\n",
            "  commit-to-evict p99     98.2ms\n",
            "namespace users\n",
            "  local hit ratio         -  (no lookups)\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("1 line(s) of the page not understood"),
            "{stderr}"
        );
    }
    let addr = serve_metrics(PAGE, false).await;
    let text = ok(&run(strings(&[
        "stats",
        "--url",
        &format!("http://{addr}/metrics"),
        "--namespace",
        "users",
    ]))
    .await);
    assert!(!text.contains("products"), "{text}");

    // Nothing listening: the error names --url.
    let out = run(strings(&["stats", "--url", "http://127.0.0.1:1/metrics"])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: --url http://127.0.0.1:1/metrics: cannot connect"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_url_is_named() {
    for verb in [
        &["invalidate", "--namespace", "n", "--key", "k"][..],
        &["clear", "--namespace", "n"][..],
        &["inspect", "--namespace", "n", "--key", "k"][..],
    ] {
        let mut args = strings(verb);
        args.extend(strings(&["--redis-url", "redis://127.0.0.1:1"]));
        let out = run(args).await;
        assert!(!out.status.success(), "{verb:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: --redis-url: cannot connect to redis://127.0.0.1:1: "),
            "{verb:?}: {stderr}"
        );
    }
    // No shared tier at all.
    let out = run(strings(&["invalidate", "--namespace", "n", "--key", "k"])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: --redis-url: invalidate needs the shared tier"),
        "{stderr}"
    );
    // A wrong NATS URL.
    let redis = RedisServer::start().unwrap();
    let out = run(strings(&[
        "invalidate",
        "--namespace",
        "n",
        "--key",
        "k",
        "--redis-url",
        &redis.url(),
        "--nats-url",
        "nats://127.0.0.1:1",
        "--timeout-ms",
        "1000",
    ]))
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: --nats-url: cannot connect to nats://127.0.0.1:1: "),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_sql_prints_what_the_sidecar_prints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "[source]\nkind = \"notify\"\ndatabase_url = \"postgres://x@127.0.0.1:1/db\"\n\n\
         [bus]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:1\"\n\n\
         [[rules]]\ntable = \"products\"\nnamespace = \"products\"\nkeys = [\"{{id}}\"]\ntags = [\"category:{{category}}\"]\n"
    )
    .unwrap();
    drop(f);
    let path_s = path.display().to_string();
    let text = ok(&run(strings(&["sidecar", "sql", "--config", &path_s])).await);
    let config = tiercache_sidecar::Config::load(&path).unwrap();
    assert_eq!(text, tiercache_sidecar::setup_sql(&config).unwrap());
    assert!(text.contains("pg_notify"), "{text}");
    // The `tiercache-sidecar` binary, when built beside this one.
    let sidecar =
        std::path::Path::new(env!("CARGO_BIN_EXE_tiercache")).with_file_name("tiercache-sidecar");
    if sidecar.exists() {
        let out = Command::new(&sidecar)
            .args(["sql", "--config", &path_s])
            .output()
            .unwrap();
        assert_eq!(ok(&out), text);
    }
    // A config error names the field.
    std::fs::write(&path, "[source]\nkind = \"notify\"\n").unwrap();
    let out = run(strings(&["sidecar", "sql", "--config", &path_s])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("source.database_url: missing"), "{stderr}");
}
