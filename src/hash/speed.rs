//! A quick measurement of this machine's hashing rate, for `tessera info --hash-speed`.

use std::time::{Duration, Instant};

use crate::hash::{hash_batch, hash_batch_parallel};

/// Hashing rates in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HashSpeed {
    /// One core, pieces one after another.
    pub one_core_bytes_per_s: f64,
    /// All cores (`threads`), pieces spread over them.
    pub all_cores_bytes_per_s: f64,
    pub threads: usize,
    pub piece_size_bytes: usize,
}

/// CPU time consumed by the calling thread. `openssl speed` also counts CPU time (not wall
/// time) unless given `-elapsed`, so the one-core figures compare on a busy machine.
fn thread_cpu_time() -> Duration {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32)
}

/// Hashes batches of `piece_size_bytes` pieces for about `duration` per mode: the one-core
/// rate per thread CPU second, the all-cores rate per wall-clock second.
pub fn measure(piece_size_bytes: usize, duration: Duration, threads: usize) -> HashSpeed {
    let batch_pieces = 16;
    let owned: Vec<Vec<u8>> =
        (0..batch_pieces).map(|i| (0..piece_size_bytes).map(|j| (i * 131 + j * 7) as u8).collect()).collect();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let batch_bytes = (piece_size_bytes * batch_pieces) as f64;
    let rate = |run: &dyn Fn() -> usize, clock: &dyn Fn() -> Duration| {
        run(); // warm up caches and the CPU clock
        let started = clock();
        let mut batches = 0u64;
        while clock() - started < duration {
            std::hint::black_box(run());
            batches += 1;
        }
        batches as f64 * batch_bytes / (clock() - started).as_secs_f64()
    };
    let wall_start = Instant::now();
    let wall = move || wall_start.elapsed();
    HashSpeed {
        one_core_bytes_per_s: rate(&|| hash_batch(&refs).len(), &thread_cpu_time),
        all_cores_bytes_per_s: rate(&|| hash_batch_parallel(&refs, threads).len(), &wall),
        threads,
        piece_size_bytes,
    }
}
