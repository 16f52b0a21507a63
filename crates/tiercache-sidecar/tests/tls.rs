//! The sidecar through Postgres, Redis and NATS that require TLS (and
//! Redis and NATS credentials), with CAs the test kit generated; and wrong
//! CAs and credentials named at `check`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tiercache_core::backend::{Bus, MessageCodec, SharedTier};
use tiercache_nats::NatsBus;
use tiercache_redis::{RedisBus, RedisSharedTier};
use tiercache_sidecar::Config;
use tiercache_testkit::{NatsAuth, NatsOptions, NatsServer, Postgres, RedisServer, TlsCerts};

const KEY: &str = "sidecar-tls-key";
const REDIS_PASSWORD: &str = "redis-tls-pw";
const NATS_TOKEN: &str = "nats-tls-token";

struct Servers {
    pg: Postgres,
    redis: RedisServer,
    nats: NatsServer,
}

/// Postgres that takes TCP connections over TLS only (`hostssl`).
async fn start_pg_tls() -> Postgres {
    tokio::task::spawn_blocking(|| {
        let pg = Postgres::start_tls().expect("postgres starts");
        pg.psql(SCHEMA).expect("schema");
        pg
    })
    .await
    .unwrap()
}

async fn start_all() -> Servers {
    let pg = start_pg_tls().await;
    let (redis, nats) = tokio::task::spawn_blocking(|| {
        (
            RedisServer::start_tls_with_args(&["--requirepass", REDIS_PASSWORD])
                .expect("redis starts"),
            NatsServer::start_with(
                NatsOptions::new()
                    .tls(true)
                    .auth(NatsAuth::Token(NATS_TOKEN.to_owned())),
            )
            .expect("nats starts"),
        )
    })
    .await
    .unwrap();
    Servers { pg, redis, nats }
}

/// The config, with the CA paths given (`redis_ca`, `nats_ca`).
fn tls_config(sv: &Servers, bus: &str, redis_ca: &str, nats_ca: &str) -> String {
    let bus_section = match bus {
        "nats" => format!(
            r#"
        [bus]
        kind = "nats"
        url = "{url}"
        signing_key = "{KEY}"
        tls_ca_cert = "{nats_ca}"
        require_tls = true
        token = "{NATS_TOKEN}"
        "#,
            url = sv.nats.url()
        ),
        _ => format!(
            r#"
        [bus]
        kind = "redis"
        signing_key = "{KEY}"
        "#
        ),
    };
    format!(
        r#"
        [source]
        kind = "logical"
        database_url = "{pg}"
        tls_ca_cert = "{pg_ca}"
        poll_interval_ms = 20

        [redis]
        url = "{redis}"
        password = "{REDIS_PASSWORD}"
        tls_ca_cert = "{redis_ca}"

        {bus_section}

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
        pg_ca = ca(sv.pg.ca_cert_path()),
        redis = sv.redis.url(),
    )
}

fn ca(path: Option<std::path::PathBuf>) -> String {
    path.unwrap().display().to_string()
}

async fn app_shared(sv: &Servers) -> RedisSharedTier {
    RedisSharedTier::builder()
        .url(sv.redis.url())
        .password(REDIS_PASSWORD)
        .tls_ca_cert(sv.redis.ca_cert_path().unwrap())
        .call_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap()
}

async fn app_bus(sv: &Servers, bus: &str) -> Arc<dyn Bus> {
    match bus {
        "nats" => Arc::new(
            NatsBus::builder()
                .url(sv.nats.url())
                .tls_ca_cert(sv.nats.ca_cert_path().unwrap())
                .token(NATS_TOKEN)
                .build()
                .await
                .unwrap(),
        ),
        _ => Arc::new(
            RedisBus::builder()
                .url(sv.redis.url())
                .password(REDIS_PASSWORD)
                .tls_ca_cert(sv.redis.ca_cert_path().unwrap())
                .build()
                .await
                .unwrap(),
        ),
    }
}

