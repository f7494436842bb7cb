//! SHA-256 of up to 16 messages at once with AVX-512: one message per 32-bit lane of a zmm
//! register, blocks loaded 16 at a time and transposed so that vector `i` holds word `i` of
//! every lane's block.
//!
//! Why: one SHA-NI stream is bound by `sha256rnds2`'s latency (about 1.2 GB/s per core); 16
//! independent lanes keep both AVX-512 ports busy instead (about twice that).
//!
//! Lanes of unequal length are walked by the shared driver (`lanes::drive`).
//!
//! The only `unsafe` of the hash module is here: the call into the AVX-512 rounds (after run-time
//! feature detection) and the unaligned loads inside them.

use std::arch::x86_64::{
    __m512i, _mm256_zeroupper, _mm512_add_epi32, _mm512_broadcast_i32x4, _mm512_loadu_si512, _mm512_ror_epi32,
    _mm512_set1_epi32, _mm512_shuffle_epi8, _mm512_shuffle_i32x4, _mm512_srli_epi32, _mm512_storeu_si512,
    _mm512_ternarylogic_epi32, _mm512_unpackhi_epi32, _mm512_unpackhi_epi64, _mm512_unpacklo_epi32,
    _mm512_unpacklo_epi64, _mm_set_epi8,
};

use crate::content::Digest;
use crate::hash::lanes::{drive, finish_single, jobs, BLOCK_BYTES, K};
pub use crate::hash::BATCH_LANES as LANES;

/// Whether this CPU has what the 16-lane rounds use.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512bw")
}

/// SHA-256 of every message, in order: 16 lanes at a time while at least `lanes_min` (clamped to
/// 1..=16) are busy, the rest on the single-stream path. Panics unless [`available`].
pub fn hash_batch(messages: &[&[u8]], lanes_min: usize) -> Vec<Digest> {
    assert!(available(), "the 16-lane SHA-256 needs AVX-512F/VL/BW");
    let mut digests = vec![[0u8; 32]; messages.len()];
    let rounds = &mut |states: &mut [[u32; 8]; LANES], runs: &[&[u8]; LANES], blocks| {
        // Word-major for the vector rounds: `words[i][lane]` is word `i` (a..h) of `lane`.
        let mut words: [[u32; LANES]; 8] = std::array::from_fn(|i| std::array::from_fn(|lane| states[lane][i]));
        // SAFETY: `available()` confirmed the CPU has AVX-512F, VL and BW, the features
        // `compress_x16` is compiled for.
        unsafe { compress_x16(&mut words, runs, blocks) };
        for (lane, state) in states.iter_mut().enumerate() {
            *state = std::array::from_fn(|i| words[i][lane]);
        }
    };
    let left = drive::<LANES>(jobs(messages), lanes_min, rounds, &mut digests);
    finish_single(left, &mut digests);
    digests
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
