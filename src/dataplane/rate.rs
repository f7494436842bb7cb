//! The request rate over the last minutes, for the status page: each worker marks its running
//! response count at the start of every wall-clock period (from its loop turn, not per request),
//! in a bounded ring of atomics; the page takes differences of marks. No lock, nothing added to
//! the request path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds per period of the rate.
pub const RATE_PERIOD_S: u64 = 10;
/// Periods shown (6 minutes).
pub const RATE_PERIODS: usize = 36;
/// Marks kept: one more than the periods, so every shown period has its start and end.
const MARKS: usize = RATE_PERIODS + 1;

/// One worker's marks: the response count at the start of each of the last [`MARKS`] periods.
#[derive(Debug)]
pub struct RateMarks {
    /// The latest period marked (wall seconds / [`RATE_PERIOD_S`]); 0 before the first mark.
    period: AtomicU64,
    /// The first period marked since the worker started (or since the clock stepped back).
    first: AtomicU64,
    marks: [AtomicU64; MARKS],
}

impl Default for RateMarks {
    fn default() -> Self {
        RateMarks {
            period: AtomicU64::new(0),
            first: AtomicU64::new(0),
            marks: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RateMarks {
    /// Marks `total` (responses so far) at wall time `now_s`; cheap when the period is unchanged.
    /// Only the owning worker calls it.
    pub fn mark(&self, now_s: u64, total: impl FnOnce() -> u64) {
        let period = now_s / RATE_PERIOD_S;
        let last = self.period.load(Ordering::Relaxed);
        if period == last {
            return;
        }
        let total = total();
        // First mark, a clock stepped back, or a gap longer than the ring: start afresh.
        let restart = last == 0 || period < last || period - last > MARKS as u64;
        if restart {
            self.first.store(period, Ordering::Relaxed);
        }
        // A period the worker did not see begin (a stall) starts at the count it has now.
        let from = if restart { period } else { last + 1 };
        for at in from..=period {
            self.marks[(at % MARKS as u64) as usize].store(total, Ordering::Relaxed);
        }
        self.period.store(period, Ordering::Release);
    }

    /// Adds this worker's responses in each of the [`RATE_PERIODS`] periods ending with the one
    /// holding `now_s` (oldest first) to `counts`; `total` is its response count now.
    pub fn add_counts(&self, now_s: u64, total: u64, counts: &mut [u64; RATE_PERIODS]) {
        let last = self.period.load(Ordering::Acquire);
        let first = self.first.load(Ordering::Relaxed);
        if last == 0 {
            return;
        }
        let mark = |period: u64| self.marks[(period % MARKS as u64) as usize].load(Ordering::Relaxed);
        let current = now_s / RATE_PERIOD_S;
        let oldest = (current + 1).saturating_sub(RATE_PERIODS as u64);
        for (slot, period) in counts.iter_mut().zip(oldest..=current) {
            // Periods before the first mark, unmarked yet, or overwritten count nothing.
            if period < first || period > last || period + (MARKS as u64) <= last {
                continue;
            }
            let end = if period == last { total } else { mark(period + 1) };
            *slot += end.saturating_sub(mark(period));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn counts(marks: &RateMarks, now_s: u64, total: u64) -> [u64; RATE_PERIODS] {
        let mut counts = [0; RATE_PERIODS];
        marks.add_counts(now_s, total, &mut counts);
        counts
    }

    #[test]
    fn each_period_counts_the_responses_between_its_marks() {
        let marks = RateMarks::default();
        marks.mark(T0, || 5);
        marks.mark(T0 + 3, || panic!("same period: no count is read"));
        marks.mark(T0 + RATE_PERIOD_S, || 25);
        marks.mark(T0 + 2 * RATE_PERIOD_S, || 26);
        let shown = counts(&marks, T0 + 2 * RATE_PERIOD_S + 1, 30);
        assert_eq!(shown[RATE_PERIODS - 3..], [20, 1, 4]);
        assert_eq!(shown.iter().sum::<u64>(), 25, "nothing before the first mark: {shown:?}");
    }

    #[test]
    fn a_stalled_worker_puts_its_responses_in_the_last_period_it_saw() {
        let marks = RateMarks::default();
        marks.mark(T0, || 0);
        marks.mark(T0 + 3 * RATE_PERIOD_S, || 9);
        let shown = counts(&marks, T0 + 3 * RATE_PERIOD_S, 10);
        assert_eq!(shown[RATE_PERIODS - 4..], [9, 0, 0, 1]);
        // A reader ahead of the worker's last mark sees its count in that mark's period.
        let shown = counts(&marks, T0 + 4 * RATE_PERIOD_S, 12);
        assert_eq!(shown[RATE_PERIODS - 2..], [3, 0]);
    }

    #[test]
    fn only_the_last_periods_are_shown_and_the_ring_stays_bounded() {
        let marks = RateMarks::default();
        for period in 0..200u64 {
            marks.mark(T0 + period * RATE_PERIOD_S, || period * 2);
        }
        let now = T0 + 199 * RATE_PERIOD_S;
        let shown = counts(&marks, now, 199 * 2 + 7);
        assert_eq!(shown[..RATE_PERIODS - 1], [2; RATE_PERIODS - 1]);
        assert_eq!(shown[RATE_PERIODS - 1], 7);
        // A clock stepped back starts afresh rather than showing negative or wrapped counts.
        marks.mark(T0, || 500);
        assert_eq!(counts(&marks, T0, 503).iter().sum::<u64>(), 3);
    }
}
