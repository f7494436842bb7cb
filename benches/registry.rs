//! Announces per second and peer lookups per second of the peer registry, in memory and on a
//! local `redis-server` (started here on a free loopback port when /usr/bin/redis-server exists),
//! so the cost of sharing the registry across a fleet is known. Run with `benches/registry.sh`.
//!
//! Shape: 1,000 peers of one group, each announcing 10 contents of 200 (so a content has ~50
//! holders); a lookup asks for one content's peers, 32 at most, as a device would.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera::config::RegistryConfig;
use tessera::content::ContentId;
use tessera::control::registry::{Holding, PeerAnnounce};
use tessera::control::{MemoryRegistry, PeerRegistry, RedisRegistry};

#[path = "../tests/harness/redis.rs"]
mod redis_server;

const PEERS: usize = 1_000;
const CONTENTS: usize = 200;
const CONTENTS_PER_PEER: usize = 10;
const PEERS_RETURNED_MAX: usize = 32;

fn ids() -> Vec<ContentId> {
    (0..CONTENTS).map(|i| ContentId::parse(&format!("content-{i}")).unwrap()).collect()
}

fn announce_of(peer: usize, ids: &[ContentId]) -> PeerAnnounce {
    PeerAnnounce {
        peer_id: format!("peer-{peer}"),
        group: "site".into(),
        address: format!("10.0.{}.{}:7680", peer / 250, peer % 250).parse().unwrap(),
        holdings: (0..CONTENTS_PER_PEER).map(|k| (ids[(peer * 7 + k * 13) % CONTENTS].clone(), Holding::All)).collect(),
    }
}

fn bench_backend(c: &mut Criterion, name: &str, registry: &mut dyn PeerRegistry) {
    let ids = ids();
    let now = Instant::now();
    for peer in 0..PEERS {
        registry.announce(announce_of(peer, &ids), now).unwrap();
    }
    let mut group = c.benchmark_group(format!("registry/{name}"));
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    group.bench_function("announce", |b| {
        b.iter(|| {
            next = (next + 1) % PEERS;
            registry.announce(announce_of(next, &ids), now).unwrap();
        })
    });
    group.bench_function("peers", |b| {
        b.iter(|| {
            next = (next + 1) % CONTENTS;
            let peers = registry.peers(&ids[next], "site", Some("peer-0"), PEERS_RETURNED_MAX, now);
            assert!(!peers.is_empty(), "every content has holders");
        })
    });
    group.finish();
    assert!(!registry.status().fallback, "{name}: the registry fell back during the bench");
}

fn registry_bench(c: &mut Criterion) {
    let ttl = Duration::from_secs(900);
    let mut memory = MemoryRegistry::new(ttl, 10_000_000);
    bench_backend(c, "memory", &mut memory);
    if !std::path::Path::new(redis_server::REDIS_SERVER).exists() {
        eprintln!("registry bench: {} missing, Redis backend skipped", redis_server::REDIS_SERVER);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = redis_server::Redis::start(dir.path());
    let config = RegistryConfig { url: redis.url(), timeout_ms: 2_000, ..RegistryConfig::default() };
    let mut shared = RedisRegistry::new(&config, ttl, 10_000_000).unwrap();
    bench_backend(c, "redis", &mut shared);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = registry_bench
}
criterion_main!(benches);
