//! The signature policy (`[[policy]]`) over real sockets against the fake registry: keys made and
//! signatures computed by `openssl` (an independent tool), pushed in cosign's tag scheme and as
//! Sigstore bundles attached as referrers (DSSE, and message signatures with their payload beside
//! them); each denial path with its reason, `warn` mode, indexes and their children, one
//! verification for concurrent requests, a reload flipping a verdict, and a verified image pulling
//! with the upstream down, also after a restart.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use http::{Method, StatusCode};

use berth::oci::media::{OCI_INDEX, OCI_MANIFEST};
use support::instance::{Berth, Got, listeners_and_storage, start_reloadable, start_toml};
use support::sigstore::{openssl, sign};
use support::{FakeRegistry, Fault, digest_of};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// A P-256 key pair made by openssl: the private key file, the public key file.
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ],
        &key,
    );
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{out:?}");
    (key, public)
}

/// cosign's simple-signing payload claiming `digest`.
pub(crate) fn payload(repo: &str, digest: &str) -> String {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"registry.test/{repo}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
}

/// Pushes a cosign signature of `digest` in `repo`: the payload blob, and the `.sig` manifest
/// under `sha256-<hex>.sig` with one layer per (payload, signature); the manifest.
fn push_signatures(
    fake: &FakeRegistry,
    repo: &str,
    digest: &str,
    sigs: &[(String, Vec<u8>)],
) -> String {
    let empty = fake.put_blob(repo, "{}");
    let layers: Vec<String> = sigs
        .iter()
        .map(|(payload, sig)| {
            let d = fake.put_blob(repo, payload.clone());
            format!(
                r#"{{"mediaType":"{SIMPLE_SIGNING}","digest":"{d}","size":{},"annotations":{{"dev.cosignproject.cosign/signature":"{}"}}}}"#,
                payload.len(),
                base64::engine::general_purpose::STANDARD.encode(sig)
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{empty}","size":2}},"layers":[{}]}}"#,
        layers.join(",")
    );
    let tag = format!("{}.sig", digest.replace(':', "-"));
    fake.put_tagged(repo, &tag, OCI_MANIFEST, manifest.clone());
    manifest
}

/// Signs `digest` in `repo` as cosign does with a key: one honest payload, signed by `key`.
fn sign_image(fake: &FakeRegistry, repo: &str, digest: &str, key: &Path) {
    let p = payload(repo, digest);
    let sig = sign(key, p.as_bytes());
    push_signatures(fake, repo, digest, &[(p, sig)]);
}

/// An image (config and one layer) tagged `tag` in `repo`; its manifest digest.
pub(crate) fn image(fake: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> String {
    let config = fake.put_blob(
        repo,
        format!(r#"{{"architecture":"amd64","os":"linux","n":{seed}}}"#),
    );
    let layer = fake.put_blob(repo, support::random_bytes(1000, seed));
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":30}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":1000}}]}}"#
    );
    fake.put_tagged(repo, tag, OCI_MANIFEST, m)
}

/// The layer of the image made with `seed`.
pub(crate) fn layer_of(seed: u64) -> String {
    digest_of(&support::random_bytes(1000, seed))
}

pub(crate) fn config(dir: &Path, fake: &FakeRegistry, policy: &str) -> String {
    format!(
        r#"{}
[[upstream]]
name = "registry.test"
url = "{}"
default = true
tag_ttl = "0s"
{policy}
"#,
        listeners_and_storage(dir),
        fake.url()
    )
}

fn policy(keys: &[&Path], mode: &str) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{:?}", k.display().to_string()))
        .collect();
    format!(
        "[[policy]]\nname = \"release\"\nupstreams = [\"registry.test\"]\nrepositories = [\"team/*\"]\nmode = \"{mode}\"\nkeys = [{}]\n",
        keys.join(", ")
    )
}

async fn verdicts(b: &Berth, verdict: &str) -> u64 {
    b.counter(&format!(
        "berth_policy_verdicts_total{{policy=\"release\",verdict=\"{verdict}\"}}"
    ))
    .await
}

