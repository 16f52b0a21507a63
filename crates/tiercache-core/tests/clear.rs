//! `Cache::clear`, hard and soft, on the embedded (in-process) tiers: here,
//! on peers over the bus, on an instance that missed the message, and
//! against loads in flight.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use tiercache_core::backend::{InProcessBus, InProcessSharedTier, SharedTier};
use tiercache_core::{Cache, ClearMode, MockClock};
use tokio::sync::Notify;

fn ns() -> String {
    format!("c{:x}", rand::random::<u32>())
}

/// An instance on `tier` and (when given) `bus`, on the test's clock, with
/// a minute of grace.
fn instance(
    ns: &str,
    clock: &MockClock,
    tier: &InProcessSharedTier,
    bus: Option<&InProcessBus>,
) -> Cache<u64, String> {
    let b = Cache::builder(ns)
        .shared_tier(tier.clone())
        .clock(clock.clone())
        .grace(Duration::from_secs(60));
    match bus {
        Some(bus) => b.bus(bus.clone()),
        None => b.no_bus(),
    }
    .build()
    .unwrap()
}

/// Instances of one namespace on one shared tier and one bus.
struct Peers {
    name: String,
    clock: MockClock,
    tier: InProcessSharedTier,
    bus: InProcessBus,
}

impl Peers {
    fn new() -> Self {
        Peers {
            name: ns(),
            clock: MockClock::new(),
            tier: InProcessSharedTier::default(),
            bus: InProcessBus::new(),
        }
    }

    /// Another instance.
    fn join(&self) -> Cache<u64, String> {
        instance(&self.name, &self.clock, &self.tier, Some(&self.bus))
    }
}

/// Lets the background tasks run (tokio's time is paused: no real wait).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

const KEYS: u64 = 20;

async fn fill(c: &Cache<u64, String>, tag: &str) {
    for k in 0..KEYS {
        c.insert(&k, format!("{tag}{k}")).await;
    }
}

async fn origin_down(c: &Cache<u64, String>, k: u64) -> Option<String> {
    c.try_get_or_load(&k, || async { Err::<Option<String>, _>("origin down") })
        .await
        .ok()
        .flatten()
        .map(|v| (*v).clone())
}

#[tokio::test(start_paused = true)]
async fn a_hard_clear_drops_every_entry_here_on_peers_and_for_new_instances() {
    let p = Peers::new();
    let (name, tier, a, b) = (&p.name, &p.tier, p.join(), p.join());
    settle().await;
    fill(&a, "old").await;
    settle().await;
    for k in 0..KEYS {
        assert_eq!(b.get(&k).await.as_deref(), Some(&format!("old{k}")));
    }
    let mut applied = b.subscribe_applied();

    assert!(a.clear(ClearMode::Hard).await.is_some(), "published");
    for k in 0..KEYS {
        assert_eq!(a.get(&k).await, None, "gone here at once: key {k}");
        assert_eq!(origin_down(&a, k).await, None, "not even within grace");
    }
    settle().await;
    let seen = applied.recv().await.unwrap();
    assert_eq!(seen.clear, Some(ClearMode::Hard));
    for k in 0..KEYS {
        assert_eq!(b.get(&k).await, None, "gone on the peer: key {k}");
    }
    let cold = p.join();
    for k in 0..KEYS {
        assert_eq!(cold.get(&k).await, None, "gone for a new instance");
    }

    // Values written after the clear are current everywhere.
    let v = b
        .get_or_load(&3, || async { Some("new3".to_string()) })
        .await;
    assert_eq!(v.unwrap().as_deref().map(String::as_str), Some("new3"));
    assert_eq!(
        cold.get(&3).await.as_deref().map(String::as_str),
        Some("new3")
    );
    assert_eq!(
        tier.clear_epochs(name).await.unwrap().floor,
        1,
        "one hard clear"
    );
}

