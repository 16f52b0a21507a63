//! Behaviour of the engine on the embedded (in-process) tiers.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tiercache_core::backend::{
    BusEvent, ClearEpochs, FillTicket, InProcessBus, InProcessSharedTier, Invalidation,
    MessageCodec, SharedError, SharedTier,
};
use tiercache_core::fuzz_targets::envelope_format;
use tiercache_core::{
    BloomGuardConfig, Cache, CacheBuilder, ConfigError, Entry, Error, MockClock, Outcome, Tier,
};
use tokio::sync::{Notify, oneshot};

fn ns() -> String {
    format!("t{:x}", rand::random::<u32>())
}

/// A cache on its own in-process tier and bus, so tests don't interfere.
fn isolated<V>(ns: &str, tier: &InProcessSharedTier, bus: &InProcessBus) -> CacheBuilder<u64, V>
where
    V: Send + Sync + 'static,
{
    Cache::builder(ns)
        .shared_tier(tier.clone())
        .bus(bus.clone())
}

fn cache(ns: &str) -> (Cache<u64, String>, InProcessSharedTier, InProcessBus) {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    (isolated(ns, &tier, &bus).build().unwrap(), tier, bus)
}

/// [`cache`] on a clock the test drives: the cache and its shared tier's
/// leases read `clock`, which moves with tokio's (paused) time.
fn cache_on(
    ns: &str,
    clock: &MockClock,
) -> (Cache<u64, String>, InProcessSharedTier, InProcessBus) {
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c = isolated(ns, &tier, &bus)
        .clock(clock.clone())
        .build()
        .unwrap();
    (c, tier, bus)
}

/// Lets the background tasks (bus listeners, loads) run. With tokio's time
/// paused it takes no real time: the clock jumps once every task is idle.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

#[derive(Debug, thiserror::Error)]
#[error("origin down")]
struct OriginDown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_collapse_to_one_load() {
    let (c, _, _) = cache(&ns());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let c = c.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            c.get_or_load(&7, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some("seven".to_string())
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap().as_deref().map(String::as_str),
            Some("seven")
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one origin call for 500 concurrent callers"
    );
    let s = c.stats();
    assert_eq!(s.loads, 1);
    assert!(s.collapsed >= 1, "waiters are counted as collapsed: {s:?}");
}