pub(crate) fn denied(got: &Got) -> String {
    assert_eq!(got.status, StatusCode::FORBIDDEN, "{:?}", got.body);
    assert_eq!(got.code(), "DENIED");
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    v["errors"][0]["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn only_images_signed_by_a_configured_key_are_served_each_denial_saying_why() {
    let keys = tempfile::tempdir().unwrap();
    let (good_key, good_pub) = keypair(keys.path(), "release");
    let (other_key, _) = keypair(keys.path(), "other");
    let fake = FakeRegistry::start().await;

    let signed = image(&fake, "team/app", "signed", 1);
    sign_image(&fake, "team/app", &signed, &good_key);
    let unsigned = image(&fake, "team/app", "unsigned", 2);
    let by_other = image(&fake, "team/app", "other-key", 3);
    sign_image(&fake, "team/app", &by_other, &other_key);
    // A good signature, but of another image: copied beside this one.
    let moved = image(&fake, "team/app", "moved", 4);
    push_signatures(
        &fake,
        "team/app",
        &moved,
        &[(
            payload("team/app", &signed),
            sign(&good_key, payload("team/app", &signed).as_bytes()),
        )],
    );
    // A payload changed after signing.
    let tampered = image(&fake, "team/app", "tampered", 5);
    let honest = payload("team/app", &tampered);
    push_signatures(
        &fake,
        "team/app",
        &tampered,
        &[(
            honest.replace("registry.test/team/app", "registry.test/team/evil"),
            sign(&good_key, honest.as_bytes()),
        )],
    );
    let outside = image(&fake, "library/nginx", "latest", 6);

    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&good_pub], "enforce")),
        dir,
    )
    .await;

    let got = b.get("/v2/team/app/manifests/signed").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), signed);
    assert_eq!(
        b.get(&format!("/v2/team/app/manifests/{signed}"))
            .await
            .status,
        StatusCode::OK
    );

    let why = denied(&b.get("/v2/team/app/manifests/unsigned").await);
    assert!(
        why.contains(&format!("policy \"release\": {unsigned} is not signed")),
        "{why}"
    );
    let why = denied(&b.get("/v2/team/app/manifests/other-key").await);
    assert!(
        why.contains("#1: does not verify with the 1 configured key"),
        "{why}"
    );
    let why = denied(&b.get(&format!("/v2/team/app/manifests/{moved}")).await);
    assert!(
        why.contains(&format!("#1: it signs {signed}, not this digest")),
        "{why}"
    );
    let why = denied(&b.get("/v2/team/app/manifests/tampered").await);
    assert!(why.contains("#1: does not verify"), "{why}");
    // HEAD is denied the same way (it would tell the digest a pull is about to use).
    let head = b
        .request(Method::HEAD, "/v2/team/app/manifests/unsigned", &[])
        .await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);

    // Outside the policy's scope: served unsigned. The signatures themselves: always served.
    assert_eq!(
        b.get("/v2/library/nginx/manifests/latest").await.status,
        StatusCode::OK
    );
    assert_eq!(
        digest_of(b.get("/v2/library/nginx/manifests/latest").await.bytes()),
        outside
    );
    let sig_tag = format!("/v2/team/app/manifests/{}.sig", signed.replace(':', "-"));
    assert_eq!(b.get(&sig_tag).await.status, StatusCode::OK);

    // Blobs: those a served manifest names, and no others. The unsigned image's layer is denied
    // by digest; the signed one's is served once its manifest was.
    let why = denied(&b.get(&format!("/v2/team/app/blobs/{}", layer_of(2))).await);
    assert!(
        why.contains("is named by no manifest served under this policy"),
        "{why}"
    );
    let got = b.get(&format!("/v2/team/app/blobs/{}", layer_of(1))).await;
    assert_eq!(got.status, StatusCode::OK);
    let head = b
        .request(
            Method::HEAD,
            &format!("/v2/team/app/blobs/{}", layer_of(3)),
            &[],
        )
        .await;
    assert_eq!(head.status, StatusCode::FORBIDDEN);
    // Outside the scope, blobs are not asked about.
    let got = b
        .get(&format!("/v2/library/nginx/blobs/{}", layer_of(6)))
        .await;
    assert_eq!(got.status, StatusCode::OK);

    assert_eq!(verdicts(&b, "verified").await, 3);
    assert_eq!(verdicts(&b, "denied").await, 7);
}

