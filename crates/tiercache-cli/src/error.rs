//! The CLI's errors: each names the setting or the argument at fault.

use tiercache_core::backend::{BoxError, BusError, SharedError};

/// Why a `tiercache` command failed. The message starts with what was
/// wrong: a flag (`--redis-url`), a config file field (`redis.url in
/// sidecar.toml`) or an argument.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing, empty or inconsistent with another.
    #[error("{setting}: {reason}")]
    Setting {
        /// The flag or field, e.g. `--namespace`.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting's value was refused by the client library (an unparsable
    /// URL, a bad combination).
    #[error("{setting}: {source}")]
    Invalid {
        /// The flag or field.
        setting: String,
        /// The library's error.
        #[source]
        source: BoxError,
    },
    /// The `--config` file cannot be read or parsed.
    #[error("--config {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: String,
        /// What went wrong (with the line and field, for a parse error).
        reason: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A server could not be reached.
    #[error("{setting}: cannot connect to {url}: {source}")]
    Connect {
        /// The flag or field that named the server.
        setting: String,
        /// The server (passwords hidden).
        url: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A shared-tier (Redis) call failed.
    #[error("{setting}: {operation} on {url} failed: {source}")]
    Shared {
        /// The flag or field that named the server.
        setting: String,
        /// The server (passwords hidden).
        url: String,
        /// What was being done (`invalidate`, `clear`, ...).
        operation: &'static str,
        /// The shared tier's error.
        #[source]
        source: SharedError,
    },
    /// A bus call (publish, subscribe, flush) failed.
    #[error("{setting}: {operation} on {url} failed: {source}")]
    Bus {
        /// The flag or field that named the bus.
        setting: String,
        /// The bus server (passwords hidden).
        url: String,
        /// What was being done.
        operation: &'static str,
        /// The bus's error.
        #[source]
        source: BusError,
    },
    /// `stats` could not scrape its URL.
    #[error("--url {url}: {reason}")]
    Scrape {
        /// The metrics URL.
        url: String,
        /// What went wrong.
        reason: String,
        /// The I/O error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A `tiercache sidecar` command failed.
    #[error(transparent)]
    Sidecar(#[from] tiercache_sidecar::Error),
    /// Standard output could not be written (a closed pipe).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// A [`Error::Setting`].
    pub fn setting(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Setting {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}
