//! SHA-256, the one place it is computed: with the CPU's SHA extensions when present.
//!
//! - [`sha256`]: the digest of one byte string (a piece, a hash file, a key);
//! - [`Hasher`]: the digest of bytes that arrive in parts (a whole file);
//! - [`hash_batch`] and [`hash_batch_parallel`]: many pieces at once. Callers (publish, scrub,
//!   ingest, download, fill) hand over batches, hashed side by side: from two pieces on, several
//!   interleaved SHA-NI streams (`ni_multi`, about twice the rate of one stream); from
//!   [`X16_LANES_MIN`] pieces on, 16 AVX-512 lanes (`x16`) instead when this CPU runs those faster
//!   (measured once per process, [`Backend::detect_batch`]).

mod lanes;
pub mod speed;
// The interleaved SHA-NI rounds: `unsafe` for feature-gated calls and loads, each with `// SAFETY:`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod ni_multi;
// The AVX-512 rounds: the only `unsafe` of this module, each block with a `// SAFETY:` line.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x16;

use sha2::{Digest as _, Sha256};

use crate::content::Digest;

/// Which SHA-256 implementation runs on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// x86 SHA extensions (SHA-NI), picked at run time by the `sha2` crate.
    ShaNi,
    /// ARMv8 SHA2 instructions.
    ArmSha2,
    /// Portable software rounds.
    Software,
    /// 16 messages side by side in AVX-512 lanes (batches only).
    Avx512X16,
    /// Four SHA-NI streams interleaved (batches only).
    ShaNiX4,
}

impl Backend {
    /// The backend `sha2` selects on this CPU (it detects features at run time the same way).
    pub fn detect() -> Backend {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("sha")
                && std::is_x86_feature_detected!("sse2")
                && std::is_x86_feature_detected!("ssse3")
                && std::is_x86_feature_detected!("sse4.1")
            {
                return Backend::ShaNi;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("sha2") {
                return Backend::ArmSha2;
            }
        }
        Backend::Software
    }

    /// The backend [`hash_batch`] uses for a batch of at least [`X16_LANES_MIN`] pieces: of the
    /// interleaved SHA-NI streams and the 16 AVX-512 lanes, the one that ran faster here (each
    /// timed once per process on a few MiB: about 10 ms, at the first large batch). Which wins
    /// depends on the CPU: on an AMD Zen 4, four SHA-NI streams (3.6 GB/s) beat AVX-512 run as
    /// two 256-bit halves (3.0 GB/s).
    pub fn detect_batch() -> Backend {
        #[cfg(target_arch = "x86_64")]
        {
            static FASTER: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
            match (x16::available(), ni_multi::available()) {
                (true, true) => return *FASTER.get_or_init(faster_batch_backend),
                (true, false) => return Backend::Avx512X16,
                (false, true) => return Backend::ShaNiX4,
                (false, false) => {}
            }
        }
        Backend::detect()
    }

    /// Name for `tessera info` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Backend::ShaNi => "sha-ni",
            Backend::ArmSha2 => "armv8-sha2",
            Backend::Software => "software",
            Backend::Avx512X16 => "avx512-x16",
            Backend::ShaNiX4 => "sha-ni-x4",
        }
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// SHA-256 of bytes fed in parts, in order.
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    state: Sha256,
}

