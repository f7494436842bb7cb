//! When each of a thread's requests is meant to go out, without I/O.
//!
//! The run's requests are numbered `0, 1, 2, …` in one global sequence; thread `i` of `T` owns
//! numbers `i, i + T, i + 2T, …`. With `--rate R`, request `k` is meant to leave at `k / R`
//! seconds after the start, whichever thread owns it. So the threads' shares add up to the
//! total exactly, whatever `R` and `T` are (with `R < T` a thread sends less than once a second,
//! not zero times, which is wrk2's bug with `-R` < `-t`), and nothing accumulates rounding error:
//! every intended time is computed from its number, not from the previous one.

/// A send that leaves later than this after its intended time counts as behind schedule.
pub const LATE_NS: u64 = 1_000_000;

/// How sends are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Closed loop: a connection sends its next request as soon as the last one is answered.
    Closed,
    /// Open loop: `rate_per_s` requests a second in total, on a fixed schedule.
    Open { rate_per_s: f64 },
}

/// When the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No request is sent (or meant to be sent) at or after this time from the start.
    After { duration_ns: u64 },
    /// This many requests in total, over every thread.
    Requests { count: u64 },
}

/// What the schedule says about the next send at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A send is due; it was meant to leave at `intended_ns`.
    Now { intended_ns: u64 },
    /// The next send is meant to leave at this time.
    At { intended_ns: u64 },
    /// This thread sends nothing more.
    Over,
}

/// One thread's share of the run's sends.
#[derive(Debug, Clone)]
pub struct Schedule {
    pace: Pace,
    stop: Stop,
    thread_count: u64,
    /// The global number of this thread's next send.
    next_number: u64,
    sent_count: u64,
    late_count: u64,
}

impl Schedule {
    /// The share of thread `thread_index` (of `thread_count`).
    pub fn new(pace: Pace, stop: Stop, thread_index: u64, thread_count: u64) -> Schedule {
        assert!(thread_index < thread_count, "thread {thread_index} of {thread_count}");
        if let Pace::Open { rate_per_s } = pace {
            assert!(rate_per_s.is_finite() && rate_per_s > 0.0, "rate {rate_per_s} must be positive");
        }
        Schedule { pace, stop, thread_count, next_number: thread_index, sent_count: 0, late_count: 0 }
    }

    /// When the next send is meant to leave (ns from the start), if there is one.
    fn intended_ns(&self, now_ns: u64) -> Option<u64> {
        if let Stop::Requests { count } = self.stop {
            if self.next_number >= count {
                return None;
            }
        }
        let intended_ns = match self.pace {
            // A closed loop means every send for "now".
            Pace::Closed => now_ns,
            Pace::Open { rate_per_s } => (self.next_number as f64 * 1e9 / rate_per_s) as u64,
        };
        match self.stop {
            Stop::After { duration_ns } if intended_ns >= duration_ns => None,
            _ => Some(intended_ns),
        }
    }

    /// What is due at `now_ns` (ns from the start).
    pub fn due(&self, now_ns: u64) -> Due {
        match self.intended_ns(now_ns) {
            None => Due::Over,
            Some(intended_ns) if intended_ns <= now_ns => Due::Now { intended_ns },
            Some(intended_ns) => Due::At { intended_ns },
        }
    }

    /// Takes the send due at `now_ns`: its intended time, or `None` if none is due.
    pub fn take(&mut self, now_ns: u64) -> Option<u64> {
        let Due::Now { intended_ns } = self.due(now_ns) else { return None };
        self.next_number += self.thread_count;
        self.sent_count += 1;
        if now_ns - intended_ns > LATE_NS {
            self.late_count += 1;
        }
        Some(intended_ns)
    }

    /// Sends taken so far.
    pub fn sent_count(&self) -> u64 {
        self.sent_count
    }

    /// Sends taken more than [`LATE_NS`] after their intended time.
    pub fn late_count(&self) -> u64 {
        self.late_count
    }