#[tokio::test]
async fn warn_mode_serves_what_enforce_denies_and_counts_it() {
    let keys = tempfile::tempdir().unwrap();
    let (_, good_pub) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    let unsigned = image(&fake, "team/app", "1", 7);
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&good_pub], "warn")),
        dir,
    )
    .await;
    let got = b.get("/v2/team/app/manifests/1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(digest_of(got.bytes()), unsigned);
    let got = b.get(&format!("/v2/team/app/blobs/{}", layer_of(7))).await;
    assert_eq!(got.status, StatusCode::OK);
    // A blob no manifest named: served too, and counted.
    let stray = fake.put_blob("team/app", "stray");
    assert_eq!(
        b.get(&format!("/v2/team/app/blobs/{stray}")).await.status,
        StatusCode::OK
    );
    assert_eq!(verdicts(&b, "warned").await, 2);
    assert_eq!(verdicts(&b, "denied").await, 0);
}

#[tokio::test]
async fn a_signed_index_lets_its_platform_manifests_through_and_only_those() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    let amd = image(&fake, "team/app", "amd64-only", 8);
    let arm = image(&fake, "team/app", "arm64-only", 9);
    let stray = image(&fake, "team/app", "stray", 10);
    let index = |children: &[&String]| {
        let list: Vec<String> = children
            .iter()
            .map(|d| format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}"#))
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            list.join(",")
        )
    };
    let signed = fake.put_tagged("team/app", "multi", OCI_INDEX, index(&[&amd, &arm]));
    sign_image(&fake, "team/app", &signed, &key);
    let unsigned = fake.put_tagged("team/app", "multi-unsigned", OCI_INDEX, index(&[&stray]));
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&public], "enforce")),
        dir,
    )
    .await;

    assert_eq!(
        b.get("/v2/team/app/manifests/multi").await.status,
        StatusCode::OK
    );
    for child in [&amd, &arm] {
        let got = b.get(&format!("/v2/team/app/manifests/{child}")).await;
        assert_eq!(got.status, StatusCode::OK, "{child}");
    }
    denied(&b.get("/v2/team/app/manifests/multi-unsigned").await);
    let why = denied(&b.get(&format!("/v2/team/app/manifests/{stray}")).await);
    assert!(why.contains("is not signed"), "{why}");
    assert!(!unsigned.is_empty());
}

#[tokio::test]
async fn concurrent_requests_share_one_verification() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    let signed = image(&fake, "team/app", "1", 11);
    sign_image(&fake, "team/app", &signed, &key);
    let sig_path = format!("/v2/team/app/manifests/{}.sig", signed.replace(':', "-"));
    let (open, gate) = tokio::sync::watch::channel(false);
    fake.fault(&sig_path, Fault::Hold(gate));
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(
        start_toml(
            &config(dir.path(), &fake, &policy(&[&public], "enforce")),
            dir,
        )
        .await,
    );
    let asks: Vec<_> = (0..10)
        .map(|_| {
            let (b, path) = (b.clone(), format!("/v2/team/app/manifests/{signed}"));
            tokio::spawn(async move { b.get(&path).await })
        })
        .collect();
    let reached =
        support::instance::eventually(|| async { fake.hits(Method::GET, &sig_path) == 1 }).await;
    assert!(reached, "the signature was asked for");
    // The nine others are waiting on the one verification.
    support::instance::until_metric(&b, "berth_coalesced_requests_total{kind=\"verdict\"}", 9)
        .await;
    open.send_replace(true);
    for a in asks {
        assert_eq!(a.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(fake.hits(Method::GET, &sig_path), 1);
    assert_eq!(verdicts(&b, "verified").await, 10);
}

#[tokio::test]
async fn a_verified_image_pulls_with_the_upstream_down_also_after_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    let signed = image(&fake, "team/app", "1", 12);
    sign_image(&fake, "team/app", &signed, &key);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake, &policy(&[&public], "enforce"));
    let b = start_toml(&cfg, dir).await;
    assert_eq!(
        b.get("/v2/team/app/manifests/1").await.status,
        StatusCode::OK
    );
    let layer = format!("/v2/team/app/blobs/{}", layer_of(12));
    assert_eq!(b.get(&layer).await.status, StatusCode::OK);

    // Every fill renamed into place (the payload's and the layer's) before berth stops.
    b.settled().await;
    let dir = b.stop().await;
    drop(fake);
    let b = start_toml(&cfg, dir).await;
    let got = b.get("/v2/team/app/manifests/1").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), signed);
    // The verdict was kept on disk: found again after the restart.
    assert!(
        std::fs::read_dir(b.dir.path().join("policy"))
            .unwrap()
            .flatten()
            .any(|rev| rev
                .path()
                .join(signed.trim_start_matches("sha256:"))
                .is_file()),
        "no verdict kept for {signed}"
    );
    // Its layer: served from disk, named by the manifest just served.
    assert_eq!(b.get(&layer).await.status, StatusCode::OK);
    assert_eq!(verdicts(&b, "verified").await, 2);
}

