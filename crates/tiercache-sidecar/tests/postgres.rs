//! Both sources against a real Postgres (testkit), with in-process sinks.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tiercache_core::backend::{MessageCodec, SharedTier};
use tiercache_sidecar::Config;

async fn update_reaches_bus_and_shared_tier(kind: &str) {
    let pg = start_pg().await;
    let config = config(kind, &pg);
    setup(&pg, &config);
    let sinks = Sinks2::new();
    let mut inbox = Inbox::subscribe(&sinks.bus, "products", MessageCodec::unsigned()).await;
    sinks
        .shared
        .set(
            "products:1",
            Bytes::from_static(b"old"),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let running = Running::start(config, sinks.sinks());
    running.connected(1).await;

    // An update that moves the row between categories, with plain SQL.
    psql(
        &pg,
        "UPDATE products SET category = 'games', name = 'x' WHERE id = 1",
    );
    let m = inbox.wait_for(WAIT, |m| m.keys == s(&["1"])).await;
    assert_eq!(m.namespace, "products");
    assert_eq!(m.tags, s(&["products", "category:books", "category:games"]));
    assert!(!m.created);
    assert_eq!(m.seq, 1);
    assert_eq!(m.sender_instance, running.sidecar.sinks().instance_id());
    assert!(m.source_time_ms > 0);
    assert!(
        sinks.shared.get("products:1").await.unwrap().is_none(),
        "key deleted"
    );
    let versions = sinks
        .shared
        .tag_versions(
            "products",
            &s(&["category:books", "category:games", "products"]),
        )
        .await
        .unwrap();
    assert!(versions.iter().all(|v| *v > 0), "tags bumped: {versions:?}");

    // Insert: created. Delete: old row. A table without rules: nothing.
    psql(&pg, "INSERT INTO products VALUES (1000, 'n', 'toys', 'b')");
    let m = inbox.wait_for(WAIT, |m| m.keys == s(&["1000"])).await;
    assert!(m.created);
    assert_eq!(m.tags, s(&["products", "category:toys"]));
    assert_eq!(m.seq, 2);
    psql(
        &pg,
        "INSERT INTO audit (note) VALUES ('ignored'); DELETE FROM products WHERE id = 2",
    );
    let m = inbox.wait_for(WAIT, |m| m.keys == s(&["2"])).await;
    assert_eq!(m.tags, s(&["products", "category:books"]));
    assert!(!m.created);
    // Nothing else arrived (the audit insert was ignored).
    assert!(inbox.drain(Duration::from_millis(300)).await.is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_update_reaches_bus_and_shared_tier() {
    update_reaches_bus_and_shared_tier("notify").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_update_reaches_bus_and_shared_tier() {
    update_reaches_bus_and_shared_tier("logical").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_delivers_changes_made_while_the_sidecar_was_stopped() {
    let pg = start_pg().await;
    let config = config("logical", &pg);
    setup(&pg, &config);
    let sinks = Sinks2::new();
    let mut inbox = Inbox::subscribe(&sinks.bus, "products", MessageCodec::unsigned()).await;

    let first = Running::start(config.clone(), sinks.sinks());
    first.connected(1).await;
    psql(&pg, "UPDATE products SET name = 'a' WHERE id = 10");
    inbox.wait_for(WAIT, |m| m.keys == s(&["10"])).await;
    // Abort the task outright (no graceful shutdown), like a crash.
    first.task.abort();
    let _ = first.task.await;

    psql(&pg, "UPDATE products SET name = 'b' WHERE id = 11");
    psql(&pg, "UPDATE products SET category = 'music' WHERE id = 12");
    psql(&pg, "DELETE FROM products WHERE id = 13");
    assert!(inbox.drain(Duration::from_millis(300)).await.is_empty());

    let second = Running::start(config.clone(), sinks.sinks());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = inbox
            .next(WAIT)
            .await
            .expect("changes made while down arrive");
        // At least once: the first run's last change may come again.
        seen.extend(m.keys.iter().filter(|k| *k != "10").cloned());
        if m.keys == s(&["12"]) {
            assert_eq!(m.tags, s(&["products", "category:books", "category:music"]));
        }
    }
    seen.sort();
    assert_eq!(seen, s(&["11", "12", "13"]));

    // A graceful stop after everything was applied: the next run replays
    // nothing (the slot was advanced).
    second.stop().await;
    let third = Running::start(config, sinks.sinks());
    third.connected(1).await;
    assert!(inbox.drain(Duration::from_millis(500)).await.is_empty());
    third.stop().await;
}

async fn survives_postgres_restart(kind: &str) {
    let mut pg = start_pg().await;
    let config = config(kind, &pg);
    setup(&pg, &config);
    let sinks = Sinks2::new();
    let mut inbox = Inbox::subscribe(&sinks.bus, "products", MessageCodec::unsigned()).await;
    let running = Running::start(config, sinks.sinks());
    running.connected(1).await;
    psql(&pg, "UPDATE products SET name = 'before' WHERE id = 20");
    inbox.wait_for(WAIT, |m| m.keys == s(&["20"])).await;

    pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("postgres restarts");
        pg
    })
    .await
    .unwrap();
    if kind == "notify" {
        // NOTIFY reaches only listeners: wait for the sidecar to listen again.
        running.connected(2).await;
    }
    psql(&pg, "UPDATE products SET name = 'after' WHERE id = 21");
    // At least once: under `logical`, a replay of id 20 (its slot advance
    // may not have survived the restart) can share a batch with 21.
    inbox
        .wait_for(WAIT, |m| m.keys.iter().any(|k| k == "21"))
        .await;
    assert!(running.sidecar.status().connections() >= 2);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_survives_postgres_restart() {
    survives_postgres_restart("notify").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_survives_postgres_restart() {
    survives_postgres_restart("logical").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_explicit_messages_commit_and_rollback() {
    let pg = start_pg().await;
    let config = config("logical", &pg);
    setup(&pg, &config);
    let sinks = Sinks2::new();
    let mut inbox = Inbox::subscribe(&sinks.bus, "products", MessageCodec::unsigned()).await;
    let mut other = Inbox::subscribe(&sinks.bus, "other", MessageCodec::unsigned()).await;
    let running = Running::start(config, sinks.sinks());
    running.connected(1).await;

    psql(
        &pg,
        r#"BEGIN;
           SELECT pg_logical_emit_message(true, 'tiercache', '{"namespace":"products","keys":["rolled-back"]}');
           ROLLBACK;
           BEGIN;
           SELECT pg_logical_emit_message(true, 'tiercache', '{"namespace":"products","keys":["k1","k2"],"tags":["promo"]}');
           COMMIT;"#,
    );
    let m = inbox.next(WAIT).await.expect("committed message arrives");
    assert_eq!(m.keys, s(&["k1", "k2"]));
    assert_eq!(m.tags, s(&["promo"]));

    // The sqlx helper, in a transaction that commits and one that rolls back.
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    tiercache_sidecar::emit::invalidate_in_tx(&mut tx, "other", &["nope"], &[] as &[&str])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE products SET name = 'sqlx' WHERE id = 30")
        .execute(&mut *tx)
        .await
        .unwrap();
    tiercache_sidecar::emit::invalidate_in_tx(&mut tx, "other", &["o1"], &["t1"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let m = other.next(WAIT).await.expect("sqlx message arrives");
    assert_eq!(m.keys, s(&["o1"]));
    assert_eq!(m.tags, s(&["t1"]));
    inbox.wait_for(WAIT, |m| m.keys == s(&["30"])).await;
    assert!(other.drain(Duration::from_millis(300)).await.is_empty());
    assert!(
        inbox
            .drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|m| !m.keys.contains(&"rolled-back".to_owned()))
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_slot_advances_over_unrelated_tables() {
    let pg = start_pg().await;
    let config = config("logical", &pg);
    setup(&pg, &config);
    let sinks = Sinks2::new();
    let mut inbox = Inbox::subscribe(&sinks.bus, "products", MessageCodec::unsigned()).await;
    let running = Running::start(config, sinks.sinks());
    running.connected(1).await;
    psql(
        &pg,
        "INSERT INTO audit (note) SELECT 'n' FROM generate_series(1, 100)",
    );
    let after = psql(&pg, "SELECT pg_current_wal_insert_lsn()");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ok = psql(
            &pg,
            &format!(
                "SELECT confirmed_flush_lsn >= '{after}'::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = 'tiercache'"
            ),
        );
        if ok == "t" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot did not advance past {after}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(inbox.drain(Duration::from_millis(200)).await.is_empty());
    assert!(running.sidecar.status().changes_read() >= 100);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_that_do_not_fit_the_table_name_the_field() {
    let pg = start_pg().await;
    let text = config_text("logical", &pg.url(), "tiercache").replace("{id}", "{idd}");
    let config = Config::parse(&text).unwrap();
    let sidecar = tiercache_sidecar::Sidecar::new(config.clone(), Sinks2::new().sinks()).unwrap();
    let (_t, shutdown) = tiercache_sidecar::Shutdown::new();
    let err = tokio::time::timeout(WAIT, sidecar.run(shutdown))
        .await
        .expect("fails fast")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("rules[0].keys[0]: unknown column placeholder {idd}"),
        "{err}"
    );
    let err = tiercache_sidecar::check(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("rules[0].keys[0]: unknown column placeholder {idd}"),
        "{err}"
    );

    let text = config_text("notify", &pg.url(), "tiercache")
        .replace("table = \"products\"", "table = \"productz\"");
    let config = Config::parse(&text).unwrap();
    let err = tiercache_sidecar::check(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("rules[0].table: table public.productz does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_endpoints() {
    let pg = start_pg().await;
    let config = config("logical", &pg);
    setup(&pg, &config);
    let sinks = Sinks2::new();
    let mut inbox = Inbox::subscribe(&sinks.bus, "products", MessageCodec::unsigned()).await;
    let handle = tiercache_sidecar::http::install_recorder().unwrap();
    let running = Running::start(config, sinks.sinks());
    let (addr, _task) = tiercache_sidecar::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        running.sidecar.status(),
        handle,
        tiercache_sidecar::Shutdown::new().1,
    )
    .await
    .unwrap();
    running.connected(1).await;
    psql(&pg, "UPDATE products SET name = 'm' WHERE id = 40");
    inbox.wait_for(WAIT, |m| m.keys == s(&["40"])).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let health = http_get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"connected\":true"), "{health}");
    let metrics = http_get(addr, "/metrics").await;
    for name in [
        "tiercache_sidecar_changes_read_total",
        "tiercache_sidecar_invalidations_sent_total",
        "tiercache_sidecar_lag_seconds_bucket",
        "tiercache_sidecar_slot_lag_bytes",
        "tiercache_sidecar_source_connected",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    running.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
