//! TLS (and a password) against a real redis-server serving TLS only,
//! with a CA the test kit generated.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use tiercache_core::backend::conformance;
use tiercache_redis::{BuildError, RedisBus, RedisSharedTier};
use tiercache_testkit::{RedisServer, TlsCerts};

const PASSWORD: &str = "tls-sekrit";

fn server() -> RedisServer {
    RedisServer::start_tls_with_args(&["--requirepass", PASSWORD]).unwrap()
}

fn config_field(e: &BuildError) -> &'static str {
    match e {
        BuildError::Config { field, .. } => field,
        other => panic!("expected a config error naming a field, got: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_tier_conforms_over_tls() {
    let server = server();
    let tier = RedisSharedTier::builder()
        .url(server.url())
        .password(PASSWORD)
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    conformance::shared_tier(&tier).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_tier_takes_the_ca_as_pem_bytes() {
    let server = server();
    let pem = server.tls().unwrap().ca_pem().unwrap();
    let tier = RedisSharedTier::builder()
        .url(server.url())
        .password(PASSWORD)
        .tls_ca_cert_pem(pem)
        .build()
        .await;
    assert!(tier.is_ok(), "{:?}", tier.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bus_conforms_over_tls() {
    let server = server();
    let bus = || {
        RedisBus::builder()
            .url(server.url())
            .password(PASSWORD)
            .tls_ca_cert(server.ca_cert_path().unwrap())
            .build()
    };
    let a = bus().await.unwrap();
    let b = bus().await.unwrap();
    conformance::bus_with_heartbeat(&a, &b, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_ca_is_named_and_does_not_hang() {
    let server = server();
    let other = TlsCerts::generate().unwrap();
    let started = std::time::Instant::now();
    let e = RedisSharedTier::builder()
        .url(server.url())
        .password(PASSWORD)
        .tls_ca_cert(other.ca_cert_path())
        .build()
        .await
        .expect_err("an untrusted server certificate must fail the build");
    assert_eq!(config_field(&e), "tls_ca_cert", "{e}");
    eprintln!("wrong CA: {e}");
    assert!(e.to_string().contains("not trusted"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let e = RedisBus::builder()
        .url(server.url())
        .password(PASSWORD)
        .tls_ca_cert(other.ca_cert_path())
        .build()
        .await
        .expect_err("the bus names an untrusted certificate too");
    assert_eq!(config_field(&e), "tls_ca_cert", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_is_named() {
    let server = server();
    let e = RedisSharedTier::builder()
        .url(server.url())
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .password("wrong")
        .build()
        .await
        .expect_err("a wrong password must fail");
    eprintln!("wrong password: {e}");
    assert_eq!(config_field(&e), "password", "{e}");
    let e = RedisBus::builder()
        .url(server.url())
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .password("wrong")
        .build()
        .await
        .expect_err("a wrong password must fail the bus");
    assert_eq!(config_field(&e), "password", "{e}");
    // No password at all: the TLS handshake works, the server says NOAUTH.
    let e = RedisSharedTier::builder()
        .url(server.url())
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .build()
        .await
        .expect_err("a missing password must fail");
    assert!(matches!(e, BuildError::Connect(_)), "{e}");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_errors_of_the_ca_are_named() {
    let server = server();
    let missing = RedisSharedTier::builder()
        .url(server.url())
        .tls_ca_cert("/nonexistent/ca.pem")
        .build()
        .await
        .err()
        .unwrap();
    assert_eq!(config_field(&missing), "tls_ca_cert", "{missing}");
    let not_pem = RedisSharedTier::builder()
        .url(server.url())
        .tls_ca_cert_pem(b"not a certificate".to_vec())
        .build()
        .await
        .err()
        .unwrap();
    assert_eq!(config_field(&not_pem), "tls_ca_cert", "{not_pem}");
    let plain_url = RedisSharedTier::builder()
        .url(format!("redis://127.0.0.1:{}", server.port()))
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .build()
        .await
        .err()
        .unwrap();
    assert_eq!(config_field(&plain_url), "tls_ca_cert", "{plain_url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_over_tls_after_a_restart() {
    let mut server = server();
    let tier = RedisSharedTier::builder()
        .url(server.url())
        .password(PASSWORD)
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    use tiercache_core::backend::SharedTier as _;
    tokio::task::block_in_place(|| {
        server.kill();
        server.restart().unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if tier.get("tls:k").await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnect over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bus_still_builds_while_a_tls_server_is_down() {
    let mut server = server();
    let ca = server.ca_cert_path().unwrap();
    tokio::task::block_in_place(|| server.kill());
    let bus = RedisBus::builder()
        .url(server.url())
        .password(PASSWORD)
        .tls_ca_cert(&ca)
        .build()
        .await;
    assert!(bus.is_ok(), "{:?}", bus.err());
    let tier = RedisSharedTier::builder()
        .url(server.url())
        .password(PASSWORD)
        .tls_ca_cert(&ca)
        .build()
        .await
        .expect_err("the shared tier connects at build");
    assert!(matches!(tier, BuildError::Connect(_)), "{tier}");
}
