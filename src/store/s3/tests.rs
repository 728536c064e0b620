//! The bucket tier over `object_store`'s in-memory store, wrapped to inject faults
//! ([`super::testing`]): a part upload that fails, a completion that fails, a GET whose body is
//! held back, the bucket down.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStoreExt, PutOptions, PutPayload};

use super::testing::{Faults, Faulty};
use super::{BlobRead, Bucket, BucketError, BucketMetrics, ObjectInfo, Stored, TagRecord};
use crate::oci::Digest;

const PART: usize = 64 * 1024;

/// A bucket over a fault-injecting in-memory store, with small parts, under prefix `mirror/`.
fn bucket() -> (Bucket, Arc<Faults>) {
    let (store, faults) = Faulty::new(Arc::new(InMemory::new()));
    let b =
        Bucket::with_store(Arc::new(store), "mirror/", BucketMetrics::new()).with_part_size(PART);
    (b, faults)
}

/// `n` bytes of a pattern that differs between parts.
fn blob(n: usize) -> Bytes {
    (0..n)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// `data` as a body of 10,000-byte chunks.
fn body(data: &Bytes) -> impl Stream<Item = Result<Bytes, std::io::Error>> + use<> {
    let chunks: Vec<_> = data
        .chunks(10_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

async fn read_all(r: BlobRead) -> Vec<u8> {
    let parts: Vec<Bytes> = r.body.try_collect().await.unwrap();
    parts.concat()
}

fn aborts(b: &Bucket, reason: &str) -> u64 {
    b.metrics().aborts.with_label_values(&[reason]).get()
}

fn requests(b: &Bucket, op: &str, outcome: &str) -> u64 {
    b.metrics().requests.with_label_values(&[op, outcome]).get()
}

/// `n` uploads of `d` were aborted for `reason` (and the store saw as many aborts), none was
/// completed, and nothing is under the key.
async fn assert_aborted(b: &Bucket, faults: &Faults, d: &Digest, reason: &str, n: usize) {
    assert_eq!(
        faults.aborts.load(Ordering::SeqCst),
        n,
        "aborts the store saw"
    );
    assert_eq!(aborts(b, reason), n as u64, "aborts for {reason}");
    assert_eq!(faults.completes.load(Ordering::SeqCst), 0, "completions");
    assert!(
        b.head_blob(d).await.unwrap().is_none(),
        "nothing under the key"
    );
}

#[tokio::test]
async fn a_matching_upload_is_visible_and_reads_back_by_range() {
    let (b, faults) = bucket();
    let data = blob(3 * PART + 123);
    let d = Digest::of(&data);
    let stored = b
        .put_blob(&d, Some(data.len() as u64), body(&data))
        .await
        .unwrap();
    assert_eq!(stored, Stored::Uploaded);
    assert_eq!(
        faults.parts.load(Ordering::SeqCst),
        4,
        "3 full parts and the rest"
    );
    assert_eq!(faults.completes.load(Ordering::SeqCst), 1);
    assert_eq!(faults.aborts.load(Ordering::SeqCst), 0);
    assert_eq!(
        faults.started.lock().unwrap().as_slice(),
        [format!("mirror/blobs/sha256/{}", d.hex())]
    );

    let head = b.head_blob(&d).await.unwrap().unwrap();
    assert_eq!(
        (head.digest.clone(), head.size),
        (d.clone(), data.len() as u64)
    );
    let whole = b.get_blob(&d, None).await.unwrap().unwrap();
    assert_eq!(whole.size, data.len() as u64);
    assert_eq!(read_all(whole).await, data);
    // A range across a part boundary.
    let r = (PART as u64 - 10)..(2 * PART as u64 + 5);
    let part = b.get_blob(&d, Some(r.clone())).await.unwrap().unwrap();
    assert_eq!(
        (part.size, part.range.clone()),
        (data.len() as u64, r.clone())
    );
    assert_eq!(
        read_all(part).await,
        &data[r.start as usize..r.end as usize]
    );

    let listed: Vec<ObjectInfo> = b.list_blobs().try_collect().await.unwrap();
    assert_eq!(requests(&b, "list", "ok"), 1);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].digest.clone(), listed[0].size),
        (d.clone(), data.len() as u64)
    );

    // Already there: the body is not read (it would fail if it were).
    let poisoned = stream::iter([Err::<Bytes, _>("must not be read")]);
    assert_eq!(
        b.put_blob(&d, Some(data.len() as u64), poisoned)
            .await
            .unwrap(),
        Stored::AlreadyThere
    );
    assert_eq!(faults.started.lock().unwrap().len(), 1, "no second upload");

    b.delete_blob(&d).await.unwrap();
    assert!(b.head_blob(&d).await.unwrap().is_none());
    assert!(b.get_blob(&d, None).await.unwrap().is_none());
    b.delete_blob(&d).await.unwrap();
    let m = b.metrics();
    assert_eq!(m.requests.with_label_values(&["upload", "ok"]).get(), 1);
    assert_eq!(m.requests.with_label_values(&["upload", "exists"]).get(), 1);
    assert!(m.requests.with_label_values(&["head", "not_found"]).get() >= 2);
}

