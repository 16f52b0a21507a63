//! The `tiercache` operator tool, as a library: the command line
//! ([`Cli`]), and each verb as a function that writes its report to any
//! [`Write`](std::io::Write).
//!
//! ```no_run
//! use clap::Parser;
//! use tiercache_cli::Cli;
//!
//! # async fn example() -> Result<(), tiercache_cli::Error> {
//! // `tiercache invalidate`: Redis first (keys deleted, tags bumped), then
//! // the bus (one message, then a farewell, from a random sender id).
//! let cli = Cli::parse_from([
//!     "tiercache", "invalidate",
//!     "--redis-url", "redis://127.0.0.1:6379",
//!     "--nats-url", "nats://127.0.0.1:4222",
//!     "--namespace", "products", "--key", "42", "--tag", "category:7",
//! ]);
//! tiercache_cli::run(cli, &mut std::io::stdout()).await?;
//! # Ok(()) }
//! ```
//!
//! The pieces run on their own too; the Prometheus text parser behind
//! `stats`, for one:
//!
//! ```
//! use tiercache_cli::{prom, stats};
//!
//! let page = prom::parse(
//!     "tiercache_hits_total{namespace=\"products\",tier=\"local\"} 90\n\
//!      tiercache_hits_total{namespace=\"products\",tier=\"shared\"} 6\n\
//!      tiercache_misses_total{namespace=\"products\"} 4\n\
//!      tiercache_bus_state{namespace=\"products\",state=\"live\"} 1\n",
//! );
//! let s = stats::namespace_stats(&page, "products");
//! assert_eq!(s.bus_state.as_deref(), Some("live"));
//! let table = stats::render(&s);
//! assert!(table.contains("local hit ratio         90.0%  (90 of 100)"), "{table}");
//! assert!(table.contains("shared hit ratio        60.0%  (6 of 10)"), "{table}");
//! ```
//!
//! # Verbs
//!
//! | verb | does |
//! |---|---|
//! | `sidecar run\|check\|sql --config FILE` | the sidecar ([`tiercache_sidecar::cli`]; `tiercache-sidecar` is the same) |
//! | `invalidate --namespace NS (--key K \| --tag T)...` | [`ops::invalidate`] |
//! | `clear --namespace NS [--soft]` | [`ops::clear`] |
//! | `inspect --namespace NS --key K` | [`inspect::inspect`] |
//! | `watch --namespace NS [--verbose] [--count N]` | [`watch::watch`] |
//! | `stats --url http://HOST:PORT/metrics` | [`stats::stats`] |
//!
//! Redis and the bus come from flags, their environment variables
//! (`TIERCACHE_REDIS_URL`, `TIERCACHE_NATS_URL`, `TIERCACHE_SIGNING_KEY`,
//! ...) or the sidecar's TOML file (`--config`), see [`ConnArgs`]. Errors
//! ([`Error`]) name the setting at fault.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
#![deny(unreachable_pub)]

pub mod args;
pub mod conn;
pub mod error;
mod http_get;
pub mod inspect;
pub mod ops;
pub mod prom;
pub mod stats;
mod time;
pub mod watch;

use std::io::Write;

pub use args::{Cli, Command, ConnArgs};
pub use error::Error;

/// Runs one command, writing its report to `out` (`sidecar` commands
/// print to standard output themselves).
///
/// # Errors
///
/// The verb's [`Error`], naming what was wrong.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        Command::Sidecar { command } => {
            tiercache_sidecar::cli::execute(command).await?;
            Ok(())
        }
        Command::Invalidate(a) => ops::invalidate(a, out).await,
        Command::Clear(a) => ops::clear(a, out).await,
        Command::Inspect(a) => inspect::inspect(a, out).await,
        Command::Watch(a) => watch::watch(a, out).await,
        Command::Stats(a) => stats::stats(a, out).await,
    }
}
