//! A blob download whose upstream body breaks off resumes with a `Range` request: a 206 carries
//! on, a 200 (an upstream that ignores `Range`) is read from the start with the bytes already had
//! skipped, anything else fails the fill cleanly. Clients never see a short 200 or wrong bytes.
//!
//! What happened is read from events, never from a wall clock: the `Range` headers the fake saw
//! and berth's resume counters. Where a test needs a real stall or response timeout, that timeout
//! is the mechanism under test; a loaded machine may hold a healthy transfer up for as long, and
//! berth then rightly resumes it too, so such tests check the resumes the faults cause and accept
//! further ones that continue the blob ([`starts_with_then_continues`]).

use crate::support;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::instance::{Berth, berth, gated_blob, same};
use support::{FakeRegistry, Fault, Host, TokenAuth, random_bytes};

/// Resumes wait the upstream's backoff; a millisecond keeps the tests quick.
const FAST: &str = "retry_backoff = \"1ms\"";

async fn resumes(b: &Berth, outcome: &str) -> u64 {
    b.counter(&format!(
        "berth_upstream_resumes_total{{outcome=\"{outcome}\""
    ))
    .await
}

fn tmp_is_empty(b: &Berth) -> bool {
    std::fs::read_dir(b.dir.path().join("tmp")).unwrap().count() == 0
}

/// The `Range` headers of the GETs the fake saw for `path`, in order (`None`: no range).
fn ranges(fake: &FakeRegistry, path: &str) -> Vec<Option<String>> {
    fake.requests_to(path)
        .iter()
        .filter(|r| r.method == Method::GET)
        .map(|r| r.header("range").map(str::to_owned))
        .collect()
}

/// `got` (the fake's [`ranges`]) begins with `want`, and any range after those is a resume that
/// continues the blob further on than the one before it (a resume that brought no byte is not
/// resumed again, so the starts only grow). Returns how many ranges came after `want`.
fn starts_with_then_continues(got: &[Option<String>], want: &[Option<String>]) -> usize {
    assert!(got.starts_with(want), "ranges {got:?}, want {want:?} first");
    let start = |r: &Option<String>| -> u64 {
        r.as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a resume: {r:?} in {got:?}"))
    };
    let mut last = want.last().map_or(0, start);
    for r in &got[want.len()..] {
        let at = start(r);
        assert!(at > last, "a resume that does not continue: {got:?}");
        last = at;
    }
    got.len() - want.len()
}

#[tokio::test]
async fn a_disconnect_mid_blob_resumes_from_where_it_stopped() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(2 << 20, 101);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    fake.fault_times(&upstream_path, Fault::CloseAfter(700_000), 1);
    let b = berth(&fake, FAST).await;
    let path = format!("/v2/app/blobs/{blob}");

    let got = b.get(&path).await;
    assert_eq!(got.status, 200);
    same(got.bytes(), &layer);
    assert_eq!(
        ranges(&fake, &upstream_path),
        vec![None, Some("bytes=700000-".to_owned())]
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
    assert!(tmp_is_empty(&b));
    assert_eq!(resumes(&b, "partial").await, 1);
    assert_eq!(resumes(&b, "failed").await, 0);
    // Every byte fetched once: none counted (or written) twice.
    assert_eq!(
        b.counter("berth_upstream_fetched_bytes_total{").await,
        layer.len() as u64
    );

    // Cached: the next pull asks nothing upstream.
    fake.reset_counts();
    same(b.get(&path).await.bytes(), &layer);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn an_upstream_that_ignores_range_is_read_again_and_the_known_part_skipped() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(1 << 20, 102);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    fake.fault_times(&upstream_path, Fault::CloseAfter(500_000), 1);
    fake.fault(&upstream_path, Fault::IgnoreRange);
    let b = berth(&fake, FAST).await;
    let path = format!("/v2/app/blobs/{blob}");

    same(b.get(&path).await.bytes(), &layer);
    assert_eq!(
        ranges(&fake, &upstream_path),
        vec![None, Some("bytes=500000-".to_owned())]
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
    assert_eq!(resumes(&b, "restart").await, 1);
    assert_eq!(resumes(&b, "partial").await, 0);
    assert_eq!(
        b.counter("berth_upstream_fetched_bytes_total{").await,
        layer.len() as u64,
        "the skipped bytes are neither written nor counted again"
    );
    fake.reset_counts();
    same(b.get(&path).await.bytes(), &layer);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_stalled_body_resumes_too() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000, 103);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    fake.fault_times(&upstream_path, Fault::StallAfter(1000), 1);
    let b = berth(&fake, &format!("{FAST}\nstall_timeout = \"300ms\"")).await;
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    // The stall after byte 1000 is resumed from there; the rest is not held up for 300 ms unless
    // the machine is loaded, and is then resumed further on.
    let more = starts_with_then_continues(
        &ranges(&fake, &upstream_path),
        &[None, Some("bytes=1000-".to_owned())],
    );
    assert_eq!(resumes(&b, "partial").await, 1 + more as u64);
    b.settled().await;
    assert!(b.blob_file(&blob).exists());
}

