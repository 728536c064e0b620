//! Size limits and eviction, over real sockets against the fake registry: `max_size` with its
//! watermarks under concurrent pulls, least-recently-used order (from the files' mtimes, which is
//! how berth remembers accesses across restarts), blobs protected by a reader or by a manifest just
//! served, and `max_age`.
//!
//! Last accesses older than a minute are set on the files directly while berth is stopped: that is
//! the on-disk form of the index, and it saves the tests from waiting for real time to pass.

use crate::support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Method;
use sha2::{Digest as _, Sha256};

use berth::oci::media;
use support::instance::{Berth, berth, gated_blob, same, start_with, until_metric};
use support::{FakeRegistry, random_bytes};

const MIB: usize = 1 << 20;

/// Every blob file: its name, and its size. Each file must hash to its name.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            name,
            "a file is not its name"
        );
        out.push((format!("sha256:{name}"), data.len() as u64));
    }
    out
}

fn cached(dir: &Path, digest: &str) -> bool {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

/// Sets a cached blob's last access (its mtime) to `ago` before now.
fn accessed_ago(dir: &Path, digest: &str, ago: Duration) {
    let path = dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

const HOUR: Duration = Duration::from_secs(3600);

/// Pulls `blobs` through `b` (one by one) and waits for their fills to end.
async fn pull_all(b: &Berth, blobs: &[(Bytes, String)]) {
    for (data, digest) in blobs {
        let got = b.get(&format!("/v2/app/blobs/{digest}")).await;
        assert_eq!(got.status, 200);
        same(got.bytes(), data);
    }
    b.settled().await;
}

fn blobs(fake: &FakeRegistry, sizes: &[usize], seed: u64) -> Vec<(Bytes, String)> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let data = random_bytes(*n, seed + i as u64);
            let digest = fake.put_blob("library/app", data.clone());
            (data, digest)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_keep_the_cache_under_max_size() {
    let fake = FakeRegistry::start().await;
    let all = blobs(&fake, &[MIB; 12], 100);
    let b = std::sync::Arc::new(
        start_with(
            &fake,
            r#"max_size = "8MiB"
               high_watermark = "90%"
               low_watermark = "50%""#,
            "",
            tempfile::tempdir().unwrap(),
        )
        .await,
    );
    let pulls: Vec<_> = all
        .iter()
        .cloned()
        .map(|(data, digest)| {
            let b = b.clone();
            tokio::spawn(async move {
                let got = b.get(&format!("/v2/app/blobs/{digest}")).await;
                assert_eq!(got.status, 200);
                same(got.bytes(), &data);
            })
        })
        .collect();
    for p in pulls {
        p.await.unwrap();
    }
    b.settled().await;

    let on_disk = files(b.dir.path());
    let total: u64 = on_disk.iter().map(|(_, n)| n).sum();
    assert!(total <= 8 * MIB as u64, "{total} bytes on disk");
    assert_eq!(b.counter("berth_cache_bytes").await, total);
    assert_eq!(b.counter("berth_cache_entries").await, on_disk.len() as u64);
    let evicted = b
        .counter("berth_cache_evictions_total{reason=\"size\"}")
        .await;
    // Room is reserved when a fill starts: of twelve at once, those that found it all taken by
    // the others (reserved, or being read) are served but not kept.
    let not_stored = b.counter("berth_cache_not_stored_total").await;
    assert_eq!(evicted + not_stored, 12 - on_disk.len() as u64);
    assert_eq!(
        b.counter("berth_cache_evicted_bytes_total{reason=\"size\"}")
            .await,
        evicted * MIB as u64
    );
    assert_eq!(b.counter("berth_cache_max_bytes").await, 8 * MIB as u64);
    assert_eq!(
        b.counter("berth_cache_high_watermark_bytes").await,
        (8.0 * MIB as f64 * 0.9) as u64
    );

    // Everything still pulls, evicted blobs from upstream again, with the same bytes.
    for (data, digest) in &all {
        let got = b.get(&format!("/v2/app/blobs/{digest}")).await;
        same(got.bytes(), data);
    }
    b.settled().await;
    let total: u64 = files(b.dir.path()).iter().map(|(_, n)| n).sum();
    assert!(total <= 8 * MIB as u64, "{total} bytes on disk");
}

#[tokio::test]
async fn the_least_recently_used_go_first_and_the_index_survives_a_restart() {
    let fake = FakeRegistry::start().await;
    let all = blobs(&fake, &[MIB; 4], 200);
    let (a, bb, c, d) = (&all[0].1, &all[1].1, &all[2].1, &all[3].1);
    let first = berth(&fake, "").await;
    pull_all(&first, &all[..3]).await;
    let dir = first.stop().await;
    accessed_ago(dir.path(), a, HOUR);
    accessed_ago(dir.path(), bb, 3 * HOUR);
    accessed_ago(dir.path(), c, 2 * HOUR);

    let storage = r#"max_size = "4MiB"
                     high_watermark = "80%"
                     low_watermark = "50%""#;
    let b = start_with(&fake, storage, "", dir).await;
    // Rebuilt from the files: three entries, 3 MiB.
    assert_eq!(b.counter("berth_cache_entries").await, 3);
    assert_eq!(b.counter("berth_cache_bytes").await, 3 * MIB as u64);
    // D takes the cache past 80% of 4 MiB: down to 50% (2 MiB) with D in it means two go, the
    // least recently used: B, then C.
    pull_all(&b, &all[3..]).await;
    let dir = b.dir.path();
    assert!(!cached(dir, bb) && !cached(dir, c), "B and C evicted");
    assert!(cached(dir, a) && cached(dir, d), "A and D kept");
    assert_eq!(
        b.counter("berth_cache_evictions_total{reason=\"size\"}")
            .await,
        2
    );
}

#[tokio::test]
async fn a_blob_being_read_is_not_evicted_and_its_reader_gets_every_byte() {
    let fake = FakeRegistry::start().await;
    // R is big enough that its response cannot sit whole in socket buffers: its reader stays
    // open while the test applies pressure.
    let all = blobs(&fake, &[32 * MIB, 2 * MIB, 4 * MIB], 300);
    let ((r_data, r), q, n) = (&all[0], &all[1].1, &all[2].1);
    let first = berth(&fake, "").await;
    pull_all(&first, &all[..2]).await;
    let dir = first.stop().await;
    accessed_ago(dir.path(), r, 3 * HOUR);
    accessed_ago(dir.path(), q, 2 * HOUR);

    let storage = r#"max_size = "40MiB"
                     high_watermark = "90%"
                     low_watermark = "50%""#;
    let b = start_with(&fake, storage, "", dir).await;
    let mut reading = b.stream(&format!("/v2/app/blobs/{r}")).await;
    reading.read_at_least(1).await;
    // N takes the cache past 36 MiB. R is the least recently used, but it is being read: Q goes.
    pull_all(&b, &all[2..]).await;
    assert!(cached(b.dir.path(), r), "R is read now");
    assert!(!cached(b.dir.path(), q), "Q evicted instead");
    assert!(cached(b.dir.path(), n));
    let got = reading.finish().await.expect("R's body completes");
    same(&Bytes::from(got), r_data);
}

#[tokio::test]
async fn blobs_named_by_a_manifest_just_served_stay_and_a_newcomer_that_cannot_fit_is_served_not_kept()
 {
    let fake = FakeRegistry::start().await;
    let all = blobs(&fake, &[MIB, MIB, MIB, MIB, 2 * MIB], 400);
    let ((_, config), (_, layer), (_, other), (_, n)) = (&all[0], &all[1], &all[2], &all[3]);
    let manifest_json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{MIB}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{MIB}}}]}}"#,
        media::OCI_MANIFEST
    );
    let manifest = fake.put_tagged("library/app", "1", media::OCI_MANIFEST, manifest_json);
    let first = berth(&fake, "").await;
    pull_all(&first, &all[..3]).await;
    assert_eq!(first.get("/v2/app/manifests/1").await.status, 200);
    let dir = first.stop().await;
    for (i, d) in [config, layer, other, &manifest].into_iter().enumerate() {
        accessed_ago(dir.path(), d, (3 + i as u32) * HOUR);
    }

    let storage = r#"max_size = "4MiB"
                     high_watermark = "80%"
                     low_watermark = "50%"
                     keep_referenced = "10m""#;
    let b = start_with(&fake, storage, "", dir).await;
    // The manifest is served: it, its config and its layer are protected for ten minutes.
    assert_eq!(b.get("/v2/app/manifests/1").await.status, 200);
    // N needs room: the only unprotected entry (`other`) goes, although it is not the oldest.
    pull_all(&b, &all[3..4]).await;
    let dir = b.dir.path();
    assert!(!cached(dir, other));
    for d in [config, layer, &manifest, n] {
        assert!(cached(dir, d), "{d} kept");
    }
    // A 2 MiB newcomer cannot fit beside 2 MiB of protected content even if N went: it is served
    // whole and correct, N stays, and the cache stays under max_size.
    let (big_data, big) = &all[4];
    let got = b.get(&format!("/v2/app/blobs/{big}")).await;
    same(got.bytes(), big_data);
    b.settled().await;
    assert!(!cached(dir, big) && cached(dir, n));
    assert_eq!(b.counter("berth_cache_not_stored_total").await, 1);
    let total: u64 = files(dir).iter().map(|(_, n)| n).sum();
    assert!(total <= 4 * MIB as u64, "{total} bytes on disk");
}

