//! What the fill engine counts for `/metrics` (hits and misses are the workers'): totals, bytes
//! and bad pieces per source, and two latency histograms on the engine's millisecond clock.

use std::cell::Cell;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::source::{SourceId, SourceKind};

/// Upper bounds (ms) of the latency histograms' buckets, rendered in seconds as Prometheus `le`
/// labels; `+Inf` follows.
pub const LATENCY_BUCKETS_MS: [u64; 15] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000];
/// Latencies above this are recorded as this (an hour: far past every fill timeout).
const LATENCY_MS_MAX: u64 = 3_600_000;

/// A latency distribution in milliseconds (hdrhistogram, 3 significant digits), with the exact
/// sum Prometheus wants beside it.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    sum_ms: u64,
    /// The bucket counts at the last render and the sample count they were taken at: the fill
    /// publishes its metrics every turn of its loop, and samples come far less often.
    rendered: Cell<Option<(u64, [u64; LATENCY_BUCKETS_MS.len()])>>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        let histogram = Histogram::new_with_bounds(1, LATENCY_MS_MAX, 3).expect("valid histogram bounds");
        LatencyHistogram { histogram, sum_ms: 0, rendered: Cell::new(None) }
    }
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&mut self, latency_ms: u64) {
        let latency_ms = latency_ms.min(LATENCY_MS_MAX);
        self.histogram.saturating_record(latency_ms);
        self.sum_ms = self.sum_ms.saturating_add(latency_ms);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Sum of the samples, ms.
    pub fn sum_ms(&self) -> u64 {
        self.sum_ms
    }

    /// Samples of at most `bound_ms` (to the histogram's precision: 0.1 % of the bound).
    pub fn count_at_most(&self, bound_ms: u64) -> u64 {
        self.histogram.count_between(0, bound_ms)
    }

    /// Samples of at most each of [`LATENCY_BUCKETS_MS`], in one pass over the recorded values
    /// (rendering runs often: `count_at_most` per bucket would scan the counts once per bucket).
    fn cumulative(&self) -> [u64; LATENCY_BUCKETS_MS.len()] {
        let mut counts = [0u64; LATENCY_BUCKETS_MS.len()];
        for value in self.histogram.iter_recorded() {
            let lowest_ms = self.histogram.lowest_equivalent(value.value_iterated_to());
            if let Some(at) = LATENCY_BUCKETS_MS.iter().position(|&bound| lowest_ms <= bound) {
                counts[at] += value.count_at_value();
            }
        }
        for at in 1..counts.len() {
            counts[at] += counts[at - 1];
        }
        counts
    }

    /// Writes a Prometheus histogram in seconds (`_bucket{le=…}`, `_sum`, `_count`), with
    /// `labels` (`key="value",…` or empty) on every sample.
    pub fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let separator = if labels.is_empty() { "" } else { "," };
        let count = self.count();
        let cumulative = match self.rendered.get() {
            Some((at, cumulative)) if at == count => cumulative,
            _ => {
                let cumulative = self.cumulative();
                self.rendered.set(Some((count, cumulative)));
                cumulative
            }
        };
        for (bound_ms, count) in LATENCY_BUCKETS_MS.iter().zip(cumulative) {
            let _ = write!(out, "{name}_bucket{{{labels}{separator}le=\"");
            write_seconds(out, *bound_ms);
            let _ = writeln!(out, "\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = write!(out, "{name}_sum{braces} ");
        write_seconds(out, self.sum_ms);
        let _ = writeln!(out, "\n{name}_count{braces} {count}");
    }
}

/// Writes `ms` milliseconds as seconds, as `f64`'s `Display` writes `ms / 1000` (`0.025`, `1`,
/// `2.5`), without the float formatting.
fn write_seconds(out: &mut String, ms: u64) {
    let (seconds, mut fraction) = (ms / 1000, ms % 1000);
    let _ = write!(out, "{seconds}");
    if fraction > 0 {
        let mut digits = 3;
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{fraction:0digits$}");
    }
}

/// What one source gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounts {
    /// Verified bytes received.
    pub bytes: u64,
    /// Pieces that failed verification.
    pub bad_pieces: u64,
}

