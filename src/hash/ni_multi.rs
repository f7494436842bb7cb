//! SHA-256 of several messages at once on the SHA extensions (SHA-NI): `N` independent streams
//! whose rounds are interleaved instruction by instruction.
//!
//! Why: one SHA-NI stream waits on `sha256rnds2`'s latency — each pair of rounds needs the
//! previous pair's result — so the unit sits idle most cycles. Two streams fill those cycles: on
//! an AMD Zen 4, two interleaved streams hash at about twice the single-stream rate, past the
//! 16-lane AVX-512 path, and they pay from a batch of two pieces where AVX-512 needs nine.
//!
//! The rounds follow the instruction sequence of Intel's SHA extensions paper: the state in two
//! registers (ABEF, CDGH), four message words per register, `sha256msg1`/`sha256msg2` for the
//! schedule. Lanes of unequal length are walked by the shared driver (`lanes::drive`).
//!
//! `unsafe` here: the call into the rounds after run-time feature detection, and unaligned loads
//! and stores of 16 bytes inside them.

use std::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_loadu_si128, _mm_set_epi64x, _mm_sha256msg1_epu32,
    _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32, _mm_shuffle_epi8, _mm_storeu_si128,
};

use crate::content::Digest;
use crate::hash::lanes::{drive, finish_single, jobs, BLOCK_BYTES, K};

/// Streams interleaved at most: four keep the SHA unit busy on an AMD Zen 4 (two reach 1.6
/// times one stream, four 2.0 times; six and eight no more), though their state and message words
/// no longer fit the 16 registers the SHA instructions can address.
pub const LANES: usize = 4;

/// Whether this CPU has the SHA extensions and the SSE levels the rounds use.
pub fn available() -> bool {
    std::is_x86_feature_detected!("sha")
        && std::is_x86_feature_detected!("sse2")
        && std::is_x86_feature_detected!("ssse3")
        && std::is_x86_feature_detected!("sse4.1")
}

/// SHA-256 of every message, in order: four streams at a time while four are busy, then two,
/// then one. Panics unless [`available`].
pub fn hash_batch(messages: &[&[u8]]) -> Vec<Digest> {
    assert!(available(), "the interleaved SHA-256 needs the SHA extensions and SSE4.1");
    let mut digests = vec![[0u8; 32]; messages.len()];
    let left = drive::<LANES>(jobs(messages), LANES, &mut rounds::<LANES>, &mut digests);
    let left = drive::<2>(left, 2, &mut rounds::<2>, &mut digests);
    finish_single(left, &mut digests);
    digests
}

/// The rounds of `N` interleaved streams.
fn rounds<const N: usize>(states: &mut [[u32; 8]; N], runs: &[&[u8]; N], blocks: usize) {
    assert!(available());
    // SAFETY: `available()` confirmed the CPU has SHA, SSE2, SSSE3 and SSE4.1, the features
    // `compress_interleaved` is compiled for.
    unsafe { compress_interleaved(states, runs, blocks) }
}

/// Four rounds of every stream with message words `w` (`w[s]` of stream `s`) and constants
/// `K[4 * group..]`.
macro_rules! rounds4 {
    ($abef:ident, $cdgh:ident, $w:expr, $group:expr) => {
        let k = constants($group);
        for s in 0..N {
            let wk = _mm_add_epi32($w[s], k);
            $cdgh[s] = _mm_sha256rnds2_epu32($cdgh[s], $abef[s], wk);
            $abef[s] = _mm_sha256rnds2_epu32($abef[s], $cdgh[s], _mm_shuffle_epi32::<0x0E>(wk));
        }
    };
}

