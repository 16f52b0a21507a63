//! tiercache-nats: the tiercache invalidation [`Bus`](tiercache_core::backend::Bus) on
//! NATS.
//!
//! ```no_run
//! use std::time::Duration;
//! use futures::StreamExt;
//! use tiercache_core::backend::{Bus, BusEvent};
//! use tiercache_nats::NatsBus;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = NatsBus::builder()
//!     .url("nats://127.0.0.1:4222")
//!     .heartbeat(Duration::from_secs(2))
//!     // Optional: replay what a subscriber missed while cut off.
//!     .jetstream("TIERCACHE")
//!     .build()
//!     .await?;
//!
//! let mut events = bus.subscribe("products").await?;
//! bus.publish("products", b"payload".to_vec().into()).await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         BusEvent::Message(bytes) => println!("invalidation: {} bytes", bytes.len()),
//!         BusEvent::Disconnected => println!("cut off: cap local life"),
//!         BusEvent::Connected { resumed } => println!("back; nothing missed: {resumed}"),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Modes
//!
//! - **Core** (default): one core subject per namespace, `<prefix>.<token>`
//!   (see [`namespace_token`] for the mapping). Lowest latency, at most once.
//! - **JetStream** ([`NatsBusBuilder::jetstream`]): the same subjects, stored
//!   in a stream (created when missing: subjects `<prefix>.>`, file storage,
//!   max age [`DEFAULT_JETSTREAM_MAX_AGE`]). Each subscription reads with an
//!   ordered consumer and resumes after its last delivered sequence, so a
//!   reconnect reports `Connected { resumed: true }` and replays the gap.
//!   Core subscribers and JetStream subscribers of the same prefix hear each
//!   other's live messages.
//!
//! # Events
//!
//! See [`NatsBus`] for what a subscription reports and when, and [`metrics`]
//! for the counters recorded.
#![deny(unreachable_pub)]

mod builder;
mod bus;
mod error;
pub mod metrics;
mod signals;
mod subject;
mod subscription;

pub use builder::{DEFAULT_HEARTBEAT, DEFAULT_JETSTREAM_MAX_AGE, NatsBusBuilder};
pub use bus::NatsBus;
pub use error::NatsBusError;
pub use subject::{DEFAULT_SUBJECT_PREFIX, namespace_token};
