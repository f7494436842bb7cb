//! The metadata cache driven by hand: single flight, expiry, version replacement, Simple mode.

use super::*;
use crate::content::PieceSize;
use crate::fill::{WaiterToken, WorkerId};
use crate::hash::sha256;

fn limits() -> MetadataLimits {
    MetadataLimits {
        expiry_ms: 1_000,
        timeout_ms: 100,
        retry_ms: 50,
        waiters_per_id_max: 3,
        entries_max: 2,
        fetches_in_flight_max: 2,
        busy_retry_after_s: 4,
    }
}

fn key(token: u64) -> WaiterKey {
    WaiterKey { worker: WorkerId(0), token: WaiterToken(token) }
}

fn id(text: &str) -> ContentId {
    ContentId::parse(text).unwrap()
}

/// A hash file of one piece with digest `[fill; 32]`, and a manifest naming it.
fn documents(fill: u8) -> (Manifest, Vec<u8>) {
    let bytes = HashFile::new(PieceSize::new(65536).unwrap(), 1000, vec![[fill; 32]]).unwrap().to_bytes();
    let manifest = Manifest {
        version: 1,
        content_id: "c".into(),
        content_length: 1000,
        piece_size: 65536,
        hashfile_sha256: hex::encode(sha256(&bytes)),
        hashfile_urls: vec![],
        sources: vec!["http://origin/c".into()],
        sha256: None,
    };
    (manifest, bytes)
}

fn fetches(cache: &mut MetadataCache) -> Vec<MetaFetch> {
    std::iter::from_fn(|| cache.poll_action())
        .filter_map(|action| match action {
            MetaAction::Fetch(fetch) => Some(fetch),
            MetaAction::Cancel(_) => None,
        })
        .collect()
}

fn ready(cache: &mut MetadataCache) -> Vec<MetaReady> {
    std::iter::from_fn(|| cache.poll_ready()).collect()
}

/// Answers the manifest fetch, then the hash file fetch, with `fill`'s documents.
fn answer(cache: &mut MetadataCache, fill: u8, now_ms: u64) {
    let (manifest, bytes) = documents(fill);
    let manifest_fetch = fetches(cache).remove(0);
    assert_eq!(manifest_fetch.step, MetaStep::Manifest, "the manifest comes first");
    cache.handle_manifest(manifest_fetch.fetch, Ok(manifest.clone()), now_ms);
    let hashfile_fetch = fetches(cache).remove(0);
    assert_eq!(hashfile_fetch.step, MetaStep::HashFile(Arc::new(manifest)));
    cache.handle_hashfile(hashfile_fetch.fetch, Ok(bytes), now_ms);
}

fn version(metadata: &Metadata) -> Arc<ContentVersion> {
    match metadata {
        Metadata::P2p(version) => version.clone(),
        Metadata::Simple(simple) => panic!("expected P2P, got Simple: {}", simple.reason),
    }
}

#[test]
fn concurrent_requests_for_an_id_share_one_fetch() {
    let mut cache = MetadataCache::new(limits());
    for token in 0..3 {
        assert_eq!(cache.request(key(token), &id("c"), 0), MetaAnswer::Pending);
    }
    answer(&mut cache, 1, 10);
    assert_eq!(fetches(&mut cache), [], "one manifest and one hash file fetch in all");
    let answers = ready(&mut cache);
    assert_eq!(answers.iter().map(|r| r.waiter).collect::<Vec<_>>(), [key(0), key(1), key(2)]);
    let first = version(&answers[0].metadata);
    assert!(answers.iter().all(|r| Arc::ptr_eq(&version(&r.metadata), &first)));
    assert_eq!((first.version, first.digest(0)), (1, [1; 32]));
    assert_eq!(cache.request(key(9), &id("c"), 500), MetaAnswer::Ready(Metadata::P2p(first)));
}

