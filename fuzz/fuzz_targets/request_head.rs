#![no_main]
//! `cargo +nightly fuzz run request_head`: see `tessera::fuzzing::request_head` for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::request_head(data));
