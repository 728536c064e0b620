//! The bucket tier on the request path, over real sockets: berth in process in front of the fake
//! registry, its bucket an in-memory object store wrapped to inject faults (the bucket down) and
//! shared between two berths (two replicas over one bucket).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Method, StatusCode};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

use berth::store::s3::testing::{Faults, Faulty};
use berth::store::s3::{Bucket, BucketMetrics};
use support::instance::{
    Berth, listeners_and_storage, same, start_with_bucket, start_with_bucket_mirror, until_metric,
};
use support::{FakeRegistry, Fault, random_bytes};

/// One bucket's contents, shared by the replicas over it.
#[derive(Clone)]
struct Shared {
    inner: Arc<InMemory>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            inner: Arc::new(InMemory::new()),
        }
    }

    /// A replica's view of the bucket: its own faults, the shared contents.
    fn bucket(&self) -> (Bucket, Arc<Faults>) {
        let (store, faults) = Faulty::new(self.inner.clone());
        let b = Bucket::with_store(Arc::new(store), "mirror/", BucketMetrics::new());
        (b, faults)
    }

    /// A replica over the bucket reading whole blobs as `streams` ranged GETs at once.
    async fn replica_reading_in_parallel(&self, url: &str, streams: usize) -> Berth {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &[("registry.test", url)], "");
        let (bucket, _) = self.bucket();
        start_with_bucket(&cfg, dir, bucket.with_read_streams(streams)).await
    }

    fn blob_key(&self, digest: &str) -> Path {
        Path::from(format!(
            "mirror/blobs/sha256/{}",
            digest.trim_start_matches("sha256:")
        ))
    }

    fn origin_key(&self, upstream: &str, digest: &str) -> Path {
        Path::from(format!(
            "mirror/origins/{upstream}/sha256/{}",
            digest.trim_start_matches("sha256:")
        ))
    }

    async fn get(&self, key: &Path) -> Option<Bytes> {
        match self.inner.get(key).await {
            Ok(g) => Some(g.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits (bounded) until `key` holds what `want` accepts.
    async fn until_holds(&self, key: &Path, what: &str, want: impl Fn(Option<&Bytes>) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !want(self.get(key).await.as_ref()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key}: never {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits (bounded) until `key` is there.
    async fn until(&self, key: &Path) {
        self.until_holds(key, "there", |got| got.is_some()).await
    }

    /// Waits until a replica has put up the tag record of `team/app:v1` from `registry.test`
    /// and the origin marker of the manifest `md` it names.
    async fn until_tag_v1(&self, md: &str) {
        self.until(&Path::from("mirror/tags/registry.test/team/app/v1"))
            .await;
        self.until(&self.origin_key("registry.test", md)).await;
    }

    /// Puts `bytes` under `key` as a replica would have after pulling `digest` through
    /// `registry.test`: the object and its origin marker.
    async fn seed(&self, key: &Path, digest: &str, bytes: Bytes, opts: PutOptions) {
        self.inner.put_opts(key, bytes.into(), opts).await.unwrap();
        self.inner
            .put(&self.origin_key("registry.test", digest), PutPayload::new())
            .await
            .unwrap();
    }

    /// [`Shared::seed`] of the blob `digest` under its key: `bytes` as they are.
    async fn seed_blob(&self, digest: &str, bytes: Bytes) {
        let key = self.blob_key(digest);
        self.seed(&key, digest, bytes, PutOptions::default()).await;
    }
}

/// `extra`: keys of every upstream.
fn config(dir: &std::path::Path, upstreams: &[(&str, &str)], extra: &str) -> String {
    let mut cfg = listeners_and_storage(dir);
    for (i, (name, url)) in upstreams.iter().enumerate() {
        cfg.push_str(&format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n{}",
            if i == 0 { "default = true\n" } else { "" }
        ));
    }
    cfg
}

async fn replica(shared: &Shared, upstreams: &[(&str, &str)]) -> (Berth, Arc<Faults>) {
    replica_with(shared, upstreams, "").await
}

async fn replica_with(
    shared: &Shared,
    upstreams: &[(&str, &str)],
    extra: &str,
) -> (Berth, Arc<Faults>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), upstreams, extra);
    let (bucket, faults) = shared.bucket();
    (start_with_bucket(&cfg, dir, bucket).await, faults)
}

fn blob_path(digest: &str) -> String {
    format!("/v2/team/app/blobs/{digest}")
}

#[tokio::test]
async fn a_fill_from_the_upstream_is_uploaded_once_with_its_origin() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000, 1);
    let d = fake.put_blob("team/app", layer.clone());
    let shared = Shared::new();
    let (b, faults) = replica(&shared, &[("registry.test", &fake.url())]).await;

    // Eight clients at once: one fill, one upload.
    let path = blob_path(&d);
    let gets = (0..8).map(|_| b.get(&path));
    for got in futures_util::future::join_all(gets).await {
        same(got.bytes(), &layer);
    }
    shared.until(&shared.origin_key("registry.test", &d)).await;
    assert_eq!(shared.get(&shared.blob_key(&d)).await.unwrap(), layer);
    // A later pull is a local hit: nothing more goes up.
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    b.settled().await;
    assert_eq!(faults.blob_puts.load(Ordering::SeqCst), 1);
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"upload\",outcome=\"ok\"}")
            .await,
        1
    );
    // Each client's answer counts where it came from.
    assert_eq!(
        b.counter("berth_answers_total{source=\"upstream\"}").await,
        8
    );
    assert_eq!(b.counter("berth_answers_total{source=\"local\"}").await, 1);
    assert_eq!(fake.hits(Method::GET, &blob_path(&d)), 1);
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"upload\"").await,
        1,
        "{}",
        b.metric("berth_bucket_requests_total").await
    );
}

