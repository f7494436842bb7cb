//! The peer registry on Redis, shared by the services of a fleet (Uber Kraken's tracker does the
//! same): a service answers "who of my group holds this content" with the peers announced to any
//! service of the fleet.
//!
//! Data model (`docs/control-plane.md`), with `P` the configured key prefix:
//! - `P{GROUP}:content:ID` — a sorted set: members are peer ids, scores their announce's expiry
//!   (Unix ms). Expired members are removed on every write and every read of the key; the key
//!   itself expires with its longest-lived member.
//! - `P{GROUP}:peer:PEER` — a hash: `address` and one `c:ID` field per content held (empty: all
//!   pieces, else the hex bitfield); it expires with the announce. An announce replaces it, and
//!   the peer leaves the sets of the contents it no longer names.
//! - `P:epoch` — set once by the first service to reach an empty Redis; its absence after a
//!   reconnect means Redis lost its data (a restart), so the service writes back what it heard.
//!
//! `{GROUP}` is a Redis Cluster hash tag: one group's keys live on one slot, so an announce is
//! one `MULTI`/`EXEC`.
//!
//! Calls run on the control thread (never on the data-plane workers), each bounded by
//! `[registry] timeout_ms`. Every announce is also kept in a [`MemoryRegistry`] of this service's
//! own: when Redis fails, peer matching answers from it ("fallback"), no Redis call is made until
//! a reconnect attempt succeeds (tried on the service's tick, the wait doubling from
//! `reconnect_backoff_ms` to `reconnect_backoff_ms_max`), so a dead or slow Redis costs one
//! timeout per attempt, never one per request.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::seq::SliceRandom;
use redis::{Connection, RedisError};

use crate::config::RegistryConfig;
use crate::content::ContentId;
use crate::control::api::PeerInfo;
use crate::control::registry::{Holding, MemoryRegistry, PeerAnnounce, PeerRegistry, RegistryError, RegistryStatus};

/// Why the Redis registry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("registry.url {url:?}: {source}")]
    BadUrl { url: String, source: RedisError },
}

/// Key names, from the configured prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn content(&self, group: &str, content: &ContentId) -> String {
        format!("{}{{{group}}}:content:{content}", self.prefix)
    }

    fn peer(&self, group: &str, peer_id: &str) -> String {
        format!("{}{{{group}}}:peer:{peer_id}", self.prefix)
    }

    fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
}

/// Field of a peer's hash naming one content it holds.
fn content_field(content: &ContentId) -> String {
    format!("c:{content}")
}

/// Maps the service's monotonic `Instant`s to Unix milliseconds, the scores every box of the
/// fleet compares (their clocks must agree to well under the TTL: run NTP).
#[derive(Debug, Clone, Copy)]
struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    fn now() -> WallClock {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        WallClock { at: Instant::now(), unix_ms }
    }

    fn unix_ms(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.at) {
            Some(after) => self.unix_ms + after.as_millis() as u64,
            None => self.unix_ms.saturating_sub(self.at.duration_since(instant).as_millis() as u64),
        }
    }
}

/// When to try Redis again: the wait doubles after each failure, up to a bound.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    wait: Duration,
    wait_min: Duration,
    wait_max: Duration,
    next_try: Instant,
}

impl Backoff {
    fn failed(&mut self, now: Instant) {
        self.next_try = now + self.wait;
        self.wait = (self.wait * 2).min(self.wait_max);
    }

    fn succeeded(&mut self) {
        self.wait = self.wait_min;
    }
}

/// The registry on Redis, with this service's own announces kept as the fallback.
pub struct RedisRegistry {
    client: redis::Client,
    url: String,
    connection: Option<Connection>,
    /// What this service heard itself: the answer while Redis is unreachable, and what is
    /// written back when Redis returns empty.
    local: MemoryRegistry,
    keys: Keys,
    ttl: Duration,
    connect_timeout: Duration,
    timeout: Duration,
    peers_scanned_max: usize,
    backoff: Backoff,
    clock: WallClock,
    /// Redis answered at least once since start.
    reached: bool,
    status: RegistryStatus,
}

