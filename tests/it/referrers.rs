//! The referrers API of OCI 1.1 through berth, over real sockets against the fake registry: an
//! upstream with the API (paged, filtered), one without it (the referrers tag schema), one with
//! nothing; cached, coalesced, served stale and offline, and kept apart per upstream.

use crate::support;

use std::sync::Arc;

use http::{Method, StatusCode};

use berth::oci::media::{OCI_INDEX, OCI_MANIFEST};
use support::instance::{Berth, Got, berth, start_on, until_metric};
use support::{FakeRegistry, Fault, digest_of};

const SIG: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SBOM: &str = "application/spdx+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An image whose referrers are asked for (the `n`th of the test); its digest.
fn subject(fake: &FakeRegistry, repo: &str, n: u32) -> String {
    fake.put_manifest(
        repo,
        OCI_MANIFEST,
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[],"annotations":{{"n":"{n}"}}}}"#, digest_of(b"{}")),
    )
}

/// An artifact manifest naming `subject`, with the empty config; its digest.
fn artifact(fake: &FakeRegistry, repo: &str, subject: &str, artifact_type: &str, n: u32) -> String {
    fake.put_manifest(
        repo,
        OCI_MANIFEST,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"{EMPTY}","digest":"{}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":1}},"annotations":{{"n":"{n}"}}}}"#,
            digest_of(b"{}")
        ),
    )
}

