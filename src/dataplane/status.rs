//! What the status page (`GET /`) and `/status.json` show: one [`Status`], gathered when asked
//! from the workers' counters (atomics), the store, the catalog and the fill thread's last
//! published [`FillStatus`]; rendered as HTML by `status_page` and as JSON by serde, and read back
//! by `tessera status`. The page is rare, so gathering may take the store's read lock and read
//! the catalog; nothing is added to the request path.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::dataplane::library::Content;
use crate::dataplane::rate::RATE_PERIOD_S;
use crate::dataplane::shared::Shared;
use crate::io::Backend;
use crate::store::StoreStats;

/// Contents listed at most (by id); `contents_total` counts them all.
pub const CONTENTS_SHOWN_MAX: usize = 100;
/// Upstream sources listed at most.
pub const SOURCES_SHOWN_MAX: usize = 64;

/// What the status page needs that the workers' shared state does not otherwise hold.
#[derive(Debug, Clone)]
pub struct StatusContext {
    pub started: Instant,
    pub started_unix_s: u64,
    pub backend: Backend,
    pub workers: usize,
}

impl StatusContext {
    /// The context of a data plane starting now.
    pub fn new(backend: Backend, workers: usize) -> StatusContext {
        StatusContext { started: Instant::now(), started_unix_s: unix_now_s(), backend, workers }
    }
}

/// The box as the status page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// `seed` (serves what it holds) or `cache box` (fills misses from upstream).
    pub role: String,
    pub uptime_s: u64,
    pub started_unix_s: u64,
    /// `io_uring` or `epoll`.
    pub backend: String,
    pub workers: usize,
    pub requests_total: u64,
    pub bytes_sent_total: u64,
    pub connections_open: u64,
    pub cache: CacheStatus,
    /// The piece store against its limits.
    pub store: StoreStats,
    /// Servable contents among the first [`CONTENTS_SHOWN_MAX`] catalog entries by id.
    pub contents: Vec<ContentStatus>,
    /// Catalog entries, all of them.
    pub contents_total: usize,
    /// Upstream sources banned now (rule 4); 0 on a seed.
    pub bans_in_force: u64,
    /// A cache box's fill and upstream; `None` on a seed.
    pub fill: Option<FillStatus>,
    pub request_rate: RequestRate,
}

/// Hits (answered from the store) and misses (handed to the fill).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub hits: u64,
    pub misses: u64,
    pub hit_bytes: u64,
    pub miss_bytes: u64,
}

/// One content of the catalog and how much of it the store holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentStatus {
    pub id: String,
    pub length_bytes: u64,
    pub piece_size_bytes: u32,
    pub pieces: u64,
    pub pieces_held: u64,
    pub bytes_held: u64,
}

/// Requests per period over the last minutes, oldest first; the last period is still running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRate {
    pub period_s: u64,
    pub counts: Vec<u64>,
}

/// A cache box's fill and the health of its upstream, as the fill thread last published it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillStatus {
    pub service_url: String,
    pub service: ServiceHealth,
    pub fills_in_flight: u64,
    pub pieces_in_flight: u64,
    pub waiters: u64,
    pub bans_in_force: u64,
    pub bans_total: u64,
    pub sources: Vec<SourceStatus>,
}

/// How the upstream metadata service answered lately.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// When it last answered (a manifest or hash file, or "not found").
    pub last_answer_unix_s: Option<u64>,
    /// When a fetch from it last failed, and how.
    pub last_failure_unix_s: Option<u64>,
    pub last_failure: Option<String>,
}

impl ServiceHealth {
    /// Whether its last exchange was an answer (`None`: never asked yet).
    pub fn reachable(&self) -> Option<bool> {
        match (self.last_answer_unix_s, self.last_failure_unix_s) {
            (None, None) => None,
            (answer, failure) => Some(answer >= failure),
        }
    }
}

/// One upstream source (parent, peer or origin host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub bytes: u64,
    pub bad_pieces: u64,
    pub banned: bool,
}

