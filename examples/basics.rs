//! The basics, to copy from: build a cache, read through it, invalidate.
//!
//! ```text
//! cargo run --example basics
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use tiercache::core::Cache;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One namespace per kind of data; the embedded default needs no server.
    let users: Cache<u64, String> = Cache::builder("users")
        .ttl(Duration::from_secs(60))
        .build()?;

    // A miss calls the loader (your database); `None` means "no such user".
    let name = users
        .get_or_load(&7, || async { Some("ada".to_string()) })
        .await?;
    println!("user 7: {name:?}");

    // A hit does not call it.
    let again = users
        .get_or_load(&7, || async { unreachable!("served from the cache") })
        .await?;
    assert_eq!(again, name);

    // After a write to the database: drop the key everywhere.
    users.invalidate(&7).await;
    assert!(users.get(&7).await.is_none());
    Ok(())
}