#[tokio::test]
async fn wrong_bytes_are_never_completed() {
    let (b, faults) = bucket();
    let right = blob(2 * PART + 7);
    let mut wrong = right.to_vec();
    wrong[PART + 3] ^= 1;
    let wrong = Bytes::from(wrong);
    let d = Digest::of(&right);
    let err = b
        .put_blob(&d, Some(right.len() as u64), body(&wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Digest { .. }), "{err}");
    assert_aborted(&b, &faults, &d, "digest", 1).await;
    assert_eq!(requests(&b, "upload", "mismatch"), 1);
}

#[tokio::test]
async fn a_body_of_the_wrong_size_is_aborted() {
    let (b, faults) = bucket();
    let data = blob(2 * PART);
    let d = Digest::of(&data);
    // Longer than announced: stopped as soon as it passes the size (a part is already up).
    let announced = PART as u64 + 20_000;
    let err = b
        .put_blob(&d, Some(announced), body(&data))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BucketError::Size { expected, actual } if expected == announced && actual > expected),
        "{err}"
    );
    assert_eq!(faults.started.lock().unwrap().len(), 1);
    // Shorter than announced (the right bytes, but a size that does not match is refused too).
    let err = b
        .put_blob(&d, Some(data.len() as u64 + 1), body(&data))
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Size { .. }), "{err}");
    assert_aborted(&b, &faults, &d, "size", 2).await;
}

/// A blob within one part: held in memory, verified, then one PUT; no multipart upload at all.
#[tokio::test]
async fn a_small_blob_goes_up_in_one_put_after_it_was_verified() {
    let (b, faults) = bucket();
    let data = blob(PART - 1);
    let d = Digest::of(&data);
    let mut wrong = data.to_vec();
    wrong[0] ^= 1;
    let err = b
        .put_blob(&d, None, body(&Bytes::from(wrong)))
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Digest { .. }), "{err}");
    let err = b
        .put_blob(&d, Some(PART as u64 - 2), body(&data))
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Size { .. }), "{err}");
    assert!(b.head_blob(&d).await.unwrap().is_none());
    assert_eq!(
        b.put_blob(&d, Some(data.len() as u64), body(&data))
            .await
            .unwrap(),
        Stored::Uploaded
    );
    assert!(
        faults.started.lock().unwrap().is_empty(),
        "no multipart upload"
    );
    assert_eq!(faults.aborts.load(Ordering::SeqCst), 0);
    assert_eq!(
        read_all(b.get_blob(&d, None).await.unwrap().unwrap()).await,
        data
    );
    // The empty blob too.
    let empty = Digest::of(b"");
    assert_eq!(
        b.put_blob(&empty, Some(0), body(&Bytes::new()))
            .await
            .unwrap(),
        Stored::Uploaded
    );
    assert_eq!(b.head_blob(&empty).await.unwrap().map(|i| i.size), Some(0));
}

#[tokio::test]
async fn a_source_that_breaks_off_is_aborted() {
    let (b, faults) = bucket();
    let data = blob(2 * PART);
    let d = Digest::of(&data);
    let broken = body(&data.slice(..PART + 10))
        .chain(stream::iter([Err(std::io::Error::other("upstream reset"))]));
    let err = b.put_blob(&d, None, broken).await.unwrap_err();
    assert!(
        matches!(&err, BucketError::Source(m) if m.contains("upstream reset")),
        "{err}"
    );
    assert_aborted(&b, &faults, &d, "source", 1).await;
}

#[tokio::test]
async fn a_part_that_fails_halfway_aborts_the_upload() {
    let (b, faults) = bucket();
    faults.fail_part.store(2, Ordering::SeqCst);
    let data = blob(4 * PART);
    let d = Digest::of(&data);
    let err = b
        .put_blob(&d, Some(data.len() as u64), body(&data))
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Store(_)), "{err}");
    assert!(err.to_string().contains("part upload broke off"), "{err}");
    assert_aborted(&b, &faults, &d, "error", 1).await;
    assert_eq!(requests(&b, "upload", "error"), 1);
}

