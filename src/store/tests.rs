use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::hash::sha256;

const SMALL: u32 = 64 * 1024;

fn small() -> PieceSize {
    PieceSize::new(SMALL).unwrap()
}

/// Reproducible bytes for (seed, piece), distinct for every pair: they start with both.
fn piece_bytes(seed: u8, index: u64, length: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> =
        (0..length).map(|i| (i as u64).wrapping_mul(31).wrapping_add(index * 7 + u64::from(seed)) as u8).collect();
    bytes[0] = seed;
    bytes[1..9].copy_from_slice(&index.to_le_bytes());
    bytes
}

fn digest(seed: u8, index: u64) -> Digest {
    sha256(&piece_bytes(seed, index, SMALL as usize))
}

fn digests(seed: u8, indexes: std::ops::Range<u64>) -> Vec<Digest> {
    indexes.map(|i| digest(seed, i)).collect()
}

/// A store of `slots` 64 KiB slots in one slab.
fn config(slots: u64) -> StoreConfig {
    StoreConfig {
        size_bytes_max: slots * u64::from(SMALL),
        slab_size_bytes: slots * u64::from(SMALL),
        ..StoreConfig::default()
    }
}

/// Ingests pieces (seed, index) as one batch.
fn put_pieces(store: &Store, pieces: &[(u8, u64)]) -> Result<IngestReport, StoreError> {
    let owned: Vec<Vec<u8>> = pieces.iter().map(|&(seed, i)| piece_bytes(seed, i, SMALL as usize)).collect();
    let new: Vec<NewPiece<'_>> = owned.iter().map(|b| NewPiece { bytes: b, digest: sha256(b) }).collect();
    store.ingest(small(), &new)
}

fn put(store: &Store, seed: u8, indexes: std::ops::Range<u64>) -> Result<IngestReport, StoreError> {
    put_pieces(store, &indexes.map(|i| (seed, i)).collect::<Vec<_>>())
}

fn assert_piece(store: &Store, seed: u8, index: u64) {
    let guard = store.get(&digest(seed, index)).unwrap_or_else(|| panic!("piece {seed}/{index} missing"));
    assert_eq!(guard.bytes(), piece_bytes(seed, index, SMALL as usize), "piece {seed}/{index}");
}

fn held(store: &Store, seed: u8, indexes: std::ops::Range<u64>) -> Vec<u64> {
    store.indexes_held(&digests(seed, indexes))
}

#[test]
fn ingested_pieces_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(8)).unwrap();
        let report = put(&store, 1, 0..5).unwrap();
        assert_eq!(report.stored, 5);
        assert_eq!(put(&store, 1, 3..6).unwrap(), IngestReport { stored: 1, already_present: 2, evicted: 0 });
        for i in 0..6 {
            assert_piece(&store, 1, i);
        }
    }
    let store = Store::open(dir.path(), &config(8)).unwrap();
    assert_eq!(held(&store, 1, 0..8), (0..6).collect::<Vec<_>>());
    for i in 0..6 {
        assert_piece(&store, 1, i);
    }
    assert_eq!(store.stats().pieces, 6);
}

#[test]
fn a_piece_two_contents_share_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(8)).unwrap();
    put(&store, 1, 0..3).unwrap();
    // A second content (or version): piece 1 of the first, a new piece, and that new piece again.
    let report = put_pieces(&store, &[(1, 1), (2, 0), (2, 0)]).unwrap();
    assert_eq!(report, IngestReport { stored: 1, already_present: 2, evicted: 0 });
    assert_eq!(store.stats().pieces, 4);
    assert_eq!(store.stats().piece_bytes, 4 * u64::from(SMALL));
    assert_piece(&store, 1, 1);
    assert_piece(&store, 2, 0);
    let second = [digest(1, 1), digest(2, 0), digest(2, 1)];
    assert_eq!(store.indexes_held(&second), vec![0, 1]);
}

