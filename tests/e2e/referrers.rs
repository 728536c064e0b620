//! Referrers (OCI distribution 1.1) through berth, in front of the real Distribution registry,
//! which has no referrers API: artifacts with a `subject` and the referrers tag schema's index are
//! pushed to it as a client would (blob upload, manifest PUT, in plain HTTP here), then listed,
//! filtered and pulled through berth over real sockets, on every route form; then again with the
//! registries gone and berth restarted, from its disk.
//!
//! What the registry (Debian's docker-registry 2.8.2) answers for the route, checked here first:
//! `GET /v2/<repo>/referrers/<digest>` (with or without `?artifactType=`) is a `404` with
//! `Content-Type: text/plain` and the body `404 page not found` (its router has no such route; no
//! OCI error body), for a repository that exists as for one that does not. berth takes that as
//! "no referrers API" and reads the tag schema.
//!
//! The OCI conformance suite's content-discovery expectations that apply to a read-only registry
//! are asserted on berth's answers ([`assert_conformant`] and the cases that call it): `200` and
//! `Content-Type: application/vnd.oci.image.index.v1+json` for every list; an empty `manifests`
//! for a digest nothing refers to; one descriptor per referrer, all digests distinct, each with the
//! annotations of its manifest and its `artifactType` (the manifest's, else its config's media
//! type); a referrer whose subject the repository does not hold is still listed; with a filter,
//! `OCI-Filters-Applied: artifactType` and only the referrers of that type.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::e2e_support::harness::{Env, Via};
use crate::e2e_support::http::{self, Response};
use crate::e2e_support::seed::{self, OCI_INDEX, OCI_MANIFEST};

const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SPDX: &str = "application/spdx+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";
const INDEX_ARTIFACT: &str = "application/vnd.example.berth.index-artifact";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", seed::sha256_hex(bytes))
}

/// Pushes to one repository of a registry in plain HTTP, as a client does.
pub struct Pusher<'a> {
    pub addr: &'a str,
    pub repo: &'a str,
}

impl Pusher<'_> {
    /// A monolithic blob upload (`POST` a session, `PUT ?digest=`); the blob's descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = digest_of(bytes);
        let path = format!("/v2/{}/blobs/uploads/", self.repo);
        let r = http::send("POST", self.addr, &path, &[], Some(b"")).expect("POST upload");
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let location = r.header("location").expect("upload Location");
        // Distribution answers an absolute URL: keep its path and query.
        let at = location
            .strip_prefix("http://")
            .and_then(|l| l.find('/').map(|i| &l[i..]))
            .unwrap_or(location);
        let sep = if at.contains('?') { '&' } else { '?' };
        let put = format!("{at}{sep}digest={digest}");
        let headers = [("Content-Type", "application/octet-stream")];
        let r = http::send("PUT", self.addr, &put, &headers, Some(bytes)).expect("PUT blob");
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// A manifest `PUT` under `reference` (a tag, or its digest when `None`); its bytes and
    /// descriptor (with the manifest's `artifactType` and `annotations` as the referrers list
    /// carries them: the config's media type where the manifest names none).
    pub fn manifest(&self, reference: Option<&str>, m: &Value) -> (Vec<u8>, Value) {
        let bytes = serde_json::to_vec_pretty(m).unwrap();
        let digest = digest_of(&bytes);
        let media_type = m["mediaType"].as_str().expect("mediaType");
        let path = format!(
            "/v2/{}/manifests/{}",
            self.repo,
            reference.unwrap_or(&digest)
        );
        let headers = [("Content-Type", media_type)];
        let r = http::send("PUT", self.addr, &path, &headers, Some(&bytes)).expect("PUT manifest");
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("docker-content-digest"), Some(&*digest));
        let mut d = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
        let artifact_type = m
            .get("artifactType")
            .or_else(|| m.pointer("/config/mediaType"));
        if let Some(t) = artifact_type {
            d["artifactType"] = t.clone();
        }
        if let Some(a) = m.get("annotations") {
            d["annotations"] = a.clone();
        }
        (bytes, d)
    }

    /// The referrers tag schema's index for `subject`, under tag `sha256-<hex>`, as a client
    /// writes it where the registry has no referrers API.
    pub fn fallback_index(&self, subject: &str, referrers: &[Value]) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": referrers});
        self.manifest(Some(&fallback_tag(subject)), &index);
    }
}