#[tokio::test]
async fn a_replica_with_an_empty_disk_serves_from_the_bucket_with_the_upstream_stopped() {
    let fake = FakeRegistry::start().await;
    let url = fake.url();
    let layer = random_bytes(1_500_000, 2);
    let d = fake.put_blob("team/app", layer.clone());
    let shared = Shared::new();
    let (a, _) = replica(&shared, &[("registry.test", &url)]).await;
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    shared.until(&shared.origin_key("registry.test", &d)).await;
    drop(fake); // the upstream is gone: connections to it are refused

    let (b, _) = replica(&shared, &[("registry.test", &url)]).await;
    let head = b.request(Method::HEAD, &blob_path(&d), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.header("content-length"),
        Some(layer.len().to_string().as_str())
    );
    let got = b.get(&blob_path(&d)).await;
    assert_eq!(got.status, StatusCode::OK);
    same(got.bytes(), &layer);
    b.settled().await;
    // Kept on B's disk on the way, and never asked of the upstream.
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
    assert_eq!(b.counter("berth_upstream_requests_total").await, 0);
    assert_eq!(b.counter("berth_answers_total{source=\"bucket\"}").await, 2);
    // A ranged read is now a local hit.
    let part = b
        .request(Method::GET, &blob_path(&d), &[("range", "bytes=10-19")])
        .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    same(part.bytes(), &layer.slice(10..20));
}

/// Bytes of one ranged read from the bucket.
const READ_PART: usize = berth::store::s3::READ_PART as usize;

#[tokio::test]
async fn a_fresh_replica_reads_a_large_blob_as_parallel_ranges_and_checks_the_whole() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(2 * READ_PART + 300_000, 21);
    let d = fake.put_blob("team/app", layer.clone());
    let shared = Shared::new();
    shared.seed_blob(&d, layer.clone()).await;
    let b = shared.replica_reading_in_parallel(&fake.url(), 3).await;

    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
    assert_eq!(
        fake.hits(Method::GET, &blob_path(&d)),
        0,
        "all of it from the bucket"
    );
    // One GET of the object (its first part, the answer's head), a ranged GET per later part.
    let ok = |op: &str| format!("berth_bucket_requests_total{{op=\"{op}\",outcome=\"ok\"}}");
    assert_eq!(b.counter(&ok("get")).await, 1);
    assert_eq!(b.counter(&ok("get_range")).await, 2);
}

#[tokio::test]
async fn wrong_bytes_in_a_late_range_are_never_served_and_the_object_is_deleted() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(2 * READ_PART + 1000, 22);
    let d = fake.put_blob("team/app", layer.clone());
    let shared = Shared::new();
    // Right bytes but for one near the end: only the last part is wrong.
    let mut wrong = layer.to_vec();
    *wrong.last_mut().unwrap() ^= 1;
    shared.seed_blob(&d, wrong.into()).await;
    let b = shared.replica_reading_in_parallel(&fake.url(), 3).await;

    wrong_object_is_never_served(&b, &shared, &d, &layer, &fake).await;
}

