//! Data-plane counters: one cache-line-aligned block of atomics per worker, written only by that
//! worker (relaxed, no lock), summed and formatted in Prometheus text on scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::dataplane::connection::CloseReason;
use crate::dataplane::rate::{RateMarks, RATE_PERIODS};
use crate::store::StoreStats;

/// Status codes counted individually; anything else is counted as `other`.
pub const COUNTED_STATUSES: [u16; 18] =
    [200, 206, 400, 404, 405, 408, 411, 413, 414, 416, 431, 500, 501, 502, 503, 504, 505, 0];

const CLOSE_REASONS: [CloseReason; 10] = [
    CloseReason::PeerClosed,
    CloseReason::Finished,
    CloseReason::HeaderTimeout,
    CloseReason::IdleTimeout,
    CloseReason::SendTimeout,
    CloseReason::PendingTimeout,
    CloseReason::Aborted,
    CloseReason::Shutdown,
    CloseReason::Error,
    CloseReason::Reclaimed,
];
/// Upper bounds (µs) of the request-duration histogram's buckets, rendered in seconds as `le`
/// labels; `+Inf` follows. From a hit answered in one loop turn to a long miss.
pub const DURATION_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Where `Reclaimed` sits in [`CLOSE_REASONS`] (its closes are also rendered on their own).
const RECLAIMED_AT: usize = CLOSE_REASONS.len() - 1;

/// Counters of one worker.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    requests: [AtomicU64; COUNTED_STATUSES.len()],
    bytes_sent: AtomicU64,
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    closed: [AtomicU64; CLOSE_REASONS.len()],
    zero_copy_sends: AtomicU64,
    file_sends: AtomicU64,
    completion_overflows: AtomicU64,
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    misses: AtomicU64,
    miss_bytes: AtomicU64,
    /// Responses by duration bucket (not cumulative: summed on render); past the last bound
    /// they are only in `duration_count`.
    duration_buckets: [AtomicU64; DURATION_BUCKETS_US.len()],
    duration_count: AtomicU64,
    duration_sum_us: AtomicU64,
    /// The response count at the start of each recent period (the status page's rate).
    rate: RateMarks,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl WorkerMetrics {
    /// Counts one response with `status`.
    pub fn response(&self, status: u16) {
        let at = COUNTED_STATUSES.iter().position(|&s| s == status).unwrap_or(COUNTED_STATUSES.len() - 1);
        bump(&self.requests[at], 1);
    }

    /// Counts bytes handed to the kernel.
    pub fn sent(&self, bytes: u64) {
        bump(&self.bytes_sent, bytes);
    }

    /// A connection was accepted and is now open.
    pub fn opened(&self) {
        bump(&self.connections_accepted, 1);
        bump(&self.connections_open, 1);
    }

    /// An open connection was closed.
    pub fn closed(&self, reason: CloseReason) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
        let at = CLOSE_REASONS.iter().position(|&r| r == reason).expect("every reason is listed");
        bump(&self.closed[at], 1);
    }

    /// A connection was refused because the worker is at its connection limit.
    pub fn refused(&self) {
        bump(&self.connections_refused, 1);
    }

    /// A zero-copy send was issued.
    pub fn zero_copy_send(&self) {
        bump(&self.zero_copy_sends, 1);
    }

    /// A `sendfile` call handed the socket store pages.
    pub fn file_send(&self) {
        bump(&self.file_sends, 1);
    }

    /// The completion queue overflowed into the kernel's backlog.
    pub fn completion_overflow(&self, count: u64) {
        bump(&self.completion_overflows, count);
    }

    /// A request answered from the store at once, with `bytes` of body.
    pub fn hit(&self, bytes: u64) {
        bump(&self.hits, 1);
        bump(&self.hit_bytes, bytes);
    }

    /// A request the store could not answer was handed to the fill (a cache box's miss).
    pub fn miss(&self) {
        bump(&self.misses, 1);
    }

    /// Body bytes from the store sent for a request that missed, once filled.
    pub fn miss_bytes(&self, bytes: u64) {
        bump(&self.miss_bytes, bytes);
    }

    /// A response went out whole, `elapsed` after its request was parsed.
    pub fn answered(&self, elapsed: Duration) {
        let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(at) = DURATION_BUCKETS_US.iter().position(|&bound| elapsed_us <= bound) {
            bump(&self.duration_buckets[at], 1);
        }
        bump(&self.duration_count, 1);
        bump(&self.duration_sum_us, elapsed_us);
    }

    /// Marks the response count for the request rate at wall time `now_s` (the worker calls it
    /// every loop turn; it reads the counters once per period).
    pub fn mark_rate(&self, now_s: u64) {
        self.rate.mark(now_s, || self.responses_total());
    }

    /// Responses so far, every status.
    pub fn responses_total(&self) -> u64 {
        self.requests.iter().map(|counter| counter.load(Ordering::Relaxed)).sum()
    }

    /// Requests answered with `status` so far.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        COUNTED_STATUSES.iter().position(|&s| s == status).map_or(0, |at| self.requests[at].load(Ordering::Relaxed))
    }

    /// Zero-copy sends issued so far.
    pub fn zero_copy_sends(&self) -> u64 {
        self.zero_copy_sends.load(Ordering::Relaxed)
    }

    /// `sendfile` calls that took bytes so far.
    pub fn file_sends(&self) -> u64 {
        self.file_sends.load(Ordering::Relaxed)
    }

    /// Idle connections reclaimed at the connection limit so far.
    pub fn idle_reclaimed(&self) -> u64 {
        self.closed[RECLAIMED_AT].load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }
}

