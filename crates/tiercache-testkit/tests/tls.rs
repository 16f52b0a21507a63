//! TLS servers start, answer over TLS only, and restart on the same port.

use std::process::Command;

use tiercache_testkit::{NatsAuth, NatsOptions, NatsServer, RedisServer, TlsCerts};

fn redis_cli_tls(server: &RedisServer, ca: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(extra)
        .arg("PING")
        .output()
        .expect("redis-cli runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn redis_tls_answers_over_tls_and_restarts() {
    let mut redis = RedisServer::start_tls_with_args(&["--requirepass", "pw"]).expect("start");
    assert!(
        redis.url().starts_with("rediss://127.0.0.1:"),
        "{}",
        redis.url()
    );
    let ca = redis.ca_cert_path().expect("a CA");
    assert!(ca.exists());
    let ok = redis_cli_tls(&redis, &ca, &["--no-auth-warning", "-a", "pw"]);
    assert!(ok.contains("PONG"), "{ok}");
    // Another CA is not trusted.
    let other = TlsCerts::generate().expect("certs");
    let bad = redis_cli_tls(
        &redis,
        &other.ca_cert_path(),
        &["--no-auth-warning", "-a", "pw"],
    );
    assert!(!bad.contains("PONG"), "{bad}");
    let url = redis.url();
    redis.kill();
    redis.restart().expect("restart");
    assert_eq!(redis.url(), url);
    let ok = redis_cli_tls(&redis, &ca, &["--no-auth-warning", "-a", "pw"]);
    assert!(ok.contains("PONG"), "{ok}");
}

#[test]
fn nats_tls_with_token_starts_and_restarts() {
    let mut nats = NatsServer::start_with(
        NatsOptions::new()
            .tls(true)
            .auth(NatsAuth::Token("t0ken".to_owned())),
    )
    .expect("start");
    assert!(nats.url().starts_with("tls://127.0.0.1:"), "{}", nats.url());
    assert!(nats.ca_cert_path().expect("a CA").exists());
    let conf = std::fs::read_to_string(nats.dir().join("nats.conf")).expect("config");
    assert!(
        conf.contains("tls {") && conf.contains("\"t0ken\""),
        "{conf}"
    );
    nats.pause();
    nats.resume();
    nats.kill();
    nats.restart().expect("restart");
    assert!(nats.is_running());
    // The plain constructor still works.
    let plain = NatsServer::start().expect("plain");
    assert!(plain.url().starts_with("nats://"));
}
