//! SHA-256 of up to 16 messages at once with AVX-512: one message per 32-bit lane of a zmm
//! register, blocks loaded 16 at a time and transposed so that vector `i` holds word `i` of
//! every lane's block.
//!
//! Why: one SHA-NI stream is bound by `sha256rnds2`'s latency (about 1.2 GB/s per core); 16
//! independent lanes keep both AVX-512 ports busy instead (about twice that).
//!
//! Lanes of unequal length: each lane walks its message's whole blocks, then a padded tail of one
//! or two blocks of its own. The driver runs the vector rounds for as many blocks as every busy
//! lane still has, then gives a finished lane the next message. Idle lanes hash a copy of a busy
//! lane's blocks and their state is never read. When fewer than `lanes_min` lanes are left busy,
//! they finish one by one on the single-stream path, from the state they reached.
//!
//! The only `unsafe` of the hash module is here: the call into the AVX-512 rounds (after run-time
//! feature detection) and the unaligned loads inside them.

use std::arch::x86_64::{
    __m512i, _mm256_zeroupper, _mm512_add_epi32, _mm512_broadcast_i32x4, _mm512_loadu_si512, _mm512_ror_epi32,
    _mm512_set1_epi32, _mm512_shuffle_epi8, _mm512_shuffle_i32x4, _mm512_srli_epi32, _mm512_storeu_si512,
    _mm512_ternarylogic_epi32, _mm512_unpackhi_epi32, _mm512_unpackhi_epi64, _mm512_unpacklo_epi32,
    _mm512_unpacklo_epi64, _mm_set_epi8,
};

use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

use crate::content::Digest;
pub use crate::hash::BATCH_LANES as LANES;
const BLOCK_BYTES: usize = 64;
/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
/// The round constants (FIPS 180-4, 4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// The state of every lane, word-major: `words[i][lane]` is word `i` (a..h) of `lane`.
#[derive(Debug, Clone, Copy, Default)]
struct LaneStates {
    words: [[u32; LANES]; 8],
}

impl LaneStates {
    fn start(&mut self, lane: usize) {
        for (word, iv) in self.words.iter_mut().zip(IV) {
            word[lane] = iv;
        }
    }

    fn of(&self, lane: usize) -> [u32; 8] {
        std::array::from_fn(|i| self.words[i][lane])
    }
}

/// Whether this CPU has what the 16-lane rounds use.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512bw")
}

/// One message in a lane: the whole blocks it has left, then its padded tail.
#[derive(Debug, Clone, Copy)]
struct Lane<'a> {
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

/// SHA-256 of every message, in order: 16 lanes at a time while at least `lanes_min` (clamped to
/// 1..=16) are busy, the rest on the single-stream path. Panics unless [`available`].
pub fn hash_batch(messages: &[&[u8]], lanes_min: usize) -> Vec<Digest> {
    assert!(available(), "the 16-lane SHA-256 needs AVX-512F/VL/BW");
    let lanes_min = lanes_min.clamp(1, LANES);
    let mut digests = vec![[0u8; 32]; messages.len()];
    let mut lanes: [Option<Lane<'_>>; LANES] = [None; LANES];
    let mut states = LaneStates::default();
    let mut next = 0;
    loop {
        for (index, lane) in lanes.iter_mut().enumerate() {
            if lane.is_none() && next < messages.len() {
                *lane = Some(Lane::new(next, messages[next]));
                states.start(index);
                next += 1;
            }
        }
        let busy = lanes.iter().flatten().count();
        if busy == 0 {
            break;
        }
        if busy < lanes_min {
            // Every message has a lane by now (a lane is idle only when none is waiting).
            for (index, lane) in lanes.iter().enumerate() {
                if let Some(lane) = lane {
                    digests[lane.message] = lane.finish_single(states.of(index));
                }
            }
            break;
        }
        let blocks = run_lanes(&mut states, &lanes);
        for (index, slot) in lanes.iter_mut().enumerate() {
            if let Some(lane) = slot {
                lane.advance(blocks);
                if lane.finished() {
                    digests[lane.message] = digest_of(&states.of(index));
                    *slot = None;
                }
            }
        }
    }
    digests
}

/// Runs the vector rounds over as many blocks as every busy lane has in its current run; returns
/// that count. At least one lane is busy.
fn run_lanes(states: &mut LaneStates, lanes: &[Option<Lane<'_>>; LANES]) -> usize {
    let busy = lanes.iter().flatten().next().expect("a busy lane");
    let blocks = lanes.iter().flatten().map(|lane| lane.run().len() / BLOCK_BYTES).min().unwrap_or(0);
    assert!(blocks > 0, "a busy lane has a block left");
    let runs: [&[u8]; LANES] = std::array::from_fn(|i| lanes[i].as_ref().unwrap_or(busy).run());
    assert!(available());
    // SAFETY: `available()` just confirmed the CPU has AVX-512F, VL and BW, the features
    // `compress_x16` is compiled for.
    unsafe { compress_x16(&mut states.words, &runs, blocks) };
    blocks
}

/// Σ0, Σ1, σ0 and σ1 of FIPS 180-4, 4.1.2, on 16 lanes; XOR of three in one ternary-logic op.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn big_sigma0(x: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0x96>(_mm512_ror_epi32::<2>(x), _mm512_ror_epi32::<13>(x), _mm512_ror_epi32::<22>(x))
}

#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn big_sigma1(x: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0x96>(_mm512_ror_epi32::<6>(x), _mm512_ror_epi32::<11>(x), _mm512_ror_epi32::<25>(x))
}