/// Picks one counter out of a worker's block.
type Field = fn(&WorkerMetrics) -> &AtomicU64;

/// Every worker's counters.
#[derive(Debug)]
pub struct Metrics {
    workers: Box<[WorkerMetrics]>,
}

impl Metrics {
    /// Counters for `worker_count` workers.
    pub fn new(worker_count: usize) -> Metrics {
        Metrics { workers: (0..worker_count).map(|_| WorkerMetrics::default()).collect() }
    }

    /// The counters of worker `index`.
    pub fn worker(&self, index: usize) -> &WorkerMetrics {
        &self.workers[index]
    }

    /// Sum over workers of requests answered with `status`.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        self.workers.iter().map(|w| w.requests_with_status(status)).sum()
    }

    /// Sum over workers of idle connections reclaimed at the connection limit.
    pub fn idle_reclaimed(&self) -> u64 {
        self.workers.iter().map(WorkerMetrics::idle_reclaimed).sum()
    }

    /// Sum over workers of zero-copy sends.
    pub fn zero_copy_sends(&self) -> u64 {
        self.workers.iter().map(WorkerMetrics::zero_copy_sends).sum()
    }

    /// Sum over workers of `sendfile` calls that took bytes.
    pub fn file_sends(&self) -> u64 {
        self.workers.iter().map(WorkerMetrics::file_sends).sum()
    }

    /// Sums over workers, for the status page.
    pub fn totals(&self) -> Totals {
        let sum = |field: Field| self.workers.iter().map(|w| field(w).load(Ordering::Relaxed)).sum::<u64>();
        Totals {
            requests: self.workers.iter().map(WorkerMetrics::responses_total).sum(),
            bytes_sent: sum(|m| &m.bytes_sent),
            connections_open: sum(|m| &m.connections_open),
            hits: sum(|m| &m.hits),
            hit_bytes: sum(|m| &m.hit_bytes),
            misses: sum(|m| &m.misses),
            miss_bytes: sum(|m| &m.miss_bytes),
        }
    }

    /// Responses in each of the last [`RATE_PERIODS`] periods up to wall time `now_s`, oldest
    /// first, summed over workers.
    pub fn rate(&self, now_s: u64) -> [u64; RATE_PERIODS] {
        let mut counts = [0; RATE_PERIODS];
        for worker in self.workers.iter() {
            worker.rate.add_counts(now_s, worker.responses_total(), &mut counts);
        }
        counts
    }

    /// Prometheus text exposition of every counter, per worker, plus the store's gauges.
    pub fn render(&self, store: &StoreStats) -> String {
        let mut out = String::with_capacity(4096);
        crate::build_info::write_prometheus(&mut out);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP tessera_http_requests_total Data-plane responses by status code.");
        let _ = writeln!(out, "# TYPE tessera_http_requests_total counter");
        for (worker, metrics) in self.workers.iter().enumerate() {
            for (at, status) in COUNTED_STATUSES.iter().enumerate() {
                let label = if *status == 0 { "other".to_string() } else { status.to_string() };
                let _ = writeln!(
                    out,
                    "tessera_http_requests_total{{worker=\"{worker}\",code=\"{label}\"}} {}",
                    load(&metrics.requests[at])
                );
            }
        }
        self.render_durations(&mut out);
        let simple: [(&str, &str, &str, Field); 8] = [
            ("tessera_http_sent_bytes_total", "counter", "Bytes handed to the kernel.", |m| &m.bytes_sent),
            ("tessera_connections_open", "gauge", "Open data-plane connections.", |m| &m.connections_open),
            ("tessera_connections_accepted_total", "counter", "Accepted connections.", |m| &m.connections_accepted),
            (
                "tessera_connections_refused_total",
                "counter",
                "Connections closed at once: the worker was at connections_per_worker_max.",
                |m| &m.connections_refused,
            ),
            (
                "tessera_idle_reclaimed_total",
                "counter",
                "Idle keep-alive connections closed, oldest first, to make room at connections_per_worker_max.",
                |m| &m.closed[RECLAIMED_AT],
            ),
            ("tessera_zero_copy_sends_total", "counter", "io_uring SendMsgZc operations.", |m| &m.zero_copy_sends),
            (
                "tessera_file_sends_total",
                "counter",
                "sendfile calls that handed a socket store pages (no copy).",
                |m| &m.file_sends,
            ),
            (
                "tessera_completion_overflows_total",
                "counter",
                "io_uring completions that overflowed into the kernel backlog.",
                |m| &m.completion_overflows,
            ),
        ];
        for (name, kind, help, field) in simple {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (worker, metrics) in self.workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{worker}\"}} {}", load(field(metrics)));
            }
        }
        let cache: [(&str, &str, [Field; 2]); 2] = [
            (
                "tessera_cache_requests_total",
                "Requests answered from the store (hit) or handed to the fill (miss).",
                [|m| &m.hits, |m| &m.misses],
            ),
            (
                "tessera_cache_bytes_total",
                "Body bytes sent from the store for hits, and for misses once filled.",
                [|m| &m.hit_bytes, |m| &m.miss_bytes],
            ),
        ];
        for (name, help, [hit, miss]) in cache {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (worker, metrics) in self.workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{worker}\",result=\"hit\"}} {}", load(hit(metrics)));
                let _ = writeln!(out, "{name}{{worker=\"{worker}\",result=\"miss\"}} {}", load(miss(metrics)));
            }
        }
        let _ = writeln!(out, "# HELP tessera_connections_closed_total Closed connections by reason.");
        let _ = writeln!(out, "# TYPE tessera_connections_closed_total counter");
        for (worker, metrics) in self.workers.iter().enumerate() {
            for (at, reason) in CLOSE_REASONS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tessera_connections_closed_total{{worker=\"{worker}\",reason=\"{}\"}} {}",
                    reason.name(),
                    load(&metrics.closed[at])
                );
            }
        }
        let gauges = [
            ("tessera_store_pieces", "Pieces in the store.", store.pieces),
            ("tessera_store_piece_bytes", "Bytes of pieces in the store.", store.piece_bytes),
            ("tessera_store_slab_bytes", "Bytes of slab files.", store.slab_bytes),
            ("tessera_store_size_bytes_max", "The store's size limit.", store.size_bytes_max),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let name = "tessera_store_evictions_total";
        let help = "Pieces evicted from the store: to make room, expired, or failing their check.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", store.evictions_total);
        out
    }

    /// The request-duration histogram, summed over workers.
    fn render_durations(&self, out: &mut String) {
        let name = "tessera_http_request_duration_seconds";
        let help = "From a request parsed to the last byte of its response handed to the kernel.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut cumulative = 0;
        for (at, bound_us) in DURATION_BUCKETS_US.iter().enumerate() {
            cumulative += self.workers.iter().map(|w| load(&w.duration_buckets[at])).sum::<u64>();
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound_us as f64 / 1e6);
        }
        let count: u64 = self.workers.iter().map(|w| load(&w.duration_count)).sum();
        let sum_us: u64 = self.workers.iter().map(|w| load(&w.duration_sum_us)).sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {count}", sum_us as f64 / 1e6);
    }
}