#[tokio::test]
async fn a_completion_that_fails_aborts_the_upload() {
    let (b, faults) = bucket();
    faults.fail_complete.store(true, Ordering::SeqCst);
    let data = blob(2 * PART + 1);
    let d = Digest::of(&data);
    let err = b.put_blob(&d, None, body(&data)).await.unwrap_err();
    assert!(err.to_string().contains("complete failed"), "{err}");
    assert_aborted(&b, &faults, &d, "error", 1).await;
}

#[tokio::test]
async fn dropping_the_upload_midway_aborts_it() {
    let (b, faults) = bucket();
    let data = blob(3 * PART);
    let d = Digest::of(&data);
    // Two parts' worth, then a body that never ends (the upstream stalls).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stalled = body(&data.slice(..2 * PART + 5)).chain(tokio_stream_from(rx));
    let task = {
        let (b, d) = (b.clone(), d.clone());
        tokio::spawn(async move { b.put_blob(&d, Some(3 * PART as u64), stalled).await })
    };
    faults
        .until("two parts", |f| f.parts.load(Ordering::SeqCst) >= 2)
        .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    faults
        .until("the abort", |f| f.aborts.load(Ordering::SeqCst) == 1)
        .await;
    drop(tx);
    assert_aborted(&b, &faults, &d, "dropped", 1).await;
}

/// The upload stays the guard's until the server confirmed its completion: a drop while the
/// completion is under way still aborts it.
#[tokio::test]
async fn dropping_the_upload_while_it_completes_aborts_it() {
    let (b, faults) = bucket();
    faults.hold_complete.store(true, Ordering::SeqCst);
    let data = blob(2 * PART + 1);
    let d = Digest::of(&data);
    let task = {
        let (b, d, data) = (b.clone(), d.clone(), data.clone());
        tokio::spawn(async move { b.put_blob(&d, None, body(&data)).await })
    };
    faults
        .until("the completion", |f| {
            f.completing.load(Ordering::SeqCst) == 1
        })
        .await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    faults
        .until("the abort", |f| f.aborts.load(Ordering::SeqCst) == 1)
        .await;
    assert_aborted(&b, &faults, &d, "dropped", 1).await;
}

/// A stream from an mpsc receiver (without pulling in tokio-stream).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test]
async fn a_slow_get_streams_what_has_arrived() {
    let (b, faults) = bucket();
    let data = blob(8 * 1024);
    let d = Digest::of(&data);
    b.put_blob(&d, None, body(&data)).await.unwrap();
    faults.hold_get.store(true, Ordering::SeqCst);
    let mut r = b.get_blob(&d, None).await.unwrap().unwrap();
    // The first piece is there while the rest is held back: nothing waits for the whole body.
    let first = r.body.next().await.unwrap().unwrap();
    assert_eq!(first, data.slice(..1024));
    let held = tokio::time::timeout(Duration::from_millis(50), r.body.next()).await;
    assert!(held.is_err(), "the rest is held back by the server");
    faults.release.notify_one();
    let rest: Vec<Bytes> = r.body.try_collect().await.unwrap();
    assert_eq!(rest.concat(), &data[1024..]);
}

#[tokio::test]
async fn manifests_keep_their_media_type_and_are_checked() {
    let (b, _) = bucket();
    let m = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let d = Digest::of(&m);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    assert!(b.get_manifest(&d, 1 << 20).await.unwrap().is_none());
    let err = b
        .put_manifest(&Digest::of(b"other"), mt, m.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Digest { .. }), "{err}");
    b.put_manifest(&d, mt, m.clone()).await.unwrap();
    assert_eq!(
        b.get_manifest(&d, 1 << 20).await.unwrap(),
        Some((mt.to_owned(), m.clone()))
    );
    let err = b.get_manifest(&d, 4).await.unwrap_err();
    assert!(matches!(err, BucketError::Invalid(_)), "{err}");
    assert_eq!(
        b.head_manifest(&d).await.unwrap().map(|i| i.size),
        Some(m.len() as u64)
    );
    let listed: Vec<ObjectInfo> = b.list_manifests().try_collect().await.unwrap();
    assert_eq!(listed.iter().map(|i| &i.digest).collect::<Vec<_>>(), [&d]);
    assert!(
        b.list_blobs()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );
    b.delete_manifest(&d).await.unwrap();
    assert!(b.head_manifest(&d).await.unwrap().is_none());
}

