//! Design question: can the access index be rebuilt from the files on every start (no index file
//! of its own to corrupt), and kept in memory for every cached blob? Issue 4 asks for a start with
//! 100,000 cached blobs in under 2 s and a small memory cost per entry; and the index sits on the
//! hit path (a touch and a lease per cached blob served, a pin per manifest served), so those must
//! cost next to nothing.
//!
//! - `open_100k`: `Store::open_with` on a directory holding 100,000 blob files (one `readdir` pass,
//!   one `stat` per file, one insert per file). The files are empty: the scan reads metadata only,
//!   so their size does not matter. Their dentries and inodes are in the kernel's cache, as they are
//!   on a machine that has been running; see BENCHMARKS.md for a run after dropping the caches.
//! - `touch_hit`, `lease`: one access record (within the minute, so memory only) and one lease
//!   taken and dropped, on an index of 100,000.
//! - `evict_pass_100k`: choosing what to evict when the cache is over its high watermark: every
//!   entry considered, sorted by last access, down to the low watermark (a full cache at 85%:
//!   15% of the entries go).
//!
//! Memory per entry is measured once, before the timings, as the growth of the process's resident
//! set while 1,000,000 entries are inserted, and printed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::index::{Index, Key, Limits};
use berth::oci::Digest;
use berth::store::Store;
use criterion::{Criterion, criterion_group, criterion_main};

const ENTRIES: u32 = 100_000;

fn key(i: u32) -> Key {
    berth::index::key(&Digest::of(&i.to_le_bytes()))
}

/// Resident set size of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn memory_per_entry() {
    const N: u32 = 1_000_000;
    let keys: Vec<Key> = (0..N).map(key).collect();
    let before = rss();
    let ix = Index::new(Limits::default());
    for (i, k) in keys.iter().enumerate() {
        ix.insert(*k, 1 << 20, i as u32);
    }
    let after = rss();
    black_box(&ix);
    println!(
        "index memory: {} entries, resident set grew {:.1} MiB: {:.0} bytes per entry",
        ix.len(),
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / f64::from(N)
    );
}

fn bench(c: &mut Criterion) {
    memory_per_entry();

    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for i in 0..ENTRIES {
        let d = Digest::of(&i.to_le_bytes());
        std::fs::File::create(blobs.join(d.hex())).unwrap();
    }
    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap();
    println!(
        "first open of {} blob files: {:?}",
        store.index().len(),
        started.elapsed()
    );

    let mut g = c.benchmark_group("index");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("open_100k", |b| {
        b.iter(|| {
            let s = Store::open_with(dir.path(), Limits::default()).unwrap();
            assert_eq!(s.index().len(), ENTRIES as usize);
            s
        })
    });
    g.finish();

    let limits = Limits {
        max_size: Some(u64::from(ENTRIES) << 20),
        high: 0.95,
        low: 0.85,
        ..Limits::default()
    };
    let ix = Arc::new(Index::new(limits));
    for i in 0..ENTRIES {
        ix.insert(key(i), 1 << 20, 1_000_000 + i);
    }
    let hot = key(ENTRIES / 2);
    let mut g = c.benchmark_group("index");
    g.bench_function("touch_hit", |b| {
        b.iter(|| black_box(ix.touch(black_box(&hot), 1_000_000 + ENTRIES)))
    });
    g.bench_function("lease", |b| b.iter(|| drop(black_box(ix.lease(hot)))));
    g.bench_function("evict_pass_100k", |b| {
        b.iter_batched(
            || {
                let ix = Index::new(limits);
                for i in 0..ENTRIES {
                    ix.insert(key(i), 1 << 20, 1_000_000 + i);
                }
                ix
            },
            |ix| {
                let gone = ix.take_for_room(2_000_000);
                assert_eq!(gone.len(), (ENTRIES / 100 * 15) as usize);
                (ix, gone)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