#[tokio::test]
async fn with_the_bucket_down_pulls_come_from_the_upstream_and_healthz_says_so() {
    let fake = FakeRegistry::start().await;
    let (l1, l2) = (random_bytes(200_000, 3), random_bytes(100_000, 4));
    let (d1, d2) = (
        fake.put_blob("team/app", l1.clone()),
        fake.put_blob("team/app", l2.clone()),
    );
    let shared = Shared::new();
    let (b, faults) = replica(&shared, &[("registry.test", &fake.url())]).await;
    faults.down.store(true, Ordering::SeqCst);

    same(b.get(&blob_path(&d1)).await.bytes(), &l1);
    assert!(
        b.counter("berth_bucket_requests_total{op=\"head\",outcome=\"error\"}")
            .await
            >= 1
    );
    // Within the skip window the bucket is not even asked.
    same(b.get(&blob_path(&d2)).await.bytes(), &l2);
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"lookup\",outcome=\"skipped\"}")
            .await,
        1
    );
    assert_eq!(fake.hits(Method::GET, &blob_path(&d1)), 1);
    assert_eq!(fake.hits(Method::GET, &blob_path(&d2)), 1);
    b.settled().await;
    let health = b
        .client
        .get(
            format!("http://{}/healthz?verbose", b.metrics)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let text = http_body_util::BodyExt::collect(health.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("bucket: last error at") && text.contains("injected: bucket down"),
        "{text}"
    );
    assert_eq!(shared.get(&shared.blob_key(&d1)).await, None);
}

#[tokio::test]
async fn wrong_bytes_in_the_bucket_are_never_served_and_are_deleted() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(400_000, 5);
    let d = fake.put_blob("team/app", layer.clone());
    let shared = Shared::new();
    // The bucket holds other bytes of the same length under the digest, marked as ours.
    let wrong = random_bytes(layer.len(), 6);
    shared.seed_blob(&d, wrong).await;
    let (b, _) = replica(&shared, &[("registry.test", &fake.url())]).await;

    wrong_object_is_never_served(&b, &shared, &d, &layer, &fake).await;
    // The upstream's verified bytes go up in its place.
    shared.until(&shared.blob_key(&d)).await;
    assert_eq!(shared.get(&shared.blob_key(&d)).await.unwrap(), layer);
}

/// A pull of `d`, whose bucket object is wrong: either the fill failed before the answer's head
/// (502, no byte sent: the whole blob was read and checked by then) or the body breaks off
/// short, never a complete wrong body; the object is deleted before the fill fails (a retry
/// cannot find it again) and counted, nothing is kept, and the next pull comes from the upstream.
async fn wrong_object_is_never_served(
    b: &Berth,
    shared: &Shared,
    d: &str,
    layer: &Bytes,
    fake: &FakeRegistry,
) {
    let got = b.get(&blob_path(d)).await;
    match got.status {
        StatusCode::OK => {
            let body = got.body.expect_err("a body of wrong bytes must break off");
            assert!(!body.is_empty() && body.len() < layer.len());
        }
        StatusCode::BAD_GATEWAY => assert_eq!(got.code(), "DIGEST_INVALID"),
        s => panic!("answered {s}"),
    }
    assert_eq!(shared.get(&shared.blob_key(d)).await, None);
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"get_body\",outcome=\"mismatch\"}")
            .await,
        1
    );
    assert!(!b.blob_file(d).exists());
    b.settled().await;
    same(b.get(&blob_path(d)).await.bytes(), layer);
    assert_eq!(
        fake.hits(Method::GET, &blob_path(d)),
        1,
        "the retry: from the upstream"
    );
}

#[tokio::test]
async fn wrong_bytes_from_the_upstream_are_not_uploaded() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(250_000, 7);
    let d = fake.put_blob("team/app", layer.clone());
    fake.fault_times(&blob_path(&d), Fault::WrongBytes, 1);
    let shared = Shared::new();
    let (b, faults) = replica(&shared, &[("registry.test", &fake.url())]).await;

    assert!(b.get(&blob_path(&d)).await.body.is_err());
    b.settled().await;
    // The right bytes next time are uploaded: the path is live, and only they went up.
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    shared.until(&shared.origin_key("registry.test", &d)).await;
    assert_eq!(faults.blob_puts.load(Ordering::SeqCst), 1);
    assert_eq!(shared.get(&shared.blob_key(&d)).await.unwrap(), layer);
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"upload\"").await,
        1
    );
}

