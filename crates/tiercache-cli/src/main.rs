//! `tiercache`: the operator tool (see the library's docs for the verbs).

use std::process::ExitCode;

use clap::Parser;
use tiercache_cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The sidecar logs at `info` as `tiercache-sidecar` does; the operator
    // verbs only log warnings unless RUST_LOG asks for more, so that the
    // clients' reconnect chatter does not bury their reports.
    if matches!(cli.command, Command::Sidecar { .. }) || std::env::var_os("RUST_LOG").is_some() {
        tiercache_sidecar::cli::init_tracing();
    }
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
    let result = runtime.block_on(async {
        let mut out = std::io::stdout();
        tiercache_cli::run(cli, &mut out).await
    });
    // Background tasks of the clients (reconnect loops) must not hold the
    // exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
