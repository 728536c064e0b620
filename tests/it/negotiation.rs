//! Manifest negotiation over real sockets, against the fake registry negotiating as the
//! Distribution registry does (it converts Docker schema 2 to signed schema 1 for clients that do
//! not name schema 2, and answers 404 for OCI types a client does not name).
//!
//! berth asks upstream once per tag, with its own `Accept`, and answers each client from that: the
//! manifest when its `Accept` admits the type, schema 1 passed through for a client that reads
//! only schema 1, `404 MANIFEST_UNKNOWN` naming the type otherwise. Never a 502 for a format
//! choice, and `berth_digest_mismatches_total` counts only real lies.

use crate::support;

use std::collections::HashMap;

use http::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use berth::oci::media;
use support::instance::{Berth, Got, berth};
use support::{FakeRegistry, SCHEMA1_SIGNED, digest_of, sign_schema1};

/// The `Accept` headers clients send, each value a separate header as Docker sends them.
/// Docker (moby 25) and podman (containers/image) name schema 1 too; containerd ends in `*/*`.
const DOCKER: &[&str] = &[
    media::DOCKER_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_V1_SIGNED,
];
const CONTAINERD: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
];
const PODMAN: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json",
];
const NONE: &[&str] = &[];
const ANY: &[&str] = &["*/*"];
const OCI_ONLY: &[&str] =
    &["application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"];
const DOCKER_ONLY: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
];
const INDEX_ONLY: &[&str] = &[
    "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
];
const SCHEMA1_ONLY: &[&str] = &[media::DOCKER_MANIFEST_V1_SIGNED];

/// The four kinds of image, seeded in the fake; returns (tag, media type, digest) for each.
fn seed(fake: &FakeRegistry) -> Vec<(&'static str, &'static str, String)> {
    let repo = "library/app";
    let layer = fake.put_blob(repo, "layer");
    let config = fake.put_blob(repo, "{}");
    let docker = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"{config}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":5,"digest":"{layer}"}}]}}"#,
        media::DOCKER_MANIFEST
    );
    let oci = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{config}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":5,"digest":"{layer}"}}]}}"#,
        media::OCI_MANIFEST
    );
    let d_docker = fake.put_tagged(repo, "docker", media::DOCKER_MANIFEST, docker.clone());
    let d_oci = fake.put_tagged(repo, "oci", media::OCI_MANIFEST, oci.clone());
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","size":{},"digest":"{d_docker}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        media::DOCKER_MANIFEST_LIST,
        media::DOCKER_MANIFEST,
        docker.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","size":{},"digest":"{d_oci}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        media::OCI_INDEX,
        media::OCI_MANIFEST,
        oci.len()
    );
    let d_list = fake.put_tagged(repo, "list", media::DOCKER_MANIFEST_LIST, list);
    let d_index = fake.put_tagged(repo, "index", media::OCI_INDEX, index);
    vec![
        ("docker", media::DOCKER_MANIFEST, d_docker),
        ("oci", media::OCI_MANIFEST, d_oci),
        ("list", media::DOCKER_MANIFEST_LIST, d_list),
        ("index", media::OCI_INDEX, d_index),
    ]
}

async fn get(b: &Berth, method: Method, path: &str, accept: &[&str]) -> Got {
    let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
    b.request(method, path, &headers).await
}

/// The digest of a signed schema 1 manifest's payload, worked out independently of berth: the
/// bytes with the `signatures` member cut out.
fn schema1_payload_digest(body: &[u8]) -> String {
    let text = std::str::from_utf8(body).unwrap();
    let start = text.find(",\n   \"signatures\"").expect("signatures");
    let end = text.rfind("\n}").unwrap();
    let payload = format!("{}{}", &text[..start], &text[end..]);
    format!("sha256:{}", hex::encode(Sha256::digest(payload.as_bytes())))
}

#[derive(Debug, PartialEq, Eq)]
enum Want {
    /// The manifest as stored.
    Stored,
    /// Converted to signed schema 1 by the upstream and passed through.
    Schema1,
    /// 404 MANIFEST_UNKNOWN.
    Unknown,
}

