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

/// A boxed error: the underlying cause that [`SharedError`] and [`BusError`]
/// carry as their [`source`](std::error::Error::source).
///
/// Anything that implements [`std::error::Error`] + `Send + Sync` converts
/// into it with `.into()` (or `Box::new`), and so do `&str` and `String`, for
/// a failure that has no underlying error (a reply of the wrong shape).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of a [`SharedTier`](crate::backend::SharedTier) implementation.
///
/// [`Unavailable`](Self::Unavailable) and [`Server`](Self::Server) keep the
/// underlying error (the client library's, an I/O error) as their
/// [`source`](std::error::Error::source); their `Display` includes its
/// message too. Build them with [`SharedError::unavailable`] and
/// [`SharedError::server`], which take that error or, when there is none,
/// a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// The call did not finish within its time budget.
    #[error("shared tier call timed out")]
    Timeout,
    /// The circuit breaker is open: the call was not attempted.
    #[error("shared tier breaker is open")]
    BreakerOpen,
    /// The server could not be reached or the connection broke; holds the
    /// underlying error.
    #[error("shared tier unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The server answered with an error or an unexpected reply; holds the
    /// underlying error, or a message for a reply that broke the protocol
    /// (`SharedError::Server("MGET answered 2 values for 3 keys".into())`).
    #[error("shared tier error: {0}")]
    Server(#[source] BoxError),
}

impl SharedError {
    /// [`SharedError::Unavailable`] caused by `source`: an error (kept as
    /// the [`source`](std::error::Error::source)) or a message (`&str`,
    /// `String`).
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        SharedError::Unavailable(source.into())
    }

    /// [`SharedError::Server`] caused by `source`: an error (kept as the
    /// [`source`](std::error::Error::source)) or a message (`&str`,
    /// `String`) for a protocol-level failure that has no underlying error.
    pub fn server(source: impl Into<BoxError>) -> Self {
        SharedError::Server(source.into())
    }
}

/// An error of a [`Bus`](crate::backend::Bus) implementation.
///
/// [`Unavailable`](Self::Unavailable) and [`Server`](Self::Server) keep the
/// underlying error as their [`source`](std::error::Error::source) (see
/// [`SharedError`]); build them with [`BusError::unavailable`] and
/// [`BusError::server`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus could not be reached or the connection broke; holds the
    /// underlying error (or a message, e.g. `"connection is down".into()`).
    #[error("bus unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The server refused the operation (permissions, limits); holds the
    /// underlying error (or a message).
    #[error("bus error: {0}")]
    Server(#[source] BoxError),
    /// The publish did not finish within its time budget.
    #[error("bus publish timed out")]
    Timeout,
}

impl BusError {
    /// [`BusError::Unavailable`] caused by `source`: an error (kept as the
    /// [`source`](std::error::Error::source)) or a message (`&str`,
    /// `String`).
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        BusError::Unavailable(source.into())
    }

    /// [`BusError::Server`] caused by `source`: an error (kept as the
    /// [`source`](std::error::Error::source)) or a message (`&str`,
    /// `String`).
    pub fn server(source: impl Into<BoxError>) -> Self {
        BusError::Server(source.into())
    }
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use super::*;

    #[test]
    fn shared_error_keeps_its_io_source() {
        let e = SharedError::unavailable(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(e.to_string(), "shared tier unavailable: connection refused");
        let source = e.source().expect("a source");
        let io = source.downcast_ref::<io::Error>().expect("the io::Error");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn bus_error_keeps_its_io_source() {
        let e = BusError::server(io::Error::new(io::ErrorKind::PermissionDenied, "denied"));
        assert_eq!(e.to_string(), "bus error: denied");
        let source = e.source().expect("a source");
        assert!(source.downcast_ref::<io::Error>().is_some());
        assert!(BusError::Timeout.source().is_none());
    }

    #[test]
    fn messages_still_build_errors() {
        // The engine builds protocol errors from a message this way.
        let e = SharedError::Server("get_many answered the wrong count".into());
        assert_eq!(
            e.to_string(),
            "shared tier error: get_many answered the wrong count"
        );
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("get_many answered the wrong count")
        );
        let e = BusError::unavailable(format!("{} is down", "the bus"));
        assert_eq!(e.to_string(), "bus unavailable: the bus is down");
        assert!(SharedError::Timeout.source().is_none());
    }
}