/// Callers that arrive while a load is ending: one that missed both tiers
/// just before the load filled them, and joins just after its flight ended,
/// must take the fill, not load again (double-checked singleflight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_overlapping_the_end_of_a_load_do_not_load_again() {
    let (c, _, _) = cache(&ns());
    for key in 0..20u64 {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..2_000 {
            let c = c.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                c.get_or_load(&key, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    Some(format!("v{key}"))
                })
                .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().unwrap().is_some());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "key {key}: one origin call"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_wakes_every_waiter_with_an_error() {
    let (c, _, _) = cache_on(&ns(), &MockClock::new());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get_or_load(&1, || async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                panic!("loader bug");
            })
            .await
        }));
    }
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("no waiter hangs");
        assert!(matches!(r.unwrap(), Err(Error::LoaderPanicked)));
    }
    // Nothing was cached: the next call loads.
    let v = c
        .get_or_load(&1, || async { Some("ok".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("ok"));
}

#[test]
fn a_cancelled_load_wakes_waiters_in_other_runtimes() {
    // The load runs on runtime A; A shuts down mid-load; a waiter on runtime B
    // must wake with an error, not hang.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rt_b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let c: Cache<u64, String> = rt_a.block_on(async { cache(&ns()).0 });
    let started = Arc::new(Notify::new());
    let s2 = started.clone();
    let c2 = c.clone();
    rt_a.spawn(async move {
        let _ = c2
            .get_or_load(&9, move || async move {
                s2.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Some("never".to_string())
            })
            .await;
    });
    let waiter = rt_b.spawn({
        let c = c.clone();
        let started = started.clone();
        async move {
            started.notified().await;
            c.get_or_load(&9, || async {
                Some("second loader must not run".to_string())
            })
            .await
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    rt_a.shutdown_timeout(Duration::from_millis(100));
    let r = rt_b.block_on(async { tokio::time::timeout(Duration::from_secs(5), waiter).await });
    let r = r.expect("the waiter does not hang").unwrap();
    assert!(matches!(r, Err(Error::LoaderCancelled)), "got {r:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_does_not_cancel_the_load_for_others() {
    let (c, _, _) = cache_on(&ns(), &MockClock::new());
    let (tx, rx) = oneshot::channel::<()>();
    let c1 = c.clone();
    let first = tokio::spawn(async move {
        c1.get_or_load(&3, move || async move {
            let _ = rx.await;
            Some("three".to_string())
        })
        .await
    });
    settle().await;
    let c2 = c.clone();
    let second = tokio::spawn(async move { c2.get_or_load(&3, || async { None }).await });
    settle().await;
    first.abort();
    tx.send(()).unwrap();
    let v = second.await.unwrap().unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("three"));
}

#[tokio::test]
async fn loader_errors_are_returned_and_never_cached() {
    let (c, _, _) = cache(&ns());
    let r = c
        .try_get_or_load(&5, || async { Err::<Option<String>, _>(OriginDown) })
        .await;
    let err = r.unwrap_err();
    assert!(
        err.loader_error::<OriginDown>().is_some(),
        "the loader's error comes back: {err}"
    );
    let v = c
        .try_get_or_load(&5, || async {
            Ok::<_, OriginDown>(Some("back".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("back"));
    assert_eq!(c.stats().load_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn negative_entries_are_cached_and_expire_on_their_own_ttl() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .clock(clock)
        .ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_millis(300))
        .negative_jitter(0.0)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            None::<String>
        }
    };
    assert_eq!(
        c.get_or_load(&404, load(calls.clone())).await.unwrap(),
        None
    );
    assert_eq!(
        c.get_or_load(&404, load(calls.clone())).await.unwrap(),
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second lookup is a negative hit"
    );
    assert_eq!(c.stats().negative_hits, 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        c.get_or_load(&404, load(calls.clone())).await.unwrap(),
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "still within the negative TTL: a negative hit"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.get_or_load(&404, load(calls.clone())).await.unwrap(),
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "after the negative TTL the origin is asked again"
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_expiries() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .clock(clock)
        .ttl(Duration::from_secs(4))
        .ttl_jitter(0.5)
        .build()
        .unwrap();
    let n = 300u64;
    for k in 0..n {
        c.get_or_load(&k, move || async move { Some(format!("v{k}")) })
            .await
            .unwrap();
    }
    // Sample which keys are gone every 100 ms; bucket expiries by second.
    let mut expired_at = HashMap::new();
    let start = tokio::time::Instant::now();
    while expired_at.len() < n as usize && start.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sec = start.elapsed().as_secs();
        for k in 0..n {
            if !expired_at.contains_key(&k) && c.get(&k).await.is_none() {
                expired_at.insert(k, sec);
            }
        }
    }
    assert_eq!(
        expired_at.len(),
        n as usize,
        "everything expires within the TTL"
    );
    let mut per_sec: HashMap<u64, usize> = HashMap::new();
    for s in expired_at.values() {
        *per_sec.entry(*s).or_default() += 1;
    }
    let max = per_sec.values().max().copied().unwrap();
    assert!(
        max < (2 * n as usize) / 3,
        "no two-thirds of the batch expire in the same second: {per_sec:?}"
    );
    assert!(
        per_sec.len() >= 2,
        "expiries spread over at least two seconds: {per_sec:?}"
    );
}

/// The fill race, interleaved deterministically: the loader reads the old
/// value, an invalidation lands, then the loader returns. Neither tier may
/// keep the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_race_key_invalidation_during_load_drops_the_fill() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let name = ns();
    let c: Cache<u64, String> = isolated(&name, &tier, &bus).build().unwrap();
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_load(&1, move || async move {
                let old = "old".to_string(); // read from the database before the write
                loaded_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Some(old)
            })
            .await
        })
    };
    loaded_rx.await.unwrap();
    // The write commits and is invalidated while the load is in flight.
    c.invalidate(&1).await;
    release_tx.send(()).unwrap();
    let served = reader.await.unwrap().unwrap();
    assert_eq!(
        served.as_deref().map(String::as_str),
        Some("old"),
        "the caller still gets its answer"
    );
    assert_eq!(c.get(&1).await, None, "the old value was not cached");
    assert!(
        !tier.contains(&format!("{name}:1")),
        "nor written to the shared tier"
    );
    assert!(c.stats().fills_revoked >= 1);
    // A load that starts after the invalidation fills normally.
    c.get_or_load(&1, || async { Some("new".to_string()) })
        .await
        .unwrap();
    assert_eq!(c.get(&1).await.as_deref().map(String::as_str), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_race_tag_invalidation_during_load_drops_the_fill() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus).build().unwrap();
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.fetch(&2, move || async move {
                loaded_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Ok::<_, OriginDown>(Some(Entry::new("old".to_string()).tag("cat:lamps")))
            })
            .await
        })
    };
    loaded_rx.await.unwrap();
    c.invalidate_tag("cat:lamps").await;
    release_tx.send(()).unwrap();
    reader.await.unwrap().unwrap();
    assert_eq!(
        c.get(&2).await,
        None,
        "the tagged value loaded before the tag invalidation is not cached"
    );
}

/// A caller arriving after an invalidation must not join a load that began
/// before it: it would be handed the pre-write value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_an_invalidation_does_not_join_an_older_load() {
    let (c, _, _) = cache(&ns());
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let early = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_load(&6, move || async move {
                loaded_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Some("old".to_string())
            })
            .await
        })
    };
    loaded_rx.await.unwrap();
    c.invalidate(&6).await;
    let late = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_load(&6, || async { Some("new".to_string()) })
                .await
        })
    };
    let late = late.await.unwrap().unwrap();
    assert_eq!(
        late.as_deref().map(String::as_str),
        Some("new"),
        "the late caller loads afresh"
    );
    release_tx.send(()).unwrap();
    let early = early.await.unwrap().unwrap();
    assert_eq!(
        early.as_deref().map(String::as_str),
        Some("old"),
        "the early caller gets its own load's answer"
    );
    assert_eq!(c.get(&6).await.as_deref().map(String::as_str), Some("new"));
}

/// Another instance's invalidation arriving over the bus mid-load also
/// revokes this instance's fill.
#[tokio::test(start_paused = true)]
async fn fill_race_remote_invalidation_during_load_drops_the_fill() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let name = ns();
    let build = || -> Cache<u64, String> {
        isolated(&name, &tier, &bus)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    settle().await;
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let reader = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_load(&4, move || async move {
                loaded_tx.send(()).unwrap();
                release_rx.await.unwrap();
                Some("old".to_string())
            })
            .await
        })
    };
    loaded_rx.await.unwrap();
    b.invalidate(&4).await;
    settle().await;
    release_tx.send(()).unwrap();
    reader.await.unwrap().unwrap();
    assert_eq!(a.get(&4).await, None);
    assert_eq!(b.get(&4).await, None);
}