#[tokio::test]
async fn a_manifest_that_does_not_hash_to_its_key_is_refused() {
    let (b, _) = bucket();
    let d = Digest::of(b"the real one");
    // Written behind berth's back (another tool, a bit flip).
    let key = b.manifest_key(&d);
    b.store
        .put_opts(
            &key,
            PutPayload::from_static(b"not it"),
            PutOptions {
                attributes: Attributes::from_iter([(Attribute::ContentType, "x/y")]),
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
    let err = b.get_manifest(&d, 1 << 20).await.unwrap_err();
    assert!(err.to_string().contains("does not hash"), "{err}");
}

#[tokio::test]
async fn tag_records_round_trip() {
    let (b, _) = bucket();
    assert!(
        b.get_tag("docker.io", "library/alpine", "3.19")
            .await
            .unwrap()
            .is_none()
    );
    let rec = TagRecord {
        digest: Digest::of(b"m").to_string(),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        resolved_at: 1_700_000_000,
    };
    b.put_tag("docker.io", "library/alpine", "3.19", &rec)
        .await
        .unwrap();
    assert_eq!(
        b.get_tag("docker.io", "library/alpine", "3.19")
            .await
            .unwrap(),
        Some(rec.clone())
    );
    assert_eq!(
        b.tag_key("docker.io", "library/alpine", "3.19").to_string(),
        "mirror/tags/docker.io/library/alpine/3.19"
    );
    // Another upstream's tag of the same name is another record.
    assert!(
        b.get_tag("quay.io", "library/alpine", "3.19")
            .await
            .unwrap()
            .is_none()
    );
    // A record that is not JSON is an error, not an answer.
    b.store
        .put(
            &b.tag_key("docker.io", "x", "y"),
            PutPayload::from_static(b"{"),
        )
        .await
        .unwrap();
    assert!(matches!(
        b.get_tag("docker.io", "x", "y").await.unwrap_err(),
        BucketError::Invalid(_)
    ));
}

/// A bucket that fails: every read is an error (never "not there"), counted as one; an upload
/// does not start when the HEAD before it fails.
#[tokio::test]
async fn a_failing_bucket_answers_errors_not_absence() {
    let (b, faults) = bucket();
    let data = blob(100);
    let d = Digest::of(&data);
    b.put_blob(&d, None, body(&data)).await.unwrap();
    b.put_tag(
        "a.io",
        "r",
        "t",
        &TagRecord {
            digest: d.to_string(),
            media_type: "x/y".into(),
            resolved_at: 1,
        },
    )
    .await
    .unwrap();
    faults.down.store(true, Ordering::SeqCst);
    assert!(matches!(b.head_blob(&d).await, Err(BucketError::Store(_))));
    assert!(matches!(
        b.get_blob(&d, None).await,
        Err(BucketError::Store(_))
    ));
    assert!(matches!(
        b.get_manifest(&d, 1024).await,
        Err(BucketError::Store(_))
    ));
    assert!(matches!(
        b.get_tag("a.io", "r", "t").await,
        Err(BucketError::Store(_))
    ));
    let listed: Vec<_> = b.list_blobs().collect().await;
    assert!(
        matches!(listed.as_slice(), [Err(BucketError::Store(_))]),
        "{listed:?}"
    );
    let other = blob(200);
    let err = b
        .put_blob(&Digest::of(&other), None, body(&other))
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Store(_)), "{err}");
    let m = b.metrics();
    assert_eq!(m.requests.with_label_values(&["head", "error"]).get(), 2);
    assert_eq!(m.requests.with_label_values(&["get", "error"]).get(), 3);
    assert_eq!(m.requests.with_label_values(&["list", "error"]).get(), 1);
    assert_eq!(m.requests.with_label_values(&["list", "ok"]).get(), 0);
}

#[tokio::test]
async fn a_manifest_without_its_media_type_is_an_error() {
    let (b, _) = bucket();
    let m = Bytes::from_static(b"{}");
    let d = Digest::of(&m);
    b.store
        .put(&b.manifest_key(&d), PutPayload::from(m))
        .await
        .unwrap();
    let err = b.get_manifest(&d, 1024).await.unwrap_err();
    assert!(err.to_string().contains("no Content-Type"), "{err}");
}

#[test]
fn connecting_needs_resolved_credentials() {
    // A table that skipped validation has no credentials: refused, not sent unsigned.
    let s3: crate::config::S3Config = toml::from_str("bucket = \"berth\"\n").unwrap();
    let err = Bucket::connect(&s3, BucketMetrics::new()).unwrap_err();
    assert!(matches!(err, BucketError::Config(_)), "{err}");
}

#[tokio::test]
async fn stale_uploads_need_an_s3_bucket() {
    let (b, _) = bucket();
    let err = b.abort_stale_uploads(Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, BucketError::Config(_)), "{err}");
}