/// Data-plane numbers summed over workers (the status page's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub bytes_sent: u64,
    pub connections_open: u64,
    pub hits: u64,
    pub hit_bytes: u64,
    pub misses: u64,
    pub miss_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_worker_counters() {
        let metrics = Metrics::new(2);
        metrics.worker(0).response(200);
        metrics.worker(1).response(200);
        metrics.worker(1).response(418);
        metrics.worker(1).sent(1234);
        metrics.worker(0).opened();
        metrics.worker(0).opened();
        metrics.worker(0).closed(CloseReason::HeaderTimeout);
        metrics.worker(1).opened();
        metrics.worker(1).closed(CloseReason::Reclaimed);
        metrics.worker(0).hit(100);
        metrics.worker(0).hit(50);
        metrics.worker(1).miss();
        metrics.worker(1).miss_bytes(70);
        metrics.worker(0).answered(Duration::from_micros(80));
        metrics.worker(1).answered(Duration::from_millis(3));
        metrics.worker(1).answered(Duration::from_secs(60));
        let store = StoreStats { evictions_total: 4, ..StoreStats::default() };
        let text = metrics.render(&store);
        assert!(text.starts_with("# HELP tessera_build_info"), "{text}");
        assert!(text.contains("tessera_http_requests_total{worker=\"1\",code=\"200\"} 1"), "{text}");
        assert!(text.contains("tessera_http_requests_total{worker=\"1\",code=\"other\"} 1"));
        assert!(!text.contains("status=\""), "the status label is named code: {text}");
        for line in [
            "tessera_http_request_duration_seconds_bucket{le=\"0.0001\"} 1",
            "tessera_http_request_duration_seconds_bucket{le=\"0.0025\"} 1",
            "tessera_http_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "tessera_http_request_duration_seconds_bucket{le=\"10\"} 2",
            "tessera_http_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "tessera_http_request_duration_seconds_count 3",
            "tessera_http_request_duration_seconds_sum 60.00308",
            "tessera_store_evictions_total 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("tessera_http_sent_bytes_total{worker=\"1\"} 1234"));
        assert!(text.contains("tessera_connections_open{worker=\"0\"} 1"));
        assert!(text.contains("tessera_connections_closed_total{worker=\"0\",reason=\"header_timeout\"} 1"));
        assert!(text.contains("tessera_idle_reclaimed_total{worker=\"1\"} 1"), "{text}");
        assert!(text.contains("tessera_idle_reclaimed_total{worker=\"0\"} 0"), "{text}");
        assert!(text.contains("tessera_cache_requests_total{worker=\"0\",result=\"hit\"} 2\n"), "{text}");
        assert!(text.contains("tessera_cache_bytes_total{worker=\"0\",result=\"hit\"} 150\n"), "{text}");
        assert!(text.contains("tessera_cache_requests_total{worker=\"1\",result=\"miss\"} 1\n"), "{text}");
        assert!(text.contains("tessera_cache_bytes_total{worker=\"1\",result=\"miss\"} 70\n"), "{text}");
        assert!(text.contains("tessera_cache_requests_total{worker=\"1\",result=\"hit\"} 0\n"), "{text}");
        assert_eq!(metrics.requests_with_status(200), 2);
        let totals = metrics.totals();
        assert_eq!((totals.requests, totals.hits, totals.hit_bytes, totals.misses), (3, 2, 150, 1));
    }
}
