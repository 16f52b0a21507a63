//! Typed errors of the engine and of the traits other crates implement.

use std::sync::Arc;
use std::time::Duration;

/// The error a caller of [`Cache`](crate::Cache) can see.
///
/// Failures of the shared tier or the bus never appear here: the cache fails
/// open (counts them and goes on with the local tier and the origin). Only what
/// the origin did (or failed to do in time) reaches the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The loader returned an error. It is shared by every waiter of the load
    /// and never cached.
    #[error("loader failed: {0}")]
    Load(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),
    /// The loader panicked; every waiter is woken with this error.
    #[error("loader panicked")]
    LoaderPanicked,
    /// The load was cancelled (its task aborted or its runtime shut down)
    /// before it produced a result.
    #[error("load was cancelled before it finished")]
    LoaderCancelled,
    /// The load did not finish within the hard timeout.
    #[error("load timed out after {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// Wraps a loader error.
    pub fn load<E>(err: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::Load(Arc::new(err))
    }

    /// Whether the loader declined to have its answer stored ([`NotStored`]).
    pub fn is_not_stored(&self) -> bool {
        self.loader_error::<NotStored>().is_some()
    }

    /// The loader's own error, if this is one, downcast to `E`.
    pub fn loader_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Load(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// A loader's answer that its own caller may use but the cache must neither
/// store nor hand to other callers (a private or uncacheable response).
///
/// Return it as the loader's error: the load counts under
/// `tiercache_not_stored_total` instead of `tiercache_load_errors_total`,
/// nothing is filled, and callers that waited on the load get
/// [`Error::Load`] with this inside ([`Error::is_not_stored`]), so they ask
/// the origin themselves. The caller that ran the loader keeps its answer
/// through its own channel (see `tiercache-tower`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not stored: {reason}")]
pub struct NotStored {
    /// Why, for logs.
    pub reason: &'static str,
}

impl NotStored {
    /// A `NotStored` with its reason.
    pub fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}

/// A configuration error: names the field and says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache config: `{field}`: {reason}")]
pub struct ConfigError {
    /// The builder field at fault, as named by its builder method.
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl ConfigError {
    /// A new configuration error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// An error of a [`SharedTier`](crate::SharedTier) implementation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// The call did not finish within its time budget.
    #[error("shared tier call timed out")]
    Timeout,
    /// The circuit breaker is open: the call was not attempted.
    #[error("shared tier breaker is open")]
    BreakerOpen,
    /// The server could not be reached or the connection broke.
    #[error("shared tier unavailable: {0}")]
    Unavailable(String),
    /// The server answered with an error or an unexpected reply.
    #[error("shared tier error: {0}")]
    Server(String),
}

/// An error of a [`Bus`](crate::Bus) implementation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus could not be reached or the connection broke.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The server refused the operation (permissions, limits).
    #[error("bus error: {0}")]
    Server(String),
    /// The publish did not finish within its time budget.
    #[error("bus publish timed out")]
    Timeout,
}

/// Why bytes could not be decoded into a value or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not start with tiercache's header.
    #[error("not a tiercache payload")]
    Foreign,
    /// Written by a newer format version than this build understands.
    #[error("format version {0} is newer than this build understands")]
    FutureVersion(u8),
    /// The bytes are cut short or malformed.
    #[error("corrupt payload: {0}")]
    Corrupt(String),
    /// The signature is missing or does not match the shared key.
    #[error("bad signature")]
    BadSignature,
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("encode failed: {0}")]
pub struct EncodeError(pub String);
