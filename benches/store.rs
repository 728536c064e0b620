//! Design question: is the store's own work (sha256 + write to a temp file + fsync + rename for a
//! fill; `spawn_blocking` + `pread` of 256 KiB chunks for a hit) fast enough that the network, not
//! the store, bounds a pull? A fill must keep up with a fast upstream (well above 1 GB/s would mean
//! the hash, at ~1.3 GB/s per core with SHA-NI, is the limit, not the plumbing around it), and a
//! cached read must stay near page-cache memcpy speed, because the issue asks hits to reach 0.9x of
//! nginx `sendfile`.
//!
//! - `fill_64MiB`: `Store::begin`, `PendingBlob::write_all` in 1 MiB batches of 64 KiB chunks (the
//!   shape the mirror's fill loop hands over), `commit` (digest check, fsync, rename), in a tempdir.
//! - `write_64MiB_no_commit`: the same writes, then the `PendingBlob` is dropped (no digest check,
//!   no fsync, no rename): the difference to `fill_64MiB` is the cost of making the blob durable.
//! - `hit_read_64MiB`: `read_range(Source::File(..))` of the committed 64 MiB blob, file warm in the
//!   page cache. Each chunk is copied once into a scratch buffer, standing in for the copy the
//!   socket write makes: with mapped chunks (`zerocopy::map`) nothing would otherwise touch the bytes,
//!   and the bench would time page-table setup only.

use std::hint::black_box;
mod common;

use std::time::Duration;

use berth::store::{FillState, Source, Store, read_range};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use tokio::sync::watch;

const SIZE: usize = 64 * 1024 * 1024;
/// hyper hands the fill body chunks of about this size.
const CHUNK: usize = 64 * 1024;
/// The mirror batches up to its queue limit; 1 MiB is a typical batch under load.
const BATCH: usize = 1024 * 1024;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (data, digest) = common::blob(SIZE, 0x9e37_79b9_7f4a_7c15);
    let chunks = common::chunks(&data, CHUNK);

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(SIZE as u64));

    g.bench_function("fill_64MiB", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(dir.path()).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                rt.block_on(async {
                    let (tx, _rx) = watch::channel(FillState::Pending);
                    let mut p = store.begin(&digest, Some(SIZE as u64), tx).await.unwrap();
                    for batch in chunks.chunks(BATCH / CHUNK) {
                        p.write_all(batch.to_vec()).await.unwrap();
                    }
                    p.commit().await.unwrap();
                });
                dir
            },
            criterion::BatchSize::PerIteration,
        )
    });

    g.bench_function("write_64MiB_no_commit", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(dir.path()).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                rt.block_on(async {
                    let (tx, _rx) = watch::channel(FillState::Pending);
                    let mut p = store.begin(&digest, Some(SIZE as u64), tx).await.unwrap();
                    for batch in chunks.chunks(BATCH / CHUNK) {
                        p.write_all(batch.to_vec()).await.unwrap();
                    }
                    // Dropped uncommitted: the temp file is deleted, nothing is fsynced.
                });
                dir
            },
            criterion::BatchSize::PerIteration,
        )
    });

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    rt.block_on(store.put(&digest, data.clone())).unwrap();
    // Larger than any chunk read_range hands out (256 KiB reads, 1 MiB mappings).
    let mut scratch = vec![0u8; 4 * 1024 * 1024];
    g.bench_function("hit_read_64MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let file = store.open_blob(&digest).await.unwrap().unwrap();
                let mut s = std::pin::pin!(read_range(Source::File(file), 0, None));
                let mut n = 0usize;
                while let Some(c) = s.next().await {
                    let c = c.unwrap();
                    scratch[..c.len()].copy_from_slice(&c);
                    black_box(&scratch);
                    n += c.len();
                }
                assert_eq!(n, SIZE);
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
