use std::time::Duration;
use tiercache_core::{Cache, InProcessBus, InProcessSharedTier};

#[tokio::test]
async fn smoke() {
    let tier = InProcessSharedTier::default();
    let bus = InProcessBus::new();
    let a: Cache<u64, String> = Cache::builder("smoke")
        .shared_tier(tier.clone())
        .bus(bus.clone())
        .build()
        .unwrap();
    let b: Cache<u64, String> = Cache::builder("smoke")
        .shared_tier(tier.clone())
        .bus(bus.clone())
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let v = a
        .get_or_load(&1, || async { Some("one".to_string()) })
        .await
        .unwrap();
    assert_eq!(v.as_deref().map(String::as_str), Some("one"));
    assert_eq!(b.get(&1).await.as_deref().map(String::as_str), Some("one"));
    b.invalidate(&1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.get(&1).await, None);
    println!("{:?}\n{:?}", a.stats(), b.stats());
}
