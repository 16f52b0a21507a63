//! Checks one configuration of the coherence model and prints the state
//! counts, the properties violated (with their traces) and the `sometimes`
//! properties not reached. For configurations too big for the debug-build
//! tests:
//!
//! ```text
//! cargo run --release -p tiercache-model --example check -- --instances 3 --writes 1 --faults 1 --symmetry
//! cargo run --release -p tiercache-model --example check -- --help
//! ```
//!
//! Exits non-zero when an `always`/`eventually` property has a
//! counterexample or a `sometimes` property was not reached.

use std::process::ExitCode;

use tiercache_model::{BusFaults, EngineVariant, ModelConfig, Search, check, find_trace};

const HELP: &str = "\
usage: check [options]
  --instances N      cache instances (2)
  --keys N           keys (1)
  --writes N         writes by the sidecar (2)
  --faults N         bus faults in all (1)
  --bound N          staleness bound in ticks (1)
  --liveness N       liveness window in ticks (1)
  --capped-life N    capped local life (unsynced ttl) in ticks (1)
  --max-delay N      ticks a message may wait on a live bus (0)
  --flights N        loads in flight per instance (1)
  --engine E         current | before-fix (current)
  --origin-heartbeats  the sidecar's sequence number reaches every
                     subscriber each tick (a sketch against silent drops)
  --keep-seq         a reconnect keeps the last sequence numbers (with
                     --origin-heartbeats)
  --bus B            contract | silent | none, or a comma list of
                     hang,disconnect,drop,silent-drop,reorder (contract: hang,
                     disconnect, drop (reported), reorder; silent: contract +
                     silent-drop)
  --no-reorder       deliver in order
  --no-leases        loads take no lease (lease_ttl None)
  --symmetry         merge states that differ by a permutation of instances
  --dfs              depth-first (default breadth-first)
  --threads N        checker threads (all cores)
  --trace            print the example path of every sometimes property too
";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let mut config = ModelConfig::small().with_engine(EngineVariant::CURRENT);
    let mut search = Search::Bfs;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut trace_all = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| -> Result<u8, String> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            "--instances" => config.instances = number(value()?)?.into(),
            "--keys" => config.keys = number(value()?)?.into(),
            "--writes" => config.writes = number(value()?)?,
            "--faults" => config.faults = number(value()?)?,
            "--bound" => config.bound = number(value()?)?,
            "--liveness" => config.liveness = number(value()?)?,
            "--capped-life" => config.capped_life = number(value()?)?,
            "--max-delay" => config.max_delay = number(value()?)?,
            "--flights" => config.max_flights = number(value()?)?.into(),
            "--threads" => threads = number(value()?)?.into(),
            "--engine" => {
                config.engine = match value()?.as_str() {
                    "before-fix" => EngineVariant::BEFORE_SILENCE_DETACH,
                    "current" => EngineVariant::CURRENT,
                    other => return Err(format!("--engine: current or before-fix, not {other}")),
                }
            }
            "--bus" => {
                let list = value()?;
                config.bus = match list.as_str() {
                    "contract" => BusFaults::CONTRACT,
                    "silent" => BusFaults {
                        silent_drop: true,
                        ..BusFaults::CONTRACT
                    },
                    "none" => BusFaults::NONE,
                    _ => {
                        let mut bus = BusFaults::NONE;
                        for kind in list.split(',') {
                            match kind {
                                "hang" => bus.hang = true,
                                "disconnect" => bus.disconnect = true,
                                "drop" => bus.noticed_drop = true,
                                "silent-drop" => bus.silent_drop = true,
                                "reorder" => bus.reorder = true,
                                other => return Err(format!("--bus: unknown fault {other}")),
                            }
                        }
                        bus
                    }
                };
            }
            "--no-reorder" => config.bus.reorder = false,
            "--no-leases" => config.leases = false,
            "--origin-heartbeats" => config.engine.origin_heartbeats = true,
            "--keep-seq" => config.engine.keep_seq_on_reconnect = true,
            "--symmetry" => config.symmetry = true,
            "--dfs" => search = Search::Dfs,
            "--trace" => trace_all = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if config.instances == 0 || config.keys == 0 || config.bound == 0 || config.liveness == 0 {
        return Err("instances, keys, bound and liveness must be at least 1".into());
    }
    if !config.bound_is_achievable() {
        println!(
            "note: max_delay + liveness > bound or capped_life > bound: the bound cannot hold"
        );
    }
    let outcome = check(&config, search, threads);
    println!("{}", outcome.summary());
    let violations = outcome.violations();
    for name in &violations {
        println!("\nVIOLATED: {name}");
        if let Some(path) = find_trace(&config, name) {
            print!("{}", outcome.model().explain(&path));
        }
    }
    let unreached = outcome.unreached();
    for name in &unreached {
        println!("NOT REACHED: {name}");
    }
    if trace_all {
        let model = outcome.model();
        for name in model.sanity_property_names() {
            if let Some(path) = find_trace(&config, name) {
                println!("\nexample: {name}\n{}", model.explain(&path));
            }
        }
    }
    if violations.is_empty() && unreached.is_empty() {
        println!("all properties hold; every sometimes property reached");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
