//! berth as a whole, over real sockets, against the in-process fake registry: hits that never
//! reach upstream, misses that stream, verification, auth, redirects, faults and stale tags.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use berth::oci::media;
use support::instance::{berth, gated_blob, same, start_on, until_metric};
use support::{FakeRegistry, Fault, Host, TokenAuth, random_bytes};

const INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const DOCKER: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;

#[tokio::test]
async fn pull_then_hit_without_upstream_requests() {
    let fake = FakeRegistry::start().await;
    let manifest = fake.put_tagged("library/app", "1.0", media::DOCKER_MANIFEST, DOCKER);
    let layer = random_bytes(3 << 20, 1);
    let blob = fake.put_blob("library/app", layer.clone());
    let b = berth(&fake, "").await;

    for round in 0..2 {
        let m = b.get("/v2/app/manifests/1.0").await;
        assert_eq!(m.status, 200, "round {round}");
        assert_eq!(m.bytes().as_ref(), DOCKER.as_bytes());
        assert_eq!(m.header("docker-content-digest"), Some(manifest.as_str()));
        assert_eq!(m.header("content-type"), Some(media::DOCKER_MANIFEST));
        let by_digest = b.get(&format!("/v2/app/manifests/{manifest}")).await;
        assert_eq!(by_digest.bytes().as_ref(), DOCKER.as_bytes());
        let l = b.get(&format!("/v2/app/blobs/{blob}")).await;
        assert_eq!(l.status, 200);
        assert_eq!(
            l.header("content-length"),
            Some(layer.len().to_string().as_str())
        );
        assert_eq!(l.header("docker-content-digest"), Some(blob.as_str()));
        same(l.bytes(), &layer);
        b.settled().await;
    }
    // One fetch each, however many pulls: the second round came from the cache.
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1.0"), 1);
    assert_eq!(
        fake.hits(
            Method::GET,
            &format!("/v2/library/app/manifests/{manifest}")
        ),
        0
    );
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        1
    );
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
    assert!(
        b.metric("berth_cache_lookups_total{kind=\"blob\",outcome=\"hit\"")
            .await
            .ends_with(" 1")
    );
}

#[tokio::test]
async fn a_cached_manifest_survives_a_restart_and_is_served_with_upstream_gone() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(100_000, 2);
    let blob = fake.put_blob("library/app", layer.clone());
    let manifest = fake.put_manifest("library/app", media::OCI_INDEX, INDEX);
    let b = berth(&fake, "").await;
    assert_eq!(
        b.get(&format!("/v2/app/manifests/{manifest}")).await.status,
        200
    );
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    b.settled().await;
    let data = b.stop().await;
    // Restart on the same data with an upstream that refuses everything.
    fake.fault(
        &format!("/v2/library/app/manifests/{manifest}"),
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
    );
    fake.fault(
        &format!("/v2/library/app/blobs/{blob}"),
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
    );
    let b = start_on(&fake, "", data).await;
    let m = b.get(&format!("/v2/app/manifests/{manifest}")).await;
    assert_eq!(
        (m.status, m.header("content-type")),
        (StatusCode::OK, Some(media::OCI_INDEX))
    );
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
}

#[tokio::test]
async fn token_auth_is_handled_for_the_client() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    fake.put_tagged("library/app", "1", media::OCI_INDEX, INDEX);
    let blob = fake.put_blob("library/app", random_bytes(5000, 3));
    let b = berth(&fake, "").await;
    assert_eq!(b.get("/v2/app/manifests/1").await.status, 200);
    assert_eq!(b.get(&format!("/v2/app/blobs/{blob}")).await.status, 200);
    // One token for the repository, reused for the blob.
    assert_eq!(fake.token_requests().len(), 1);
    assert_eq!(
        fake.token_requests()[0].param("scope").as_deref(),
        Some("repository:library/app:pull")
    );
}

#[tokio::test]
async fn a_redirected_blob_is_fetched_without_the_token() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    let layer = random_bytes(200_000, 4);
    let blob = fake.put_blob("library/app", layer.clone());
    fake.fault(
        &format!("/v2/library/app/blobs/{blob}"),
        Fault::RedirectToOther,
    );
    let b = berth(&fake, "").await;
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    let cdn: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.host == Host::Other)
        .collect();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(
        cdn[0].header("authorization"),
        None,
        "token leaked to the redirect target"
    );
    let main = fake.requests_to(&format!("/v2/library/app/blobs/{blob}"));
    assert!(main.iter().any(|r| {
        r.header("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))
    }));
}

