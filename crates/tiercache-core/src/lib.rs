//! tiercache-core: the engine (work in progress; traits first).
pub mod bus;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod error;
pub mod key;
pub mod message;
pub mod shared;

pub use bus::{Bus, BusEvent, InProcessBus};
pub use error::{BusError, ConfigError, DecodeError, EncodeError, Error, SharedError};
pub use key::{KeyFormat, KeyHash, TagHash};
pub use message::{Invalidation, MessageCodec};
pub use shared::{FillTicket, InProcessSharedTier, SharedEvent, SharedTier};

#[cfg(test)]
mod conformance_tests {
    #[tokio::test]
    async fn in_process_shared_tier_conforms() {
        crate::conformance::shared_tier(&crate::InProcessSharedTier::default()).await;
    }
    #[tokio::test]
    async fn in_process_bus_conforms() {
        let bus = crate::InProcessBus::new();
        crate::conformance::bus_with_heartbeat(&bus, &bus.clone(), std::time::Duration::from_secs(2)).await;
    }
}
