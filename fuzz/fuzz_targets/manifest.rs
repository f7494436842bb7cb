#![no_main]
//! `cargo +nightly fuzz run manifest`: see `tessera::fuzzing::manifest` for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::manifest(data));
