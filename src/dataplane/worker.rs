//! What a worker thread is given, whichever backend drives it.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::connection::ConnectionLimits;
use crate::dataplane::handler::Handler;
use crate::dataplane::live::Settings;
use crate::dataplane::metrics::WorkerMetrics;
use crate::dataplane::shared::Shared;

/// The fewest bytes [`send_share`] gives a connection's send (unless the per-connection cap is
/// lower): below it, per-send costs eat the rate.
pub const SEND_SHARE_MIN_BYTES: u64 = 64 << 10;

/// The bytes one connection's next send may hand the kernel when `sending` connections (this one
/// included) have bytes to send: `per_connection_max` while that many fit in
/// `in_flight_bytes_max` together, otherwise [`SEND_SHARE_MIN_BYTES`] (or the cap, if lower). A
/// few connections each send whole pieces at once; hundreds take turns in small sends, so that
/// none waits behind the others' megabytes. Issue 9 §7b, 512 connections: 2 MiB sends left the
/// slowest response at about 1 s, 64 KiB ones at about 0.24 s; sends of 128–256 KiB were worse
/// than either, and 64 KiB sends cost 16 connections a third of their rate
/// (docs/performance.md). Hence two sizes and no even split in between.
pub fn send_share(in_flight_bytes_max: u64, per_connection_max: u64, sending: usize) -> u64 {
    let whole = per_connection_max.max(1);
    if (sending.max(1) as u64).saturating_mul(whole) <= in_flight_bytes_max {
        whole
    } else {
        SEND_SHARE_MIN_BYTES.min(whole)
    }
}

/// Idle connections a driver reclaims at once at a limit of `connections_max`: about 1/64th of
/// it, within 1..=16 (amortises the scan for the oldest, as nginx's batch of 32 does); io_uring
/// also keeps this many slots beyond the limit for reclaimed connections still draining.
pub fn reclaim_batch(connections_max: usize) -> usize {
    (connections_max / 64).clamp(1, 16)
}

/// A worker's inputs.
pub struct WorkerContext {
    /// Worker number (metrics label, thread name).
    pub index: usize,
    /// This worker's own `SO_REUSEPORT` listener (the driver takes it).
    pub listener: Option<TcpListener>,
    pub shared: Arc<Shared>,
    /// Set once to ask every worker to stop.
    pub stop: Arc<AtomicBool>,
}

impl WorkerContext {
    /// The connection limits in force.
    pub fn limits(&self) -> ConnectionLimits {
        limits_of(&self.shared.live.load())
    }

    /// This worker's counters, for the driver's own transport events (accepts, refusals, bytes
    /// sent, closes, zero-copy sends, completion overflows); the handler counts responses.
    pub fn counters(&self) -> WorkerCounters {
        WorkerCounters { shared: self.shared.clone(), index: self.index }
    }

    /// This worker's request handler (built on the worker thread: it is not `Send`).
    pub fn handler(&self) -> Handler {
        Handler::new(self.shared.clone(), self.index)
    }

    /// How often timeouts are checked (and reloaded settings taken): a quarter of the shortest
    /// timeout in force, within 5..=100 ms.
    pub fn tick(&self) -> Duration {
        tick_of(&self.shared.live.load())
    }

    /// Whether the server was asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Most connections this worker's tables are sized for (the limit it started with).
    pub fn connections_max(&self) -> usize {
        self.shared.config.connections_per_worker_max.clamp(1, (1 << 24) - 1)
    }

    /// Most connections this worker holds under `settings` (a reload may lower the limit, not
    /// raise it past the tables).
    pub fn connections_live_max(&self, settings: &Settings) -> usize {
        settings.serve.connections_per_worker_max.clamp(1, self.connections_max())
    }

    /// When in-flight responses are cut off after shutdown starts at `now`.
    pub fn grace_deadline(&self, now: Instant) -> Instant {
        now + Duration::from_millis(self.shared.live.load().serve.shutdown_grace_ms)
    }
}

/// The connection limits of `settings` (request headers kept for the access log when it is on).
pub fn limits_of(settings: &Settings) -> ConnectionLimits {
    let mut limits = ConnectionLimits::from_config(&settings.serve);
    limits.request.log_fields = settings.access_log.is_some();
    limits
}

/// How often timeouts are checked under `settings`: a quarter of the shortest timeout, within
/// 5..=100 ms.
pub fn tick_of(settings: &Settings) -> Duration {
    let config = &settings.serve;
    let shortest =
        config.header_timeout_ms.min(config.idle_timeout_ms).min(config.send_timeout_ms).min(config.pending_timeout_ms);
    Duration::from_millis((shortest / 4).clamp(5, 100))
}

/// One worker's counters, owned (a driver keeps it beside its handler, not inside it).
pub struct WorkerCounters {
    shared: Arc<Shared>,
    index: usize,
}

impl std::ops::Deref for WorkerCounters {
    type Target = WorkerMetrics;

    fn deref(&self) -> &WorkerMetrics {
        self.shared.metrics.worker(self.index)
    }
}

/// Why a worker stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {index}: {what}: {source}")]
    Io { index: usize, what: &'static str, source: std::io::Error },
}

#[cfg(test)]
mod send_share_tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn few_connections_send_whole_pieces_and_many_take_turns() {
        assert_eq!(send_share(32 * MIB, 2 * MIB, 1), 2 * MIB);
        assert_eq!(send_share(32 * MIB, 2 * MIB, 16), 2 * MIB, "16 × 2 MiB fit in 32 MiB");
        assert_eq!(send_share(32 * MIB, 2 * MIB, 17), SEND_SHARE_MIN_BYTES);
        assert_eq!(send_share(32 * MIB, 2 * MIB, 512), SEND_SHARE_MIN_BYTES);
        assert_eq!(send_share(32 * MIB, 2 * MIB, 0), 2 * MIB, "the first to send counts itself");
    }

    #[test]
    fn the_per_connection_cap_always_holds() {
        assert_eq!(send_share(32 * MIB, 16 << 10, 512), 16 << 10);
        assert_eq!(send_share(0, 2 * MIB, 1), SEND_SHARE_MIN_BYTES, "a zero budget still sends");
        assert_eq!(send_share(0, 0, 1), 1);
    }
}