#[tokio::test]
async fn a_corrupt_shared_value_is_a_miss_deleted_and_counted() {
    let (c, tier, _) = cache(&ns());
    let sk = c.key_format().storage_key(&11u64);
    for junk in [
        &b"\x00\x01garbage"[..],
        b"TC\x01\x00short",
        b"{\"json\":true}",
        b"",
    ] {
        tier.put_raw(&sk, Bytes::copy_from_slice(junk), Duration::from_secs(60));
        assert_eq!(c.get(&11).await, None, "corrupt bytes read as a miss");
        assert!(!tier.contains(&sk), "and are deleted");
    }
    assert_eq!(c.stats().corrupt_values, 4);
    // A value of a newer format is a miss but left alone.
    let mut future = envelope_format::encode(
        false,
        envelope_format::Times {
            written_ms: 0,
            soft_ms: u64::MAX / 2,
            fresh_ms: u64::MAX / 2,
            stale_ms: u64::MAX / 2,
        },
        &[],
        b"x",
        1024,
    )
    .unwrap();
    future[2] = 99;
    tier.put_raw(&sk, Bytes::from(future), Duration::from_secs(60));
    let v = c
        .get_or_load(&11, || async { Some("loaded".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("loaded"));
    assert_eq!(c.stats().foreign_versions, 1);
    // A well-formed envelope whose payload the codec rejects is corrupt too.
    let bad_payload = envelope_format::encode(
        false,
        envelope_format::Times {
            written_ms: 0,
            soft_ms: u64::MAX / 2,
            fresh_ms: u64::MAX / 2,
            stale_ms: u64::MAX / 2,
        },
        &[],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        1024,
    )
    .unwrap();
    let sk2 = c.key_format().storage_key(&12u64);
    tier.put_raw(&sk2, Bytes::from(bad_payload), Duration::from_secs(60));
    assert_eq!(c.get(&12).await, None);
    assert!(!tier.contains(&sk2));
}

#[tokio::test]
async fn values_are_shared_between_instances_through_the_shared_tier() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let name = ns();
    let a: Cache<u64, String> = isolated(&name, &tier, &bus).build().unwrap();
    let b: Cache<u64, String> = isolated(&name, &tier, &bus).build().unwrap();
    a.get_or_load(&1, || async { Some("from a".to_string()) })
        .await
        .unwrap();
    let f = b
        .fetch(&1, || async { Ok::<_, OriginDown>(None) })
        .await
        .unwrap();
    assert_eq!(f.outcome, Outcome::Hit(Tier::Shared));
    assert_eq!(f.value.as_deref().map(String::as_str), Some("from a"));
    let f = b
        .fetch(&1, || async { Ok::<_, OriginDown>(None) })
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        Outcome::Hit(Tier::Local),
        "the shared hit was copied into the local tier"
    );
}

#[tokio::test(start_paused = true)]
async fn invalidations_reach_other_instances_and_own_echo_is_ignored() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let name = ns();
    let build = || -> Cache<u64, String> {
        isolated(&name, &tier, &bus)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    settle().await;
    for c in [&a, &b] {
        c.fetch(&1, || async {
            Ok::<_, OriginDown>(Some(Entry::new("v1".to_string()).tag("group")))
        })
        .await
        .unwrap();
        c.fetch(&2, || async {
            Ok::<_, OriginDown>(Some(Entry::new("v2".to_string()).tag("group")))
        })
        .await
        .unwrap();
        c.get_or_load(&3, || async { Some("v3".to_string()) })
            .await
            .unwrap();
    }
    a.invalidate(&3).await;
    settle().await;
    assert_eq!(b.get(&3).await, None, "a key invalidation on a evicts on b");
    b.invalidate_tag("group").await;
    settle().await;
    assert_eq!(
        a.get(&1).await,
        None,
        "a tag invalidation on b evicts tagged entries on a"
    );
    assert_eq!(a.get(&2).await, None);
    assert_eq!(
        a.stats().invalidations_received,
        1,
        "a ignored its own echo and applied b's"
    );
    assert_eq!(b.stats().invalidations_received, 1);
}

#[tokio::test(start_paused = true)]
async fn messages_of_another_namespace_or_signed_with_another_key_are_dropped() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let name = ns();
    let a: Cache<u64, String> = isolated(&name, &tier, &bus)
        .clock(clock.clone())
        .signing_key(*b"0123456789abcdef")
        .build()
        .unwrap();
    let forger: Cache<u64, String> = isolated(&name, &tier, &bus)
        .clock(clock)
        .signing_key(*b"fedcba9876543210")
        .build()
        .unwrap();
    settle().await;
    a.get_or_load(&1, || async { Some("v".to_string()) })
        .await
        .unwrap();
    forger.invalidate(&1).await;
    use tiercache_core::backend::Bus;
    bus.publish(&name, Bytes::from_static(b"not a message"))
        .await
        .unwrap();
    settle().await;
    assert_eq!(a.stats().messages_malformed, 2);
    assert_eq!(a.stats().invalidations_received, 0);
}

