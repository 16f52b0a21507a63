//! The testkit's error type.

/// Everything that can go wrong while starting, stopping or talking to a test server.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A server binary (or CLI tool) is not installed.
    #[error("`{binary}` was not found; install the Debian package `{debian_package}`")]
    MissingBinary {
        /// The executable that was looked for, e.g. `redis-server`.
        binary: String,
        /// The Debian package that provides it, e.g. `redis-tools`.
        debian_package: String,
    },
    /// An I/O error (temp dir, log file, socket, spawning a process).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A server did not become ready in time, or exited while starting.
    #[error("{server} did not become ready; last lines of its log:\n{log}")]
    NotReady {
        /// Which server, e.g. `redis-server on 127.0.0.1:34567 (exited: exit status: 1)`.
        server: String,
        /// The last 40 lines of the server's log.
        log: String,
    },
    /// A helper command (initdb, psql, redis-cli, ...) failed, or a server answered unexpectedly.
    #[error("command failed: {0}")]
    Command(String),
}

/// The testkit's result type.
pub type Result<T> = std::result::Result<T, TestkitError>;

impl TestkitError {
    pub(crate) fn missing(binary: &str, debian_package: &str) -> Self {
        TestkitError::MissingBinary {
            binary: binary.to_owned(),
            debian_package: debian_package.to_owned(),
        }
    }
}
