#![no_main]
//! `cargo +nightly fuzz run announce`: see `tessera::fuzzing::announce` for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::announce(data));
