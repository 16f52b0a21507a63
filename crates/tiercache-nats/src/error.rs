//! Errors of building and connecting a [`NatsBus`](crate::NatsBus).

use tiercache_core::ConfigError;

/// Why [`NatsBusBuilder::build`](crate::NatsBusBuilder::build) failed.
///
/// Errors at runtime (publishing while disconnected, a timed-out publish) are
/// [`tiercache_core::backend::BusError`]s; this type is only about getting started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsBusError {
    /// A builder field has a bad value; the error names the field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The first connection to the server failed (unreachable, refused,
    /// authentication or TLS failure).
    #[error("cannot connect to NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
    /// The server refused what a setting gave: the credentials (`token`,
    /// `user_password`, `credentials_file`) or, in the TLS handshake, its
    /// certificate was not trusted (`tls_ca_cert`). `field` names the
    /// builder method at fault.
    #[error("cannot connect to NATS: `{field}`: {reason}: {source}")]
    Rejected {
        /// The builder setting at fault.
        field: &'static str,
        /// What the server (or the TLS handshake) said, in plain words.
        reason: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The JetStream stream could not be created or looked up (JetStream not
    /// enabled on the server, permissions, a conflicting stream).
    #[error("JetStream stream `{stream}`: {source}")]
    JetStream {
        /// The stream name given to [`jetstream`](crate::NatsBusBuilder::jetstream).
        stream: String,
        /// What went wrong: the server's answer, or why there was none.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
}