#[test]
fn short_last_piece_keeps_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    let bytes = vec![5u8; 100];
    store.ingest(small(), &[NewPiece { bytes: &bytes, digest: sha256(&bytes) }]).unwrap();
    assert_eq!(store.get(&sha256(&bytes)).unwrap().bytes(), &bytes[..]);
}

#[test]
fn oversized_piece_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    let bytes = vec![0u8; SMALL as usize + 1];
    let error = store.ingest(small(), &[NewPiece { bytes: &bytes, digest: [0xab; 32] }]).unwrap_err();
    assert!(matches!(error, StoreError::PieceTooLarge { .. }), "{error}");
    assert!(error.to_string().contains("abababab"), "{error}");
}

fn slab_path(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dat"))
        .unwrap()
}

#[test]
fn corrupted_bytes_are_never_returned_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(4)).unwrap();
        put(&store, 3, 0..3).unwrap();
    }
    // Flip a byte of piece 1's slot behind the store's back.
    let slab_path = slab_path(dir.path());
    let store = Store::open(dir.path(), &config(4)).unwrap();
    let slot = store.lookup(&digest(3, 1)).unwrap().slot;
    let mut bytes = std::fs::read(&slab_path).unwrap();
    bytes[slot as usize * SMALL as usize + 10] ^= 0xff;
    std::fs::write(&slab_path, bytes).unwrap();
    assert!(store.get(&digest(3, 1)).is_none(), "corrupt piece was served");
    assert!(!store.contains(&digest(3, 1)), "corrupt piece stays indexed");
    assert_piece(&store, 3, 0);
    assert_piece(&store, 3, 2);
    drop(store);
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(held(&store, 3, 0..3), vec![0, 2], "discard was not durable");
}

#[test]
fn torn_index_tail_is_cut_and_earlier_pieces_stay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(4)).unwrap();
        put(&store, 4, 0..2).unwrap();
    }
    let log = dir.path().join(INDEX_LOG_NAME);
    let mut bytes = std::fs::read(&log).unwrap();
    let half_record = bytes[RECORD_SIZE..RECORD_SIZE + RECORD_SIZE / 2].to_vec();
    bytes.extend_from_slice(&half_record);
    std::fs::write(&log, &bytes).unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(held(&store, 4, 0..3), vec![0, 1]);
    assert_eq!(std::fs::metadata(&log).unwrap().len() as usize, 3 * RECORD_SIZE, "header and two records");
    put(&store, 4, 2..3).unwrap();
    drop(store);
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(held(&store, 4, 0..3), vec![0, 1, 2]);
}

#[test]
fn full_store_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    put(&store, 1, 0..4).unwrap();
    // Touch 0 and 2 so 1 and 3 are the least recently used.
    drop(store.get(&digest(1, 0)));
    drop(store.get(&digest(1, 2)));
    assert_eq!(store.stats().evictions_total, 0);
    let report = put(&store, 2, 0..2).unwrap();
    assert_eq!(report.evicted, 2);
    assert_eq!(store.stats().evictions_total, 2, "evictions are counted for /metrics");
    assert_eq!(held(&store, 1, 0..4), vec![0, 2]);
    assert_piece(&store, 1, 0);
    assert_piece(&store, 2, 1);
    assert!(store.stats().slab_bytes <= store.config().size_bytes_max);
    drop(store);
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(held(&store, 1, 0..4), vec![0, 2], "evictions were not durable");
    assert_eq!(held(&store, 2, 0..2), vec![0, 1]);
}

#[test]
fn an_old_versions_pieces_are_evicted_and_the_ones_the_new_version_shares_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    put(&store, 1, 0..3).unwrap();
    put(&store, 9, 0..1).unwrap();
    // Version 2 keeps piece 0 of version 1 and brings two new pieces into a full store: the
    // least recently used make room, and the shared piece counts as just used.
    let report = put_pieces(&store, &[(1, 0), (2, 1), (2, 2)]).unwrap();
    assert_eq!(report, IngestReport { stored: 2, already_present: 1, evicted: 2 });
    assert_eq!(held(&store, 1, 0..3), vec![0], "version 1's own pieces made room, the shared one stayed");
    assert!(store.contains(&digest(9, 0)), "a more recently used piece was evicted");
    assert_piece(&store, 2, 1);
    assert_piece(&store, 2, 2);
}