#[tokio::test]
async fn wrong_bytes_from_upstream_never_complete_and_are_not_cached() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(1 << 20, 5);
    let blob = fake.put_blob("library/app", layer.clone());
    let path = format!("/v2/library/app/blobs/{blob}");
    fake.fault_times(&path, Fault::WrongBytes, 1);
    let b = berth(&fake, "").await;

    let got = b.get(&format!("/v2/app/blobs/{blob}")).await;
    assert_eq!(
        got.status, 200,
        "headers go out before the body is verified"
    );
    assert!(
        got.body.is_err(),
        "a wrong body must end in an error, not complete"
    );
    assert!(!b.blob_file(&blob).exists(), "wrong bytes cached");
    assert!(
        b.metric("berth_digest_mismatches_total")
            .await
            .contains("kind=\"blob\"")
    );
    // The failed fill is cleared: the next request fetches again and succeeds.
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    assert_eq!(fake.hits(Method::GET, &path), 2);
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
}

#[tokio::test]
async fn wrong_manifest_bytes_are_refused() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_tagged("library/app", "1", media::OCI_INDEX, INDEX);
    fake.fault_times("/v2/library/app/manifests/1", Fault::WrongBytes, 1);
    fake.fault_times(
        &format!("/v2/library/app/manifests/{digest}"),
        Fault::WrongBytes,
        1,
    );
    let b = berth(&fake, "").await;
    // By tag: the upstream's Docker-Content-Digest does not match the body.
    let got = b.get("/v2/app/manifests/1").await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::BAD_GATEWAY, "DIGEST_INVALID")
    );
    // By digest: the body does not match the digest asked for.
    let got = b.get(&format!("/v2/app/manifests/{digest}")).await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::BAD_GATEWAY, "DIGEST_INVALID")
    );
    assert!(!b.blob_file(&digest).exists());
    assert_eq!(
        b.get("/v2/app/manifests/1").await.bytes().as_ref(),
        INDEX.as_bytes()
    );
}

#[tokio::test]
async fn a_connection_closed_mid_blob_fails_the_client_and_caches_nothing() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(2 << 20, 6);
    let blob = fake.put_blob("library/app", layer.clone());
    fake.fault_times(
        &format!("/v2/library/app/blobs/{blob}"),
        Fault::CloseAfter(700_000),
        1,
    );
    // Without resuming (tests/it/resume.rs covers it), a broken transfer fails cleanly.
    let b = berth(&fake, "resume_attempts = 0").await;
    let got = b.get(&format!("/v2/app/blobs/{blob}")).await;
    assert!(
        got.body.is_err(),
        "a broken upstream transfer must not look complete"
    );
    assert!(!b.blob_file(&blob).exists());
    assert_eq!(
        std::fs::read_dir(b.dir.path().join("tmp")).unwrap().count(),
        0,
        "temp file left behind"
    );
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
}

#[tokio::test]
async fn a_stalled_upstream_fails_after_stall_timeout() {
    let fake = FakeRegistry::start().await;
    let blob = fake.put_blob("library/app", random_bytes(300_000, 7));
    fake.fault_times(
        &format!("/v2/library/app/blobs/{blob}"),
        Fault::StallAfter(1000),
        1,
    );
    let b = berth(&fake, "stall_timeout = \"300ms\"\nresume_attempts = 0").await;
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        b.get(&format!("/v2/app/blobs/{blob}")),
    )
    .await
    .expect("stall detected");
    assert!(got.body.is_err());
    assert!(!b.blob_file(&blob).exists());
}

