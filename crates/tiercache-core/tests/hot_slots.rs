//! The per-thread hot copies of local entries: they make hits cheaper and
//! must never make them wrong. Every change to a key (here or from another
//! thread, by key, tag, flush or a newer fill) voids every thread's copy.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tiercache_core::backend::{InProcessBus, InProcessSharedTier};
use tiercache_core::{Cache, Entry, MockClock};

fn cache(ns: &str) -> Cache<u64, u64> {
    Cache::builder(ns)
        .shared_tier(InProcessSharedTier::default())
        .bus(InProcessBus::new())
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// [`cache`] on a clock the test drives (with tokio's time paused).
fn cache_on(ns: &str, clock: &MockClock) -> Cache<u64, u64> {
    Cache::builder(ns)
        .shared_tier(InProcessSharedTier::default().with_clock(clock.clone()))
        .bus(InProcessBus::new())
        .ttl(Duration::from_secs(3600))
        .clock(clock.clone())
        .build()
        .unwrap()
}

async fn trusted(cache: &Cache<u64, u64>) {
    while !cache.local_trusted() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn local(cache: &Cache<u64, u64>, key: u64) -> Option<u64> {
    cache.get_local(&key).and_then(|f| f.value.map(|v| *v))
}

#[tokio::test(start_paused = true)]
async fn a_change_on_the_same_thread_voids_the_copy() {
    let c = cache_on("hot-same-thread", &MockClock::new());
    trusted(&c).await;
    c.insert_entry(&1, Entry::new(10).tag("t")).await;
    c.insert(&2, 20).await;
    // Read enough times that the copies are surely taken.
    for _ in 0..40 {
        assert_eq!(local(&c, 1), Some(10));
        assert_eq!(local(&c, 2), Some(20));
    }

    c.insert(&1, 11).await;
    assert_eq!(local(&c, 1), Some(11), "a newer fill replaces the copy");

    c.invalidate(&2).await;
    assert_eq!(local(&c, 2), None, "a key invalidation voids the copy");

    c.insert_entry(&3, Entry::new(30).tag("t")).await;
    for _ in 0..40 {
        assert_eq!(local(&c, 3), Some(30));
    }
    c.invalidate_tag("t").await;
    assert_eq!(local(&c, 3), None, "a tag invalidation voids the copy");

    c.insert(&4, 40).await;
    for _ in 0..40 {
        assert_eq!(local(&c, 4), Some(40));
    }
    c.flush_local();
    assert_eq!(local(&c, 4), None, "a flush voids the copy");
}

/// A reader thread hammers one key while another thread writes new
/// versions. Whatever the reader's copy holds, a read that starts after a
/// write returned sees that write (or a later one).
#[test]
fn a_change_on_another_thread_voids_every_copy() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = {
        let _in_runtime = rt.enter();
        cache("hot-cross-thread")
    };
    rt.block_on(async {
        trusted(&c).await;
        c.insert(&7, 0).await;
    });
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (c, published, done) = (c.clone(), Arc::clone(&published), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut hits = 0u64;
            while !done.load(Ordering::Acquire) {
                let floor = published.load(Ordering::Acquire);
                reads += 1;
                if let Some(v) = local(&c, 7) {
                    hits += 1;
                    assert!(v >= floor, "read {v} after version {floor} was written");
                }
            }
            (reads, hits)
        })
    };
    rt.block_on(async {
        for version in 1..=2_000u64 {
            c.insert(&7, version).await;
            published.store(version, Ordering::Release);
            if version % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    done.store(true, Ordering::Release);
    let (reads, hits) = reader.join().unwrap();
    assert!(hits > 0, "the reader never hit ({reads} reads)");
    assert_eq!(local(&c, 7), Some(2_000));
}

#[test]
fn hits_on_every_thread_are_counted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = {
        let _in_runtime = rt.enter();
        cache("hot-stats")
    };
    rt.block_on(async {
        trusted(&c).await;
        c.insert(&1, 1).await;
    });
    let before = c.stats().local_hits;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..1_000 {
                    assert_eq!(local(&c, 1), Some(1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.stats().local_hits - before, 4_000);
}

/// A codec with a [`thread_copy`](tiercache_core::Codec::thread_copy)
/// (`RawBytes`): a hot key is served from this thread's own copy (other
/// memory than moka's value), the copy is kept across moka's sampled reads,
/// and a change still replaces it.
#[tokio::test]
async fn hot_entries_are_served_from_a_thread_copy() {
    use bytes::Bytes;
    use tiercache_core::RawBytes;

    let c: Cache<u64, Bytes> = Cache::builder("hot-thread-copy")
        .local_only()
        .ttl(Duration::from_secs(3600))
        .build_with_codec(RawBytes)
        .unwrap();
    let stored = Bytes::from(vec![1u8; 64]);
    let stored_at = stored.as_ptr() as usize;
    c.insert(&1, stored).await;
    let at = |c: &Cache<u64, Bytes>| {
        c.with_local(&1u64, |hit| hit.value.map(|v| (v.as_ptr() as usize, v[0])))
            .flatten()
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let (addr, first) = at(&c).unwrap();
        assert_eq!(first, 1);
        seen.insert(addr);
    }
    let copies: Vec<_> = seen.iter().filter(|a| **a != stored_at).collect();
    assert_eq!(copies.len(), 1, "served from one thread copy: {seen:?}");

    c.insert(&1, Bytes::from(vec![2u8; 64])).await;
    for _ in 0..50 {
        assert_eq!(at(&c).map(|(_, first)| first), Some(2), "the change wins");
    }
}
