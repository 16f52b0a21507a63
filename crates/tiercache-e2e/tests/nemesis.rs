//! Issue #13: the randomized checker with a nemesis, once per sidecar
//! source, for `NEMESIS_SECS` seconds each (default 30). What it does and
//! checks: `tiercache_e2e::nemesis`. A long run is an example of this
//! package, with a progress line every 10 s:
//!
//! ```text
//! cargo run --release -p tiercache-e2e --example nemesis -- --secs 600 --source logical
//! ```
//!
//! (`NEMESIS_SECS=600 cargo test --release -p tiercache-e2e --test nemesis
//! -- --nocapture` works too.)

use tiercache_e2e::nemesis::{self, Source};

/// `RUST_LOG` (say `tiercache_core=info`) logs what the instances do.
fn log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_beyond_the_bound_with_the_notify_source() {
    log();
    let source = Source::Notify;
    nemesis::run(source, source.faults(), nemesis::duration_from_env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_beyond_the_bound_with_the_logical_source() {
    log();
    let source = Source::Logical;
    nemesis::run(source, source.faults(), nemesis::duration_from_env()).await;
}