#[tokio::test]
async fn tags_are_revalidated_with_head_and_served_stale_when_upstream_fails() {
    let fake = FakeRegistry::start().await;
    let first = fake.put_tagged("library/app", "latest", media::OCI_INDEX, INDEX);
    let b = berth(&fake, "tag_ttl = \"0s\"").await;
    assert_eq!(
        b.get("/v2/app/manifests/latest")
            .await
            .header("docker-content-digest"),
        Some(first.as_str())
    );

    // Unchanged upstream: a HEAD, no GET.
    let again = b.get("/v2/app/manifests/latest").await;
    assert_eq!(again.status, 200);
    assert_eq!(
        fake.hits(Method::GET, "/v2/library/app/manifests/latest"),
        1
    );
    assert_eq!(
        fake.hits(Method::HEAD, "/v2/library/app/manifests/latest"),
        1
    );

    // Upstream failing: the last known answer, marked stale.
    fake.fault(
        "/v2/library/app/manifests/latest",
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
    );
    let stale = b.get("/v2/app/manifests/latest").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("docker-content-digest"), Some(first.as_str()));
    assert!(
        stale
            .header("warning")
            .is_some_and(|w| w.starts_with("110")),
        "{:?}",
        stale.headers
    );
    assert!(b.metric("berth_stale_serves_total").await.ends_with(" 1"));

    // Tag moved upstream: the new manifest is fetched.
    fake.clear_faults();
    let second = fake.put_tagged("library/app", "latest", media::DOCKER_MANIFEST, DOCKER);
    let moved = b.get("/v2/app/manifests/latest").await;
    assert_eq!(moved.header("docker-content-digest"), Some(second.as_str()));
    assert_eq!(moved.bytes().as_ref(), DOCKER.as_bytes());
}

#[tokio::test]
async fn without_a_stale_answer_upstream_errors_reach_the_client() {
    let fake = FakeRegistry::start().await;
    fake.fault(
        "/v2/library/app/manifests/1",
        Fault::Status(StatusCode::TOO_MANY_REQUESTS, Some("7".into())),
    );
    let b = berth(&fake, "").await;
    let got = b.get("/v2/app/manifests/1").await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS")
    );
    assert_eq!(got.header("retry-after"), Some("7"));
    fake.fault(
        "/v2/library/app/manifests/2",
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, None),
    );
    let got = b.get("/v2/app/manifests/2").await;
    assert!(got.status.is_server_error(), "{}", got.status);
    fake.put_tagged("library/app", "exists", media::OCI_INDEX, INDEX);
    let got = b.get("/v2/app/manifests/missing").await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let got = b
        .get(&format!("/v2/app/blobs/sha256:{}", "0".repeat(64)))
        .await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );
}

#[tokio::test]
async fn a_cached_tag_is_only_served_to_clients_that_accept_its_type() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("library/app", "1", media::OCI_INDEX, INDEX);
    let b = berth(&fake, "").await;
    assert_eq!(b.get("/v2/app/manifests/1").await.status, 200);
    // A client that reads only Docker schema 2 must not get the cached OCI index: it is told what
    // the tag is, as registries do, without another upstream request (the answer would be the same).
    let old = b
        .request(
            Method::GET,
            "/v2/app/manifests/1",
            &[("accept", media::DOCKER_MANIFEST)],
        )
        .await;
    assert_eq!(
        (old.status, old.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1"), 1);
    let sent = fake.requests_to("/v2/library/app/manifests/1");
    assert_eq!(sent[0].header("accept"), Some(media::UPSTREAM_ACCEPT));
    // A client that accepts it gets the cached answer.
    let new = b
        .request(
            Method::GET,
            "/v2/app/manifests/1",
            &[("accept", media::OCI_INDEX)],
        )
        .await;
    assert_eq!(new.header("content-type"), Some(media::OCI_INDEX));
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1"), 1);
}

#[tokio::test]
async fn ranges_on_misses_and_hits() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(1_000_000, 8);
    let blob = fake.put_blob("library/app", layer.clone());
    let b = berth(&fake, "").await;
    let path = format!("/v2/app/blobs/{blob}");
    for _ in 0..2 {
        let got = b
            .request(Method::GET, &path, &[("range", "bytes=1000-1999")])
            .await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(got.header("content-range"), Some("bytes 1000-1999/1000000"));
        same(got.bytes(), &layer.slice(1000..2000));
        let tail = b
            .request(Method::GET, &path, &[("range", "bytes=-10")])
            .await;
        same(tail.bytes(), &layer.slice(999_990..));
    }
    let bad = b
        .request(Method::GET, &path, &[("range", "bytes=2000000-")])
        .await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(bad.header("content-range"), Some("bytes */1000000"));
    // The range request on the miss still filled the whole blob, once.
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        1
    );
}

