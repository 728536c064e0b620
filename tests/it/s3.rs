//! The bucket tier against a real S3 server: Ceph's radosgw. Needs one running, named by
//! `BERTH_TEST_S3` (e.g. `http://127.0.0.1:9103`, keys testkey/testsecret); tests/run.sh starts
//! one with tests/ceph/start-ceph.sh and runs `cargo test --test it s3:: -- --ignored`.
//! The last test runs two berths over one bucket on it: what one pulled, the other serves with
//! an empty disk and the upstream stopped.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest as _, Sha256};

use berth::config::Config;
use berth::oci::Digest;
use berth::store::s3::{Bucket, BucketError, BucketMetrics, ObjectInfo, Stored, TagRecord};

const MIB: usize = 1024 * 1024;
/// radosgw's smallest part (but the last).
const PART: usize = 5 * MIB;

fn endpoint() -> String {
    std::env::var("BERTH_TEST_S3")
        .expect("BERTH_TEST_S3 names the S3 endpoint (tests/run.sh starts radosgw and sets it)")
}

/// A fresh bucket `name` on the server, and the tier over it under `prefix/`.
async fn bucket(name: &str) -> (Bucket, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "testsecret\n").unwrap();
    let text = format!(
        "[storage.s3]\nbucket = \"{name}\"\nendpoint = \"{}\"\nprefix = \"mirror/\"\n\
         access_key_id = \"testkey\"\nsecret_access_key_file = \"{}\"\n\
         [[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
        endpoint(),
        secret.display()
    );
    let cfg = Config::parse(&text, "s3.toml").unwrap();
    let s3 = cfg.storage.s3.unwrap();
    let b = Bucket::connect(&s3, BucketMetrics::new())
        .unwrap()
        .with_part_size(PART);
    // object_store makes no buckets: create it with a presigned request (rusty-s3 signs).
    let url: url::Url = endpoint().parse().unwrap();
    let rb =
        rusty_s3::Bucket::new(url, rusty_s3::UrlStyle::Path, name.to_owned(), "us-east-1").unwrap();
    let creds = rusty_s3::Credentials::new("testkey", "testsecret");
    let signed = rusty_s3::S3Action::sign(&rb.create_bucket(&creds), Duration::from_secs(60));
    let res = reqwest::Client::new().put(signed).send().await.unwrap();
    assert!(
        res.status().is_success() || res.status() == reqwest::StatusCode::CONFLICT,
        "create bucket {name}: {}",
        res.status()
    );
    (b, dir)
}

/// `n` bytes that differ from part to part.
fn blob(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| ((i * 131 + i / 4093) as u8).wrapping_add(seed))
        .collect::<Vec<_>>()
        .into()
}

