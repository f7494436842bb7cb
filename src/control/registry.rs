//! Peer matching: who holds which content, per group, for how long.
//!
//! Behind [`PeerRegistry`] so a shared backend ([`RedisRegistry`](crate::control::redis_registry))
//! can replace the in-memory one. Time is passed in
//! (`now`) rather than read, so expiry is tested without sleeping.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use crate::content::ContentId;
use crate::control::api::PeerInfo;

/// Registry failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("peer registry is full ({entries_max} peer-content entries); try again later")]
    Full { entries_max: u64 },
}

/// Which pieces of a content a peer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Every piece.
    All,
    /// The pieces whose bits are set (piece 0 is the high bit of byte 0).
    Pieces(Vec<u8>),
}

/// A validated announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAnnounce {
    /// The peer's id.
    pub peer_id: String,
    /// Its group.
    pub group: String,
    /// Its data-plane address.
    pub address: SocketAddr,
    /// What it holds.
    pub holdings: Vec<(ContentId, Holding)>,
}

/// Stores announces and answers "which peers of my group hold this content".
pub trait PeerRegistry: Send {
    /// Records what a peer holds, replacing its previous announce; it lasts until `now` plus the TTL.
    fn announce(&mut self, announce: PeerAnnounce, now: Instant) -> Result<(), RegistryError>;

    /// Up to `count_max` live peers of `group` holding `content`, never `asker`, in random order.
    fn peers(
        &mut self,
        content: &ContentId,
        group: &str,
        asker: Option<&str>,
        count_max: usize,
        now: Instant,
    ) -> Vec<PeerInfo>;

    /// Drops announces that expired at or before `now`.
    fn expire(&mut self, now: Instant);

    /// Peer-content entries held (expired ones included until [`PeerRegistry::expire`] runs).
    fn entry_count(&self) -> u64;

    /// Which backend answers and how it fares, for `/metrics`.
    fn status(&self) -> RegistryStatus {
        RegistryStatus { backend: "memory", ..RegistryStatus::default() }
    }
}

/// How a registry backend fares: what `/metrics` shows of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStatus {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Peer matching answers from what this service heard itself (the shared backend is unreachable).
    pub fallback: bool,
    /// Failed calls to the shared backend.
    pub backend_errors: u64,
    /// Connections made to the shared backend after a failure.
    pub reconnects: u64,
    /// Announces written again to a shared backend that came back empty.
    pub replayed: u64,
}

struct PeerRecord {
    group: String,
    address: SocketAddr,
    expires_at: Instant,
    holdings: HashMap<ContentId, Holding>,
}

/// The in-memory registry of one service process.
pub struct MemoryRegistry {
    ttl: Duration,
    entries_max: u64,
    entry_count: u64,
    peers: HashMap<String, PeerRecord>,
    /// group → content → peer ids: a lookup touches only the peers that can match.
    index: HashMap<String, HashMap<ContentId, HashSet<String>>>,
    /// (expiry, peer id), so expiry visits only what expired.
    expiries: BTreeSet<(Instant, String)>,
}

impl MemoryRegistry {
    /// An empty registry whose announces last `ttl` and which holds at most `entries_max` entries.
    pub fn new(ttl: Duration, entries_max: u64) -> MemoryRegistry {
        MemoryRegistry {
            ttl,
            entries_max,
            entry_count: 0,
            peers: HashMap::new(),
            index: HashMap::new(),
            expiries: BTreeSet::new(),
        }
    }

    /// Every announce still live at `now`, with its expiry: what a shared backend that lost its
    /// data is given again.
    pub fn live(&self, now: Instant) -> Vec<(PeerAnnounce, Instant)> {
        self.peers
            .iter()
            .filter(|(_, record)| record.expires_at > now)
            .map(|(peer_id, record)| {
                let announce = PeerAnnounce {
                    peer_id: peer_id.clone(),
                    group: record.group.clone(),
                    address: record.address,
                    holdings: record.holdings.iter().map(|(id, holding)| (id.clone(), holding.clone())).collect(),
                };
                (announce, record.expires_at)
            })
            .collect()
    }