#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn small_sigma0(x: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0x96>(_mm512_ror_epi32::<7>(x), _mm512_ror_epi32::<18>(x), _mm512_srli_epi32::<3>(x))
}

#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn small_sigma1(x: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0x96>(_mm512_ror_epi32::<17>(x), _mm512_ror_epi32::<19>(x), _mm512_srli_epi32::<10>(x))
}

/// One round; the caller rotates the names instead of moving eight registers.
/// Ch is ternary-logic 0xCA (e ? f : g), Maj is 0xE8.
macro_rules! round {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $w:expr, $k:expr) => {
        let kw = _mm512_add_epi32($w, _mm512_set1_epi32($k as i32));
        let ch = _mm512_ternarylogic_epi32::<0xCA>($e, $f, $g);
        let t1 = _mm512_add_epi32(_mm512_add_epi32($h, kw), _mm512_add_epi32(big_sigma1($e), ch));
        let maj = _mm512_ternarylogic_epi32::<0xE8>($a, $b, $c);
        $d = _mm512_add_epi32($d, t1);
        $h = _mm512_add_epi32(t1, _mm512_add_epi32(big_sigma0($a), maj));
    };
}

/// Sixteen rounds with message words `w` and constants `k`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn rounds16(state: &mut [__m512i; 8], w: &[__m512i; 16], k: &[u32; 16]) {
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for half in [0, 8] {
        round!(a, b, c, d, e, f, g, h, w[half], k[half]);
        round!(h, a, b, c, d, e, f, g, w[half + 1], k[half + 1]);
        round!(g, h, a, b, c, d, e, f, w[half + 2], k[half + 2]);
        round!(f, g, h, a, b, c, d, e, w[half + 3], k[half + 3]);
        round!(e, f, g, h, a, b, c, d, w[half + 4], k[half + 4]);
        round!(d, e, f, g, h, a, b, c, w[half + 5], k[half + 5]);
        round!(c, d, e, f, g, h, a, b, w[half + 6], k[half + 6]);
        round!(b, c, d, e, f, g, h, a, w[half + 7], k[half + 7]);
    }
    *state = [a, b, c, d, e, f, g, h];
}

/// W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16] for each index written out, so that the
/// words stay in registers (a loop kept them in memory).
macro_rules! schedule {
    ($w:ident; $($i:literal)*) => {
        $(
            let sum = _mm512_add_epi32(small_sigma1($w[($i + 14) % 16]), $w[($i + 9) % 16]);
            $w[$i] = _mm512_add_epi32(_mm512_add_epi32($w[$i], sum), small_sigma0($w[($i + 1) % 16]));
        )*
    };
}

/// The next sixteen message words, in place.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn schedule16(w: &mut [__m512i; 16]) {
    schedule!(w; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
}