#[test]
fn keys_without_a_prefix_start_at_the_root() {
    let b = Bucket::with_store(Arc::new(InMemory::new()), "", BucketMetrics::new());
    let d = Digest::of(b"x");
    assert_eq!(
        b.blob_key(&d).to_string(),
        format!("blobs/sha256/{}", d.hex())
    );
    assert_eq!(
        b.manifest_key(&d).to_string(),
        format!("manifests/sha256/{}", d.hex())
    );
}

// ---- eviction of the share (`evict`) ----

use super::evict::{Kind, Limits, Reason};

fn share_limits(max_size: Option<u64>, max_age: Option<Duration>) -> Limits {
    Limits {
        max_size,
        max_age,
        high_watermark: 0.95,
        low_watermark: 0.85,
        grace: Duration::ZERO,
    }
}

/// Three 1,000-byte blobs with origin markers of two upstreams, and a manifest; returns their
/// digests (blobs a, b, c in upload order, then the manifest).
async fn filled_share(b: &Bucket) -> (Vec<Digest>, Digest) {
    let mut blobs = Vec::new();
    for seed in 0..3u8 {
        let data = Bytes::from(vec![seed; 1000]);
        let d = Digest::of(&data);
        b.put_blob(&d, Some(1000), body(&data)).await.unwrap();
        b.put_origin("docker.io", &d).await.unwrap();
        b.put_origin("quay.io", &d).await.unwrap();
        blobs.push(d);
    }
    let m = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let md = Digest::of(&m);
    b.put_manifest(&md, "application/vnd.oci.image.manifest.v1+json", m)
        .await
        .unwrap();
    (blobs, md)
}

async fn exists(b: &Bucket, key: &Path) -> bool {
    b.object_store().head(key).await.is_ok()
}

#[tokio::test]
async fn eviction_keeps_the_recently_pulled_and_deletes_the_least_recent_with_its_markers() {
    let (b, _) = bucket();
    let (blobs, manifest) = filled_share(&b).await;
    // `a` was pulled by another replica (its marker), `c` by this one (not flushed yet): `b`,
    // uploaded between them and never pulled since, is the least recent.
    b.put_access(&blobs[0]).await.unwrap();
    let later = SystemTime::now() + Duration::from_millis(1);
    let touches = HashMap::from([(blobs[2].clone(), later), (manifest.clone(), later)]);
    // 3,019 bytes over a share of 3,000 (high 2,850, low 2,550): one blob goes.
    let pass = b
        .evict(&share_limits(Some(3000), None), &touches)
        .await
        .unwrap();
    assert_eq!((pass.objects, pass.bytes), (4, 3019));
    let gone: Vec<_> = pass
        .evicted
        .iter()
        .map(|(e, r)| (e.kind, e.digest.clone(), *r))
        .collect();
    assert_eq!(gone, vec![(Kind::Blob, blobs[1].clone(), Reason::Size)]);
    assert!(!exists(&b, &b.blob_key(&blobs[1])).await);
    for u in ["docker.io", "quay.io"] {
        assert!(!exists(&b, &b.origin_key(u, &blobs[1])).await, "{u}");
        assert!(exists(&b, &b.origin_key(u, &blobs[0])).await, "{u}");
    }
    for kept in [&blobs[0], &blobs[2]] {
        assert!(exists(&b, &b.blob_key(kept)).await);
    }
    assert!(exists(&b, &b.access_key(&blobs[0])).await);
    assert!(exists(&b, &b.manifest_key(&manifest)).await);
    let m = b.metrics();
    assert_eq!(m.evictions.with_label_values(&["size"]).get(), 1);
    assert_eq!(m.evicted_bytes.with_label_values(&["size"]).get(), 1000);
    assert_eq!((m.share_bytes.get(), m.share_objects.get()), (2019, 3));
    // Under the low watermark now: a second pass deletes nothing.
    let again = b
        .evict(&share_limits(Some(3000), None), &touches)
        .await
        .unwrap();
    assert!(again.evicted.is_empty());
}

#[tokio::test]
async fn eviction_by_age_removes_manifests_and_blobs_alike_but_not_within_the_grace() {
    let (b, _) = bucket();
    let (blobs, manifest) = filled_share(&b).await;
    let mut limits = share_limits(None, Some(Duration::from_secs(60)));
    limits.grace = Duration::from_secs(3600);
    // Two hours on, everything is older than max_age; this replica pulled `a` a second ago.
    let now = SystemTime::now() + Duration::from_secs(7200);
    let touches = HashMap::from([(blobs[0].clone(), now - Duration::from_secs(1))]);
    let pass = b.evict_at(&limits, &touches, now).await.unwrap();
    let mut gone: Vec<_> = pass.evicted.iter().map(|(e, _)| e.digest.clone()).collect();
    gone.sort();
    let mut want = vec![blobs[1].clone(), blobs[2].clone(), manifest.clone()];
    want.sort();
    assert_eq!(gone, want, "all but the one pulled within the grace");
    assert!(pass.evicted.iter().all(|(_, r)| *r == Reason::Age));
    assert!(!exists(&b, &b.manifest_key(&manifest)).await);
    assert!(exists(&b, &b.blob_key(&blobs[0])).await);
    assert_eq!(b.metrics().evictions.with_label_values(&["age"]).get(), 3);
    // Now (not two hours on) the rest is younger than the grace: nothing goes.
    let pass = b.evict(&limits, &HashMap::new()).await.unwrap();
    assert!(pass.evicted.is_empty());
}

