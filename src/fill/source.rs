//! Source choice behind a small interface, so the node-wide ban policy and the download
//! scheduler's rules can be plugged in; [`RoundRobin`] is the default.

use crate::content::Digest;

/// A source known to the engine, by the order it was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// A configured parent (`[upstream] peers`) speaking the piece API.
    Parent,
    /// A peer of the group, from peer matching, speaking the piece API.
    Peer,
    /// An HTTP URL of the whole content from the manifest, asked with Range.
    Origin,
}

impl SourceKind {
    /// Number of kinds (size of per-kind counters).
    pub const COUNT: usize = 3;

    /// Index in per-kind counters.
    pub fn index(self) -> usize {
        match self {
            SourceKind::Parent => 0,
            SourceKind::Peer => 1,
            SourceKind::Origin => 2,
        }
    }

    /// Label for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Parent => "parent",
            SourceKind::Peer => "peer",
            SourceKind::Origin => "origin",
        }
    }
}

/// A source that could serve a piece, as the engine sees it right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The source.
    pub source: SourceId,
    /// Its kind.
    pub kind: SourceKind,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// Requests it may have in flight.
    pub in_flight_max: u32,
    /// It sent a bad copy of this piece, or said it has none: never ask it for this piece again.
    pub excluded: bool,
    /// Fetches of this piece from it that failed (timeouts, lost connections).
    pub failures: u32,
    /// A ranked parent's rendezvous rank for the content (0: the primary); `None` otherwise.
    pub rank: Option<u32>,
    /// It failed a fetch recently: a ranked parent is passed over while another is not.
    pub resting: bool,
}

impl Candidate {
    /// Not excluded and with a free request slot.
    pub fn is_open(&self) -> bool {
        !self.excluded && self.in_flight < self.in_flight_max
    }
}

/// What a policy decided for a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Ask this source now.
    Source(SourceId),
    /// Usable sources exist but none can take a request now (slots full, probation): try later.
    Wait,
    /// No source will ever do for this piece: its waiters get a failure.
    Nobody,
}

/// How a fetch from a source ended, for the policy's books (bans, probation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The piece verified.
    Good {
        /// Its length.
        bytes: u32,
    },
    /// The piece did not match its digest: a lie, counted against the source.
    Bad,
    /// The source says it has no such piece (404, 416): not a lie.
    Missing,
    /// The fetch failed or timed out.
    Failed,
}

/// Chooses a source for a piece; the node-wide ban policy implements this at integration.
pub trait SourcePolicy {
    /// Picks among `candidates` (never empty unless the content has no source at all).
    fn pick(&mut self, digest: &Digest, candidates: &[Candidate], now_ms: u64) -> Pick;
    /// Learns how a fetch it picked ended.
    fn record(&mut self, source: SourceId, outcome: Outcome, now_ms: u64);
}

/// The default policy: the best-ranked parent that may serve the piece when parents are ranked
/// (waited for when busy), else round robin over open sources, fewest failures for this piece
/// first.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: u32,
}

impl SourcePolicy for RoundRobin {
    fn pick(&mut self, _digest: &Digest, candidates: &[Candidate], _now_ms: u64) -> Pick {
        if candidates.iter().all(|candidate| candidate.excluded) {
            return Pick::Nobody;
        }
        let may_serve = |c: &&Candidate| c.rank.is_some() && !c.excluded && c.failures == 0 && !c.resting;
        if let Some(primary) = candidates.iter().filter(may_serve).min_by_key(|c| c.rank) {
            return if primary.is_open() { Pick::Source(primary.source) } else { Pick::Wait };
        }
        // Rotation distance from the cursor, so equal candidates take turns.
        let distance = |candidate: &&Candidate| candidate.source.0.wrapping_sub(self.next);
        let best = candidates.iter().filter(|c| c.is_open()).min_by_key(|c| (c.failures, distance(c)));
        match best {
            Some(candidate) => {
                self.next = candidate.source.0.wrapping_add(1);
                Pick::Source(candidate.source)
            }
            None => Pick::Wait,
        }
    }

    fn record(&mut self, _source: SourceId, _outcome: Outcome, _now_ms: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(source: u32, in_flight: u32, excluded: bool, failures: u32) -> Candidate {
        Candidate {
            source: SourceId(source),
            kind: SourceKind::Parent,
            in_flight,
            in_flight_max: 2,
            excluded,
            failures,
            rank: None,
            resting: false,
        }
    }

    fn ranked(source: u32, rank: u32, in_flight: u32, resting: bool) -> Candidate {
        Candidate { rank: Some(rank), resting, ..candidate(source, in_flight, false, 0) }
    }

    #[test]
    fn ranked_parents_serve_best_first_and_are_waited_for_not_bypassed() {
        let mut policy = RoundRobin::default();
        let origin = candidate(9, 0, false, 0);
        let all = [ranked(0, 1, 0, false), ranked(1, 0, 0, false), origin];
        assert_eq!(policy.pick(&[0; 32], &all, 0), Pick::Source(SourceId(1)), "rank 0 first");
        let busy = [ranked(0, 1, 0, false), ranked(1, 0, 2, false), origin];
        assert_eq!(policy.pick(&[0; 32], &busy, 0), Pick::Wait, "a busy primary is waited for");
        let resting = [ranked(0, 1, 0, false), ranked(1, 0, 0, true), origin];
        assert_eq!(policy.pick(&[0; 32], &resting, 0), Pick::Source(SourceId(0)), "the next takes over");
        let failed_here = [
            Candidate { failures: 1, ..ranked(0, 1, 0, true) },
            Candidate { failures: 1, ..ranked(1, 0, 0, false) },
            origin,
        ];
        assert_eq!(policy.pick(&[0; 32], &failed_here, 0), Pick::Source(SourceId(9)), "no parent left: others");
    }

    #[test]
    fn round_robin_takes_turns_over_open_sources() {
        let mut policy = RoundRobin::default();
        let all = [candidate(0, 0, false, 0), candidate(1, 0, false, 0), candidate(2, 2, false, 0)];
        let picks: Vec<Pick> = (0..4).map(|_| policy.pick(&[0; 32], &all, 0)).collect();
        let expected = [0, 1, 0, 1].map(|s| Pick::Source(SourceId(s)));
        assert_eq!(picks, expected, "source 2 is full and never picked");
    }

    #[test]
    fn round_robin_prefers_sources_that_did_not_fail_this_piece() {
        let mut policy = RoundRobin::default();
        let all = [candidate(0, 0, false, 1), candidate(1, 0, false, 0)];
        assert_eq!(policy.pick(&[0; 32], &all, 0), Pick::Source(SourceId(1)));
        assert_eq!(policy.pick(&[0; 32], &all, 0), Pick::Source(SourceId(1)));
    }

    #[test]
    fn round_robin_waits_when_full_and_gives_up_when_all_excluded() {
        let mut policy = RoundRobin::default();
        assert_eq!(policy.pick(&[0; 32], &[candidate(0, 2, false, 0), candidate(1, 0, true, 0)], 0), Pick::Wait);
        assert_eq!(policy.pick(&[0; 32], &[candidate(0, 0, true, 0)], 0), Pick::Nobody);
        assert_eq!(policy.pick(&[0; 32], &[], 0), Pick::Nobody);
    }
}