impl RedisRegistry {
    /// A registry on `config.url` whose announces last `ttl`; this service's own copy holds at
    /// most `entries_max` entries. Redis need not be up yet: until it answers, peers come from
    /// this service's own announces.
    pub fn new(config: &RegistryConfig, ttl: Duration, entries_max: u64) -> Result<RedisRegistry, RedisSetupError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|source| RedisSetupError::BadUrl { url: config.url.clone(), source })?;
        let now = Instant::now();
        let wait_min = Duration::from_millis(config.reconnect_backoff_ms);
        let mut registry = RedisRegistry {
            client,
            url: config.url.clone(),
            connection: None,
            local: MemoryRegistry::new(ttl, entries_max),
            keys: Keys { prefix: config.key_prefix.clone() },
            ttl,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            peers_scanned_max: config.peers_scanned_max as usize,
            backoff: Backoff {
                wait: wait_min,
                wait_min,
                wait_max: Duration::from_millis(config.reconnect_backoff_ms_max),
                next_try: now,
            },
            clock: WallClock::now(),
            reached: false,
            status: RegistryStatus { backend: "redis", fallback: true, ..RegistryStatus::default() },
        };
        registry.connect(now);
        if registry.connection.is_none() {
            tracing::warn!(url = %registry.url, "peer registry: Redis is not reachable at start; matching peers from this service's own announces until it is");
        }
        Ok(registry)
    }

    /// Opens a connection; writes back this service's announces when Redis came back empty.
    fn connect(&mut self, now: Instant) {
        let result = self.client.get_connection_with_timeout(self.connect_timeout).and_then(|connection| {
            connection.set_read_timeout(Some(self.timeout))?;
            connection.set_write_timeout(Some(self.timeout))?;
            Ok(connection)
        });
        let mut connection = match result {
            Ok(connection) => connection,
            Err(error) => return self.failed(now, &error, "connect"),
        };
        let epoch: Result<Option<String>, RedisError> =
            redis::cmd("SET").arg(self.keys.epoch()).arg(self.clock.unix_ms(now)).arg("NX").query(&mut connection);
        let empty = match epoch {
            Ok(set) => set.is_some(),
            Err(error) => return self.failed(now, &error, "connect"),
        };
        let live = if empty { self.local.live(now) } else { Vec::new() };
        for (announce, expires_at) in &live {
            let written = write_announce(
                &mut connection,
                &self.keys,
                announce,
                self.clock.unix_ms(*expires_at),
                self.clock.unix_ms(now),
            );
            if let Err(error) = written {
                return self.failed(now, &error, "write-back");
            }
        }
        self.status.replayed += live.len() as u64;
        if self.reached {
            self.status.reconnects += 1;
            tracing::info!(url = %self.url, written_back = live.len(), came_back_empty = empty, "peer registry: Redis answers again; peers come from it");
        } else {
            tracing::info!(url = %self.url, "peer registry on Redis");
        }
        self.reached = true;
        self.status.fallback = false;
        self.backoff.succeeded();
        self.connection = Some(connection);
    }

    /// A Redis call failed: drop the connection, answer from the local copy, retry later.
    fn failed(&mut self, now: Instant, error: &RedisError, what: &str) {
        self.status.backend_errors += 1;
        self.connection = None;
        if !self.status.fallback {
            tracing::warn!(%error, url = %self.url, operation = what, "peer registry: Redis failed; matching peers from this service's own announces until it answers");
        }
        self.status.fallback = true;
        self.backoff.failed(now);
    }
}

impl PeerRegistry for RedisRegistry {
    fn announce(&mut self, announce: PeerAnnounce, now: Instant) -> Result<(), RegistryError> {
        self.local.announce(announce.clone(), now)?;
        let Some(connection) = self.connection.as_mut() else { return Ok(()) };
        let expires_ms = self.clock.unix_ms(now + self.ttl);
        if let Err(error) = write_announce(connection, &self.keys, &announce, expires_ms, self.clock.unix_ms(now)) {
            self.failed(now, &error, "announce");
        }
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
        if let Some(connection) = self.connection.as_mut() {
            let query = PeersQuery { content, group, asker, count_max, scanned_max: self.peers_scanned_max };
            match read_peers(connection, &self.keys, &query, self.clock.unix_ms(now)) {
                Ok(peers) => return peers,
                Err(error) => self.failed(now, &error, "peers"),
            }
        }
        self.local.peers(content, group, asker, count_max, now)
    }

    fn expire(&mut self, now: Instant) {
        self.local.expire(now);
        if self.connection.is_none() && now >= self.backoff.next_try {
            self.connect(now);
        }
    }

    fn entry_count(&self) -> u64 {
        self.local.entry_count()
    }

    fn status(&self) -> RegistryStatus {
        self.status
    }
}

/// Writes one announce in one transaction: the peer's hash replaced, the peer added to (and
/// expired members pruned from) each content's set, and removed from the sets of contents its
/// previous announce named and this one does not.
fn write_announce(
    connection: &mut Connection,
    keys: &Keys,
    announce: &PeerAnnounce,
    expires_ms: u64,
    now_ms: u64,
) -> Result<(), RedisError> {
    let peer_key = keys.peer(&announce.group, &announce.peer_id);
    let previous: Vec<String> = redis::cmd("HKEYS").arg(&peer_key).query(connection)?;
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("DEL").arg(&peer_key).ignore();
    pipe.cmd("HSET").arg(&peer_key).arg("address").arg(announce.address.to_string());
    for (content, holding) in &announce.holdings {
        let bits = match holding {
            Holding::All => String::new(),
            Holding::Pieces(bits) => hex::encode(bits),
        };
        pipe.arg(content_field(content)).arg(bits);
    }
    pipe.ignore();
    pipe.cmd("PEXPIREAT").arg(&peer_key).arg(expires_ms).ignore();
    for (content, _) in &announce.holdings {
        let key = keys.content(&announce.group, content);
        pipe.cmd("ZADD").arg(&key).arg(expires_ms).arg(&announce.peer_id).ignore();
        pipe.cmd("ZREMRANGEBYSCORE").arg(&key).arg("-inf").arg(now_ms).ignore();
        // The key lives as long as its longest-lived member (NX: a new key; GT: a later expiry).
        pipe.cmd("PEXPIREAT").arg(&key).arg(expires_ms).arg("NX").ignore();
        pipe.cmd("PEXPIREAT").arg(&key).arg(expires_ms).arg("GT").ignore();
    }
    let named: std::collections::HashSet<String> =
        announce.holdings.iter().map(|(content, _)| content_field(content)).collect();
    for field in previous.iter().filter(|field| field.starts_with("c:") && !named.contains(*field)) {
        let Ok(content) = ContentId::parse(&field[2..]) else { continue };
        pipe.cmd("ZREM").arg(keys.content(&announce.group, &content)).arg(&announce.peer_id).ignore();
    }
    pipe.query::<()>(connection)
}

