//! The bucket tier over `object_store`'s in-memory store, wrapped to inject faults
//! ([`super::testing`]): a part upload that fails, a completion that fails, a GET whose body is
//! held back, the bucket down.

use std::sync::atomic::Ordering;

use futures_util::stream;
use object_store::memory::InMemory;

use super::testing::{Faults, Faulty};
use super::*;

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

#[test]
fn the_listing_of_open_uploads_parses() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>berth</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>mirror/blobs/sha256/bb</NextKeyMarker><NextUploadIdMarker>2~x</NextUploadIdMarker>
  <Prefix>mirror/blobs/sha256/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>mirror/blobs/sha256/aa</Key><UploadId>2~abc</UploadId>
    <Initiator><ID>testkey</ID><DisplayName>t</DisplayName></Initiator>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-30T13:00:00.123Z</Initiated></Upload>
  <Upload><Key>mirror/blobs/sha256/bb</Key><UploadId>2~x</UploadId>
    <Initiated>2026-11-30T13:00:01.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
    let page: ListUploads = quick_xml::de::from_str(xml).unwrap();
    assert!(page.is_truncated);
    assert_eq!(page.uploads.len(), 2);
    assert_eq!(page.uploads[0].upload_id, "2~abc");
    assert_eq!(
        page.next_key_marker.as_deref(),
        Some("mirror/blobs/sha256/bb")
    );
    let empty: ListUploads = quick_xml::de::from_str(
        "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
    )
    .unwrap();
    assert!(empty.uploads.is_empty() && !empty.is_truncated);
}