#[tokio::test]
async fn a_bucket_slower_than_the_upstream_never_slows_the_pull() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(3 << 20, 11);
    let d = fake.put_blob("team/app", layer.clone());
    let shared = Shared::new();
    let (store, faults) = Faulty::new(shared.inner.clone());
    let bucket = Bucket::with_store(Arc::new(store), "mirror/", BucketMetrics::new())
        .with_part_size(64 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("registry.test", &fake.url())], "");
    let b = start_with_bucket(&cfg, dir, bucket).await;

    // The bucket takes no part at all: the pull completes regardless, and the upload waits,
    // holding its parts and nothing more.
    faults.hold_parts.store(true, Ordering::SeqCst);
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    b.settled().await;
    assert!(shared.get(&shared.blob_key(&d)).await.is_none());
    assert!(
        faults.parts.load(Ordering::SeqCst) <= 3,
        "parts in flight only"
    );
    // Once the bucket moves again, the upload goes on and completes.
    faults.hold_parts.store(false, Ordering::SeqCst);
    faults.parts_released.notify_waiters();
    shared.until(&shared.origin_key("registry.test", &d)).await;
    assert_eq!(shared.get(&shared.blob_key(&d)).await.unwrap(), layer);
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"upload\",outcome=\"ok\"}")
            .await,
        1
    );
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"upload\"").await,
        1,
        "one upload"
    );
    assert_eq!(fake.hits(Method::GET, &blob_path(&d)), 1);
}

#[tokio::test]
async fn a_blob_another_replica_cached_through_one_upstream_needs_the_others_confirmation() {
    let (fa, fb) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let layer = random_bytes(120_000, 8);
    let d = fa.put_blob("team/app", layer.clone());
    let ups = [("a.test", fa.url()), ("b.test", fb.url())];
    let ups: Vec<(&str, &str)> = ups.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let shared = Shared::new();
    let (one, _) = replica(&shared, &ups).await;
    same(one.get(&blob_path(&d)).await.bytes(), &layer);
    shared.until(&shared.origin_key("a.test", &d)).await;

    let (two, _) = replica(&shared, &ups).await;
    let via_b = format!("/v2/b.test/team/app/blobs/{d}");
    let b_path = blob_path(&d);
    // b.test does not have it: its own 404, whatever the bucket holds; nothing read from there.
    let head = two.request(Method::HEAD, &via_b, &[]).await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    let got = two.get(&via_b).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.code(), "BLOB_UNKNOWN");
    assert_eq!(
        two.counter("berth_answers_total{source=\"bucket\"}").await,
        0
    );
    assert_eq!(shared.get(&shared.origin_key("b.test", &d)).await, None);

    // Once b.test has it, it confirms (a HEAD) and the bytes come from the bucket.
    fb.put_blob("team/app", layer.clone());
    let heads = fb.hits(Method::HEAD, &b_path);
    same(two.get(&via_b).await.bytes(), &layer);
    assert_eq!(fb.hits(Method::HEAD, &b_path), heads + 1);
    assert_eq!(fb.hits(Method::GET, &b_path), 0);
    assert_eq!(
        two.counter("berth_answers_total{source=\"bucket\"}").await,
        1
    );
    shared.until(&shared.origin_key("b.test", &d)).await;
    // Through a.test, the bucket's record is enough: a.test is not asked at all.
    two.settled().await;
    let before = fa.requests().len();
    same(two.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(fa.requests().len(), before);
}

#[tokio::test]
async fn a_bucket_body_that_breaks_off_is_resumed_from_the_upstream() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(500_000, 9);
    let d = fake.put_blob("team/app", layer.clone());
    let shared = Shared::new();
    shared.seed_blob(&d, layer.clone()).await;
    let (b, faults) = replica(&shared, &[("registry.test", &fake.url())]).await;
    faults.break_get_after.store(200_000, Ordering::SeqCst);

    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    // The rest came from the upstream with a range request, and the whole was verified.
    let asked = fake.requests_to(&blob_path(&d));
    assert_eq!(asked.len(), 1, "one request to the upstream");
    assert_eq!(asked[0].header("range"), Some("bytes=200000-"));
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
    assert_eq!(
        b.counter("berth_upstream_resumes_total{outcome=\"partial\",upstream=\"registry.test\"}")
            .await,
        1
    );
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A manifest naming `layer` (the fake does not read it; berth checks only its digest).
fn manifest_for(layer_digest: &str, size: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{size}}}]}}"#
    ))
}