#[tokio::test]
async fn a_reload_that_changes_the_keys_decides_again() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let (_, other_pub) = keypair(keys.path(), "other");
    let fake = FakeRegistry::start().await;
    let signed = image(&fake, "team/app", "1", 13);
    sign_image(&fake, "team/app", &signed, &key);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (b, reloader) =
        start_reloadable(&config(&path, &fake, &policy(&[&public], "enforce")), dir).await;
    assert_eq!(
        b.get("/v2/team/app/manifests/1").await.status,
        StatusCode::OK
    );

    let other = config(&path, &fake, &policy(&[&other_pub], "enforce"));
    let changes = reloader
        .apply(berth::config::Config::parse(&other, "t").unwrap())
        .unwrap();
    assert!(changes.policies);
    denied(&b.get("/v2/team/app/manifests/1").await);

    // Both keys: any one suffices.
    let both = config(&path, &fake, &policy(&[&other_pub, &public], "enforce"));
    reloader
        .apply(berth::config::Config::parse(&both, "t").unwrap())
        .unwrap();
    assert_eq!(
        b.get("/v2/team/app/manifests/1").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_policy_whose_key_cannot_be_used_fails_the_load_naming_it() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (keys, want) in [
        (vec![private.as_path()], "policy[0].keys[0]: "),
        (
            vec![public.as_path(), Path::new("/surely/not/here.pub")],
            "policy[0].keys[1]: cannot read /surely/not/here.pub",
        ),
    ] {
        let e = berth::config::Config::parse(
            &config(dir.path(), &fake, &policy(&keys, "enforce")),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{e}");
    }
    let e = berth::config::Config::parse(
        &config(
            dir.path(),
            &fake,
            &policy(&[&public], "enforce").replace("registry.test\"]", "nowhere.test\"]"),
        ),
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("policy[0].upstreams: \"nowhere.test\" is no [[upstream]] name"),
        "{e}"
    );
    let e = berth::config::Config::parse(
        &config(
            dir.path(),
            &fake,
            &format!(
                "{}trusted_root = \"/x.json\"\n",
                policy(&[&public], "enforce")
            ),
        ),
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("policy[0].identities: a trusted_root needs at least one identity"),
        "{e}"
    );
}

/// cosign 3's default: a Sigstore bundle attached as an OCI 1.1 referrer, its DSSE envelope over
/// an in-toto statement about the image; the signature computed by openssl over DSSE's
/// pre-authentication encoding.
fn push_bundle(fake: &FakeRegistry, repo: &str, subject: &str, about: &str, key: &Path) {
    const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    const IN_TOTO: &str = "application/vnd.in-toto+json";
    let statement = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"registry.test/{repo}","digest":{{"sha256":"{}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#,
        about.trim_start_matches("sha256:")
    );
    let pae = format!(
        "DSSEv1 {} {IN_TOTO} {} {statement}",
        IN_TOTO.len(),
        statement.len()
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let bundle = format!(
        r#"{{"mediaType":"{BUNDLE}","verificationMaterial":{{"publicKey":{{"hint":"release"}},"tlogEntries":[]}},"dsseEnvelope":{{"payload":"{}","payloadType":"{IN_TOTO}","signatures":[{{"sig":"{}","keyid":""}}]}}}}"#,
        b64.encode(&statement),
        b64.encode(sign(key, pae.as_bytes()))
    );
    let layer = fake.put_blob(repo, bundle.clone());
    let empty = fake.put_blob(repo, "{}");
    fake.put_manifest(
        repo,
        OCI_MANIFEST,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{BUNDLE}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"{BUNDLE}","digest":"{layer}","size":{}}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":1}}}}"#,
            bundle.len()
        ),
    );
}

#[tokio::test]
async fn a_sigstore_bundle_attached_as_a_referrer_verifies_an_image() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let (other_key, _) = keypair(keys.path(), "other");
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let signed = image(&fake, "team/app", "bundled", 14);
    push_bundle(&fake, "team/app", &signed, &signed, &key);
    let misdirected = image(&fake, "team/app", "misdirected", 15);
    push_bundle(&fake, "team/app", &misdirected, &signed, &key);
    let foreign = image(&fake, "team/app", "foreign", 16);
    push_bundle(&fake, "team/app", &foreign, &foreign, &other_key);
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&public], "enforce")),
        dir,
    )
    .await;

    let got = b.get("/v2/team/app/manifests/bundled").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(
        b.get(&format!("/v2/team/app/blobs/{}", layer_of(14)))
            .await
            .status,
        StatusCode::OK
    );
    let why = denied(&b.get("/v2/team/app/manifests/misdirected").await);
    assert!(
        why.contains(&format!("its statement is about {signed}, not this digest")),
        "{why}"
    );
    let why = denied(&b.get("/v2/team/app/manifests/foreign").await);
    assert!(
        why.contains("its envelope's signature does not verify"),
        "{why}"
    );
}

