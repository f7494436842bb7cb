//! What a run measured: the two latency histograms, counts and errors by kind; merged over
//! threads and turned into the summary `load` prints.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs up to one hour, to 3 significant digits.
pub const HISTOGRAM_HIGHEST_US: u64 = 3_600_000_000;
/// Significant digits of both histograms.
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// A response with this status or above counts as an error (by its code).
const ERROR_STATUS_MIN: u16 = 400;

/// An empty histogram of the run's bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_HIGHEST_US, HISTOGRAM_SIGNIFICANT_DIGITS).expect("valid bounds")
}

/// Failures by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Connections that could not be opened (refused, unreachable, timed out connecting).
    pub connect: u64,
    /// Requests not answered within `--timeout`.
    pub timeout: u64,
    /// Connections that broke or sent something that is not HTTP while a request waited.
    pub read: u64,
    /// Complete responses with status 400 or above, by status code.
    pub status: BTreeMap<u16, u64>,
}

impl Errors {
    /// Every failure counted.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.read + self.status.values().sum::<u64>()
    }

    fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.read += other.read;
        for (code, count) in &other.status {
            *self.status.entry(*code).or_default() += count;
        }
    }
}

/// One thread's (or, merged, the whole run's) measurements.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// From each request's intended send time to its last response byte (µs): the
    /// coordinated-omission-corrected latency. Equal to `service` in a closed loop.
    pub corrected: Histogram<u64>,
    /// From each request's actual send to its last response byte (µs).
    pub service: Histogram<u64>,
    /// Complete responses.
    pub responses: u64,
    /// Bytes received (heads and bodies).
    pub bytes: u64,
    /// Sends that left more than `schedule::LATE_NS` after their intended time.
    pub behind_schedule: u64,
    /// Piece bodies (`--content --verify`) whose SHA-256 is not the hash file's.
    pub bad_pieces: u64,
    pub errors: Errors,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            corrected: new_histogram(),
            service: new_histogram(),
            responses: 0,
            bytes: 0,
            behind_schedule: 0,
            bad_pieces: 0,
            errors: Errors::default(),
        }
    }
}

impl Recorder {
    /// A complete response with `status`, meant to leave at `intended_ns`, sent at `sent_ns`,
    /// done at `done_ns` (all from the run's start).
    pub fn response(&mut self, status: u16, intended_ns: u64, sent_ns: u64, done_ns: u64) {
        debug_assert!(intended_ns <= sent_ns && sent_ns <= done_ns, "{intended_ns} {sent_ns} {done_ns}");
        self.responses += 1;
        self.corrected.saturating_record(done_ns.saturating_sub(intended_ns) / 1000);
        self.service.saturating_record(done_ns.saturating_sub(sent_ns) / 1000);
        if status >= ERROR_STATUS_MIN {
            *self.errors.status.entry(status).or_default() += 1;
        }
    }

    /// Adds another thread's measurements.
    pub fn merge(&mut self, other: &Recorder) {
        self.corrected.add(&other.corrected).expect("same bounds");
        self.service.add(&other.service).expect("same bounds");
        self.responses += other.responses;
        self.bytes += other.bytes;
        self.behind_schedule += other.behind_schedule;
        self.bad_pieces += other.bad_pieces;
        self.errors.add(&other.errors);
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// The percentiles of `histogram` (µs) in ms.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |quantile: f64| ms(histogram.value_at_quantile(quantile));
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
            p99_99: at(0.9999),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// The run's summary, as printed and as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `closed` or `open`.
    pub mode: &'static str,
    pub threads: usize,
    pub connections: usize,
    /// How long the run lasted, seconds (the duration asked for at least, with the wait for the
    /// last responses).
    pub duration_s: f64,
    /// `--rate`, requests per second (open loop only).
    pub target_rate_per_s: Option<f64>,
    /// Complete responses per second.
    pub achieved_rate_per_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub bytes_per_s: f64,
    /// Sends that left more than 1 ms after their intended time (open loop).
    pub behind_schedule: u64,
    /// Piece bodies that failed the check against the hash file (`--content --verify`).
    pub bad_pieces: u64,
    pub errors: Errors,
    /// Latency from the intended send time (coordinated omission corrected).
    pub latency_ms: Percentiles,
    /// Latency from the actual send time.
    pub service_time_ms: Percentiles,
}

impl Summary {
    /// The summary of `recorder` over `duration_s`.
    pub fn new(
        recorder: &Recorder,
        target_rate_per_s: Option<f64>,
        threads: usize,
        connections: usize,
        duration_s: f64,
    ) -> Summary {
        let per_s = |count: u64| if duration_s > 0.0 { count as f64 / duration_s } else { 0.0 };
        Summary {
            mode: if target_rate_per_s.is_some() { "open" } else { "closed" },
            threads,
            connections,
            duration_s,
            target_rate_per_s,
            achieved_rate_per_s: per_s(recorder.responses),
            requests: recorder.responses,
            bytes: recorder.bytes,
            bytes_per_s: per_s(recorder.bytes),
            behind_schedule: recorder.behind_schedule,
            bad_pieces: recorder.bad_pieces,
            errors: recorder.errors.clone(),
            latency_ms: Percentiles::of(&recorder.corrected),
            service_time_ms: Percentiles::of(&recorder.service),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_send_shows_in_corrected_latency_only() {
        let mut recorder = Recorder::default();
        // Meant for 0, sent at 900 ms, answered 2 ms later.
        recorder.response(200, 0, 900_000_000, 902_000_000);
        let summary = Summary::new(&recorder, Some(10.0), 1, 1, 1.0);
        assert!((summary.latency_ms.max - 902.0).abs() < 1.0, "{:?}", summary.latency_ms);
        assert!((summary.service_time_ms.max - 2.0).abs() < 0.01, "{:?}", summary.service_time_ms);
        assert_eq!(summary.mode, "open");
    }

    #[test]
    fn merged_threads_add_counts_and_errors_by_status() {
        let mut first = Recorder::default();
        first.response(200, 0, 0, 1_000_000);
        first.response(503, 0, 0, 1_000_000);
        first.errors.connect += 1;
        let mut second = Recorder::default();
        second.response(503, 0, 0, 3_000_000);
        second.response(404, 0, 0, 3_000_000);
        second.bytes = 100;
        first.merge(&second);
        assert_eq!(first.responses, 4);
        assert_eq!(first.errors.status, BTreeMap::from([(404, 1), (503, 2)]));
        assert_eq!(first.errors.total(), 4);
        let summary = Summary::new(&first, None, 2, 2, 2.0);
        assert_eq!((summary.achieved_rate_per_s, summary.bytes_per_s), (2.0, 50.0));
        assert!((summary.latency_ms.p50 - 1.0).abs() < 0.01 && (summary.latency_ms.max - 3.0).abs() < 0.01);
    }
}
