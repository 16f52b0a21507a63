//! Issue 11: no bytes from outside (a stored envelope, a TTL an origin
//! chose, a bus message, a key) can crash, poison or exhaust the engine.
//! Each test plants the input the issue gives and checks that the cache
//! answers, cleans up and keeps working.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tiercache_core::backend::{Bus, InProcessBus, InProcessSharedTier, Invalidation, MessageCodec};
use tiercache_core::fuzz_targets::envelope_format::{self as envelope, Times};
use tiercache_core::{Cache, CacheBuilder, Codec, DecodeError, EncodeError, Entry, MockClock};

fn ns() -> String {
    format!("h{:x}", rand::random::<u32>())
}

fn isolated<K, V>(ns: &str, tier: &InProcessSharedTier, bus: &InProcessBus) -> CacheBuilder<K, V>
where
    K: tiercache_core::CacheKey + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    Cache::builder(ns)
        .shared_tier(tier.clone())
        .bus(bus.clone())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn postcard(v: &str) -> Vec<u8> {
    let mut out = Vec::new();
    tiercache_core::Postcard
        .encode(&v.to_owned(), &mut out)
        .unwrap();
    out
}

/// Case 1: an entry whose TTL is far past what a clock can add (an origin's
/// `max-age=99999999999`, or `u64::MAX` seconds) is stored and read back on
/// every instance, with no panic anywhere.
#[tokio::test]
async fn huge_ttls_are_clamped_not_panics() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let name = ns();
    let a: Cache<u64, String> = isolated(&name, &tier, &bus).build().unwrap();
    let b: Cache<u64, String> = isolated(&name, &tier, &bus).build().unwrap();
    for (key, ttl) in [
        (1u64, Duration::from_secs(99_999_999_999)),
        (2, Duration::from_secs(u64::MAX)),
        (3, Duration::MAX),
    ] {
        a.insert_entry(&key, Entry::new(format!("v{key}")).ttl(ttl))
            .await;
        assert_eq!(a.get(&key).await.as_deref(), Some(&format!("v{key}")));
        // Another instance reads it from the shared tier and fills its own
        // local tier from the stored times.
        assert_eq!(b.get(&key).await.as_deref(), Some(&format!("v{key}")));
        assert_eq!(b.get(&key).await.as_deref(), Some(&format!("v{key}")));
    }
    // A loader's entry with such a TTL too.
    let v = a
        .fetch(&4, || async {
            Ok::<_, std::convert::Infallible>(Some(
                Entry::new("loaded".to_string()).ttl(Duration::from_secs(u64::MAX)),
            ))
        })
        .await
        .unwrap();
    assert_eq!(v.value.as_deref().map(String::as_str), Some("loaded"));
    assert_eq!(
        b.get(&4).await.as_deref().map(String::as_str),
        Some("loaded")
    );
}

/// Case 1, planted: shared-tier envelopes whose times lie centuries ahead
/// (`stale_ms = u64::MAX`) are read without a panic.
#[tokio::test]
async fn planted_times_far_ahead_are_read_without_panic() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus).build().unwrap();
    let now = now_ms();
    let cases = [
        (now, now, now + 60_000, u64::MAX),
        (now, u64::MAX, u64::MAX, u64::MAX),
        (now, now + 1000, u64::MAX / 2, u64::MAX),
        (0, 0, u64::MAX, u64::MAX),
    ];
    for (i, (written_ms, soft_ms, fresh_ms, stale_ms)) in cases.into_iter().enumerate() {
        let key = i as u64;
        let times = Times {
            written_ms,
            soft_ms,
            fresh_ms,
            stale_ms,
        };
        let bytes = envelope::encode(false, times, &[], &postcard("planted"), 1024).unwrap();
        let sk = c.key_format().storage_key(&key);
        tier.put_raw(&sk, Bytes::from(bytes), Duration::from_secs(60));
        assert_eq!(
            c.get(&key).await.as_deref().map(String::as_str),
            Some("planted"),
            "case {i}"
        );
        // And again, from the local tier it filled.
        assert_eq!(
            c.get(&key).await.as_deref().map(String::as_str),
            Some("planted")
        );
    }
}

