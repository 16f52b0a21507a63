//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tiercache_core::backend::{SharedEvent, SharedTier};
use tiercache_redis::RedisSharedTier;

/// A random key prefix, so tests never see each other's keys.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// Waits up to `within` for `want` on an event stream.
pub async fn wait_event(
    events: &mut BoxStream<'static, SharedEvent>,
    want: SharedEvent,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ev)) if ev == want => return true,
            Ok(Some(other)) => {
                eprintln!("event {other:?} while waiting for {want:?}");
                continue;
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

/// Polls `tier` with a write-then-read until it succeeds or `within` passes.
/// Returns how long it took.
pub async fn until_working(
    tier: &RedisSharedTier,
    key: &str,
    within: Duration,
) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < within {
        let v = Bytes::from(format!("probe-{}", rand::random::<u32>()));
        if tier
            .set(key, v.clone(), Duration::from_secs(60))
            .await
            .is_ok()
            && tier.get(key).await.ok().flatten() == Some(v)
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Value/version/lease/tag round trips between two handles ("instances").
pub async fn two_instances(a: &RedisSharedTier, b: &RedisSharedTier) {
    let ns = unique("two");
    let k = |s: &str| format!("{ns}:{s}");
    let long = Duration::from_secs(60);

    // Values written by one are read by the other.
    a.set(&k("x"), Bytes::from_static(b"from-a"), long)
        .await
        .unwrap();
    assert_eq!(
        b.get(&k("x")).await.unwrap(),
        Some(Bytes::from_static(b"from-a"))
    );
    let many: Vec<String> = (0..40).map(|i| k(&format!("m{i}"))).collect();
    for (i, key) in many.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        a.set(key, Bytes::from(i.to_string()), long).await.unwrap();
    }
    let got = b.get_many(&many).await.unwrap();
    for (i, v) in got.iter().enumerate() {
        let want = (i % 2 == 0).then(|| Bytes::from(i.to_string()));
        assert_eq!(v, &want, "get_many across instances, key {i}");
    }
    b.delete(&k("x")).await.unwrap();
    assert_eq!(a.get(&k("x")).await.unwrap(), None);

    // Leases are exclusive across instances.
    let lease = Some(Duration::from_secs(5));
    let ta = a.begin_fill(&ns, &k("l"), lease).await.unwrap();
    assert!(ta.lease.is_some());
    let tb = b.begin_fill(&ns, &k("l"), lease).await.unwrap();
    assert!(
        tb.lease.is_none() && tb.lease_held_elsewhere,
        "the other instance sees the lease held"
    );
    b.abort_fill(&k("l"), &tb).await.unwrap();
    let still = b.begin_fill(&ns, &k("l"), lease).await.unwrap();
    assert!(
        still.lease_held_elsewhere,
        "the other instance cannot release a lease it never held"
    );
    assert!(
        a.commit_fill(&k("l"), &ta, Bytes::from_static(b"a"), long)
            .await
            .unwrap()
    );
    let next = b.begin_fill(&ns, &k("l"), lease).await.unwrap();
    assert!(
        next.lease.is_some(),
        "after the holder commits, the other instance can take the lease"
    );
    b.abort_fill(&k("l"), &next).await.unwrap();

    // The fill race across instances: b's ticket is revoked by a's invalidation.
    let tb = b.begin_fill(&ns, &k("race"), None).await.unwrap();
    a.invalidate(&[k("race")]).await.unwrap();
    assert!(
        !b.commit_fill(&k("race"), &tb, Bytes::from_static(b"stale"), long)
            .await
            .unwrap()
    );
    assert_eq!(a.get(&k("race")).await.unwrap(), None);

    // Invalidating many keys at once (many slots on a cluster).
    let batch: Vec<String> = (0..30).map(|i| k(&format!("inv{i}"))).collect();
    let mut tickets = Vec::new();
    for key in &batch {
        a.set(key, Bytes::from_static(b"v"), long).await.unwrap();
        tickets.push(
            b.begin_fill(&ns, key, Some(Duration::from_secs(5)))
                .await
                .unwrap(),
        );
    }
    a.invalidate(&batch).await.unwrap();
    assert!(
        b.get_many(&batch)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none),
        "invalidate deletes every key"
    );
    for (key, t) in batch.iter().zip(&tickets) {
        assert!(
            !b.commit_fill(key, t, Bytes::from_static(b"old"), long)
                .await
                .unwrap()
        );
        let fresh = a
            .begin_fill(&ns, key, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(fresh.lease.is_some(), "invalidate dropped the lease");
        a.abort_fill(key, &fresh).await.unwrap();
    }

    // Tags: one instance invalidates, the other sees the new version.
    let tags = vec!["red".to_owned(), "blue".to_owned()];
    let before = b.begin_fill(&ns, &k("tagged"), None).await.unwrap();
    a.invalidate_tags(&ns, &tags).await.unwrap();
    let v = b.tag_versions(&ns, &tags).await.unwrap();
    assert!(
        v.iter().all(|x| *x > before.tag_clock),
        "{v:?} vs {}",
        before.tag_clock
    );
    assert_ne!(v[0], v[1], "each tag gets its own version");
    let after = b.begin_fill(&ns, &k("tagged"), None).await.unwrap();
    assert!(after.tag_clock >= v[0].max(v[1]));
}
