//! The sidecar with real sinks: Redis (shared tier, and a Redis bus) and
//! NATS, all started by the testkit; and the binary, SIGKILLed mid-run.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tiercache_core::backend::{Bus, MessageCodec, SharedTier};
use tiercache_nats::NatsBus;
use tiercache_redis::{RedisBus, RedisSharedTier};
use tiercache_sidecar::Config;
use tiercache_testkit::{NatsServer, Postgres, RedisServer, free_port};

const KEY: &str = "sidecar-test-key";

struct Servers {
    pg: Postgres,
    redis: RedisServer,
    nats: NatsServer,
}

async fn start_all() -> Servers {
    let pg = start_pg().await;
    let (redis, nats) = tokio::task::spawn_blocking(|| {
        (
            RedisServer::start().expect("redis starts"),
            NatsServer::start().expect("nats starts"),
        )
    })
    .await
    .unwrap();
    Servers { pg, redis, nats }
}

fn real_config(kind: &str, sv: &Servers, bus: &str, listen: &str) -> String {
    let bus_url = match bus {
        "nats" => sv.nats.url(),
        _ => sv.redis.url(),
    };
    format!(
        r#"
        [source]
        kind = "{kind}"
        database_url = "{pg}"
        poll_interval_ms = 20

        [redis]
        url = "{redis}"

        [bus]
        kind = "{bus}"
        url = "{bus_url}"
        signing_key = "{KEY}"

        [http]
        listen = "{listen}"

        [retry]
        initial_ms = 20
        max_ms = 500

        [[rules]]
        table = "products"
        namespace = "products"
        keys = ["{{id}}"]
        tags = ["products", "category:{{category}}"]
        "#,
        pg = sv.pg.url(),
        redis = sv.redis.url(),
    )
}

async fn app_shared(sv: &Servers) -> RedisSharedTier {
    RedisSharedTier::builder()
        .url(sv.redis.url())
        .call_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap()
}

async fn app_bus(sv: &Servers, bus: &str) -> Arc<dyn Bus> {
    match bus {
        "nats" => Arc::new(NatsBus::builder().url(sv.nats.url()).build().await.unwrap()),
        _ => Arc::new(
            RedisBus::builder()
                .url(sv.redis.url())
                .build()
                .await
                .unwrap(),
        ),
    }
}

