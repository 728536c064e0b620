//! Isolation between clients, repositories and upstreams, over real sockets against the fake
//! registry: nothing one client asks for can make another client's pull fail, and a download
//! through one upstream is never shared with a request through another.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use support::instance::{Berth, Got, berth, same, until_metric};
use support::{FakeRegistry, Fault, random_bytes};

/// Polls `cond` until it holds, for at most 10 s (the fake answers on loopback in milliseconds).
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn spawn_get(b: &std::sync::Arc<Berth>, path: String) -> tokio::task::JoinHandle<Got> {
    let b = b.clone();
    tokio::spawn(async move { b.request(Method::GET, &path, &[]).await })
}

/// Someone asks for a popular layer under a repository that does not hold it, and the upstream
/// takes its time to say 404; meanwhile a legitimate pull of that layer arrives. Before, it joined
/// the doomed download and failed with it; now it waits for that answer and then fetches for itself.
#[tokio::test]
async fn a_request_under_a_repository_without_the_blob_cannot_fail_another_pull() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000, 1);
    let digest = fake.put_blob("team/good", layer.clone());
    fake.put_blob("team/evil", Bytes::from_static(b"something else"));
    let evil = format!("/v2/team/evil/blobs/{digest}");
    let (open, gate) = tokio::sync::watch::channel(false);
    fake.fault(&evil, Fault::Hold(gate));
    let b = std::sync::Arc::new(berth(&fake, "").await);

    let attacker = spawn_get(&b, evil.clone());
    until("the attacker's request reached upstream", || {
        fake.hits(Method::GET, &evil) == 1
    })
    .await;
    let victim = spawn_get(&b, format!("/v2/team/good/blobs/{digest}"));
    until_metric(&b, "berth_fill_waits_total", 1).await;
    open.send_replace(true);

    let got = victim.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    same(got.body.as_ref().expect("the whole body"), &layer);
    let attacked = attacker.await.unwrap();
    assert_eq!(
        (attacked.status, attacked.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/team/good/blobs/{digest}")),
        1
    );
}

/// Sharing across repositories still saves the fetch: the second repository's request waits for
/// the first download's answer and, that being the blob, reads it.
#[tokio::test]
async fn concurrent_pulls_of_one_blob_under_two_repositories_fetch_it_once() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000, 2);
    let digest = fake.put_blob("team/a", layer.clone());
    fake.put_blob("team/b", layer.clone());
    let first = format!("/v2/team/a/blobs/{digest}");
    let (open, gate) = tokio::sync::watch::channel(false);
    fake.fault(&first, Fault::Hold(gate));
    let b = std::sync::Arc::new(berth(&fake, "").await);

    let a = spawn_get(&b, first.clone());
    until("a's request reached upstream", || {
        fake.hits(Method::GET, &first) == 1
    })
    .await;
    let b2 = spawn_get(&b, format!("/v2/team/b/blobs/{digest}"));
    until_metric(&b, "berth_fill_waits_total", 1).await;
    open.send_replace(true);
    for got in [a.await.unwrap(), b2.await.unwrap()] {
        assert_eq!(got.status, StatusCode::OK);
        same(got.body.as_ref().unwrap(), &layer);
    }
    assert_eq!(fake.hits(Method::GET, &first), 1);
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/team/b/blobs/{digest}")),
        0
    );
    assert_eq!(b.counter("berth_coalesced_requests_total").await, 1);
}

/// A download through one upstream is not shared with a request through another: that upstream
/// is asked itself (it may not hold the blob, or may be the public face of a private one).
#[tokio::test]
async fn downloads_are_not_shared_across_upstreams() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(200_000, 3);
    let digest = fake.put_blob("team/a", layer.clone());
    let path = format!("/v2/team/a/blobs/{digest}");
    let (open, gate) = tokio::sync::watch::channel(false);
    fake.fault_times(&path, Fault::Hold(gate), 1);
    let second = format!(
        "\n[[upstream]]\nname = \"other.test\"\nurl = \"{}\"\n",
        fake.url()
    );
    let b = std::sync::Arc::new(berth(&fake, &second).await);

    let one = spawn_get(&b, format!("/v2/registry.test/team/a/blobs/{digest}"));
    until("the first upstream was asked", || {
        fake.hits(Method::GET, &path) == 1
    })
    .await;
    let two = spawn_get(&b, format!("/v2/other.test/team/a/blobs/{digest}"));
    until("the second upstream was asked too", || {
        fake.hits(Method::GET, &path) == 2
    })
    .await;
    open.send_replace(true);
    for got in [one.await.unwrap(), two.await.unwrap()] {
        assert_eq!(got.status, StatusCode::OK);
        same(got.body.as_ref().unwrap(), &layer);
    }
}

