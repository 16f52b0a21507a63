//! The invalidation bus: the trait a pub/sub transport (NATS, Redis pub/sub)
//! implements, and the in-process implementation used by the embedded default.
//!
//! The contract every implementation keeps is on [`Bus`].

mod memory;

pub use memory::InProcessBus;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::BusError;

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// A payload published on the namespace.
    Message(Bytes),
    /// Subscribed (again). `resumed` is true when nothing published while
    /// disconnected is missing: a replaying transport reports it after the
    /// replay has been delivered (the engine then trusts the local tier it
    /// kept across the disconnect).
    Connected {
        /// Nothing was missed, and what was missed has been delivered.
        resumed: bool,
    },
    /// The transport lost its connection; messages may be missed until the
    /// next `Connected`.
    Disconnected,
    /// The transport proved itself live without a message.
    Heartbeat,
    /// The client dropped this many messages (slow consumer).
    Lost {
        /// How many, when known (0 when unknown).
        count: u64,
    },
}

/// A publish/subscribe transport for invalidations.
///
/// # Contract
///
/// A bus moves opaque payloads (encoded [`Invalidation`](crate::backend::Invalidation)s)
/// between every subscriber of a namespace, including the publisher itself
/// (the engine ignores its own echo). Besides messages, a subscription reports
/// what the engine needs to keep the local tier honest:
///
/// - [`BusEvent::Disconnected`] as soon as the transport knows it is cut off;
/// - [`BusEvent::Connected`] when it is subscribed again, with `resumed: true`
///   only when everything published meanwhile has been delivered, before
///   this event;
/// - [`BusEvent::Heartbeat`] while live, at least as often as
///   [`Bus::heartbeat_at_least`] asked (every few seconds by default), so
///   silence can be told apart from a quiet system;
/// - [`BusEvent::Lost`] when the client itself dropped messages.
///
/// Every implementation must pass `backend::conformance::bus` (feature
/// `conformance`).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` to every subscriber of `namespace`.
    async fn publish(&self, namespace: &str, payload: Bytes) -> Result<(), BusError>;

    /// Subscribes to `namespace`. The stream ends only when the bus is shut
    /// down; connection trouble is reported as events, not as the end.
    async fn subscribe(&self, namespace: &str) -> Result<BoxStream<'static, BusEvent>, BusError>;

    /// Asks for proof of life on every subscription at least every `every`:
    /// a [`BusEvent::Heartbeat`] (or a message) that only a live transport
    /// can deliver. A cache calls it before it subscribes, with what its
    /// staleness bound needs (a fifth of the bound); the fastest request
    /// wins. A transport may keep a faster pace of its own. The default does
    /// nothing, for a bus whose pace is fixed: a cache on it bypasses its
    /// local tier whenever a heartbeat comes later than its liveness window.
    fn heartbeat_at_least(&self, every: std::time::Duration) {
        let _ = every;
    }

    /// Waits until everything [`publish`](Self::publish) has accepted is
    /// with the server: called before a publisher lets its last handle
    /// go (a dropped cache's farewell), where a client that buffers
    /// publishes would otherwise lose what it still holds. The default
    /// returns at once, for a bus whose `publish` returns only once the
    /// server has the message.
    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }
}
