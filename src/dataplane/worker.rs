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
use crate::io::slots::SlotKey;

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

    /// When stored slices go to sockets by `sendfile` (`[serve] send_file_bytes_min` and
    /// `send_file_connections_min`).
    pub fn file_sends(&self) -> FileSends {
        let config = &self.shared.config;
        FileSends {
            bytes_min: Some(config.send_file_bytes_min).filter(|&min| min > 0),
            connections_min: config.send_file_connections_min,
            bytes_per_turn_max: config.send_file_bytes_per_turn_max as u64,
        }
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

/// When a worker hands sockets the store file's pages (`sendfile`) instead of copying a slice:
/// the slice has at least `bytes_min` bytes and the worker has at least `connections_min`
/// connections open. With few connections the copy costs the worker little, and on this
/// project's loopback benchmarks it was faster (the reader finds the bytes in cache); with many,
/// the worker's CPU is the limit and the copy its largest cost (docs/performance.md).
/// While it does, a connection hands the kernel at most `bytes_per_turn_max` per turn: with
/// hundreds of readers, whole pieces per turn left the slowest response far behind the rest.
#[derive(Debug, Clone, Copy)]
pub struct FileSends {
    /// `None`: never.
    pub bytes_min: Option<u64>,
    pub connections_min: usize,
    pub bytes_per_turn_max: u64,
}

impl FileSends {
    /// The slice size from which slices go by `sendfile` now, with `open` connections open.
    pub fn bytes_min_now(&self, open: usize) -> Option<u64> {
        self.bytes_min.filter(|_| open >= self.connections_min)
    }

    /// Bytes one connection may hand the kernel this turn, given the driver's `bytes_max` and
    /// the `sendfile` threshold in force now (`bytes_min_now`).
    pub fn bytes_per_turn(&self, bytes_max: u64, file_bytes_min: Option<u64>) -> u64 {
        match file_bytes_min {
            Some(_) => bytes_max.min(self.bytes_per_turn_max),
            None => bytes_max,
        }
        .max(1)
    }

    /// Whether any slice may ever go by `sendfile` (sockets must then be non-blocking).
    pub fn enabled(&self) -> bool {
        self.bytes_min.is_some()
    }
}

/// Which connections a turn of the loop has driven already: a connection named twice in one
/// turn's list (a send and a receive completed) is driven once, and the list keeps the order
/// its events came in. (Sorting the list by slot to drop the repeats would serve low slots first
/// every turn, and high ones after them.)
pub struct TurnMarks {
    /// Per slot: the (generation, turn) it was last driven in.
    marks: Vec<(u32, u64)>,
    turn: u64,
}

impl TurnMarks {
    /// Marks for a table of `slots` slots.
    pub fn new(slots: usize) -> TurnMarks {
        TurnMarks { marks: vec![(0, 0); slots], turn: 0 }
    }

    /// Starts a turn: every connection may be driven once more.
    pub fn next_turn(&mut self) {
        self.turn += 1;
    }

    /// Whether `key` has not been driven yet this turn; marks it driven.
    pub fn first_this_turn(&mut self, key: SlotKey) -> bool {
        let mark = (key.generation, self.turn);
        self.marks.get_mut(key.index as usize).is_none_or(|last| std::mem::replace(last, mark) != mark)
    }
}

/// Why a worker stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {index}: {what}: {source}")]
    Io { index: usize, what: &'static str, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::{FileSends, TurnMarks};
    use crate::io::slots::SlotKey;

    #[test]
    fn a_connection_is_driven_once_per_turn_and_again_the_next() {
        let mut marks = TurnMarks::new(4);
        let (a, b) = (SlotKey { index: 1, generation: 7 }, SlotKey { index: 2, generation: 0 });
        marks.next_turn();
        assert!(marks.first_this_turn(a) && marks.first_this_turn(b));
        assert!(!marks.first_this_turn(a) && !marks.first_this_turn(b));
        // The slot reused by a new connection in the same turn is a different connection.
        assert!(marks.first_this_turn(SlotKey { index: 1, generation: 8 }));
        marks.next_turn();
        assert!(marks.first_this_turn(b));
    }

    #[test]
    fn slices_go_by_file_only_when_large_enough_and_enough_connections_are_open() {
        let sends = FileSends { bytes_min: Some(16384), connections_min: 128, bytes_per_turn_max: 65536 };
        assert_eq!(sends.bytes_min_now(127), None);
        assert_eq!(sends.bytes_min_now(128), Some(16384));
        // Copying: the driver's own bound; sending files: the smaller share.
        assert_eq!(sends.bytes_per_turn(2 << 20, sends.bytes_min_now(127)), 2 << 20);
        assert_eq!(sends.bytes_per_turn(2 << 20, sends.bytes_min_now(128)), 65536);
        assert_eq!(sends.bytes_per_turn(4096, sends.bytes_min_now(128)), 4096);
        let always = FileSends { bytes_min: Some(16384), connections_min: 0, bytes_per_turn_max: 65536 };
        assert_eq!(always.bytes_min_now(1), Some(16384));
        let never = FileSends { bytes_min: None, connections_min: 0, bytes_per_turn_max: 65536 };
        assert!(!never.enabled() && never.bytes_min_now(1000).is_none());
    }
}
