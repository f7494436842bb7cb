#![no_main]
//! `cargo +nightly fuzz run range`: see `tessera::fuzzing::range` for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::range(data));