#[test]
fn pinned_piece_is_never_evicted_and_its_slot_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    put(&store, 1, 0..4).unwrap();
    let pinned = store.get(&digest(1, 0)).unwrap();
    let original = pinned.bytes().to_vec();
    // Many rounds of churn through the three other slots.
    for round in 0..10u8 {
        put(&store, round + 10, 0..3).unwrap();
        assert_eq!(pinned.bytes(), &original[..], "pinned bytes changed in round {round}");
        assert_piece(&store, 1, 0);
    }
    // Everything pinned: a fourth slot cannot be found.
    let others: Vec<PieceGuard> = (0..3).map(|i| store.get(&digest(19, i)).unwrap()).collect();
    assert!(matches!(put(&store, 7, 0..1), Err(StoreError::Full { .. })));
    drop(others);
    drop(pinned);
    put(&store, 7, 0..4).unwrap();
    assert!(!store.contains(&digest(1, 0)), "unpinned piece is evictable again");
}

#[test]
fn removed_pieces_drain_before_their_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    put(&store, 1, 0..2).unwrap();
    let pinned = store.get(&digest(1, 0)).unwrap();
    let original = pinned.bytes().to_vec();
    assert_eq!(store.remove(&digests(1, 0..2)).unwrap(), 2);
    assert!(store.get(&digest(1, 0)).is_none());
    // Only one slot is free: the pinned one is still draining.
    assert!(matches!(put(&store, 2, 0..2), Err(StoreError::Full { .. })));
    put(&store, 2, 0..1).unwrap();
    assert_eq!(pinned.bytes(), &original[..]);
    drop(pinned);
    put(&store, 2, 1..2).unwrap();
    assert_piece(&store, 2, 1);
}

#[test]
fn stale_reference_cannot_pin_a_reused_slot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(1)).unwrap();
    put(&store, 1, 0..1).unwrap();
    let stale = store.lookup(&digest(1, 0)).unwrap();
    put(&store, 2, 0..1).unwrap();
    assert!(store.pin(&stale).is_none(), "stale reference read another piece's bytes");
    assert_eq!(stale.meta().pins.load(Ordering::SeqCst), 0);
}

fn test_clock(start: u64) -> (Arc<AtomicU64>, Clock) {
    let now = Arc::new(AtomicU64::new(start));
    let clock_now = now.clone();
    (now, Arc::new(move || clock_now.load(Ordering::SeqCst)))
}

#[test]
fn pieces_expire_after_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let (now, clock) = test_clock(1_000);
    let limits = StoreConfig { age_s_max: 100, ..config(4) };
    let store = Store::open_with_clock(dir.path(), &limits, clock.clone()).unwrap();
    put(&store, 1, 0..2).unwrap();
    now.store(1_099, Ordering::SeqCst);
    assert_piece(&store, 1, 0);
    now.store(1_100, Ordering::SeqCst);
    assert!(store.get(&digest(1, 0)).is_none());
    assert_eq!(store.sweep().unwrap(), 2);
    drop(store);
    let store = Store::open_with_clock(dir.path(), &limits, clock).unwrap();
    assert!(held(&store, 1, 0..2).is_empty());
}

