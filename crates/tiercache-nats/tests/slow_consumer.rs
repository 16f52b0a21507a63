//! A subscription that is not read fast enough: the client drops messages
//! and the subscription reports `Lost`. Also checks the metrics (this test
//! binary owns the global recorder).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{blocking, builder, drain_for};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tiercache_core::backend::{Bus, BusEvent};
use tiercache_nats::metrics as m;
use tiercache_testkit::NatsServer;

/// Running totals of the counters (a snapshot resets the recorder's values).
struct Totals {
    snap: Snapshotter,
    seen: Vec<(String, Option<String>, u64)>,
}

impl Totals {
    fn get(&mut self, name: &str, namespace: Option<&str>) -> u64 {
        for (k, .., v) in self.snap.snapshot().into_vec() {
            if let DebugValue::Counter(c) = v {
                let ns = k
                    .key()
                    .labels()
                    .find(|l| l.key() == "namespace")
                    .map(|l| l.value().to_owned());
                self.seen.push((k.key().name().to_owned(), ns, c));
            }
        }
        self.seen
            .iter()
            .filter(|(n, ns, _)| {
                n == name && namespace.is_none_or(|want| ns.as_deref() == Some(want))
            })
            .map(|(.., c)| c)
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_reports_lost_and_metrics_count() {
    let recorder = DebuggingRecorder::new();
    let mut totals = Totals {
        snap: recorder.snapshotter(),
        seen: Vec::new(),
    };
    recorder.install().unwrap();

    let mut server = blocking(NatsServer::start).unwrap();
    let url = server.url();
    let slow = builder(&url)
        .subscription_capacity(8)
        .build()
        .await
        .unwrap();
    let publisher = builder(&url).build().await.unwrap();
    let ns = common::unique("slow");
    let mut events = slow.subscribe(&ns).await.unwrap();
    let (ev, _) = common::expect(&mut events, Duration::from_secs(5), "Connected", |e| {
        matches!(e, BusEvent::Connected { .. })
    })
    .await;
    assert_eq!(ev, BusEvent::Connected { resumed: false });

    // Not reading while 500 messages arrive: the 8-slot buffer overflows.
    let sent = 500u64;
    for i in 0..sent {
        publisher
            .publish(&ns, Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    publisher.client().flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seen = drain_for(&mut events, Duration::from_secs(2)).await;
    let lost: u64 = seen
        .iter()
        .map(|e| match e {
            BusEvent::Lost { count } => *count,
            _ => 0,
        })
        .sum();
    let received = seen
        .iter()
        .filter(|e| matches!(e, BusEvent::Message(_)))
        .count() as u64;
    assert!(
        lost > 0,
        "the subscription reports Lost; saw {} events",
        seen.len()
    );
    assert!(received < sent, "some messages were dropped");
    assert!(
        received + lost <= sent,
        "Lost counts no more than was dropped ({received} + {lost})"
    );
    let first_lost = seen
        .iter()
        .position(|e| matches!(e, BusEvent::Lost { .. }))
        .unwrap();
    assert!(
        seen[..first_lost]
            .iter()
            .filter(|e| matches!(e, BusEvent::Message(_)))
            .count()
            <= 8,
        "Lost is reported before the backlog is delivered"
    );
    assert!(seen.contains(&BusEvent::Heartbeat), "still live afterwards");

    assert_eq!(totals.get(m::PUBLISHED, Some(&ns)), sent);
    assert_eq!(totals.get(m::RECEIVED, Some(&ns)), received);
    assert_eq!(totals.get(m::LOST, Some(&ns)), lost);

    // An outage counts a disconnect and a reconnect.
    let disconnects = totals.get(m::DISCONNECTS, None);
    blocking(|| server.kill());
    common::expect(&mut events, Duration::from_secs(5), "Disconnected", |e| {
        *e == BusEvent::Disconnected
    })
    .await;
    assert!(totals.get(m::DISCONNECTS, None) > disconnects);
    common::until_down(&publisher).await;
    assert!(
        publisher
            .publish(&ns, Bytes::from_static(b"x"))
            .await
            .is_err()
    );
    assert!(totals.get(m::PUBLISH_ERRORS, Some(&ns)) >= 1);
    blocking(|| server.restart()).unwrap();
    common::expect(&mut events, Duration::from_secs(10), "Connected", |e| {
        matches!(e, BusEvent::Connected { .. })
    })
    .await;
    assert!(totals.get(m::RECONNECTS, None) >= 1);
}