/// Signature material is served unverified, but what it names never lets a manifest through: an
/// artifact naming an unsigned image (as a layer, or in a stray `manifests` list) changes nothing
/// for that image. A referrers list (the tag schema's index) is material too.
#[tokio::test]
async fn material_is_served_but_lets_no_unsigned_manifest_through() {
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    let unsigned = image(&fake, "team/app", "unsigned", 17);
    let empty = fake.put_blob("team/app", "{}");
    let smuggler = fake.put_manifest(
        "team/app",
        OCI_MANIFEST,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/vnd.in-toto+json","digest":"{unsigned}","size":1}}],"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{unsigned}","size":1}}]}}"#
        ),
    );
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{smuggler}","size":1,"artifactType":"application/spdx+json"}}]}}"#
    );
    let schema_tag = unsigned.replace(':', "-");
    fake.put_tagged("team/app", &schema_tag, OCI_INDEX, list);
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&public], "enforce")),
        dir,
    )
    .await;

    let got = b.get(&format!("/v2/team/app/manifests/{schema_tag}")).await;
    assert_eq!(got.status, StatusCode::OK, "a referrers list is material");
    let got = b.get(&format!("/v2/team/app/manifests/{smuggler}")).await;
    assert_eq!(got.status, StatusCode::OK, "an artifact is material");
    let why = denied(&b.get(&format!("/v2/team/app/manifests/{unsigned}")).await);
    assert!(why.contains("is not signed"), "{why}");
    denied(&b.get("/v2/team/app/manifests/unsigned").await);
    // Its layer stays denied too: only the smuggler's own blobs were let through.
    denied(&b.get(&format!("/v2/team/app/blobs/{}", layer_of(17))).await);
    assert_eq!(
        b.get(&format!("/v2/team/app/blobs/{empty}")).await.status,
        StatusCode::OK
    );
}

