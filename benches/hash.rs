//! SHA-256 of 1 MiB pieces: one at a time, as a batch on one thread, and as a parallel batch.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera::hash::{bulk_threads, hash_batch, hash_batch_parallel, sha256, Backend};

const PIECE: usize = 1 << 20;
const BATCH: usize = 16;

fn pieces() -> Vec<Vec<u8>> {
    (0..BATCH).map(|i| (0..PIECE).map(|j| (i * 31 + j * 7) as u8).collect()).collect()
}

fn bench(c: &mut Criterion) {
    let owned = pieces();
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let mut group = c.benchmark_group(format!("sha256-{}", Backend::detect().name()));
    group.throughput(Throughput::Bytes(PIECE as u64));
    group.bench_function("piece-1MiB", |b| b.iter(|| sha256(std::hint::black_box(&owned[0]))));
    group.throughput(Throughput::Bytes((PIECE * BATCH) as u64));
    group.bench_function("batch-16x1MiB-one-thread", |b| b.iter(|| hash_batch(std::hint::black_box(&refs))));
    group.bench_function("batch-16x1MiB-all-cores", |b| {
        b.iter(|| hash_batch_parallel(std::hint::black_box(&refs), bulk_threads()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