/// The index answered: its descriptors' (digest, artifactType, annotation `n`), sorted.
fn listed(got: &Got) -> Vec<(String, String, String)> {
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.header("content-type"), Some(OCI_INDEX));
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let mut out: Vec<_> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["mediaType"], OCI_MANIFEST);
            (
                d["digest"].as_str().unwrap().to_owned(),
                d["artifactType"].as_str().unwrap_or("-").to_owned(),
                d["annotations"]["n"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn want(items: &[(&String, &str, u32)]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = items
        .iter()
        .map(|(d, t, n)| ((*d).clone(), (*t).to_owned(), n.to_string()))
        .collect();
    out.sort();
    out
}

fn upstream_asks(fake: &FakeRegistry, repo: &str, subject: &str) -> Vec<support::Recorded> {
    fake.requests_to(&format!("/v2/{repo}/referrers/{subject}"))
}

#[tokio::test]
async fn an_upstream_with_the_api_is_proxied_whole_across_pages_and_filtered_upstream() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(2);
    let s = subject(&fake, "team/app", 1);
    let sigs: Vec<String> = (0..3)
        .map(|n| artifact(&fake, "team/app", &s, SIG, n))
        .collect();
    let sboms: Vec<String> = (3..5)
        .map(|n| artifact(&fake, "team/app", &s, SBOM, n))
        .collect();
    let b = berth(&fake, "").await;

    // Every route form names the same list.
    let forms = [
        format!("/v2/team/app/referrers/{s}"),
        format!("/v2/registry.test/team/app/referrers/{s}"),
        format!("/v2/team/app/referrers/{s}?ns=registry.test"),
    ];
    let got = b.get(&forms[0]).await;
    let all = want(&[
        (&sigs[0], SIG, 0),
        (&sigs[1], SIG, 1),
        (&sigs[2], SIG, 2),
        (&sboms[0], SBOM, 3),
        (&sboms[1], SBOM, 4),
    ]);
    assert_eq!(listed(&got), all);
    assert_eq!(got.header("oci-filters-applied"), None);
    // Three pages of two, one request each.
    assert_eq!(upstream_asks(&fake, "team/app", &s).len(), 3);
    for form in &forms[1..] {
        assert_eq!(listed(&b.get(form).await), all, "{form}");
    }
    assert_eq!(upstream_asks(&fake, "team/app", &s).len(), 3, "cached");

    // A filter is passed on, and said to be applied.
    let got = b
        .get(&format!(
            "/v2/team/app/referrers/{s}?artifactType={}",
            enc(SIG)
        ))
        .await;
    assert_eq!(
        listed(&got),
        want(&[(&sigs[0], SIG, 0), (&sigs[1], SIG, 1), (&sigs[2], SIG, 2)])
    );
    assert_eq!(got.header("oci-filters-applied"), Some("artifactType"));
    let asked = upstream_asks(&fake, "team/app", &s);
    assert_eq!(asked.len(), 5, "two pages of the filtered list");
    assert!(
        asked[3..]
            .iter()
            .all(|r| r.param("artifactType").as_deref() == Some(SIG)),
        "{asked:?}"
    );

    // A HEAD answers the GET's headers.
    let head = b.request(Method::HEAD, &forms[0], &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.header("content-length"),
        Some(got_len(&b, &forms[0]).await.as_str())
    );
    assert!(b.counter("berth_cache_lookups_total{kind=\"referrers\",outcome=\"hit\",upstream=\"registry.test\"}").await >= 3);
    assert_eq!(
        b.counter("berth_cache_lookups_total{kind=\"referrers\",outcome=\"miss\",upstream=\"registry.test\"}").await,
        2
    );
}

async fn got_len(b: &Berth, path: &str) -> String {
    b.get(path).await.bytes().len().to_string()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn an_upstream_without_the_api_answers_from_the_referrers_tag_schema() {
    let fake = FakeRegistry::start().await;
    let s = subject(&fake, "team/app", 2);
    let sig = artifact(&fake, "team/app", &s, SIG, 1);
    let sbom = artifact(&fake, "team/app", &s, SBOM, 2);
    // What a client pushes where the registry has no API: the index under `sha256-<hex>`.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{sig}","size":10,"artifactType":"{SIG}","annotations":{{"n":"1"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{sbom}","size":10,"artifactType":"{SBOM}","annotations":{{"n":"2"}}}}]}}"#
    );
    let fallback = s.replace(':', "-");
    fake.put_tagged("team/app", &fallback, OCI_INDEX, index);
    let bare = subject(&fake, "team/other", 3);
    let b = berth(&fake, "").await;

    let got = b.get(&format!("/v2/team/app/referrers/{s}")).await;
    assert_eq!(listed(&got), want(&[(&sig, SIG, 1), (&sbom, SBOM, 2)]));
    assert_eq!(got.header("oci-filters-applied"), None);
    // The upstream was asked for the API once, and answered 404.
    assert_eq!(upstream_asks(&fake, "team/app", &s).len(), 1);

    // Filtered here, and said so.
    let got = b
        .get(&format!(
            "/v2/team/app/referrers/{s}?artifactType={}",
            enc(SBOM)
        ))
        .await;
    assert_eq!(listed(&got), want(&[(&sbom, SBOM, 2)]));
    assert_eq!(got.header("oci-filters-applied"), Some("artifactType"));

    // A subject with no referrers at all: an empty index, never a 404.
    let got = b.get(&format!("/v2/team/other/referrers/{bare}")).await;
    assert_eq!(listed(&got), vec![]);
    let got = b
        .get(&format!(
            "/v2/team/other/referrers/{bare}?artifactType={}",
            enc(SIG)
        ))
        .await;
    assert_eq!(listed(&got), vec![]);
    assert_eq!(got.header("oci-filters-applied"), Some("artifactType"));

    // The referrers themselves are content: pulled by digest, verified, cached.
    let got = b.get(&format!("/v2/team/app/manifests/{sig}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(digest_of(got.bytes()), sig);
    // And cosign's tag scheme is a tag like any other.
    let cosign = format!("{fallback}.sig");
    fake.tag("team/app", &cosign, &sig);
    let got = b.get(&format!("/v2/team/app/manifests/{cosign}")).await;
    assert_eq!(
        (got.status, got.header("docker-content-digest")),
        (StatusCode::OK, Some(sig.as_str()))
    );
}

#[tokio::test]
async fn a_list_is_served_stale_while_the_upstream_is_down_and_offline_after_a_restart() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let s = subject(&fake, "team/app", 4);
    let sig = artifact(&fake, "team/app", &s, SIG, 1);
    let path = format!("/v2/team/app/referrers/{s}");
    let b = berth(&fake, "tag_ttl = \"0s\"").await;
    let fresh = b.get(&path).await;
    assert_eq!(listed(&fresh), want(&[(&sig, SIG, 1)]));

    fake.fault(&path, Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None));
    let got = b.get(&path).await;
    assert_eq!(got.bytes(), fresh.bytes());
    assert!(
        got.header("warning").is_some_and(|w| w.starts_with("110 ")),
        "{:?}",
        got.header("warning")
    );
    assert_eq!(
        b.counter("berth_cache_lookups_total{kind=\"referrers\",outcome=\"stale\",upstream=\"registry.test\"}").await,
        1
    );

    // Restarted on the same disk with the upstream still down: the list read back stands in.
    let dir = b.stop().await;
    let b = start_on(&fake, "tag_ttl = \"0s\"", dir).await;
    let got = b.get(&path).await;
    assert_eq!(got.bytes(), fresh.bytes());
    assert!(got.header("warning").is_some());
    // Without a list kept, the upstream's failure is the answer.
    let third = subject(&fake, "team/app", 5);
    let third_path = format!("/v2/team/app/referrers/{third}");
    fake.fault(
        &third_path,
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
    );
    let got = b.get(&third_path).await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
}

/// A filter first asked while the upstream is down is answered from the last whole list, filtered
/// here and marked stale: cosign and notation ask with a filter, where `berth warm --referrers`
/// and most clients fetched the whole list. After a restart too, from the disk.
#[tokio::test]
async fn a_filter_first_asked_while_the_upstream_is_down_is_answered_from_the_whole_list() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let s = subject(&fake, "team/app", 6);
    let sig = artifact(&fake, "team/app", &s, SIG, 1);
    let sbom = artifact(&fake, "team/app", &s, SBOM, 2);
    let path = format!("/v2/team/app/referrers/{s}");
    let b = berth(&fake, "tag_ttl = \"0s\"").await;
    let whole = b.get(&path).await;
    assert_eq!(listed(&whole), want(&[(&sig, SIG, 1), (&sbom, SBOM, 2)]));

    fake.fault(&path, Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None));
    let stale = |got: &Got| {
        assert_eq!(got.header("oci-filters-applied"), Some("artifactType"));
        assert!(
            got.header("warning").is_some_and(|w| w.starts_with("110 ")),
            "{:?}",
            got.header("warning")
        );
    };
    let got = b.get(&format!("{path}?artifactType={}", enc(SIG))).await;
    assert_eq!(listed(&got), want(&[(&sig, SIG, 1)]));
    stale(&got);

    let dir = b.stop().await;
    let b = start_on(&fake, "tag_ttl = \"0s\"", dir).await;
    let got = b.get(&format!("{path}?artifactType={}", enc(SBOM))).await;
    assert_eq!(listed(&got), want(&[(&sbom, SBOM, 2)]));
    stale(&got);
    // A type the whole list does not hold: none of it.
    let got = b
        .get(&format!(
            "{path}?artifactType={}",
            enc("application/x.none")
        ))
        .await;
    assert_eq!(listed(&got), vec![]);
    stale(&got);
    // The upstream was asked each time (a 503 is retried), and failed each time after the first.
    assert!(upstream_asks(&fake, "team/app", &s).len() >= 4);
}

