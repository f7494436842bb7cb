//! The resident-memory trim keeps a hot working set mapped: reading the same pieces window after
//! window must not fault them in again each time (which dropping every mapping would do).
//! Faults are counted for this thread only (/proc/thread-self/stat).

use tessera::config::StoreConfig;
use tessera::content::{Digest, PieceSize};
use tessera::hash::sha256;
use tessera::store::{NewPiece, Store};

const PIECE: usize = 1 << 20;

/// Minor page faults of the calling thread so far (`minflt`, field 10 of /proc/thread-self/stat).
fn thread_minor_faults() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The command name (field 2) may hold spaces; fields after it start past the last ')'.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split_whitespace().nth(7).unwrap().parse().unwrap()
}

fn read_all(store: &Store, digests: &[Digest], indexes: std::ops::Range<u64>) -> u64 {
    let mut sum = 0u64;
    for index in indexes {
        let guard = store.get(&digests[index as usize]).expect("piece present");
        sum = guard.bytes().iter().step_by(4096).fold(sum, |a, &b| a.wrapping_add(u64::from(b)));
    }
    // Keep the loads: without a use of the sum the compiler may drop the reads entirely.
    std::hint::black_box(sum)
}

#[test]
fn a_hot_set_within_the_budget_is_not_refaulted_every_window() {
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB slabs, 32 MiB budget: the 16 MiB hot set (2 slabs) fits; 32 MiB of cold pieces do not.
    let config = StoreConfig { slab_size_bytes: 8 << 20, resident_trim_bytes: 32 << 20, ..StoreConfig::default() };
    let store = Store::open(dir.path(), &config).unwrap();
    let mut piece = vec![0u8; PIECE];
    let mut digests: Vec<Digest> = Vec::new();
    for index in 0..48u64 {
        piece.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u64 ^ index) as u8 | 1);
        let digest = sha256(&piece);
        store.ingest(PieceSize::DEFAULT, &[NewPiece { bytes: &piece, digest }]).unwrap();
        digests.push(digest);
    }
    // Warm up: touch the cold pieces once (they get trimmed), then the hot set.
    let warm = thread_minor_faults();
    read_all(&store, &digests, 16..48);
    read_all(&store, &digests, 0..16);
    let warm_up_faults = thread_minor_faults() - warm;
    assert!(warm_up_faults > 0, "the fault counter does not see first reads");
    // One fault maps a whole page-cache folio (often many pages), so judge against this machine:
    // faulting the 16 MiB hot set in once costs about a third of the 48 MiB warm-up.
    let one_hot_refault = warm_up_faults / 3;
    let before = thread_minor_faults();
    let windows = 8;
    for _ in 0..windows * 2 {
        // 16 MiB per pass: a trim every two passes.
        read_all(&store, &digests, 0..16);
    }
    let faults = thread_minor_faults() - before;
    // Dropping every mapping at each of the 8 trims would refault the hot set 8 times.
    eprintln!("minor faults: warm-up {warm_up_faults}; over {windows} trim windows of the 16 MiB hot set: {faults}");
    assert!(
        faults < one_hot_refault,
        "hot set refaulted: {faults} faults over {windows} windows (one refault ≈ {one_hot_refault})"
    );
}
