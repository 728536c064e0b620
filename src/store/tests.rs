use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::read::MAP_CHUNK;
use super::spool::SPOOL_KEEP;
use super::*;
use crate::error::Error;

fn digest_of(data: &[u8]) -> Digest {
    Digest::of(data)
}

async fn collect(s: impl Stream<Item = Result<Bytes, Error>>) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut s = std::pin::pin!(s);
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

#[tokio::test]
async fn put_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = Bytes::from_static(b"hello blob");
    let d = digest_of(&data);
    assert_eq!(store.stat(&d).await.unwrap(), None);
    store.put(&d, data.clone()).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), Some(10));
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"hello blob");
    let blob = store.open_blob(&d).await.unwrap().unwrap();
    assert_eq!(
        collect(read_range(Source::File(blob.clone()), 0, None))
            .await
            .unwrap(),
        b"hello blob"
    );
    assert_eq!(
        collect(read_range(Source::File(blob), 6, Some(8)))
            .await
            .unwrap(),
        b"bl"
    );
    let indexed: Vec<_> = store
        .index()
        .snapshot()
        .iter()
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(indexed, vec![(index::key(&d), 10)]);
    assert!(store.remove(&d).await.unwrap());
    assert!(!store.remove(&d).await.unwrap());
    assert!(store.index().is_empty());
}

#[tokio::test]
async fn wrong_bytes_are_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = digest_of(b"right");
    let err = store
        .put(&d, Bytes::from_static(b"wrong"))
        .await
        .unwrap_err();
    assert!(matches!(err, CommitError::Digest { .. }), "{err}");
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "temp file removed"
    );
}

#[tokio::test]
async fn short_fill_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = digest_of(b"abcdef");
    let (tx, _rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, Some(6), tx).await.unwrap();
    p.write(Bytes::from_static(b"abc")).await.unwrap();
    assert!(matches!(
        p.commit().await.unwrap_err(),
        CommitError::Size {
            expected: 6,
            actual: 3
        }
    ));
    assert_eq!(store.stat(&d).await.unwrap(), None);
}

#[tokio::test]
async fn reader_follows_a_growing_fill_and_gets_the_last_byte_only_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let d = digest_of(&data);
    let (tx, rx) = watch::channel(FillState::Pending);
    let reader = tokio::spawn(collect(read_range(Source::Fill(rx.clone()), 0, None)));
    let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
    for chunk in data.chunks(100_000) {
        p.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    // Everything is written, but not committed: a second reader can't have the final byte yet.
    let mut probe = std::pin::pin!(read_range(
        Source::Fill(rx.clone()),
        data.len() as u64 - 1,
        None
    ));
    assert!(
        futures_util::FutureExt::now_or_never(probe.next()).is_none(),
        "last byte held back"
    );
    p.commit().await.unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), data);
    assert_eq!(
        probe.next().await.unwrap().unwrap().as_ref(),
        &data[data.len() - 1..]
    );
}

/// What `commit_with` runs (the fill records where the blob came from) happens after the digest
/// checked out and before anyone can see the blob whole: no reader has the last byte yet, and no
/// stat finds it at its final path. Run after that, a pull through another upstream could find
/// the blob cached with no record and be answered (tests/it/isolation.rs).
#[tokio::test]
async fn the_verified_hook_runs_before_anyone_can_see_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let d = digest_of(&data);
    let (tx, rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
    p.write(Bytes::copy_from_slice(&data)).await.unwrap();
    let mut last = std::pin::pin!(read_range(Source::Fill(rx), data.len() as u64 - 1, None));
    let final_path = store.blob_path(&d);
    let mut ran = false;
    p.commit_with(|| {
        ran = true;
        assert!(!final_path.exists(), "not renamed into place yet");
        assert!(
            futures_util::FutureExt::now_or_never(last.next()).is_none(),
            "the last byte is still held back"
        );
    })
    .await
    .unwrap();
    assert!(ran);
    assert!(final_path.exists());
    assert_eq!(
        last.next().await.unwrap().unwrap().as_ref(),
        &data[data.len() - 1..]
    );
}

/// A fill whose bytes do not hash to its digest never runs the hook: nothing is recorded for
/// content that was not what it claimed.
#[tokio::test]
async fn the_verified_hook_never_runs_for_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = digest_of(b"expected content");
    let (tx, _rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, None, tx).await.unwrap();
    p.write(Bytes::from_static(b"other content")).await.unwrap();
    let mut ran = false;
    let got = p.commit_with(|| ran = true).await;
    assert!(matches!(got, Err(CommitError::Digest { .. })), "{got:?}");
    assert!(!ran);
}