#[tokio::test]
async fn an_image_another_replica_pulled_is_served_by_tag_with_the_upstream_stopped() {
    let fake = FakeRegistry::start().await;
    let url = fake.url();
    let layer = random_bytes(64_000, 10);
    let ld = fake.put_blob("team/app", layer.clone());
    let body = manifest_for(&ld, layer.len());
    let md = fake.put_tagged("team/app", "v1", MANIFEST_TYPE, body.clone());
    let shared = Shared::new();
    let (a, _) = replica(&shared, &[("registry.test", &url)]).await;
    let got = a.get("/v2/team/app/manifests/v1").await;
    assert_eq!(got.status, StatusCode::OK);
    same(a.get(&blob_path(&ld)).await.bytes(), &layer);
    let hex = md.trim_start_matches("sha256:");
    shared
        .until(&Path::from(format!("mirror/manifests/sha256/{hex}")))
        .await;
    shared.until_tag_v1(&md).await;
    shared.until(&shared.origin_key("registry.test", &ld)).await;
    drop(fake);

    let (b, _) = replica(&shared, &[("registry.test", &url)]).await;
    let got = b.get("/v2/team/app/manifests/v1").await;
    assert_eq!(got.status, StatusCode::OK);
    same(got.bytes(), &body);
    assert_eq!(got.header("docker-content-digest"), Some(md.as_str()));
    assert_eq!(got.header("content-type"), Some(MANIFEST_TYPE));
    let by_digest = b.get(&format!("/v2/team/app/manifests/{md}")).await;
    same(by_digest.bytes(), &body);
    same(b.get(&blob_path(&ld)).await.bytes(), &layer);
    assert_eq!(b.counter("berth_upstream_requests_total").await, 0);
}

#[tokio::test]
async fn a_tag_from_the_bucket_is_revalidated_after_its_ttl() {
    let fake = FakeRegistry::start().await;
    let body = manifest_for(&random_digest(), 1);
    let md = fake.put_tagged("team/app", "v1", MANIFEST_TYPE, body.clone());
    let shared = Shared::new();
    let ups = [("registry.test", fake.url())];
    let ups: Vec<(&str, &str)> = ups.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let (a, _) = replica(&shared, &ups).await;
    assert_eq!(
        a.get("/v2/team/app/manifests/v1").await.status,
        StatusCode::OK
    );
    shared.until_tag_v1(&md).await;
    let path = "/v2/team/app/manifests/v1";
    let (heads, gets) = (fake.hits(Method::HEAD, path), fake.hits(Method::GET, path));

    // A replica whose tag_ttl has passed for the record asks the upstream with a HEAD; the
    // manifest itself comes from the bucket.
    let (b, _) = replica_with(&shared, &ups, "tag_ttl = \"0s\"").await;
    let got = b.get(path).await;
    same(got.bytes(), &body);
    assert_eq!(fake.hits(Method::HEAD, path), heads + 1);
    assert_eq!(fake.hits(Method::GET, path), gets);
    let by_digest = format!("/v2/team/app/manifests/{md}");
    assert_eq!(fake.hits(Method::GET, &by_digest), 0);
    // A replica within the record's ttl asks nothing at all.
    let (c, _) = replica(&shared, &ups).await;
    same(c.get(path).await.bytes(), &body);
    assert_eq!(c.counter("berth_upstream_requests_total").await, 0);
}

#[tokio::test]
async fn a_manifest_in_the_bucket_that_does_not_match_its_digest_is_not_served() {
    let fake = FakeRegistry::start().await;
    let body = manifest_for(&random_digest(), 2);
    let md = fake.put_manifest("team/app", MANIFEST_TYPE, body.clone());
    let shared = Shared::new();
    let hex = md.trim_start_matches("sha256:");
    let opts = PutOptions {
        attributes: object_store::Attributes::from_iter([(
            object_store::Attribute::ContentType,
            MANIFEST_TYPE,
        )]),
        ..PutOptions::default()
    };
    let key = Path::from(format!("mirror/manifests/sha256/{hex}"));
    shared
        .seed(&key, &md, Bytes::from_static(b"{\"not\":\"it\"}"), opts)
        .await;
    let (b, _) = replica(&shared, &[("registry.test", &fake.url())]).await;
    let path = format!("/v2/team/app/manifests/{md}");
    same(b.get(&path).await.bytes(), &body);
    assert_eq!(fake.hits(Method::GET, &path), 1);
    // The bucket answered (with the wrong thing): it is not skipped, and the verified manifest
    // from the upstream replaces the object.
    shared
        .until_holds(&key, "replaced", |got| got == Some(&body))
        .await;
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"lookup\",outcome=\"skipped\"}")
            .await,
        0
    );
}