    /// Whether the run may end at `now_ns` as far as the schedule goes: no send left, and a
    /// timed run lasts its whole duration (so the achieved rate is over the same span as the
    /// target rate, however few sends a thread has).
    pub fn is_over(&self, now_ns: u64) -> bool {
        let duration_passed = match self.stop {
            Stop::After { duration_ns } => now_ns >= duration_ns,
            Stop::Requests { .. } => true,
        };
        duration_passed && self.due(now_ns) == Due::Over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_NS: u64 = 1_000_000_000;

    /// Every send of every thread, taken at exactly its intended time.
    fn all_sends(pace: Pace, stop: Stop, thread_count: u64) -> Vec<Vec<u64>> {
        (0..thread_count)
            .map(|index| {
                let mut schedule = Schedule::new(pace, stop, index, thread_count);
                let mut times = Vec::new();
                for _ in 0..1_000_000 {
                    match schedule.due(0) {
                        Due::Over => break,
                        Due::Now { intended_ns } | Due::At { intended_ns } => {
                            times.push(schedule.take(intended_ns).expect("due at its own time"));
                        }
                    }
                }
                times
            })
            .collect()
    }

    #[test]
    fn threads_share_the_rate_exactly_even_with_fewer_requests_per_second_than_threads() {
        let stop = Stop::After { duration_ns: 10 * SECOND_NS };
        let per_thread = all_sends(Pace::Open { rate_per_s: 3.0 }, stop, 8);
        assert_eq!(per_thread.iter().map(Vec::len).sum::<usize>(), 30);
        // Merged, the sends are exactly 1/3 s apart, starting at 0.
        let mut merged: Vec<u64> = per_thread.concat();
        merged.sort_unstable();
        for (k, at) in merged.iter().enumerate() {
            assert_eq!(*at, (k as f64 * 1e9 / 3.0) as u64);
        }
        // Each thread's own sends are 8/3 s apart.
        let gap = per_thread[2][1] - per_thread[2][0];
        assert!((2_666_666_666..=2_666_666_667).contains(&gap), "gap {gap}");
    }

    #[test]
    fn a_request_count_is_split_over_threads_without_loss() {
        let per_thread = all_sends(Pace::Open { rate_per_s: 1000.0 }, Stop::Requests { count: 10 }, 4);
        let counts: Vec<usize> = per_thread.iter().map(Vec::len).collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
        let per_thread = all_sends(Pace::Closed, Stop::Requests { count: 2 }, 3);
        assert_eq!(per_thread.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 0]);
    }

    #[test]
    fn an_open_loop_waits_for_the_intended_time_and_counts_late_sends() {
        let mut schedule = Schedule::new(Pace::Open { rate_per_s: 100.0 }, Stop::Requests { count: 3 }, 0, 1);
        assert_eq!(schedule.take(0), Some(0));
        assert_eq!(schedule.due(5_000_000), Due::At { intended_ns: 10_000_000 });
        assert_eq!(schedule.take(5_000_000), None);
        // 30 ms late: the two remaining sends are both due at once, and both late.
        assert_eq!(schedule.take(40_000_000), Some(10_000_000));
        assert_eq!(schedule.take(40_000_000), Some(20_000_000));
        assert_eq!(schedule.due(40_000_000), Due::Over);
        assert_eq!((schedule.sent_count(), schedule.late_count()), (3, 2));
    }

    #[test]
    fn a_closed_loop_sends_whenever_asked_until_the_duration_passes() {
        let mut schedule = Schedule::new(Pace::Closed, Stop::After { duration_ns: SECOND_NS }, 0, 2);
        assert_eq!(schedule.take(7), Some(7));
        assert_eq!(schedule.take(7), Some(7));
        assert!(!schedule.is_over(SECOND_NS - 1));
        assert_eq!(schedule.take(SECOND_NS), None);
        assert!(schedule.is_over(SECOND_NS));
        assert_eq!(schedule.late_count(), 0);
    }

    #[test]
    fn a_timed_run_is_not_over_before_its_duration_even_with_no_send_left() {
        // Rate 1 over 10 s with 4 threads: thread 3's last send is at 7 s.
        let mut schedule =
            Schedule::new(Pace::Open { rate_per_s: 1.0 }, Stop::After { duration_ns: 10 * SECOND_NS }, 3, 4);
        assert_eq!(schedule.take(3 * SECOND_NS), Some(3 * SECOND_NS));
        assert_eq!(schedule.take(7 * SECOND_NS), Some(7 * SECOND_NS));
        assert_eq!(schedule.due(8 * SECOND_NS), Due::Over);
        assert!(!schedule.is_over(8 * SECOND_NS));
        assert!(schedule.is_over(10 * SECOND_NS));
    }
}
