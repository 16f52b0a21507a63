//! The model's counterexample against the current engine
//! (`EngineVariant::BEFORE_SILENCE_DETACH`, property `NO_STALE_READ`), replayed on the real
//! engine (`tiercache-core`, in-process shared tier and bus).
//!
//! The model's trace: a load reads the origin while the bus is down (or
//! hung); a write commits and reaches the shared tier, and its bus message is
//! lost; the liveness timer fires (the local tier is bypassed), but nothing
//! detaches the load in flight; a caller arriving more than the staleness
//! bound after the write misses both tiers and joins that load, and gets the
//! value from before the write.
//!
//! Both failed on the engine before the fix the model pointed to: the
//! liveness timer's arm of `listen` (`crates/tiercache-core/src/cache/sync.rs`)
//! now calls `inner.flights.detach_all()` at every window of silence. They
//! stay as regression tests of the real engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tiercache_core::Cache;
use tiercache_core::backend::{InProcessBus, InProcessSharedTier, SharedTier};

/// How the bus fails before the load starts.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `BusEvent::Disconnected`: the instance flushes, caps its local tier,
    /// and bypasses it once the liveness window passes without heartbeats.
    Disconnect,
    /// Nothing at all arrives (a paused server): the instance bypasses its
    /// local tier once the liveness window passes.
    Hang,
}

/// A slow load reads the origin; a write commits and reaches the shared
/// tier (its bus message never arrives); 700 ms later (past the default
/// 500 ms bound) another caller reads the key. Returns what the slow load
/// and the late caller got.
async fn replay(fault: Fault) -> (Option<String>, Option<String>) {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let ns = format!("repro{:x}{fault:?}", std::process::id());
    let cache: Cache<u64, String> = Cache::builder(ns)
        .shared_tier(tier.clone())
        .bus(bus.clone())
        .build()
        .expect("cache");
    tokio::time::sleep(Duration::from_millis(50)).await;
    match fault {
        Fault::Disconnect => bus.disconnect(),
        Fault::Hang => bus.hang(),
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A slow load: reads the origin at once, answers 2 s later.
    let db = Arc::new(AtomicU64::new(0));
    let first = {
        let (cache, db) = (cache.clone(), Arc::clone(&db));
        tokio::spawn(async move {
            cache
                .get_or_load(&1, move || async move {
                    let v = db.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Some(format!("v{v}"))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The write commits and the sidecar invalidates the shared tier; its
    // bus message never arrives (the bus is down or hung).
    db.store(1, Ordering::SeqCst);
    let sk = cache.key_format().storage_key(&1u64);
    tier.invalidate(&[sk]).await.expect("shared invalidate");

    // Past the staleness bound, and past the liveness window: the local
    // tier is bypassed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!cache.local_trusted());

    let late = {
        let db = Arc::clone(&db);
        cache
            .get_or_load(&1, move || async move {
                Some(format!("v{}", db.load(Ordering::SeqCst)))
            })
            .await
            .expect("late read")
    };
    let first = first.await.expect("task").expect("first read");
    let text = |v: Option<Arc<String>>| v.map(|v| v.as_str().to_owned());
    (text(first), text(late))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_down_a_caller_after_the_bound_never_joins_a_load_from_before_a_write() {
    let (first, late) = replay(Fault::Disconnect).await;
    assert_eq!(first.as_deref(), Some("v0"));
    assert_eq!(
        late.as_deref(),
        Some("v1"),
        "a read that began 700 ms after the write reached the shared tier returned the value from before it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_hung_a_caller_after_the_bound_never_joins_a_load_from_before_a_write() {
    let (first, late) = replay(Fault::Hang).await;
    assert_eq!(first.as_deref(), Some("v0"));
    assert_eq!(
        late.as_deref(),
        Some("v1"),
        "a read that began 700 ms after the write reached the shared tier returned the value from before it"
    );
}
