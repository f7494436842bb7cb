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
//! Two builds of the rounds: one for xmm0–15 in legacy SSE encodings (any CPU with SHA-NI) and
//! one where AVX-512VL lets the schedule's other instructions use xmm16–31 (EVEX), so that four
//! streams spill less: 3.9 against 3.6 GB/s on a Zen 4. [`Registers::best`] times both once.
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
    hash_batch_on(messages, Registers::best())
}

/// [`hash_batch`] on the rounds compiled for `registers`.
pub(super) fn hash_batch_on(messages: &[&[u8]], registers: Registers) -> Vec<Digest> {
    assert!(available(), "the interleaved SHA-256 needs the SHA extensions and SSE4.1");
    let mut digests = vec![[0u8; 32]; messages.len()];
    let left = drive::<LANES>(jobs(messages), LANES, &mut |s, r, b| rounds::<LANES>(registers, s, r, b), &mut digests);
    let left = drive::<2>(left, 2, &mut |s, r, b| rounds::<2>(registers, s, r, b), &mut digests);
    finish_single(left, &mut digests);
    digests
}

/// The vector registers the rounds are compiled to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registers {
    /// xmm0–15, legacy SSE encodings: any CPU with the SHA extensions.
    Sse16,
    /// xmm0–31: the schedule's adds, shuffles and aligns in EVEX encodings (AVX-512VL) may use
    /// xmm16–31, so four streams' state and message words spill less (the SHA instructions
    /// themselves still address xmm0–15 only). 128-bit EVEX writes clear the upper bits, so the
    /// legacy-encoded `sha256rnds2` meets no dirty upper state.
    Evex32,
}

impl Registers {
    /// The builds this CPU can run; says so when it cannot run the 32-register one.
    #[cfg(test)]
    pub fn runnable() -> Vec<Registers> {
        if evex_available() {
            return vec![Registers::Sse16, Registers::Evex32];
        }
        eprintln!("note: this CPU lacks AVX-512VL: the 32-register SHA-NI rounds are not tested here");
        vec![Registers::Sse16]
    }

    /// The faster of the two on this CPU: timed once per process (about 2 ms) where AVX-512VL
    /// exists. On an AMD Zen 4, four streams ran at 3.9 GB/s with 32 registers and 3.6 with 16.
    pub fn best() -> Registers {
        static BEST: std::sync::OnceLock<Registers> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            if !evex_available() {
                return Registers::Sse16;
            }
            let messages: Vec<Vec<u8>> = (0..LANES).map(|i| vec![i as u8; 256 << 10]).collect();
            let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let time = |registers| crate::hash::speed::best_cpu_time(3, &|| hash_batch_on(&refs, registers).len());
            if time(Registers::Evex32) < time(Registers::Sse16) {
                Registers::Evex32
            } else {
                Registers::Sse16
            }
        })
    }
}

/// Whether the 32-register build of the rounds can run here.
fn evex_available() -> bool {
    available() && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl")
}

/// The rounds of `N` interleaved streams.
fn rounds<const N: usize>(registers: Registers, states: &mut [[u32; 8]; N], runs: &[&[u8]; N], blocks: usize) {
    match registers {
        Registers::Sse16 => {
            assert!(available());
            // SAFETY: `available()` confirmed the CPU has SHA, SSE2, SSSE3 and SSE4.1, the
            // features `compress_interleaved` is compiled for.
            unsafe { compress_interleaved(states, runs, blocks) }
        }
        Registers::Evex32 => {
            assert!(evex_available());
            // SAFETY: `evex_available()` confirmed those and AVX-512F/VL, the features
            // `compress_interleaved_evex` is compiled for.
            unsafe { compress_interleaved_evex(states, runs, blocks) }
        }
    }
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

/// Defines `$name`, the rounds compiled for `$features`: it runs `blocks` blocks of each stream's
/// run through its state. Each run holds at least `blocks` blocks.
macro_rules! compress_interleaved {
    ($name:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        fn $name<const N: usize>(states: &mut [[u32; 8]; N], runs: &[&[u8]; N], blocks: usize) {
            assert!(runs.iter().all(|run| run.len() >= blocks * BLOCK_BYTES), "each run holds the blocks asked for");
            let big_endian = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
            let mut abef = [big_endian; N];
            let mut cdgh = [big_endian; N];
            for s in 0..N {
                // SAFETY: `states[s]` is eight `u32`s: 16 readable bytes at its start.
                let dcba = unsafe { _mm_loadu_si128(states[s].as_ptr().cast()) };
                // SAFETY: and 16 more at its fifth word.
                let hgfe = unsafe { _mm_loadu_si128(states[s][4..].as_ptr().cast()) };
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
    };
}

compress_interleaved!(compress_interleaved, "sha,sse2,ssse3,sse4.1");
compress_interleaved!(compress_interleaved_evex, "sha,sse2,ssse3,sse4.1,avx512f,avx512vl");