/// A range of a blob being fetched: its bytes may arrive long before the whole blob is hashed, but
/// the 206 only completes once the digest checked out; with wrong bytes upstream it never does.
#[tokio::test]
async fn a_range_of_a_fill_completes_only_after_the_digest_checked() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(1_000_000, 18);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream = format!("/v2/library/app/blobs/{blob}");
    fake.fault_times(&upstream, Fault::WrongBytes, 1);
    let b = berth(&fake, "resume_attempts = 0").await;
    let path = format!("/v2/app/blobs/{blob}");
    let got = b
        .request(Method::GET, &path, &[("range", "bytes=0-99")])
        .await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert!(got.body.is_err(), "a 206 of unverified bytes completed");
    b.settled().await;
    assert!(!b.blob_file(&blob).exists());
    // The honest second fetch: the range completes, with the right bytes.
    let got = b
        .request(Method::GET, &path, &[("range", "bytes=0-99")])
        .await;
    same(got.bytes(), &layer.slice(0..100));
}

/// The same promise for ranges that end at the blob's last byte (`bytes=-n`, `bytes=a-`), asked
/// while the fill runs, of an upstream body of the right length that is wrong at its end, or only
/// at its start (the range's own bytes are then right, and still unproven). The rest of the body
/// arrives at once, a megabyte that takes the fill a while to hash and write while its readers
/// wait on the last byte; the digest fails and every 206 breaks off short.
/// Nothing is cached; the next pull, with the upstream honest, gets the right bytes.
#[tokio::test]
async fn a_range_to_the_last_byte_of_a_wrong_fill_never_completes() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(2 << 20, 19);
    let n = layer.len();
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream = format!("/v2/library/app/blobs/{blob}");
    let b = berth(&fake, "resume_attempts = 0").await;
    let path = format!("/v2/app/blobs/{blob}");
    let from = n - 1000;
    let ranges = [
        ("bytes=-100".to_owned(), n - 100),
        (format!("bytes={from}-"), from),
    ];
    // Readers waiting for the last byte: the more of them, the surer a byte released before the
    // check reaches one.
    const CLIENTS: usize = 8;
    let head_start = n / 2;

    for (round, (wrong_at, changed)) in [("end", n - 10..n), ("start", 0..10)]
        .into_iter()
        .enumerate()
    {
        let mut wrong = layer.to_vec();
        for byte in &mut wrong[changed] {
            *byte = !*byte;
        }
        let (release, gate) = tokio::sync::watch::channel(0usize);
        fake.fault_times(&upstream, Fault::GatedWith(gate, Bytes::from(wrong)), 1);
        // A pull starts the fill; the upstream sends its first half, and holds the rest.
        let mut whole = b.stream(&path).await;
        release.send_replace(head_start);
        whole.read_at_least(head_start).await;

        // The ranges join the running fill.
        let mut clients = Vec::new();
        for (range, start) in ranges.iter().cycle().take(CLIENTS) {
            let (status, headers, body) = b.stream_with(&path, &[("range", range)]).await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{wrong_at}: {range}");
            assert_eq!(
                headers.get("content-range").unwrap(),
                &format!("bytes {start}-{}/{n}", n - 1),
                "{wrong_at}: {range}"
            );
            clients.push((range, body));
        }
        assert_eq!(
            b.counter("berth_cache_lookups_total{kind=\"blob\",outcome=\"joined\"")
                .await,
            (CLIENTS * (round + 1)) as u64,
        );

        // The rest arrives; the digest does not match: every range breaks off short.
        release.send_replace(n);
        for (range, body) in clients {
            let r = body.finish().await;
            assert!(
                r.is_err(),
                "{wrong_at}: {range} completed from a wrong body: {:?}",
                r.map(|v| v.len())
            );
        }
        assert!(whole.finish().await.is_err(), "{wrong_at}: the whole blob");
        b.settled().await;
        assert!(!b.blob_file(&blob).exists(), "{wrong_at}: cached");
        assert_eq!(fake.hits(Method::GET, &upstream), round + 1);
    }

    // The upstream is honest again: the ranges complete with the right bytes, fetched once.
    for (range, start) in &ranges {
        let got = b.request(Method::GET, &path, &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
        same(got.bytes(), &layer.slice(start..));
    }
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
    assert_eq!(fake.hits(Method::GET, &upstream), 3);
}

