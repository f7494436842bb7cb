//! Ban policy (rule 4): count bad pieces per peer, ban at a threshold, let bans expire; and
//! probation: a peer earns request slots by the pieces it has verified.
//!
//! Sans-I/O: time comes in as milliseconds on the caller's clock, so every branch is tested
//! without sleeping. The policy is node-wide, not per download: it is keyed by what names a
//! source everywhere (its address or URL), and [`NodeBans`] shares one instance between every
//! download and every cache fill of a process, so a liar banned during one is not asked during
//! the next. Callers that share an instance share one clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Sources a policy remembers at most; past it, the record whose ban ends first (unbanned ones
/// before any) is forgotten, so a stream of new addresses cannot grow the map without bound.
pub const SOURCES_TRACKED_MAX: usize = 65_536;

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
    /// Pieces verified since the peer's last bad piece: what its probation window grows from.
    verified_pieces: u32,
}

/// Node-wide totals, for `/metrics` and the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BanCounts {
    /// Bans ever given.
    pub bans_total: u64,
    /// Bad pieces ever counted (including ones that landed after their sender's ban).
    pub bad_pieces_total: u64,
    /// Pieces ever verified.
    pub verified_pieces_total: u64,
}

/// Bad-piece counts, bans and probation, keyed by peer.
#[derive(Debug, Clone)]
pub struct BanPolicy<K> {
    limits: BanLimits,
    records: HashMap<K, Record>,
    counts: BanCounts,
}

impl<K: Hash + Eq + Clone> BanPolicy<K> {
    /// A policy with no peer counted yet.
    pub fn new(limits: BanLimits) -> Self {
        assert!(limits.bad_pieces_max >= 1, "a ban threshold of 0 would ban every peer unheard");
        BanPolicy { limits, records: HashMap::new(), counts: BanCounts::default() }
    }

    /// Records one bad piece from `peer` at `now_ms`; its probation starts over.
    pub fn record_bad(&mut self, peer: &K, now_ms: u64) -> Verdict {
        self.counts.bad_pieces_total += 1;
        let limits = self.limits;
        let record = self.record(peer);
        expire(record, now_ms);
        record.verified_pieces = 0;
        if record.banned_until_ms.is_some() {
            return Verdict::AlreadyBanned;
        }
        record.bad_pieces += 1;
        if record.bad_pieces < limits.bad_pieces_max {
            return Verdict::Counted { bad_pieces: record.bad_pieces };
        }
        record.banned_until_ms = Some(now_ms.saturating_add(limits.duration_ms));
        record.bans += 1;
        self.counts.bans_total += 1;
        Verdict::Banned
    }

    /// Records one verified piece from `peer`: its probation window grows.
    pub fn record_good(&mut self, peer: &K) {
        self.counts.verified_pieces_total += 1;
        let record = self.record(peer);
        record.verified_pieces = record.verified_pieces.saturating_add(1);
    }

    /// Requests `peer` may have in flight, out of `slots_max`: one while it has no verified
    /// piece, doubling with each verified piece (TCP's slow start), so a liar is asked for at most
    /// `bad_pieces_max` pieces in a row before its ban, and an honest peer is at full depth after
    /// log2(`slots_max`) pieces. A bad piece starts the probation over.
    pub fn window(&self, peer: &K, slots_max: u32) -> u32 {
        let verified = self.records.get(peer).map_or(0, |record| record.verified_pieces);
        let window = 1u32.checked_shl(verified.min(31)).unwrap_or(u32::MAX);
        window.min(slots_max).max(1)
    }

    /// Node-wide totals.
    pub fn counts(&self) -> BanCounts {
        self.counts
    }

    /// Peers banned at `now_ms`.
    pub fn banned_count(&self, now_ms: u64) -> usize {
        self.records.values().filter(|r| r.banned_until_ms.is_some_and(|until| now_ms < until)).count()
    }

    /// The record of `peer`, made room for if the policy is full.
    fn record(&mut self, peer: &K) -> &mut Record {
        if !self.records.contains_key(peer) && self.records.len() >= SOURCES_TRACKED_MAX {
            let victim = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.banned_until_ms.unwrap_or(0))
                .map(|(key, _)| key.clone())
                .expect("a full policy has records");
            self.records.remove(&victim);
        }
        self.records.entry(peer.clone()).or_default()
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

/// One node's ban policy, shared: clones are handles on the same records, so every download and
/// every fill of the process sees one peer's bans and probation. Keyed by the source's label
/// (`HOST:PORT` of a peer, the URL of an HTTP source).
#[derive(Debug, Clone)]
pub struct NodeBans {
    policy: Arc<Mutex<BanPolicy<String>>>,
}

impl NodeBans {
    /// A node-wide policy with nobody counted yet.
    pub fn new(limits: BanLimits) -> NodeBans {
        NodeBans { policy: Arc::new(Mutex::new(BanPolicy::new(limits))) }
    }

    /// The policy, locked for the caller's few calls (a panic elsewhere does not poison it: every
    /// method leaves a record consistent).
    pub fn lock(&self) -> MutexGuard<'_, BanPolicy<String>> {
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn probation_starts_at_one_and_doubles_with_each_verified_piece() {
        let mut bans = policy(2);
        assert_eq!(bans.window(&"a", 8), 1, "an unknown peer is on probation");
        let windows: Vec<u32> = (0..5)
            .map(|_| {
                bans.record_good(&"a");
                bans.window(&"a", 8)
            })
            .collect();
        assert_eq!(windows, vec![2, 4, 8, 8, 8], "doubles up to the maximum");
        bans.record_bad(&"a", 0);
        assert_eq!(bans.window(&"a", 8), 1, "a bad piece starts probation over");
        assert_eq!(bans.window(&"b", 8), 1, "other peers are not affected");
        for _ in 0..40 {
            bans.record_good(&"b");
        }
        assert_eq!(bans.window(&"b", u32::MAX), 1 << 31, "stops doubling before it overflows");
        assert_eq!(bans.counts(), BanCounts { bans_total: 0, bad_pieces_total: 1, verified_pieces_total: 45 });
    }

    #[test]
    fn node_bans_are_shared_by_clones_and_counted() {
        let node = NodeBans::new(BanLimits { bad_pieces_max: 1, duration_ms: 100 });
        let fill = node.clone();
        assert_eq!(fill.lock().record_bad(&"10.0.0.1:80".to_string(), 0), Verdict::Banned);
        assert!(node.lock().is_banned(&"10.0.0.1:80".to_string(), 50), "a ban from one fill holds for the next");
        assert_eq!(node.lock().banned_count(50), 1);
        assert_eq!(node.lock().banned_count(100), 0, "and expires");
        assert_eq!(node.lock().counts().bans_total, 1);
    }

    #[test]
    fn a_full_policy_forgets_unbanned_peers_before_banned_ones() {
        let mut bans = BanPolicy::new(BanLimits { bad_pieces_max: 1, duration_ms: 1000 });
        bans.record_bad(&0usize, 0);
        for peer in 1..SOURCES_TRACKED_MAX + 10 {
            bans.record_good(&peer);
        }
        assert!(bans.records.len() <= SOURCES_TRACKED_MAX);
        assert!(bans.is_banned(&0, 1), "the banned peer is remembered");
    }

    #[test]
    #[should_panic(expected = "ban threshold of 0")]
    fn zero_threshold_is_refused() {
        policy(0);
    }
}