    fn remove_peer(&mut self, peer_id: &str) {
        let Some(record) = self.peers.remove(peer_id) else { return };
        self.expiries.remove(&(record.expires_at, peer_id.to_string()));
        self.entry_count -= record.holdings.len() as u64;
        if let Some(by_content) = self.index.get_mut(&record.group) {
            for content in record.holdings.keys() {
                if let Some(holders) = by_content.get_mut(content) {
                    holders.remove(peer_id);
                    if holders.is_empty() {
                        by_content.remove(content);
                    }
                }
            }
            if by_content.is_empty() {
                self.index.remove(&record.group);
            }
        }
    }
}

impl PeerRegistry for MemoryRegistry {
    fn announce(&mut self, announce: PeerAnnounce, now: Instant) -> Result<(), RegistryError> {
        let held_before = self.peers.get(&announce.peer_id).map_or(0, |p| p.holdings.len() as u64);
        let wanted = announce.holdings.len() as u64;
        if self.entry_count - held_before + wanted > self.entries_max {
            self.expire(now);
            let held_before = self.peers.get(&announce.peer_id).map_or(0, |p| p.holdings.len() as u64);
            if self.entry_count - held_before + wanted > self.entries_max {
                return Err(RegistryError::Full { entries_max: self.entries_max });
            }
        }
        self.remove_peer(&announce.peer_id);
        let expires_at = now + self.ttl;
        let by_content = self.index.entry(announce.group.clone()).or_default();
        let mut holdings = HashMap::with_capacity(announce.holdings.len());
        for (content, holding) in announce.holdings {
            by_content.entry(content.clone()).or_default().insert(announce.peer_id.clone());
            holdings.insert(content, holding);
        }
        self.entry_count += holdings.len() as u64;
        self.expiries.insert((expires_at, announce.peer_id.clone()));
        let record = PeerRecord { group: announce.group, address: announce.address, expires_at, holdings };
        self.peers.insert(announce.peer_id, record);
        Ok(())
    }

    fn peers(
        &mut self,
        content: &ContentId,
        group: &str,
        asker: Option<&str>,
        count_max: usize,
        now: Instant,
    ) -> Vec<PeerInfo> {
        let Some(holders) = self.index.get(group).and_then(|by_content| by_content.get(content)) else {
            return Vec::new();
        };
        let mut live: Vec<(&String, &PeerRecord)> = holders
            .iter()
            .filter(|id| Some(id.as_str()) != asker)
            .filter_map(|id| self.peers.get(id).map(|record| (id, record)))
            .filter(|(_, record)| record.expires_at > now)
            .collect();
        let mut rng = rand::thread_rng();
        let (chosen, _) = live.partial_shuffle(&mut rng, count_max);
        chosen
            .iter()
            .map(|(id, record)| PeerInfo {
                peer_id: (*id).clone(),
                address: record.address.to_string(),
                bitfield: match record.holdings.get(content) {
                    Some(Holding::Pieces(bits)) => Some(hex::encode(bits)),
                    _ => None,
                },
            })
            .collect()
    }

    fn expire(&mut self, now: Instant) {
        // Bounded by the number of peers: each pass removes one expiry entry.
        while let Some((expires_at, peer_id)) = self.expiries.first().cloned() {
            if expires_at > now {
                break;
            }
            self.remove_peer(&peer_id);
        }
    }