/// The next four message words of every stream from the last sixteen (`w[i % 4]` is replaced),
/// then four rounds with them.
macro_rules! schedule_rounds4 {
    ($abef:ident, $cdgh:ident, $w:ident; $($group:literal)*) => {
        $(schedule_rounds4!($abef, $cdgh, $w, $group);)*
    };
    ($abef:ident, $cdgh:ident, $w:ident, $group:literal) => {
        let [w0, w1, w2, w3] = [$group % 4, ($group + 1) % 4, ($group + 2) % 4, ($group + 3) % 4];
        for s in 0..N {
            let w = &mut $w[s];
            let sum = _mm_add_epi32(_mm_sha256msg1_epu32(w[w0], w[w1]), _mm_alignr_epi8::<4>(w[w3], w[w2]));
            w[w0] = _mm_sha256msg2_epu32(sum, w[w3]);
        }
        let next: [__m128i; N] = std::array::from_fn(|s| $w[s][w0]);
        rounds4!($abef, $cdgh, next, $group);
    };
}

/// Round constants `K[4 * group..4 * group + 4]`, the first in the lowest lane.
#[inline]
#[target_feature(enable = "sse2")]
fn constants(group: usize) -> __m128i {
    let four = &K[4 * group..4 * group + 4];
    // SAFETY: `four` is four `u32`s (bounds-checked above), 16 readable bytes.
    unsafe { _mm_loadu_si128(four.as_ptr().cast()) }
}

/// Runs `blocks` blocks of each stream's run through its state. Each run holds at least `blocks`
/// blocks.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress_interleaved<const N: usize>(states: &mut [[u32; 8]; N], runs: &[&[u8]; N], blocks: usize) {
    assert!(runs.iter().all(|run| run.len() >= blocks * BLOCK_BYTES), "each run holds the blocks asked for");
    let big_endian = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
    let mut abef = [big_endian; N];
    let mut cdgh = [big_endian; N];
    for s in 0..N {
        // SAFETY: `states[s]` is eight `u32`s: two 16-byte unaligned loads.
        let (dcba, hgfe) =
            unsafe { (_mm_loadu_si128(states[s].as_ptr().cast()), _mm_loadu_si128(states[s][4..].as_ptr().cast())) };
        let cdab = _mm_shuffle_epi32::<0xB1>(dcba);
        let efgh = _mm_shuffle_epi32::<0x1B>(hgfe);
        abef[s] = _mm_alignr_epi8::<8>(cdab, efgh);
        cdgh[s] = _mm_blend_epi16::<0xF0>(efgh, cdab);
    }
    for block in 0..blocks {
        let (abef_before, cdgh_before) = (abef, cdgh);
        let mut w: [[__m128i; 4]; N] = std::array::from_fn(|s| {
            let bytes = &runs[s][block * BLOCK_BYTES..(block + 1) * BLOCK_BYTES];
            std::array::from_fn(|i| {
                // SAFETY: `bytes` is one 64-byte block (bounds-checked above): 16 readable bytes at
                // `16 * i` for i < 4.
                _mm_shuffle_epi8(unsafe { _mm_loadu_si128(bytes[16 * i..].as_ptr().cast()) }, big_endian)
            })
        });
        // The first sixteen rounds take the block's words as they are.
        for group in [0, 1, 2, 3] {
            let words: [__m128i; N] = std::array::from_fn(|s| w[s][group]);
            rounds4!(abef, cdgh, words, group);
        }
        schedule_rounds4!(abef, cdgh, w; 4 5 6 7 8 9 10 11 12 13 14 15);
        for s in 0..N {
            abef[s] = _mm_add_epi32(abef[s], abef_before[s]);
            cdgh[s] = _mm_add_epi32(cdgh[s], cdgh_before[s]);
        }
    }
    for s in 0..N {
        let feba = _mm_shuffle_epi32::<0x1B>(abef[s]);
        let dchg = _mm_shuffle_epi32::<0xB1>(cdgh[s]);
        let dcba = _mm_blend_epi16::<0xF0>(feba, dchg);
        let hgef = _mm_alignr_epi8::<8>(dchg, feba);
        // SAFETY: `states[s]` is eight `u32`s: two 16-byte unaligned stores.
        unsafe {
            _mm_storeu_si128(states[s].as_mut_ptr().cast(), dcba);
            _mm_storeu_si128(states[s][4..].as_mut_ptr().cast(), hgef);
        }
    }
}
