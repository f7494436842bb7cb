//! Resident memory must not grow with store size: stream a store several times larger than the
//! trim budget through the mapping and report RSS (file-backed) with and without trimming.
//! One test per file: RSS is per process.

use tessera::config::StoreConfig;
use tessera::content::{Digest, PieceSize};
use tessera::hash::sha256;
use tessera::store::{NewPiece, Store};

const PIECE: usize = 1 << 20;
const STORE_PIECES: u64 = 256;
const TRIM_BYTES: u64 = 32 << 20;

fn rss_file_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssFile:")).expect("RssFile in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn stream(store: &Store, digests: &[Digest], passes: u32) -> u64 {
    let mut peak = 0;
    let mut checksum = 0u64;
    for _ in 0..passes {
        for index in 0..STORE_PIECES {
            let guard = store.get(&digests[index as usize]).expect("piece present");
            // Touch every page, as a send from the mapping would.
            checksum = guard.bytes().iter().step_by(4096).fold(checksum, |a, &b| a.wrapping_add(u64::from(b)));
            drop(guard);
            peak = peak.max(rss_file_bytes());
        }
    }
    assert_ne!(checksum, 0);
    peak
}

#[test]
fn resident_memory_stays_flat_while_streaming_a_large_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { resident_trim_bytes: TRIM_BYTES, ..StoreConfig::default() };
    let store = Store::open(dir.path(), &config).unwrap();
    let mut piece = vec![0u8; PIECE];
    let mut digests: Vec<Digest> = Vec::new();
    for index in 0..STORE_PIECES {
        piece.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u64 ^ index) as u8 | 1);
        let digest = sha256(&piece);
        store.ingest(PieceSize::DEFAULT, &[NewPiece { bytes: &piece, digest }]).unwrap();
        digests.push(digest);
    }
    let store_bytes = STORE_PIECES * PIECE as u64;
    let before = rss_file_bytes();
    let trimmed_peak = stream(&store, &digests, 3);
    drop(store);

    // The same streaming with trimming off, to show what the trim saves.
    let untrimmed = StoreConfig { resident_trim_bytes: u64::MAX, ..config };
    let store = Store::open(dir.path(), &untrimmed).unwrap();
    let untrimmed_peak = stream(&store, &digests, 1);
    eprintln!(
        "store {} MiB streamed 3x: RssFile before {} MiB, peak with trim at {} MiB: {} MiB; peak without trim: {} MiB",
        store_bytes >> 20,
        before >> 20,
        TRIM_BYTES >> 20,
        trimmed_peak >> 20,
        untrimmed_peak >> 20
    );
    assert!(
        trimmed_peak <= before + 2 * TRIM_BYTES + (8 << 20),
        "resident file memory grew to {} MiB streaming a {} MiB store",
        trimmed_peak >> 20,
        store_bytes >> 20
    );
}