#[tokio::test(start_paused = true)]
async fn a_soft_clear_leaves_stale_copies_served_within_grace() {
    let p = Peers::new();
    let (name, tier, a, b) = (&p.name, &p.tier, p.join(), p.join());
    settle().await;
    fill(&a, "old").await;
    for k in 0..KEYS {
        assert!(b.get(&k).await.is_some(), "b holds key {k} locally");
    }

    a.clear(ClearMode::Soft).await;
    settle().await;
    for c in [&a, &b] {
        assert_eq!(c.get(&1).await, None, "no longer fresh");
        assert_eq!(
            origin_down(c, 1).await.as_deref(),
            Some("old1"),
            "the stale copy answers while the origin fails"
        );
    }
    // An instance that never held the key finds the stale copy in the
    // shared tier.
    let cold = p.join();
    assert_eq!(cold.get(&2).await, None);
    assert_eq!(origin_down(&cold, 2).await.as_deref(), Some("old2"));

    // A load replaces it, and the new value is fresh everywhere.
    let v = b
        .get_or_load(&1, || async { Some("new1".to_string()) })
        .await;
    assert_eq!(v.unwrap().as_deref().map(String::as_str), Some("new1"));
    assert_eq!(
        cold.get(&1).await.as_deref().map(String::as_str),
        Some("new1")
    );
    let e = tier.clear_epochs(name).await.unwrap();
    assert_eq!((e.epoch, e.floor), (1, 0), "a soft clear keeps the floor");

    // Past grace, a soft-cleared value is gone like any expired one.
    p.clock.advance(Duration::from_secs(3700));
    tokio::time::advance(Duration::from_secs(3700)).await;
    assert_eq!(origin_down(&a, 5).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_load_in_flight_across_a_clear_does_not_fill_fresh() {
    for mode in [ClearMode::Hard, ClearMode::Soft] {
        let p = Peers::new();
        let (a, b) = (p.join(), p.join());
        settle().await;
        let release = Arc::new(Notify::new());
        let gate = Arc::clone(&release);
        let c = a.clone();
        let load = tokio::spawn(async move {
            c.get_or_load(&9, move || async move {
                gate.notified().await;
                Some("read before the clear".to_string())
            })
            .await
        });
        settle().await;
        a.clear(mode).await;
        release.notify_one();
        let got = load.await.unwrap().unwrap();
        assert_eq!(
            got.as_deref().map(String::as_str),
            Some("read before the clear"),
            "its caller gets what it loaded"
        );
        settle().await;
        for c in [&a, &b] {
            assert_eq!(c.get(&9).await, None, "{mode:?}: not fresh after the clear");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_instance_without_the_message_learns_the_clear_from_the_shared_tier() {
    let (name, clock) = (ns(), MockClock::new());
    let tier = InProcessSharedTier::default();
    // `a` and `b` hear different buses: `b` never gets `a`'s message.
    let a = instance(&name, &clock, &tier, Some(&InProcessBus::new()));
    let b = instance(&name, &clock, &tier, Some(&InProcessBus::new()));
    // `c` has no bus at all.
    let c = instance(&name, &clock, &tier, None);
    settle().await;
    fill(&a, "old").await;
    for k in 0..KEYS {
        assert!(b.get(&k).await.is_some() && c.get(&k).await.is_some());
    }
    a.clear(ClearMode::Hard).await;
    // Within the period `Cache::clear` documents: four staleness bounds
    // (500 ms by default) on a live bus, half a bound without one.
    tokio::time::sleep(Duration::from_millis(4 * 500 + 100)).await;
    for k in 0..KEYS {
        assert_eq!(b.get(&k).await, None, "b learnt the clear: key {k}");
        assert_eq!(c.get(&k).await, None, "c learnt the clear: key {k}");
    }
}

#[tokio::test(start_paused = true)]
async fn clears_without_a_shared_tier_stay_local_and_travel_the_bus() {
    let (name, clock) = (ns(), MockClock::new());
    let bus = InProcessBus::new();
    let local = |bus: &InProcessBus| {
        Cache::<u64, String>::builder(name.as_str())
            .no_shared_tier()
            .bus(bus.clone())
            .clock(clock.clone())
            .grace(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (a, b) = (local(&bus), local(&bus));
    settle().await;
    // Each holds its own key (an insert evicts the key on peers).
    for (c, k) in [(&a, 1), (&b, 2)] {
        c.insert(&k, format!("old{k}")).await;
    }
    settle().await;
    a.clear(ClearMode::Soft).await;
    settle().await;
    for (c, k) in [(&a, 1), (&b, 2)] {
        assert_eq!(c.get(&k).await, None);
        let stale = origin_down(c, k).await;
        assert_eq!(stale, Some(format!("old{k}")), "stale copy kept");
    }
    b.clear(ClearMode::Hard).await;
    settle().await;
    for (c, k) in [(&a, 1), (&b, 2)] {
        assert_eq!(origin_down(c, k).await, None, "gone");
    }
}

#[tokio::test(start_paused = true)]
async fn a_loss_signal_makes_the_next_shared_read_learn_a_missed_clear() {
    use bytes::Bytes;
    use tiercache_core::backend::{Bus, Invalidation, MessageCodec};

    let p = Peers::new();
    // `b` hears another bus: `a`'s clear never reaches it.
    let other_bus = InProcessBus::new();
    let a = p.join();
    let b = instance(&p.name, &p.clock, &p.tier, Some(&other_bus));
    settle().await;
    fill(&a, "old").await;
    for k in 0..KEYS {
        assert!(b.get(&k).await.is_some());
    }
    a.clear(ClearMode::Hard).await;
    settle().await;
    // A gap in some origin's sequence on `b`'s bus: messages were lost,
    // a clear may have been among them.
    let codec = MessageCodec::unsigned();
    for seq in [1, 5] {
        let m = Invalidation {
            keys: vec!["unrelated".into()],
            ..Invalidation::heartbeat(42, p.name.as_str(), seq)
        };
        other_bus
            .publish(&p.name, Bytes::from(codec.encode(&m)))
            .await
            .unwrap();
    }
    settle().await;
    // Well within the periodic read's four bounds: learnt from the loss.
    for k in 0..KEYS {
        assert_eq!(b.get(&k).await, None, "b learnt the clear: key {k}");
    }
}