fn body(data: &Bytes) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + use<> {
    let chunks: Vec<_> = data
        .chunks(256 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

#[tokio::test]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn a_multipart_blob_round_trips() {
    let (b, _dir) = bucket("berth-roundtrip").await;
    let data = blob(2 * PART + 3 * MIB + 17, 1); // three parts
    let d = Digest::of(&data);
    assert!(b.head_blob(&d).await.unwrap().is_none());
    let stored = b
        .put_blob(&d, Some(data.len() as u64), body(&data))
        .await
        .unwrap();
    assert_eq!(stored, Stored::Uploaded);
    let head = b.head_blob(&d).await.unwrap().unwrap();
    assert_eq!(head.size, data.len() as u64);

    // The whole blob, hashed as it streams.
    let got = b.get_blob(&d, None).await.unwrap().unwrap();
    assert_eq!(got.size, data.len() as u64);
    let mut h = Sha256::new();
    let mut body_stream = got.body;
    let mut n = 0;
    while let Some(c) = body_stream.next().await {
        let c = c.unwrap();
        n += c.len();
        h.update(&c);
    }
    assert_eq!(n, data.len());
    assert_eq!(Digest::from_sha256(&h.finalize()), d);

    // A range across the first part boundary.
    let r = (PART as u64 - 100)..(PART as u64 + 100);
    let got = b.get_blob(&d, Some(r.clone())).await.unwrap().unwrap();
    assert_eq!(got.range, r);
    let bytes: Vec<Bytes> = got.body.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), &data[r.start as usize..r.end as usize]);

    let listed: Vec<ObjectInfo> = b.list_blobs().try_collect().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.digest == d && i.size == data.len() as u64),
        "{listed:?}"
    );
    // Already there: skipped.
    let again = b.put_blob(&d, None, stream::empty::<Result<Bytes, std::io::Error>>());
    assert_eq!(again.await.unwrap(), Stored::AlreadyThere);

    b.delete_blob(&d).await.unwrap();
    assert!(b.head_blob(&d).await.unwrap().is_none());
    assert!(b.get_blob(&d, None).await.unwrap().is_none());

    // Within one part: one PUT after verifying; the empty blob too.
    for small in [blob(MIB + 3, 9), Bytes::new()] {
        let d = Digest::of(&small);
        let stored = b.put_blob(&d, Some(small.len() as u64), body(&small));
        assert_eq!(stored.await.unwrap(), Stored::Uploaded);
        let got = b.get_blob(&d, None).await.unwrap().unwrap();
        let bytes: Vec<Bytes> = got.body.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), small);
        b.delete_blob(&d).await.unwrap();
    }
    assert!(b.open_uploads().await.unwrap().is_empty());
}

#[tokio::test]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn a_wrong_digest_upload_leaves_nothing() {
    let (b, _dir) = bucket("berth-wrong").await;
    let right = blob(2 * PART + 1, 2);
    let mut wrong = right.to_vec();
    wrong[PART + 5] ^= 0x40;
    let d = Digest::of(&right);
    let err = b
        .put_blob(&d, Some(right.len() as u64), body(&Bytes::from(wrong)))
        .await
        .unwrap_err();
    assert!(matches!(err, BucketError::Digest { .. }), "{err}");
    assert!(b.head_blob(&d).await.unwrap().is_none(), "nothing visible");
    let open = b.open_uploads().await.unwrap();
    assert!(open.is_empty(), "the upload was aborted: {open:?}");
    assert_eq!(b.metrics().aborts.with_label_values(&["digest"]).get(), 1);
}

#[tokio::test]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn manifests_keep_their_media_type_and_tags_round_trip() {
    let (b, _dir) = bucket("berth-meta").await;
    let m = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
    );
    let d = Digest::of(&m);
    let mt = "application/vnd.oci.image.index.v1+json";
    b.put_manifest(&d, mt, m.clone()).await.unwrap();
    assert_eq!(
        b.get_manifest(&d, 1 << 20).await.unwrap(),
        Some((mt.to_owned(), m.clone())),
        "radosgw keeps Content-Type"
    );
    let listed: Vec<ObjectInfo> = b.list_manifests().try_collect().await.unwrap();
    assert!(listed.iter().any(|i| i.digest == d));

    let rec = TagRecord {
        digest: d.to_string(),
        media_type: mt.into(),
        resolved_at: 1_764_500_000,
    };
    b.put_tag("127.0.0.1:5001", "library/alpine", "3.19", &rec)
        .await
        .unwrap();
    assert_eq!(
        b.get_tag("127.0.0.1:5001", "library/alpine", "3.19")
            .await
            .unwrap(),
        Some(rec)
    );
    assert!(
        b.get_tag("127.0.0.1:5001", "library/alpine", "3.20")
            .await
            .unwrap()
            .is_none()
    );
    b.delete_manifest(&d).await.unwrap();
    assert!(b.head_manifest(&d).await.unwrap().is_none());
}

