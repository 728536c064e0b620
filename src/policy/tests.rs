use ring::rand::SystemRandom;

use super::cosign::SignatureLayer;
use super::*;
use crate::config::PublicKeyConfig;

fn policy(keys: Vec<PublicKeyConfig>, upstreams: &[&str], repos: Option<&[&str]>) -> Policy {
    Policy::new(&PolicyConfig {
        name: "release".into(),
        upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
        repositories: repos.map(|r| r.iter().map(|s| s.to_string()).collect()),
        mode: PolicyMode::Enforce,
        keys: keys.iter().map(|k| k.file.clone()).collect(),
        trusted_root: None,
        identities: Vec::new(),
        public_keys: keys,
        root: None,
    })
}

fn payload(digest: &Digest) -> Bytes {
    Bytes::from(format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"r"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    ))
}

fn tag_scheme(found: Vec<Found>) -> Material {
    Material {
        signatures: Some(found),
        bundles: Vec::new(),
    }
}

fn found(payload: Bytes, signature: Option<Vec<u8>>) -> Found {
    Found {
        layer: SignatureLayer {
            payload: Digest::of(&payload),
            size: payload.len() as u64,
            signature,
            keyless: None,
        },
        payload: Ok(payload),
    }
}

#[test]
fn globs() {
    for (p, n, want) in [
        ("myorg/*", "myorg/app", true),
        ("myorg/*", "myorg/team/app", true),
        ("myorg/*", "other/app", false),
        ("*", "anything/at/all", true),
        ("library/nginx", "library/nginx", true),
        ("library/nginx", "library/nginx2", false),
        ("*/app", "a/b/app", true),
        ("a*b*c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("", "", true),
        ("a", "", false),
    ] {
        assert_eq!(glob(p, n), want, "{p} {n}");
    }
}

#[test]
fn the_first_policy_whose_scope_matches_applies() {
    let (_, k) = keys::tests::p256();
    let mk = |name: &str, ups: &[&str], repos: Option<&[&str]>| PolicyConfig {
        name: name.into(),
        ..policy_cfg(k.clone(), ups, repos)
    };
    let set = Policies::new(&[
        mk("team", &["docker.io"], Some(&["myorg/*"])),
        mk("all", &["*"], None),
    ]);
    let repo = |r: &str| r.parse::<RepoName>().unwrap();
    assert_eq!(
        set.scope("docker.io", &repo("myorg/app")).unwrap().name,
        "team"
    );
    assert_eq!(
        set.scope("DOCKER.IO", &repo("myorg/app")).unwrap().name,
        "team"
    );
    assert_eq!(
        set.scope("ghcr.io", &repo("myorg/app")).unwrap().name,
        "all"
    );
    assert_eq!(
        set.scope("docker.io", &repo("library/nginx")).unwrap().name,
        "all"
    );
    let only = Policies::new(&[mk("team", &["docker.io"], Some(&["myorg/*"]))]);
    assert!(only.scope("docker.io", &repo("library/nginx")).is_none());
    assert!(only.scope("quay.io", &repo("myorg/app")).is_none());
    assert!(Policies::new(&[]).is_empty());
}

fn policy_cfg(k: PublicKeyConfig, ups: &[&str], repos: Option<&[&str]>) -> PolicyConfig {
    PolicyConfig {
        name: "release".into(),
        upstreams: ups.iter().map(|s| s.to_string()).collect(),
        repositories: repos.map(|r| r.iter().map(|s| s.to_string()).collect()),
        mode: PolicyMode::Enforce,
        keys: vec![k.file.clone()],
        trusted_root: None,
        identities: Vec::new(),
        public_keys: vec![k],
        root: None,
    }
}

#[test]
fn a_revision_changes_with_anything_that_decides() {
    let (_, k) = keys::tests::p256();
    let (_, k2) = keys::tests::p256();
    let base = policy_cfg(k.clone(), &["*"], None);
    let rev = |c: &PolicyConfig| Policy::new(c).revision;
    assert_eq!(rev(&base), rev(&base.clone()));
    assert_ne!(
        rev(&base),
        rev(&PolicyConfig {
            mode: PolicyMode::Warn,
            ..base.clone()
        })
    );
    assert_ne!(rev(&base), rev(&policy_cfg(k2, &["*"], None)));
    assert_ne!(
        rev(&base),
        rev(&policy_cfg(k.clone(), &["docker.io"], None))
    );
    assert_ne!(rev(&base), rev(&policy_cfg(k, &["*"], Some(&["a/*"]))));
}

#[test]
fn artifacts_are_not_runnable_images_are() {
    let m = |config: &str, layer: &str| {
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{config}"}},"layers":[{{"mediaType":"{layer}"}}]}}"#
        )
    };
    let image = "application/vnd.oci.image.config.v1+json";
    let tar = "application/vnd.oci.image.layer.v1.tar+gzip";
    assert!(is_runnable(media::OCI_MANIFEST, m(image, tar).as_bytes()));
    assert!(is_runnable(
        media::DOCKER_MANIFEST,
        m(
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        )
        .as_bytes()
    ));
    assert!(is_runnable(media::OCI_MANIFEST, b"garbage"));
    // Artifacts: the empty config; cosign's .sig (an image config, simple-signing layers).
    assert!(!is_runnable(
        media::OCI_MANIFEST,
        m("application/vnd.oci.empty.v1+json", tar).as_bytes()
    ));
    assert!(!is_runnable(
        media::OCI_MANIFEST,
        m(image, "application/vnd.dev.cosign.simplesigning.v1+json").as_bytes()
    ));
    // Layers of a type no runtime should unpack are still a filesystem to a policy (Docker
    // unpacks what it does not know); so is an image with no layers.
    assert!(is_runnable(
        media::OCI_MANIFEST,
        m(image, "application/x-anything").as_bytes()
    ));
    assert!(is_runnable(
        media::OCI_MANIFEST,
        m(image, "application/octet-stream").as_bytes()
    ));
    assert!(is_runnable(
        media::OCI_MANIFEST,
        br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[]}"#
    ));
    assert!(!is_runnable(
        media::OCI_MANIFEST,
        m(image, "text/spdx").as_bytes()
    ));
    assert!(!is_runnable(
        media::OCI_MANIFEST,
        m(image, "application/vnd.dsse.envelope.v1+json").as_bytes()
    ));
    assert!(is_runnable(media::OCI_INDEX, b"{}"));
    assert!(is_runnable(media::DOCKER_MANIFEST_LIST, b"{}"));
    assert!(!is_runnable(
        "application/vnd.oci.artifact.manifest.v1+json",
        b"{}"
    ));
}

