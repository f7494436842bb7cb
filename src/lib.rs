//! tessera: a content-delivery cache appliance that serves and consumes verified pieces.
//!
//! See `docs/ARCHITECTURE.md` for the module map.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod content;
pub mod control;
pub mod dataplane;
pub mod download;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod http;
pub mod publish;
pub mod store;
pub mod tls;
