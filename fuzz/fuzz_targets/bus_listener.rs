//! `tiercache_core::fuzz_targets::bus_listener`: see its docs for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiercache_core::fuzz_targets::bus_listener(data));