#[tokio::test(start_paused = true)]
async fn bus_disconnect_keeps_the_local_tier_stale_and_caps_then_reconnect_flushes() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .clock(clock)
        .unsynced_local_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    settle().await;
    assert!(c.local_trusted());
    c.get_or_load(&1, || async { Some("v".to_string()) })
        .await
        .unwrap();
    let flushes = c.stats().local_flushes;
    bus.disconnect();
    settle().await;
    assert!(!c.local_trusted());
    assert_eq!(c.stats().local_flushes, flushes, "kept on disconnect");
    assert_eq!(c.stats().local_parks, 1);
    let f = c
        .fetch(&1, || async { Ok::<_, OriginDown>(None) })
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        Outcome::Hit(Tier::Shared),
        "but stale: not served from the local tier"
    );
    // Filled while down: lives at most unsynced_local_ttl locally.
    let f = c
        .fetch(&2, || async {
            Ok::<_, OriginDown>(Some(Entry::new("w".to_string())))
        })
        .await
        .unwrap();
    assert_eq!(f.outcome, Outcome::Loaded);
    let f = c
        .fetch(&2, || async { Ok::<_, OriginDown>(None) })
        .await
        .unwrap();
    assert_eq!(f.outcome, Outcome::Hit(Tier::Local));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let f = c
        .fetch(&2, || async { Ok::<_, OriginDown>(None) })
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        Outcome::Hit(Tier::Shared),
        "the capped local copy expired; the shared tier answers"
    );
    // Back, but what was published meanwhile is gone (`resumed: false`).
    bus.reconnect();
    settle().await;
    assert!(c.local_trusted());
    assert_eq!(c.stats().local_flushes, flushes + 1, "flushed on reconnect");
    assert_eq!(c.stats().local_revivals, 0);
    assert_eq!(c.stats().bus_disconnects, 1);
}

/// A bus whose subscription delivers what the test sends: a replaying
/// transport's events (JetStream's, in order) without its servers; the
/// real one is in `tiercache-e2e`'s `nats_cluster` test.
struct ScriptedBus {
    events: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<BusEvent>>>,
}

#[async_trait::async_trait]
impl tiercache_core::backend::Bus for ScriptedBus {
    async fn publish(&self, _: &str, _: Bytes) -> Result<(), tiercache_core::backend::BusError> {
        Ok(())
    }

    async fn subscribe(
        &self,
        _: &str,
    ) -> Result<futures::stream::BoxStream<'static, BusEvent>, tiercache_core::backend::BusError>
    {
        let rx = self.events.lock().unwrap().take().unwrap();
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|ev| (ev, rx))
        })))
    }
}

/// A cache on a scripted bus (a long bound: nothing goes silent unless the
/// test waits for it), with keys 1 and 2 in its local tier, then
/// disconnected while origin 77 was active, and resumed after a replay of
/// origin 77's invalidation of key 2.
async fn resumed_after_a_replay() -> (
    Cache<u64, String>,
    tokio::sync::mpsc::UnboundedSender<BusEvent>,
    impl Fn(Invalidation) -> BusEvent,
    String,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let name = ns();
    let clock = MockClock::new();
    let c: Cache<u64, String> = Cache::builder(&name)
        .clock(clock.clone())
        .shared_tier(InProcessSharedTier::default().with_clock(clock))
        .bus(ScriptedBus {
            events: std::sync::Mutex::new(Some(rx)),
        })
        .staleness_bound(Duration::from_secs(10))
        .build()
        .unwrap();
    let codec = MessageCodec::unsigned();
    let message = move |m: Invalidation| BusEvent::Message(Bytes::from(codec.encode(&m)));
    tx.send(BusEvent::Connected { resumed: false }).unwrap();
    settle().await;
    assert!(c.local_trusted());
    for k in [1, 2] {
        c.get_or_load(&k, || async { Some("v".to_string()) })
            .await
            .unwrap();
    }
    tx.send(message(Invalidation::heartbeat(77, name.as_str(), 1)))
        .unwrap();
    settle().await;
    let flushes = c.stats().local_flushes;
    tx.send(BusEvent::Disconnected).unwrap();
    settle().await;
    assert!(!c.local_trusted());
    assert_eq!(c.stats().local_flushes, flushes, "kept while away");
    // The replay, then the resume.
    tx.send(message(Invalidation {
        keys: vec!["2".into()],
        seq: 2,
        ..Invalidation::heartbeat(77, name.as_str(), 0)
    }))
    .unwrap();
    tx.send(BusEvent::Connected { resumed: true }).unwrap();
    settle().await;
    assert!(
        !c.local_trusted(),
        "capped until origin 77's heartbeat is heard live"
    );
    assert_eq!(
        c.stats().local_flushes,
        flushes,
        "no flush across the resume"
    );
    assert_eq!(
        c.stats().local_revivals,
        0,
        "not fresh again before origin 77 is heard live"
    );
    (c, tx, message, name)
}