#[test]
fn ingesting_a_held_piece_again_renews_its_age_durably() {
    let dir = tempfile::tempdir().unwrap();
    let (now, clock) = test_clock(1_000);
    let limits = StoreConfig { age_s_max: 100, ..config(4) };
    let store = Store::open_with_clock(dir.path(), &limits, clock.clone()).unwrap();
    put(&store, 1, 0..2).unwrap();
    now.store(1_090, Ordering::SeqCst);
    assert_eq!(put(&store, 1, 1..2).unwrap().already_present, 1);
    now.store(1_150, Ordering::SeqCst);
    assert!(store.get(&digest(1, 0)).is_none(), "piece 0 was not renewed and is 150 s old");
    assert_piece(&store, 1, 1);
    drop(store);
    let store = Store::open_with_clock(dir.path(), &limits, clock).unwrap();
    assert_eq!(held(&store, 1, 0..2), vec![1], "the renewal was not durable");
    // An expired copy is replaced, never indexed twice.
    now.store(1_300, Ordering::SeqCst);
    assert_eq!(put(&store, 1, 0..2).unwrap().stored, 2);
    assert_eq!(store.stats().pieces, 2);
}

#[test]
fn log_is_compacted_when_mostly_dead() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(2)).unwrap();
    for round in 0..1100u32 {
        put(&store, (round % 200) as u8, 0..2).unwrap();
    }
    let log = dir.path().join(INDEX_LOG_NAME);
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
        put(&store, 1, 0..3).unwrap();
    }
    let store = Store::open(dir.path(), &config(4)).unwrap();
    let slot = store.lookup(&digest(1, 2)).unwrap();
    slot.slab.write(slot.slot, b"garbage").unwrap();
    assert_eq!(store.scrub(), (2, 1));
    assert_eq!(held(&store, 1, 0..3), vec![0, 1]);
}

#[test]
fn a_check_goes_through_the_pieces_asked_first_then_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config(64)).unwrap();
        put(&store, 1, 0..40).unwrap();
    }
    let store = Store::open(dir.path(), &config(64)).unwrap();
    let verified = |index| store.lookup(&digest(1, index)).unwrap().meta().verified.load(Ordering::Acquire);
    // Last pieces first, and a digest the store does not hold, which is skipped.
    let first: Vec<Digest> = std::iter::once(digest(9, 0)).chain((30..40).rev().map(|i| digest(1, i))).collect();
    let batches = std::cell::Cell::new(0);
    let one_batch = || {
        batches.set(batches.get() + 1);
        batches.get() == 1
    };
    assert_eq!(store.scrub_while(&first, &one_batch), (SCRUB_BATCH_PIECES.min(40) as u64, 0));
    let checked: Vec<u64> = (0..40).filter(|&i| verified(i)).collect();
    assert!((30..40).all(|i| checked.contains(&i)), "the pieces named first are checked first: {checked:?}");
    assert_eq!(checked.len(), SCRUB_BATCH_PIECES.min(40), "one batch: {checked:?}");
    assert_eq!(store.scrub_while(&first, &|| true), (40, 0), "then the rest (the checked ones count again)");
    assert!((0..40).all(verified));
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

#[test]
fn a_format_1_store_is_migrated_and_its_pieces_found_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<Record> = {
        let store = Store::open(dir.path(), &config(4)).unwrap();
        put(&store, 5, 0..3).unwrap();
        let guard = store.read_index();
        (0..3).map(|i| entry_record(RecordKind::Commit, 16, &digest(5, i), &guard.pieces[&digest(5, i)])).collect()
    };
    // The log format 1 wrote for content "old": three commits, then piece 2 evicted.
    let mut v1 = Vec::new();
    for (index, record) in pieces.iter().enumerate() {
        v1.extend_from_slice(&record.encode_v1("old", index as u64));
    }
    v1.extend_from_slice(&Record { kind: RecordKind::Evict, ..pieces[2].clone() }.encode_v1("old", 2));
    let log = dir.path().join(INDEX_LOG_NAME);
    std::fs::write(&log, &v1).unwrap();
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(held(&store, 5, 0..3), vec![0, 1]);
    assert_piece(&store, 5, 0);
    assert_piece(&store, 5, 1);
    assert_eq!(record::decode_header(&std::fs::read(&log).unwrap()), Some(STORE_FORMAT), "log not rewritten");
    assert_eq!(put(&store, 5, 0..3).unwrap(), IngestReport { stored: 1, already_present: 2, evicted: 0 });
    drop(store);
    let store = Store::open(dir.path(), &config(4)).unwrap();
    assert_eq!(held(&store, 5, 0..3), vec![0, 1, 2]);
}

