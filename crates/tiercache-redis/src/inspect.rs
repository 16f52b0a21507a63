//! What the shared tier holds for one key, for operators' tools
//! (`tiercache inspect`): the Redis keys, the stored bytes, their TTL, the
//! key's version and whether a lease is held.

use std::time::Duration;

use bytes::Bytes;
use tiercache_core::backend::SharedError;

use crate::keys::EntryKeys;
use crate::tier::{Mapped, RedisSharedTier, parse_u64};

/// One storage key, as Redis holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInspection {
    /// The Redis key of the value (`{<storage key>}`).
    pub redis_key: String,
    /// The stored bytes (an envelope), if any.
    pub value: Option<Bytes>,
    /// How long the value has left, if it is stored (with a TTL).
    pub ttl: Option<Duration>,
    /// The key's version (raised by every invalidation; 0 when never
    /// invalidated or forgotten).
    pub version: u64,
    /// A loader holds the key's lease now.
    pub lease_held: bool,
}

impl RedisSharedTier {
    /// What Redis holds for `storage_key` (built with
    /// [`KeyFormat`](tiercache_core::backend::KeyFormat)): one round trip,
    /// the keys share a slot.
    ///
    /// # Errors
    ///
    /// The call failed, or a reply was not what the key layout stores.
    pub async fn inspect(&self, storage_key: &str) -> Result<KeyInspection, SharedError> {
        let keys = EntryKeys::of(storage_key);
        let (k, v, l) = (keys.value.clone(), keys.version.clone(), keys.lease.clone());
        let (value, pttl, version, lease): (Option<Bytes>, i64, Option<String>, i64) = self
            .call("inspect", |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&k)
                    .cmd("PTTL")
                    .arg(&k)
                    .cmd("GET")
                    .arg(&v)
                    .cmd("EXISTS")
                    .arg(&l)
                    .query_async(&mut c)
                    .await
                    .mapped()
            })
            .await?;
        Ok(KeyInspection {
            redis_key: keys.value,
            ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
            value,
            version: match version {
                Some(s) => parse_u64("key version", &s)?,
                None => 0,
            },
            lease_held: lease == 1,
        })
    }
}