/// `sha256-<hex>`: the referrers tag schema's tag for `subject`.
pub fn fallback_tag(subject: &str) -> String {
    subject.replacen(':', "-", 1)
}

/// A pushed manifest: its bytes, its descriptor as listed, and the blobs it names.
pub struct Pushed {
    pub bytes: Vec<u8>,
    pub listed: Value,
    pub blobs: Vec<(String, Vec<u8>)>,
}

/// An artifact manifest with `subject`: `artifact_type` (or none: then the config's media type
/// stands for it), a config and one layer, and one annotation as the conformance suite's have.
fn artifact(
    p: &Pusher,
    subject: &Value,
    artifact_type: Option<&str>,
    config: (&str, &[u8]),
    layer: (&str, &[u8]),
    note: &str,
) -> Pushed {
    let c = p.blob(config.0, config.1);
    let l = p.blob(layer.0, layer.1);
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": c,
        "layers": [l],
        "subject": subject,
        "annotations": {"org.opencontainers.image.description": note},
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    let (bytes, listed) = p.manifest(None, &m);
    Pushed {
        bytes,
        listed,
        blobs: vec![
            (c["digest"].as_str().unwrap().to_owned(), config.1.to_vec()),
            (l["digest"].as_str().unwrap().to_owned(), layer.1.to_vec()),
        ],
    }
}

/// The subject's descriptor as a referrer names it.
pub fn subject_of(img: &seed::Image) -> Value {
    json!({"mediaType": img.media_type, "digest": img.top.digest, "size": img.top.size})
}

/// Percent-encodes a query value (a media type's `+` and `/`), as clients do.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The three ways to name `docker.io`'s `repo` at berth, each with room for more query.
pub fn route_forms(repo: &str, subject: &str) -> [(String, String); 3] {
    [
        (format!("/v2/{repo}/referrers/{subject}"), "?".into()),
        (
            format!("/v2/docker.io/{repo}/referrers/{subject}"),
            "?".into(),
        ),
        (
            format!("/v2/{repo}/referrers/{subject}?ns=docker.io"),
            "&".into(),
        ),
    ]
}

/// What the conformance suite expects of a referrers answer: `200`, an image index with that
/// content type, distinct digests, each descriptor with its annotations; `OCI-Filters-Applied:
/// artifactType` exactly when filtered. Then that the list is `want`, in order.
#[track_caller]
pub fn assert_conformant(r: &Response, want: &[Value], filtered: bool, what: &str) {
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 200, "{what}: {text}");
    assert_eq!(r.header("content-type"), Some(OCI_INDEX), "{what}");
    assert_eq!(
        r.header("oci-filters-applied"),
        filtered.then_some("artifactType"),
        "{what}"
    );
    let index: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(index["schemaVersion"], 2, "{what}: {text}");
    assert_eq!(index["mediaType"], OCI_INDEX, "{what}: {text}");
    let got = index["manifests"].as_array().expect("manifests is a list");
    let mut digests: Vec<&str> = got.iter().map(|d| d["digest"].as_str().unwrap()).collect();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), got.len(), "{what}: digests repeat: {text}");
    for d in got {
        for field in ["mediaType", "digest", "size", "artifactType", "annotations"] {
            assert!(d.get(field).is_some(), "{what}: no {field} in {d}");
        }
    }
    assert_eq!(got, want, "{what}");
}

/// `GET` and `HEAD` of `path` at berth agree on the status and the headers; the `GET`.
#[track_caller]
pub fn get_and_head(addr: &str, path: &str) -> Response {
    let get = http::request("GET", addr, path, None).expect("berth answers");
    let head = http::request("HEAD", addr, path, None).expect("berth answers HEAD");
    assert_eq!(head.status, get.status, "HEAD {path}");
    assert!(head.body.is_empty(), "HEAD {path}");
    for h in [
        "content-type",
        "content-length",
        "oci-filters-applied",
        "warning",
    ] {
        assert_eq!(head.header(h), get.header(h), "HEAD {path}: {h}");
    }
    get
}

