#![no_main]
//! `cargo +nightly fuzz run hashfile`: see `tessera::fuzzing::hashfile` for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::hashfile(data));
