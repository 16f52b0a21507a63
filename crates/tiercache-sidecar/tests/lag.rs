//! Commit-to-publish lag of both sources over 200 updates, printed with
//! `cargo test -p tiercache-sidecar --test lag -- --nocapture`. Asserts
//! delivery only, never speed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::*;
use tiercache_core::backend::MessageCodec;
use tiercache_nats::NatsBus;
use tiercache_sidecar::Config;
use tiercache_testkit::{NatsServer, RedisServer};

const UPDATES: usize = 200;

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn measure(kind: &str, real_sinks: bool) {
    let mut pg = start_pg().await;
    // Per-change commit times from Postgres itself (track_commit_timestamp),
    // and the default synchronous_commit = on: the testkit runs with it off,
    // where a commit reaches the WAL flush position (all that logical
    // decoding reads) only when the WAL writer gets to it.
    psql(&pg, "ALTER SYSTEM SET track_commit_timestamp = on");
    psql(&pg, "ALTER SYSTEM SET synchronous_commit = on");
    pg = tokio::task::spawn_blocking(move || {
        pg.restart().unwrap();
        pg
    })
    .await
    .unwrap();
    // The production default poll interval (50 ms) for the logical source.
    let mut text = config_text(kind, &pg.url(), "tiercache")
        .replace("poll_interval_ms = 20", "poll_interval_ms = 50");
    let servers = if real_sinks {
        let (redis, nats) = tokio::task::spawn_blocking(|| {
            (RedisServer::start().unwrap(), NatsServer::start().unwrap())
        })
        .await
        .unwrap();
        text = text.replace(
            "[bus]\n        kind = \"redis\"\n        url = \"redis://127.0.0.1:1\"",
            &format!(
                "[redis]\nurl = \"{}\"\n[bus]\nkind = \"nats\"\nurl = \"{}\"",
                redis.url(),
                nats.url()
            ),
        );
        Some((redis, nats))
    } else {
        None
    };
    let config = Config::parse(&text).unwrap();
    setup(&pg, &config);
    let in_process = Sinks2::new();
    let (mut inbox, running, _app_bus) = match &servers {
        Some((_, nats)) => {
            let bus = NatsBus::builder().url(nats.url()).build().await.unwrap();
            let inbox = Inbox::subscribe(&bus, "products", MessageCodec::unsigned()).await;
            let sidecar = tiercache_sidecar::Sidecar::from_config(config)
                .await
                .unwrap();
            let (trigger, shutdown) = tiercache_sidecar::Shutdown::new();
            let sc = sidecar.clone();
            let task = tokio::spawn(async move { sc.run(shutdown).await });
            (
                inbox,
                Running {
                    sidecar,
                    trigger,
                    task,
                },
                Some(bus),
            )
        }
        None => (
            Inbox::subscribe(&in_process.bus, "products", MessageCodec::unsigned()).await,
            Running::start(config, in_process.sinks()),
            None,
        ),
    };
    running.connected(1).await;

    // 200 transactions, one update each, ~5 ms apart, from one session.
    let sql = format!(
        "DO $$ BEGIN FOR i IN 1..{UPDATES} LOOP \
           UPDATE products SET name = 'lag' || i WHERE id = i; COMMIT; \
           PERFORM pg_sleep(0.005); \
         END LOOP; END $$;"
    );
    let pg = std::sync::Arc::new(pg);
    let p = pg.clone();
    let writer = tokio::task::spawn_blocking(move || psql(&p, &sql));

    let mut received: HashMap<String, i64> = HashMap::new();
    let mut messages = 0;
    while received.len() < UPDATES {
        let m = inbox.next(WAIT).await.expect("every update is delivered");
        let at = now_us();
        messages += 1;
        for k in m.keys {
            received.entry(k).or_insert(at);
        }
    }
    writer.await.unwrap();
    let commits = psql(
        &pg,
        &format!(
            "SELECT id, (extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000000)::bigint \
             FROM products WHERE id <= {UPDATES}"
        ),
    );
    let mut lags_ms: Vec<f64> = commits
        .lines()
        .map(|line| {
            let (id, ts) = line.split_once('|').unwrap();
            let commit: i64 = ts.parse().unwrap();
            (received[id] - commit) as f64 / 1000.0
        })
        .collect();
    assert_eq!(lags_ms.len(), UPDATES);
    lags_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "LAG {kind:>7}: {UPDATES} updates ({messages} bus messages), commit -> received on the bus: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}; {}",
        pct(&lags_ms, 0.50),
        pct(&lags_ms, 0.99),
        lags_ms[lags_ms.len() - 1],
        if kind == "logical" {
            " (poll interval 50 ms)"
        } else {
            ""
        },
        if real_sinks {
            "Redis shared tier + NATS bus"
        } else {
            "in-process sinks"
        }
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_notify() {
    measure("notify", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_logical() {
    measure("logical", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_notify_redis_nats() {
    measure("notify", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_logical_redis_nats() {
    measure("logical", true).await;
}
