//! A full disk during a fill: the fill becomes pass-through (clients get the exact bytes, nothing is
//! cached), the error is counted, eviction makes room, and berth keeps serving. Runs on a real size-limited tmpfs, so it
//! needs root: `cargo test --test it enospc:: -- --ignored` (tests/run.sh does).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http::Method;
use support::instance::{gated_blob, same, start_on, until_metric};
use support::{FakeRegistry, random_bytes};

const INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// A tmpfs mounted on a directory for as long as this lives; unmounted on drop, panics included.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", at.display());
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = Command::new("umount").arg(&self.0).status();
        if !plain.is_ok_and(|s| s.success()) {
            // Still busy (berth's task winding down): detach it now, freed when the last file closes.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

const ENOSPC: &str = "berth_store_write_errors_total{kind=\"enospc\"}";

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
#[ignore = "needs root: mounts a size-limited tmpfs"]
async fn a_full_disk_turns_fills_into_pass_through_and_berth_keeps_serving() {
    // Dropped in reverse: berth first, then the mount, then the mount point.
    let mnt = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(mnt.path(), "8m");
    let fake = FakeRegistry::start().await;
    let data = tempfile::tempdir_in(mnt.path()).unwrap();
    let b = start_on(&fake, "", data).await;
    let blobs = b.dir.path().join("blobs/sha256");
    let tmp = b.dir.path().join("tmp");

    // 1. A blob larger than the whole filesystem: served exactly, not cached.
    let big = random_bytes(12 << 20, 201);
    let big_digest = fake.put_blob("library/app", big.clone());
    let got = b.get(&format!("/v2/app/blobs/{big_digest}")).await;
    assert_eq!(got.status, 200);
    same(got.bytes(), &big);
    b.settled().await;
    assert!(files_in(&blobs).is_empty(), "{:?}", files_in(&blobs));
    assert!(files_in(&tmp).is_empty(), "{:?}", files_in(&tmp));
    assert_eq!(b.counter(ENOSPC).await, 1);

    // 2. The space is free again: a smaller blob caches.
    let small = random_bytes(1 << 20, 202);
    let small_digest = fake.put_blob("library/app", small.clone());
    same(
        b.get(&format!("/v2/app/blobs/{small_digest}"))
            .await
            .bytes(),
        &small,
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&small_digest)).unwrap(), small);

    // 3. While a degraded fill runs: a new request for its digest starts a fresh fill instead of
    //    joining (here it finds the disk full too and passes through as well), a manifest is
    //    served whether or not it can be cached, and every client gets the exact bytes.
    let (layer, digest, release) = gated_blob(&fake, 10 << 20, 203, 1);
    let upstream_path = format!("/v2/library/app/blobs/{digest}");
    let path = format!("/v2/app/blobs/{digest}");
    let first = b.stream(&path).await;
    release.send_replace(9 << 20);
    until_metric(&b, ENOSPC, 2).await;
    // The full disk triggered eviction: the least recently used blob (the only one) made room.
    until_metric(&b, "berth_cache_evictions_total{reason=\"disk_full\"}", 1).await;
    assert!(!b.blob_file(&small_digest).exists());
    let second = b.get(&path).await;
    same(second.bytes(), &layer);
    assert_eq!(fake.hits(Method::GET, &upstream_path), 2, "a fresh fill");
    assert_eq!(
        b.counter("berth_coalesced_requests_total{kind=\"blob\"}")
            .await,
        0
    );
    fake.put_tagged(
        "library/app",
        "1",
        "application/vnd.oci.image.index.v1+json",
        INDEX,
    );
    let manifest = b.get("/v2/app/manifests/1").await;
    assert_eq!(manifest.status, 200);
    assert_eq!(manifest.bytes(), &Bytes::from_static(INDEX.as_bytes()));
    // Both fills hit the full disk; the manifest may or may not, depending on how much room the
    // eviction made, and is served either way.
    assert!(b.counter(ENOSPC).await >= 3, "fill, fill");
    release.send_replace(layer.len());
    same(&Bytes::from(first.finish().await.unwrap()), &layer);
    b.settled().await;
    assert!(!b.blob_file(&digest).exists());
    assert!(files_in(&tmp).is_empty(), "{:?}", files_in(&tmp));

    // 4. And once those are done, the disk takes blobs again.
    let after = random_bytes(1 << 20, 204);
    let after_digest = fake.put_blob("library/app", after.clone());
    same(
        b.get(&format!("/v2/app/blobs/{after_digest}"))
            .await
            .bytes(),
        &after,
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&after_digest)).unwrap(), after);
    assert_eq!(b.get("/v2/").await.status, 200);
    drop(b);
}

/// Fills running from memory are capped (8 at once, about 24 MiB each): a ninth that finds the
/// disk full fails (its body ends in an error, never a short success) instead of adding another
/// download and its memory; the others complete with the exact bytes.
#[tokio::test]
#[ignore = "needs root: mounts a size-limited tmpfs"]
async fn at_most_eight_fills_run_from_memory_at_once() {
    let mnt = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(mnt.path(), "8m");
    let fake = FakeRegistry::start().await;
    let data = tempfile::tempdir_in(mnt.path()).unwrap();
    let b = start_on(&fake, "", data).await;

    // The first fill fills the disk and goes on from memory; its open temp file keeps the disk
    // full while it runs. Then eight more fills, one after the other, each find the disk full.
    let mut fills = Vec::new();
    for i in 0..9u64 {
        let size = if i == 0 { 10 << 20 } else { 1 << 20 };
        let (layer, digest, release) = gated_blob(&fake, size, 300 + i, 1);
        let reader = b.stream(&format!("/v2/app/blobs/{digest}")).await;
        release.send_replace(size - 1000);
        until_metric(&b, ENOSPC, i + 1).await;
        fills.push((layer, reader, release));
    }
    for (i, (layer, reader, release)) in fills.into_iter().enumerate() {
        release.send_replace(layer.len());
        let got = reader.finish().await;
        if i < 8 {
            same(&Bytes::from(got.unwrap()), &layer);
        } else {
            assert!(got.is_err(), "the ninth fill from memory must fail");
        }
    }
    b.settled().await;
    assert!(files_in(&b.dir.path().join("blobs/sha256")).is_empty());
}