/// A Sigstore bundle whose message signature `sig` is over bytes whose SHA-256 is `signed`'s,
/// attached to `subject` as a referrer that carries `payload` beside it (a simple-signing layer;
/// none if `None`), as berth reads that form.
fn push_message_bundle(
    fake: &FakeRegistry,
    (repo, subject): (&str, &str),
    payload: Option<&str>,
    signed: &[u8],
    sig: &[u8],
) {
    const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let b64 = base64::engine::general_purpose::STANDARD;
    let bundle = serde_json::json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "release"}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(hex::decode(digest_of(signed).trim_start_matches("sha256:")).unwrap())},
            "signature": b64.encode(sig),
        },
    })
    .to_string();
    let mut layers = vec![serde_json::json!({
        "mediaType": BUNDLE, "digest": fake.put_blob(repo, bundle.clone()), "size": bundle.len(),
    })];
    if let Some(p) = payload {
        layers.push(serde_json::json!({
            "mediaType": SIMPLE_SIGNING, "digest": fake.put_blob(repo, p.to_owned()), "size": p.len(),
        }));
    }
    let empty = fake.put_blob(repo, "{}");
    fake.put_manifest(
        repo,
        OCI_MANIFEST,
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": layers,
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
            "annotations": {"dev.sigstore.bundle.content": "message-signature"},
        })
        .to_string(),
    );
}

/// A bundle's message signature over a simple-signing payload the referrer carries beside it:
/// signed by the key and claiming the image, it verifies; a digest of other bytes, a payload
/// naming another image, another key, or no payload at all: each denied, saying which.
#[tokio::test]
async fn a_message_signature_bundle_verifies_over_the_payload_beside_it() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let (other_key, _) = keypair(keys.path(), "other");
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let repo = "team/app";
    let signed = image(&fake, repo, "message", 40);
    let p = payload(repo, &signed);
    push_message_bundle(
        &fake,
        (repo, &signed),
        Some(&p),
        p.as_bytes(),
        &sign(&key, p.as_bytes()),
    );
    let mismatched = image(&fake, repo, "mismatched", 41);
    let p = payload(repo, &mismatched);
    push_message_bundle(
        &fake,
        (repo, &mismatched),
        Some(&p),
        b"other bytes",
        &sign(&key, p.as_bytes()),
    );
    let elsewhere = image(&fake, repo, "elsewhere", 42);
    let p = payload(repo, &signed);
    push_message_bundle(
        &fake,
        (repo, &elsewhere),
        Some(&p),
        p.as_bytes(),
        &sign(&key, p.as_bytes()),
    );
    let foreign = image(&fake, repo, "foreign", 43);
    let p = payload(repo, &foreign);
    push_message_bundle(
        &fake,
        (repo, &foreign),
        Some(&p),
        p.as_bytes(),
        &sign(&other_key, p.as_bytes()),
    );
    let bare = image(&fake, repo, "bare", 44);
    let p = payload(repo, &bare);
    push_message_bundle(
        &fake,
        (repo, &bare),
        None,
        p.as_bytes(),
        &sign(&key, p.as_bytes()),
    );
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&public], "enforce")),
        dir,
    )
    .await;

    let got = b.get("/v2/team/app/manifests/message").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), signed);
    assert_eq!(
        b.get(&format!("/v2/team/app/blobs/{}", layer_of(40)))
            .await
            .status,
        StatusCode::OK
    );
    for (tag, why) in [
        (
            "mismatched",
            format!(
                "its message signature is over {}, not the simple-signing payload beside it",
                digest_of(b"other bytes")
            ),
        ),
        ("elsewhere", format!("it signs {signed}, not this digest")),
        (
            "foreign",
            "its message signature does not verify with the configured keys".to_owned(),
        ),
        (
            "bare",
            format!(
                "it is a message signature, and its referrer carries no simple-signing payload ({SIMPLE_SIGNING})"
            ),
        ),
    ] {
        let why_got = denied(&b.get(&format!("/v2/team/app/manifests/{tag}")).await);
        assert!(
            why_got
                .contains("verifies with the 1 configured key; found 1 signature: bundle sha256:"),
            "{tag}: {why_got}"
        );
        assert!(why_got.contains(&why), "{tag}: wanted {why:?} in {why_got}");
    }
    assert_eq!(verdicts(&b, "verified").await, 2);
}