/// Planted: a stale shared value whose grace lasts until `u64::MAX` ms is
/// kept as the miss path's stale copy (its deadline clamped on the local
/// clock, no overflow) and served when the origin fails, to the caller that
/// read it and to one that joined its load.
#[tokio::test]
async fn a_planted_endless_grace_is_a_stale_copy_without_panic() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .grace(Duration::from_secs(60))
        .build()
        .unwrap();
    let now = now_ms();
    let times = Times {
        written_ms: now - 10_000,
        soft_ms: now - 5_000,
        fresh_ms: now - 5_000,
        stale_ms: u64::MAX,
    };
    let bytes = envelope::encode(false, times, &[], &postcard("planted"), 1024).unwrap();
    tier.put_raw(
        &c.key_format().storage_key(&1),
        Bytes::from(bytes),
        Duration::from_secs(60),
    );
    let failing = || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err::<Option<Entry<String>>, _>(std::io::Error::other("origin down"))
    };
    let (a, b) = tokio::join!(c.fetch(&1, failing), c.fetch(&1, failing));
    for f in [a, b] {
        let f = f.unwrap();
        assert_eq!(f.value.as_deref().map(String::as_str), Some("planted"));
    }
}

/// Case 4: a 42-byte value whose lz4 size prefix claims 256 MiB is a
/// corrupt miss: nothing allocated, the value deleted and counted.
#[tokio::test]
async fn a_lying_decompressed_size_is_a_corrupt_miss() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus).build().unwrap();
    let mut planted = vec![0x54, 0x43, 0x01, 0x02, 0x00];
    planted.extend([0u8; 33]);
    planted.extend([0x00, 0x00, 0x00, 0x10]);
    assert_eq!(planted.len(), 42);
    let sk = c.key_format().storage_key(&9u64);
    tier.put_raw(&sk, Bytes::from(planted), Duration::from_secs(60));
    let v = c
        .get_or_load(&9, || async { Some("origin".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("origin"));
    assert_eq!(c.stats().corrupt_values, 1);
    // The loader's value replaced the planted bytes.
    assert_eq!(
        c.get(&9).await.as_deref().map(String::as_str),
        Some("origin")
    );
}

/// A payload larger than `max_value_size` once decompressed is never
/// written (so a reader may refuse anything larger).
#[tokio::test]
async fn payloads_over_the_size_limit_are_not_stored_even_compressed() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus)
        .max_value_size(4096)
        .build()
        .unwrap();
    // 100 KB of one letter compresses far below 4 KiB.
    let v = c
        .get_or_load(&1, || async { Some("a".repeat(100_000)) })
        .await
        .unwrap();
    assert_eq!(v.map(|v| v.len()), Some(100_000), "served");
    assert!(
        !tier.contains(&c.key_format().storage_key(&1u64)),
        "not stored"
    );
    assert_eq!(c.stats().oversized, 1);
}

/// Case 5: tags that an envelope cannot record exactly (one over 65,535
/// bytes, or more than 65,535 of them) keep the value out of both tiers,
/// so `invalidate_tag` can never miss a copy. Counted.
#[tokio::test]
async fn unrecordable_tags_are_not_stored() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated(&ns(), &tier, &bus).build().unwrap();
    let long = "t".repeat(65_536);
    let many: Vec<String> = (0..65_536).map(|i| format!("t{i}")).collect();
    for (key, tags) in [(1u64, vec![long.clone()]), (2, many)] {
        let loads = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let loads = loads.clone();
            let tags = tags.clone();
            let f = c
                .fetch(&key, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(Some(
                        Entry::new("tagged".to_string()).tags(tags),
                    ))
                })
                .await
                .unwrap();
            assert_eq!(f.value.as_deref().map(String::as_str), Some("tagged"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 2, "not cached locally");
        assert!(!tier.contains(&c.key_format().storage_key(&key)));
    }
    assert_eq!(c.stats().unrecordable_tags, 4);
    // A tag at the limit is stored, and its invalidation reaches it.
    let edge = "t".repeat(65_535);
    c.insert_entry(&3, Entry::new("edge".to_string()).tag(edge.clone()))
        .await;
    assert!(tier.contains(&c.key_format().storage_key(&3u64)));
    c.invalidate_tag(&edge).await;
    assert_eq!(c.get(&3).await, None);
    // UTF-8 tags are recorded and matched exactly.
    c.insert_entry(&4, Entry::new("café".to_string()).tag("category:café"))
        .await;
    c.invalidate_tag("category:café").await;
    assert_eq!(c.get(&4).await, None);
}

