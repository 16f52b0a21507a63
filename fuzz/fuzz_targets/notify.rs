//! `tiercache_fuzz::notify`: see its docs for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiercache_fuzz::notify(data));
