//! What every many-messages-at-once SHA-256 path shares: the constants, a message's walk through
//! its whole blocks and padded tail ([`Lane`]), and the driver that keeps `N` lanes busy and hands
//! the last few to the single-stream compression ([`drive`]).
//!
//! Lanes of unequal length: each lane walks its message's whole blocks, then a padded tail of one
//! or two blocks of its own. The driver runs a path's rounds for as many blocks as every busy lane
//! still has, then gives a finished lane the next message. Idle lanes hash a copy of a busy lane's
//! blocks and their state is never read. When fewer than `lanes_min` lanes are left busy, they
//! finish one by one on the single-stream path, from the state they reached.

use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

use crate::content::Digest;

pub(super) const BLOCK_BYTES: usize = 64;
/// SHA-256's initial state (FIPS 180-4, 5.3.3).
pub(super) const IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
/// The round constants (FIPS 180-4, 4.2.2).
pub(super) const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// One message in a lane: the whole blocks it has left, then its padded tail.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lane<'a> {
    /// Index of the message in the batch.
    message: usize,
    /// Whole blocks of the message not hashed yet.
    body: &'a [u8],
    /// The message's last partial block, `0x80`, zeros and the length in bits: one or two blocks.
    tail: [u8; 2 * BLOCK_BYTES],
    /// Tail bytes already hashed, and the tail's length.
    tail_done: usize,
    tail_len: usize,
}

impl<'a> Lane<'a> {
    fn new(message: usize, bytes: &'a [u8]) -> Lane<'a> {
        let whole = bytes.len() - bytes.len() % BLOCK_BYTES;
        let rest = &bytes[whole..];
        let mut tail = [0u8; 2 * BLOCK_BYTES];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        // The 64-bit length must fit after the 0x80 byte in the same block.
        let tail_len = if rest.len() + 9 <= BLOCK_BYTES { BLOCK_BYTES } else { 2 * BLOCK_BYTES };
        let bits = (bytes.len() as u64).wrapping_mul(8);
        tail[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
        Lane { message, body: &bytes[..whole], tail, tail_done: 0, tail_len }
    }

    /// The blocks this lane hashes next without a switch (body or tail), never empty while busy.
    fn run(&self) -> &[u8] {
        if self.body.is_empty() {
            &self.tail[self.tail_done..self.tail_len]
        } else {
            self.body
        }
    }

    fn advance(&mut self, blocks: usize) {
        let bytes = blocks * BLOCK_BYTES;
        if self.body.is_empty() {
            self.tail_done += bytes;
        } else {
            self.body = &self.body[bytes..];
        }
        debug_assert!(self.tail_done <= self.tail_len);
    }

    fn finished(&self) -> bool {
        self.body.is_empty() && self.tail_done == self.tail_len
    }

    /// Hashes what is left from `state` with the single-stream compression and gives the digest.
    fn finish_single(&self, mut state: [u32; 8]) -> Digest {
        compress_single(&mut state, self.body);
        compress_single(&mut state, &self.tail[self.tail_done..self.tail_len]);
        digest_of(&state)
    }
}

fn digest_of(state: &[u32; 8]) -> Digest {
    let mut digest = [0u8; 32];
    for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

/// `sha2`'s compression (SHA-NI when present) over whole blocks, copied a few at a time into the
/// block type it takes.
fn compress_single(state: &mut [u32; 8], bytes: &[u8]) {
    debug_assert_eq!(bytes.len() % BLOCK_BYTES, 0);
    let mut blocks = [GenericArray::<u8, U64>::default(); 16];
    for chunk in bytes.chunks(blocks.len() * BLOCK_BYTES) {
        let count = chunk.len() / BLOCK_BYTES;
        for (block, source) in blocks.iter_mut().zip(chunk.chunks_exact(BLOCK_BYTES)) {
            block.copy_from_slice(source);
        }
        sha2::compress256(state, &blocks[..count]);
    }
}

/// Compresses `blocks` whole blocks of each lane's run into that lane's state (lane-major).
pub(super) type Rounds<'r, const N: usize> = dyn FnMut(&mut [[u32; 8]; N], &[&[u8]; N], usize) + 'r;

/// A message on its way: where it is and the state it reached.
pub(super) type Job<'a> = (Lane<'a>, [u32; 8]);

/// Every message of a batch, not started yet.
pub(super) fn jobs<'a>(messages: &[&'a [u8]]) -> Vec<Job<'a>> {
    messages.iter().enumerate().map(|(index, bytes)| (Lane::new(index, bytes), IV)).collect()
}

/// Hashes `jobs` `N` lanes at a time through `rounds` while at least `lanes_min` (clamped to
/// 1..=N) lanes are busy, writing each finished message's digest to `digests[message]`. Returns
/// the jobs left when fewer lanes were busy, to finish on a narrower path.
pub(super) fn drive<'a, const N: usize>(
    jobs: Vec<Job<'a>>,
    lanes_min: usize,
    rounds: &mut Rounds<'_, N>,
    digests: &mut [Digest],
) -> Vec<Job<'a>> {
    let lanes_min = lanes_min.clamp(1, N);
    let mut waiting = jobs.into_iter();
    let mut lanes: [Option<Lane<'a>>; N] = [None; N];
    let mut states = [IV; N];
    loop {
        for (index, lane) in lanes.iter_mut().enumerate() {
            if lane.is_none() {
                if let Some((job, state)) = waiting.next() {
                    *lane = Some(job);
                    states[index] = state;
                }
            }
        }
        let busy = lanes.iter().flatten().count();
        if busy < lanes_min {
            // Every job has a lane by now (a lane is idle only when none is waiting).
            return lanes.iter().zip(states).filter_map(|(lane, state)| lane.map(|lane| (lane, state))).collect();
        }
        let blocks = run_lanes(&mut states, &lanes, rounds);
        for (index, slot) in lanes.iter_mut().enumerate() {
            if let Some(lane) = slot {
                lane.advance(blocks);
                if lane.finished() {
                    digests[lane.message] = digest_of(&states[index]);
                    *slot = None;
                }
            }
        }
    }
}

/// Finishes `jobs` one by one on the single-stream compression.
pub(super) fn finish_single(jobs: Vec<Job<'_>>, digests: &mut [Digest]) {
    for (lane, state) in jobs {
        digests[lane.message] = lane.finish_single(state);
    }
}

/// Runs `rounds` over as many blocks as every busy lane has in its current run; returns that
/// count. At least one lane is busy.
fn run_lanes<const N: usize>(
    states: &mut [[u32; 8]; N],
    lanes: &[Option<Lane<'_>>; N],
    rounds: &mut Rounds<'_, N>,
) -> usize {
    let busy = lanes.iter().flatten().next().expect("a busy lane");
    let blocks = lanes.iter().flatten().map(|lane| lane.run().len() / BLOCK_BYTES).min().unwrap_or(0);
    assert!(blocks > 0, "a busy lane has a block left");
    let runs: [&[u8]; N] = std::array::from_fn(|i| lanes[i].as_ref().unwrap_or(busy).run());
    rounds(states, &runs, blocks);
    blocks
}