#[tokio::test]
async fn disconnects_beyond_the_limit_fail_the_fill_and_the_next_pull_refetches() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(1 << 20, 104);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    // The first transfer and both resumes break off.
    fake.fault_times(&upstream_path, Fault::CloseAfter(100_000), 3);
    let b = berth(&fake, &format!("{FAST}\nresume_attempts = 2")).await;
    let path = format!("/v2/app/blobs/{blob}");

    let got = b.get(&path).await;
    assert_eq!(got.status, 200, "headers went out before the break");
    assert!(got.body.is_err(), "a failed fill must not look complete");
    assert_eq!(
        ranges(&fake, &upstream_path),
        vec![
            None,
            Some("bytes=100000-".to_owned()),
            Some("bytes=200000-".to_owned())
        ]
    );
    b.settled().await;
    assert!(!b.blob_file(&blob).exists());
    assert!(tmp_is_empty(&b), "temp file left behind");
    assert_eq!(resumes(&b, "partial").await, 2);
    assert_eq!(resumes(&b, "failed").await, 1);

    same(b.get(&path).await.bytes(), &layer);
    assert_eq!(fake.hits(Method::GET, &upstream_path), 4);
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
}

#[tokio::test]
async fn a_resume_answer_that_does_not_continue_the_blob_fails_cleanly() {
    let fake = FakeRegistry::start().await;
    let b = berth(&fake, FAST).await;
    let len = 600_000usize;
    let cases: Vec<(&str, Fault)> = vec![
        (
            "wrong start",
            Fault::BadContentRange(format!("bytes 0-{}/{len}", len - 1)),
        ),
        (
            "wrong total",
            Fault::BadContentRange(format!("bytes 200000-{}/{}", len - 1, len + 1)),
        ),
        (
            "short end",
            Fault::BadContentRange(format!("bytes 200000-{}/{len}", len - 2)),
        ),
        (
            "garbage",
            Fault::BadContentRange("bytes nonsense".to_owned()),
        ),
        (
            "416",
            Fault::Status(StatusCode::RANGE_NOT_SATISFIABLE, None),
        ),
        ("404", Fault::Status(StatusCode::NOT_FOUND, None)),
    ];
    for (i, (what, fault)) in cases.into_iter().enumerate() {
        let layer = random_bytes(len, 110 + i as u64);
        let blob = fake.put_blob("library/app", layer.clone());
        let upstream_path = format!("/v2/library/app/blobs/{blob}");
        fake.fault_times(&upstream_path, Fault::CloseAfter(200_000), 1);
        fake.fault_times(&upstream_path, fault, 1);
        let path = format!("/v2/app/blobs/{blob}");

        let got = b.get(&path).await;
        assert!(got.body.is_err(), "{what}: the body must fail");
        assert_eq!(
            ranges(&fake, &upstream_path),
            vec![None, Some("bytes=200000-".to_owned())],
            "{what}: one resume, no second try"
        );
        b.settled().await;
        assert!(!b.blob_file(&blob).exists(), "{what}: cached");
        assert!(tmp_is_empty(&b), "{what}: temp file left behind");
        assert_eq!(resumes(&b, "failed").await, i as u64 + 1, "{what}");

        same(b.get(&path).await.bytes(), &layer);
        b.settled().await;
        assert!(b.blob_file(&blob).exists(), "{what}: later pull cached");
    }
    assert_eq!(resumes(&b, "partial").await, 0);
}

#[tokio::test]
async fn followers_of_a_resumed_fill_all_get_the_whole_body() {
    let fake = FakeRegistry::start().await;
    // Only the first transfer is gated; the resume is answered at once.
    let (layer, blob, release) = gated_blob(&fake, 2 << 20, 120, 1);
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    let b = berth(&fake, FAST).await;
    let path = format!("/v2/app/blobs/{blob}");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(b.stream(&path).await);
    }
    let half = layer.len() / 2;
    release.send_replace(half);
    clients[0].read_at_least(half - 1).await;
    release.send_replace(usize::MAX);
    // One more joins after the break.
    clients.push(b.stream(&path).await);
    for (i, c) in clients.into_iter().enumerate() {
        let got = c.finish().await;
        assert!(got.is_ok(), "client {i}: {:?}", got.map(|v| v.len()));
        same(&Bytes::from(got.unwrap()), &layer);
    }
    assert_eq!(
        ranges(&fake, &upstream_path),
        vec![None, Some(format!("bytes={half}-"))]
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
}