fn random_digest() -> String {
    support::digest_of(&random_bytes(16, 99))
}

#[tokio::test]
async fn an_expired_tag_record_is_served_stale_while_the_upstream_is_down() {
    let fake = FakeRegistry::start().await;
    let url = fake.url();
    let body = manifest_for(&random_digest(), 3);
    let md = fake.put_tagged("team/app", "v1", MANIFEST_TYPE, body.clone());
    let shared = Shared::new();
    let (a, _) = replica(&shared, &[("registry.test", &url)]).await;
    assert_eq!(
        a.get("/v2/team/app/manifests/v1").await.status,
        StatusCode::OK
    );
    shared.until_tag_v1(&md).await;
    drop(fake);

    let (b, _) = replica_with(&shared, &[("registry.test", &url)], "tag_ttl = \"0s\"").await;
    let got = b.get("/v2/team/app/manifests/v1").await;
    assert_eq!(got.status, StatusCode::OK);
    same(got.bytes(), &body);
    assert_eq!(got.header("docker-content-digest"), Some(md.as_str()));
    assert_eq!(b.counter("berth_stale_serves_total").await, 1);
}

// ---- the bucket's share: eviction, warm, and the admin tools ----

/// `[storage.s3]` for a replica whose bucket is handed in (the keys only set limits; the
/// credentials are never used).
fn s3_table(dir: &std::path::Path, keys: &str) -> String {
    let secret = dir.join("s3-secret");
    std::fs::write(&secret, "unused\n").unwrap();
    format!(
        "[storage.s3]\nbucket = \"test\"\nprefix = \"mirror/\"\naccess_key_id = \"k\"\n\
         secret_access_key_file = \"{}\"\n{keys}\n",
        secret.display()
    )
}

fn share_config(dir: &std::path::Path, url: &str, more: &str) -> String {
    format!(
        "{}{more}[[upstream]]\nname = \"registry.test\"\nurl = \"{url}\"\ndefault = true\n",
        listeners_and_storage(dir)
    )
}

#[tokio::test]
async fn the_pass_at_start_evicts_the_least_recently_pulled_blob_from_the_share() {
    let fake = FakeRegistry::start().await;
    let shared = Shared::new();
    let (bucket, _) = shared.bucket();
    let mut digests = Vec::new();
    for seed in 0..3u8 {
        let data = Bytes::from(vec![seed; 1000]);
        let d = berth::oci::Digest::of(&data);
        let body = stream::iter([Ok::<_, std::io::Error>(data)]);
        bucket.put_blob(&d, Some(1000), body).await.unwrap();
        bucket.put_origin("registry.test", &d).await.unwrap();
        digests.push(d);
    }
    // Other replicas pulled the first and the last since: the middle one is the least recent.
    bucket.put_access(&digests[0]).await.unwrap();
    bucket.put_access(&digests[2]).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let more = s3_table(dir.path(), "max_size = \"3000B\"\nkeep_pulled = \"0s\"");
    let cfg = share_config(dir.path(), &fake.url(), &more);
    let (b, _) = start_with_bucket_mirror(&cfg, dir, shared.bucket().0).await;
    until_metric(&b, "berth_bucket_evictions_total{reason=\"size\"}", 1).await;
    let key = |d: &berth::oci::Digest| shared.blob_key(&d.to_string());
    assert!(shared.get(&key(&digests[1])).await.is_none(), "evicted");
    assert!(
        shared
            .get(&shared.origin_key("registry.test", &digests[1].to_string()))
            .await
            .is_none(),
        "with its origin marker"
    );
    for kept in [&digests[0], &digests[2]] {
        assert!(shared.get(&key(kept)).await.is_some());
    }
    assert_eq!(
        b.counter("berth_bucket_evicted_bytes_total{reason=\"size\"}")
            .await,
        1000
    );
    assert_eq!(b.counter("berth_bucket_bytes").await, 2000);
    let (_, health) = admin_call(&b, Method::GET, "/healthz?verbose").await;
    let health = String::from_utf8_lossy(&health);
    assert!(
        health.contains("bucket share: 2 objects, 2000 bytes of max 3000"),
        "{health}"
    );
}

