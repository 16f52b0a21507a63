//! `tiercache-sidecar`: Postgres changes → tiercache invalidations.
//!
//! ```text
//! tiercache-sidecar run   --config sidecar.toml   # run until SIGTERM / ctrl-c
//! tiercache-sidecar check --config sidecar.toml   # validate, connect to everything
//! tiercache-sidecar sql   --config sidecar.toml   # print the source's setup SQL
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tiercache_sidecar::{Config, Shutdown, Sidecar, http};

/// Turns Postgres row changes into tiercache shared-tier invalidations and
/// bus messages.
#[derive(Debug, Parser)]
#[command(name = "tiercache-sidecar", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> Result<(), tiercache_sidecar::Error> {
    match cli.command {
        Command::Sql { config } => {
            let config = Config::load(config)?;
            print!("{}", tiercache_sidecar::setup_sql(&config)?);
            Ok(())
        }
        Command::Check { config } => {
            let config = Config::load(config)?;
            println!("config: ok ({} rules)", config.rules.len());
            for line in tiercache_sidecar::check(&config).await? {
                println!("{line}");
            }
            println!("check: ok");
            Ok(())
        }
        Command::Run { config } => run(Config::load(config)?).await,
    }
}

async fn run(config: Config) -> Result<(), tiercache_sidecar::Error> {
    let (trigger, shutdown) = Shutdown::new();
    let sidecar = Sidecar::from_config(config.clone()).await?;
    let http_task = match config.http_listen() {
        Some(addr) => {
            let handle = http::install_recorder()?;
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

async fn wait_for_signal() {
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