#[tokio::test]
async fn head_of_a_missing_blob_asks_upstream_without_fetching_it() {
    let fake = FakeRegistry::start().await;
    let blob = fake.put_blob("library/app", random_bytes(4321, 9));
    let b = berth(&fake, "").await;
    let got = b
        .request(Method::HEAD, &format!("/v2/app/blobs/{blob}"), &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("4321"));
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        0
    );
    assert!(!b.blob_file(&blob).exists());
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(4 << 20, 10);
    let blob = fake.put_blob("library/app", layer.clone());
    let b = berth(&fake, "").await;
    let path = format!("/v2/app/blobs/{blob}");
    let gets = (0..8).map(|_| b.get(&path));
    for got in futures_util::future::join_all(gets).await {
        same(got.bytes(), &layer);
    }
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        1
    );
}

#[tokio::test]
async fn tag_lists_pass_through_with_the_prefix_kept_in_links() {
    let fake = FakeRegistry::start().await;
    for t in ["a", "b", "c"] {
        fake.put_tagged("team/app", t, media::OCI_INDEX, INDEX);
    }
    let b = berth(&fake, "").await;
    let got = b.get("/v2/registry.test/team/app/tags/list?n=2").await;
    assert_eq!(got.status, 200);
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let link = got.header("link").expect("next-page link");
    assert!(
        link.starts_with("</v2/registry.test/team/app/tags/list?"),
        "{link}"
    );
    let sent = fake.requests_to("/v2/team/app/tags/list");
    assert_eq!(sent[0].param("n").as_deref(), Some("2"));
}

/// What an upstream sends as a tag list reaches clients only as a clean JSON list of valid tags,
/// with a next-page link only back into the API; anything else is a 502, not passed on.
#[tokio::test]
async fn hostile_tag_lists_are_cleaned_or_refused() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("team/app", "a", media::OCI_INDEX, INDEX);
    let b = berth(&fake, "").await;
    let path = "/v2/team/app/tags/list";
    let answer = |link: &str, ct: &str, body: &'static str| {
        let mut headers = vec![("content-type".to_owned(), ct.to_owned())];
        if !link.is_empty() {
            headers.push(("link".to_owned(), link.to_owned()));
        }
        Fault::Answer(headers, bytes::Bytes::from_static(body.as_bytes()))
    };
    fake.fault_times(
        path,
        answer(
            r#"<https://evil.example/v2/team/app/tags/list?last=a>; rel="next""#,
            "text/html",
            r#"{"name":"team/app","tags":["a","<script>alert(1)</script>","b"],"x":"y"}"#,
        ),
        1,
    );
    let got = b.get("/v2/registry.test/team/app/tags/list").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("link"), None);
    assert_eq!(got.bytes(), &br#"{"name":"team/app","tags":["a","b"]}"#[..]);

    fake.fault_times(
        path,
        answer("", "application/json", "<html>not json</html>"),
        1,
    );
    let got = b.get("/v2/registry.test/team/app/tags/list").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(got.bytes()).into_owned();
    assert!(body.contains("tag list is not a JSON object"), "{body}");
    assert!(!body.contains("<html>"), "{body}");
}

#[tokio::test]
async fn a_tag_list_of_zero_is_empty_without_a_link_or_an_upstream_request() {
    let fake = FakeRegistry::start().await;
    for t in ["a", "b"] {
        fake.put_tagged("team/app", t, media::OCI_INDEX, INDEX);
    }
    let b = berth(&fake, "").await;
    let got = b.get("/v2/registry.test/team/app/tags/list?n=0").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    assert_eq!(v, serde_json::json!({"name": "team/app", "tags": []}));
    assert_eq!(got.header("link"), None);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn containerd_ns_is_echoed() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("team/app", "1", media::OCI_INDEX, INDEX);
    let b = berth(&fake, "").await;
    let got = b.get("/v2/team/app/manifests/1?ns=registry.test").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("oci-namespace"), Some("registry.test"));
}

// ---- single-flight ----