#[tokio::test]
async fn a_pull_recorded_after_the_listing_keeps_the_victim() {
    let (b, faults) = bucket();
    filled_share(&b).await;
    let limits = share_limits(Some(2000), None);
    let victims = super::evict::plan(
        &b.share(&HashMap::new()).await.unwrap(),
        &limits,
        SystemTime::now(),
    );
    assert!(victims.len() >= 2, "{victims:?}");
    // Another replica pulls the first victim between the listing and its delete.
    faults.pull_on_check.store(true, Ordering::SeqCst);
    let pass = b.evict(&limits, &HashMap::new()).await.unwrap();
    assert_eq!(pass.kept, 1);
    let key = |e: &super::evict::Entry| match e.kind {
        Kind::Blob => b.blob_key(&e.digest),
        Kind::Manifest => b.manifest_key(&e.digest),
    };
    assert!(
        exists(&b, &key(&victims[0].0)).await,
        "the pulled one stays"
    );
    assert_eq!(pass.evicted, victims[1..].to_vec());
    for (e, _) in &pass.evicted {
        assert!(!exists(&b, &key(e)).await);
    }
}

#[tokio::test]
async fn a_failing_delete_ends_the_pass_with_an_error_and_keeps_the_object() {
    let (b, faults) = bucket();
    let (blobs, _) = filled_share(&b).await;
    faults.fail_deletes.store(true, Ordering::SeqCst);
    let e = b
        .evict(&share_limits(Some(1000), None), &HashMap::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("delete refused"), "{e}");
    for d in &blobs {
        assert!(exists(&b, &b.blob_key(d)).await);
    }
    assert_eq!(b.metrics().evictions.with_label_values(&["size"]).get(), 0);
}

#[tokio::test]
async fn a_failing_listing_fails_the_pass_before_any_delete() {
    let (b, faults) = bucket();
    let (blobs, _) = filled_share(&b).await;
    faults.down.store(true, Ordering::SeqCst);
    assert!(
        b.evict(&share_limits(Some(1), None), &HashMap::new())
            .await
            .is_err()
    );
    faults.down.store(false, Ordering::SeqCst);
    for d in &blobs {
        assert!(exists(&b, &b.blob_key(d)).await);
    }
}

#[tokio::test]
async fn tag_records_are_listed_by_key_and_deleted() {
    let (b, _) = bucket();
    let rec = TagRecord {
        digest: Digest::of(b"m").to_string(),
        media_type: "application/json".into(),
        resolved_at: 1,
    };
    b.put_tag("docker.io", "library/app", "1", &rec)
        .await
        .unwrap();
    b.put_tag("quay.io", "a/b/c", "v2", &rec).await.unwrap();
    let mut tags = b.list_tags().await.unwrap();
    tags.sort();
    let t = |u: &str, r: &str, g: &str| (u.to_owned(), r.to_owned(), g.to_owned());
    assert_eq!(
        tags,
        vec![
            t("docker.io", "library/app", "1"),
            t("quay.io", "a/b/c", "v2")
        ]
    );
    b.delete_tag("quay.io", "a/b/c", "v2").await.unwrap();
    assert_eq!(
        b.list_tags().await.unwrap(),
        vec![t("docker.io", "library/app", "1")]
    );
    assert!(b.get_tag("quay.io", "a/b/c", "v2").await.unwrap().is_none());
}

#[tokio::test]
async fn a_pass_drops_access_markers_whose_object_never_arrived_once_old() {
    let (b, _) = bucket();
    let (blobs, _) = filled_share(&b).await;
    let lost = Digest::of(b"pulled, but its upload failed");
    b.put_access(&lost).await.unwrap();
    b.put_access(&blobs[0]).await.unwrap();
    let limits = share_limits(Some(1 << 30), None);
    // Young: it may belong to an upload still running.
    b.evict(&limits, &HashMap::new()).await.unwrap();
    assert!(exists(&b, &b.access_key(&lost)).await);
    // A day on: dropped; the markers of objects that are there stay.
    let later = SystemTime::now() + super::evict::ORPHAN_MARKER_AGE + Duration::from_secs(60);
    let pass = b.evict_at(&limits, &HashMap::new(), later).await.unwrap();
    assert!(pass.evicted.is_empty());
    assert!(!exists(&b, &b.access_key(&lost)).await);
    assert!(exists(&b, &b.access_key(&blobs[0])).await);
}

