//! Design question: does one fill that N clients follow (single-flight through the growing temp
//! file, `watch` wakeups, `pread` of what is written so far) scale to many followers, or does the
//! fan-out itself (wakeup storms on every write, one blocking read per follower per chunk) become
//! the bottleneck before the upstream does? The answer is "it scales" when the time for 100
//! followers stays near 100x the bytes of a cached read, not near the time of 100 sequential fills.
//!
//! Two shapes: `disk`, followers read only what is in the file (`write_all` alone), and `spool`, the
//! mirror's shape since the fill feeds every received chunk to readers (`PendingBlob::feed`) before
//! the batch is hashed and written, so followers at the head take it from memory.
//!
//! A writer task writes 32 MiB through `Store::begin`/`write_all` in 1 MiB batches and commits,
//! while 1, 10 or 100 tasks each read the whole blob with `read_range(Source::Fill(rx), 0, None)` on
//! the same `watch` channel. One iteration = from the first write until every follower has every
//! byte, each follower copying every chunk once (as a socket write would). The commit's fsync and rename run after that point and are not timed: followers are
//! released at `FillState::Verified`, before the fsync, and the time they wait is the question.
//! Throughput counts the bytes delivered to all followers.

mod common;

use std::time::{Duration, Instant};

use berth::store::{FillState, Source, Store, read_range};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use tokio::sync::watch;

const SIZE: usize = 32 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const BATCH: usize = 1024 * 1024;
/// At least the largest chunk a reader gets (1 MiB mappings once the fill is verified).
const SCRATCH: usize = 4 * 1024 * 1024;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (data, digest) = common::blob(SIZE, 0x2545_f491_4f6c_dd1d);
    let chunks = common::chunks(&data, CHUNK);

    for spool in [false, true] {
        let mut g = c.benchmark_group(if spool {
            "fanout_32MiB_spool"
        } else {
            "fanout_32MiB_disk"
        });
        for followers in [1usize, 10, 100] {
            g.throughput(Throughput::Bytes((SIZE * followers) as u64));
            g.bench_with_input(
                BenchmarkId::from_parameter(followers),
                &followers,
                |b, &n| {
                    b.iter_custom(|iters| {
                        let mut timed = Duration::ZERO;
                        for _ in 0..iters {
                            let dir = tempfile::tempdir().unwrap();
                            let store = Store::open(dir.path()).unwrap();
                            timed += rt.block_on(async {
                                let (tx, rx) = watch::channel(FillState::Pending);
                                let readers: Vec<_> = (0..n)
                                    .map(|_| {
                                        let s = read_range(Source::Fill(rx.clone()), 0, None);
                                        tokio::spawn(async move {
                                            let mut s = std::pin::pin!(s);
                                            let mut got = 0usize;
                                            // Stands in for the socket write's copy: spooled
                                            // and mapped chunks are otherwise never touched.
                                            let mut scratch = vec![0u8; SCRATCH];
                                            while let Some(c) = s.next().await {
                                                let c = c.unwrap();
                                                scratch[..c.len()].copy_from_slice(&c);
                                                std::hint::black_box(&scratch);
                                                got += c.len();
                                            }
                                            got
                                        })
                                    })
                                    .collect();
                                let start = Instant::now();
                                let mut p =
                                    store.begin(&digest, Some(SIZE as u64), tx).await.unwrap();
                                let chunks = chunks.clone();
                                let writer = tokio::spawn(async move {
                                    let feed = p.feed();
                                    for batch in chunks.chunks(BATCH / CHUNK) {
                                        if spool {
                                            for c in batch {
                                                feed.push(c.clone());
                                            }
                                        }
                                        p.write_all(batch.to_vec()).await.unwrap();
                                    }
                                    p.commit().await.unwrap();
                                });
                                for r in readers {
                                    assert_eq!(r.await.unwrap(), SIZE);
                                }
                                let took = start.elapsed();
                                writer.await.unwrap();
                                took
                            });
                        }
                        timed
                    })
                },
            );
        }
        g.finish();
    }
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
