//! `tiercache_fuzz::test_decoding`: see its docs for the input and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiercache_fuzz::test_decoding(data));
