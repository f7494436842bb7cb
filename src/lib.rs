//! tessera: a content-delivery cache appliance that serves and consumes verified pieces.
//!
//! See `docs/ARCHITECTURE.md` for the module map. `unsafe` lives only in `io`, `store::slab`,
//! `hash::x16` and `hash::ni_multi`; every other module forbids it.

#[forbid(unsafe_code)]
pub mod appliance;
#[forbid(unsafe_code)]
pub mod build_info;
#[forbid(unsafe_code)]
pub mod catalog;
#[forbid(unsafe_code)]
pub mod cli;
#[forbid(unsafe_code)]
pub mod config;
#[forbid(unsafe_code)]
pub mod content;
#[forbid(unsafe_code)]
pub mod control;
#[forbid(unsafe_code)]
pub mod dataplane;
#[forbid(unsafe_code)]
pub mod download;
#[forbid(unsafe_code)]
pub mod fill;
#[doc(hidden)]
#[forbid(unsafe_code)]
pub mod fuzzing;
// `hash::x16` (AVX-512 rounds) and `hash::ni_multi` (SHA-NI rounds) are the files of `hash`
// allowed `unsafe`.
#[deny(unsafe_code)]
pub mod hash;
#[forbid(unsafe_code)]
pub mod http;
// The ring layer: system calls and io_uring operations, each `unsafe` block with a `// SAFETY:` line.
pub mod io;
#[forbid(unsafe_code)]
pub mod load;
#[forbid(unsafe_code)]
pub mod logging;
#[forbid(unsafe_code)]
pub mod publish;
#[forbid(unsafe_code)]
pub mod rendezvous;
// `store::slab` is the one file of the store allowed `unsafe` (the mapping).
#[deny(unsafe_code)]
pub mod store;
#[forbid(unsafe_code)]
pub mod tls;