#[tokio::test(start_paused = true)]
async fn a_resumed_bus_keeps_the_local_tier_and_trusts_it_once_the_active_origins_are_heard() {
    let (c, tx, message, name) = resumed_after_a_replay().await;
    // An invalidation from origin 77 says nothing of what may be queued
    // behind it.
    tx.send(message(Invalidation {
        keys: vec!["5".into()],
        seq: 3,
        ..Invalidation::heartbeat(77, name.as_str(), 0)
    }))
    .unwrap();
    settle().await;
    assert_eq!(c.stats().local_revivals, 0);
    // Its heartbeat, queued only behind an empty queue: whatever it had
    // stuck came first.
    tx.send(message(Invalidation::heartbeat(77, name.as_str(), 3)))
        .unwrap();
    settle().await;
    assert_eq!(c.stats().local_revivals, 1);
    assert!(c.local_trusted());
    let f = fetch_with_origin_down(&c, 1).await;
    assert_eq!(f, Ok(Outcome::Hit(Tier::Local)), "kept and fresh again");
    let f = fetch_with_origin_down(&c, 2).await;
    assert!(
        !matches!(f, Ok(Outcome::Hit(Tier::Local))),
        "evicted by the replayed invalidation: {f:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_bus_flushes_when_an_active_origin_stays_silent() {
    let (c, tx, _message, _) = resumed_after_a_replay().await;
    let flushes = c.stats().local_flushes;
    // The bus is live (its heartbeats), but origin 77 is not heard within
    // the window (8 s of a 10 s bound): its messages may be stuck on its
    // side.
    for _ in 0..9 {
        tx.send(BusEvent::Heartbeat).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(c.stats().local_flushes > flushes);
    assert_eq!(c.stats().local_revivals, 0);
    let f = fetch_with_origin_down(&c, 1).await;
    assert!(
        !matches!(f, Ok(Outcome::Hit(Tier::Local))),
        "flushed: {f:?}"
    );
}

/// How `fetch` answers for `key` while the origin is down (a local hit, or
/// the origin's error).
async fn fetch_with_origin_down(c: &Cache<u64, String>, key: u64) -> Result<Outcome, String> {
    let down = || async { Err::<Option<Entry<String>>, _>(OriginDown) };
    c.fetch(&key, down)
        .await
        .map(|f| f.outcome)
        .map_err(|e| e.to_string())
}

#[tokio::test(start_paused = true)]
async fn a_sequence_gap_is_treated_as_a_loss() {
    use tiercache_core::backend::{Bus, Invalidation, MessageCodec};
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let name = ns();
    let c: Cache<u64, String> = isolated(&name, &tier, &bus).clock(clock).build().unwrap();
    settle().await;
    let codec = MessageCodec::unsigned();
    let msg = |seq| Invalidation {
        sender_instance: 77,
        namespace: name.clone(),
        keys: vec!["999".into()],
        tags: vec![],
        created: false,
        seq,
        source_time_ms: 0,
        clear: None,
    };
    bus.publish(&name, Bytes::from(codec.encode(&msg(1))))
        .await
        .unwrap();
    settle().await;
    c.get_or_load(&1, || async { Some("v".to_string()) })
        .await
        .unwrap();
    let flushes = c.stats().local_flushes;
    bus.publish(&name, Bytes::from(codec.encode(&msg(5))))
        .await
        .unwrap();
    settle().await;
    assert_eq!(c.stats().messages_lost, 3);
    assert_eq!(c.stats().local_flushes, flushes + 1);
    assert_eq!(c.local_entry_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn bus_silence_bypasses_the_local_tier_until_heard_again() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .clock(clock)
        .staleness_bound(Duration::from_millis(300))
        .build()
        .unwrap();
    settle().await;
    c.get_or_load(&1, || async { Some("v".to_string()) })
        .await
        .unwrap();
    // The bus hangs: no message, no heartbeat, nobody told.
    bus.hang();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !c.local_trusted(),
        "silence past the bound distrusts the local tier"
    );
    let f = c
        .fetch(&1, || async { Ok::<_, OriginDown>(None) })
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        Outcome::Hit(Tier::Shared),
        "reads go through the shared tier"
    );
    assert_eq!(c.stats().bus_silences, 1);
    // Heard again (a heartbeat): trusted again.
    bus.resume();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.local_trusted());
}

/// An instance's bus whose publishes fail while `stuck` (its own link to
/// the bus is down, or a JetStream stream is electing a leader), while it
/// and everyone else still hear the bus.
struct StuckPublisher {
    bus: InProcessBus,
    stuck: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl tiercache_core::backend::Bus for StuckPublisher {
    async fn publish(
        &self,
        namespace: &str,
        payload: Bytes,
    ) -> Result<(), tiercache_core::backend::BusError> {
        if self.stuck.load(Ordering::SeqCst) {
            return Err(tiercache_core::backend::BusError::Timeout);
        }
        self.bus.publish(namespace, payload).await
    }

    async fn subscribe(
        &self,
        namespace: &str,
    ) -> Result<
        futures::stream::BoxStream<'static, tiercache_core::backend::BusEvent>,
        tiercache_core::backend::BusError,
    > {
        self.bus.subscribe(namespace).await
    }

    fn heartbeat_at_least(&self, every: Duration) {
        self.bus.heartbeat_at_least(every);
    }
}

#[tokio::test(start_paused = true)]
async fn a_writer_stuck_longer_than_it_heartbeats_keeps_peers_capped() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let bound = Duration::from_millis(300);
    let name = ns();
    let writer_bus = Arc::new(StuckPublisher {
        bus: bus.clone(),
        stuck: std::sync::atomic::AtomicBool::new(false),
    });
    let w: Cache<u64, String> = Cache::builder(name.as_str())
        .shared_tier(tier.clone())
        .bus_arc(writer_bus.clone() as Arc<dyn tiercache_core::backend::Bus>)
        .clock(clock.clone())
        .staleness_bound(bound)
        .build()
        .unwrap();
    let r: Cache<u64, String> = isolated(&name, &tier, &bus)
        .clock(clock.clone())
        .staleness_bound(bound)
        .build()
        .unwrap();
    settle().await;
    let origin = Arc::new(std::sync::Mutex::new(HashMap::<u64, String>::new()));
    let load = |k: u64| {
        let origin = Arc::clone(&origin);
        move || async move { origin.lock().unwrap().get(&k).cloned() }
    };
    origin.lock().unwrap().insert(1, "v1".into());
    w.invalidate(&1).await;
    settle().await;
    assert!(r.local_trusted());

