//! Ban policy (rule 4): count bad pieces per peer, ban at a threshold, let bans expire.
//!
//! Sans-I/O: time comes in as milliseconds on the caller's clock, so every branch is tested
//! without sleeping. Generic over the key so the download scheduler (source ids) and a cache
//! box (peer addresses) share it.

use std::collections::HashMap;
use std::hash::Hash;

/// Ban policy limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanLimits {
    /// Bad pieces that get a peer banned; at least 1.
    pub bad_pieces_max: u32,
    /// How long a ban lasts, in milliseconds.
    pub duration_ms: u64,
}

/// What recording a bad piece did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; the peer has sent `bad_pieces` bad pieces and is not banned yet.
    Counted { bad_pieces: u32 },
    /// This bad piece crossed the threshold: the peer is banned from now on.
    Banned,
    /// The peer was already banned (a response that was in flight when the ban fell).
    AlreadyBanned,
}

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    bad_pieces: u32,
    banned_until_ms: Option<u64>,
    bans: u32,
}

/// Bad-piece counts and bans, keyed by peer.
#[derive(Debug, Clone)]
pub struct BanPolicy<K> {
    limits: BanLimits,
    records: HashMap<K, Record>,
}

impl<K: Hash + Eq + Clone> BanPolicy<K> {
    /// A policy with no peer counted yet.
    pub fn new(limits: BanLimits) -> Self {
        assert!(limits.bad_pieces_max >= 1, "a ban threshold of 0 would ban every peer unheard");
        BanPolicy { limits, records: HashMap::new() }
    }

    /// Records one bad piece from `peer` at `now_ms`.
    pub fn record_bad(&mut self, peer: &K, now_ms: u64) -> Verdict {
        let record = self.records.entry(peer.clone()).or_default();
        expire(record, now_ms);
        if record.banned_until_ms.is_some() {
            return Verdict::AlreadyBanned;
        }
        record.bad_pieces += 1;
        if record.bad_pieces >= self.limits.bad_pieces_max {
            record.banned_until_ms = Some(now_ms.saturating_add(self.limits.duration_ms));
            record.bans += 1;
            return Verdict::Banned;
        }
        Verdict::Counted { bad_pieces: record.bad_pieces }
    }

    /// Whether `peer` is banned at `now_ms`; an expired ban is lifted (and its count forgotten).
    pub fn is_banned(&mut self, peer: &K, now_ms: u64) -> bool {
        match self.records.get_mut(peer) {
            Some(record) => {
                expire(record, now_ms);
                record.banned_until_ms.is_some()
            }
            None => false,
        }
    }

    /// Bad pieces counted for `peer` since its last ban expired.
    pub fn bad_pieces(&self, peer: &K) -> u32 {
        self.records.get(peer).map_or(0, |record| record.bad_pieces)
    }

    /// Times `peer` has been banned.
    pub fn bans(&self, peer: &K) -> u32 {
        self.records.get(peer).map_or(0, |record| record.bans)
    }

    /// When `peer`'s current ban ends, if it is banned (expiry is not applied here).
    pub fn banned_until_ms(&self, peer: &K) -> Option<u64> {
        self.records.get(peer).and_then(|record| record.banned_until_ms)
    }
}

fn expire(record: &mut Record, now_ms: u64) {
    if record.banned_until_ms.is_some_and(|until| now_ms >= until) {
        record.banned_until_ms = None;
        record.bad_pieces = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(bad_pieces_max: u32) -> BanPolicy<&'static str> {
        BanPolicy::new(BanLimits { bad_pieces_max, duration_ms: 1000 })
    }

    #[test]
    fn bans_at_the_threshold_and_not_before() {
        let mut bans = policy(2);
        assert_eq!(bans.record_bad(&"a", 0), Verdict::Counted { bad_pieces: 1 });
        assert!(!bans.is_banned(&"a", 0));
        assert_eq!(bans.record_bad(&"a", 5), Verdict::Banned);
        assert!(bans.is_banned(&"a", 6));
        assert_eq!(bans.record_bad(&"a", 7), Verdict::AlreadyBanned);
        assert_eq!(bans.bans(&"a"), 1);
        assert!(!bans.is_banned(&"b", 6), "other peers are not affected");
    }

    #[test]
    fn threshold_of_one_bans_on_first_bad_piece() {
        let mut bans = policy(1);
        assert_eq!(bans.record_bad(&"a", 0), Verdict::Banned);
    }

    #[test]
    fn bans_expire_and_counting_restarts() {
        let mut bans = policy(2);
        bans.record_bad(&"a", 0);
        bans.record_bad(&"a", 10);
        assert_eq!(bans.banned_until_ms(&"a"), Some(1010));
        assert!(bans.is_banned(&"a", 1009));
        assert!(!bans.is_banned(&"a", 1010));
        assert_eq!(bans.bad_pieces(&"a"), 0);
        assert_eq!(bans.record_bad(&"a", 1011), Verdict::Counted { bad_pieces: 1 });
        assert_eq!(bans.record_bad(&"a", 1012), Verdict::Banned);
        assert_eq!(bans.bans(&"a"), 2);
    }

    #[test]
    fn expiry_saturates_at_the_end_of_time() {
        let mut bans = BanPolicy::new(BanLimits { bad_pieces_max: 1, duration_ms: u64::MAX });
        assert_eq!(bans.record_bad(&"a", 5), Verdict::Banned);
        assert!(bans.is_banned(&"a", u64::MAX - 1));
    }

    #[test]
    #[should_panic(expected = "ban threshold of 0")]
    fn zero_threshold_is_refused() {
        policy(0);
    }
}