async fn update_through_tls(bus: &str) {
    let sv = start_all().await;
    let text = tls_config(
        &sv,
        bus,
        &ca(sv.redis.ca_cert_path()),
        &ca(sv.nats.ca_cert_path()),
    );
    let config = Config::parse(&text).unwrap();
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

    // `check` (not lazy) connects to everything over TLS.
    tiercache_sidecar::check(&config).await.unwrap();

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
        "key deleted in Redis over TLS"
    );
    trigger.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_runs_with_redis_and_nats_over_tls() {
    update_through_tls("nats").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_runs_with_the_redis_bus_over_tls() {
    update_through_tls("redis").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_wrong_ca_and_a_wrong_token() {
    let sv = start_all().await;
    let other = tokio::task::spawn_blocking(TlsCerts::generate)
        .await
        .unwrap()
        .unwrap();
    let other_ca = other.ca_cert_path().display().to_string();

    let text = tls_config(&sv, "nats", &other_ca, &ca(sv.nats.ca_cert_path()));
    let config = Config::parse(&text).unwrap();
    let e = tiercache_sidecar::check(&config)
        .await
        .expect_err("an untrusted Redis certificate fails check");
    assert!(e.to_string().contains("tls_ca_cert"), "{e}");

    let text = tls_config(&sv, "nats", &ca(sv.redis.ca_cert_path()), &other_ca);
    let config = Config::parse(&text).unwrap();
    let e = tiercache_sidecar::check(&config)
        .await
        .expect_err("an untrusted NATS certificate fails check");
    assert!(e.to_string().contains("tls_ca_cert"), "{e}");

    let good = tls_config(
        &sv,
        "nats",
        &ca(sv.redis.ca_cert_path()),
        &ca(sv.nats.ca_cert_path()),
    );
    let text = good.replace(NATS_TOKEN, "wrong-token");
    let config = Config::parse(&text).unwrap();
    let e = tiercache_sidecar::check(&config)
        .await
        .expect_err("a wrong token fails check");
    assert!(e.to_string().contains("token"), "{e}");
}

#[test]
fn config_names_bad_tls_fields() {
    let err = |text: &str| Config::parse(text).err().unwrap().to_string();
    let base = r#"
        [source]
        kind = "notify"
        database_url = "postgres://postgres@127.0.0.1:1/postgres"
        [redis]
        url = "rediss://127.0.0.1:1"
        tls_ca_cert = "/nonexistent/ca.pem"
        [[rules]]
        table = "products"
        namespace = "products"
        keys = ["{id}"]
    "#;
    assert!(err(base).contains("redis.tls_ca_cert"), "{}", err(base));
    let nats = r#"
        [source]
        kind = "notify"
        database_url = "postgres://postgres@127.0.0.1:1/postgres"
        [bus]
        kind = "nats"
        url = "tls://127.0.0.1:1"
        token = "t"
        user = "u"
        password = "p"
        [[rules]]
        table = "products"
        namespace = "products"
        keys = ["{id}"]
    "#;
    assert!(err(nats).contains("bus.user"), "{}", err(nats));
    let user_only = nats
        .replace("token = \"t\"\n", "")
        .replace("password = \"p\"\n", "");
    assert!(
        err(&user_only).contains("bus.password"),
        "{}",
        err(&user_only)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_needs_tls_and_the_right_ca() {
    let sv = start_all().await;
    let good = tls_config(
        &sv,
        "nats",
        &ca(sv.redis.ca_cert_path()),
        &ca(sv.nats.ca_cert_path()),
    );
    let pg_ca = ca(sv.pg.ca_cert_path());
    // Without the CA the sidecar does not ask for TLS, and the server
    // (hostssl only) refuses it.
    let config = Config::parse(&good.replace(&format!("tls_ca_cert = \"{pg_ca}\""), "")).unwrap();
    let e = tiercache_sidecar::check(&config)
        .await
        .expect_err("plain text to a hostssl-only server fails");
    assert!(e.to_string().contains("source.database_url"), "{e}");
    // Another CA: the handshake fails.
    let other = tokio::task::spawn_blocking(TlsCerts::generate)
        .await
        .unwrap()
        .unwrap();
    let config =
        Config::parse(&good.replace(&pg_ca, &other.ca_cert_path().display().to_string())).unwrap();
    let e = tiercache_sidecar::check(&config)
        .await
        .expect_err("an untrusted Postgres certificate fails check");
    eprintln!("wrong postgres CA: {e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(e.to_string().contains("source.tls_ca_cert"), "{e}");
    // `sslmode=require` in the URL with the CA works too.
    let url = sv.pg.url();
    let config = Config::parse(&good.replace(&url, &format!("{url}?sslmode=require"))).unwrap();
    tiercache_sidecar::check(&config).await.unwrap();
}