/// Case 6: a short key never shares a storage key with a hashed long one.
#[tokio::test]
async fn a_short_key_cannot_read_a_long_keys_value() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<String, String> = isolated(&ns(), &tier, &bus).build().unwrap();
    let long = "L".repeat(300);
    c.insert(&long, "long".to_string()).await;
    let hashed = c.key_format().storage_key(&long);
    let forged = hashed.split_once(':').unwrap().1.to_owned();
    assert!(forged.starts_with('#'));
    assert_eq!(c.get(&forged).await, None);
    assert_eq!(
        c.get(&long).await.as_deref().map(String::as_str),
        Some("long")
    );
    // The literal key, on a namespace of its own.
    let c2: Cache<String, String> = isolated(&ns(), &tier, &bus).build().unwrap();
    c2.insert(&long, "long".to_string()).await;
    assert_eq!(
        c2.get(&"#76218cfe33fa24c1f4a67c79e15962e3".to_string())
            .await,
        None
    );
}

/// Case 3: a forged `seq = u64::MAX` then `seq = 1` from one origin neither
/// stops the listener nor turns that origin's later messages into losses;
/// invalidations from every origin keep being applied.
#[tokio::test(start_paused = true)]
async fn forged_sequence_numbers_do_not_stop_the_listener() {
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
    let mut applied = b.subscribe_applied();
    // Wait until b's listener is subscribed (the bus delivers only to
    // subscribers present at publish time).
    tokio::time::timeout(Duration::from_secs(5), async {
        while !b.local_trusted() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("b subscribed");
    let forger = 0xf0f0_u64;
    let codec = MessageCodec::unsigned();
    let msg = |seq: u64, key: &str| Invalidation {
        sender_instance: forger,
        namespace: name.clone(),
        keys: vec![key.to_owned()],
        tags: vec![],
        created: false,
        seq,
        source_time_ms: 0,
        clear: None,
    };
    for (seq, key) in [(1, "100"), (u64::MAX, "101"), (1, "102")] {
        bus.publish(&name, Bytes::from(codec.encode(&msg(seq, key))))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), applied.recv())
            .await
            .expect("the listener applies each forged message")
            .unwrap();
        assert_eq!(got.seq, seq);
    }
    let flushes = b.stats().local_flushes;
    // The origin's count goes on from 1: no loss presumed, no flush.
    for seq in 2..20 {
        bus.publish(&name, Bytes::from(codec.encode(&msg(seq, "103"))))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), applied.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(b.stats().local_flushes, flushes, "no flush per message");
    // And a real invalidation from another instance still evicts.
    a.insert(&7, "old".to_string()).await;
    assert_eq!(b.get(&7).await.as_deref().map(String::as_str), Some("old"));
    a.insert(&7, "new".to_string()).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while b.get(&7).await.as_deref().map(String::as_str) != Some("new") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("b sees a's write");
}

/// A codec that panics on some bytes.
struct Brittle;

impl Codec<String> for Brittle {
    fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if value == "explode" {
            panic!("encode bomb");
        }
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, DecodeError> {
        if bytes == b"bomb" {
            panic!("decode bomb");
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| DecodeError::Corrupt(e.to_string()))
    }
}

/// Fail open: a codec that panics on stored bytes makes them a corrupt
/// miss (deleted, counted); one that panics encoding a value serves it
/// uncached. The caller never sees the panic.
#[tokio::test]
async fn a_panicking_codec_fails_open() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = isolated::<u64, String>(&ns(), &tier, &bus)
        .build_with_codec(Brittle)
        .unwrap();
    let now = now_ms();
    let times = Times {
        written_ms: now,
        soft_ms: now + 60_000,
        fresh_ms: now + 60_000,
        stale_ms: now + 60_000,
    };
    let sk = c.key_format().storage_key(&1u64);
    let bomb = envelope::encode(false, times, &[], b"bomb", 1024).unwrap();
    tier.put_raw(&sk, Bytes::from(bomb), Duration::from_secs(60));
    let v = c
        .get_or_load(&1, || async { Some("origin".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("origin"));
    assert_eq!(c.stats().corrupt_values, 1);
    let v = c
        .get_or_load(&2, || async { Some("explode".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("explode"));
    assert!(!tier.contains(&c.key_format().storage_key(&2u64)));
}
