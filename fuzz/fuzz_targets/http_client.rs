#![no_main]
//! `cargo +nightly fuzz run http_client`: see `tessera::fuzzing::http_client` for what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::fuzzing::http_client(data));
