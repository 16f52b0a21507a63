//! Names of the metrics this crate records through the [`metrics`] facade.
//!
//! Per-namespace counters carry a `namespace` label (the namespace as given,
//! not its subject token).

/// Counter: payloads published (accepted by the client; acknowledged by the
/// stream in JetStream mode). Label `namespace`.
pub const PUBLISHED: &str = "tiercache_nats_published_total";
/// Counter: publishes that failed (disconnected, timed out, refused). Label
/// `namespace`.
pub const PUBLISH_ERRORS: &str = "tiercache_nats_publish_errors_total";
/// Counter: payloads delivered to a subscription. Label `namespace`.
pub const RECEIVED: &str = "tiercache_nats_received_total";
/// Counter: payloads the client dropped because a subscription did not keep
/// up (slow consumer), as reported in [`BusEvent::Lost`](tiercache_core::backend::BusEvent).
/// Label `namespace`.
pub const LOST: &str = "tiercache_nats_lost_total";
/// Counter: connections lost (one per disconnect the client reports).
pub const DISCONNECTS: &str = "tiercache_nats_disconnects_total";
/// Counter: connections re-established after a disconnect.
pub const RECONNECTS: &str = "tiercache_nats_reconnects_total";
/// Counter: JetStream subscriptions that resumed after a disconnect. Labels
/// `namespace` and `resumed` (`true`: nothing missed; `false`: history was
/// gone and the subscriber was told to resynchronise).
pub const JETSTREAM_RESUMES: &str = "tiercache_nats_jetstream_resumes_total";
/// Counter: JetStream subscriptions whose consumer could not be trusted
/// while the connection stayed up: JetStream did not answer (a stream leader
/// being elected), or the stream held newer messages for the subscription
/// and none arrived for a whole check period (the consumer's server was
/// lost). Each is rebuilt after its last delivered sequence. Label
/// `namespace`.
pub const JETSTREAM_STALLS: &str = "tiercache_nats_jetstream_stalls_total";
