//! What the fill engine counts for `/metrics` (hits and misses are the workers').

use std::collections::VecDeque;

use super::source::SourceKind;

/// Fill latencies kept until drained, at most (older samples are dropped first).
pub const LATENCY_SAMPLES_MAX: usize = 4096;

/// Totals since the engine started; gauges are methods of the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FillCounters {
    /// Upstream fetches started.
    pub fetches_started_total: u64,
    /// Waiter claims that joined a fetch someone else had already asked for.
    pub coalesced_waiters_total: u64,
    /// Pieces that failed verification.
    pub bad_pieces_total: u64,
    /// Fetches asked again after a failure.
    pub retries_total: u64,
    /// Pieces given up (their waiters got a failure).
    pub failed_pieces_total: u64,
    /// Busy answers (a limit was hit).
    pub busy_total: u64,
    /// Fetches cancelled because nobody wanted them any more.
    pub cancelled_fetches_total: u64,
    /// Pieces verified and stored.
    pub pieces_stored_total: u64,
    /// Verified bytes received, by [`SourceKind::index`].
    pub bytes_by_source_kind: [u64; SourceKind::COUNT],
    latency_samples_ms: VecDeque<u64>,
}

impl FillCounters {
    /// Verified bytes received from sources of `kind`.
    pub fn bytes_from(&self, kind: SourceKind) -> u64 {
        self.bytes_by_source_kind[kind.index()]
    }

    /// Takes the fill latencies (first wanted → stored, ms) recorded since the last call.
    pub fn drain_fill_latency_ms(&mut self) -> Vec<u64> {
        self.latency_samples_ms.drain(..).collect()
    }

    pub(super) fn record_latency(&mut self, latency_ms: u64) {
        if self.latency_samples_ms.len() == LATENCY_SAMPLES_MAX {
            self.latency_samples_ms.pop_front();
        }
        self.latency_samples_ms.push_back(latency_ms);
    }
}
