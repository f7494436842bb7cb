use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::hash::hash_piece;

const SMALL: u32 = 64 * 1024;

fn small() -> PieceSize {
    PieceSize::new(SMALL).unwrap()
}

fn id(text: &str) -> ContentId {
    ContentId::parse(text).unwrap()
}

/// Distinct, reproducible bytes for (content, piece).
fn piece_bytes(seed: u8, index: u64, length: usize) -> Vec<u8> {
    (0..length).map(|i| (i as u64).wrapping_mul(31).wrapping_add(index * 7 + u64::from(seed)) as u8).collect()
}

/// A store of `slots` 64 KiB slots in one slab.
fn config(slots: u64) -> StoreConfig {
    StoreConfig {
        size_bytes_max: slots * u64::from(SMALL),
        slab_size_bytes: slots * u64::from(SMALL),
        ..StoreConfig::default()
    }
}

fn put(store: &Store, content: &str, seed: u8, indexes: std::ops::Range<u64>) -> Result<IngestReport, StoreError> {
    let owned: Vec<(u64, Vec<u8>)> = indexes.map(|i| (i, piece_bytes(seed, i, SMALL as usize))).collect();
    let pieces: Vec<NewPiece<'_>> =
        owned.iter().map(|(i, b)| NewPiece { index: *i, bytes: b, digest: hash_piece(b) }).collect();
    store.ingest(&id(content), small(), &pieces)
}

fn assert_piece(store: &Store, content: &str, seed: u8, index: u64) {
    let guard = store.get(content, index).unwrap_or_else(|| panic!("{content}/{index} missing"));
    assert_eq!(guard.bytes(), piece_bytes(seed, index, SMALL as usize), "{content}/{index}");
}

#[test]
fn ingested_pieces_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(8)).unwrap();
        let report = put(&store, "a", 1, 0..5).unwrap();
        assert_eq!(report.stored, 5);
        assert_eq!(put(&store, "a", 1, 3..6).unwrap(), IngestReport { stored: 1, already_present: 2, evicted: 0 });
        for i in 0..6 {
            assert_piece(&store, "a", 1, i);
        }
    }
    let store = Store::open(dir.path(), &config(8)).unwrap();
    assert_eq!(store.piece_indexes("a"), (0..6).collect::<Vec<_>>());
    for i in 0..6 {
        assert_piece(&store, "a", 1, i);
    }
    assert_eq!(store.stats().pieces, 6);
}

#[test]
fn short_last_piece_keeps_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    let bytes = vec![5u8; 100];
    store.ingest(&id("s"), small(), &[NewPiece { index: 0, bytes: &bytes, digest: hash_piece(&bytes) }]).unwrap();
    assert_eq!(store.get("s", 0).unwrap().bytes(), &bytes[..]);
}

#[test]
fn oversized_piece_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    let bytes = vec![0u8; SMALL as usize + 1];
    let error = store.ingest(&id("s"), small(), &[NewPiece { index: 0, bytes: &bytes, digest: [0; 32] }]).unwrap_err();
    assert!(matches!(error, StoreError::PieceTooLarge { .. }), "{error}");
}

#[test]
fn corrupted_bytes_are_never_returned_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(4)).unwrap();
        put(&store, "c", 3, 0..3).unwrap();
    }
    // Flip a byte of piece 1's slot behind the store's back.
    let slab_path = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dat"))
        .unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    let slot = store.lookup("c", 1).unwrap().slot;
    let mut bytes = std::fs::read(&slab_path).unwrap();
    bytes[slot as usize * SMALL as usize + 10] ^= 0xff;
    std::fs::write(&slab_path, bytes).unwrap();
    assert!(store.get("c", 1).is_none(), "corrupt piece was served");
    assert!(!store.contains("c", 1), "corrupt piece stays indexed");
    assert_piece(&store, "c", 3, 0);
    assert_piece(&store, "c", 3, 2);
    drop(store);
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(store.piece_indexes("c"), vec![0, 2], "discard was not durable");
}

#[test]
fn torn_index_tail_is_cut_and_earlier_pieces_stay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(4)).unwrap();
        put(&store, "t", 4, 0..2).unwrap();
    }
    let log = dir.path().join(index_log::INDEX_LOG_NAME);
    let mut bytes = std::fs::read(&log).unwrap();
    let half_record = bytes[..RECORD_SIZE / 2].to_vec();
    bytes.extend_from_slice(&half_record);
    std::fs::write(&log, &bytes).unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(store.piece_indexes("t"), vec![0, 1]);
    assert_eq!(std::fs::metadata(&log).unwrap().len() as usize, 2 * RECORD_SIZE);
    put(&store, "t", 4, 2..3).unwrap();
    drop(store);
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(store.piece_indexes("t"), vec![0, 1, 2]);
}

