//! SHA-256 of 1 MiB pieces: one at a time, as batches of several sizes on one thread (below and
//! above `X16_LANES_MIN`, where `hash_batch` switches to 16 AVX-512 lanes), a batch with a short
//! last piece (lanes that finish early), and a parallel batch.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tessera::hash::{bulk_threads, hash_batch, hash_batch_parallel, sha256, Backend, BATCH_LANES, X16_LANES_MIN};

const PIECE: usize = 1 << 20;

fn pieces(count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| (0..PIECE).map(|j| (i * 31 + j * 7) as u8).collect()).collect()
}

fn bench(c: &mut Criterion) {
    let owned = pieces((BATCH_LANES * bulk_threads()).max(BATCH_LANES + 1));
    let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    let mut group =
        c.benchmark_group(format!("sha256-{}-{}", Backend::detect().name(), Backend::detect_batch().name()));
    group.throughput(Throughput::Bytes(PIECE as u64));
    group.bench_function("piece-1MiB", |b| b.iter(|| sha256(std::hint::black_box(&owned[0]))));
    for count in [X16_LANES_MIN - 1, X16_LANES_MIN, 12, BATCH_LANES, BATCH_LANES + 1] {
        group.throughput(Throughput::Bytes((PIECE * count) as u64));
        group.bench_function(format!("batch-{count}x1MiB-one-thread"), |b| {
            b.iter(|| hash_batch(std::hint::black_box(&refs[..count])))
        });
    }
    // A file's last piece is short: 15 lanes run on while one finishes early.
    let mut uneven = refs[..BATCH_LANES].to_vec();
    uneven[BATCH_LANES - 1] = &owned[0][..PIECE / 8];
    let uneven_bytes: usize = uneven.iter().map(|piece| piece.len()).sum();
    group.throughput(Throughput::Bytes(uneven_bytes as u64));
    group.bench_function("batch-15x1MiB+128KiB-one-thread", |b| b.iter(|| hash_batch(std::hint::black_box(&uneven))));
    group.throughput(Throughput::Bytes((PIECE * refs.len()) as u64));
    group.bench_function(format!("batch-{}x1MiB-all-cores", refs.len()), |b| {
        b.iter(|| hash_batch_parallel(std::hint::black_box(&refs), bulk_threads()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