#[tokio::test]
async fn warmed_content_reaches_the_bucket_even_when_the_disk_had_it() {
    use berth::warm::{ImageRef, Options, Warmer};
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(200_000, 21);
    let ld = fake.put_blob("team/app", layer.clone());
    let config_blob = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let cd = fake.put_blob("team/app", config_blob.clone());
    let body = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{}}}]}}"#,
        config_blob.len(),
        layer.len()
    ));
    let md = fake.put_tagged("team/app", "1", MANIFEST_TYPE, body.clone());
    let shared = Shared::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("registry.test", &fake.url())], "");
    let (b, mirror) = start_with_bucket_mirror(&cfg, dir, shared.bucket().0).await;
    let opts = Options {
        server: berth::warm::parse_server(&format!("http://{}", b.addr)).unwrap(),
        ca_file: None,
        jobs: 2,
        platforms: Vec::new(),
        live: false,
        credentials: None,
    };
    let refs: Vec<ImageRef> = vec!["team/app:1".parse().unwrap()];
    let warm = || async { Warmer::new(&opts).unwrap().run(&refs).await };
    // The first warm fills from the upstream: uploaded as every fill is.
    assert_eq!(warm().await.exit_code(), 0);
    let manifest_key = Path::from(format!("mirror/manifests/sha256/{}", &md[7..]));
    shared.until(&shared.blob_key(&ld)).await;
    shared.until(&manifest_key).await;
    // The bucket loses them (evicted, or it is new to a berth whose disk had them): warming
    // again hits the local disk, and the next flush of the pulls puts them back.
    shared.inner.delete(&shared.blob_key(&ld)).await.unwrap();
    shared.inner.delete(&manifest_key).await.unwrap();
    assert_eq!(warm().await.exit_code(), 0);
    assert_eq!(fake.hits(Method::GET, &blob_path(&ld)), 1, "a local hit");
    let tier = mirror.tier().unwrap();
    // The manifest, its config and its layer: one marker each.
    assert_eq!(tier.flush_touches(mirror.store()).await, 3);
    shared.until(&shared.blob_key(&ld)).await;
    shared.until(&manifest_key).await;
    assert_eq!(shared.get(&shared.blob_key(&ld)).await.unwrap(), layer);
    assert_eq!(shared.get(&manifest_key).await.unwrap(), body);
    // Each pull is recorded as an access marker.
    let access = Path::from(format!("mirror/access/sha256/{}", &ld[7..]));
    assert!(shared.get(&access).await.is_some());
}

