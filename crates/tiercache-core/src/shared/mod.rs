//! The shared tier: the trait a shared store (Redis) implements, and the
//! in-process implementation used by the embedded default.
//!
//! The contract every implementation keeps is on [`SharedTier`].

mod memory;
mod sharded;

pub use memory::InProcessSharedTier;
pub use sharded::{ShardedSharedTier, ShardingError};

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::SharedError;

/// Taken by [`SharedTier::begin_fill`] before a load; presented again to
/// [`SharedTier::commit_fill`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillTicket {
    /// The key's version when the load began.
    pub version: u64,
    /// The namespace's tag clock when the load began.
    pub tag_clock: u64,
    /// The lease this loader holds, if it asked for one and got it.
    pub lease: Option<u64>,
    /// Another holder has the lease: someone else is loading this key now.
    pub lease_held_elsewhere: bool,
    /// The namespace's clear epochs when the load began: the fill is
    /// written under `epochs.epoch`.
    pub epochs: ClearEpochs,
}

/// A namespace's clear epochs, kept by the shared tier (see
/// [`SharedTier::clear`]). Every value is written under the epoch current
/// when its load began; a reader compares it with these.
///
/// Ordered by `epoch`, then `floor`: both only grow, so the greater of two
/// readings is the later one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClearEpochs {
    /// How many times the namespace was cleared, hard or soft: a value
    /// written under an older epoch is stale (served only within grace).
    pub epoch: u64,
    /// The epoch of the last hard clear: a value written under an older
    /// epoch is gone.
    pub floor: u64,
}

impl ClearEpochs {
    /// What a value written under `written` is now.
    pub fn judge(&self, written: u64) -> Cleared {
        if written < self.floor {
            Cleared::Gone
        } else if written < self.epoch {
            Cleared::Stale
        } else {
            Cleared::Current
        }
    }
}

/// A value's standing against its namespace's [`ClearEpochs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleared {
    /// Written since the last clear.
    Current,
    /// Written before a soft clear: stale, servable within grace.
    Stale,
    /// Written before a hard clear: as if deleted.
    Gone,
}

/// What the shared tier tells the engine about its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SharedEvent {
    /// The connection was lost.
    Disconnected,
    /// The connection came back; state written while it was down, and
    /// invalidations sent meanwhile, may be missing.
    Reconnected,
    /// The server behind the connection changed (Sentinel or Cluster
    /// failover); replication is asynchronous, so versions may have rolled
    /// back.
    FailedOver,
}

/// A shared store of encoded entries, with fill tickets, leases and tag
/// versions. Redis implements it in `tiercache-redis`;
/// [`InProcessSharedTier`] is the embedded default.
///
/// # Contract
///
/// Keys passed in are *storage keys* built by [`KeyFormat`](crate::backend::KeyFormat)
/// (`namespace:key`); values are opaque bytes (the engine's envelope). An
/// implementation keeps, per key, besides the value:
///
/// - a **version** that [`invalidate`](SharedTier::invalidate) increases, so a
///   fill whose [`FillTicket`] was taken before an invalidation is refused by
///   [`commit_fill`](SharedTier::commit_fill) (the fill race, closed across
///   instances);
/// - an optional exclusive **lease**, so that across instances one loads a key
///   while the others wait briefly or serve stale.
///
/// And per namespace, **tag versions** drawn from a per-namespace clock that
/// never goes backwards: [`invalidate_tags`](SharedTier::invalidate_tags) gives
/// each tag a version greater than every clock value handed out before, so an
/// entry whose recorded tag versions differ from the current ones is stale, and
/// a load whose ticket's `tag_clock` is below a tag's version was overtaken by
/// an invalidation of that tag. Tag invalidation is O(1) per tag: no scan.
///
/// And per namespace, **clear epochs** ([`ClearEpochs`]):
/// [`clear`](SharedTier::clear) raises them in O(1), and
/// [`begin_fill`](SharedTier::begin_fill) hands out the current ones with
/// the ticket.
///
/// Every implementation must pass `backend::conformance::shared_tier`
/// (feature `conformance`).
#[async_trait]
pub trait SharedTier: Send + Sync + 'static {
    /// The value under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, SharedError>;

    /// The values under `keys`, in the same order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, SharedError>;

    /// Stores `value` under `key` for `ttl`, unconditionally.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), SharedError>;

    /// Deletes the value under `key` (used for corrupt values). Does not
    /// revoke fill tickets; see [`invalidate`](SharedTier::invalidate).
    async fn delete(&self, key: &str) -> Result<(), SharedError>;

    /// Starts a fill of `key` in `namespace`: returns the key's version and the
    /// namespace's tag clock, and, when `lease_ttl` is given, tries to take the
    /// key's exclusive lease for that long.
    async fn begin_fill(
        &self,
        namespace: &str,
        key: &str,
        lease_ttl: Option<Duration>,
    ) -> Result<FillTicket, SharedError>;

    /// Stores `value` under `key` for `ttl` if the key's version is still the
    /// ticket's, and releases the ticket's lease. Returns `false` (and stores
    /// nothing) when the key was invalidated since the ticket was taken.
    async fn commit_fill(
        &self,
        key: &str,
        ticket: &FillTicket,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, SharedError>;

    /// Releases the ticket's lease without storing anything (the load failed
    /// or its result is not to be cached).
    async fn abort_fill(&self, key: &str, ticket: &FillTicket) -> Result<(), SharedError>;

    /// Deletes `keys`, increases their versions (revoking outstanding fill
    /// tickets) and drops their leases.
    async fn invalidate(&self, keys: &[String]) -> Result<(), SharedError>;

    /// The current versions of `tags` in `namespace` (0 for a tag never
    /// invalidated), in the same order.
    async fn tag_versions(&self, namespace: &str, tags: &[String])
    -> Result<Vec<u64>, SharedError>;

    /// Gives each of `tags` in `namespace` a new version, greater than any tag
    /// clock value handed out before.
    async fn invalidate_tags(&self, namespace: &str, tags: &[String]) -> Result<(), SharedError>;

    /// The clear epochs of `namespace` (both 0 for one never cleared).
    async fn clear_epochs(&self, namespace: &str) -> Result<ClearEpochs, SharedError>;

    /// Clears `namespace` in O(1): a new epoch, greater than both the
    /// stored one and `after` (the newest this caller knows, in case the
    /// store lost its copy), and with `hard` a floor raised to it. Returns
    /// the new epochs. Values are not deleted: readers judge them by the
    /// epoch they were written under, and they expire with their TTL.
    async fn clear(
        &self,
        namespace: &str,
        hard: bool,
        after: u64,
    ) -> Result<ClearEpochs, SharedError>;

    /// Connection events, for implementations that have a connection. The
    /// engine drops its local tier on `Reconnected` and `FailedOver`.
    fn events(&self) -> Option<BoxStream<'static, SharedEvent>> {
        None
    }
}