/// Totals since the engine started; gauges are methods of the engine.
#[derive(Debug, Clone, Default)]
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
    /// From a worker's miss to its first piece landed (verified and stored): when the first
    /// byte of its answer can go out.
    pub first_byte_ms: LatencyHistogram,
    /// From a piece's request to its bytes verified, per fetch that verified.
    pub piece_fetch_ms: LatencyHistogram,
    /// By [`SourceId`] (dense, as the engine registers sources).
    by_source: Vec<SourceCounts>,
}

impl FillCounters {
    /// Verified bytes received from sources of `kind`.
    pub fn bytes_from(&self, kind: SourceKind) -> u64 {
        self.bytes_by_source_kind[kind.index()]
    }

    /// What `source` gave so far.
    pub fn source(&self, source: SourceId) -> SourceCounts {
        self.by_source.get(source.0 as usize).copied().unwrap_or_default()
    }

    pub(super) fn source_mut(&mut self, source: SourceId) -> &mut SourceCounts {
        let index = source.0 as usize;
        if self.by_source.len() <= index {
            // Sources are bounded by the engine (`SOURCES_MAX`), so this list is too.
            self.by_source.resize(index + 1, SourceCounts::default());
        }
        &mut self.by_source[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `prefix`.
    fn sample(text: &str, prefix: &str) -> String {
        let line = text.lines().find(|line| line.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}:\n{text}"));
        line.rsplit(' ').next().unwrap().to_string()
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_in_seconds_with_sum_and_count() {
        let mut histogram = LatencyHistogram::default();
        for latency_ms in [0, 5, 5, 120, 70_000] {
            histogram.record(latency_ms);
        }
        let mut text = String::new();
        histogram.render(&mut text, "t_seconds", "Test.", "");
        assert!(text.starts_with("# HELP t_seconds Test.\n# TYPE t_seconds histogram\n"), "{text}");
        let expected = [("0.001", "1"), ("0.005", "3"), ("0.1", "3"), ("0.25", "4"), ("60", "4"), ("+Inf", "5")];
        for (le, count) in expected {
            assert_eq!(sample(&text, &format!("t_seconds_bucket{{le=\"{le}\"}} ")), count, "le={le}\n{text}");
        }
        assert_eq!(sample(&text, "t_seconds_sum "), "70.13");
        assert_eq!(sample(&text, "t_seconds_count "), "5");
        let buckets: Vec<u64> = text
            .lines()
            .filter(|line| line.starts_with("t_seconds_bucket"))
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "buckets are cumulative: {buckets:?}");
    }

    #[test]
    fn labels_go_before_le_and_on_sum_and_count() {
        let mut histogram = LatencyHistogram::default();
        histogram.record(2 * LATENCY_MS_MAX);
        let mut text = String::new();
        histogram.render(&mut text, "t", "Test.", "kind=\"parent\"");
        assert!(text.contains("t_bucket{kind=\"parent\",le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("t_bucket{kind=\"parent\",le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("t_sum{kind=\"parent\"} 3600\n"), "a latency past the bound is capped: {text}");
        assert!(text.contains("t_count{kind=\"parent\"} 1\n"), "{text}");
    }

    #[test]
    fn seconds_are_written_as_the_float_would_be() {
        for ms in (0..3_000).chain([9_999, 10_000, 60_000, 70_130, 3_600_000, 123_456_789]).chain(LATENCY_BUCKETS_MS) {
            let mut text = String::new();
            write_seconds(&mut text, ms);
            assert_eq!(text, (ms as f64 / 1000.0).to_string(), "{ms} ms");
        }
    }

    #[test]
    fn a_render_after_new_samples_counts_them() {
        let mut histogram = LatencyHistogram::default();
        histogram.record(3);
        let mut text = String::new();
        histogram.render(&mut text, "t", "Test.", "");
        assert_eq!(sample(&text, "t_bucket{le=\"0.005\"} "), "1");
        histogram.record(4);
        histogram.record(400);
        text.clear();
        histogram.render(&mut text, "t", "Test.", "");
        assert_eq!(sample(&text, "t_bucket{le=\"0.005\"} "), "2", "{text}");
        assert_eq!(sample(&text, "t_bucket{le=\"0.5\"} "), "3", "{text}");
        assert_eq!(sample(&text, "t_sum "), "0.407");
    }
}