    // The writer's queue sticks: it goes silent, then past the time an
    // origin heartbeats after its last message.
    writer_bus.stuck.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !r.local_trusted(),
        "a lapsed origin may still have messages stuck: local life stays capped"
    );
    // The reader fills key 2; the writer changes it, its message stuck.
    origin.lock().unwrap().insert(2, "old".into());
    assert_eq!(
        r.get_or_load(&2, load(2))
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("old")
    );
    origin.lock().unwrap().insert(2, "new".into());
    w.invalidate(&2).await;
    // Past the bound the reader's copy is gone (capped), whatever the bus.
    tokio::time::sleep(bound + Duration::from_millis(50)).await;
    assert_eq!(
        r.get_or_load(&2, load(2))
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("new"),
        "no read later than the bound after a write returns the old value"
    );

    // The queue drains: the writer is heard again, trusted again.
    writer_bus.stuck.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(r.local_trusted(), "heard again");

    // A writer dropped while active says farewell: its silence is not
    // taken for a stuck queue.
    w.invalidate(&1).await;
    settle().await;
    drop(w);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        r.local_trusted(),
        "a writer that said farewell is not lapsed"
    );
}

#[tokio::test(start_paused = true)]
async fn bloom_guard_rejects_absent_keys_and_never_existing_ones() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let name = ns();
    let universe = || async { Ok::<_, OriginDown>((0..1000u64).map(|k| k.to_string()).collect()) };
    let build = || {
        isolated::<String>(&name, &tier, &bus)
            .clock(clock.clone())
            .bloom_guard(
                BloomGuardConfig::new(universe)
                    .expected_items(1000)
                    .false_positive_rate(0.01),
            )
            .build()
            .unwrap()
    };
    let c = build();
    let peer = build();
    for _ in 0..100 {
        if c.bloom_ready() && peer.bloom_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(c.bloom_ready());
    let calls = Arc::new(AtomicUsize::new(0));
    // Every existing key reaches the origin (no false negatives).
    for k in 0..1000u64 {
        let calls = calls.clone();
        let v = c
            .get_or_load(&k, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Some(format!("v{k}"))
            })
            .await
            .unwrap();
        assert!(v.is_some(), "key {k} exists and must be found");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1000);
    calls.store(0, Ordering::SeqCst);
    for k in 100_000..110_000u64 {
        let calls = calls.clone();
        let v = c
            .get_or_load(&k, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                None
            })
            .await
            .unwrap();
        assert!(v.is_none());
    }
    let reached = calls.load(Ordering::SeqCst);
    assert!(
        reached < 300,
        "at most ~1% of 10,000 absent keys reach the origin, got {reached}"
    );
    assert!(c.stats().bloom_rejections > 9_000);
    // A key created on another instance is let through here.
    peer.mark_created(&500_000).await;
    settle().await;
    let v = c
        .get_or_load(&500_000, || async { Some("new".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("new"));
}

#[tokio::test]
async fn a_bloom_guard_that_is_not_built_yet_lets_everything_through() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .bloom_guard(BloomGuardConfig::new(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<Vec<String>, OriginDown>(vec![])
        }))
        .build()
        .unwrap();
    let v = c
        .get_or_load(&1, || async { Some("x".to_string()) })
        .await
        .unwrap();
    assert!(v.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_or_load_calls_the_batch_loader_once_for_the_missing_keys() {
    let (c, _, _) = cache(&ns());
    c.insert(&1, "one".to_string()).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let got = c
        .get_many_or_load(&[1, 2, 3, 4], move |keys| async move {
            s2.lock().unwrap().push(keys.clone());
            Ok::<_, OriginDown>(
                keys.into_iter()
                    .filter(|k| *k != 4)
                    .map(|k| (k, format!("v{k}")))
                    .collect(),
            )
        })
        .await
        .unwrap();
    let got: Vec<Option<String>> = got.into_iter().map(|v| v.map(|v| (*v).clone())).collect();
    assert_eq!(
        got,
        vec![
            Some("one".into()),
            Some("v2".into()),
            Some("v3".into()),
            None
        ]
    );
    let mut batches = seen.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "one batch call");
    batches[0].sort();
    assert_eq!(batches[0], vec![2, 3, 4], "only the missing keys");
    // All four are cached now (4 as absent).
    let again = c
        .get_many_or_load(&[1, 2, 3, 4], |_| async {
            Err::<HashMap<u64, String>, _>(OriginDown)
        })
        .await
        .unwrap();
    assert_eq!(again.iter().filter(|v| v.is_some()).count(), 3);
}

