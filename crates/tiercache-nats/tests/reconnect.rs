//! Fault tests: the nats-server is killed (SIGKILL) and restarted on the same
//! port while subscriptions are open.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Events, blocking, builder, expect, is_message};
use futures::StreamExt;
use tiercache_core::backend::{Bus, BusError, BusEvent};
use tiercache_nats::NatsBus;
use tiercache_testkit::NatsServer;

/// Publishes until the bus accepts it (it is reconnecting).
async fn publish_when_back(bus: &NatsBus, ns: &str, payload: Bytes) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match bus.publish(ns, payload.clone()).await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publisher did not come back: {e}"),
        }
    }
}

async fn connected(events: &mut Events, within: Duration) -> bool {
    match expect(events, within, "Connected", |e| {
        matches!(e, BusEvent::Connected { .. })
    })
    .await
    .0
    {
        BusEvent::Connected { resumed } => resumed,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_mode_survives_a_killed_server() {
    let mut server = blocking(NatsServer::start).unwrap();
    let url = server.url();
    let sub_bus = builder(&url).build().await.unwrap();
    let pub_bus = builder(&url).build().await.unwrap();
    let ns = common::unique("ns");
    let mut events = sub_bus.subscribe(&ns).await.unwrap();
    assert!(
        !connected(&mut events, Duration::from_secs(5)).await,
        "core mode never claims resumed"
    );
    pub_bus
        .publish(&ns, Bytes::from_static(b"before"))
        .await
        .unwrap();
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(ev, BusEvent::Message(Bytes::from_static(b"before")));

    blocking(|| server.kill());
    let killed = Instant::now();
    expect(&mut events, Duration::from_secs(5), "Disconnected", |e| {
        *e == BusEvent::Disconnected
    })
    .await;
    eprintln!("Disconnected {:?} after SIGKILL", killed.elapsed());
    // Each connection notices on its own.
    common::until_down(&sub_bus).await;
    common::until_down(&pub_bus).await;
    assert!(
        matches!(
            pub_bus.publish(&ns, Bytes::from_static(b"lost")).await,
            Err(BusError::Unavailable(_))
        ),
        "publishing while disconnected fails at once"
    );
    // Quiet while down: no heartbeat, no message.
    for ev in common::drain_for(&mut events, Duration::from_millis(1200)).await {
        assert!(
            !matches!(
                ev,
                BusEvent::Heartbeat | BusEvent::Message(_) | BusEvent::Connected { .. }
            ),
            "{ev:?} while the server is down"
        );
    }

    blocking(|| server.restart()).unwrap();
    let restarted = Instant::now();
    let (ev, skipped) = expect(&mut events, Duration::from_secs(10), "Connected", |e| {
        matches!(e, BusEvent::Connected { .. })
    })
    .await;
    assert_eq!(
        ev,
        BusEvent::Connected { resumed: false },
        "skipped {skipped:?}"
    );
    assert!(
        skipped.iter().all(|e| !matches!(e, BusEvent::Heartbeat)),
        "no heartbeat before Connected: {skipped:?}"
    );
    eprintln!("Connected {:?} after restart", restarted.elapsed());

    publish_when_back(&pub_bus, &ns, Bytes::from_static(b"after")).await;
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(
        ev,
        BusEvent::Message(Bytes::from_static(b"after")),
        "messages flow again"
    );
    expect(&mut events, Duration::from_secs(2), "Heartbeat", |e| {
        *e == BusEvent::Heartbeat
    })
    .await;

    // A second outage works the same.
    blocking(|| server.kill());
    expect(&mut events, Duration::from_secs(5), "Disconnected", |e| {
        *e == BusEvent::Disconnected
    })
    .await;
    blocking(|| server.restart()).unwrap();
    assert!(!connected(&mut events, Duration::from_secs(10)).await);
    publish_when_back(&pub_bus, &ns, Bytes::from_static(b"again")).await;
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(ev, BusEvent::Message(Bytes::from_static(b"again")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_replays_what_was_missed() {
    let mut server = blocking(NatsServer::start_jetstream).unwrap();
    let url = server.url();
    let stream = common::stream_name();
    let sub_bus = builder(&url).jetstream(&stream).build().await.unwrap();
    let pub_bus = builder(&url).jetstream(&stream).build().await.unwrap();
    let ns = common::unique("ns");
    let other_ns = common::unique("ns");
    let mut events = sub_bus.subscribe(&ns).await.unwrap();
    assert!(
        !connected(&mut events, Duration::from_secs(5)).await,
        "a first subscription is not resumed"
    );
    pub_bus
        .publish(&ns, Bytes::from_static(b"m0"))
        .await
        .unwrap();
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(ev, BusEvent::Message(Bytes::from_static(b"m0")));

    blocking(|| server.kill());
    expect(&mut events, Duration::from_secs(5), "Disconnected", |e| {
        *e == BusEvent::Disconnected
    })
    .await;
    blocking(|| server.restart()).unwrap();

    // The subscriber's stream is not read while the publisher goes on: its
    // consumer is only recreated when it is read again, after these.
    let n = 20u8;
    for i in 1..=n {
        publish_when_back(&pub_bus, &ns, Bytes::from(vec![b'm', i])).await;
        pub_bus
            .publish(&other_ns, Bytes::from(vec![b'o', i]))
            .await
            .unwrap();
    }

    // The replay first, every message once and in order, and only then
    // `Connected { resumed: true }`: a subscriber told it has everything
    // it missed (the engine trusts what it kept on that event).
    for i in 1..=n {
        let (ev, skipped) = expect(
            &mut events,
            Duration::from_secs(if i == 1 { 15 } else { 5 }),
            "replayed message",
            |e| is_message(e) || matches!(e, BusEvent::Connected { .. }),
        )
        .await;
        assert_eq!(
            ev,
            BusEvent::Message(Bytes::from(vec![b'm', i])),
            "every message once, in order, before Connected; skipped {skipped:?}"
        );
    }
    let (ev, skipped) = expect(&mut events, Duration::from_secs(5), "Connected", |e| {
        is_message(e) || matches!(e, BusEvent::Connected { .. })
    })
    .await;
    assert_eq!(
        ev,
        BusEvent::Connected { resumed: true },
        "nothing was lost, and the replay is over; skipped {skipped:?}"
    );
    // Nothing more (no duplicates, no other namespace).
    for ev in common::drain_for(&mut events, Duration::from_secs(1)).await {
        assert!(!is_message(&ev), "unexpected {ev:?}");
    }
    // And live delivery goes on.
    pub_bus
        .publish(&ns, Bytes::from_static(b"live"))
        .await
        .unwrap();
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(ev, BusEvent::Message(Bytes::from_static(b"live")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_live_reconnect_while_reading() {
    // Same as above, but the subscriber is read all the time, so it may well
    // resume before the publisher publishes: either way nothing is missed.
    let mut server = blocking(NatsServer::start_jetstream).unwrap();
    let url = server.url();
    let stream = common::stream_name();
    let sub_bus = builder(&url).jetstream(&stream).build().await.unwrap();
    let pub_bus = builder(&url).jetstream(&stream).build().await.unwrap();
    let ns = common::unique("ns");
    let mut events = sub_bus.subscribe(&ns).await.unwrap();
    connected(&mut events, Duration::from_secs(5)).await;

    let reader = tokio::spawn(async move {
        let mut log = Vec::new();
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(20), events.next()).await
        {
            let done = ev == BusEvent::Message(Bytes::from_static(b"end"));
            if ev != BusEvent::Heartbeat {
                log.push(ev);
            }
            if done {
                break;
            }
        }
        log
    });
    for i in 0..10u8 {
        pub_bus.publish(&ns, Bytes::from(vec![i])).await.unwrap();
    }
    blocking(|| server.kill());
    blocking(|| server.restart()).unwrap();
    for i in 10..20u8 {
        publish_when_back(&pub_bus, &ns, Bytes::from(vec![i])).await;
    }
    pub_bus
        .publish(&ns, Bytes::from_static(b"end"))
        .await
        .unwrap();
    let log = reader.await.unwrap();
    let messages: Vec<_> = log.iter().filter(|e| is_message(e)).cloned().collect();
    let mut want: Vec<_> = (0..20u8)
        .map(|i| BusEvent::Message(Bytes::from(vec![i])))
        .collect();
    want.push(BusEvent::Message(Bytes::from_static(b"end")));
    assert_eq!(
        messages, want,
        "every message once, in order; events: {log:?}"
    );
    assert!(log.contains(&BusEvent::Disconnected), "{log:?}");
    assert!(
        log.contains(&BusEvent::Connected { resumed: true }),
        "{log:?}"
    );
    assert!(
        !log.contains(&BusEvent::Connected { resumed: false }),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_reports_aged_out_history_as_not_resumed() {
    let mut server = blocking(NatsServer::start_jetstream).unwrap();
    let url = server.url();
    let stream = common::stream_name();
    let age = Duration::from_secs(1);
    let sub_bus = builder(&url)
        .jetstream(&stream)
        .jetstream_max_age(age)
        .build()
        .await
        .unwrap();
    let pub_bus = builder(&url)
        .jetstream(&stream)
        .jetstream_max_age(age)
        .build()
        .await
        .unwrap();
    let ns = common::unique("ns");
    let mut events = sub_bus.subscribe(&ns).await.unwrap();
    connected(&mut events, Duration::from_secs(5)).await;
    pub_bus
        .publish(&ns, Bytes::from_static(b"m0"))
        .await
        .unwrap();
    expect(&mut events, Duration::from_secs(5), "message", is_message).await;

    blocking(|| server.kill());
    expect(&mut events, Duration::from_secs(5), "Disconnected", |e| {
        *e == BusEvent::Disconnected
    })
    .await;
    blocking(|| server.restart()).unwrap();
    publish_when_back(&pub_bus, &ns, Bytes::from_static(b"missed")).await;
    // Let it age out before the subscriber is read again.
    tokio::time::sleep(age * 3).await;
    assert!(
        !connected(&mut events, Duration::from_secs(10)).await,
        "history that aged out is not a resume"
    );
    pub_bus
        .publish(&ns, Bytes::from_static(b"new"))
        .await
        .unwrap();
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(ev, BusEvent::Message(Bytes::from_static(b"new")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_disconnected_and_connects_later() {
    let mut server = blocking(NatsServer::start).unwrap();
    let url = server.url();
    blocking(|| server.kill());
    let bus = builder(&url)
        .retry_on_initial_connect(true)
        .build()
        .await
        .unwrap();
    let ns = common::unique("ns");
    let mut events = bus.subscribe(&ns).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .unwrap();
    assert_eq!(
        first,
        Some(BusEvent::Disconnected),
        "a subscription on a bus that is down says so first"
    );
    assert!(matches!(
        bus.publish(&ns, Bytes::from_static(b"x")).await,
        Err(BusError::Unavailable(_))
    ));
    blocking(|| server.restart()).unwrap();
    assert!(!connected(&mut events, Duration::from_secs(10)).await);
    publish_when_back(&bus, &ns, Bytes::from_static(b"hello")).await;
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(ev, BusEvent::Message(Bytes::from_static(b"hello")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_the_bus_is_dropped() {
    let server = blocking(NatsServer::start).unwrap();
    let bus = builder(&server.url()).build().await.unwrap();
    let mut events = bus.subscribe("x").await.unwrap();
    connected(&mut events, Duration::from_secs(5)).await;
    drop(bus);
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends once every bus handle is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_notices_a_deleted_stream() {
    let server = blocking(NatsServer::start_jetstream).unwrap();
    let url = server.url();
    let stream = common::stream_name();
    let sub_bus = builder(&url).jetstream(&stream).build().await.unwrap();
    let pub_bus = builder(&url).jetstream(&stream).build().await.unwrap();
    let ns = common::unique("ns");
    let mut events = sub_bus.subscribe(&ns).await.unwrap();
    connected(&mut events, Duration::from_secs(5)).await;
    for i in 0..5u8 {
        pub_bus.publish(&ns, Bytes::from(vec![i])).await.unwrap();
    }
    for _ in 0..5 {
        expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    }

    // An operator deletes the stream; the next publish creates it again,
    // with sequences starting over.
    let js = async_nats::jetstream::new(pub_bus.client().clone());
    js.delete_stream(&stream).await.unwrap();
    publish_when_back(&pub_bus, &ns, Bytes::from_static(b"x")).await;

    let (ev, _) = expect(&mut events, Duration::from_secs(10), "Disconnected", |e| {
        *e == BusEvent::Disconnected
    })
    .await;
    assert_eq!(ev, BusEvent::Disconnected);
    assert!(
        !connected(&mut events, Duration::from_secs(10)).await,
        "a reset stream is not a resume"
    );
    pub_bus
        .publish(&ns, Bytes::from_static(b"after"))
        .await
        .unwrap();
    let (ev, _) = expect(&mut events, Duration::from_secs(5), "message", is_message).await;
    assert_eq!(ev, BusEvent::Message(Bytes::from_static(b"after")));
}