#[tokio::test]
async fn reader_of_a_failed_fill_gets_an_error_not_a_short_success() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = digest_of(b"expected content");
    let (tx, rx) = watch::channel(FillState::Pending);
    let reader = tokio::spawn(collect(read_range(Source::Fill(rx), 0, None)));
    let mut p = store.begin(&d, Some(16), tx.clone()).await.unwrap();
    p.write(Bytes::from_static(b"unexpected conte"))
        .await
        .unwrap();
    let err = match p.commit().await {
        Err(e) => e,
        Ok(_) => panic!("wrong bytes committed"),
    };
    assert!(matches!(err, CommitError::Digest { .. }));
    // As the fill job ends a failed fill: its error to the readers, then the fill dropped.
    tx.send_replace(FillState::Failed(Error::internal(err.to_string())));
    drop(p);
    // Readers are told.
    assert!(reader.await.unwrap().is_err());
    assert_eq!(store.stat(&d).await.unwrap(), None);
}

#[tokio::test]
async fn temp_file_owner_reads_the_pid_from_names_berth_makes() {
    let hex = "a".repeat(64);
    assert_eq!(temp_file_owner(&format!("{hex}.4242.7.part")), Some(4242));
    assert_eq!(temp_file_owner(&format!("{hex}.4242.part")), None);
    assert_eq!(temp_file_owner(&format!("{hex}.x.7.part")), None);
    assert_eq!(temp_file_owner("abc.4242.7.part"), None);
    assert_eq!(temp_file_owner(&format!("{hex}.4242.7")), None);
    // And it reads the names `begin` makes.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (tx, _rx) = watch::channel(FillState::Pending);
    let _pending = store.begin(&digest_of(b"x"), Some(1), tx).await.unwrap();
    let names: Vec<_> = std::fs::read_dir(tmp_dir(dir.path()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1);
    assert_eq!(temp_file_owner(&names[0]), Some(std::process::id()));
}

#[tokio::test]
async fn open_removes_leftover_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp/abc.1.0.part"), b"junk").unwrap();
    let _store = Store::open(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn fed_chunks_reach_readers_before_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = Bytes::from_static(b"0123456789");
    let d = digest_of(&data);
    let (tx, rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, Some(10), tx).await.unwrap();
    let feed = p.feed();
    feed.push(data.slice(..6));
    // Nothing written yet, but the first six bytes are readable from memory.
    let mut reader = std::pin::pin!(read_range(Source::Fill(rx.clone()), 0, None));
    assert_eq!(reader.next().await.unwrap().unwrap().as_ref(), b"012345");
    feed.push(data.slice(6..));
    // All ten received: nine come out, the last waits for the verdict.
    assert_eq!(reader.next().await.unwrap().unwrap().as_ref(), b"678");
    assert!(futures_util::FutureExt::now_or_never(reader.next()).is_none());
    p.write_all(vec![data.slice(..6), data.slice(6..)])
        .await
        .unwrap();
    p.commit().await.unwrap();
    assert_eq!(reader.next().await.unwrap().unwrap().as_ref(), b"9");
    assert!(reader.next().await.is_none());
}

/// Makes every later write of `p` fail as on a full disk.
fn fill_the_disk(p: &mut PendingBlob) {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    p.file = Some(Arc::new(full));
}

const ROOMY: PassThrough = PassThrough {
    window: 1 << 20,
    lag_limit: Duration::from_secs(60),
};

#[tokio::test]
async fn a_fill_of_known_size_reserves_its_room_until_it_commits_or_fails() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_size: Some(100),
        ..Limits::default()
    };
    let store = Store::open_with(dir.path(), limits).unwrap();
    let (old, new) = (Bytes::from(vec![1u8; 60]), Bytes::from(vec![2u8; 60]));
    store.put(&digest_of(&old), old.clone()).await.unwrap();
    assert_eq!((store.index().bytes(), store.index().reserved()), (60, 0));

    // Room for the newcomer is made before its first byte: the old blob goes now.
    let (tx, _rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&digest_of(&new), Some(60), tx).await.unwrap();
    assert_eq!((store.index().bytes(), store.index().reserved()), (0, 60));
    assert_eq!(store.stat(&digest_of(&old)).await.unwrap(), None);
    p.write(new.clone()).await.unwrap();
    p.commit().await.unwrap();
    assert_eq!((store.index().bytes(), store.index().reserved()), (60, 0));

    // A fill that fails (dropped, or wrong bytes) gives its room back.
    let (tx, _rx) = watch::channel(FillState::Pending);
    let p = store.begin(&digest_of(b"x"), Some(30), tx).await.unwrap();
    assert_eq!(store.index().reserved(), 30);
    drop(p);
    assert_eq!(store.index().reserved(), 0);
    let (tx, _rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&digest_of(b"y"), Some(1), tx).await.unwrap();
    p.write(Bytes::from_static(b"z")).await.unwrap();
    assert!(matches!(p.commit().await, Err(CommitError::Digest { .. })));
    drop(p);
    assert_eq!(store.index().reserved(), 0);

    // One too big to ever fit reserves nothing and evicts nothing in vain.
    let (tx, _rx) = watch::channel(FillState::Pending);
    let _p = store
        .begin(&digest_of(b"big"), Some(101), tx)
        .await
        .unwrap();
    assert_eq!((store.index().bytes(), store.index().reserved()), (60, 0));
}

