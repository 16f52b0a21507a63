//! A long nemesis run: the randomized checker of `tests/nemesis.rs` (see
//! `tiercache_e2e::nemesis`) for as long as asked, against real servers it
//! starts itself (redis-server, nats-server and Postgres must be installed;
//! `scripts/test.sh` installs them). Prints a progress line every 10 s, the
//! figures at the end, and where the plot went; exits non-zero when a read
//! was stale beyond the bound or a tier did not converge to Postgres.
//!
//! ```text
//! cargo run --release -p tiercache-e2e --example nemesis -- --secs 600 --source logical
//! cargo run --release -p tiercache-e2e --example nemesis -- --secs 120 --source notify --fault bus-paused --fault redis-killed
//! ```

use std::time::Duration;

use clap::{Parser, ValueEnum};
use tiercache_e2e::nemesis::{self, Fault, Source};

/// A long nemesis run.
#[derive(Parser, Debug)]
struct Args {
    /// How long the nemesis runs, in seconds (then the checker judges).
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// The sidecar's change source; both, one after the other, if not given.
    #[arg(long, value_enum)]
    source: Option<SourceArg>,
    /// Only these faults (repeatable); by default every fault the source is
    /// run against (all but `sidecar-killed` for `notify`).
    #[arg(long = "fault", value_enum)]
    faults: Vec<FaultArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SourceArg {
    Notify,
    Logical,
}

impl From<SourceArg> for Source {
    fn from(s: SourceArg) -> Self {
        match s {
            SourceArg::Notify => Source::Notify,
            SourceArg::Logical => Source::Logical,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FaultArg {
    BusPaused,
    BusKilled,
    InstanceRestarted,
    RedisPaused,
    RedisKilled,
    SidecarKilled,
}

impl From<FaultArg> for Fault {
    fn from(f: FaultArg) -> Self {
        match f {
            FaultArg::BusPaused => Fault::BusPaused,
            FaultArg::BusKilled => Fault::BusKilled,
            FaultArg::InstanceRestarted => Fault::InstanceRestarted,
            FaultArg::RedisPaused => Fault::RedisPaused,
            FaultArg::RedisKilled => Fault::RedisKilled,
            FaultArg::SidecarKilled => Fault::SidecarKilled,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let sources = match args.source {
        Some(s) => vec![Source::from(s)],
        None => Source::ALL.to_vec(),
    };
    let chosen: Vec<Fault> = args.faults.iter().copied().map(Fault::from).collect();
    let duration = Duration::from_secs(args.secs);
    let mut reports = Vec::new();
    for source in sources {
        let faults = if chosen.is_empty() {
            source.faults()
        } else {
            &chosen
        };
        println!(
            "nemesis ({source} source): {} s, faults {faults:?}; a progress line every {} s",
            args.secs,
            nemesis::PROGRESS_EVERY.as_secs()
        );
        reports.push(nemesis::run(source, faults, duration).await);
    }
    println!();
    for report in &reports {
        println!("{report}; no stale read beyond the bound; every tier converged to Postgres");
        println!("  plot: {}", report.plot.display());
    }
}