#[tokio::test(start_paused = true)]
async fn grace_serves_stale_when_the_origin_fails() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .clock(clock.clone())
        .ttl(Duration::from_millis(200))
        .ttl_jitter(0.0)
        .grace(Duration::from_secs(30))
        .build()
        .unwrap();
    c.get_or_load(&1, || async { Some("v1".to_string()) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let f = c
        .fetch(&1, || async { Err::<Option<Entry<String>>, _>(OriginDown) })
        .await
        .unwrap();
    assert_eq!(f.outcome, Outcome::Stale);
    assert_eq!(f.value.as_deref().map(String::as_str), Some("v1"));
    assert_eq!(c.stats().stale_served, 1);
    // Without grace the error comes through.
    let (plain, _, _) = cache_on(&ns(), &clock);
    assert!(
        plain
            .fetch(&1, || async { Err::<Option<Entry<String>>, _>(OriginDown) })
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn soft_timeout_serves_stale_while_the_load_goes_on_and_hard_timeout_errors() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .clock(clock)
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .grace(Duration::from_secs(30))
        .soft_timeout(Duration::from_millis(50))
        .hard_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    c.fetch(&1, || async {
        Ok::<_, OriginDown>(Some(
            Entry::new("old".to_string()).ttl(Duration::from_millis(100)),
        ))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Paused time: how long the caller waited on tokio's clock, exactly.
    let t = tokio::time::Instant::now();
    let f = c
        .fetch(&1, || async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, OriginDown>(Some(Entry::new("new".to_string())))
        })
        .await
        .unwrap();
    assert_eq!(
        f.outcome,
        Outcome::Stale,
        "served stale after the soft timeout"
    );
    assert!(t.elapsed() < Duration::from_millis(190));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.get(&1).await.as_deref().map(String::as_str),
        Some("new"),
        "the load went on and filled"
    );
    // Hard timeout: no stale value at hand, the waiter gets Timeout.
    let r = c
        .get_or_load(&2, || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Some("late".to_string())
        })
        .await;
    assert!(matches!(r, Err(Error::Timeout(_))), "got {r:?}");
    assert_eq!(c.stats().load_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_serves_and_refreshes_once_in_the_background() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .clock(clock)
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .soft_ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = |calls: Arc<AtomicUsize>| {
        move || async move {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some(format!("gen{n}"))
        }
    };
    c.get_or_load(&1, loader(calls.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..50 {
        let v = c.get_or_load(&1, loader(calls.clone())).await.unwrap();
        assert_eq!(
            v.as_deref().map(String::as_str),
            Some("gen0"),
            "served without waiting"
        );
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "exactly one background refresh"
    );
    assert_eq!(c.get(&1).await.as_deref().map(String::as_str), Some("gen1"));
    assert_eq!(c.stats().refreshes, 1);
}

#[tokio::test]
async fn oversized_values_are_served_but_not_cached() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .max_value_size(1024)
        .compress_at(usize::MAX)
        .build()
        .unwrap();
    let big = "x".repeat(4096);
    let b2 = big.clone();
    let v = c
        .get_or_load(&1, move || async move { Some(b2) })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&big));
    assert_eq!(c.get(&1).await, None);
    assert_eq!(c.stats().oversized, 1);
}

#[tokio::test]
async fn large_values_are_compressed_in_the_shared_tier() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .compress_at(512)
        .build()
        .unwrap();
    let text = "the quick brown fox ".repeat(500);
    let t2 = text.clone();
    c.get_or_load(&1, move || async move { Some(t2) })
        .await
        .unwrap();
    let stored = tier
        .get(&c.key_format().storage_key(&1u64))
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.len() < text.len() / 4,
        "stored {} bytes for {}",
        stored.len(),
        text.len()
    );
    let other: Cache<u64, String> = isolated(c.namespace(), &tier, &bus).build().unwrap();
    assert_eq!(other.get(&1).await.as_deref(), Some(&text));
}

#[tokio::test]
async fn long_keys_are_hashed_in_the_shared_tier() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let name = ns();
    let c: Cache<String, String> = Cache::builder(name.as_str())
        .shared_tier(tier.clone())
        .bus(bus.clone())
        .max_key_len(64)
        .build()
        .unwrap();
    let key = "k".repeat(10_000);
    c.get_or_load(&key, || async { Some("v".to_string()) })
        .await
        .unwrap();
    let sk = c.key_format().storage_key(&key);
    assert!(sk.len() <= 64 && tier.contains(&sk));
    assert_eq!(c.get(&key).await.as_deref().map(String::as_str), Some("v"));
}