#[tokio::test]
async fn every_accept_gets_the_stored_manifest_or_a_clear_404() {
    let fake = FakeRegistry::start().await;
    let images = seed(&fake);
    let b = berth(&fake, "").await;
    let cases: &[(&str, &[&str], [Want; 4])] = {
        use Want::*;
        // Columns: docker, oci, list, index.
        &[
            ("none", NONE, [Stored, Stored, Stored, Stored]),
            ("*/*", ANY, [Stored, Stored, Stored, Stored]),
            ("oci only", OCI_ONLY, [Unknown, Stored, Unknown, Stored]),
            (
                "docker only",
                DOCKER_ONLY,
                [Stored, Unknown, Stored, Unknown],
            ),
            ("index only", INDEX_ONLY, [Unknown, Unknown, Stored, Stored]),
            ("docker", DOCKER, [Stored, Stored, Stored, Stored]),
            ("containerd", CONTAINERD, [Stored, Stored, Stored, Stored]),
            ("podman", PODMAN, [Stored, Stored, Stored, Stored]),
            // The list's amd64 manifest, converted; OCI content has no schema 1 form.
            (
                "schema 1 only",
                SCHEMA1_ONLY,
                [Schema1, Unknown, Schema1, Unknown],
            ),
        ]
    };
    for (client, accept, wants) in cases {
        for ((tag, media_type, digest), want) in images.iter().zip(wants) {
            let path = format!("/v2/app/manifests/{tag}");
            let got = get(&b, Method::GET, &path, accept).await;
            let what = format!("{client} asking for {tag}: {} {:?}", got.status, got.body);
            match want {
                Want::Stored => {
                    assert_eq!(got.status, StatusCode::OK, "{what}");
                    assert_eq!(got.header("content-type"), Some(*media_type), "{what}");
                    assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
                    assert_eq!(&digest_of(got.bytes()), digest, "{what}");
                }
                Want::Schema1 => {
                    assert_eq!(got.status, StatusCode::OK, "{what}");
                    assert_eq!(got.header("content-type"), Some(SCHEMA1_SIGNED), "{what}");
                    let payload = schema1_payload_digest(got.bytes());
                    assert_eq!(got.header("docker-content-digest"), Some(payload.as_str()));
                }
                Want::Unknown => {
                    assert_eq!(
                        (got.status, got.code().as_str()),
                        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
                        "{what}"
                    );
                }
            }
            // HEAD answers what GET did, headers included.
            let head = get(&b, Method::HEAD, &path, accept).await;
            assert_eq!(head.status, got.status, "HEAD: {what}");
            for h in ["content-type", "content-length", "docker-content-digest"] {
                if *want == Want::Schema1 && h == "content-length" {
                    continue; // a fresh signature each time, of any length
                }
                assert_eq!(head.header(h), got.header(h), "HEAD {h}: {what}");
            }
            assert!(head.bytes().is_empty());
        }
    }
    // A client refused a type learns which one.
    let got = get(&b, Method::GET, "/v2/app/manifests/oci", DOCKER_ONLY).await;
    let body = String::from_utf8_lossy(got.bytes()).into_owned();
    assert!(body.contains(media::OCI_MANIFEST), "{body}");
    // Format choices are no lies.
    assert_eq!(b.counter("berth_digest_mismatches_total").await, 0);
    // Each tag was fetched from upstream once, in its stored form; only schema 1 went again.
    for (tag, ..) in &images {
        let sent = fake.requests_to(&format!("/v2/library/app/manifests/{tag}"));
        let stored = sent
            .iter()
            .filter(|r| r.header("accept") == Some(media::UPSTREAM_ACCEPT))
            .count();
        assert_eq!(stored, 1, "{tag}: {sent:?}");
        assert!(
            sent.iter().all(|r| matches!(
                r.header("accept"),
                Some(media::UPSTREAM_ACCEPT | media::SCHEMA1_ACCEPT)
            )),
            "{tag}: {sent:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_pulls_with_any_mix_of_accept_make_one_upstream_request_per_tag() {
    let fake = FakeRegistry::start().await;
    let images = seed(&fake);
    let b = std::sync::Arc::new(berth(&fake, "").await);
    let mix: [&[&str]; 5] = [NONE, ANY, DOCKER, CONTAINERD, PODMAN];
    let mut tasks = Vec::new();
    for (tag, media_type, digest) in &images {
        for i in 0..25 {
            let (b, accept) = (b.clone(), mix[i % mix.len()]);
            let path = format!("/v2/app/manifests/{tag}");
            tasks.push(tokio::spawn(async move {
                let got = get(&b, Method::GET, &path, accept).await;
                (
                    got.status,
                    got.header("content-type").map(str::to_owned),
                    got.header("docker-content-digest").map(str::to_owned),
                )
            }));
        }
        let _ = (media_type, digest);
    }
    let mut answers: HashMap<String, usize> = HashMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, content_type, digest) = t.await.unwrap();
        let (_, media_type, want) = &images[i / 25];
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(*media_type));
        assert_eq!(digest.as_ref(), Some(want));
        *answers.entry(want.clone()).or_default() += 1;
    }
    assert_eq!(answers.len(), 4);
    for (tag, ..) in &images {
        let path = format!("/v2/library/app/manifests/{tag}");
        assert_eq!(fake.hits(Method::GET, &path), 1, "{tag}");
        assert_eq!(fake.hits(Method::HEAD, &path), 0, "{tag}");
    }
    assert_eq!(b.counter("berth_digest_mismatches_total").await, 0);
}

