//! Exhaustive checks of the coherence model on small configurations (a
//! debug build runs them all in well under two minutes), and bigger ones
//! ignored here, for a release build:
//!
//! ```text
//! cargo test --release -p tiercache-model --test model -- --ignored --nocapture
//! ```
//!
//! Each test prints its configuration and state counts (`--nocapture` to
//! see them), and the trace of every counterexample it expects.

use tiercache_model::{
    BusFaults, CoherenceModel, EVENTUALLY_CONVERGES, EngineVariant, ModelConfig, NO_STALE_READ,
    Outcome, QUIESCENT_CONVERGED, SOMETIMES_BYPASS, SOMETIMES_CAPPED, SOMETIMES_CONVERGED_FULL,
    SOMETIMES_DETACHED_STALE, SOMETIMES_FENCE_REVOKES, SOMETIMES_FILL_RACE, SOMETIMES_GAP,
    SOMETIMES_LEASE_WAIT, SOMETIMES_LOST, SOMETIMES_REORDER, Search, Source, check, find_trace,
};

/// Checks `config` exhaustively on one thread and prints the counts.
fn run(name: &str, config: ModelConfig) -> Outcome {
    let outcome = check(&config, Search::Bfs, 1);
    println!("{name}: {}", outcome.summary());
    assert!(outcome.complete, "{name}: the checker stopped early");
    outcome
}

/// Every `always`/`eventually` property holds, every `sometimes` property
/// of the configuration has an example, and `expected` are among them.
fn assert_holds(name: &str, outcome: &Outcome, expected: &[&str]) {
    if let Some(v) = outcome.violations().into_iter().next() {
        let trace = find_trace(&outcome.config, v)
            .map(|p| outcome.model().explain(&p))
            .unwrap_or_default();
        panic!("{name}: counterexample to \"{v}\":\n{trace}");
    }
    assert!(
        outcome.unreached().is_empty(),
        "{name}: sometimes properties never reached: {:?}",
        outcome.unreached()
    );
    let checked = outcome.model().sanity_property_names();
    for e in expected {
        assert!(checked.contains(e), "{name}: \"{e}\" is not checked");
    }
}

/// A short counterexample to `property` in `config`, printed and returned.
fn counterexample(name: &str, config: &ModelConfig, property: &'static str) -> String {
    let path = find_trace(config, property)
        .unwrap_or_else(|| panic!("{name}: no counterexample to \"{property}\""));
    let model = CoherenceModel::new(config.clone());
    let trace = model.explain(&path);
    println!("{name}: counterexample to \"{property}\":\n{trace}");
    trace
}

fn fixed() -> ModelConfig {
    ModelConfig::small().with_engine(EngineVariant::CURRENT)
}

// ----- the protocol holds (engine with the proposed fix) ------------------

/// Two instances, one write, one fault of any kind the bus contract allows.
#[test]
fn two_instances_one_write_one_fault() {
    let name = "two instances, one write, one fault";
    let outcome = run(
        name,
        ModelConfig {
            writes: 1,
            symmetry: true,
            ..fixed()
        },
    );
    assert_holds(
        name,
        &outcome,
        &[
            SOMETIMES_FILL_RACE,
            SOMETIMES_FENCE_REVOKES,
            SOMETIMES_DETACHED_STALE,
            SOMETIMES_CONVERGED_FULL,
            SOMETIMES_BYPASS,
            SOMETIMES_CAPPED,
            SOMETIMES_LOST,
            SOMETIMES_LEASE_WAIT,
        ],
    );
}

/// One instance, two writes: sequence gaps and reordering.
#[test]
fn one_instance_two_writes_one_fault() {
    let name = "one instance, two writes, one fault";
    let outcome = run(
        name,
        ModelConfig {
            instances: 1,
            ..fixed()
        },
    );
    assert_holds(
        name,
        &outcome,
        &[SOMETIMES_GAP, SOMETIMES_REORDER, SOMETIMES_LOST],
    );
}

/// One instance, two writes, two faults (a fault during the recovery from
/// another).
#[test]
fn one_instance_two_writes_two_faults() {
    let name = "one instance, two writes, two faults";
    let outcome = run(
        name,
        ModelConfig {
            instances: 1,
            faults: 2,
            ..fixed()
        },
    );
    assert_holds(name, &outcome, &[SOMETIMES_GAP, SOMETIMES_BYPASS]);
}