/// Pulls a manifest and its blobs by digest through berth: each answers with the pushed bytes.
#[track_caller]
pub fn pull_by_digest(addr: &str, repo_path: &str, p: &Pushed) {
    let digest = p.listed["digest"].as_str().unwrap();
    let r = http::request(
        "GET",
        addr,
        &format!("/v2/{repo_path}/manifests/{digest}"),
        Some(ACCEPT_ALL),
    )
    .expect("berth answers");
    assert_eq!(
        r.status,
        200,
        "{digest}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("content-type"),
        p.listed["mediaType"].as_str(),
        "{digest}"
    );
    assert_eq!(r.header("docker-content-digest"), Some(digest));
    assert_eq!(digest_of(&r.body), digest);
    assert_eq!(r.body, p.bytes, "{digest}");
    for (d, bytes) in &p.blobs {
        let r = http::get(addr, &format!("/v2/{repo_path}/blobs/{d}"), None).unwrap();
        assert_eq!(r.status, 200, "blob {d} of {digest}");
        assert_eq!(digest_of(&r.body), *d);
        assert_eq!(&r.body, bytes, "blob {d} of {digest}");
    }
}

/// How many `GET <path>` (any query) the registry of `host` logged, once it logged `want` (it
/// logs after answering) or 10 s passed.
fn upstream_gets(env: &Env, host: &str, path: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = env.upstream_requests(host, "GET", path);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The artifacts of one test: pushed to docker.io's registry, in `team/app`, about the seeded
/// `team/app:1.0`.
struct Artifacts {
    subject: String,
    bundle: Pushed,
    sbom: Pushed,
    in_toto: Pushed,
    index: Pushed,
    /// A referrer whose subject the repository does not hold, and that subject's digest.
    orphan: Pushed,
    orphan_subject: String,
    /// cosign's tag scheme: the signature manifest under `sha256-<hex>.sig`.
    cosign_sig: Pushed,
}

impl Artifacts {
    fn all(&self) -> Vec<Value> {
        [&self.bundle, &self.sbom, &self.in_toto, &self.index]
            .iter()
            .map(|p| p.listed.clone())
            .collect()
    }

    fn of_type(&self, t: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|d| d["artifactType"] == t)
            .collect()
    }
}

fn push_artifacts(env: &Env) -> Artifacts {
    let app = seed::image("team/app");
    let p = Pusher {
        addr: env.registry_addr("docker.io"),
        repo: "team/app",
    };
    let subject = subject_of(app);
    let empty: (&str, &[u8]) = (EMPTY_CONFIG, b"{}");
    let bundle_body = json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "berth-e2e"}},
        "dsseEnvelope": {"payloadType": "application/vnd.in-toto+json",
                         "payload": "e30=", "signatures": [{"sig": "c2ln"}]},
    })
    .to_string();
    let bundle = artifact(
        &p,
        &subject,
        Some(BUNDLE),
        empty,
        (BUNDLE, bundle_body.as_bytes()),
        "a sigstore bundle",
    );
    let sbom = artifact(
        &p,
        &subject,
        Some(SPDX),
        empty,
        (
            SPDX,
            br#"{"spdxVersion":"SPDX-2.3","name":"team/app","packages":[]}"#,
        ),
        "an SPDX SBOM",
    );
    // No artifactType: the config's media type is the artifact's type.
    let in_toto = artifact(
        &p,
        &subject,
        None,
        (IN_TOTO, br#"{"_type":"https://in-toto.io/Statement/v1"}"#),
        (
            "application/vnd.dsse.envelope.v1+json",
            br#"{"payload":"","signatures":[]}"#,
        ),
        "an attestation typed by its config",
    );
    // An image index can be a referrer too.
    let (bytes, listed) = p.manifest(
        None,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": INDEX_ARTIFACT,
            "manifests": [subject],
            "subject": subject,
            "annotations": {"org.opencontainers.image.description": "an index referrer"},
        }),
    );
    let index = Pushed {
        bytes,
        listed,
        blobs: Vec::new(),
    };
    let orphan_subject = digest_of(b"a manifest this repository never held");
    let orphan = artifact(
        &p,
        &json!({"mediaType": OCI_MANIFEST, "digest": orphan_subject, "size": 37}),
        Some(SPDX),
        empty,
        (SPDX, br#"{"spdxVersion":"SPDX-2.3","name":"orphan"}"#),
        "a referrer of a missing subject",
    );
    let subject_digest = app.top.digest.clone();
    let artifacts = Artifacts {
        subject: subject_digest.clone(),
        bundle,
        sbom,
        in_toto,
        index,
        orphan,
        orphan_subject,
        cosign_sig: cosign_signature(&p, &subject_digest),
    };
    p.fallback_index(&artifacts.subject, &artifacts.all());
    p.fallback_index(
        &artifacts.orphan_subject,
        std::slice::from_ref(&artifacts.orphan.listed),
    );
    artifacts
}