    fn entry_count(&self) -> u64 {
        self.entry_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn id(text: &str) -> ContentId {
        ContentId::parse(text).unwrap()
    }

    fn announce(peer: &str, group: &str, contents: &[&str]) -> PeerAnnounce {
        PeerAnnounce {
            peer_id: peer.into(),
            group: group.into(),
            address: "10.0.0.1:7680".parse().unwrap(),
            holdings: contents.iter().map(|c| (id(c), Holding::All)).collect(),
        }
    }

    fn ids(peers: &[PeerInfo]) -> Vec<&str> {
        let mut ids: Vec<&str> = peers.iter().map(|p| p.peer_id.as_str()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn matches_within_group_and_never_returns_the_asker() {
        let mut registry = MemoryRegistry::new(TTL, 100);
        let now = Instant::now();
        registry.announce(announce("a", "g1", &["x", "y"]), now).unwrap();
        registry.announce(announce("b", "g1", &["x"]), now).unwrap();
        registry.announce(announce("c", "g2", &["x"]), now).unwrap();
        assert_eq!(ids(&registry.peers(&id("x"), "g1", None, 10, now)), ["a", "b"]);
        assert_eq!(ids(&registry.peers(&id("x"), "g1", Some("a"), 10, now)), ["b"]);
        assert_eq!(ids(&registry.peers(&id("x"), "g2", None, 10, now)), ["c"]);
        assert!(registry.peers(&id("x"), "g3", None, 10, now).is_empty());
        assert!(registry.peers(&id("z"), "g1", None, 10, now).is_empty());
        assert_eq!(registry.peers(&id("x"), "g1", None, 1, now).len(), 1);
    }

    #[test]
    fn announces_expire_after_the_ttl_unless_repeated() {
        let mut registry = MemoryRegistry::new(TTL, 100);
        let start = Instant::now();
        registry.announce(announce("a", "g", &["x"]), start).unwrap();
        registry.announce(announce("b", "g", &["x"]), start).unwrap();
        let later = start + TTL / 2;
        registry.announce(announce("b", "g", &["x"]), later).unwrap();
        let after_first_ttl = start + TTL;
        assert_eq!(ids(&registry.peers(&id("x"), "g", None, 10, after_first_ttl)), ["b"]);
        registry.expire(after_first_ttl);
        assert_eq!(registry.entry_count(), 1);
        registry.expire(later + TTL);
        assert_eq!(registry.entry_count(), 0);
        assert!(registry.peers(&id("x"), "g", None, 10, later + TTL).is_empty());
    }

    #[test]
    fn reannounce_replaces_contents_and_group() {
        let mut registry = MemoryRegistry::new(TTL, 100);
        let now = Instant::now();
        registry.announce(announce("a", "g1", &["x", "y"]), now).unwrap();
        registry.announce(announce("a", "g2", &["y"]), now).unwrap();
        assert!(registry.peers(&id("x"), "g1", None, 10, now).is_empty());
        assert!(registry.peers(&id("y"), "g1", None, 10, now).is_empty());
        assert_eq!(ids(&registry.peers(&id("y"), "g2", None, 10, now)), ["a"]);
        assert_eq!(registry.entry_count(), 1);
    }

    #[test]
    fn full_registry_refuses_until_entries_expire() {
        let mut registry = MemoryRegistry::new(TTL, 2);
        let now = Instant::now();
        registry.announce(announce("a", "g", &["x", "y"]), now).unwrap();
        assert_eq!(registry.announce(announce("b", "g", &["x"]), now), Err(RegistryError::Full { entries_max: 2 }));
        // The same peer may replace its own entries.
        registry.announce(announce("a", "g", &["z"]), now).unwrap();
        registry.announce(announce("b", "g", &["x"]), now).unwrap();
        assert!(registry.announce(announce("c", "g", &["x"]), now).is_err());
        registry.announce(announce("c", "g", &["x"]), now + TTL).unwrap();
        assert_eq!(registry.entry_count(), 1);
    }

    #[test]
    fn bitfields_are_returned_as_hex() {
        let mut registry = MemoryRegistry::new(TTL, 10);
        let now = Instant::now();
        let mut partial = announce("a", "g", &[]);
        partial.holdings.push((id("x"), Holding::Pieces(vec![0xf0, 0x01])));
        registry.announce(partial, now).unwrap();
        assert_eq!(registry.peers(&id("x"), "g", None, 10, now)[0].bitfield.as_deref(), Some("f001"));
    }
}