/// One peers query.
struct PeersQuery<'a> {
    content: &'a ContentId,
    group: &'a str,
    asker: Option<&'a str>,
    count_max: usize,
    scanned_max: usize,
}

/// Live holders of a content (expired ones pruned first), shuffled, capped, never the asker.
fn read_peers(
    connection: &mut Connection,
    keys: &Keys,
    query: &PeersQuery<'_>,
    now_ms: u64,
) -> Result<Vec<PeerInfo>, RedisError> {
    let key = keys.content(query.group, query.content);
    let (mut members,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now_ms)
        .ignore()
        .cmd("ZRANGEBYSCORE")
        .arg(&key)
        .arg(format!("({now_ms}"))
        .arg("+inf")
        .arg("LIMIT")
        .arg(0)
        .arg(query.scanned_max)
        .query(connection)?;
    members.retain(|member| Some(member.as_str()) != query.asker);
    let (chosen, _) = members.partial_shuffle(&mut rand::thread_rng(), query.count_max);
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let field = content_field(query.content);
    let mut pipe = redis::pipe();
    for peer_id in chosen.iter() {
        pipe.cmd("HMGET").arg(keys.peer(query.group, peer_id)).arg("address").arg(&field);
    }
    let records: Vec<(Option<String>, Option<String>)> = pipe.query(connection)?;
    Ok(chosen
        .iter()
        .zip(records)
        .filter_map(|(peer_id, record)| match record {
            // A member whose hash is gone or no longer names the content is between two writes.
            (Some(address), Some(bits)) => {
                Some(PeerInfo { peer_id: peer_id.clone(), address, bitfield: (!bits.is_empty()).then_some(bits) })
            }
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_shares_one_hash_tag() {
        let keys = Keys { prefix: "t:".into() };
        let id = ContentId::parse("pkg-1.0").unwrap();
        assert_eq!(keys.content("site-a", &id), "t:{site-a}:content:pkg-1.0");
        assert_eq!(keys.peer("site-a", "box-1"), "t:{site-a}:peer:box-1");
        assert_eq!(keys.epoch(), "t:epoch");
    }

    #[test]
    fn backoff_doubles_to_its_bound_and_resets() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut backoff = Backoff { wait: ms(100), wait_min: ms(100), wait_max: ms(300), next_try: now };
        backoff.failed(now);
        assert_eq!(backoff.next_try, now + ms(100));
        backoff.failed(now);
        assert_eq!(backoff.next_try, now + ms(200));
        backoff.failed(now);
        backoff.failed(now);
        assert_eq!(backoff.next_try, now + ms(300));
        backoff.succeeded();
        backoff.failed(now);
        assert_eq!(backoff.next_try, now + ms(100));
    }

    #[test]
    fn wall_clock_maps_instants_both_ways() {
        let clock = WallClock { at: Instant::now(), unix_ms: 1_000_000 };
        assert_eq!(clock.unix_ms(clock.at + Duration::from_millis(1500)), 1_001_500);
        assert_eq!(clock.unix_ms(clock.at.checked_sub(Duration::from_millis(500)).unwrap()), 999_500);
    }

    #[test]
    fn unreachable_redis_falls_back_to_the_service_own_announces() {
        // Port 1 on loopback: refused at once.
        let config = RegistryConfig { url: "redis://127.0.0.1:1/0".into(), ..RegistryConfig::default() };
        let mut registry = RedisRegistry::new(&config, Duration::from_secs(60), 100).unwrap();
        assert!(registry.status().fallback);
        let now = Instant::now();
        let announce = PeerAnnounce {
            peer_id: "a".into(),
            group: "g".into(),
            address: "10.0.0.1:7680".parse().unwrap(),
            holdings: vec![(ContentId::parse("x").unwrap(), Holding::All)],
        };
        registry.announce(announce, now).unwrap();
        let peers = registry.peers(&ContentId::parse("x").unwrap(), "g", None, 10, now);
        assert_eq!(peers.iter().map(|p| p.address.as_str()).collect::<Vec<_>>(), ["10.0.0.1:7680"]);
        registry.expire(now + Duration::from_secs(1));
        let status = registry.status();
        assert!(status.fallback && status.backend_errors >= 2, "{status:?}");
    }
}