#[tokio::test]
async fn twenty_five_concurrent_asks_make_one_upstream_request() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let s = subject(&fake, "team/app", 6);
    let sig = artifact(&fake, "team/app", &s, SIG, 1);
    let path = format!("/v2/team/app/referrers/{s}");
    let (open, gate) = tokio::sync::watch::channel(false);
    fake.fault(&path, Fault::Hold(gate));
    let b = Arc::new(berth(&fake, "").await);
    let asks: Vec<_> = (0..25)
        .map(|_| {
            let (b, path) = (b.clone(), path.clone());
            tokio::spawn(async move { b.get(&path).await })
        })
        .collect();
    until_metric(&b, "berth_coalesced_requests_total{kind=\"referrers\"}", 24).await;
    open.send_replace(true);
    for a in asks {
        assert_eq!(listed(&a.await.unwrap()), want(&[(&sig, SIG, 1)]));
    }
    assert_eq!(upstream_asks(&fake, "team/app", &s).len(), 1);
}

#[tokio::test]
async fn a_list_from_one_upstream_is_never_answered_through_another() {
    let private = FakeRegistry::start().await;
    let public = FakeRegistry::start().await;
    private.serve_referrers(10);
    public.serve_referrers(10);
    let s = subject(&private, "team/secret", 7);
    let sig = artifact(&private, "team/secret", &s, SIG, 1);
    // The public upstream has the repository, not the subject's referrers.
    subject(&public, "team/secret", 8);
    let second = format!(
        "\n[[upstream]]\nname = \"public.test\"\nurl = \"{}\"\n",
        public.url()
    );
    let b = berth(&private, &second).await;
    let via = |up: &str| format!("/v2/{up}/team/secret/referrers/{s}");
    assert_eq!(
        listed(&b.get(&via("registry.test")).await),
        want(&[(&sig, SIG, 1)])
    );
    for method in [Method::GET, Method::HEAD] {
        let got = b.request(method.clone(), &via("public.test"), &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{method}");
    }
    assert_eq!(listed(&b.get(&via("public.test")).await), vec![]);
    // The public upstream was asked for its own list; the private one's was not handed over.
    assert_eq!(upstream_asks(&public, "team/secret", &s).len(), 1);
    assert_eq!(upstream_asks(&private, "team/secret", &s).len(), 1);
}

#[tokio::test]
async fn what_an_upstream_sends_is_passed_on_only_as_a_clean_index() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let s = subject(&fake, "team/app", 9);
    let path = format!("/v2/team/app/referrers/{s}");
    let d = digest_of(b"x");
    // Extra fields dropped, a descriptor of another algorithm left out, a link elsewhere not
    // followed.
    fake.fault_times(
        &path,
        Fault::Answer(
            vec![
                ("content-type".into(), OCI_INDEX.into()),
                (
                    "link".into(),
                    format!(r#"<http://169.254.169.254/v2/team/app/referrers/{s}>; rel="next""#),
                ),
            ],
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":3,"artifactType":"{SIG}","urls":["http://evil"],"annotations":{{"n":"1"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"sha512:00","size":3}}]}}"#
            )
            .into(),
        ),
        1,
    );
    let b = berth(&fake, "tag_ttl = \"0s\"").await;
    let got = b.get(&path).await;
    assert_eq!(listed(&got), want(&[(&d, SIG, 1)]));
    assert!(!String::from_utf8_lossy(got.bytes()).contains("evil"));
    assert_eq!(upstream_asks(&fake, "team/app", &s).len(), 1);

    // An answer that is no index is the upstream's fault: 502 without a list kept, the last
    // list with one.
    fake.fault_times(
        &path,
        Fault::Answer(vec![], bytes::Bytes::from_static(b"<html>")),
        2,
    );
    let got = b.get(&path).await;
    assert_eq!(listed(&got), want(&[(&d, SIG, 1)]));
    assert!(got.header("warning").is_some());
    let other = subject(&fake, "team/app", 10);
    let other_path = format!("/v2/team/app/referrers/{other}");
    fake.fault_times(
        &other_path,
        Fault::Answer(vec![], bytes::Bytes::from_static(b"<html>")),
        1,
    );
    let got = b.get(&other_path).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{:?}", got.body);

    // Bad input is the client's: a subject that is no digest, a filter that is no media type.
    let got = b.get("/v2/team/app/referrers/latest").await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    let got = b.get(&format!("{path}?artifactType=nonsense")).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_upstream_that_calls_the_route_unsupported_is_read_through_the_tag_schema() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let s = subject(&fake, "team/app", 11);
    let sig = artifact(&fake, "team/app", &s, SIG, 1);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{sig}","size":10,"artifactType":"{SIG}","annotations":{{"n":"1"}}}}]}}"#
    );
    fake.put_tagged("team/app", &s.replace(':', "-"), OCI_INDEX, index);
    let path = format!("/v2/team/app/referrers/{s}");
    let b = berth(&fake, "tag_ttl = \"0s\"").await;
    for status in [
        StatusCode::BAD_REQUEST,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::NOT_IMPLEMENTED,
    ] {
        fake.fault_times(&path, Fault::Status(status, None), 1);
        let got = b.get(&path).await;
        assert_eq!(listed(&got), want(&[(&sig, SIG, 1)]), "{status}");
        assert_eq!(got.header("warning"), None, "{status}");
    }
    // A failure is no missing route: with no list kept, it is the answer.
    let other = subject(&fake, "team/app", 12);
    let other_path = format!("/v2/team/app/referrers/{other}");
    fake.fault(
        &other_path,
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, None),
    );
    let got = b.get(&other_path).await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
}
