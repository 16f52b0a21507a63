//! For backend implementors: what a shared tier (Redis) or an invalidation
//! bus (NATS, Redis pub/sub) implements, and what it may use to do so.
//!
//! An application needs none of this beyond handing a backend to
//! [`CacheBuilder::shared_tier`](crate::CacheBuilder::shared_tier) or
//! [`CacheBuilder::bus`](crate::CacheBuilder::bus).
//!
//! - The shared tier: the [`SharedTier`] trait (its contract is on the
//!   trait), the [`FillTicket`] of a load, the [`SharedEvent`]s it reports,
//!   its [`SharedError`], and [`InProcessSharedTier`], the embedded one.
//! - The bus: the [`Bus`] trait, the [`BusEvent`]s a subscription yields, its
//!   [`BusError`], and [`InProcessBus`], the embedded one.
//! - What travels on the bus: an [`Invalidation`], encoded and signed by a
//!   [`MessageCodec`]; [`OriginSignal`] tells an invalidation proper from a
//!   heartbeat or a farewell. A sidecar publishing invalidations uses them.
//! - Keys: [`KeyFormat`] derives a namespace's storage keys (and the
//!   [`KeyHash`] the local tier uses).
//! - `conformance` (feature `conformance`): the suites every implementation
//!   must pass, called from its tests.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use crate::bus::{Bus, BusEvent, InProcessBus};
pub use crate::envelope::{EnvelopeInfo, Times, describe as describe_envelope};
pub use crate::error::{BoxError, BusError, SharedError};
pub use crate::key::{KeyFormat, KeyHash};
pub use crate::message::{ClearNote, Invalidation, MessageCodec, OriginSignal};
pub use crate::shared::{
    ClearEpochs, Cleared, FillTicket, InProcessSharedTier, ShardedSharedTier, ShardingError,
    SharedEvent, SharedTier,
};
