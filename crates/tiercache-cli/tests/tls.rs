//! The CLI through Redis and NATS that require TLS and credentials, with
//! CAs the test kit generated; wrong ones are named by their flag.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use tiercache_testkit::{NatsAuth, NatsOptions, NatsServer, RedisServer, TlsCerts};

const PASSWORD: &str = "cli-redis-pw";
const TOKEN: &str = "cli-nats-token";

fn start() -> (RedisServer, NatsServer) {
    let redis = RedisServer::start_tls_with_args(&["--requirepass", PASSWORD]).unwrap();
    let nats = NatsServer::start_with(
        NatsOptions::new()
            .tls(true)
            .auth(NatsAuth::Token(TOKEN.to_owned())),
    )
    .unwrap();
    (redis, nats)
}

fn tiercache(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiercache"));
    for var in [
        "TIERCACHE_CONFIG",
        "TIERCACHE_REDIS_URL",
        "TIERCACHE_REDIS_PASSWORD",
        "TIERCACHE_REDIS_TLS_CA_CERT",
        "TIERCACHE_NATS_URL",
        "TIERCACHE_NATS_TLS_CA_CERT",
        "TIERCACHE_NATS_TOKEN",
        "TIERCACHE_SIGNING_KEY",
    ] {
        c.env_remove(var);
    }
    c.args(args).envs(env.iter().copied());
    c.output().unwrap()
}

fn args(redis: &RedisServer, nats: &NatsServer, redis_ca: &str, nats_ca: &str) -> Vec<String> {
    [
        "invalidate",
        "--namespace",
        "tls",
        "--key",
        "k1",
        "--redis-url",
        &redis.url(),
        "--redis-password",
        PASSWORD,
        "--redis-tls-ca",
        redis_ca,
        "--nats-url",
        &nats.url(),
        "--nats-tls-ca",
        nats_ca,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn invalidate_over_tls_with_a_password_and_a_token() {
    let (redis, nats) = start();
    let redis_ca = redis.ca_cert_path().unwrap().display().to_string();
    let nats_ca = nats.ca_cert_path().unwrap().display().to_string();

    // The token from the environment.
    let out = tiercache(
        &args(&redis, &nats, &redis_ca, &nats_ca),
        &[("TIERCACHE_NATS_TOKEN", TOKEN)],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("invalidated 1 key(s)"), "{shown}");
    assert!(shown.contains("published 1 message(s)"), "{shown}");

    // A wrong token: named by its flag.
    let mut a = args(&redis, &nats, &redis_ca, &nats_ca);
    a.extend(["--nats-token".to_owned(), "wrong".to_owned()]);
    let out = tiercache(&a, &[]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("--nats-token"), "{shown}");

    // Another CA for Redis: named by its flag.
    let other = TlsCerts::generate().unwrap();
    let other_ca = other.ca_cert_path().display().to_string();
    let out = tiercache(
        &args(&redis, &nats, &other_ca, &nats_ca),
        &[("TIERCACHE_NATS_TOKEN", TOKEN)],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("--redis-tls-ca"), "{shown}");
    assert!(shown.contains("not trusted"), "{shown}");

    // Another CA for NATS, from the environment: named by its variable's flag.
    let mut a = args(&redis, &nats, &redis_ca, &nats_ca);
    let at = a.iter().position(|s| s == "--nats-tls-ca").unwrap();
    a.drain(at..at + 2);
    let out = tiercache(
        &a,
        &[
            ("TIERCACHE_NATS_TOKEN", TOKEN),
            ("TIERCACHE_NATS_TLS_CA_CERT", &other_ca),
        ],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("--nats-tls-ca"), "{shown}");

    // A wrong Redis password.
    let mut a = args(&redis, &nats, &redis_ca, &nats_ca);
    let at = a.iter().position(|s| s == PASSWORD).unwrap();
    a[at] = "wrong".to_owned();
    let out = tiercache(&a, &[("TIERCACHE_NATS_TOKEN", TOKEN)]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("--redis-password"), "{shown}");
}