#[tokio::test]
async fn a_full_disk_turns_the_fill_into_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data: Bytes = (0..600_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let d = digest_of(&data);
    let (tx, rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
    let feed = p.feed();
    let (a, b, c) = (
        data.slice(..200_000),
        data.slice(200_000..400_000),
        data.slice(400_000..),
    );
    feed.push(a.clone());
    p.write_all(vec![a]).await.unwrap();
    let reader = tokio::spawn(collect(read_range(Source::Fill(rx.clone()), 0, None)));

    fill_the_disk(&mut p);
    feed.push(b.clone());
    let e = p.write_all(vec![b]).await.unwrap_err();
    assert!(is_disk_full(&e), "{e}");
    assert!(Error::io("writing", &e).is_disk_full());
    assert_eq!(store.index().reserved(), data.len() as u64);
    p.pass_through(ROOMY);
    assert_eq!(
        store.index().reserved(),
        0,
        "nothing will be kept: room given back"
    );
    assert_eq!(
        std::fs::read_dir(tmp_dir(dir.path())).unwrap().count(),
        0,
        "temp file deleted at once"
    );
    feed.push(c.clone());
    p.write_all(vec![c]).await.unwrap();
    assert_eq!(p.written(), 200_000, "nothing more went to the disk");

    // Every byte arrived, but the last one waits for the digest.
    let mut probe = std::pin::pin!(read_range(
        Source::Fill(rx.clone()),
        data.len() as u64 - 1,
        None
    ));
    assert!(futures_util::FutureExt::now_or_never(probe.next()).is_none());
    assert!(matches!(
        p.commit().await,
        Err(CommitError::Persist(e)) if is_disk_full(&e)
    ));
    assert!(
        reader.await.unwrap().unwrap() == data,
        "reader got every byte"
    );
    assert_eq!(
        probe.next().await.unwrap().unwrap().as_ref(),
        &data[data.len() - 1..]
    );
    assert!(probe.next().await.is_none(), "and then the end, not a wait");
    drop(p);
    assert_eq!(store.stat(&d).await.unwrap(), None, "nothing cached");
    assert_eq!(std::fs::read_dir(tmp_dir(dir.path())).unwrap().count(), 0);
}

#[tokio::test]
async fn wrong_bytes_passing_through_never_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = digest_of(b"expected content");
    let (tx, rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, Some(16), tx.clone()).await.unwrap();
    let reader = tokio::spawn(collect(read_range(Source::Fill(rx), 0, None)));
    fill_the_disk(&mut p);
    assert!(p.write(Bytes::from_static(b"unexpected")).await.is_err());
    p.pass_through(ROOMY);
    p.write(Bytes::from_static(b" conte")).await.unwrap();
    let err = match p.commit().await {
        Err(e @ CommitError::Digest { .. }) => e,
        other => panic!("wrong bytes passed: {:?}", other.map(|b| b.len)),
    };
    // As the fill job ends a failed fill: its error to the readers, then the fill dropped.
    tx.send_replace(FillState::Failed(Error::internal(err.to_string())));
    drop(p);
    assert!(reader.await.unwrap().is_err());
    assert_eq!(store.stat(&d).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn pass_through_waits_for_slow_readers_and_cuts_off_a_stuck_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let chunk = 16 * 1024;
    let data: Bytes = (0..(32 * chunk))
        .map(|i| (i * 13 % 241) as u8)
        .collect::<Vec<_>>()
        .into();
    let d = digest_of(&data);
    let limits = PassThrough {
        window: 4 * chunk as u64,
        lag_limit: Duration::from_secs(10),
    };
    let (tx, rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
    p.pass_through(limits);
    // One reader takes the first chunk and then nothing more (so it is cut off from where it
    // stopped, not from the start); another reads on, one frame at a time.
    let mut stuck = Box::pin(read_range(Source::Fill(rx.clone()), 0, None));
    assert!(futures_util::FutureExt::now_or_never(stuck.next()).is_none());
    let moving = tokio::spawn(collect(read_range(Source::Fill(rx.clone()), 0, None)));
    let started = tokio::time::Instant::now();
    let feed = p.feed();
    let spool = p.spool.clone();
    // Bounded in (paused) time: a fill that never cuts the stuck reader off fails here.
    let fed = tokio::time::timeout(3 * limits.lag_limit, async {
        for (i, c) in data.chunks(chunk).enumerate() {
            let c = Bytes::copy_from_slice(c);
            feed.push(c.clone());
            p.write_all(vec![c]).await.unwrap();
            if i == 0 {
                let first = stuck.next().await.unwrap().unwrap();
                assert_eq!(first, data.slice(..first.len()));
            }
            assert!(
                spool.held() <= limits.window + chunk as u64,
                "memory bounded: {} bytes held",
                spool.held()
            );
        }
    })
    .await;
    assert!(fed.is_ok(), "the fill still waits for the stuck reader");
    // The fill waited for the stuck reader once, for lag_limit, then went on without it.
    let waited = started.elapsed();
    assert!(
        waited >= limits.lag_limit && waited < 2 * limits.lag_limit,
        "{waited:?}"
    );
    assert!(matches!(p.commit().await, Err(CommitError::Persist(_))));
    assert!(
        moving.await.unwrap().unwrap() == data,
        "the moving reader got every byte"
    );
    let r = stuck.next().await.unwrap();
    assert!(r.is_err(), "a cut-off reader fails, never ends short");
}

#[test]
fn spool_slices_and_trims() {
    let spool = Spool::default();
    spool.push(0, Bytes::from(vec![1u8; 1 << 20]));
    spool.push(1 << 20, Bytes::from(vec![2u8; 1 << 20]));
    assert_eq!(spool.get(10, 20).unwrap().len(), 10);
    assert_eq!(spool.get((1 << 20) - 2, 4 << 20).unwrap().as_ref(), &[1, 1]);
    assert_eq!(
        spool.get((1 << 20) + 5, 4 << 20).unwrap().len(),
        (1 << 20) - 5
    );
    assert!(spool.get(2 << 20, 4 << 20).is_none());
    spool.trim((1 << 20) + SPOOL_KEEP);
    assert!(
        spool.get(0, 10).is_none(),
        "written long ago: read from the file"
    );
    assert!(spool.get(1 << 20, (1 << 20) + 1).is_some());
}

#[tokio::test]
async fn mapped_reads_cross_window_and_page_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data: Bytes = (0..(3 * MAP_CHUNK as usize + 12345))
        .map(|i| (i * 7 % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let d = digest_of(&data);
    store.put(&d, data.clone()).await.unwrap();
    let blob = store.open_blob(&d).await.unwrap().unwrap();
    for (start, end) in [
        (0, None),
        (4095, Some(4097)),
        (MAP_CHUNK - 1, Some(2 * MAP_CHUNK + 3)),
        (3 * MAP_CHUNK + 1, None),
    ] {
        let got = collect(read_range(Source::File(blob.clone()), start, end))
            .await
            .unwrap();
        let want = &data[start as usize..end.map_or(data.len(), |e| e as usize)];
        assert!(got == want, "range {start}..{end:?}");
    }
}

/// A reader exists from the moment it is made, before its first poll: a response's body is
/// polled a moment after its head, and a fill passing through memory must keep its bytes for it.
#[tokio::test(start_paused = true)]
async fn a_reader_not_yet_polled_is_waited_for_by_a_fill_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let chunk = 16 * 1024;
    let data: Bytes = (0..(16 * chunk))
        .map(|i| (i * 7 % 239) as u8)
        .collect::<Vec<_>>()
        .into();
    let d = digest_of(&data);
    let limits = PassThrough {
        window: 2 * chunk as u64,
        lag_limit: Duration::from_secs(60),
    };
    let (tx, rx) = watch::channel(FillState::Pending);
    let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
    p.pass_through(limits);
    // Made while the fill is running, not polled yet.
    let reader = read_range(Source::Fill(rx.clone()), 0, None);
    let feed = p.feed();
    let fill = tokio::spawn(async move {
        for c in data.chunks(chunk) {
            let c = Bytes::copy_from_slice(c);
            feed.push(c.clone());
            p.write_all(vec![c]).await.unwrap();
        }
        assert!(matches!(p.commit().await, Err(CommitError::Persist(_))));
    });
    // The fill runs ahead of it, up to the window, before its first poll...
    let mut progress = rx.clone();
    progress
        .wait_for(
            |s| matches!(s, FillState::Writing(p) if p.received >= limits.window + chunk as u64),
        )
        .await
        .unwrap();
    // ... and then waits for it: its bytes are all still there.
    let got = collect(reader).await.expect("every byte, from the first");
    assert_eq!(got.len(), 16 * chunk);
    assert_eq!(Digest::of(&got), d);
    fill.await.unwrap();
}

#[tokio::test]
async fn a_reader_of_a_failed_fill_ends_after_its_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = Bytes::from_static(b"0123456789");
    let (tx, rx) = watch::channel(FillState::Pending);
    let mut p = store
        .begin(&digest_of(&data), Some(10), tx.clone())
        .await
        .unwrap();
    p.write(data.slice(..4)).await.unwrap();
    let mut reader = std::pin::pin!(read_range(Source::Fill(rx), 0, None));
    assert_eq!(reader.next().await.unwrap().unwrap().as_ref(), b"0123");
    tx.send_replace(FillState::Failed(Error::internal("the upstream broke off")));
    drop(p);
    assert!(reader.next().await.unwrap().is_err());
    assert!(reader.next().await.is_none(), "one error, then the end");
}

/// Mapping is an optimisation: a file that cannot be mapped (procfs refuses `mmap`; so do some
/// network and FUSE file systems) is read with plain reads, every byte of it.
#[tokio::test]
async fn a_file_that_cannot_be_mapped_is_read_instead() {
    let want = std::fs::read("/proc/version").unwrap();
    let blob = BlobFile {
        file: Arc::new(std::fs::File::open("/proc/version").unwrap()),
        len: want.len() as u64,
        lease: None,
        maps: None,
    };
    assert!(
        crate::zerocopy::map(&blob.file, 0, blob.len, None).is_err(),
        "procfs maps nothing"
    );
    let got = collect(read_range(Source::File(blob), 0, None))
        .await
        .unwrap();
    assert_eq!(got, want);
}

/// The plain reads behind that, where a read may come back short (procfs gives about a page a
/// read): each read continues where the last one stopped, a range stops at its end, a file
/// shorter than its recorded length is an error (never an endless run of empty chunks), and so
/// is a file that cannot be read at all.
#[tokio::test]
async fn plain_reads_continue_short_reads_stop_at_the_range_and_fail_on_errors() {
    let plain = |path: &str, len: u64| {
        let file = Arc::new(std::fs::File::open(path).unwrap());
        assert!(crate::zerocopy::map(&file, 0, len.max(1), None).is_err());
        BlobFile {
            file,
            len,
            lease: None,
            maps: None,
        }
    };
    // Over 5 MB, read about 4 KiB at a time.
    let big = "/proc/kallsyms";
    let want = std::fs::read(big).unwrap();
    let len = want.len() as u64;
    assert!(len > 1 << 20, "{big}: {len} bytes");
    let head = 600 * 1024;
    let got = collect(read_range(Source::File(plain(big, len)), 0, Some(head)))
        .await
        .unwrap();
    assert!(got == want[..head as usize], "the first {head} bytes");
    let got = collect(read_range(Source::File(plain(big, len)), 5000, Some(5100)))
        .await
        .unwrap();
    assert_eq!(got, want[5000..5100]);

    let bounded = |s| tokio::time::timeout(Duration::from_secs(20), collect(s));
    let short = std::fs::read("/proc/version").unwrap().len() as u64;
    let r = bounded(read_range(
        Source::File(plain("/proc/version", short + 10)),
        0,
        None,
    ))
    .await
    .expect("a short file ends");
    assert!(r.is_err(), "a file shorter than recorded is an error");
    let r = bounded(read_range(Source::File(plain("/", 10)), 0, None))
        .await
        .expect("an unreadable file ends");
    assert!(r.is_err(), "a directory cannot be read");
}
