//! What a worker thread is given, whichever backend drives it.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::connection::ConnectionLimits;
use crate::dataplane::handler::Handler;
use crate::dataplane::metrics::WorkerMetrics;
use crate::dataplane::shared::Shared;

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
    /// The connection limits from `[serve]`.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits::from_config(&self.shared.config)
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

    /// How often timeouts are checked: a quarter of the shortest timeout, within 5..=100 ms.
    pub fn tick(&self) -> Duration {
        let config = &self.shared.config;
        let shortest = config
            .header_timeout_ms
            .min(config.idle_timeout_ms)
            .min(config.send_timeout_ms)
            .min(config.pending_timeout_ms);
        Duration::from_millis((shortest / 4).clamp(5, 100))
    }

    /// Whether the server was asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Most connections this worker holds.
    pub fn connections_max(&self) -> usize {
        self.shared.config.connections_per_worker_max.clamp(1, (1 << 24) - 1)
    }

    /// When in-flight responses are cut off after shutdown starts at `now`.
    pub fn grace_deadline(&self, now: Instant) -> Instant {
        now + Duration::from_millis(self.shared.config.shutdown_grace_ms)
    }
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