#[tokio::test]
async fn concurrent_tag_pulls_make_one_upstream_request() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_tagged("library/app", "1", media::OCI_INDEX, INDEX);
    let (open, gate) = tokio::sync::watch::channel(false);
    fake.fault("/v2/library/app/manifests/1", Fault::Hold(gate));
    let b = std::sync::Arc::new(berth(&fake, "").await);
    let pulls: Vec<_> = (0..16)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.get("/v2/app/manifests/1").await })
        })
        .collect();
    until_metric(&b, "berth_coalesced_requests_total{kind=\"manifest\"}", 15).await;
    open.send_replace(true);
    for p in pulls {
        let got = p.await.unwrap();
        assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(got.bytes().as_ref(), INDEX.as_bytes());
    }
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1"), 1);
}

#[tokio::test]
async fn n_concurrent_blob_pulls_make_one_upstream_fetch() {
    let fake = FakeRegistry::start().await;
    let (layer, blob, release) = gated_blob(&fake, 3 << 20, 11, usize::MAX);
    let b = std::sync::Arc::new(berth(&fake, "").await);
    let path = format!("/v2/app/blobs/{blob}");
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (b, path) = (b.clone(), path.clone());
            tokio::spawn(async move { b.get(&path).await })
        })
        .collect();
    until_metric(&b, "berth_coalesced_requests_total{kind=\"blob\"}", 19).await;
    release.send_replace(layer.len());
    for p in pulls {
        same(p.await.unwrap().bytes(), &layer);
    }
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        1
    );
}

#[tokio::test]
async fn a_follower_joining_at_ninety_percent_gets_every_byte() {
    let fake = FakeRegistry::start().await;
    let (layer, blob, release) = gated_blob(&fake, 2 << 20, 12, usize::MAX);
    let b = berth(&fake, "").await;
    let path = format!("/v2/app/blobs/{blob}");
    let mut first = b.stream(&path).await;
    let ninety = layer.len() * 9 / 10;
    release.send_replace(ninety);
    first.read_at_least(ninety - 1).await;
    let late = b.stream(&path).await;
    release.send_replace(layer.len());
    same(&Bytes::from(late.finish().await.unwrap()), &layer);
    same(&Bytes::from(first.finish().await.unwrap()), &layer);
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        1
    );
}

/// A HEAD for a blob whose fill is under way (bytes arriving) is answered from that fill, with the
/// size the upstream announced: the upstream sees no HEAD.
#[tokio::test]
async fn a_head_during_a_fill_is_answered_from_the_fill() {
    let fake = FakeRegistry::start().await;
    let (layer, blob, release) = gated_blob(&fake, 1 << 20, 14, 1);
    let b = berth(&fake, "").await;
    let path = format!("/v2/app/blobs/{blob}");
    let mut pull = b.stream(&path).await;
    release.send_replace(1000);
    pull.read_at_least(1000).await;
    let head = b.request(Method::HEAD, &path, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    let size = layer.len().to_string();
    assert_eq!(head.header("content-length"), Some(size.as_str()));
    assert_eq!(
        fake.hits(Method::HEAD, &format!("/v2/library/app/blobs/{blob}")),
        0
    );
    release.send_replace(layer.len());
    same(&Bytes::from(pull.finish().await.unwrap()), &layer);
}

/// A verified blob that cannot be put in place (here a directory squats its final path) is still
/// served whole, is not cached, and is counted as a failed write.
#[tokio::test]
async fn a_blob_that_cannot_be_stored_is_served_and_counted() {
    let fake = FakeRegistry::start().await;
    let (layer, blob, release) = gated_blob(&fake, 1 << 20, 15, 1);
    let b = berth(&fake, "").await;
    let path = format!("/v2/app/blobs/{blob}");
    let pull = b.stream(&path).await;
    std::fs::create_dir_all(b.blob_file(&blob).join("squatter")).unwrap();
    release.send_replace(layer.len());
    same(&Bytes::from(pull.finish().await.unwrap()), &layer);
    until_metric(&b, "berth_store_write_errors_total{kind=\"io\"}", 1).await;
    assert!(b.blob_file(&blob).is_dir(), "nothing replaced the squatter");
}

#[tokio::test]
async fn a_leader_failing_mid_stream_fails_every_follower_and_the_next_pull_refetches() {
    let fake = FakeRegistry::start().await;
    let (layer, blob, release) = gated_blob(&fake, 1 << 20, 13, 1);
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    let b = berth(&fake, "resume_attempts = 0").await;
    let path = format!("/v2/app/blobs/{blob}");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(b.stream(&path).await);
    }
    release.send_replace(layer.len() / 2);
    clients[0].read_at_least(layer.len() / 2 - 1).await;
    release.send_replace(usize::MAX);
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.finish().await;
        assert!(
            r.is_err(),
            "client {i} completed a failed fill: {:?}",
            r.map(|v| v.len())
        );
    }
    assert!(!b.blob_file(&blob).exists());
    same(b.get(&path).await.bytes(), &layer);
    assert_eq!(fake.hits(Method::GET, &upstream_path), 2);
}