#[test]
fn expired_metadata_is_fetched_again_and_an_unchanged_hash_file_keeps_the_version() {
    let mut cache = MetadataCache::new(limits());
    cache.request(key(0), &id("c"), 0);
    answer(&mut cache, 1, 0);
    let first = version(&ready(&mut cache)[0].metadata);
    assert_eq!(cache.request(key(1), &id("c"), 1_000), MetaAnswer::Pending, "expired at 1000 ms");
    answer(&mut cache, 1, 1_010);
    assert!(Arc::ptr_eq(&version(&ready(&mut cache)[0].metadata), &first));
}

#[test]
fn a_changed_hash_file_is_a_new_version_for_new_requests_only() {
    let mut cache = MetadataCache::new(limits());
    cache.request(key(0), &id("c"), 0);
    answer(&mut cache, 1, 0);
    let streaming = version(&ready(&mut cache)[0].metadata);
    cache.request(key(1), &id("c"), 2_000);
    answer(&mut cache, 2, 2_000);
    let fresh = version(&ready(&mut cache)[0].metadata);
    assert_eq!((fresh.version, fresh.digest(0)), (2, [2; 32]));
    assert_eq!((streaming.version, streaming.digest(0)), (1, [1; 32]), "the old response keeps its version");
}

#[test]
fn a_tampered_hash_file_gives_simple_mode_with_the_reason_and_the_http_sources() {
    let mut cache = MetadataCache::new(limits());
    cache.request(key(0), &id("c"), 0);
    let (manifest, _) = documents(1);
    let fetch = fetches(&mut cache).remove(0);
    cache.handle_manifest(fetch.fetch, Ok(manifest), 0);
    let fetch = fetches(&mut cache).remove(0);
    cache.handle_hashfile(fetch.fetch, Ok(documents(2).1), 0);
    let Metadata::Simple(simple) = ready(&mut cache).remove(0).metadata else { panic!("expected Simple") };
    assert!(matches!(simple.reason, SimpleReason::HashFileDigestMismatch { .. }), "{}", simple.reason);
    assert_eq!(simple.sources, ["http://origin/c"]);
}

#[test]
fn a_missing_manifest_gives_simple_mode_without_sources() {
    let mut cache = MetadataCache::new(limits());
    cache.request(key(0), &id("c"), 0);
    let fetch = fetches(&mut cache).remove(0);
    cache.handle_manifest(fetch.fetch, Err(MetadataFailure::NotFound), 0);
    let Metadata::Simple(simple) = ready(&mut cache).remove(0).metadata else { panic!("expected Simple") };
    assert_eq!((simple.reason.clone(), simple.sources.len()), (SimpleReason::NoManifest, 0));
}

#[test]
fn a_fetch_past_its_timeout_fails_and_is_dropped() {
    let mut cache = MetadataCache::new(limits());
    cache.request(key(0), &id("c"), 0);
    let fetch = fetches(&mut cache).remove(0);
    assert_eq!(cache.poll_timeout(), Some(100));
    cache.handle_timeout(99);
    assert_eq!(ready(&mut cache), []);
    cache.handle_timeout(100);
    assert_eq!(cache.poll_action(), Some(MetaAction::Cancel(fetch.fetch)));
    let Metadata::Simple(simple) = ready(&mut cache).remove(0).metadata else { panic!("expected Simple") };
    assert!(matches!(simple.reason, SimpleReason::ManifestFetch(_)), "{}", simple.reason);
    cache.handle_manifest(fetch.fetch, Ok(documents(1).0), 150);
    assert_eq!(fetches(&mut cache), [], "a late answer is ignored");
    assert_eq!(cache.poll_timeout(), None);
}

#[test]
fn a_failed_refresh_keeps_verified_metadata_and_retries_soon() {
    let mut cache = MetadataCache::new(limits());
    cache.request(key(0), &id("c"), 0);
    answer(&mut cache, 1, 0);
    let first = version(&ready(&mut cache)[0].metadata);
    cache.request(key(1), &id("c"), 1_000);
    let fetch = fetches(&mut cache).remove(0);
    cache.handle_manifest(fetch.fetch, Err(MetadataFailure::Fetch("connection refused".into())), 1_000);
    assert!(Arc::ptr_eq(&version(&ready(&mut cache)[0].metadata), &first), "upstream down: hits go on");
    assert_eq!(cache.request(key(2), &id("c"), 1_049), MetaAnswer::Ready(Metadata::P2p(first)));
    assert_eq!(cache.request(key(3), &id("c"), 1_050), MetaAnswer::Pending, "tried again after retry_ms");
}

