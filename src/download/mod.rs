//! The download engine behind `tessera get`: metadata first, then verified pieces from peers and
//! HTTP sources (P2P mode), or the HTTP sources alone (Simple mode).
//!
//! Sans-I/O cores: [`scheduler`] (what to ask whom), [`ban`] (rule 4) and [`response`] (HTTP/1.1
//! response framing). The thin mio driver lives in `driver`.

pub mod ban;
pub mod response;
pub mod scheduler;
