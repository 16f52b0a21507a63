//! TLS and authentication against a real nats-server that requires both,
//! with a CA the test kit generated.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use tiercache_nats::NatsBusError;
use tiercache_testkit::{NatsAuth, NatsOptions, NatsServer, TlsCerts};

const TOKEN: &str = "tls-t0ken";

fn server(auth: NatsAuth) -> NatsServer {
    common::blocking(move || NatsServer::start_with(NatsOptions::new().tls(true).auth(auth)))
        .unwrap()
}

fn rejected_field(e: &NatsBusError) -> &'static str {
    match e {
        NatsBusError::Rejected { field, .. } => field,
        NatsBusError::Config(c) => c.field,
        other => panic!("expected an error naming a setting, got: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_over_tls_with_a_token() {
    let server = server(NatsAuth::Token(TOKEN.to_owned()));
    let ca = server.ca_cert_path().unwrap();
    let bus = || {
        common::builder(&server.url())
            .tls_ca_cert(&ca)
            .require_tls(true)
            .token(TOKEN)
            .build()
    };
    let a = bus().await.unwrap();
    let b = bus().await.unwrap();
    tiercache_core::backend::conformance::bus_with_heartbeat(&a, &b, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_over_a_nats_url_with_require_tls() {
    let server = server(NatsAuth::UserPassword {
        user: "app".to_owned(),
        password: "pw".to_owned(),
    });
    let plain_scheme = format!("nats://127.0.0.1:{}", server.port());
    let bus = common::builder(&plain_scheme)
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .require_tls(true)
        .user_password("app", "pw")
        .build()
        .await;
    assert!(bus.is_ok(), "{:?}", bus.err());
    let e = common::builder(&plain_scheme)
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .require_tls(true)
        .user_password("app", "nope")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("a wrong password must fail");
    assert_eq!(rejected_field(&e), "user_password", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_named_and_does_not_hang() {
    let server = server(NatsAuth::Token(TOKEN.to_owned()));
    let started = Instant::now();
    let e = common::builder(&server.url())
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .token("wrong")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("a wrong token must fail");
    eprintln!("wrong token: {e}");
    assert_eq!(rejected_field(&e), "token", "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    // No credentials at all: named too.
    let e = common::builder(&server.url())
        .tls_ca_cert(server.ca_cert_path().unwrap())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("missing credentials must fail");
    assert_eq!(rejected_field(&e), "token", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_named_and_does_not_hang() {
    let server = server(NatsAuth::Token(TOKEN.to_owned()));
    let other = common::blocking(TlsCerts::generate).unwrap();
    let started = Instant::now();
    let e = common::builder(&server.url())
        .tls_ca_cert(other.ca_cert_path())
        .token(TOKEN)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("an untrusted certificate must fail");
    assert_eq!(rejected_field(&e), "tls_ca_cert", "{e}");
    eprintln!("wrong CA: {e}");
    assert!(e.to_string().contains("not trusted"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_a_plain_server() {
    let server = common::blocking(NatsServer::start).unwrap();
    let e = common::builder(&server.url())
        .require_tls(true)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("a plain server must be refused");
    assert_eq!(rejected_field(&e), "require_tls", "{e}");
}