#[tokio::test]
async fn what_nobody_pulled_for_max_age_is_evicted() {
    let fake = FakeRegistry::start().await;
    let all = blobs(&fake, &[MIB, MIB], 500);
    let ((old_data, old), (_, recent)) = (&all[0], &all[1]);
    let first = berth(&fake, "").await;
    pull_all(&first, &all).await;
    let dir = first.stop().await;
    accessed_ago(dir.path(), old, 48 * HOUR);
    accessed_ago(dir.path(), recent, HOUR);

    let b = start_with(&fake, r#"max_age = "1d""#, "", dir).await;
    // The maintenance pass runs once at start.
    until_metric(&b, "berth_cache_evictions_total{reason=\"age\"}", 1).await;
    assert!(!cached(b.dir.path(), old));
    assert!(cached(b.dir.path(), recent));
    assert_eq!(b.counter("berth_cache_entries").await, 1);
    // Pulled again, it comes from upstream again.
    fake.reset_counts();
    let got = b.get(&format!("/v2/app/blobs/{old}")).await;
    same(got.bytes(), old_data);
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{old}")),
        1
    );
}

#[tokio::test]
async fn a_pull_records_the_access_on_the_file() {
    let fake = FakeRegistry::start().await;
    let all = blobs(&fake, &[1024], 600);
    let first = berth(&fake, "").await;
    pull_all(&first, &all).await;
    let dir = first.stop().await;
    let digest = &all[0].1;
    accessed_ago(dir.path(), digest, 5 * HOUR);

    let b = start_with(&fake, "", "", dir).await;
    pull_all(&b, &all).await;
    let path = b.blob_file(digest);
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
    assert!(age < HOUR, "mtime not updated: {age:?} old");
}