#[tokio::test]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn stale_uploads_are_listed_and_aborted() {
    let (b, _dir) = bucket("berth-stale").await;
    let d = Digest::of(b"never finished");
    // What a berth killed mid-upload leaves: an upload with a part, neither completed nor aborted.
    let store: &Arc<dyn object_store::ObjectStore> = b.object_store();
    let mut upload = store.put_multipart(&b.blob_key(&d)).await.unwrap();
    upload
        .put_part(PutPayload::from(blob(PART, 3)))
        .await
        .unwrap();
    drop(upload);

    let open = b.open_uploads().await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].key, b.blob_key(&d).to_string());
    // Young uploads may be a live replica's: left alone.
    assert_eq!(
        b.abort_stale_uploads(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(b.open_uploads().await.unwrap().len(), 1);
    assert_eq!(b.abort_stale_uploads(Duration::ZERO).await.unwrap(), 1);
    assert!(b.open_uploads().await.unwrap().is_empty());
    assert!(b.head_blob(&d).await.unwrap().is_none());
    assert_eq!(b.metrics().aborts.with_label_values(&["stale"]).get(), 1);
}

/// Wrong keys: every answer is an error (never "not there", never an empty listing).
#[tokio::test]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn wrong_credentials_are_errors_not_absence() {
    let (_good, dir) = bucket("berth-denied").await;
    let secret = dir.path().join("wrong");
    std::fs::write(&secret, "not-the-secret").unwrap();
    let text = format!(
        "[storage.s3]\nbucket = \"berth-denied\"\nendpoint = \"{}\"\n\
         access_key_id = \"testkey\"\nsecret_access_key_file = \"{}\"\n\
         [[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
        endpoint(),
        secret.display()
    );
    let s3 = Config::parse(&text, "s3.toml").unwrap().storage.s3.unwrap();
    let b = Bucket::connect(&s3, BucketMetrics::new()).unwrap();
    let d = Digest::of(b"x");
    assert!(matches!(b.head_blob(&d).await, Err(BucketError::Store(_))));
    assert!(matches!(
        b.get_blob(&d, None).await,
        Err(BucketError::Store(_))
    ));
    let listed: Vec<_> = b.list_blobs().collect().await;
    assert!(
        matches!(listed.as_slice(), [Err(BucketError::Store(_))]),
        "{listed:?}"
    );
    let err = b.open_uploads().await.unwrap_err();
    assert!(
        matches!(&err, BucketError::Http(m) if m.contains("403")),
        "{err}"
    );
    let err = b.abort_stale_uploads(Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, BucketError::Http(_)), "{err}");
}

