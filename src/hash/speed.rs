//! A quick measurement of this machine's hashing rate, for `tessera info --hash-speed`.

use std::time::{Duration, Instant};

use crate::hash::{hash_batch, hash_batch_parallel, sha256, BATCH_LANES as LANES};

/// Hashing rates in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HashSpeed {
    /// One core, one piece at a time ([`sha256`]): the single-stream rate.
    pub single_stream_bytes_per_s: f64,
    /// One core, batches of 16 pieces ([`hash_batch`]).
    pub one_core_bytes_per_s: f64,
    /// All cores (`threads`), batches of 16 pieces per thread ([`hash_batch_parallel`]).
    pub all_cores_bytes_per_s: f64,
    pub threads: usize,
    pub piece_size_bytes: usize,
}

/// CPU time consumed by the calling thread. `openssl speed` also counts CPU time (not wall
/// time) unless given `-elapsed`, so the one-core figures compare on a busy machine.
pub(crate) fn thread_cpu_time() -> Duration {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32)
}

/// The least CPU time of this thread that `run` took in `runs` runs (for picking between paths
/// once per process).
pub(crate) fn best_cpu_time(runs: usize, run: &dyn Fn() -> usize) -> Duration {
    (0..runs)
        .map(|_| {
            let started = thread_cpu_time();
            std::hint::black_box(run());
            thread_cpu_time().saturating_sub(started)
        })
        .min()
        .unwrap_or_default()
}

/// Repeats `run` (which hashes `bytes` bytes) for about `duration` of `clock`; bytes per second.
fn rate(run: &dyn Fn() -> usize, bytes: usize, duration: Duration, clock: &dyn Fn() -> Duration) -> f64 {
    run(); // warm up caches and the CPU clock
    let started = clock();
    let mut runs = 0u64;
    while clock() - started < duration {
        std::hint::black_box(run());
        runs += 1;
    }
    runs as f64 * bytes as f64 / (clock() - started).as_secs_f64()
}

/// Hashes `piece_size_bytes` pieces for about `duration` per mode: the one-core rates per thread
/// CPU second, the all-cores rate per wall-clock second.
pub fn measure(piece_size_bytes: usize, duration: Duration, threads: usize) -> HashSpeed {
    let threads = threads.max(1);
    // Enough pieces for every thread to fill all 16 lanes.
    let pieces = LANES * threads;
    let owned: Vec<Vec<u8>> =
        (0..pieces).map(|i| (0..piece_size_bytes).map(|j| (i * 131 + j * 7) as u8).collect()).collect();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let batch = &refs[..LANES];
    let wall_start = Instant::now();
    let wall = move || wall_start.elapsed();
    HashSpeed {
        single_stream_bytes_per_s: rate(&|| sha256(refs[0]).len(), piece_size_bytes, duration, &thread_cpu_time),
        one_core_bytes_per_s: rate(&|| hash_batch(batch).len(), piece_size_bytes * LANES, duration, &thread_cpu_time),
        all_cores_bytes_per_s: rate(
            &|| hash_batch_parallel(&refs, threads).len(),
            piece_size_bytes * pieces,
            duration,
            &wall,
        ),
        threads,
        piece_size_bytes,
    }
}