#[test]
fn every_bound_answers_busy() {
    let busy = MetaAnswer::Busy { retry_after_s: 4 };
    let mut cache = MetadataCache::new(limits());
    for token in 0..3 {
        cache.request(key(token), &id("a"), 0);
    }
    assert_eq!(cache.request(key(3), &id("a"), 0), busy, "waiters per id");
    cache.request(key(4), &id("b"), 0);
    assert_eq!(cache.request(key(5), &id("c"), 0), busy, "entries all being fetched");
    assert_eq!(fetches(&mut cache).len(), 2);

    let mut cache = MetadataCache::new(MetadataLimits { entries_max: 8, fetches_in_flight_max: 1, ..limits() });
    cache.request(key(0), &id("a"), 0);
    assert_eq!(cache.request(key(1), &id("b"), 0), busy, "fetches in flight");
}

#[test]
fn a_full_cache_drops_an_idle_entry_for_a_new_id() {
    let mut cache = MetadataCache::new(limits());
    for (token, name) in ["a", "b"].iter().enumerate() {
        cache.request(key(token as u64), &id(name), 0);
        answer(&mut cache, 1, 0);
    }
    assert!(matches!(cache.request(key(9), &id("a"), 5), MetaAnswer::Ready(_)), "a is used again");
    assert_eq!(cache.request(key(2), &id("c"), 10), MetaAnswer::Pending);
    assert_eq!(cache.entries(), 2);
    assert_eq!(cache.request(key(3), &id("b"), 10), MetaAnswer::Pending, "b (least recently used) was dropped");
}

#[test]
fn a_refresh_fetches_only_expired_metadata_and_a_changed_version_comes_out_for_the_catalog() {
    let mut cache = MetadataCache::new(limits());
    cache.request(key(0), &id("c"), 0);
    answer(&mut cache, 1, 0);
    ready(&mut cache);
    let first = cache.poll_version().expect("the first version is for the catalog too");
    assert_eq!((first.version, cache.poll_version()), (1, None));
    assert!(!cache.refresh(&id("c"), 999), "fresh until 1000 ms");
    assert!(fetches(&mut cache).is_empty());
    assert!(cache.refresh(&id("c"), 1_000), "expired: fetched again in the background");
    assert!(!cache.refresh(&id("c"), 1_001), "one fetch per id at a time");
    answer(&mut cache, 1, 1_010);
    assert_eq!(ready(&mut cache), [], "nobody waited");
    assert_eq!(cache.poll_version(), None, "an unchanged hash file is no new version");
    assert!(cache.refresh(&id("c"), 2_010));
    answer(&mut cache, 2, 2_020);
    let second = cache.poll_version().expect("a changed hash file is a new version");
    assert_eq!((second.version, second.digest(0)), (2, [2; 32]));
    match cache.request(key(1), &id("c"), 2_030) {
        MetaAnswer::Ready(metadata) => assert!(Arc::ptr_eq(&version(&metadata), &second), "requests get it"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refresh_of_an_unknown_id_fetches_it_within_the_bounds() {
    let mut cache = MetadataCache::new(limits());
    // After a restart the catalog has ids the cache has never fetched.
    assert!(cache.refresh(&id("a"), 0));
    assert!(cache.refresh(&id("b"), 0));
    assert!(!cache.refresh(&id("c"), 0), "two entries at most, both being fetched");
    assert_eq!(fetches(&mut cache).len(), 2);
    assert_eq!(cache.request(key(0), &id("c"), 0), MetaAnswer::Busy { retry_after_s: 4 });
}