async fn admin_call(b: &Berth, method: Method, path: &str) -> (StatusCode, Bytes) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", b.metrics))
        .header("authorization", "Bearer tier-admin-token-0123456789abcdef")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = b.client.request(req).await.unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn the_admin_tools_list_count_and_remove_in_both_tiers() {
    use berth::admin::{Listing, Removal, Stats};
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(100_000, 31);
    let ld = fake.put_blob("team/app", layer.clone());
    let md = fake.put_tagged(
        "team/app",
        "1",
        MANIFEST_TYPE,
        manifest_for(&ld, layer.len()),
    );
    let shared = Shared::new();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "tier-admin-token-0123456789abcdef\n").unwrap();
    let more = format!(
        "{}[admin]\nenabled = true\ntoken_file = \"{}\"\n",
        s3_table(dir.path(), "max_size = \"1GiB\""),
        token.display()
    );
    let cfg = share_config(dir.path(), &fake.url(), &more);
    let (b, _) = start_with_bucket_mirror(&cfg, dir, shared.bucket().0).await;
    assert_eq!(
        b.get("/v2/team/app/manifests/1").await.status,
        StatusCode::OK
    );
    same(b.get(&blob_path(&ld)).await.bytes(), &layer);
    b.settled().await;
    let manifest_key = Path::from(format!("mirror/manifests/sha256/{}", &md[7..]));
    let tag_key = Path::from("mirror/tags/registry.test/team/app/1");
    shared.until(&shared.origin_key("registry.test", &ld)).await;
    shared.until(&manifest_key).await;
    shared.until(&tag_key).await;
    // Another replica's blob, only in the bucket.
    let (other, _) = shared.bucket();
    let theirs = Bytes::from_static(b"another replica's layer");
    let td = berth::oci::Digest::of(&theirs);
    let s = stream::iter([Ok::<_, std::io::Error>(theirs.clone())]);
    other
        .put_blob(&td, Some(theirs.len() as u64), s)
        .await
        .unwrap();

    let (status, body) = admin_call(&b, Method::GET, "/admin/cache").await;
    assert_eq!(status, StatusCode::OK);
    let ls: Listing = serde_json::from_slice(&body).unwrap();
    assert_eq!(ls.images.len(), 1);
    assert_eq!(
        ls.images[0].in_bucket,
        Some(2),
        "the manifest and its layer"
    );
    let totals = ls.bucket.clone().unwrap();
    assert_eq!(
        (totals.blobs, totals.manifests, totals.not_local),
        (2, 1, 1)
    );
    let table = ls.to_string();
    assert!(
        table.contains("IN BUCKET") && table.contains("1 not on this disk"),
        "{table}"
    );

    let (_, body) = admin_call(&b, Method::GET, "/admin/stats").await;
    let stats: Stats = serde_json::from_slice(&body).unwrap();
    let bs = stats.bucket.clone().unwrap();
    assert_eq!((bs.blobs, bs.manifests, bs.tags), (2, 1, 1));
    assert_eq!(bs.max_size, Some(1 << 30));
    assert!(
        stats
            .to_string()
            .contains("bucket:         2 blobs, 1 manifests"),
        "{stats}"
    );

    // rm of the tag: gone from the disk and from the bucket, markers and record included.
    let (status, body) = admin_call(&b, Method::DELETE, "/admin/cache/team/app:1").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let removal: Removal = serde_json::from_slice(&body).unwrap();
    assert_eq!(removal.tags, ["registry.test/team/app:1"]);
    let places: Vec<_> = removal
        .removed
        .iter()
        .map(|r| (r.digest.as_str(), r.location.as_deref()))
        .collect();
    assert_eq!(places.len(), 2, "{removal}");
    assert!(
        places.contains(&(ld.as_str(), Some("local+bucket"))),
        "{removal}"
    );
    assert!(
        places.contains(&(md.as_str(), Some("local+bucket"))),
        "{removal}"
    );
    for key in [
        shared.blob_key(&ld),
        manifest_key,
        tag_key,
        shared.origin_key("registry.test", &ld),
    ] {
        assert!(shared.get(&key).await.is_none(), "{key}");
    }
    assert!(!b.blob_file(&ld).exists());
    // rm by digest of what only the bucket holds.
    let (status, body) = admin_call(&b, Method::DELETE, &format!("/admin/cache/{td}")).await;
    assert_eq!(status, StatusCode::OK);
    let removal: Removal = serde_json::from_slice(&body).unwrap();
    assert_eq!(removal.removed[0].location.as_deref(), Some("bucket"));
    assert!(
        shared
            .get(&shared.blob_key(&td.to_string()))
            .await
            .is_none()
    );
    // Nothing left to match: 404, as without a bucket.
    let (status, _) = admin_call(&b, Method::DELETE, &format!("/admin/cache/{td}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_admin_tools_fail_loudly_while_the_bucket_is_down() {
    let fake = FakeRegistry::start().await;
    let shared = Shared::new();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "tier-admin-token-0123456789abcdef\n").unwrap();
    let more = format!(
        "[admin]\nenabled = true\ntoken_file = \"{}\"\n",
        token.display()
    );
    let cfg = share_config(dir.path(), &fake.url(), &more);
    let (bucket, faults) = shared.bucket();
    let (b, _) = start_with_bucket_mirror(&cfg, dir, bucket).await;
    faults.down.store(true, Ordering::SeqCst);
    for path in ["/admin/cache", "/admin/stats"] {
        let (status, body) = admin_call(&b, Method::GET, path).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("listing the bucket"), "{path}: {text}");
    }
    // The bucket back: the same calls answer.
    faults.down.store(false, Ordering::SeqCst);
    let (status, _) = admin_call(&b, Method::GET, "/admin/stats").await;
    assert_eq!(status, StatusCode::OK);
}
