//! Keyless signatures over real sockets against the fake registry, offline: a test trusted root
//! (tests/support/sigstore.rs: a Fulcio-like CA and leaves built with rcgen over keys openssl
//! made, a Rekor-like log key whose signed entry timestamps openssl computes), pushed in cosign's
//! tag scheme with the keyless annotations (certificate, chain, Rekor bundle), and as Sigstore v0.3
//! bundles attached as referrers (DSSE with a `dsse` Rekor entry; a message signature with a
//! `hashedrekord` one, its payload beside it). A keyless signed image is served; each broken link
//! is denied with its reason; a reload of the identities decides again; a verified image pulls
//! with the upstream down after a restart. The certificates expired long before the test runs:
//! only the log's time says they were valid.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;

use super::policy::{config, denied, image, layer_of, payload};
use crate::support;
use support::instance::{start_reloadable, start_toml};
use support::sigstore::{GITHUB, NOON, Signer, Sigstore, WORKFLOW, ca, key, sign};
use support::{FakeRegistry, digest_of};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

impl Sigstore {
    fn policy(&self, subject_regex: &str) -> String {
        format!(
            "[[policy]]\nname = \"release\"\nupstreams = [\"registry.test\"]\nrepositories = [\"team/*\"]\ntrusted_root = {:?}\nidentities = [{{ issuer = \"{GITHUB}\", subject_regex = \"{subject_regex}\" }}]\n",
            self.root.display().to_string()
        )
    }
}

/// Pushes a keyless cosign signature of `digest` in `repo` under `sha256-<hex>.sig`: `sig` over
/// `payload` by `signer` (its chain `chain`), with the Rekor `bundle` annotation if any.
fn push_keyless(
    fake: &FakeRegistry,
    (repo, digest): (&str, &str),
    (payload, sig): (&str, &[u8]),
    (signer, chain): (&Signer, &str),
    bundle: Option<String>,
) {
    let empty = fake.put_blob(repo, "{}");
    let d = fake.put_blob(repo, payload.to_owned());
    let mut annotations = serde_json::json!({
        "dev.cosignproject.cosign/signature": STANDARD.encode(sig),
        "dev.sigstore.cosign/certificate": signer.cert,
        "dev.sigstore.cosign/chain": chain,
    });
    if let Some(b) = bundle {
        annotations["dev.sigstore.cosign/bundle"] = b.into();
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": berth::oci::media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": d, "size": payload.len(), "annotations": annotations}],
    });
    let tag = format!("{}.sig", digest.replace(':', "-"));
    fake.put_tagged(
        repo,
        &tag,
        berth::oci::media::OCI_MANIFEST,
        manifest.to_string(),
    );
}

