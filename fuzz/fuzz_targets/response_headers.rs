//! `tiercache_tower::fuzz_targets::response_headers`: see its docs for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiercache_tower::fuzz_targets::response_headers(data));