/// Seconds since the Unix epoch now.
pub fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// Gathers the status of the data plane behind `shared`.
pub fn gather(shared: &Shared) -> Status {
    let context = &shared.status;
    let now_s = unix_now_s();
    let totals = shared.metrics.totals();
    let (contents, contents_total) = contents(shared);
    let fill = shared.upstream.as_ref().map(|link| link.fill_status());
    Status {
        version: crate::build_info::VERSION.to_string(),
        role: if shared.upstream.is_some() { "cache box" } else { "seed" }.to_string(),
        uptime_s: context.started.elapsed().as_secs(),
        started_unix_s: context.started_unix_s,
        backend: context.backend.name().to_string(),
        workers: context.workers,
        requests_total: totals.requests,
        bytes_sent_total: totals.bytes_sent,
        connections_open: totals.connections_open,
        cache: CacheStatus {
            hits: totals.hits,
            misses: totals.misses,
            hit_bytes: totals.hit_bytes,
            miss_bytes: totals.miss_bytes,
        },
        store: shared.store.stats(),
        contents,
        contents_total,
        bans_in_force: fill.as_ref().map_or(0, |fill| fill.bans_in_force),
        fill,
        request_rate: RequestRate { period_s: RATE_PERIOD_S, counts: shared.metrics.rate(now_s).to_vec() },
    }
}

/// The first [`CONTENTS_SHOWN_MAX`] servable contents of the catalog with what the store holds
/// of each, and how many ids the catalog has. A catalog that cannot be read shows none (logged).
fn contents(shared: &Shared) -> (Vec<ContentStatus>, usize) {
    let ids = match shared.catalog.list() {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!(%error, "status page: cannot list the catalog");
            return (Vec::new(), 0);
        }
    };
    let shown = ids.iter().take(CONTENTS_SHOWN_MAX).filter_map(|id| match Content::load(&shared.catalog, id) {
        Ok(content) => content,
        Err(error) => {
            tracing::debug!(%error, "status page: catalog entry not servable");
            None
        }
    });
    let statuses = shown
        .map(|content| {
            let held = shared.store.indexes_held(&content.digests);
            let piece_bytes = u64::from(content.piece_size.bytes());
            let piece_length = |index: u64| piece_bytes.min(content.length - index * piece_bytes);
            ContentStatus {
                id: content.id.to_string(),
                length_bytes: content.length,
                piece_size_bytes: content.piece_size.bytes(),
                pieces: content.piece_count(),
                pieces_held: held.len() as u64,
                bytes_held: held.iter().map(|&index| piece_length(index)).sum(),
            }
        })
        .collect();
    (statuses, ids.len())
}

/// A status for the renderers' tests.
#[cfg(test)]
pub mod example {
    use super::*;

    /// A cache box's status with one content named `id`, a banned source and a failing service.
    pub fn status(id: &str) -> Status {
        Status {
            version: "0.1.0".into(),
            role: "cache box".into(),
            uptime_s: 3723,
            started_unix_s: 1_700_000_000,
            backend: "uring".into(),
            workers: 2,
            requests_total: 12345,
            bytes_sent_total: 3 << 20,
            connections_open: 4,
            cache: CacheStatus { hits: 30, misses: 10, hit_bytes: 1 << 20, miss_bytes: 0 },
            store: StoreStats {
                pieces: 5,
                piece_bytes: 5 << 20,
                slab_bytes: 64 << 20,
                size_bytes_max: 1 << 30,
                age_s_max: 259_200,
                evictions_total: 7,
            },
            contents: vec![ContentStatus {
                id: id.into(),
                length_bytes: 2_621_440,
                piece_size_bytes: 1 << 20,
                pieces: 3,
                pieces_held: 2,
                bytes_held: 2 << 20,
            }],
            contents_total: 1,
            bans_in_force: 1,
            fill: Some(FillStatus {
                service_url: "https://seed.example:7443".into(),
                service: ServiceHealth {
                    last_failure_unix_s: Some(1),
                    last_failure: Some("refused <x>".into()),
                    ..ServiceHealth::default()
                },
                sources: vec![SourceStatus { name: "evil\"<peer>".into(), bytes: 10, bad_pieces: 2, banned: true }],
                bans_in_force: 1,
                ..FillStatus::default()
            }),
            request_rate: RequestRate { period_s: 10, counts: (0..36).map(|i| i * 3).collect() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_reachable_when_its_last_exchange_was_an_answer() {
        let mut health = ServiceHealth::default();
        assert_eq!(health.reachable(), None);
        health.last_failure_unix_s = Some(10);
        assert_eq!(health.reachable(), Some(false));
        health.last_answer_unix_s = Some(12);
        assert_eq!(health.reachable(), Some(true));
        health.last_failure_unix_s = Some(13);
        assert_eq!(health.reachable(), Some(false));
    }
}
