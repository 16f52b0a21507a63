//! Every committed fuzz seed (fuzz/seeds/<target>/*) of the engine's
//! targets, run through its target on stable in every test run: the inputs
//! written down for the fuzzers (issue 11's, the clear formats') keep
//! passing the targets' invariants between fuzzing campaigns.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use tiercache_core::fuzz_targets;

fn each_seed(target: &str, run: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        eprintln!("{target}: {}", path.display());
        run(&bytes);
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn envelope_seeds() {
    each_seed("envelope", fuzz_targets::envelope);
}

#[test]
fn bus_message_seeds() {
    each_seed("bus_message", fuzz_targets::bus_message);
}

#[test]
fn bus_listener_seeds() {
    each_seed("bus_listener", fuzz_targets::bus_listener);
}

#[test]
fn keys_seeds() {
    each_seed("keys", fuzz_targets::keys);
}