/// The upstream failing while the signatures are gathered is no verdict. With nothing found (the
/// signature tag's lookup fails, the referrers list is empty), the pull gets the upstream's
/// failure to retry, never a denial saying "unsigned"; with a signature found (its tag), the
/// verdict stands on it, though the referrers list failed.
#[tokio::test]
async fn an_upstream_failing_while_signatures_are_gathered_is_no_verdict() {
    let keys = tempfile::tempdir().unwrap();
    let (good_key, good_pub) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let unsigned = image(&fake, "team/app", "unsigned", 21);
    let tag = berth::policy::cosign::signature_tag(&unsigned.parse().unwrap());
    let unavailable = Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None);
    fake.fault(
        &format!("/v2/team/app/manifests/{}", tag.as_str()),
        unavailable.clone(),
    );
    let signed = image(&fake, "team/app", "signed", 22);
    sign_image(&fake, "team/app", &signed, &good_key);
    fake.fault(&format!("/v2/team/app/referrers/{signed}"), unavailable);
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&good_pub], "enforce")),
        dir,
    )
    .await;

    let got = b.get("/v2/team/app/manifests/unsigned").await;
    assert!(
        got.status.is_server_error(),
        "nothing could be looked at: {} {:?}",
        got.status,
        got.body
    );
    assert_eq!(verdicts(&b, "denied").await, 0);
    let got = b.get("/v2/team/app/manifests/signed").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), signed);
    assert_eq!(verdicts(&b, "verified").await, 1);
}

/// Payload sizes: a few KiB (cosign's `optional` annotations: a build's provenance, say) and
/// exactly the 64 KiB bound verify; one over it is refused as such, and so is one whose
/// descriptor says less than the blob it names holds (read no further than the bound).
#[tokio::test]
async fn signature_payloads_are_read_up_to_their_bound() {
    let keys = tempfile::tempdir().unwrap();
    let (good_key, good_pub) = keypair(keys.path(), "release");
    let fake = FakeRegistry::start().await;
    // An image's payload grown to `len` bytes with an annotation.
    let grown = |digest: &str, len: usize| {
        let short =
            payload("team/app", digest).replace(r#""optional":null"#, r#""optional":{"build":""}"#);
        let p = short.replace(
            r#""build":"""#,
            &format!(r#""build":"{}""#, "b".repeat(len - short.len())),
        );
        assert_eq!(p.len(), len);
        p
    };
    let signed = |tag: &str, seed: u64, len: usize| {
        let d = image(&fake, "team/app", tag, seed);
        let p = grown(&d, len);
        let manifest = push_signatures(
            &fake,
            "team/app",
            &d,
            &[(p.clone(), sign(&good_key, p.as_bytes()))],
        );
        (d, manifest)
    };
    signed("annotated", 23, 4096);
    signed("bound", 24, 64 * 1024);
    signed("over", 25, 64 * 1024 + 1);
    let (under, manifest) = signed("understated", 26, 70 * 1024);
    let sig_tag = format!("{}.sig", under.replace(':', "-"));
    fake.put_tagged(
        "team/app",
        &sig_tag,
        OCI_MANIFEST,
        manifest.replace(&format!(r#""size":{}"#, 70 * 1024), r#""size":500"#),
    );
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(dir.path(), &fake, &policy(&[&good_pub], "enforce")),
        dir,
    )
    .await;
    for tag in ["annotated", "bound"] {
        let got = b.get(&format!("/v2/team/app/manifests/{tag}")).await;
        assert_eq!(got.status, StatusCode::OK, "{tag}: {:?}", got.body);
    }
    assert_eq!(verdicts(&b, "verified").await, 2);
    let over = denied(&b.get("/v2/team/app/manifests/over").await);
    assert!(over.contains("over the limit of 65536"), "{over}");
    let under = denied(&b.get("/v2/team/app/manifests/understated").await);
    assert!(under.contains("larger than its descriptor says"), "{under}");
}