#[tokio::test]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn a_second_berth_over_the_bucket_serves_an_image_with_the_upstream_stopped() {
    use http::Method;
    use support::instance::{listeners_and_storage, start_toml};
    use support::{FakeRegistry, digest_of, random_bytes};

    let (b, secrets) = bucket("berth-replicas").await;
    let fake = FakeRegistry::start().await;
    let url = fake.url();
    // A layer of two parts and a bit (a multipart upload), a small one (one PUT), a config.
    let layers = [
        random_bytes(2 * 16 * MIB + 3 * MIB, 21),
        random_bytes(70_000, 22),
    ];
    let config_blob = Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}");
    let mut blobs = vec![(
        fake.put_blob("team/app", config_blob.clone()),
        config_blob.clone(),
    )];
    for l in &layers {
        blobs.push((fake.put_blob("team/app", l.clone()), l.clone()));
    }
    let descriptor = |media: &str, (d, bytes): &(String, Bytes)| {
        format!(
            r#"{{"mediaType":"{media}","digest":"{d}","size":{}}}"#,
            bytes.len()
        )
    };
    let layer_type = "application/vnd.oci.image.layer.v1.tar+gzip";
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{manifest_type}","config":{},"layers":[{},{}]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", &blobs[0]),
        descriptor(layer_type, &blobs[1]),
        descriptor(layer_type, &blobs[2]),
    ));
    let md = fake.put_tagged("team/app", "v1", manifest_type, manifest.clone());
    assert_eq!(md, digest_of(&manifest));

    // A prefix of this run's own, so that A always starts from an empty bucket.
    let prefix = format!(
        "run-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let berth = |dir: tempfile::TempDir| {
        let cfg = format!(
            "{}[storage.s3]\nbucket = \"berth-replicas\"\nendpoint = \"{}\"\nprefix = \"{prefix}/\"\n\
             access_key_id = \"testkey\"\nsecret_access_key_file = \"{}\"\n\
             [[upstream]]\nname = \"registry.test\"\nurl = \"{url}\"\ndefault = true\n",
            listeners_and_storage(dir.path()),
            endpoint(),
            secrets.path().join("secret").display(),
        );
        async move { start_toml(&cfg, dir).await }
    };
    let a = berth(tempfile::tempdir().unwrap()).await;
    pull(&a, &md, &blobs, &manifest).await;
    // Everything is in the bucket once A's background puts are done (bounded wait).
    let keys: Vec<String> = blobs
        .iter()
        .map(|(d, _)| format!("blobs/sha256/{}", &d[7..]))
        .chain([
            format!("manifests/sha256/{}", &md[7..]),
            "tags/registry.test/team/app/v1".into(),
        ])
        .chain(
            blobs
                .iter()
                .map(|(d, _)| d.as_str())
                .chain([md.as_str()])
                .map(|d| format!("origins/registry.test/sha256/{}", &d[7..])),
        )
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for key in &keys {
        let path = object_store::path::Path::from(format!("{prefix}/{key}"));
        while b.object_store().head(&path).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never reached the bucket"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        a.counter("berth_answers_total{source=\"upstream\"}").await,
        3
    );
    assert_eq!(a.counter("berth_bucket_multipart_aborts_total").await, 0);
    // The stale-upload pass ran once A was serving (it lists open uploads on the real server),
    // and the bucket had no error to report.
    while a
        .counter("berth_bucket_requests_total{op=\"list_uploads\",outcome=\"ok\"}")
        .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stale-upload pass"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = a
        .client
        .get(
            format!("http://{}/healthz?verbose", a.metrics)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let text = http_body_util::BodyExt::collect(health.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("bucket: no error"), "{text}");
    drop(fake);

    let other = berth(tempfile::tempdir().unwrap()).await;
    pull(&other, &md, &blobs, &manifest).await;
    assert_eq!(other.counter("berth_upstream_requests_total").await, 0);
    assert_eq!(
        other
            .counter("berth_answers_total{source=\"bucket\"}")
            .await,
        3
    );
    other.settled().await;
    for (d, bytes) in &blobs {
        assert_eq!(std::fs::read(other.blob_file(d)).unwrap(), &bytes[..]);
    }
    let head = other
        .request(
            Method::HEAD,
            &format!("/v2/team/app/blobs/{}", blobs[1].0),
            &[],
        )
        .await;
    assert_eq!(
        head.header("content-length"),
        Some(layers[0].len().to_string().as_str())
    );
}

/// Pulls the image by tag and by digest, and each blob, through `berth`; checks every byte.
async fn pull(
    berth: &support::instance::Berth,
    md: &str,
    blobs: &[(String, Bytes)],
    manifest: &Bytes,
) {
    use http::StatusCode;
    use support::instance::same;
    let got = berth.get("/v2/team/app/manifests/v1").await;
    assert_eq!(got.status, StatusCode::OK);
    same(got.bytes(), manifest);
    assert_eq!(got.header("docker-content-digest"), Some(md));
    same(
        berth
            .get(&format!("/v2/team/app/manifests/{md}"))
            .await
            .bytes(),
        manifest,
    );
    for (d, bytes) in blobs {
        let got = berth.get(&format!("/v2/team/app/blobs/{d}")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(support::digest_of(got.bytes()), *d);
        same(got.bytes(), bytes);
    }
}
