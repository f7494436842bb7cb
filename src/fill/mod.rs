//! The cache box's fill engine, sans I/O: which missing pieces are wanted by whom, which are in
//! flight from where, and who is told when a piece has landed.
//!
//! Two deterministic state machines in the quinn-proto style (inputs through `handle_*`, outputs
//! through `poll_*`, time as milliseconds on the caller's clock, `poll_timeout` says when the next
//! tick is due): [`FillEngine`] for pieces and [`MetadataCache`] for manifests and hash files. The
//! fetcher connections (on `src/io`), the verifier and the store writer drive them; `docs/fill.md`
//! has the picture and the bounds.
//!
//! Invariants, asserted in the code:
//! - at most one upstream fetch per piece digest in the process (pieces are keyed by digest, so two
//!   contents sharing a piece share its fill);
//! - no waiter is told "landed" before the piece was verified and then stored;
//! - every waiter list, read-ahead window, fill count and byte of piece memory is bounded, and a
//!   bound hit is an immediate [`WaiterEvent::Busy`], never a hang.

mod counters;
mod engine;
mod fetch;
mod limits;
mod metadata;
mod source;
#[cfg(test)]
mod tests;

pub use counters::{FillCounters, LatencyHistogram, SourceCounts, LATENCY_BUCKETS_MS};
pub use engine::{FailReason, FillEngine, Notification, WaiterEvent, Want};
pub use fetch::{Fetch, FetchAction, FetchFailure, FetchId};
pub use limits::{FillLimits, MetadataLimits};
pub use metadata::{
    ContentVersion, MetaAction, MetaAnswer, MetaFetch, MetaFetchId, MetaReady, MetaStep, Metadata, MetadataCache,
    SimpleContent,
};
pub use source::{Candidate, Outcome, Pick, RoundRobin, SourceId, SourceKind, SourcePolicy};

/// A data-plane worker (its index): notifications are routed to its own ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u16);

/// A worker's own name for one waiting request (for example connection slot, generation and
/// request sequence packed together); opaque to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterToken(pub u64);

/// One waiting request, unique in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterKey {
    /// The worker that holds the request.
    pub worker: WorkerId,
    /// The worker's token for it.
    pub token: WaiterToken,
}