#[tokio::test]
async fn a_keyless_signed_image_is_served_and_each_broken_link_denied_with_its_reason() {
    let store = Sigstore::new();
    let chain = store.fulcio.pem();
    let fake = FakeRegistry::start().await;
    let repo = "team/app";
    // Signs image `tag` (seed `seed`) as `signer`, with an entry made by `entry`.
    let signed =
        |tag: &str, seed: u64, signer: &Signer, entry: &dyn Fn(&str, &[u8]) -> Option<String>| {
            let d = image(&fake, repo, tag, seed);
            let p = payload(repo, &d);
            let sig = sign(&signer.key, p.as_bytes());
            push_keyless(
                &fake,
                (repo, &d),
                (&p, &sig),
                (signer, &chain),
                entry(&p, &sig),
            );
            d
        };
    let ours = store.leaf(&store.fulcio, WORKFLOW, GITHUB);
    let at_noon =
        |s: &Signer, p: &str, sig: &[u8]| Some(store.entry(&store.rekor, s, p, sig, NOON));

    let good = signed("good", 1, &ours, &|p, sig| at_noon(&ours, p, sig));
    let theirs = store.leaf(
        &store.fulcio,
        "https://github.com/otherorg/app/.github/workflows/x.yml@refs/heads/main",
        GITHUB,
    );
    signed("other-identity", 2, &theirs, &|p, sig| {
        at_noon(&theirs, p, sig)
    });
    let google = store.leaf(&store.fulcio, WORKFLOW, "https://accounts.google.com");
    signed("other-issuer", 3, &google, &|p, sig| {
        at_noon(&google, p, sig)
    });
    let stranger_ca = ca(store.dir.path(), "not-fulcio");
    let stray = store.leaf(&stranger_ca, WORKFLOW, GITHUB);
    signed("other-ca", 4, &stray, &|p, sig| at_noon(&stray, p, sig));
    signed("no-entry", 5, &ours, &|_, _| None);
    let (forger, _) = key(store.dir.path(), "forger");
    signed("forged-set", 6, &ours, &|p, sig| {
        Some(store.entry(&forger, &ours, p, sig, NOON))
    });
    // A valid entry, but about the good image's signature, replayed beside another image's.
    let good_payload = payload(repo, &good);
    let good_sig_entry = store.entry(
        &store.rekor,
        &ours,
        &good_payload,
        &sign(&ours.key, good_payload.as_bytes()),
        NOON,
    );
    signed("replayed", 7, &ours, &|_, _| Some(good_sig_entry.clone()));
    // Integrated the day after the certificate expired.
    signed("late", 8, &ours, &|p, sig| {
        Some(store.entry(&store.rekor, &ours, p, sig, NOON + 86_400))
    });

    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(
            dir.path(),
            &fake,
            &store.policy("^https://github.com/myorg/"),
        ),
        dir,
    )
    .await;

    let got = b.get(&format!("/v2/{repo}/manifests/good")).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), good);
    let layer = b.get(&format!("/v2/{repo}/blobs/{}", layer_of(1))).await;
    assert_eq!(layer.status, StatusCode::OK);

    for (tag, why) in [
        (
            "other-identity",
            "#1: its certificate names \"https://github.com/otherorg/app/.github/workflows/x.yml@refs/heads/main\" from issuer \"https://token.actions.githubusercontent.com\", which matches no configured identity",
        ),
        (
            "other-issuer",
            "from issuer \"https://accounts.google.com\", which matches no configured identity",
        ),
        (
            "other-ca",
            "#1: its certificate does not chain to a Fulcio CA of the trusted root at 2026-01-01T12:00:00Z",
        ),
        (
            "no-entry",
            "#1: it carries no Rekor entry, so nothing shows it was signed while its certificate was valid (valid from 2026-01-01T00:00:00Z to 2026-01-02T00:00:00Z)",
        ),
        (
            "forged-set",
            "#1: its Rekor entry's signed entry timestamp does not verify under the log's key",
        ),
        ("replayed", "#1: its Rekor entry is about another artifact"),
        (
            "late",
            "#1: its Rekor entry was integrated at 2026-01-02T12:00:00Z, outside its certificate's validity",
        ),
    ] {
        let why_got = denied(&b.get(&format!("/v2/{repo}/manifests/{tag}")).await);
        assert!(
            why_got.contains(
                "verifies with the trusted root for the 1 configured identity; found 1 signature: "
            ),
            "{tag}: {why_got}"
        );
        assert!(why_got.contains(why), "{tag}: wanted {why:?} in {why_got}");
    }
    // The good image's manifest, then its layer.
    assert_eq!(
        b.counter("berth_policy_verdicts_total{policy=\"release\",verdict=\"verified\"}")
            .await,
        2
    );
}

/// Attaches `bundle` to `subject` in `repo` as an OCI 1.1 referrer.
fn attach(fake: &FakeRegistry, repo: &str, subject: &str, bundle: String) {
    attach_beside(fake, (repo, subject), bundle, None);
}

/// Attaches `bundle` to `subject` in `repo` as an OCI 1.1 referrer, with `payload` beside it (a
/// simple-signing layer) if any.
fn attach_beside(
    fake: &FakeRegistry,
    (repo, subject): (&str, &str),
    bundle: String,
    payload: Option<&str>,
) {
    const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    const OCI_MANIFEST: &str = berth::oci::media::OCI_MANIFEST;
    let size = bundle.len();
    let mut layers = vec![serde_json::json!({
        "mediaType": BUNDLE, "digest": fake.put_blob(repo, bundle), "size": size,
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
        })
        .to_string(),
    );
}

#[tokio::test]
async fn a_keyless_sigstore_bundle_attached_as_a_referrer_verifies_an_image() {
    let store = Sigstore::new();
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let repo = "team/app";
    let ours = store.leaf(&store.fulcio, WORKFLOW, GITHUB);
    let signed = image(&fake, repo, "bundled", 21);
    attach(&fake, repo, &signed, store.dsse_bundle(&ours, &signed));
    let misdirected = image(&fake, repo, "misdirected", 22);
    attach(&fake, repo, &misdirected, store.dsse_bundle(&ours, &signed));
    let theirs = store.leaf(
        &store.fulcio,
        "https://github.com/otherorg/app/.github/workflows/x.yml@refs/heads/main",
        GITHUB,
    );
    let foreign = image(&fake, repo, "foreign", 23);
    attach(&fake, repo, &foreign, store.dsse_bundle(&theirs, &foreign));
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(
            dir.path(),
            &fake,
            &store.policy("^https://github.com/myorg/"),
        ),
        dir,
    )
    .await;

    let got = b.get(&format!("/v2/{repo}/manifests/bundled")).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), signed);
    let why = denied(&b.get(&format!("/v2/{repo}/manifests/misdirected")).await);
    assert!(
        why.contains(&format!("its statement is about {signed}, not this digest")),
        "{why}"
    );
    let why = denied(&b.get(&format!("/v2/{repo}/manifests/foreign")).await);
    assert!(
        why.contains("which matches no configured identity"),
        "{why}"
    );
}

