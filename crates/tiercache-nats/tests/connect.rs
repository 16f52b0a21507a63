//! Start-up errors and subject mapping against a real nats-server.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{blocking, builder, drain_for, expect, is_message};
use tiercache_core::backend::{Bus, BusEvent};
use tiercache_nats::{NatsBus, NatsBusError};
use tiercache_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_are_typed() {
    let mut server = blocking(NatsServer::start).unwrap();
    let url = server.url();

    // JetStream asked of a core-only server.
    let err = builder(&url).jetstream("TC").build().await.unwrap_err();
    assert!(
        matches!(err, NatsBusError::JetStream { ref stream, .. } if stream == "TC"),
        "{err}"
    );

    // A bad value names its field, before any connection is tried.
    let err = builder(&url)
        .subject_prefix("a.*")
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, NatsBusError::Config(ref e) if e.field == "subject_prefix"),
        "{err}"
    );
    let err = builder(&url)
        .credentials_file("/nonexistent.creds")
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, NatsBusError::Config(ref e) if e.field == "credentials_file"),
        "{err}"
    );

    // Nobody listening.
    blocking(|| server.kill());
    let err = builder(&url)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, NatsBusError::Connect(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_does_not_cover_the_prefix_is_a_config_error() {
    let server = blocking(NatsServer::start_jetstream).unwrap();
    let name = common::stream_name();
    let _other = builder(&server.url())
        .subject_prefix("elsewhere")
        .jetstream(&name)
        .build()
        .await
        .unwrap();
    let err = builder(&server.url())
        .jetstream(&name)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, NatsBusError::Config(ref e) if e.field == "jetstream"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_with_subject_syntax_stay_isolated() {
    let server = blocking(NatsServer::start).unwrap();
    let bus = builder(&server.url()).build().await.unwrap();
    let names = ["a", "a.b", "a.>", "a.*", "a b", "", "%", "ü"];
    let mut subs = Vec::new();
    for ns in names {
        let mut events = bus.subscribe(ns).await.unwrap();
        expect(&mut events, Duration::from_secs(5), "Connected", |e| {
            matches!(e, BusEvent::Connected { .. })
        })
        .await;
        subs.push(events);
    }
    for ns in names {
        bus.publish(ns, Bytes::from(ns.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    for (ns, events) in names.iter().zip(subs.iter_mut()) {
        let got: Vec<_> = drain_for(events, Duration::from_millis(500))
            .await
            .into_iter()
            .filter(is_message)
            .collect();
        assert_eq!(
            got,
            vec![BusEvent::Message(Bytes::from(ns.as_bytes().to_vec()))],
            "namespace {ns:?}"
        );
    }
    assert_eq!(bus.subject("a.b"), "tiercache.inv.a%2Eb");
    let _ = NatsBus::builder();
}