#[tokio::test(start_paused = true)]
async fn insert_writes_both_tiers_and_evicts_peers() {
    let clock = MockClock::new();
    let tier = InProcessSharedTier::default().with_clock(clock.clone());
    let bus = InProcessBus::new();
    let name = ns();
    let build = || -> Cache<u64, String> {
        isolated(&name, &tier, &bus)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (build(), build());
    settle().await;
    b.get_or_load(&1, || async { Some("old".to_string()) })
        .await
        .unwrap();
    a.insert(&1, "new".to_string()).await;
    settle().await;
    assert_eq!(b.get(&1).await.as_deref().map(String::as_str), Some("new"));
}

#[tokio::test]
async fn the_local_tier_is_bounded_by_bytes() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .local_capacity(64 * 1024)
        .compress_at(usize::MAX)
        .build()
        .unwrap();
    for k in 0..200u64 {
        c.get_or_load(&k, move || async move { Some("x".repeat(1000)) })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for k in 0..200u64 {
        c.get(&k).await;
    }
    let n = c.local_entry_count();
    assert!(n <= 64, "about 64 KiB of ~1 KiB entries, got {n}");
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let err = |b: CacheBuilder<u64, String>| -> ConfigError { b.build().unwrap_err() };
    assert_eq!(err(Cache::builder("")).field, "namespace");
    assert_eq!(err(Cache::builder("has space")).field, "namespace");
    assert_eq!(err(Cache::builder("ok").ttl(Duration::ZERO)).field, "ttl");
    assert_eq!(
        err(Cache::builder("ok").ttl_jitter(1.5)).field,
        "ttl_jitter"
    );
    assert_eq!(
        err(Cache::builder("ok").negative_jitter(-0.1)).field,
        "negative_jitter"
    );
    assert_eq!(
        err(Cache::builder("ok").soft_ttl(Duration::from_secs(600))).field,
        "soft_ttl"
    );
    assert_eq!(
        err(Cache::builder("ok").max_key_len(10)).field,
        "max_key_len"
    );
    assert_eq!(
        err(Cache::builder("ok")
            .soft_timeout(Duration::from_secs(60))
            .hard_timeout(Duration::from_secs(1)))
        .field,
        "soft_timeout"
    );
    assert_eq!(
        err(Cache::builder("ok").signing_key(*b"short")).field,
        "signing_key"
    );
    let e = err(Cache::builder("ok").ttl_jitter(2.0));
    assert!(
        e.to_string().contains("ttl_jitter"),
        "the message names the field: {e}"
    );
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let e = Cache::<u64, String>::builder("ok").build().unwrap_err();
    assert_eq!(e.field, "runtime");
}

/// An entry's own refresh-ahead point and grace override the cache's: a
/// read past `refresh_after` serves it and refreshes it once in the
/// background, handing the loader the value it replaces; past its TTL and
/// within its own grace, a failing origin gets the stale value.
#[tokio::test(start_paused = true)]
async fn per_entry_refresh_after_and_grace() {
    let (c, _, _) = cache_on(&ns(), &MockClock::new());
    let seen: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
    let load = |next: &'static str, seen: Arc<std::sync::Mutex<Vec<Option<String>>>>| {
        move |old: Option<Arc<String>>| async move {
            seen.lock().unwrap().push(old.as_deref().cloned());
            Ok::<_, OriginDown>(Some(
                Entry::new(next.to_string())
                    .ttl(Duration::from_millis(300))
                    .refresh_after(Duration::from_millis(100))
                    .grace(Duration::from_secs(30)),
            ))
        }
    };
    let f = c
        .fetch_revalidating(&1, load("v1", seen.clone()))
        .await
        .unwrap();
    assert_eq!(f.value.as_deref().map(String::as_str), Some("v1"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Past refresh_after: served as it is, refreshed in the background.
    let f = c
        .fetch_revalidating(&1, load("v2", seen.clone()))
        .await
        .unwrap();
    assert_eq!(f.value.as_deref().map(String::as_str), Some("v1"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while c.get(&1).await.as_deref().map(String::as_str) != Some("v2") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("refreshed");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![None, Some("v1".to_string())],
        "the refresh was handed the value it replaces"
    );
    // Past the TTL, within the entry's grace: a failing origin gets it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let f = c
        .fetch_revalidating(&1, |old: Option<Arc<String>>| async move {
            assert_eq!(old.as_deref().map(String::as_str), Some("v2"));
            Err::<Option<Entry<String>>, _>(OriginDown)
        })
        .await
        .unwrap();
    assert_eq!(f.outcome, Outcome::Stale);
    assert_eq!(f.value.as_deref().map(String::as_str), Some("v2"));
    // lookup never loads: a stale entry is not found.
    assert!(c.lookup(&1).await.is_none());
}

/// The in-process shared tier, counting the reads of single keys.
#[derive(Clone, Default)]
struct CountingTier {
    tier: InProcessSharedTier,
    gets: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl SharedTier for CountingTier {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, SharedError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.tier.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, SharedError> {
        self.tier.get_many(keys).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), SharedError> {
        self.tier.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), SharedError> {
        self.tier.delete(key).await
    }
    async fn begin_fill(
        &self,
        namespace: &str,
        key: &str,
        lease_ttl: Option<Duration>,
    ) -> Result<FillTicket, SharedError> {
        self.tier.begin_fill(namespace, key, lease_ttl).await
    }
    async fn commit_fill(
        &self,
        key: &str,
        ticket: &FillTicket,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, SharedError> {
        self.tier.commit_fill(key, ticket, value, ttl).await
    }
    async fn abort_fill(&self, key: &str, ticket: &FillTicket) -> Result<(), SharedError> {
        self.tier.abort_fill(key, ticket).await
    }
    async fn invalidate(&self, keys: &[String]) -> Result<(), SharedError> {
        self.tier.invalidate(keys).await
    }
    async fn tag_versions(
        &self,
        namespace: &str,
        tags: &[String],
    ) -> Result<Vec<u64>, SharedError> {
        self.tier.tag_versions(namespace, tags).await
    }
    async fn invalidate_tags(&self, namespace: &str, tags: &[String]) -> Result<(), SharedError> {
        self.tier.invalidate_tags(namespace, tags).await
    }

    async fn clear_epochs(&self, namespace: &str) -> Result<ClearEpochs, SharedError> {
        self.tier.clear_epochs(namespace).await
    }

    async fn clear(
        &self,
        namespace: &str,
        hard: bool,
        after: u64,
    ) -> Result<ClearEpochs, SharedError> {
        self.tier.clear(namespace, hard, after).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_stampede_reads_the_shared_tier_once_and_shares_its_stale_copy() {
    let clock = MockClock::new();
    let tier = CountingTier {
        tier: InProcessSharedTier::default().with_clock(clock.clone()),
        gets: Arc::default(),
    };
    let bus = InProcessBus::new();
    let ns = ns();
    let build = || -> Cache<u64, String> {
        Cache::builder(&ns)
            .shared_tier(tier.clone())
            .bus(bus.clone())
            .clock(clock.clone())
            .ttl_jitter(0.0)
            .grace(Duration::from_secs(30))
            .soft_timeout(Duration::from_millis(50))
            .build()
            .unwrap()
    };
    // One instance stores a value that is stale by the time a fresh
    // instance, whose local tier has no copy, is stampeded for it.
    let writer = build();
    writer
        .fetch(&1, || async {
            Ok::<_, OriginDown>(Some(
                Entry::new("old".to_string()).ttl(Duration::from_millis(100)),
            ))
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reader = build();
    let before = tier.gets.load(Ordering::SeqCst);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (reader, calls) = (reader.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            reader
                .fetch(&1, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, OriginDown>(Some(Entry::new("new".to_string())))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let f = t.await.unwrap();
        assert_eq!(
            f.outcome,
            Outcome::Stale,
            "every caller gets the stale copy"
        );
        assert_eq!(f.value.as_deref().map(String::as_str), Some("old"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load");
    assert_eq!(
        tier.gets.load(Ordering::SeqCst) - before,
        1,
        "the callers that joined the load did not read the shared tier"
    );
    assert_eq!(reader.stats().stale_served, 100);
}
