//! Against a real standalone redis-server.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tiercache_core::backend::{Bus, BusEvent, SharedError, SharedEvent, SharedTier, conformance};
use tiercache_redis::{BuildError, RedisBus, RedisSharedTier};
use tiercache_testkit::{RedisServer, Resp, redis_command};

use common::{two_instances, unique, until_working, wait_event};

async fn tier(url: &str) -> RedisSharedTier {
    RedisSharedTier::builder().url(url).build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conforms() {
    let server = RedisServer::start().unwrap();
    conformance::shared_tier(&tier(&server.url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_values_leases_and_tags() {
    let server = RedisServer::start().unwrap();
    two_instances(&tier(&server.url()).await, &tier(&server.url()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bus_conforms() {
    let server = RedisServer::start().unwrap();
    let a = RedisBus::connect(server.url()).await.unwrap();
    let b = RedisBus::connect(server.url()).await.unwrap();
    conformance::bus_with_heartbeat(&a, &b, std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_with_acl_user_and_password() {
    let server = RedisServer::start_with_args(&["--requirepass", "sekrit"]).unwrap();
    let port = server.port();
    let r = redis_command(port, &["AUTH", "sekrit"]);
    assert!(r.is_ok());
    tokio::task::block_in_place(|| {
        let replies = tiercache_testkit::redis_pipeline(
            port,
            &[
                &["AUTH", "sekrit"],
                &["ACL", "SETUSER", "app", "on", ">apppw", "~*", "&*", "+@all"],
            ],
        )
        .unwrap();
        assert!(!replies.iter().any(Resp::is_error), "{replies:?}");
    });
    let url = format!("redis://127.0.0.1:{port}");
    // Without credentials the first connection fails with a clear error.
    let err = RedisSharedTier::builder()
        .url(&url)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Connect(_)), "{err}");
    // Password only (the default user), then an ACL user.
    let t = RedisSharedTier::builder()
        .url(&url)
        .password("sekrit")
        .build()
        .await
        .unwrap();
    conformance::shared_tier(&t).await;
    let t = RedisSharedTier::builder()
        .url(&url)
        .username("app")
        .password("apppw")
        .build()
        .await
        .unwrap();
    t.set("auth:k", Bytes::from_static(b"v"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        t.get("auth:k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
    let bus = RedisBus::builder()
        .url(&url)
        .username("app")
        .password("apppw")
        .build()
        .await
        .unwrap();
    let bus2 = RedisBus::builder()
        .url(&url)
        .username("app")
        .password("apppw")
        .build()
        .await
        .unwrap();
    conformance::bus_with_heartbeat(&bus, &bus2, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bytes_and_wrong_types_are_bytes_or_errors_never_panics() {
    let server = RedisServer::start().unwrap();
    let port = server.port();
    let t = tier(&server.url()).await;
    let ns = unique("bad");
    let sk = |s: &str| format!("{ns}:{s}");
    let raw = |args: &[&str]| {
        let args: Vec<&str> = args.to_vec();
        tokio::task::block_in_place(|| {
            let r = redis_command(port, &args).unwrap();
            assert!(!r.is_error(), "{r:?}");
        })
    };
    // A value that is not a tiercache envelope comes back as bytes.
    raw(&[
        "SET",
        &format!("{{{}}}", sk("foreign")),
        "not an envelope \u{1}\u{ff}",
    ]);
    assert_eq!(
        t.get(&sk("foreign")).await.unwrap(),
        Some(Bytes::from(
            "not an envelope \u{1}\u{ff}".as_bytes().to_vec()
        ))
    );
    // Wrong types and garbage metadata are errors, not panics.
    raw(&["LPUSH", &format!("{{{}}}", sk("list")), "x"]);
    assert!(matches!(
        t.get(&sk("list")).await,
        Err(SharedError::Server(_))
    ));
    // MGET answers nil for a key of another type.
    let many = t.get_many(&[sk("list"), sk("foreign")]).await.unwrap();
    assert_eq!(many[0], None);
    raw(&["SET", &format!("{{{}}}:v", sk("ver")), "not-a-number"]);
    assert!(matches!(
        t.begin_fill(&ns, &sk("ver"), None).await,
        Err(SharedError::Server(_))
    ));
    assert!(t.invalidate(&[sk("ver")]).await.is_err());
    raw(&["SET", &format!("{{tc:{ns}}}:clock"), "-12"]);
    assert!(matches!(
        t.begin_fill(&ns, &sk("x"), None).await,
        Err(SharedError::Server(_))
    ));
    raw(&["SET", &format!("{{tc:{ns}}}:t:tag"), "1.5e3"]);
    assert!(t.tag_versions(&ns, &["tag".to_owned()]).await.is_err());
    raw(&["DEL", &format!("{{tc:{ns}}}:clock")]);
    raw(&["HSET", &format!("{{tc:{ns}}}:clock"), "f", "v"]);
    assert!(t.invalidate_tags(&ns, &["tag".to_owned()]).await.is_err());
    raw(&["HSET", &format!("{{{}}}:l", sk("lease")), "f", "v"]);
    let ticket = t
        .begin_fill(&ns, &sk("lease"), Some(Duration::from_secs(1)))
        .await;
    // SET NX on an existing key of another type just fails to take the lease.
    assert!(ticket.map(|t| t.lease_held_elsewhere).unwrap_or(true));
    // Server errors do not open the breaker: the server is alive.
    assert!(!t.breaker_open());
    assert!(t.get(&sk("foreign")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_errors_name_the_field() {
    let field = |e: BuildError| match e {
        BuildError::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    };
    assert_eq!(
        field(RedisSharedTier::builder().build().await.unwrap_err()),
        "url"
    );
    assert_eq!(
        field(
            RedisSharedTier::builder()
                .url("nope://x")
                .build()
                .await
                .unwrap_err()
        ),
        "url"
    );
    assert_eq!(
        field(
            RedisSharedTier::builder()
                .url("redis://127.0.0.1:1")
                .cluster(["redis://127.0.0.1:2"])
                .build()
                .await
                .unwrap_err()
        ),
        "cluster"
    );
    assert_eq!(
        field(
            RedisSharedTier::builder()
                .url("redis://127.0.0.1:1")
                .call_timeout(Duration::ZERO)
                .build()
                .await
                .unwrap_err()
        ),
        "call_timeout"
    );
    assert_eq!(
        field(
            RedisSharedTier::builder()
                .url("redis://127.0.0.1:1")
                .breaker(0, Duration::from_secs(1))
                .build()
                .await
                .unwrap_err()
        ),
        "breaker"
    );
    assert_eq!(
        field(
            RedisSharedTier::builder()
                .sentinel(Vec::<String>::new(), "m")
                .build()
                .await
                .unwrap_err()
        ),
        "sentinel"
    );
    assert_eq!(field(RedisBus::builder().build().await.unwrap_err()), "url");
    assert_eq!(
        field(
            RedisBus::builder()
                .url("redis://127.0.0.1:1")
                .heartbeat(Duration::ZERO)
                .build()
                .await
                .unwrap_err()
        ),
        "heartbeat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lazy_start_while_down_then_connects() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    tokio::task::block_in_place(|| server.stop());
    let t = RedisSharedTier::builder()
        .url(&url)
        .connect_lazily(true)
        .build()
        .await
        .unwrap();
    let start = std::time::Instant::now();
    assert!(t.get("lazy:k").await.is_err());
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "fails fast while down"
    );
    tokio::task::block_in_place(|| server.restart()).unwrap();
    assert!(
        until_working(&t, "lazy:k", Duration::from_secs(5))
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn killed_server_fails_fast_opens_breaker_and_recovers() {
    let mut server = RedisServer::start().unwrap();
    // Generous for a loaded 2-core CI machine running other tests at once:
    // a healthy call must never exceed it, and calls to a dead server must
    // still fail within it.
    let budget = Duration::from_millis(250);
    let t = RedisSharedTier::builder()
        .url(server.url())
        .call_timeout(budget)
        .breaker(5, Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let mut events = t.events().unwrap();
    let ns = unique("fault");
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let breaker_refusals = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (t, stop, slowest, refusals, errors) = (
            t.clone(),
            stop.clone(),
            slowest_us.clone(),
            breaker_refusals.clone(),
            errors.clone(),
        );
        let key = format!("{ns}:{i}");
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let start = std::time::Instant::now();
                let r = if i % 2 == 0 {
                    t.set(&key, Bytes::from_static(b"v"), Duration::from_secs(60))
                        .await
                        .map(drop)
                } else {
                    t.get(&key).await.map(drop)
                };
                slowest.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                match r {
                    Err(SharedError::BreakerOpen) => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {}
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no errors while the server is up"
    );
    slowest_us.store(0, Ordering::Relaxed);

    tokio::task::block_in_place(|| server.kill());
    assert!(
        wait_event(
            &mut events,
            SharedEvent::Disconnected,
            Duration::from_secs(3)
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(errors.load(Ordering::Relaxed) > 0, "calls fail while down");
    assert!(
        breaker_refusals.load(Ordering::Relaxed) > 0,
        "the breaker opened and refused calls"
    );
    let slowest = Duration::from_micros(slowest_us.load(Ordering::Relaxed));
    // Generous margin for a loaded test machine; a hang would be seconds.
    assert!(
        slowest < budget + Duration::from_millis(250),
        "a call took {slowest:?} while Redis was down"
    );

    tokio::task::block_in_place(|| server.restart()).unwrap();
    let took = until_working(&t, &format!("{ns}:probe"), Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "the tier works again within 2 s of the restart"
    );
    assert!(
        wait_event(
            &mut events,
            SharedEvent::Reconnected,
            Duration::from_secs(1)
        )
        .await
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert!(!t.breaker_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bus_reports_disconnect_and_resubscribes() {
    let mut server = RedisServer::start().unwrap();
    let bus = RedisBus::builder()
        .url(server.url())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let ns = unique("bus");
    let mut sub = bus.subscribe(&ns).await.unwrap();
    assert_eq!(
        next(&mut sub, |e| matches!(e, BusEvent::Connected { .. })).await,
        BusEvent::Connected { resumed: false }
    );
    tokio::task::block_in_place(|| server.kill());
    assert!(
        bus.publish(&ns, Bytes::from_static(b"lost")).await.is_err(),
        "publish fails while down"
    );
    next(&mut sub, |e| *e == BusEvent::Disconnected).await;
    tokio::task::block_in_place(|| server.restart()).unwrap();
    assert_eq!(
        next(&mut sub, |e| matches!(e, BusEvent::Connected { .. })).await,
        BusEvent::Connected { resumed: false }
    );
    // The publisher reconnects too.
    let mut sent = false;
    for _ in 0..50 {
        if bus.publish(&ns, Bytes::from_static(b"back")).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent);
    assert_eq!(
        next(&mut sub, |e| matches!(e, BusEvent::Message(_))).await,
        BusEvent::Message(Bytes::from_static(b"back"))
    );
    next(&mut sub, |e| *e == BusEvent::Heartbeat).await;
}

async fn next(
    sub: &mut futures::stream::BoxStream<'static, BusEvent>,
    want: fn(&BusEvent) -> bool,
) -> BusEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(ev)) if want(&ev) => return ev,
            Ok(Some(_)) => continue,
            other => panic!("stream ended or timed out: {other:?}"),
        }
    }
}