/// Bytes in every file under `dir` (cached blobs, fills in `tmp/`, manifests): what the volume
/// holding the cache sees.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        total += if meta.is_dir() {
            bytes_under(&e.path())
        } else {
            meta.len()
        };
    }
    total
}

/// Waits until the fill in `tmp/` has at least `n` bytes written (bounded: a few seconds).
async fn until_written(dir: &Path, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bytes_under(&dir.join("tmp")) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fill never wrote {n} bytes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_made_when_a_fill_of_known_size_starts_not_when_it_commits() {
    let fake = FakeRegistry::start().await;
    let first = blobs(&fake, &[5 * MIB], 300);
    let (second, second_digest, release) = gated_blob(&fake, 5 * MIB, 301, 1);
    let b = start_with(
        &fake,
        r#"max_size = "6MiB""#,
        "",
        tempfile::tempdir().unwrap(),
    )
    .await;
    pull_all(&b, &first).await;
    assert!(cached(b.dir.path(), &first[0].1));

    // The second fill is held open with 4 of its 5 MiB written.
    let path = format!("/v2/app/blobs/{second_digest}");
    let mut client = b.stream(&path).await;
    release.send_replace(4 * MIB);
    client.read_at_least(4 * MIB - 1).await;
    until_written(b.dir.path(), 4 * MIB as u64).await;
    let on_disk = bytes_under(b.dir.path());
    assert!(
        on_disk <= 6 * MIB as u64,
        "{on_disk} bytes on disk with max_size 6 MiB while the second blob is written"
    );
    assert!(
        !cached(b.dir.path(), &first[0].1),
        "the first blob made room"
    );

    release.send_replace(usize::MAX - 1);
    same(&Bytes::from(client.finish().await.unwrap()), &second);
    b.settled().await;
    assert!(cached(b.dir.path(), &second_digest));
    assert!(bytes_under(b.dir.path()) <= 6 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_gives_its_reserved_room_back() {
    let fake = FakeRegistry::start().await;
    let (_, broken, release) = gated_blob(&fake, 5 * MIB, 310, 1);
    let after = blobs(&fake, &[5 * MIB], 311);
    let b = start_with(
        &fake,
        r#"max_size = "6MiB""#,
        "resume_attempts = 0",
        tempfile::tempdir().unwrap(),
    )
    .await;
    let mut client = b.stream(&format!("/v2/app/blobs/{broken}")).await;
    release.send_replace(MIB);
    client.read_at_least(MIB - 1).await;
    // Broken off, not resumed: the fill fails.
    release.send_replace(usize::MAX);
    assert!(client.finish().await.is_err());
    b.settled().await;
    assert_eq!(bytes_under(&b.dir.path().join("tmp")), 0);
    // Had the 5 MiB stayed reserved, this one would find no room and not be kept.
    pull_all(&b, &after).await;
    assert!(cached(b.dir.path(), &after[0].1));
    assert_eq!(
        b.counter("berth_cache_not_stored_total").await,
        0,
        "{}",
        b.metric("berth_cache").await
    );
}