#[test]
fn a_signature_verifies_only_over_a_payload_naming_the_digest() {
    let rng = SystemRandom::new();
    let (signer, k) = keys::tests::p256();
    let (other_signer, _) = keys::tests::p256();
    let p = policy(vec![k], &["*"], None);
    let d = Digest::of(b"image");
    let sign =
        |s: &ring::signature::EcdsaKeyPair, b: &[u8]| s.sign(&rng, b).unwrap().as_ref().to_vec();

    let good = payload(&d);
    assert!(matches!(
        decide(&p, &d, &tag_scheme(vec![found(good.clone(), Some(sign(&signer, &good)))])),
        Verdict::Verified { key } if key == "test-p256.pub"
    ));
    // Any one good signature among bad ones suffices.
    let other = payload(&Digest::of(b"other"));
    let mixed = [
        found(other.clone(), Some(sign(&signer, &other))),
        found(good.clone(), Some(sign(&signer, &good))),
    ];
    assert!(matches!(
        decide(&p, &d, &tag_scheme(mixed.to_vec())),
        Verdict::Verified { .. }
    ));

    let denied = |f: Option<&[Found]>| match decide(
        &p,
        &d,
        &Material {
            signatures: f.map(<[Found]>::to_vec),
            bundles: Vec::new(),
        },
    ) {
        Verdict::Denied { reason } => reason,
        v => panic!("{v:?}"),
    };
    let r = denied(None);
    assert!(r.contains("is not signed") && r.contains(".sig"), "{r}");
    assert!(denied(Some(&[])).contains("is not signed"));
    // Signed by another key; over another digest; a tampered payload; no signature; unreadable.
    let tampered = String::from_utf8(good.to_vec())
        .unwrap()
        .replace(r#""docker-reference":"r""#, r#""docker-reference":"x""#);
    let r = denied(Some(&[
        found(good.clone(), Some(sign(&other_signer, &good))),
        found(other.clone(), Some(sign(&signer, &other))),
        found(Bytes::from(tampered), Some(sign(&signer, &good))),
        found(good.clone(), None),
        Found {
            layer: found(good.clone(), None).layer,
            payload: Err("its payload could not be read: gone".into()),
        },
    ]));
    assert!(r.starts_with(&format!("policy \"release\": no signature of {d} verifies with the 1 configured key; found 5 signatures: ")), "{r}");
    assert!(
        r.contains("#1: does not verify with the 1 configured key"),
        "{r}"
    );
    assert!(r.contains("#2: it signs sha256:"), "{r}");
    assert!(r.contains("#3: does not verify"), "{r}");
    assert!(r.contains("#4: has no signature annotation"), "{r}");
    assert!(r.contains("#5: its payload could not be read"), "{r}");
}

#[test]
fn verdicts_are_kept_per_revision() {
    let (_, k) = keys::tests::p256();
    let a = policy(vec![k.clone()], &["*"], None);
    let b = policy(vec![k], &["docker.io"], None);
    let v = Verdicts::default();
    let d = Digest::of(b"x");
    v.set_verified(&a, &d, "k".into());
    assert_eq!(v.verified(&a, &d).as_deref(), Some("k"));
    assert_eq!(v.verified(&b, &d), None);
    v.allow_children(&a, [d.clone()]);
    assert!(v.is_child(&a, &d));
    assert!(!v.is_child(&b, &d));
    assert!(!v.is_named_blob(&a, &d), "a child is no blob");
    v.allow_blobs(&a, [d.clone()]);
    assert!(v.is_named_blob(&a, &d));
    assert!(!v.is_named_blob(&b, &d));
}

#[test]
fn what_a_manifest_names_is_split_into_children_and_blobs() {
    let d = |n: u8| Digest::of(&[n]);
    let m = format!(
        r#"{{"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"bad"}}],"manifests":[{{"digest":"{}"}}],"blobs":[{{"digest":"{}"}}],"subject":{{"digest":"{}"}}}}"#,
        d(1),
        d(2),
        d(3),
        d(4),
        d(5)
    );
    let (children, blobs) = named(m.as_bytes());
    assert_eq!(children, vec![d(3)]);
    assert_eq!(blobs, vec![d(1), d(2), d(4)]);
    assert_eq!(named(b"nope"), (vec![], vec![]));
}

#[test]
fn a_referrers_list_is_material_another_index_is_not() {
    let list = r#"{"manifests":[{"digest":"x","artifactType":"a/b"},{"digest":"y","artifactType":"c/d"}]}"#;
    assert!(!is_runnable(media::OCI_INDEX, list.as_bytes()));
    let mixed = r#"{"manifests":[{"digest":"x","artifactType":"a/b"},{"digest":"y"}]}"#;
    assert!(is_runnable(media::OCI_INDEX, mixed.as_bytes()));
    assert!(is_runnable(media::OCI_INDEX, br#"{"manifests":[]}"#));
}

fn keyless_policy(world: &keyless::tests::World, keys: Vec<PublicKeyConfig>) -> PolicyConfig {
    PolicyConfig {
        keys: keys.iter().map(|k| k.file.clone()).collect(),
        public_keys: keys,
        trusted_root: Some(world.root.file.clone()),
        identities: vec![crate::config::IdentityConfig {
            issuer: Some(keyless::tests::ISSUER.into()),
            subject_regex: Some("^https://github.com/myorg/".into()),
            ..Default::default()
        }],
        root: Some(world.root.clone()),
        ..policy_cfg(keys::tests::p256().1, &["*"], None)
    }
}

#[test]
fn keyless_signatures_decide_under_the_trusted_root_and_identities() {
    use keyless::tests::{LeafSpec, World, pem, signed_entry};
    let world = World::new();
    let d = Digest::of(b"image");
    let good = payload(&d);
    let (leaf, signer) = World::leaf(&world.ca, LeafSpec::default());
    let sig = World::sign(&signer, &good);
    let entry = World::entry(
        &world.log,
        &world.log_spki,
        &leaf,
        &good,
        &sig,
        keyless::tests::DAY + 60,
    );
    let annotation = format!(
        r#"{{"SignedEntryTimestamp":"{}","Payload":{{"body":"{}","integratedTime":{},"logIndex":{},"logID":"{}"}}}}"#,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &entry.set),
        entry.body,
        entry.integrated_time,
        entry.log_index,
        hex::encode(&entry.log_id)
    );
    let keyless_layer = |bundle: Option<String>| {
        let mut f = found(good.clone(), Some(sig.clone()));
        f.layer.keyless = Some(cosign::KeylessAnnotations {
            certificate: pem(&leaf),
            chain: None,
            bundle,
        });
        f
    };
    let only = Policy::new(&PolicyConfig {
        keys: Vec::new(),
        public_keys: Vec::new(),
        ..keyless_policy(&world, Vec::new())
    });
    assert!(matches!(
        decide(&only, &d, &tag_scheme(vec![keyless_layer(Some(annotation.clone()))])),
        Verdict::Verified { key } if key.starts_with("a certificate for https://github.com/myorg/app/")
    ));
    let denied = |p: &Policy, f: Vec<Found>| match decide(p, &d, &tag_scheme(f)) {
        Verdict::Denied { reason } => reason,
        v => panic!("{v:?}"),
    };
    // A keyless policy, a signature by a key; a keyless signature with no entry.
    let r = denied(
        &only,
        vec![found(good.clone(), Some(sig.clone())), keyless_layer(None)],
    );
    assert!(
        r.contains(&format!("no signature of {d} verifies with the trusted root for the 1 configured identity; found 2 signatures")),
        "{r}"
    );
    assert!(
        r.contains("#1: signed with a key, and this policy has no keys"),
        "{r}"
    );
    assert!(r.contains("#2: it carries no Rekor entry"), "{r}");
    // An entry about another signature, replayed.
    let other = signed_entry(
        &world.log,
        &world.log_spki,
        entry.body.replace('A', "B"),
        entry.integrated_time,
    );
    let replayed = annotation.replace(&entry.body, &other.body).replace(
        &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &entry.set),
        &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &other.set),
    );
    let r = denied(&only, vec![keyless_layer(Some(replayed))]);
    assert!(r.contains("#1: its Rekor entry"), "{r}");

    // A key-only policy and a keyless signature.
    let (_, k) = keys::tests::p256();
    let keyed = policy(vec![k.clone()], &["*"], None);
    let r = denied(&keyed, vec![keyless_layer(Some(annotation.clone()))]);
    assert!(
        r.contains("#1: keyless (a certificate), and this policy has no trusted_root"),
        "{r}"
    );
    // Both: either suffices, and the denial names both.
    let both = Policy::new(&keyless_policy(&world, vec![k]));
    assert!(matches!(
        decide(
            &both,
            &d,
            &tag_scheme(vec![keyless_layer(Some(annotation))])
        ),
        Verdict::Verified { .. }
    ));
    let r = denied(&both, vec![found(good.clone(), None)]);
    assert!(
        r.contains(
            "verifies with the 1 configured key or the trusted root for the 1 configured identity"
        ),
        "{r}"
    );

    // The revision follows the identities and the root.
    let base = keyless_policy(&world, Vec::new());
    let mut other_id = base.clone();
    other_id.identities[0].subject_regex = Some("^https://github.com/other/".into());
    assert_ne!(Policy::new(&base).revision, Policy::new(&other_id).revision);
    let mut other_root = base.clone();
    other_root.root = Some(World::new().root);
    assert_ne!(
        Policy::new(&base).revision,
        Policy::new(&other_root).revision
    );
}

fn sign_p256(signer: &ring::signature::EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
    signer
        .sign(&SystemRandom::new(), message)
        .unwrap()
        .as_ref()
        .to_vec()
}

#[test]
fn a_message_signature_bundle_decides_with_the_payload_beside_it() {
    use bundle::tests::{message_bundle, simple_signing};
    let (signer, k) = keys::tests::p256();
    let p = policy(vec![k], &["*"], None);
    let d = Digest::of(b"image");
    let payload = Bytes::from(simple_signing(&d));
    let referrer = Digest::of(b"referrer");
    let found = |payload: Option<Result<Bytes, String>>| BundleFound {
        referrer: referrer.clone(),
        bundle: Ok(Bytes::from(message_bundle(
            &payload.clone().and_then(Result::ok).unwrap_or_default(),
            &sign_p256(&signer, &simple_signing(&d).into_bytes()),
        ))),
        payload,
    };
    let material = |b: BundleFound| Material {
        signatures: None,
        bundles: vec![b],
    };
    assert!(matches!(
        decide(&p, &d, &material(found(Some(Ok(payload.clone()))))),
        Verdict::Verified { key } if key == "test-p256.pub"
    ));
    let Verdict::Denied { reason } = decide(&p, &d, &material(found(None))) else {
        panic!("a message signature with no payload beside it verified");
    };
    assert!(
        reason.ends_with(&format!(
            "found 1 signature: bundle {referrer}: it is a message signature, and its referrer carries no simple-signing payload ({}) for it to be over",
            cosign::SIMPLE_SIGNING
        )),
        "{reason}"
    );
}

/// A denial counts every signature found, in both forms (tag scheme and bundles), and lists each.
#[test]
fn a_denial_counts_the_signatures_of_both_forms() {
    let (signer, _) = keys::tests::p256();
    let (_, k) = keys::tests::p256();
    let p = policy(vec![k], &["*"], None);
    let d = Digest::of(b"image");
    let good = payload(&d);
    let sig = sign_p256(&signer, &good);
    let bundle = |n: &[u8]| BundleFound {
        referrer: Digest::of(n),
        bundle: Err("its manifest could not be read: gone".into()),
        payload: None,
    };
    let material = Material {
        signatures: Some(vec![
            found(good.clone(), Some(sig.clone())),
            found(good.clone(), Some(sig.clone())),
            found(good.clone(), Some(sig)),
        ]),
        bundles: vec![bundle(b"1"), bundle(b"2")],
    };
    let Verdict::Denied { reason } = decide(&p, &d, &material) else {
        panic!("signed by a key the policy does not have, and verified");
    };
    assert!(
        reason.contains(&format!(
            "no signature of {d} verifies with the 1 configured key; found 5 signatures: #1: "
        )),
        "{reason}"
    );
    assert!(reason.contains("#3: does not verify"), "{reason}");
    for n in [b"1", b"2"] {
        assert!(
            reason.contains(&format!(
                "bundle {}: its manifest could not be read: gone",
                Digest::of(n)
            )),
            "{reason}"
        );
    }
}