impl Hasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Feeds the next `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.state.update(bytes);
    }

    /// The digest of every byte fed so far.
    pub fn finish(self) -> Digest {
        self.state.finalize().into()
    }
}

/// Pieces the AVX-512 path hashes side by side.
pub const BATCH_LANES: usize = 16;

/// Batches of at least this many pieces may go to the 16-lane AVX-512 path, which keeps going
/// while this many lanes are busy; fewer lanes finish on the single stream. 16 lanes cost the same
/// time whether busy or not, so the path pays from the lane count where it beats the interleaved
/// SHA-NI streams' smaller batches: measured on 1 MiB pieces, 8 lanes ran at 0.93 and 9 lanes at
/// 1.05 times one stream on an AMD Zen 4 (16 lanes: 1.67 times); the Intel figures of issue 12
/// (16 lanes: 2.1 times) put it at 8.
pub const X16_LANES_MIN: usize = 9;

/// Batches of at least this many pieces are hashed as interleaved SHA-NI streams: two streams
/// already run at 1.6 times one.
pub const NI_LANES_MIN: usize = 2;

/// SHA-256 of every piece, on the calling thread, in order: side by side when the CPU can and the
/// batch is large enough (interleaved SHA-NI streams from [`NI_LANES_MIN`] pieces, 16 AVX-512
/// lanes from [`X16_LANES_MIN`] when those run faster here), otherwise one after another
/// ([`sha256`]).
pub fn hash_batch(pieces: &[&[u8]]) -> Vec<Digest> {
    #[cfg(target_arch = "x86_64")]
    {
        if pieces.len() >= X16_LANES_MIN && Backend::detect_batch() == Backend::Avx512X16 {
            return x16::hash_batch(pieces, X16_LANES_MIN);
        }
        if pieces.len() >= NI_LANES_MIN && ni_multi::available() {
            return ni_multi::hash_batch(pieces);
        }
    }
    pieces.iter().map(|piece| sha256(piece)).collect()
}

/// The vector registers the interleaved SHA-NI rounds use here (`xmm0-15`, or `xmm0-31` where
/// the AVX-512VL build ran faster), for `tessera info`; `None` without the SHA extensions.
pub fn ni_registers() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if ni_multi::available() {
            return Some(match ni_multi::Registers::best() {
                ni_multi::Registers::Sse16 => "xmm0-15",
                ni_multi::Registers::Evex32 => "xmm0-31",
            });
        }
    }
    None
}

/// Times the two batch paths on the same 16 messages of 256 KiB (CPU time of this thread, the
/// best of three each) and names the faster. Both must be available.
#[cfg(target_arch = "x86_64")]
fn faster_batch_backend() -> Backend {
    let messages: Vec<Vec<u8>> = (0..BATCH_LANES).map(|i| vec![i as u8; 256 << 10]).collect();
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    ni_multi::Registers::best(); // its own timing, outside this one
    let x16_time = speed::best_cpu_time(3, &|| x16::hash_batch(&refs, X16_LANES_MIN).len());
    let ni_time = speed::best_cpu_time(3, &|| ni_multi::hash_batch(&refs).len());
    if x16_time < ni_time {
        Backend::Avx512X16
    } else {
        Backend::ShaNiX4
    }
}

/// SHA-256 of every piece, spread over up to `threads` threads, in order.
///
/// For bulk work off the data plane (publish, scrub); data-plane workers use [`hash_batch`].
pub fn hash_batch_parallel(pieces: &[&[u8]], threads: usize) -> Vec<Digest> {
    let threads = threads.clamp(1, pieces.len().max(1));
    if threads == 1 {
        return hash_batch(pieces);
    }
    let mut out = vec![[0u8; 32]; pieces.len()];
    let chunk = pieces.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (inputs, outputs) in pieces.chunks(chunk).zip(out.chunks_mut(chunk)) {
            scope.spawn(move || outputs.copy_from_slice(&hash_batch(inputs)));
        }
    });
    out
}

/// Threads worth using for bulk hashing on this machine.
pub fn bulk_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod differential_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        assert_eq!(hex::encode(sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn parts_give_the_digest_of_the_whole() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut hasher = Hasher::new();
        for part in bytes.chunks(333) {
            hasher.update(part);
        }
        assert_eq!(hasher.finish(), sha256(&bytes));
        assert_eq!(Hasher::new().finish(), sha256(b""));
    }

    #[test]
    fn batch_and_parallel_agree_in_order() {
        let pieces: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        let single = hash_batch(&refs);
        assert_eq!(single, hash_batch_parallel(&refs, 4));
        assert_eq!(single[3], sha256(&pieces[3]));
        assert!(hash_batch_parallel(&[], 4).is_empty());
    }
}