#[tokio::test]
async fn the_first_client_leaving_does_not_stop_the_fill() {
    let fake = FakeRegistry::start().await;
    let (layer, blob, release) = gated_blob(&fake, 2 << 20, 14, usize::MAX);
    let b = berth(&fake, "").await;
    let path = format!("/v2/app/blobs/{blob}");
    let mut first = b.stream(&path).await;
    release.send_replace(100_000);
    first.read_at_least(50_000).await;
    let second = b.stream(&path).await;
    drop(first);
    release.send_replace(layer.len());
    same(&Bytes::from(second.finish().await.unwrap()), &layer);
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        1
    );
}

// ---- restarts and offline ----

#[tokio::test]
async fn tag_answers_survive_a_restart_and_stand_in_while_upstream_is_down() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_tagged("library/app", "1", media::OCI_INDEX, INDEX);
    let b = berth(&fake, "").await;
    assert_eq!(b.get("/v2/app/manifests/1").await.status, 200);
    let data = b.stop().await;

    // Restarted, upstream failing: the tag read back from disk is served, marked stale.
    fake.fault(
        "/v2/library/app/manifests/1",
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
    );
    let b = start_on(&fake, "retries = 0", data).await;
    let got = b.get("/v2/app/manifests/1").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    assert!(got.header("warning").is_some());

    // Upstream back: a restarted answer is revalidated (HEAD), not trusted blindly.
    fake.clear_faults();
    fake.reset_counts();
    let got = b.get("/v2/app/manifests/1").await;
    assert_eq!((got.status, got.header("warning")), (StatusCode::OK, None));
    assert_eq!(fake.hits(Method::HEAD, "/v2/library/app/manifests/1"), 1);
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1"), 0);
}

#[tokio::test]
async fn an_offline_upstream_is_never_contacted_and_cached_content_still_serves() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_tagged("library/app", "1", media::OCI_INDEX, INDEX);
    fake.put_tagged("library/app", "2", media::DOCKER_MANIFEST, DOCKER);
    let layer = random_bytes(300_000, 15);
    let blob = fake.put_blob("library/app", layer.clone());
    let other = fake.put_blob("library/app", random_bytes(1000, 16));
    let b = berth(&fake, "").await;
    assert_eq!(b.get("/v2/app/manifests/1").await.status, 200);
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    b.settled().await;
    let data = b.stop().await;

    let b = start_on(&fake, "offline = true", data).await;
    fake.reset_counts();
    let got = b.get("/v2/app/manifests/1").await;
    assert_eq!(
        (got.status, got.header("docker-content-digest")),
        (StatusCode::OK, Some(digest.as_str()))
    );
    assert_eq!(
        b.get(&format!("/v2/app/manifests/{digest}")).await.status,
        200
    );
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    for path in [
        "/v2/app/manifests/2".to_owned(),
        format!("/v2/app/blobs/{other}"),
        "/v2/app/tags/list".to_owned(),
    ] {
        let got = b.get(&path).await;
        assert_eq!(
            (got.status, got.code().as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            "{path}"
        );
    }
    assert_eq!(b.get("/v2/").await.status, 200);
    assert!(
        fake.requests().is_empty(),
        "an offline upstream was contacted: {:?}",
        fake.requests()
    );
}

#[tokio::test]
async fn a_cached_blob_that_cannot_be_read_is_fetched_again() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(200_000, 17);
    let blob = fake.put_blob("library/app", layer.clone());
    let b = berth(&fake, "").await;
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    b.settled().await;
    // Something broke the cache file (here: it became a directory, which even root cannot read as
    // a blob).
    let file = b.blob_file(&blob);
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let got = b.get(&format!("/v2/app/blobs/{blob}")).await;
    assert_eq!(got.status, 200);
    same(got.bytes(), &layer);
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        2
    );
}