#[tokio::test]
async fn a_failing_pass_is_reported_by_the_tier_and_counts_no_share() {
    let (b, faults) = bucket();
    filled_share(&b).await;
    let tier = crate::tier::Tier::new(Arc::new(b));
    faults.down.store(true, Ordering::SeqCst);
    assert!(
        tier.evict_once(&share_limits(Some(1), None))
            .await
            .is_none()
    );
    let (_, text) = tier.last_error().lock().unwrap().clone().unwrap();
    assert!(text.starts_with("evicting from the bucket:"), "{text}");
    assert!(tier.share().lock().unwrap().is_none());
    assert!(!tier.readable(), "skipped like after any bucket error");
}

#[tokio::test]
async fn verify_reports_what_it_could_not_delete_and_fails_without_a_listing() {
    let (b, faults) = bucket();
    let bad = Digest::of(b"promised");
    b.object_store()
        .put(&b.blob_key(&bad), PutPayload::from_static(b"delivered"))
        .await
        .unwrap();
    faults.fail_deletes.store(true, Ordering::SeqCst);
    let r = crate::verify::bucket::run(&b).await.unwrap();
    assert!(r.deleted.is_empty());
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].1.contains("deleting it: "), "{:?}", r.errors);
    assert_eq!(r.exit_code(), 2);
    assert!(exists(&b, &b.blob_key(&bad)).await);
    faults.down.store(true, Ordering::SeqCst);
    assert!(crate::verify::bucket::run(&b).await.is_err());
}

/// A vouched upload (`tier::tee`): the upload's body and the verdict of whoever hashed it.
fn vouched(
    b: &Arc<Bucket>,
    d: &Digest,
    size: Option<u64>,
    data: &Bytes,
) -> (
    tokio::task::JoinHandle<Result<Stored, BucketError>>,
    tokio::sync::watch::Sender<Option<bool>>,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let (b, d, data) = (b.clone(), d.clone(), data.clone());
    // No word (the sender dropped) is a "no".
    let verdict = async move {
        rx.wait_for(Option::is_some)
            .await
            .is_ok_and(|v| *v == Some(true))
    };
    let task =
        tokio::spawn(async move { b.put_blob_vouched(&d, size, body(&data), verdict).await });
    (task, tx)
}