#[test]
fn full_store_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    put(&store, "old", 1, 0..4).unwrap();
    // Touch 0 and 2 so 1 and 3 are the least recently used.
    drop(store.get("old", 0));
    drop(store.get("old", 2));
    let report = put(&store, "new", 2, 0..2).unwrap();
    assert_eq!(report.evicted, 2);
    assert_eq!(store.piece_indexes("old"), vec![0, 2]);
    assert_piece(&store, "old", 1, 0);
    assert_piece(&store, "new", 2, 1);
    assert!(store.stats().slab_bytes <= store.config().size_bytes_max);
    drop(store);
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(store.piece_indexes("old"), vec![0, 2], "evictions were not durable");
    assert_eq!(store.piece_indexes("new"), vec![0, 1]);
}

#[test]
fn pinned_piece_is_never_evicted_and_its_slot_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    put(&store, "p", 1, 0..4).unwrap();
    let pinned = store.get("p", 0).unwrap();
    let original = pinned.bytes().to_vec();
    // Many rounds of churn through the three other slots.
    for round in 0..10u8 {
        put(&store, &format!("churn{round}"), round + 10, 0..3).unwrap();
        assert_eq!(pinned.bytes(), &original[..], "pinned bytes changed in round {round}");
        assert_piece(&store, "p", 1, 0);
    }
    // Everything pinned: a fourth slot cannot be found.
    let others: Vec<PieceGuard> = (0..3).map(|i| store.get("churn9", i).unwrap()).collect();
    assert!(matches!(put(&store, "more", 7, 0..1), Err(StoreError::Full { .. })));
    drop(others);
    drop(pinned);
    put(&store, "more", 7, 0..4).unwrap();
    assert!(!store.contains("p", 0), "unpinned piece is evictable again");
}

#[test]
fn removed_content_drains_before_its_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    put(&store, "r", 1, 0..2).unwrap();
    let pinned = store.get("r", 0).unwrap();
    let original = pinned.bytes().to_vec();
    assert_eq!(store.remove_content("r").unwrap(), 2);
    assert!(store.get("r", 0).is_none());
    // Only one slot is free: the pinned one is still draining.
    assert!(matches!(put(&store, "x", 2, 0..2), Err(StoreError::Full { .. })));
    put(&store, "x", 2, 0..1).unwrap();
    assert_eq!(pinned.bytes(), &original[..]);
    drop(pinned);
    put(&store, "x", 2, 1..2).unwrap();
    assert_piece(&store, "x", 2, 1);
}

#[test]
fn stale_reference_cannot_pin_a_reused_slot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(1)).unwrap();
    put(&store, "a", 1, 0..1).unwrap();
    let stale = store.lookup("a", 0).unwrap();
    put(&store, "b", 2, 0..1).unwrap();
    assert!(store.pin("a", 0, &stale).is_none(), "stale reference read another piece's bytes");
    assert_eq!(stale.meta().pins.load(Ordering::SeqCst), 0);
}

#[test]
fn pieces_expire_after_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(1_000));
    let clock_now = now.clone();
    let clock: Clock = Arc::new(move || clock_now.load(Ordering::SeqCst));
    let limits = StoreConfig { age_s_max: 100, ..config(4) };
    let store = Store::open_with_clock(dir.path(), &limits, clock.clone()).unwrap();
    put(&store, "e", 1, 0..2).unwrap();
    now.store(1_099, Ordering::SeqCst);
    assert_piece(&store, "e", 1, 0);
    now.store(1_100, Ordering::SeqCst);
    assert!(store.get("e", 0).is_none());
    assert_eq!(store.sweep().unwrap(), 2);
    drop(store);
    let store = Store::open_with_clock(dir.path(), &limits, clock).unwrap();
    assert!(store.piece_indexes("e").is_empty());
}

#[test]
fn log_is_compacted_when_mostly_dead() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    for round in 0..1100u32 {
        put(&store, &format!("k{}", round % 7), (round % 200) as u8, 0..2).unwrap();
    }
    let log = dir.path().join(index_log::INDEX_LOG_NAME);
    let records = std::fs::metadata(&log).unwrap().len() as usize / RECORD_SIZE;
    assert!(records < 4100 + 8, "log kept {records} records for 2 live pieces");
    drop(store);
    let store = Store::open(dir.path(), &config(2)).unwrap();
    assert_eq!(store.stats().pieces, 2);
}

#[test]
fn scrub_counts_good_and_discards_bad() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(4)).unwrap();
        put(&store, "s", 1, 0..3).unwrap();
    }
    let store = Store::open(dir.path(), &config(4)).unwrap();
    let slot = store.lookup("s", 2).unwrap();
    slot.slab.write(slot.slot, b"garbage").unwrap();
    assert_eq!(store.scrub(), (2, 1));
    assert_eq!(store.piece_indexes("s"), vec![0, 1]);
}

#[test]
fn a_second_owner_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), &config(2)).unwrap();
    let error = Store::open(dir.path(), &config(2)).err().expect("second open refused");
    let message = error.to_string();
    assert!(matches!(error, StoreError::Locked { .. }), "{message}");
    assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
    drop(first);
    Store::open(dir.path(), &config(2)).expect("lock released on drop");
}
