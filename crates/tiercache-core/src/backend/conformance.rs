//! Conformance suites for the two traits: every [`SharedTier`] and [`Bus`]
//! implementation runs the very same checks (the in-process ones here, Redis
//! and NATS in their crates' tests).
//!
//! Enabled by the `conformance` feature (and in this crate's own tests). Each
//! suite panics with a message naming the rule an implementation broke, so it
//! is meant to be called from a `#[tokio::test]`:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tiercache_core::backend::{conformance, InProcessBus, InProcessSharedTier};
//! conformance::shared_tier(&InProcessSharedTier::default()).await;
//! let bus = InProcessBus::new();
//! conformance::bus(&bus, &bus.clone()).await;
//! # });
//! ```
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::bus::{Bus, BusEvent};
use crate::shared::SharedTier;

fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// Checks every rule of the [`SharedTier`] contract against `tier`. Uses keys
/// and namespaces of its own (random), so it can run against a shared server.
pub async fn shared_tier<S: SharedTier + ?Sized>(tier: &S) {
    let ns = unique("conf");
    let k = |s: &str| format!("{ns}:{s}");
    let long = Duration::from_secs(60);

    // get / set / delete round trip, binary-safe.
    let bin = Bytes::from_static(&[0, 159, 146, 150, 255, b'\r', b'\n']);
    assert_eq!(
        tier.get(&k("a")).await.unwrap(),
        None,
        "absent key reads None"
    );
    tier.set(&k("a"), bin.clone(), long).await.unwrap();
    assert_eq!(
        tier.get(&k("a")).await.unwrap(),
        Some(bin.clone()),
        "set then get returns the same bytes"
    );
    tier.delete(&k("a")).await.unwrap();
    assert_eq!(
        tier.get(&k("a")).await.unwrap(),
        None,
        "delete removes the value"
    );

    // get_many keeps order and reports holes.
    tier.set(&k("m1"), Bytes::from_static(b"one"), long)
        .await
        .unwrap();
    tier.set(&k("m3"), Bytes::from_static(b"three"), long)
        .await
        .unwrap();
    let got = tier.get_many(&[k("m1"), k("m2"), k("m3")]).await.unwrap();
    assert_eq!(
        got,
        vec![
            Some(Bytes::from_static(b"one")),
            None,
            Some(Bytes::from_static(b"three"))
        ],
        "get_many answers in order with None for missing keys"
    );
    assert!(
        tier.get_many(&[]).await.unwrap().is_empty(),
        "get_many of nothing is empty"
    );

    // TTL is honoured.
    tier.set(
        &k("ttl"),
        Bytes::from_static(b"x"),
        Duration::from_millis(150),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        tier.get(&k("ttl")).await.unwrap(),
        None,
        "a value expires after its TTL"
    );

    // A fill with a fresh ticket lands.
    let t = tier.begin_fill(&ns, &k("f"), None).await.unwrap();
    assert!(
        t.lease.is_none() && !t.lease_held_elsewhere,
        "no lease unless asked"
    );
    assert!(
        tier.commit_fill(&k("f"), &t, Bytes::from_static(b"v1"), long)
            .await
            .unwrap(),
        "a fill whose key was not invalidated is stored"
    );
    assert_eq!(
        tier.get(&k("f")).await.unwrap(),
        Some(Bytes::from_static(b"v1"))
    );

    // The fill race: an invalidation between begin and commit revokes the fill.
    let t = tier.begin_fill(&ns, &k("race"), None).await.unwrap();
    tier.invalidate(&[k("race")]).await.unwrap();
    assert!(
        !tier
            .commit_fill(&k("race"), &t, Bytes::from_static(b"old"), long)
            .await
            .unwrap(),
        "a fill whose ticket predates an invalidation is refused"
    );
    assert_eq!(
        tier.get(&k("race")).await.unwrap(),
        None,
        "a refused fill stores nothing"
    );
    // A ticket taken after the invalidation is good.
    let t2 = tier.begin_fill(&ns, &k("race"), None).await.unwrap();
    assert!(
        tier.commit_fill(&k("race"), &t2, Bytes::from_static(b"new"), long)
            .await
            .unwrap()
    );
    // Invalidation deletes the value too.
    tier.invalidate(&[k("race"), k("never-set")]).await.unwrap();
    assert_eq!(
        tier.get(&k("race")).await.unwrap(),
        None,
        "invalidate deletes the value"
    );

    // Leases: exclusive until committed, aborted, expired or invalidated.
    let lease_ttl = Some(Duration::from_secs(5));
    let a = tier.begin_fill(&ns, &k("l"), lease_ttl).await.unwrap();
    assert!(
        a.lease.is_some() && !a.lease_held_elsewhere,
        "first asker takes the lease"
    );
    let b = tier.begin_fill(&ns, &k("l"), lease_ttl).await.unwrap();
    assert!(
        b.lease.is_none() && b.lease_held_elsewhere,
        "second asker sees it held"
    );
    // The second asker's commit must not release the first's lease.
    tier.abort_fill(&k("l"), &b).await.unwrap();
    let c = tier.begin_fill(&ns, &k("l"), lease_ttl).await.unwrap();
    assert!(
        c.lease_held_elsewhere,
        "a non-holder cannot release the lease"
    );
    assert!(
        tier.commit_fill(&k("l"), &a, Bytes::from_static(b"v"), long)
            .await
            .unwrap()
    );
    let d = tier.begin_fill(&ns, &k("l"), lease_ttl).await.unwrap();
    assert!(d.lease.is_some(), "commit releases the lease");
    tier.abort_fill(&k("l"), &d).await.unwrap();
    let e = tier.begin_fill(&ns, &k("l"), lease_ttl).await.unwrap();
    assert!(e.lease.is_some(), "abort releases the lease");
    tier.invalidate(&[k("l")]).await.unwrap();
    let f = tier.begin_fill(&ns, &k("l"), lease_ttl).await.unwrap();
    assert!(f.lease.is_some(), "invalidate drops the lease");
    tier.abort_fill(&k("l"), &f).await.unwrap();
    let g = tier
        .begin_fill(&ns, &k("short"), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(g.lease.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let h = tier
        .begin_fill(&ns, &k("short"), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(h.lease.is_some(), "a lease expires after its TTL");
    assert_ne!(g.lease, h.lease, "lease tokens are not reused");

    // Tags: versions start at 0, rise past the clock, per namespace.
    let tags = vec!["t1".to_owned(), "t2".to_owned()];
    assert_eq!(
        tier.tag_versions(&ns, &tags).await.unwrap(),
        vec![0, 0],
        "untouched tags are 0"
    );
    let before = tier.begin_fill(&ns, &k("tagged"), None).await.unwrap();
    tier.invalidate_tags(&ns, &tags[..1]).await.unwrap();
    let v = tier.tag_versions(&ns, &tags).await.unwrap();
    assert!(
        v[0] > before.tag_clock,
        "an invalidated tag's version exceeds earlier tag clocks"
    );
    assert_eq!(v[1], 0, "other tags keep their version");
    let after = tier.begin_fill(&ns, &k("tagged"), None).await.unwrap();
    assert!(
        after.tag_clock >= v[0],
        "the tag clock covers every version handed out"
    );
    tier.invalidate_tags(&ns, &tags[..1]).await.unwrap();
    let v2 = tier.tag_versions(&ns, &tags).await.unwrap();
    assert!(v2[0] > v[0], "tag versions only rise");
    let other_ns = unique("conf");
    assert_eq!(
        tier.tag_versions(&other_ns, &tags[..1]).await.unwrap(),
        vec![0],
        "tag versions are per namespace"
    );
    assert!(tier.tag_versions(&ns, &[]).await.unwrap().is_empty());

    // Clear epochs: start at 0, rise by one per clear, past `after`;
    // a hard clear raises the floor, a soft one does not; tickets carry them.
    use crate::shared::ClearEpochs;
    let zero = ClearEpochs::default();
    assert_eq!(
        tier.clear_epochs(&ns).await.unwrap(),
        zero,
        "never cleared: 0"
    );
    assert_eq!(before.epochs, zero, "a ticket carries the epochs");
    let soft = tier.clear(&ns, false, 0).await.unwrap();
    assert_eq!(soft, ClearEpochs { epoch: 1, floor: 0 }, "a soft clear");
    let hard = tier.clear(&ns, true, 0).await.unwrap();
    assert_eq!(hard, ClearEpochs { epoch: 2, floor: 2 }, "a hard clear");
    assert_eq!(tier.clear_epochs(&ns).await.unwrap(), hard);
    let past = tier.clear(&ns, false, 10).await.unwrap();
    assert_eq!(
        past,
        ClearEpochs {
            epoch: 11,
            floor: 2
        },
        "a clear passes the epoch its caller knows (a store that lost its copy)"
    );
    let t = tier.begin_fill(&ns, &k("after-clear"), None).await.unwrap();
    assert_eq!(t.epochs, past, "a ticket carries the current epochs");
    assert_eq!(
        tier.clear_epochs(&unique("conf")).await.unwrap(),
        zero,
        "clear epochs are per namespace"
    );
}

async fn next_message(sub: &mut BoxStream<'static, BusEvent>, within: Duration) -> Option<Bytes> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(BusEvent::Message(b))) => return Some(b),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

async fn until_connected(sub: &mut BoxStream<'static, BusEvent>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(BusEvent::Connected { .. })) => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("subscription ended before reporting Connected"),
            Err(_) => panic!("subscription did not report Connected within 10 s"),
        }
    }
}

/// Checks every rule of the [`Bus`] contract. `a` and `b` are two handles to
/// the same bus (two connections, for a networked bus): what one publishes the
/// other's subscribers hear. `heartbeat_within` bounds how long a live, quiet
/// subscription may go without a [`BusEvent::Heartbeat`].
pub async fn bus<B: Bus + ?Sized>(a: &B, b: &B) {
    bus_with_heartbeat(a, b, Duration::from_secs(10)).await
}

/// [`bus`] with an explicit bound on the heartbeat interval.
pub async fn bus_with_heartbeat<B: Bus + ?Sized>(a: &B, b: &B, heartbeat_within: Duration) {
    let ns = unique("conf");
    let other = unique("conf");
    let mut sub_b = b.subscribe(&ns).await.unwrap();
    let mut sub_a = a.subscribe(&ns).await.unwrap();
    let mut sub_other = b.subscribe(&other).await.unwrap();
    until_connected(&mut sub_b).await;
    until_connected(&mut sub_a).await;
    until_connected(&mut sub_other).await;

    let within = Duration::from_secs(5);
    // Binary payloads arrive intact, at every subscriber, the publisher's too.
    let payload = Bytes::from_static(&[0, 255, 10, 13, 0x80, b'T', b'C', b'I']);
    a.publish(&ns, payload.clone()).await.unwrap();
    assert_eq!(
        next_message(&mut sub_b, within).await,
        Some(payload.clone()),
        "a subscriber on another handle receives the payload intact"
    );
    assert_eq!(
        next_message(&mut sub_a, within).await,
        Some(payload),
        "the publisher's own subscription hears its echo"
    );

    // Order is kept for one publisher.
    for i in 0..50u8 {
        a.publish(&ns, Bytes::from(vec![i])).await.unwrap();
    }
    for i in 0..50u8 {
        assert_eq!(
            next_message(&mut sub_b, within).await,
            Some(Bytes::from(vec![i])),
            "messages from one publisher arrive in order"
        );
    }

    // Namespaces are isolated.
    b.publish(&other, Bytes::from_static(b"other"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut sub_other, within).await,
        Some(Bytes::from_static(b"other"))
    );
    a.publish(&ns, Bytes::from_static(b"mine")).await.unwrap();
    assert_eq!(
        next_message(&mut sub_b, within).await,
        Some(Bytes::from_static(b"mine")),
        "a namespace hears only its own messages"
    );

    // A large payload (64 KiB of keys) passes.
    let big = Bytes::from(vec![7u8; 64 * 1024]);
    a.publish(&ns, big.clone()).await.unwrap();
    assert_eq!(
        next_message(&mut sub_b, within).await,
        Some(big),
        "a 64 KiB payload passes"
    );

    // A quiet, live subscription proves liveness with heartbeats.
    let deadline = tokio::time::Instant::now() + heartbeat_within + Duration::from_secs(1);
    let mut beat = false;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, sub_other.next()).await {
        if ev == BusEvent::Heartbeat {
            beat = true;
            break;
        }
    }
    assert!(
        beat,
        "a live subscription reports a heartbeat within {heartbeat_within:?}"
    );
}