async fn update_with_real_sinks(kind: &str, bus: &str) {
    let sv = start_all().await;
    let config = Config::parse(&real_config(kind, &sv, bus, "")).unwrap();
    setup(&sv.pg, &config);
    let shared = app_shared(&sv).await;
    let app_bus = app_bus(&sv, bus).await;
    let mut inbox = Inbox::subscribe(app_bus.as_ref(), "products", MessageCodec::signed(KEY)).await;
    shared
        .set(
            "products:1",
            Bytes::from_static(b"old"),
            Duration::from_secs(600),
        )
        .await
        .unwrap();

    let sidecar = tiercache_sidecar::Sidecar::from_config(config)
        .await
        .unwrap();
    let (trigger, shutdown) = tiercache_sidecar::Shutdown::new();
    let sc = sidecar.clone();
    let task = tokio::spawn(async move { sc.run(shutdown).await });
    assert!(sidecar.status().wait_connected(1, WAIT).await);

    psql(
        &sv.pg,
        "UPDATE products SET category = 'games' WHERE id = 1",
    );
    let m = inbox.wait_for(WAIT, |m| m.keys == s(&["1"])).await;
    assert_eq!(m.tags, s(&["products", "category:books", "category:games"]));
    assert!(
        shared.get("products:1").await.unwrap().is_none(),
        "key deleted in Redis"
    );
    let v = shared
        .tag_versions("products", &s(&["category:books", "category:games"]))
        .await
        .unwrap();
    assert!(v.iter().all(|v| *v > 0), "tags bumped in Redis: {v:?}");
    assert!(
        inbox.farewell(Duration::from_millis(500)).await.is_none(),
        "no farewell while active"
    );
    // Stopping is not a crash: the sidecar says farewell behind its last
    // message, so that instances do not take its silence for a stuck
    // outbox (and cap their local tiers for minutes).
    trigger.trigger();
    task.await.unwrap().unwrap();
    let bye = inbox
        .farewell(Duration::from_millis(100))
        .await
        .expect("a farewell, out before run returned");
    assert_eq!(bye.sender_instance, sidecar.sinks().instance_id());
    assert_eq!((bye.namespace.as_str(), bye.seq), ("products", m.seq));
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_with_redis_and_nats() {
    update_with_real_sinks("notify", "nats").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_with_redis_and_nats() {
    update_with_real_sinks("logical", "nats").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_with_redis_bus() {
    update_with_real_sinks("logical", "redis").await;
}

/// A sink is down while rows change (Redis, the shared tier, killed): the
/// change is published at once (instances drop their local copies), the
/// slot is not advanced past it, and once Redis is back the delete is done
/// and the change published again before the slot moves.
#[tokio::test(flavor = "multi_thread")]
async fn logical_holds_the_slot_while_a_sink_is_down() {
    let mut sv = start_all().await;
    // Heartbeats let the slot catch up with the WAL position once idle.
    let text = real_config("logical", &sv, "nats", "").replace(
        "poll_interval_ms = 20",
        "poll_interval_ms = 20\nheartbeat_ms = 200\nheartbeat_min_lag_bytes = 0",
    );
    let config = Config::parse(&text).unwrap();
    setup(&sv.pg, &config);
    let app_bus = app_bus(&sv, "nats").await;
    let mut inbox = Inbox::subscribe(app_bus.as_ref(), "products", MessageCodec::signed(KEY)).await;
    let sidecar = tiercache_sidecar::Sidecar::from_config(config)
        .await
        .unwrap();
    let (trigger, shutdown) = tiercache_sidecar::Shutdown::new();
    let sc = sidecar.clone();
    let task = tokio::spawn(async move { sc.run(shutdown).await });
    assert!(sidecar.status().wait_connected(1, WAIT).await);

    sv.redis = tokio::task::spawn_blocking(move || {
        let mut redis = sv.redis;
        redis.kill();
        redis
    })
    .await
    .unwrap();
    psql(&sv.pg, "UPDATE products SET name = 'down' WHERE id = 50");
    let after_update = psql(&sv.pg, "SELECT pg_current_wal_insert_lsn()");
    // Published while Redis is still down...
    inbox.wait_for(WAIT, |m| m.keys == s(&["50"])).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // ...once: the second publish waits for the delete.
    assert!(
        inbox
            .drain(Duration::from_millis(100))
            .await
            .iter()
            .all(|m| m.keys != s(&["50"])),
        "published again before Redis was back"
    );
    // And the slot did not move past the change.
    let held = psql(
        &sv.pg,
        &format!(
            "SELECT confirmed_flush_lsn < '{after_update}'::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = 'tiercache'"
        ),
    );
    assert_eq!(held, "t", "the slot advanced while a sink was down");

    sv.redis = tokio::task::spawn_blocking(move || {
        let mut redis = sv.redis;
        redis.restart().expect("redis restarts");
        redis
    })
    .await
    .unwrap();
    inbox.wait_for(WAIT, |m| m.keys == s(&["50"])).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let moved = psql(
            &sv.pg,
            &format!(
                "SELECT confirmed_flush_lsn >= '{after_update}'::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = 'tiercache'"
            ),
        );
        if moved == "t" {
            break;
        }
        assert!(Instant::now() < deadline, "slot never advanced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.trigger();
    task.await.unwrap().unwrap();
}

/// Issue #13: the bus hangs (its Redis SIGSTOPped: alive, answering
/// nothing) while rows change. The sidecar's shared-tier deletes must not
/// wait for it: every changed row's key is gone from the shared tier about
/// as fast as with a live bus. When the bus resumes, the queued publishes
/// go out in order, before any later one.
#[tokio::test(flavor = "multi_thread")]
async fn deletes_go_on_while_the_bus_hangs() {
    let sv = start_all().await;
    let mut bus_server =
        tokio::task::spawn_blocking(|| RedisServer::start().expect("redis starts"))
            .await
            .unwrap();
    let text = real_config("notify", &sv, "redis", "").replace(
        &format!("url = \"{}\"\n        signing_key", sv.redis.url()),
        &format!("url = \"{}\"\n        signing_key", bus_server.url()),
    );
    assert!(text.contains(&bus_server.url()), "the bus is its own Redis");
    let config = Config::parse(&text).unwrap();
    setup(&sv.pg, &config);
    let shared = app_shared(&sv).await;
    let app_bus: Arc<dyn Bus> = Arc::new(
        RedisBus::builder()
            .url(bus_server.url())
            .build()
            .await
            .unwrap(),
    );
    let mut inbox = Inbox::subscribe(app_bus.as_ref(), "products", MessageCodec::signed(KEY)).await;
    for id in 1..=6 {
        shared
            .set(
                &format!("products:{id}"),
                Bytes::from_static(b"old"),
                Duration::from_secs(600),
            )
            .await
            .unwrap();
    }
    let sidecar = tiercache_sidecar::Sidecar::from_config(config)
        .await
        .unwrap();
    let (trigger, shutdown) = tiercache_sidecar::Shutdown::new();
    let sc = sidecar.clone();
    let task = tokio::spawn(async move { sc.run(shutdown).await });
    assert!(sidecar.status().wait_connected(1, WAIT).await);

    // Live bus: deleted and published.
    psql(&sv.pg, "UPDATE products SET name = 'live' WHERE id = 1");
    let first = inbox.wait_for(WAIT, |m| m.keys == s(&["1"])).await;
    assert!(shared.get("products:1").await.unwrap().is_none());

    // The bus hangs; four rows change, one after another.
    bus_server.pause();
    let mut took = Vec::new();
    for id in 2..=5 {
        let changed = Instant::now();
        psql(
            &sv.pg,
            &format!("UPDATE products SET name = 'hung' WHERE id = {id}"),
        );
        while shared
            .get(&format!("products:{id}"))
            .await
            .unwrap()
            .is_some()
        {
            assert!(
                changed.elapsed() < Duration::from_secs(5),
                "the delete of row {id} waited for the hung bus (earlier ones took {took:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(changed.elapsed());
    }
    // The bus resumes; a later change goes out after the queued ones.
    bus_server.resume();
    psql(&sv.pg, "UPDATE products SET name = 'after' WHERE id = 6");
    let last = inbox
        .wait_for(Duration::from_secs(30), |m| m.keys == s(&["6"]))
        .await;
    assert_eq!(
        last.seq,
        first.seq + 5,
        "the four queued publishes were numbered, and sent, before it"
    );
    assert!(shared.get("products:6").await.unwrap().is_none());
    println!("deletes with the bus hung took {took:?}");
    trigger.trigger();
    task.await.unwrap().unwrap();
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tiercache-sidecar")
}

fn spawn_run(path: &std::path::Path) -> Child {
    Command::new(bin())
        .args(["run", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn wait_healthy(port: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "sidecar never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The binary, SIGKILLed: rows changed while it is dead arrive after it
/// restarts; SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn binary_survives_sigkill_with_logical_source() {
    let sv = start_all().await;
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        real_config("logical", &sv, "nats", &format!("127.0.0.1:{port}")),
    )
    .unwrap();

    // `sql` prints the setup; apply it.
    let out = Command::new(bin())
        .args(["sql", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    psql(&sv.pg, &String::from_utf8(out.stdout).unwrap());
    // `check` connects to everything.
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("check: ok"), "{text}");

    let app_bus = app_bus(&sv, "nats").await;
    let mut inbox = Inbox::subscribe(app_bus.as_ref(), "products", MessageCodec::signed(KEY)).await;
    let mut child = spawn_run(&path);
    wait_healthy(port).await;
    psql(&sv.pg, "UPDATE products SET name = 'a' WHERE id = 60");
    inbox.wait_for(WAIT, |m| m.keys == s(&["60"])).await;

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for id in 61..=65 {
        psql(
            &sv.pg,
            &format!("UPDATE products SET name = 'down' WHERE id = {id}"),
        );
    }
    psql(&sv.pg, "DELETE FROM products WHERE id = 66");

    let mut child = spawn_run(&path);
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 6 {
        assert!(
            Instant::now() < deadline,
            "missing after restart: have {seen:?}"
        );
        if let Some(m) = inbox.next(Duration::from_secs(1)).await {
            seen.extend(m.keys.into_iter().filter(|k| k != "60"));
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        s(&["61", "62", "63", "64", "65", "66"])
    );

    // SIGTERM: a clean exit.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "exit status {code:?}");
}

#[test]
fn binary_reports_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = config_text(
        "logical",
        "postgres://postgres@127.0.0.1:1/postgres",
        "tiercache",
    )
    .replace("keys = [\"{id}\"]", "keys = [\"{id\"]");
    std::fs::write(&path, text).unwrap();
    for cmd in ["run", "check", "sql"] {
        let out = Command::new(bin())
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("rules[0].keys[0]: unclosed column placeholder {id"),
            "{cmd}: {err}"
        );
    }
    // An unknown field: serde's message with the line.
    std::fs::write(
        &path,
        config_text("logical", "postgres://x@127.0.0.1:1/db", "tiercache").replace(
            "namespace = \"products\"",
            "namespace = \"products\"\nnamepsace = 1",
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["sql", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("namepsace") && err.contains("line"), "{err}");
}

/// A sidecar that goes quiet says farewell after its heartbeats, and says it
/// again about once a second: on an at-most-once bus, an instance
/// reconnecting when the first one went out would otherwise take the quiet
/// sidecar for a stuck one (local life capped for minutes; found by the
/// nemesis, a farewell published just before the instances resubscribed).
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_sidecar_says_farewell_again() {
    let sv = start_all().await;
    let config = Config::parse(&real_config("notify", &sv, "nats", "")).unwrap();
    setup(&sv.pg, &config);
    let app_bus = app_bus(&sv, "nats").await;
    let mut inbox = Inbox::subscribe(app_bus.as_ref(), "products", MessageCodec::signed(KEY)).await;
    let running = Running::from_config(config).await;
    running.connected(1).await;
    psql(
        &sv.pg,
        "UPDATE products SET category = 'games' WHERE id = 1",
    );
    let m = inbox.wait_for(WAIT, |m| m.keys == s(&["1"])).await;
    // Quiet from here: heartbeats for 5 s, then the farewell.
    let first = inbox
        .farewell(Duration::from_secs(8))
        .await
        .expect("a farewell once quiet");
    let again = inbox
        .farewell(Duration::from_secs(3))
        .await
        .expect("the farewell said again");
    for bye in [&first, &again] {
        assert_eq!(bye.sender_instance, running.sidecar.sinks().instance_id());
        assert_eq!((bye.namespace.as_str(), bye.seq), ("products", m.seq));
    }
    running.stop().await;
}