/// Block `offset..offset + 64` of each lane as 16 vectors of big-endian words, word-major.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn load_transposed(lanes: &[&[u8]; LANES], offset: usize) -> [__m512i; 16] {
    let swap = _mm512_broadcast_i32x4(_mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3));
    let rows: [__m512i; 16] = std::array::from_fn(|lane| {
        let block = &lanes[lane][offset..offset + BLOCK_BYTES];
        // SAFETY: `block` is 64 readable bytes (the slice above is bounds-checked), the size of
        // one unaligned `__m512i` load.
        _mm512_shuffle_epi8(unsafe { _mm512_loadu_si512(block.as_ptr().cast()) }, swap)
    });
    // Pairs of lanes interleaved by word, then by pairs of words: `quads[4 * j + m]` holds, in
    // its 128-bit part `p`, word `4 * p + m` of lanes `4 * j .. 4 * j + 4`.
    let pairs: [__m512i; 16] = std::array::from_fn(|i| {
        let (x, y) = (rows[i & !1], rows[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(x, y)
        } else {
            _mm512_unpackhi_epi32(x, y)
        }
    });
    let quads: [__m512i; 16] = std::array::from_fn(|i| {
        let (j, m) = (i / 4, i % 4);
        let (x, y) = (pairs[4 * j + m / 2], pairs[4 * j + m / 2 + 2]);
        if m % 2 == 0 {
            _mm512_unpacklo_epi64(x, y)
        } else {
            _mm512_unpackhi_epi64(x, y)
        }
    });
    // A 4 × 4 transpose of 128-bit parts for each `m` puts word `4 * p + m` of all 16 lanes together.
    let mut words = [quads[0]; 16];
    for m in 0..4 {
        let low01 = _mm512_shuffle_i32x4::<0x44>(quads[m], quads[4 + m]);
        let high01 = _mm512_shuffle_i32x4::<0xEE>(quads[m], quads[4 + m]);
        let low23 = _mm512_shuffle_i32x4::<0x44>(quads[8 + m], quads[12 + m]);
        let high23 = _mm512_shuffle_i32x4::<0xEE>(quads[8 + m], quads[12 + m]);
        words[m] = _mm512_shuffle_i32x4::<0x88>(low01, low23);
        words[4 + m] = _mm512_shuffle_i32x4::<0xDD>(low01, low23);
        words[8 + m] = _mm512_shuffle_i32x4::<0x88>(high01, high23);
        words[12 + m] = _mm512_shuffle_i32x4::<0xDD>(high01, high23);
    }
    words
}

/// Runs `blocks` blocks of every lane through the lanes' states. Each of `lanes` holds at least
/// `blocks` blocks. Ends with `vzeroupper`: `sha256rnds2` (SHA-NI, legacy SSE encoding) that runs
/// next on this core is about 100 times slower while the upper vector state is dirty.
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
fn compress_x16(words: &mut [[u32; LANES]; 8], lanes: &[&[u8]; LANES], blocks: usize) {
    assert!(lanes.iter().all(|lane| lane.len() >= blocks * BLOCK_BYTES), "each lane holds the blocks asked for");
    let mut state: [__m512i; 8] = std::array::from_fn(|i| {
        // SAFETY: `words[i]` is 16 `u32`s, 64 readable bytes, one unaligned `__m512i` load.
        unsafe { _mm512_loadu_si512(words[i].as_ptr().cast()) }
    });
    let k: [&[u32; 16]; 4] = std::array::from_fn(|i| K[16 * i..16 * i + 16].try_into().expect("16 constants"));
    for block in 0..blocks {
        let before = state;
        let mut w = load_transposed(lanes, block * BLOCK_BYTES);
        rounds16(&mut state, &w, k[0]);
        for k in &k[1..] {
            schedule16(&mut w);
            rounds16(&mut state, &w, k);
        }
        for (word, earlier) in state.iter_mut().zip(before) {
            *word = _mm512_add_epi32(*word, earlier);
        }
    }
    for (word, vector) in words.iter_mut().zip(state) {
        // SAFETY: `word` is 16 `u32`s, 64 writable bytes, one unaligned `__m512i` store.
        unsafe { _mm512_storeu_si512(word.as_mut_ptr().cast(), vector) };
    }
    _mm256_zeroupper();
}
