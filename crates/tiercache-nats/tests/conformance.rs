//! The core crate's Bus conformance suite against a real nats-server.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use tiercache_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_mode_conforms() {
    let server = common::blocking(NatsServer::start).unwrap();
    let a = common::builder(&server.url()).build().await.unwrap();
    let b = common::builder(&server.url()).build().await.unwrap();
    let t = Instant::now();
    tiercache_core::backend::conformance::bus_with_heartbeat(&a, &b, Duration::from_secs(1)).await;
    eprintln!("core conformance: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_conforms() {
    let server = common::blocking(NatsServer::start_jetstream).unwrap();
    let stream = common::stream_name();
    let a = common::builder(&server.url())
        .jetstream(&stream)
        .build()
        .await
        .unwrap();
    let b = common::builder(&server.url())
        .jetstream(&stream)
        .build()
        .await
        .unwrap();
    assert_eq!(a.jetstream_stream(), Some(stream.as_str()));
    let t = Instant::now();
    tiercache_core::backend::conformance::bus_with_heartbeat(&a, &b, Duration::from_secs(1)).await;
    eprintln!("jetstream conformance: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_heartbeat_conforms() {
    let server = common::blocking(NatsServer::start).unwrap();
    let a = tiercache_nats::NatsBus::builder()
        .url(server.url())
        .build()
        .await
        .unwrap();
    tiercache_core::backend::conformance::bus(&a, &a.clone()).await;
}