/// A blob and a manifest cached through a private upstream are not answered by digest through a
/// public one that does not have them: the client gets that upstream's own 404, exactly as if
/// nothing were cached. Once the public upstream has them (it confirms, once), the cache serves
/// them through it too; the records survive a restart. Content cached before records were kept
/// is served as before.
#[tokio::test]
async fn content_cached_through_one_upstream_is_answered_through_another_only_if_it_has_it() {
    let private = FakeRegistry::start().await;
    let public = FakeRegistry::start().await;
    let layer = random_bytes(100_000, 4);
    let blob = private.put_blob("team/secret", layer.clone());
    let manifest = private.put_manifest(
        "team/secret",
        berth::oci::media::OCI_MANIFEST,
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    public.put_blob(
        "team/secret",
        Bytes::from_static(b"the public repository exists"),
    );
    let second = format!(
        "\n[[upstream]]\nname = \"public.test\"\nurl = \"{}\"\n",
        public.url()
    );
    let b = berth(&private, &second).await;
    let via = |up: &str, what: &str| format!("/v2/{up}/team/secret/{what}");

    let got = b.get(&via("registry.test", &format!("blobs/{blob}"))).await;
    same(got.body.as_ref().unwrap(), &layer);
    let got = b
        .get(&via("registry.test", &format!("manifests/{manifest}")))
        .await;
    assert_eq!(got.status, StatusCode::OK);
    // Cached: the blob's file is renamed into place just after its last byte (before that, a
    // request through the public upstream is a miss there, which asks it for the bytes).
    b.settled().await;

    for method in [Method::GET, Method::HEAD] {
        let got = b
            .request(
                method.clone(),
                &via("public.test", &format!("blobs/{blob}")),
                &[],
            )
            .await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{method} blob");
        let got = b
            .request(
                method.clone(),
                &via("public.test", &format!("manifests/{manifest}")),
                &[],
            )
            .await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{method} manifest");
    }
    assert_eq!(
        b.get(&via("public.test", &format!("blobs/{blob}")))
            .await
            .code(),
        "BLOB_UNKNOWN"
    );
    // What the public upstream was asked: only whether it has them, never for the bytes.
    assert_eq!(
        public.hits(Method::GET, &format!("/v2/team/secret/blobs/{blob}")),
        0
    );
    assert!(public.hits(Method::HEAD, &format!("/v2/team/secret/blobs/{blob}")) >= 1);
    assert_eq!(b.counter("berth_origin_confirmations_total").await, 0);

    // Now the public upstream has the blob: confirmed once, then served from the cache.
    public.put_blob("team/secret", layer.clone());
    public.reset_counts();
    for _ in 0..3 {
        let got = b.get(&via("public.test", &format!("blobs/{blob}"))).await;
        assert_eq!(got.status, StatusCode::OK);
        same(got.body.as_ref().unwrap(), &layer);
    }
    assert_eq!(
        public.hits(Method::HEAD, &format!("/v2/team/secret/blobs/{blob}")),
        1
    );
    assert_eq!(
        public.hits(Method::GET, &format!("/v2/team/secret/blobs/{blob}")),
        0
    );
    assert_eq!(b.counter("berth_origin_confirmations_total").await, 1);

    // The records survive a restart: no new confirmation, the manifest still refused.
    let dir = b.stop().await;
    let b = support::instance::start_on(&private, &second, dir).await;
    public.reset_counts();
    assert_eq!(
        b.get(&via("public.test", &format!("blobs/{blob}")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        public.hits(Method::HEAD, &format!("/v2/team/secret/blobs/{blob}")),
        0
    );
    assert_eq!(
        b.get(&via("public.test", &format!("manifests/{manifest}")))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // A cache without records (made before they were kept) serves as it always did.
    let dir = b.stop().await;
    std::fs::remove_dir_all(dir.path().join("origins")).unwrap();
    let b = support::instance::start_on(&private, &second, dir).await;
    assert_eq!(
        b.get(&via("public.test", &format!("manifests/{manifest}")))
            .await
            .status,
        StatusCode::OK
    );
}

/// A HEAD of a cached blob through another upstream is that upstream's own answer, whatever its
/// "no" is: here a 403, the very answer a HEAD of a digest nobody cached gets, so the client cannot
/// tell what is cached. Once the upstream has the blob, the HEAD's confirmation is remembered: the
/// cache then answers a GET through it without asking again.
#[tokio::test]
async fn a_head_of_a_cached_blob_through_another_upstream_is_that_upstreams_own_answer() {
    let private = FakeRegistry::start().await;
    let public = FakeRegistry::start().await;
    let layer = random_bytes(50_000, 5);
    let blob = private.put_blob("team/secret", layer.clone());
    // Never pulled: its HEAD through the public upstream is a plain miss.
    let uncached = private.put_blob("team/secret", random_bytes(50_000, 6));
    let second = format!(
        "\n[[upstream]]\nname = \"public.test\"\nurl = \"{}\"\n",
        public.url()
    );
    let b = berth(&private, &second).await;
    same(
        b.get(&format!("/v2/registry.test/team/secret/blobs/{blob}"))
            .await
            .bytes(),
        &layer,
    );
    b.settled().await;
    assert!(b.blob_file(&blob).exists());

    let via_public = |d: &str| format!("/v2/public.test/team/secret/blobs/{d}");
    let upstream = |d: &str| format!("/v2/team/secret/blobs/{d}");
    let forbidden = || Fault::Status(StatusCode::FORBIDDEN, None);
    public.fault(&upstream(&blob), forbidden());
    public.fault(&upstream(&uncached), forbidden());
    let miss = b.request(Method::HEAD, &via_public(&uncached), &[]).await;
    let hit = b.request(Method::HEAD, &via_public(&blob), &[]).await;
    assert_eq!(hit.status, StatusCode::FORBIDDEN);
    assert_eq!(hit.status, miss.status);
    assert_eq!(public.hits(Method::HEAD, &upstream(&blob)), 1);
    assert_eq!(public.hits(Method::GET, &upstream(&blob)), 0);

    // The public upstream has it now: the HEAD asks once, and its yes is recorded.
    public.clear_faults();
    public.put_blob("team/secret", layer.clone());
    public.reset_counts();
    let head = b.request(Method::HEAD, &via_public(&blob), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.header("content-length"),
        Some(layer.len().to_string().as_str())
    );
    same(b.get(&via_public(&blob)).await.bytes(), &layer);
    assert_eq!(public.hits(Method::HEAD, &upstream(&blob)), 1);
    assert_eq!(public.hits(Method::GET, &upstream(&blob)), 0);
    assert_eq!(b.counter("berth_origin_confirmations_total").await, 1);
}