/// A cosign signature under its tag scheme, `sha256-<hex>.sig`: a simple-signing payload layer
/// whose annotation holds the signature (not a real one: no client here verifies it).
fn cosign_signature(p: &Pusher, subject: &str) -> Pushed {
    let payload = json!({
        "critical": {"identity": {"docker-reference": "docker.io/team/app"},
                     "image": {"docker-manifest-digest": subject},
                     "type": "cosign container image signature"},
        "optional": null,
    })
    .to_string();
    let config =
        br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = p.blob(OCI_CONFIG, config);
    let mut l = p.blob(SIMPLE_SIGNING, payload.as_bytes());
    l["annotations"] = json!({"dev.cosignproject.cosign/signature": "MEUCIQDberth"});
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": c, "layers": [l]});
    let (bytes, listed) = p.manifest(Some(&format!("{}.sig", fallback_tag(subject))), &m);
    Pushed {
        bytes,
        listed,
        blobs: vec![
            (c["digest"].as_str().unwrap().to_owned(), config.to_vec()),
            (
                l["digest"].as_str().unwrap().to_owned(),
                payload.into_bytes(),
            ),
        ],
    }
}

/// Against the real Distribution registry: a subject's referrers, pushed with the tag schema, are
/// listed through berth on every route form (GET and HEAD agreeing), filtered by `artifactType`,
/// pulled by digest with their blobs; a subject without referrers gets an empty index, one from
/// another upstream too; cosign's `.sig` tag is a tag like any other. Then, with the registries
/// stopped and berth restarted, the same lists answer from its disk with a `Warning`, and the
/// referrers still pull.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn referrers_from_the_distribution_registry_through_berth() {
    let mut env = Env::start(Via::Berth);
    let a = push_artifacts(&env);
    let registry = env.registry_addr("docker.io").to_owned();

    // The registry itself has no referrers API (see the module comment). (Asked about another
    // subject than the one whose upstream requests are counted below.)
    let in_toto = a.in_toto.listed["digest"].as_str().unwrap();
    for path in [
        format!("/v2/team/app/referrers/{in_toto}"),
        format!(
            "/v2/team/app/referrers/{in_toto}?artifactType={}",
            enc(SPDX)
        ),
        format!("/v2/no/such-repo/referrers/{}", a.subject),
    ] {
        let r = http::get(&registry, &path, None).unwrap();
        assert_eq!(r.status, 404, "registry {path}");
        assert_eq!(r.body, b"404 page not found\n", "registry {path}");
    }

    let berth = env.berth_addr().to_owned();
    let all = a.all();
    let filters = [
        BUNDLE,
        SPDX,
        IN_TOTO,
        INDEX_ARTIFACT,
        "application/vnd.example.none",
    ];
    let check_lists = |berth: &str, round: &str| {
        for (path, more) in route_forms("team/app", &a.subject) {
            let r = get_and_head(berth, &path);
            assert_conformant(&r, &all, false, &format!("{round}: {path}"));
            for t in filters {
                let path = format!("{path}{more}artifactType={}", enc(t));
                let r = get_and_head(berth, &path);
                assert_conformant(&r, &a.of_type(t), true, &format!("{round}: {path}"));
            }
        }
        // The conformance suite's "missing manifest": a referrer whose subject is not there is
        // listed all the same.
        let path = format!("/v2/team/app/referrers/{}", a.orphan_subject);
        let r = get_and_head(berth, &path);
        assert_conformant(
            &r,
            std::slice::from_ref(&a.orphan.listed),
            false,
            &format!("{round}: {path}"),
        );
        r
    };

    let r = check_lists(&berth, "online");
    assert_eq!(r.header("warning"), None);
    for p in [&a.bundle, &a.sbom, &a.in_toto, &a.index, &a.orphan] {
        pull_by_digest(&berth, "docker.io/team/app", p);
        pull_by_digest(&berth, "team/app", p);
    }
    // One request to the registry per list (the whole one, and one per filter), whatever the
    // route form, GET or HEAD.
    let api_path = format!("/v2/team/app/referrers/{}", a.subject);
    let lists = 1 + filters.len();
    assert_eq!(upstream_gets(&env, "docker.io", &api_path, lists), lists);

    // Nothing refers to these: an empty index, never a 404 (conformance: "nonexistent blob").
    let busybox = seed::image("library/busybox");
    let flannel = seed::image("coreos/flannel");
    let nothing = digest_of(b"nothing refers to this");
    for path in [
        format!("/v2/library/busybox/referrers/{}", busybox.top.digest),
        format!("/v2/busybox/referrers/{}", busybox.top.digest),
        format!(
            "/v2/quay.io/coreos/flannel/referrers/{}",
            flannel.top.digest
        ),
        format!("/v2/team/app/referrers/{nothing}"),
        format!(
            "/v2/team/app/referrers/{}",
            a.in_toto.listed["digest"].as_str().unwrap()
        ),
        // Isolation: team/app's subject asked through quay.io, whose registry holds no team/app.
        format!("/v2/quay.io/team/app/referrers/{}", a.subject),
    ] {
        let r = get_and_head(&berth, &path);
        assert_conformant(&r, &[], false, &path);
        let r = get_and_head(
            &berth,
            &format!(
                "{path}{}artifactType={}",
                if path.contains('?') { '&' } else { '?' },
                enc(BUNDLE)
            ),
        );
        assert_conformant(&r, &[], true, &path);
    }

    // A filter that is not a media type, a reference that is not a digest: the client's error.
    for (path, code) in [
        (
            format!(
                "/v2/team/app/referrers/{}?artifactType=not-a-type",
                a.subject
            ),
            "400",
        ),
        // A raw `+` is a space in a query: clients write `%2B`.
        (
            format!("/v2/team/app/referrers/{}?artifactType={BUNDLE}", a.subject),
            "400",
        ),
        ("/v2/team/app/referrers/1.0".to_owned(), "400"),
    ] {
        let r = http::get(&berth, &path, None).unwrap();
        assert_eq!(
            r.status.to_string(),
            code,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // cosign's tag scheme: `sha256-<hex>.sig` is a tag like any other.
    let sig_tag = format!("{}.sig", fallback_tag(&a.subject));
    let r = http::request(
        "GET",
        &berth,
        &format!("/v2/team/app/manifests/{sig_tag}"),
        Some(ACCEPT_ALL),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, a.cosign_sig.bytes);
    assert_eq!(
        r.header("docker-content-digest"),
        a.cosign_sig.listed["digest"].as_str()
    );
    pull_by_digest(&berth, "team/app", &a.cosign_sig);

    // Upstream gone, berth restarted: everything above answers from its disk, the lists with a
    // Warning.
    env.stop_registries();
    env.restart_berth();
    let berth = env.berth_addr().to_owned();
    let r = check_lists(&berth, "offline");
    assert!(
        r.header("warning").is_some_and(|w| w.starts_with("110 ")),
        "{:?}",
        r.header("warning")
    );
    for (path, _) in route_forms("team/app", &a.subject) {
        let r = http::get(&berth, &path, None).unwrap();
        assert!(
            r.header("warning").is_some_and(|w| w.starts_with("110 ")),
            "{path}"
        );
    }
    // A filter never asked before: answered from the whole list kept, filtered here, stale.
    let path = format!(
        "/v2/team/app/referrers/{}?artifactType={}",
        a.orphan_subject,
        enc(SPDX)
    );
    let r = get_and_head(&berth, &path);
    assert_conformant(&r, std::slice::from_ref(&a.orphan.listed), true, &path);
    assert!(
        r.header("warning").is_some_and(|w| w.starts_with("110 ")),
        "{path}"
    );
    for p in [
        &a.bundle,
        &a.sbom,
        &a.in_toto,
        &a.index,
        &a.orphan,
        &a.cosign_sig,
    ] {
        pull_by_digest(&berth, "docker.io/team/app", p);
    }
    let r = http::request(
        "GET",
        &berth,
        &format!("/v2/team/app/manifests/{sig_tag}"),
        Some(ACCEPT_ALL),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, a.cosign_sig.bytes);
}
