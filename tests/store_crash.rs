//! Crash safety of the piece store: a child process ingesting pieces is killed with SIGKILL
//! again and again; afterwards no piece reads back with wrong bytes and no committed piece is lost.
//!
//! The child is this test binary re-run with `TESSERA_CRASH_CHILD_DIR` set: it ingests forever
//! and prints `committed NAME INDEX` only after `Store::ingest` returned for that piece. The
//! store keys pieces by SHA-256; the parent recomputes each piece's bytes from (name, index).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera::config::StoreConfig;
use tessera::content::PieceSize;
use tessera::hash::sha256;
use tessera::store::{NewPiece, Store};

const PIECE: usize = 64 * 1024;
const ROUNDS: u32 = 24;
const CHILD_ENV: &str = "TESSERA_CRASH_CHILD_DIR";

fn config() -> StoreConfig {
    StoreConfig { size_bytes_max: 4 << 30, slab_size_bytes: 4 << 20, ..StoreConfig::default() }
}

fn expected(id: &str, index: u64, length: usize) -> Vec<u8> {
    let seed =
        id.bytes().fold(index.wrapping_mul(0x100000001b3), |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    (0..length).map(|i| (seed >> (i % 8 * 8)) as u8 ^ (i as u8)).collect()
}

fn piece_length(index: u64) -> usize {
    // Every fifth piece short, as last pieces are.
    if index % 5 == 4 {
        1000 + index as usize
    } else {
        PIECE
    }
}

/// Child side: ingest batches until killed.
fn run_child(dir: &Path, round: u32) -> ! {
    let store = Store::open(dir, &config()).expect("child opens store");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for batch in 0u64.. {
        let id = format!("r{round}-b{batch}");
        let owned: Vec<(u64, Vec<u8>)> = (0..1 + batch % 4).map(|i| (i, expected(&id, i, piece_length(i)))).collect();
        let pieces: Vec<NewPiece<'_>> = owned.iter().map(|(_, b)| NewPiece { bytes: b, digest: sha256(b) }).collect();
        store.ingest(PieceSize::new(PIECE as u32).unwrap(), &pieces).expect("child ingest");
        for (index, _) in &owned {
            writeln!(out, "committed {id} {index}").unwrap();
        }
        out.flush().unwrap();
    }
    unreachable!()
}

#[test]
fn sigkill_mid_ingest_never_serves_corrupt_bytes_nor_loses_committed_pieces() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var("TESSERA_CRASH_ROUND").unwrap().parse().unwrap();
        run_child(Path::new(&dir), round);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut committed: HashSet<(String, u64)> = HashSet::new();
    let mut rng_state = 0x2545f4914f6cdd1du64;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_mid_ingest_never_serves_corrupt_bytes_nor_loses_committed_pieces",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("TESSERA_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            lines
        });
        // Let it run a pseudo-random 5..45 ms after it is ready, then kill it mid-flight.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(20 + rng_state % 40));
        assert!(started.elapsed() < Duration::from_secs(10));
        // SAFETY-free: kill(2) via the standard library sends SIGKILL.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        let lines = reader.join().unwrap();
        for line in lines {
            if let Some(rest) = line.strip_prefix("committed ") {
                let (id, index) = rest.rsplit_once(' ').unwrap();
                committed.insert((id.to_string(), index.parse().unwrap()));
            }
        }
        check(dir.path(), &committed, round);
    }
    assert!(committed.len() > ROUNDS as usize, "children committed too little to test anything: {}", committed.len());
}

fn check(dir: &Path, committed: &HashSet<(String, u64)>, round: u32) {
    let store = Store::open(dir, &config()).expect("store reopens after SIGKILL");
    for digest in store.digests() {
        if let Some(guard) = store.get(&digest) {
            assert_eq!(sha256(guard.bytes()), digest, "round {round}: a piece read back with wrong bytes");
        }
    }
    for (id, index) in committed {
        let bytes = expected(id, *index, piece_length(*index));
        let guard =
            store.get(&sha256(&bytes)).unwrap_or_else(|| panic!("round {round}: committed piece {id}/{index} lost"));
        assert_eq!(guard.bytes(), &bytes[..]);
    }
}
