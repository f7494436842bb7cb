//! Every SHA-256 path against two independent implementations, `ring` and `sha2`'s own
//! `Sha256`: block edges, batches of 1 to 33 mixed lengths, and seeded random batches. The
//! AVX-512 path is checked with several `lanes_min` so that lanes refill, finish early and hand
//! over to the single-stream path mid-message; the interleaved SHA-NI path hands over from four
//! streams to two to one. Paths this CPU lacks are skipped with a note.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::Digest as _;

use super::*;

const MIB: usize = 1 << 20;

fn message(rng: &mut StdRng, length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    rng.fill(bytes.as_mut_slice());
    bytes
}

fn reference(bytes: &[u8]) -> Digest {
    let by_ring: Digest = ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("32 bytes");
    let by_sha2: Digest = sha2::Sha256::digest(bytes).into();
    assert_eq!(by_ring, by_sha2, "ring and sha2 disagree on {} bytes", bytes.len());
    by_ring
}

/// Whether the 16-lane path runs here; says so once per test when it does not.
fn x16_runs() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if x16::available() {
            return true;
        }
    }
    eprintln!("note: this CPU lacks AVX-512F/VL/BW: the 16-lane SHA-256 path is not tested here");
    false
}

fn note_single_stream() {
    if Backend::detect() == Backend::Software {
        eprintln!("note: this CPU lacks SHA extensions: single-stream tests ran sha2's portable rounds");
    }
}

/// Every entry point gives the reference digests, in order.
fn check(messages: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let expected: Vec<Digest> = refs.iter().map(|bytes| reference(bytes)).collect();
    let lengths: Vec<usize> = refs.iter().map(|bytes| bytes.len()).collect();
    assert_eq!(hash_batch(&refs), expected, "hash_batch, lengths {lengths:?}");
    assert_eq!(hash_batch_parallel(&refs, 3), expected, "hash_batch_parallel, lengths {lengths:?}");
    for (bytes, digest) in refs.iter().zip(&expected) {
        assert_eq!(sha256(bytes), *digest, "sha256 of {} bytes", bytes.len());
    }
    #[cfg(target_arch = "x86_64")]
    {
        if x16::available() {
            for lanes_min in [1, X16_LANES_MIN, x16::LANES] {
                let got = x16::hash_batch(&refs, lanes_min);
                assert_eq!(got, expected, "x16 with lanes_min {lanes_min}, lengths {lengths:?}");
            }
        }
        if ni_multi::available() {
            for registers in ni_multi::Registers::runnable() {
                let got = ni_multi::hash_batch_on(&refs, registers);
                assert_eq!(got, expected, "interleaved SHA-NI on {registers:?}, lengths {lengths:?}");
            }
        }
    }
}

const EDGES: [usize; 12] = [0, 1, 55, 56, 63, 64, 65, 119, 120, MIB - 1, MIB, MIB + 1];

#[test]
fn lengths_at_block_and_padding_edges() {
    x16_runs();
    note_single_stream();
    let mut rng = StdRng::seed_from_u64(1);
    let messages: Vec<Vec<u8>> = EDGES.iter().map(|&length| message(&mut rng, length)).collect();
    for one in &messages {
        check(std::slice::from_ref(one));
    }
    // All at once: 12 lanes of which the short ones finish after a block or two.
    check(&messages);
    // More than 16: lanes are refilled while the 1 MiB ones run.
    let twice: Vec<Vec<u8>> = messages.iter().chain(&messages).cloned().collect();
    check(&twice);
}

#[test]
fn batches_of_1_to_33_mixed_lengths() {
    x16_runs();
    let mut rng = StdRng::seed_from_u64(2);
    for count in 1..=33 {
        let messages: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                // Mostly equal pieces with a short last one, as a file's pieces are; some odd ones.
                let length = match i % 5 {
                    _ if i + 1 == count => rng.gen_range(0..4096),
                    0 => rng.gen_range(0..200),
                    _ => 4096,
                };
                message(&mut rng, length)
            })
            .collect();
        check(&messages);
    }
}

#[test]
fn seeded_random_batches() {
    x16_runs();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..60 {
        let count = rng.gen_range(1..40);
        let length_max = [130, 1_000, 20_000][rng.gen_range(0..3)];
        let messages: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let length = rng.gen_range(0..length_max);
                message(&mut rng, length)
            })
            .collect();
        check(&messages);
    }
}

#[test]
fn batch_backend_is_named() {
    let batch = Backend::detect_batch();
    #[cfg(target_arch = "x86_64")]
    {
        let expected = match (x16::available(), ni_multi::available()) {
            (true, true) => vec!["avx512-x16", "sha-ni-x4"],
            (true, false) => vec!["avx512-x16"],
            (false, true) => vec!["sha-ni-x4"],
            (false, false) => vec![Backend::detect().name()],
        };
        assert!(expected.contains(&batch.name()), "{} is not one of {expected:?}", batch.name());
    }
    assert_eq!(batch, Backend::detect_batch(), "measured once, the same answer after");
}
