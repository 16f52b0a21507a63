//! `tiercache-sidecar`: Postgres changes → tiercache invalidations.
//!
//! ```text
//! tiercache-sidecar run   --config sidecar.toml   # run until SIGTERM / ctrl-c
//! tiercache-sidecar check --config sidecar.toml   # validate, connect to everything
//! tiercache-sidecar sql   --config sidecar.toml   # print the source's setup SQL
//! ```
//!
//! The same commands as `tiercache sidecar run|check|sql` (both binaries
//! call [`tiercache_sidecar::cli::execute`]).

use std::process::ExitCode;

use clap::Parser;
use tiercache_sidecar::cli::{SidecarCommand, execute, init_tracing};

/// Turns Postgres row changes into tiercache shared-tier invalidations and
/// bus messages.
#[derive(Debug, Parser)]
#[command(name = "tiercache-sidecar", version, about)]
struct Cli {
    #[command(subcommand)]
    command: SidecarCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