/// Two keys: a gap or a drop on one key's message flushes the other's
/// entries too; one sequence for both.
#[test]
fn two_keys_drops_and_reordering() {
    let name = "one instance, two keys, two writes, one drop";
    let outcome = run(
        name,
        ModelConfig {
            instances: 1,
            keys: 2,
            bus: BusFaults {
                noticed_drop: true,
                reorder: true,
                ..BusFaults::NONE
            },
            ..fixed()
        },
    );
    assert_holds(name, &outcome, &[SOMETIMES_GAP, SOMETIMES_LOST]);
}

/// A bound of two ticks (liveness and capped life two ticks as well).
#[test]
fn a_bound_of_two_ticks() {
    let name = "one instance, two writes, one fault, bound 2";
    let outcome = run(
        name,
        ModelConfig {
            instances: 1,
            bound: 2,
            liveness: 2,
            capped_life: 2,
            ..fixed()
        },
    );
    assert_holds(name, &outcome, &[SOMETIMES_BYPASS, SOMETIMES_CAPPED]);
}

/// A message may wait one tick on a live bus (bound 2 = delay 1 +
/// liveness 1).
#[test]
fn a_delayed_bus() {
    let name = "one instance, two writes, one fault, delay 1, bound 2";
    let outcome = run(
        name,
        ModelConfig {
            instances: 1,
            bound: 2,
            max_delay: 1,
            ..fixed()
        },
    );
    assert_holds(name, &outcome, &[SOMETIMES_GAP]);
}

/// Three instances on a perfect bus: leases and fills of three loaders.
#[test]
fn three_instances_perfect_bus() {
    let name = "three instances, one write, no fault";
    let outcome = run(
        name,
        ModelConfig {
            instances: 3,
            writes: 1,
            faults: 0,
            bus: BusFaults::NONE,
            symmetry: true,
            ..fixed()
        },
    );
    assert_holds(name, &outcome, &[SOMETIMES_LEASE_WAIT, SOMETIMES_FILL_RACE]);
}

// ----- counterexamples -----------------------------------------------------

/// The engine as it was before the fix this model found: a caller that
/// arrives while the bus is down or hung joins a load that read the origin
/// before a write, however long ago the write reached the shared tier.
/// (Reproduced on the real engine by `tests/engine_repro.rs`, which now
/// passes.) Nothing else breaks.
#[test]
fn engine_before_the_fix_joins_a_load_older_than_the_bound() {
    let name = "engine before the fix, one instance, one write, one fault";
    let config = ModelConfig {
        instances: 1,
        writes: 1,
        ..ModelConfig::small().with_engine(EngineVariant::BEFORE_SILENCE_DETACH)
    };
    let outcome = run(name, config.clone());
    assert_eq!(outcome.violations(), vec![NO_STALE_READ], "{name}");
    let path = find_trace(&config, NO_STALE_READ).expect("a counterexample");
    let model = CoherenceModel::new(config.clone());
    let stale = model
        .stale_read(path.last_state())
        .expect("the last state has the stale read");
    assert_eq!(stale.source, Source::JoinedLoad);
    counterexample(name, &config, NO_STALE_READ);

    // The same in the two-instance configuration (the search stops at the
    // first counterexample).
    let two = ModelConfig::small().with_engine(EngineVariant::BEFORE_SILENCE_DETACH);
    let trace = counterexample("engine before the fix, two instances", &two, NO_STALE_READ);
    assert!(trace.contains("JoinedLoad"), "{trace}");
}

/// A bus that loses a message without a word (outside the bus contract):
/// the last message of a burst is never noticed, so an instance keeps its
/// stale entry until its TTL. Breaks the bound and convergence, whatever
/// the engine variant.
#[test]
fn silent_drops_break_the_bound_and_convergence() {
    let name = "silent drops";
    let config = ModelConfig {
        instances: 1,
        writes: 1,
        bus: BusFaults {
            silent_drop: true,
            ..BusFaults::NONE
        },
        ..fixed()
    };
    let outcome = run(name, config.clone());
    let violations = outcome.violations();
    for p in [NO_STALE_READ, QUIESCENT_CONVERGED, EVENTUALLY_CONVERGES] {
        assert!(violations.contains(&p), "{name}: \"{p}\" holds");
    }
    let trace = counterexample(name, &config, QUIESCENT_CONVERGED);
    assert!(trace.contains("DropSilently"), "{trace}");
}