#[tokio::test]
async fn revalidating_for_a_client_without_accept_is_no_mismatch() {
    let fake = FakeRegistry::start().await;
    let images = seed(&fake);
    // Every request revalidates: the case where a converted answer used to look like a lie.
    let b = berth(&fake, r#"tag_ttl = "0s""#).await;
    let (_, media_type, digest) = &images[0];
    assert_eq!(
        get(&b, Method::GET, "/v2/app/manifests/docker", DOCKER)
            .await
            .status,
        200
    );
    for accept in [NONE, ANY, NONE] {
        let got = get(&b, Method::GET, "/v2/app/manifests/docker", accept).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-type"), Some(*media_type));
        assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
        assert!(got.header("warning").is_none(), "served stale");
    }
    assert_eq!(
        fake.hits(Method::GET, "/v2/library/app/manifests/docker"),
        1
    );
    assert_eq!(
        fake.hits(Method::HEAD, "/v2/library/app/manifests/docker"),
        3
    );
    assert_eq!(b.counter("berth_digest_mismatches_total").await, 0);
}

#[tokio::test]
async fn schema1_is_passed_through_checked_and_never_cached() {
    let fake = FakeRegistry::start().await;
    seed(&fake);
    let b = berth(&fake, "").await;
    let path = "/v2/app/manifests/docker";
    let first = get(&b, Method::GET, path, SCHEMA1_ONLY).await;
    let second = get(&b, Method::GET, path, SCHEMA1_ONLY).await;
    for got in [&first, &second] {
        assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
        assert_eq!(got.header("content-type"), Some(SCHEMA1_SIGNED));
    }
    // Fresh signatures, one payload.
    assert_ne!(first.bytes(), second.bytes());
    assert_eq!(
        first.header("docker-content-digest"),
        second.header("docker-content-digest")
    );
    // The stored form was fetched once (and cached); schema 1 each time it was asked for.
    let sent = fake.requests_to("/v2/library/app/manifests/docker");
    let accepts: Vec<_> = sent.iter().map(|r| r.header("accept").unwrap()).collect();
    assert_eq!(
        accepts,
        [
            media::UPSTREAM_ACCEPT,
            media::SCHEMA1_ACCEPT,
            media::SCHEMA1_ACCEPT
        ]
    );
    // Nothing of schema 1 is kept: every cached file hashes to its name.
    for entry in std::fs::read_dir(b.dir.path().join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            digest_of(&bytes),
            format!("sha256:{}", entry.file_name().to_str().unwrap())
        );
    }
    assert_eq!(b.counter("berth_digest_mismatches_total").await, 0);
}

#[tokio::test]
async fn an_image_stored_only_as_schema1_is_served_by_tag_and_digest() {
    let fake = FakeRegistry::start().await;
    let payload = "{\n   \"schemaVersion\": 1,\n   \"name\": \"library/old\",\n   \"tag\": \"1\",\n   \"fsLayers\": []\n}";
    let signed = sign_schema1(payload, "stored");
    // Distribution stores a signed schema 1 manifest under its payload's digest.
    let digest = digest_of(payload.as_bytes());
    fake.put_manifest_as("library/old", &digest, SCHEMA1_SIGNED, signed.clone());
    fake.tag("library/old", "1", &digest);
    let b = berth(&fake, "").await;
    for path in [
        "/v2/old/manifests/1".to_owned(),
        format!("/v2/old/manifests/{digest}"),
    ] {
        let got = get(&b, Method::GET, &path, DOCKER).await;
        assert_eq!(got.status, StatusCode::OK, "{path}: {:?}", got.body);
        assert_eq!(got.bytes(), &signed);
        assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    }
    // A client that reads no schema 1 is told what the tag is.
    let got = get(&b, Method::GET, "/v2/old/manifests/1", OCI_ONLY).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(got.bytes()).contains(SCHEMA1_SIGNED));
    assert_eq!(b.counter("berth_digest_mismatches_total").await, 0);
}

#[tokio::test]
async fn a_schema1_manifest_whose_payload_is_not_its_digest_is_a_real_mismatch() {
    let fake = FakeRegistry::start().await;
    let payload = "{\n   \"schemaVersion\": 1,\n   \"name\": \"library/old\",\n   \"tag\": \"1\",\n   \"fsLayers\": []\n}";
    let signed = sign_schema1(payload, "lie");
    // The registry announces a digest the payload does not have.
    let claimed = digest_of(b"another payload");
    fake.put_manifest_as("library/old", &claimed, SCHEMA1_SIGNED, signed);
    fake.tag("library/old", "1", &claimed);
    let b = berth(&fake, "").await;
    for path in [
        "/v2/old/manifests/1".to_owned(),
        format!("/v2/old/manifests/{claimed}"),
    ] {
        let got = get(&b, Method::GET, &path, DOCKER).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(got.code(), "DIGEST_INVALID");
    }
    assert_eq!(b.counter("berth_digest_mismatches_total").await, 2);
}