#[test]
fn a_newer_or_foreign_store_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join(INDEX_LOG_NAME);
    std::fs::write(&log, record::encode_header(STORE_FORMAT + 1)).unwrap();
    let error = Store::open(dir.path(), &config(2)).err().expect("newer format refused");
    let message = error.to_string();
    assert!(matches!(error, StoreError::NewerFormat { format: 3, .. }), "{message}");
    assert!(message.contains(&dir.path().display().to_string()) && message.contains("move"), "{message}");
    let foreign = b"not a store log at all, but long enough to hold a header and then some more bytes".to_vec();
    std::fs::write(&log, &foreign).unwrap();
    let error = Store::open(dir.path(), &config(2)).err().expect("foreign log refused");
    assert!(matches!(error, StoreError::UnknownFormat { .. }), "{error}");
    assert_eq!(std::fs::read(&log).unwrap(), foreign, "a refused log is left as it was");
}

/// A loopback pair; the piece `digest` is handed to the sending side by `sendfile` and left
/// unread. Returns the receiving side (the sender stays open with it) and the piece's offset in
/// its slab file.
fn sent_unread(store: &Store, digest: &Digest) -> ((std::net::TcpStream, std::net::TcpStream), u64) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (receiver, _) = listener.accept().unwrap();
    let guard = store.get(digest).unwrap();
    let (file, offset) = guard.file_range().expect("the test directory's file system punches holes");
    let length = guard.length() as usize;
    let mut sent = 0;
    while sent < length {
        sent += crate::io::sys::send_file(&sender, file, offset + sent as u64, length - sent).unwrap();
    }
    ((receiver, sender), offset)
}

/// Reads one small piece from `receiver`.
fn read_piece(receiver: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut received = vec![0; SMALL as usize];
    receiver.read_exact(&mut received).unwrap();
    received
}

/// A socket given a piece's pages by `sendfile` keeps that piece's bytes, even when the slot is
/// rewritten with another piece before the peer reads: the old pages are punched out, not
/// overwritten in place.
#[test]
fn a_slot_rewritten_after_sendfile_leaves_the_bytes_already_sent_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config(1)).unwrap();
    put(&store, 1, 0..1).unwrap();
    let ((mut receiver, _sender), offset) = sent_unread(&store, &digest(1, 0));
    // Nothing read yet: the socket still references the pages. The one slot takes a new piece.
    assert_eq!(store.remove(&[digest(1, 0)]).unwrap(), 1);
    put(&store, 2, 0..1).unwrap();
    let guard = store.get(&digest(2, 0)).unwrap();
    assert_eq!(guard.file_range().unwrap().1, offset, "the new piece is in the same slot");
    assert_eq!(guard.bytes(), piece_bytes(2, 0, SMALL as usize));
    let received = read_piece(&mut receiver);
    assert!(received == piece_bytes(1, 0, SMALL as usize), "the peer got the bytes sent, not the slot's new ones");
}

/// The sockets of a process may outlive it, still holding pages it handed them: after a reopen,
/// every slot that was already in the file counts as lent, so rewriting it leaves their bytes
/// alone too.
#[test]
fn after_a_reopen_a_rewritten_slot_leaves_bytes_sent_before_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ((mut receiver, _sender), _) = {
        let store = Store::open(dir.path(), &config(1)).unwrap();
        put(&store, 1, 0..1).unwrap();
        sent_unread(&store, &digest(1, 0))
    };
    let store = Store::open(dir.path(), &config(1)).unwrap();
    assert_eq!(store.remove(&[digest(1, 0)]).unwrap(), 1);
    put(&store, 2, 0..1).unwrap();
    assert_piece(&store, 2, 0);
    let received = read_piece(&mut receiver);
    assert!(received == piece_bytes(1, 0, SMALL as usize), "the peer got the bytes sent, not the slot's new ones");
}