#[tokio::test]
async fn a_resumed_fill_with_wrong_bytes_is_refused_and_not_cached() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(1 << 20, 130);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    fake.fault_times(&upstream_path, Fault::CloseAfter(400_000), 1);
    fake.fault_times(&upstream_path, Fault::WrongBytes, 1);
    let b = berth(&fake, FAST).await;
    let path = format!("/v2/app/blobs/{blob}");

    let got = b.get(&path).await;
    assert_eq!(got.status, 200);
    assert!(got.body.is_err(), "wrong bytes must never complete");
    assert_eq!(resumes(&b, "partial").await, 1);
    b.settled().await;
    assert!(!b.blob_file(&blob).exists());
    assert!(tmp_is_empty(&b));
    assert!(
        b.metric("berth_digest_mismatches_total")
            .await
            .contains("kind=\"blob\"")
    );
    same(b.get(&path).await.bytes(), &layer);
    assert_eq!(fake.hits(Method::GET, &upstream_path), 3);
}

#[tokio::test]
async fn a_redirected_blob_resumes_at_the_cdn_with_its_range_and_without_the_token() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    let layer = random_bytes(1 << 20, 140);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    let cdn_path = format!("/cdn/{blob}");
    fake.fault(&upstream_path, Fault::RedirectToOther);
    fake.fault_times(&cdn_path, Fault::CloseAfter(300_000), 1);
    let b = berth(&fake, FAST).await;

    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    let cdn = fake.requests_to(&cdn_path);
    assert!(cdn.iter().all(|r| r.host == Host::Other));
    assert_eq!(
        cdn.iter()
            .map(|r| r.header("range").map(str::to_owned))
            .collect::<Vec<_>>(),
        vec![None, Some("bytes=300000-".to_owned())],
        "the range survives the redirect"
    );
    assert!(
        cdn.iter().all(|r| r.header("authorization").is_none()),
        "token leaked to the redirect target"
    );
    // The registry itself saw the range request too, with the token.
    let main = fake.requests_to(&upstream_path);
    assert!(main.iter().any(|r| {
        r.header("range") == Some("bytes=300000-")
            && r.header("authorization")
                .is_some_and(|a| a.starts_with("Bearer "))
    }));
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
}

#[tokio::test]
async fn a_resume_request_that_gets_no_answer_is_tried_again() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(600_000, 150);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    fake.fault_times(&upstream_path, Fault::CloseAfter(100_000), 1);
    fake.fault_times(&upstream_path, Fault::NoResponse, 1);
    // The unanswered resume costs one whole response timeout: long enough that no answer the fake
    // does give (the first GET's, which is not tried again) comes later on a loaded machine.
    let b = berth(&fake, &format!("{FAST}\nresponse_timeout = \"2s\"")).await;

    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    assert_eq!(
        ranges(&fake, &upstream_path),
        vec![
            None,
            Some("bytes=100000-".to_owned()),
            Some("bytes=100000-".to_owned())
        ]
    );
    assert_eq!(resumes(&b, "partial").await, 1);
    assert_eq!(resumes(&b, "failed").await, 0);
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&blob)).unwrap(), layer);
}

#[tokio::test]
async fn an_upstream_that_sends_headers_and_then_nothing_is_given_up_after_about_two_stalls() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000, 160);
    let blob = fake.put_blob("library/app", layer.clone());
    let upstream_path = format!("/v2/library/app/blobs/{blob}");
    // Every answer, the resumes' too, stalls before its first byte.
    fake.fault(&upstream_path, Fault::StallAfter(0));
    let stall = std::time::Duration::from_millis(600);
    let b = berth(
        &fake,
        &format!("{FAST}\nstall_timeout = \"{}ms\"", stall.as_millis()),
    )
    .await;
    let got = b.get(&format!("/v2/app/blobs/{blob}")).await;
    assert!(got.body.is_err(), "a stalled fill must not look complete");
    // One resume, which brought nothing; not the three resume_attempts each waiting a stall. So
    // the client waited two stalls, not four: told by what berth asked for, not by a clock.
    assert_eq!(
        ranges(&fake, &upstream_path),
        vec![None, Some("bytes=0-".to_owned())]
    );
    assert_eq!(resumes(&b, "failed").await, 1);
    assert_eq!(resumes(&b, "partial").await, 1);
    b.settled().await;
    assert!(tmp_is_empty(&b));

    // A resume that brings bytes earns the next one: progress, then a stall, then the rest.
    fake.clear_faults();
    let other = random_bytes(300_000, 161);
    let other_blob = fake.put_blob("library/app", other.clone());
    let other_path = format!("/v2/library/app/blobs/{other_blob}");
    fake.fault_times(&other_path, Fault::StallAfter(1000), 1);
    fake.fault_times(&other_path, Fault::StallAfter(1000), 1);
    same(
        b.get(&format!("/v2/app/blobs/{other_blob}")).await.bytes(),
        &other,
    );
    starts_with_then_continues(
        &ranges(&fake, &other_path),
        &[
            None,
            Some("bytes=1000-".to_owned()),
            Some("bytes=2000-".to_owned()),
        ],
    );
}
