//! The sidecar's commands (`run`, `check`, `sql`), shared by the
//! `tiercache-sidecar` binary and `tiercache sidecar`: both parse
//! [`SidecarCommand`] and hand it to [`execute`], so they behave alike.
//!
//! ```no_run
//! use clap::Parser;
//! use tiercache_sidecar::cli::{SidecarCommand, execute};
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(subcommand)]
//!     command: SidecarCommand,
//! }
//!
//! # async fn main_() -> Result<(), tiercache_sidecar::Error> {
//! let args = Args::parse_from(["me", "sql", "--config", "sidecar.toml"]);
//! execute(args.command).await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use crate::{Config, Error, Shutdown, Sidecar, http};

/// A sidecar command.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SidecarCommand {
    /// Run until SIGTERM or ctrl-c (finishing the batch at hand).
    Run {
        /// The TOML configuration file.
        #[arg(long, short, env = "TIERCACHE_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration and connect to Postgres, Redis and the bus.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, env = "TIERCACHE_CONFIG")]
        config: PathBuf,
    },
    /// Print the SQL that sets up the configured source.
    Sql {
        /// The TOML configuration file.
        #[arg(long, short, env = "TIERCACHE_CONFIG")]
        config: PathBuf,
    },
}

/// Installs the log subscriber both binaries use: `RUST_LOG` (default
/// `info`), to standard error. Does nothing when one is already installed.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `command`: `sql` and `check` print to standard output, `run` runs
/// the sidecar until SIGTERM or ctrl-c.
///
/// # Errors
///
/// The configuration is invalid, or (for `check` and `run`) a connection
/// or the source failed in a way retrying cannot fix.
pub async fn execute(command: SidecarCommand) -> Result<(), Error> {
    match command {
        SidecarCommand::Sql { config } => {
            let config = Config::load(config)?;
            print!("{}", crate::setup_sql(&config)?);
            Ok(())
        }
        SidecarCommand::Check { config } => {
            let config = Config::load(config)?;
            println!("config: ok ({} rules)", config.rules.len());
            for line in crate::check(&config).await? {
                println!("{line}");
            }
            println!("check: ok");
            Ok(())
        }
        SidecarCommand::Run { config } => run(Config::load(config)?).await,
    }
}

async fn run(config: Config) -> Result<(), Error> {
    let (trigger, shutdown) = Shutdown::new();
    // The recorder before the sinks: the Redis shared tier registers its
    // breaker gauge when built, and every series is exported from the start.
    let handle = match config.http_listen() {
        Some(addr) => {
            let handle = http::install_recorder()?;
            http::register_metrics(&config);
            Some((addr, handle))
        }
        None => None,
    };
    let sidecar = Sidecar::from_config(config.clone()).await?;
    let http_task = match handle {
        Some((addr, handle)) => {
            let (bound, task) =
                http::serve(addr, sidecar.status(), handle, shutdown.clone()).await?;
            tracing::info!("serving /healthz and /metrics on http://{bound}");
            Some(task)
        }
        None => None,
    };
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing the current batch");
        trigger.trigger();
    });
    let result = sidecar.run(shutdown).await;
    signals.abort();
    if let Some(task) = http_task {
        task.abort();
    }
    tracing::info!("stopped");
    result
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