#[tokio::test]
async fn a_keyless_message_signature_bundle_verifies_over_the_payload_beside_it() {
    let store = Sigstore::new();
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let repo = "team/app";
    let ours = store.leaf(&store.fulcio, WORKFLOW, GITHUB);
    let theirs = store.leaf(
        &store.fulcio,
        "https://github.com/otherorg/app/.github/workflows/x.yml@refs/heads/main",
        GITHUB,
    );
    let signed = image(&fake, repo, "message", 24);
    let p = payload(repo, &signed);
    attach_beside(
        &fake,
        (repo, &signed),
        store.message_bundle(&ours, &p),
        Some(&p),
    );
    let foreign = image(&fake, repo, "foreign", 25);
    let p = payload(repo, &foreign);
    attach_beside(
        &fake,
        (repo, &foreign),
        store.message_bundle(&theirs, &p),
        Some(&p),
    );
    let elsewhere = image(&fake, repo, "elsewhere", 26);
    let p = payload(repo, &signed);
    attach_beside(
        &fake,
        (repo, &elsewhere),
        store.message_bundle(&ours, &p),
        Some(&p),
    );
    // The payload beside the bundle changed after signing.
    let swapped = image(&fake, repo, "swapped", 27);
    let p = payload(repo, &swapped);
    attach_beside(
        &fake,
        (repo, &swapped),
        store.message_bundle(&ours, &p),
        Some(&p.replace("team/app", "team/evil")),
    );
    let dir = tempfile::tempdir().unwrap();
    let b = start_toml(
        &config(
            dir.path(),
            &fake,
            &store.policy("^https://github.com/myorg/"),
        ),
        dir,
    )
    .await;

    let got = b.get(&format!("/v2/{repo}/manifests/message")).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), signed);
    for (tag, why) in [
        ("foreign", "which matches no configured identity".to_owned()),
        ("elsewhere", format!("it signs {signed}, not this digest")),
        (
            "swapped",
            "not the simple-signing payload beside it".to_owned(),
        ),
    ] {
        let why_got = denied(&b.get(&format!("/v2/{repo}/manifests/{tag}")).await);
        assert!(why_got.contains(&why), "{tag}: wanted {why:?} in {why_got}");
    }
}

/// A keyless signed image `tag` (seed `seed`) in team/app, by `signer`, with a good log entry.
fn keyless_image(
    store: &Sigstore,
    fake: &FakeRegistry,
    tag: &str,
    seed: u64,
    signer: &Signer,
) -> String {
    let repo = "team/app";
    let d = image(fake, repo, tag, seed);
    let p = payload(repo, &d);
    let sig = sign(&signer.key, p.as_bytes());
    let entry = store.entry(&store.rekor, signer, &p, &sig, NOON);
    push_keyless(
        fake,
        (repo, &d),
        (&p, &sig),
        (signer, &store.fulcio.pem()),
        Some(entry),
    );
    d
}

#[tokio::test]
async fn a_reload_of_the_identities_decides_again_and_a_verified_image_pulls_offline() {
    let store = Sigstore::new();
    let fake = FakeRegistry::start().await;
    let ours = store.leaf(&store.fulcio, WORKFLOW, GITHUB);
    let signed = keyless_image(&store, &fake, "1", 31, &ours);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let cfg = config(&path, &fake, &store.policy("^https://github.com/myorg/"));
    let (b, reloader) = start_reloadable(&cfg, dir).await;
    assert_eq!(
        b.get("/v2/team/app/manifests/1").await.status,
        StatusCode::OK
    );

    let other = config(&path, &fake, &store.policy("^https://github.com/otherorg/"));
    let changes = reloader
        .apply(berth::config::Config::parse(&other, "t").unwrap())
        .unwrap();
    assert!(changes.policies);
    let why = denied(&b.get("/v2/team/app/manifests/1").await);
    assert!(
        why.contains("which matches no configured identity"),
        "{why}"
    );
    reloader
        .apply(berth::config::Config::parse(&cfg, "t").unwrap())
        .unwrap();
    assert_eq!(
        b.get("/v2/team/app/manifests/1").await.status,
        StatusCode::OK
    );
    let layer = format!("/v2/team/app/blobs/{}", layer_of(31));
    assert_eq!(b.get(&layer).await.status, StatusCode::OK);

    // The upstream gone and berth restarted: verified again from the cached material, offline.
    // A verified blob is renamed into place just after its last byte goes out.
    b.settled().await;
    let dir = b.stop().await;
    drop(fake);
    let b = start_toml(&cfg, dir).await;
    let got = b.get("/v2/team/app/manifests/1").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(digest_of(got.bytes()), signed);
    assert_eq!(b.get(&layer).await.status, StatusCode::OK);
}