#[tokio::test]
async fn a_vouched_upload_completes_only_on_its_sources_verdict() {
    let (b, faults) = bucket();
    let b = Arc::new(b);
    let data = blob(3 * PART + 5);
    let d = Digest::of(&data);
    let (task, verdict) = vouched(&b, &d, Some(data.len() as u64), &data);
    // Every byte is up (the parts), but nothing is visible until the verdict.
    let all_parts = async {
        while faults.parts.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_parts)
        .await
        .expect("the parts go up before the verdict");
    assert!(!task.is_finished(), "waits for the verdict");
    assert!(b.head_blob(&d).await.unwrap().is_none());
    verdict.send_replace(Some(true));
    assert_eq!(task.await.unwrap().unwrap(), Stored::Uploaded);
    let r = b.get_blob(&d, None).await.unwrap().unwrap();
    assert_eq!(read_all(r).await, data.as_ref());
    assert_eq!(faults.completes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_vouched_upload_is_aborted_when_its_source_says_no_or_goes_away() {
    let (b, faults) = bucket();
    let b = Arc::new(b);
    // The upload does not hash: it takes the source's word, so even the right bytes are
    // refused on a "no" (the fill found them wrong: the same bytes, hashed there).
    let data = blob(2 * PART + 9);
    let d = Digest::of(&data);
    let (task, verdict) = vouched(&b, &d, Some(data.len() as u64), &data);
    verdict.send_replace(Some(false));
    assert!(matches!(task.await.unwrap(), Err(BucketError::Unverified)));
    // A source that goes away without a word (a fill dropped mid-way).
    let (task, verdict) = vouched(&b, &d, Some(data.len() as u64), &data);
    drop(verdict);
    assert!(matches!(task.await.unwrap(), Err(BucketError::Unverified)));
    assert_aborted(&b, &faults, &d, "unverified", 2).await;
    assert_eq!(requests(&b, "upload", "unverified"), 2);
    // A verdict of yes does not make a body of the wrong size complete.
    let (task, verdict) = vouched(&b, &d, Some(data.len() as u64 + 1), &data);
    verdict.send_replace(Some(true));
    assert!(matches!(task.await.unwrap(), Err(BucketError::Size { .. })));
    assert_eq!(faults.completes.load(Ordering::SeqCst), 0);
    assert!(b.head_blob(&d).await.unwrap().is_none());
}

/// A bucket reading whole blobs as `streams` ranged GETs at once.
fn parallel_bucket(streams: usize) -> (Bucket, Arc<Faults>) {
    let (b, faults) = bucket();
    (b.with_read_streams(streams), faults)
}

const READ_PART: usize = super::READ_PART as usize;

#[tokio::test]
async fn parallel_ranges_are_handed_on_in_order_as_the_whole_object() {
    let (b, _) = parallel_bucket(3);
    // Five parts, the last one short: more parts than streams, so later parts wait their turn.
    let data = blob(4 * READ_PART + 12_345);
    let d = Digest::of(&data);
    b.put_blob(&d, None, body(&data)).await.unwrap();
    let r = b.get_blob(&d, None).await.unwrap().unwrap();
    assert_eq!(
        (r.size, r.range.clone()),
        (data.len() as u64, 0..data.len() as u64)
    );
    assert!(read_all(r).await == data, "the bytes, in order");
    // One GET of the object (its first part), one ranged GET for each later part.
    assert_eq!(requests(&b, "get", "ok"), 1);
    assert_eq!(requests(&b, "get_range", "ok"), 4);
}

#[tokio::test]
async fn a_small_or_empty_blob_is_one_get_whatever_the_streams() {
    let (b, _) = parallel_bucket(4);
    for data in [blob(READ_PART), blob(100), Bytes::new()] {
        let d = Digest::of(&data);
        b.put_blob(&d, None, body(&data)).await.unwrap();
        let r = b.get_blob(&d, None).await.unwrap().unwrap();
        assert_eq!(r.size, data.len() as u64);
        assert!(read_all(r).await == data);
    }
    assert_eq!(requests(&b, "get_range", "ok"), 0, "no part past the first");
    // The empty object has no byte to range over: that GET fails, and one whole GET reads it.
    assert_eq!(requests(&b, "get", "error"), 1);
    assert_eq!(requests(&b, "get", "ok"), 3);
    // A missing blob is missing, not an error.
    assert!(
        b.get_blob(&Digest::of(b"none"), None)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_part_that_breaks_off_is_asked_again_from_where_it_broke() {
    let (b, faults) = parallel_bucket(2);
    let data = blob(2 * READ_PART + 5);
    let d = Digest::of(&data);
    b.put_blob(&d, None, body(&data)).await.unwrap();
    let r = b.get_blob(&d, None).await.unwrap().unwrap();
    // The next GET (the second part's, made once the body is read) sends 1000 bytes, then breaks.
    faults.break_get_after.store(1000, Ordering::SeqCst);
    assert!(read_all(r).await == data);
    assert_eq!(
        requests(&b, "get_range", "ok"),
        3,
        "two parts, one asked twice"
    );
}

#[tokio::test]
async fn a_part_that_cannot_be_read_ends_the_body_in_an_error_after_its_retries() {
    let (b, faults) = parallel_bucket(2);
    let data = blob(2 * READ_PART);
    let d = Digest::of(&data);
    b.put_blob(&d, None, body(&data)).await.unwrap();
    let mut r = b.get_blob(&d, None).await.unwrap().unwrap();
    faults.down.store(true, Ordering::SeqCst);
    let mut got = 0;
    let err = loop {
        match r.body.next().await {
            Some(Ok(c)) => got += c.len(),
            Some(Err(e)) => break e,
            None => panic!("a body with a part missing must end in an error"),
        }
    };
    assert!(got < data.len(), "never the whole body");
    assert!(matches!(err, BucketError::Store(_)), "{err}");
    let tries = 1 + super::PART_RETRIES as u64;
    assert_eq!(requests(&b, "get_range", "error"), tries);
    assert!(r.body.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn a_blob_removed_between_its_parts_is_an_error_naming_the_range() {
    let (b, _) = parallel_bucket(2);
    let data = blob(READ_PART + 1);
    let d = Digest::of(&data);
    b.put_blob(&d, None, body(&data)).await.unwrap();
    let r = b.get_blob(&d, None).await.unwrap().unwrap();
    b.delete_blob(&d).await.unwrap();
    let err = r.body.try_collect::<Vec<Bytes>>().await.unwrap_err();
    let want = format!("bytes {READ_PART}..{}", READ_PART + 1);
    assert!(
        matches!(err, BucketError::Range { .. }) && err.to_string().contains(&want),
        "{err}"
    );
}