/// A sketch against silent drops: the sidecar's last sequence number
/// reaches every subscriber once a tick (`EngineVariant::origin_heartbeats`).
/// It closes a lone silent drop, but a drop between a reconnect and the
/// next heartbeat is taken for the new baseline (the listener clears its
/// sequence numbers on reconnect), unless the reconnect keeps them.
#[test]
fn origin_heartbeats_close_silent_drops_given_a_baseline_across_reconnects() {
    let silent = BusFaults {
        silent_drop: true,
        ..BusFaults::NONE
    };
    let heartbeats = EngineVariant {
        origin_heartbeats: true,
        ..EngineVariant::CURRENT
    };
    let name = "origin heartbeats, one silent drop";
    let outcome = run(
        name,
        ModelConfig {
            instances: 1,
            bus: silent,
            engine: heartbeats,
            ..fixed()
        },
    );
    assert_holds(name, &outcome, &[SOMETIMES_FILL_RACE]);

    let name = "origin heartbeats, a disconnect and a silent drop";
    let config = ModelConfig {
        instances: 1,
        faults: 2,
        bus: BusFaults {
            disconnect: true,
            ..silent
        },
        engine: heartbeats,
        ..fixed()
    };
    let outcome = run(name, config.clone());
    assert!(outcome.violations().contains(&NO_STALE_READ), "{name}");
    let trace = counterexample(name, &config, NO_STALE_READ);
    assert!(
        trace.contains("Reconnect") && trace.contains("DropSilently"),
        "{trace}"
    );

    let name = "origin heartbeats kept across reconnects, a disconnect and a silent drop";
    let outcome = run(
        name,
        ModelConfig {
            engine: EngineVariant {
                keep_seq_on_reconnect: true,
                ..heartbeats
            },
            ..config
        },
    );
    assert_holds(name, &outcome, &[SOMETIMES_BYPASS, SOMETIMES_CAPPED]);
}

/// The properties have teeth: a liveness window longer than the bound
/// breaks the bound (a hung bus goes unnoticed too long).
#[test]
fn a_liveness_window_longer_than_the_bound_breaks_it() {
    let name = "liveness 2 > bound 1";
    let config = ModelConfig {
        instances: 1,
        writes: 1,
        liveness: 2,
        bus: BusFaults {
            hang: true,
            ..BusFaults::NONE
        },
        ..fixed()
    };
    assert!(!config.bound_is_achievable());
    let outcome = run(name, config.clone());
    assert_eq!(outcome.violations(), vec![NO_STALE_READ], "{name}");
    counterexample(name, &config, NO_STALE_READ);
}

// ----- bigger configurations (release build) ----------------------------

fn big(name: &str, config: ModelConfig) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let outcome = check(&config, Search::Bfs, threads);
    println!("{name}: {}", outcome.summary());
    assert!(outcome.complete, "{name}: the checker stopped early");
    assert_holds(name, &outcome, &[]);
}

/// About 7.7 million states; about 80 s in release on 2 cores.
#[test]
#[ignore = "large: run in release (see the file's docs)"]
fn big_two_instances_two_writes_one_fault() {
    big(
        "two instances, two writes, one fault",
        ModelConfig {
            symmetry: true,
            ..fixed()
        },
    );
}

/// About 8 million states; about 95 s in release on 2 cores.
#[test]
#[ignore = "large: run in release (see the file's docs)"]
fn big_two_instances_one_write_two_faults() {
    big(
        "two instances, one write, two faults",
        ModelConfig {
            writes: 1,
            faults: 2,
            symmetry: true,
            ..fixed()
        },
    );
}

/// About 1.3 million states.
#[test]
#[ignore = "large: run in release (see the file's docs)"]
fn big_three_instances_one_drop() {
    big(
        "three instances, one write, one reported drop",
        ModelConfig {
            instances: 3,
            writes: 1,
            bus: BusFaults {
                noticed_drop: true,
                ..BusFaults::NONE
            },
            symmetry: true,
            ..fixed()
        },
    );
}

/// About 0.7 million states.
#[test]
#[ignore = "large: run in release (see the file's docs)"]
fn big_two_keys_hang_and_disconnect() {
    big(
        "one instance, two keys, two writes, one hang or disconnect",
        ModelConfig {
            instances: 1,
            keys: 2,
            bus: BusFaults {
                hang: true,
                disconnect: true,
                ..BusFaults::NONE
            },
            ..fixed()
        },
    );
}

/// Two loads in flight per instance (a detached one and its successor):
/// about 1.5 million states.
#[test]
#[ignore = "large: run in release (see the file's docs)"]
fn big_two_loads_per_instance() {
    big(
        "one instance, two writes, two faults, two loads",
        ModelConfig {
            instances: 1,
            faults: 2,
            max_flights: 2,
            ..fixed()
        },
    );
}
