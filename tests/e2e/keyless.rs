//! Keyless signatures (`trusted_root` + `identities`) end to end, in each form: cosign tag-scheme
//! signatures with the keyless annotations (certificate, chain, Rekor bundle), and Sigstore v0.3
//! bundles attached as referrers (a DSSE envelope over an in-toto statement with a `dsse` Rekor
//! entry; a message signature over a simple-signing payload, carried beside it, with a
//! `hashedrekord` one), pushed to the real Distribution registry and pulled through a real `berth
//! serve` by skopeo, containerd's ctr and podman.
//!
//! The trusted root is the test's own, offline (tests/support/sigstore.rs, shared with the
//! integration tests): a Fulcio-like CA and leaves built with rcgen over keys openssl made, a
//! Rekor-like log key whose signed entry timestamps openssl computes. Every leaf is valid for one
//! day, 2026-01-01, so has expired when the test runs: only a Rekor entry integrated that day makes
//! a signature good. Images are in `quay.io`'s registry under `keyless/`, the policy's scope, and
//! pushed as in tests/e2e/policy.rs (a bundle listed in the referrers tag schema's index:
//! Distribution 2.8 has no referrers API); clients go to berth only.

use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::e2e_support::harness::{BerthExtra, Env, Via, start_containerd};
use crate::e2e_support::seed::{OCI_MANIFEST, Platform};
use crate::e2e_support::{http, proc};
use crate::policy::{
    ACCEPT, LIMIT, UPSTREAM, assert_denial, check_copy, push_bundle, push_image,
    push_message_bundle, push_signature_layer, wait_logged,
};
use crate::referrers::{Pusher, digest_of, fallback_tag};
use crate::sigstore::{GITHUB, NOON, Signer, Sigstore, WORKFLOW, sign};

const OTHER: &str = "https://github.com/otherorg/app/.github/workflows/x.yml@refs/heads/main";
/// What every keyless denial here says before its reason.
const COMMON: &str =
    "verifies with the trusted root for the 1 configured identity; found 1 signature: ";

/// The `[[policy]]`: `keyless/*` on quay.io, `store`'s trusted root, GitHub workflows of myorg.
fn policy_table(store: &Sigstore) -> String {
    format!(
        "\n[[policy]]\nname = \"release\"\nupstreams = [\"{UPSTREAM}\"]\n\
         repositories = [\"keyless/*\"]\nmode = \"enforce\"\ntrusted_root = {:?}\n\
         identities = [{{ issuer = \"{GITHUB}\", subject_regex = \"^https://github.com/myorg/\" }}]\n",
        store.root.display().to_string()
    )
}

/// Pushes image `repo:1` (from `seed`) and its keyless cosign signature by `signer`, with a Rekor
/// entry integrated at noon on the leaves' day if `logged`.
fn push_signed(
    env: &Env,
    store: &Sigstore,
    (repo, seed): (&str, u64),
    signer: &Signer,
    logged: bool,
) -> Platform {
    let platform = push_image(env, repo, seed);
    let digest = &platform.manifest.digest;
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{UPSTREAM}/{repo}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    );
    let sig = sign(&signer.key, payload.as_bytes());
    let mut annotations = json!({
        "dev.cosignproject.cosign/signature": STANDARD.encode(&sig),
        "dev.sigstore.cosign/certificate": signer.cert,
        "dev.sigstore.cosign/chain": store.fulcio.pem(),
    });
    if logged {
        annotations["dev.sigstore.cosign/bundle"] = store
            .entry(&store.rekor, signer, &payload, &sig, NOON)
            .into();
    }
    let p = Pusher {
        addr: env.registry_addr(UPSTREAM),
        repo,
    };
    push_signature_layer(&p, digest, &payload, annotations);
    platform
}

/// Pushes image `repo:1` (from `seed`) and, as its referrer, a keyless DSSE bundle by `signer`
/// whose statement is about `about` (its own digest if `None`); the image and the referrer's
/// digest.
fn push_bundled(
    env: &Env,
    store: &Sigstore,
    (repo, seed): (&str, u64),
    signer: &Signer,
    about: Option<&str>,
) -> (Platform, String) {
    let platform = push_image(env, repo, seed);
    let digest = platform.manifest.digest.clone();
    let bundle: Value =
        serde_json::from_str(&store.dsse_bundle(signer, about.unwrap_or(&digest))).unwrap();
    let p = Pusher {
        addr: env.registry_addr(UPSTREAM),
        repo,
    };
    let subject =
        json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": platform.manifest.size});
    let listed = push_bundle(&p, &subject, &bundle);
    p.fallback_index(&digest, std::slice::from_ref(&listed));
    (platform, listed["digest"].as_str().unwrap().to_owned())
}

/// Pushes image `repo:1` (from `seed`) and, as its referrer, a keyless message-signature bundle
/// by `signer` over the image's simple-signing payload, carried beside it.
fn push_messaged(
    env: &Env,
    store: &Sigstore,
    (repo, seed): (&str, u64),
    signer: &Signer,
) -> Platform {
    let platform = push_image(env, repo, seed);
    let digest = platform.manifest.digest.clone();
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{UPSTREAM}/{repo}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    );
    let bundle: Value = serde_json::from_str(&store.message_bundle(signer, &payload)).unwrap();
    let p = Pusher {
        addr: env.registry_addr(UPSTREAM),
        repo,
    };
    let subject =
        json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": platform.manifest.size});
    let listed = push_message_bundle(&p, &subject, &bundle, &payload);
    p.fallback_index(&digest, std::slice::from_ref(&listed));
    platform
}

/// One image of these tests.
struct Img {
    repo: &'static str,
    platform: Platform,
    /// Why berth denies it (after [`COMMON`]); `None`: it is served.
    why: Option<String>,
    /// A part of `why` that berth's log line must hold (no quotes: the log escapes them).
    logged: &'static str,
}

impl Img {
    fn digest(&self) -> &str {
        &self.platform.manifest.digest
    }

    fn reference(&self) -> String {
        format!("{UPSTREAM}/{}:1", self.repo)
    }
}

/// berth with the keyless policy in front of the registries, and the images: `a` (tag scheme) and
/// `d` (DSSE bundle) signed by the right identity and logged; `b` and `e` (each form) by another
/// identity; `c` (tag scheme) whose expired certificate has no log entry; `f` a good bundle, but
/// about `a`'s digest; `g` a message-signature bundle by the right identity, logged.
fn world(store: &Sigstore) -> (Env, Vec<Img>) {
    let env = Env::start_with(Via::Berth, |_| BerthExtra {
        tables: policy_table(store),
        upstream: Vec::new(),
    });
    // The premise of `c`: every leaf expired on 2026-01-02T00:00:00Z.
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs((NOON + 12 * 3600) as u64);
    assert!(
        SystemTime::now() > expiry,
        "the test's leaves have not expired yet"
    );
    let ours = store.leaf(&store.fulcio, WORKFLOW, GITHUB);
    let theirs = store.leaf(&store.fulcio, OTHER, GITHUB);
    let identity = format!(
        "its certificate names \"{OTHER}\" from issuer \"{GITHUB}\", which matches no configured identity"
    );
    let a = push_signed(&env, store, ("keyless/a", 3001), &ours, true);
    let a_digest = a.manifest.digest.clone();
    let b = push_signed(&env, store, ("keyless/b", 3002), &theirs, true);
    let c = push_signed(&env, store, ("keyless/c", 3003), &ours, false);
    let (d, _) = push_bundled(&env, store, ("keyless/d", 3004), &ours, None);
    let (e, e_ref) = push_bundled(&env, store, ("keyless/e", 3005), &theirs, None);
    let (f, f_ref) = push_bundled(&env, store, ("keyless/f", 3006), &ours, Some(&a_digest));
    let g = push_messaged(&env, store, ("keyless/g", 3007), &ours);
    let img = |repo, platform, why: Option<String>, logged| Img {
        repo,
        platform,
        why,
        logged,
    };
    let images = vec![
        img("keyless/a", a, None, ""),
        img(
            "keyless/b",
            b,
            Some(format!("#1: {identity}")),
            "#1: its certificate names",
        ),
        img(
            "keyless/c",
            c,
            Some(
                "#1: it carries no Rekor entry, so nothing shows it was signed while its \
                 certificate was valid (valid from 2026-01-01T00:00:00Z to 2026-01-02T00:00:00Z)"
                    .to_owned(),
            ),
            "it carries no Rekor entry",
        ),
        img("keyless/d", d, None, ""),
        img(
            "keyless/e",
            e,
            Some(format!("bundle {e_ref}: {identity}")),
            "which matches no configured identity",
        ),
        img(
            "keyless/f",
            f,
            Some(format!(
                "bundle {f_ref}: its statement is about {a_digest}, not this digest"
            )),
            "not this digest",
        ),
        img("keyless/g", g, None, ""),
    ];
    (env, images)
}

/// skopeo copies `repo:1` through berth into a fresh `dir:` named after `name`.
fn skopeo(env: &Env, repo: &str, name: &str) -> Result<std::path::PathBuf, String> {
    let out = env.dir().join(format!("skopeo-keyless-{name}"));
    let mut cmd = Command::new("skopeo");
    env.client_env(&mut cmd);
    cmd.arg("--policy")
        .arg(&env.policy)
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{UPSTREAM}/{repo}:1", env.berth_addr()))
        .arg(format!("dir:{}", out.display()));
    proc::try_run(&mut cmd, LIMIT)?;
    Ok(out)
}

fn verdicts(env: &Env, v: &str) -> u64 {
    env.metric_sum(&format!(
        "berth_policy_verdicts_total{{policy=\"release\",verdict=\"{v}\"}}"
    ))
}

/// The client's error for a denied pull names berth's refusal.
#[track_caller]
fn assert_refused(client: &str, img: &Img, e: &str) {
    eprintln!("{client} pulling {} (denied):\n{e}", img.repo);
    let lower = e.to_lowercase();
    assert!(
        lower.contains("denied") || lower.contains("403"),
        "{client} {}: {e}",
        img.repo
    );
}

/// With a keyless policy, through berth to the real registry: the images signed by the right
/// identity and logged, in the tag scheme and as DSSE and message-signature bundle referrers, copy byte for byte with
/// skopeo; each other image fails to copy, and a plain GET of each (by tag and by digest) is `403
/// DENIED` with its reason.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn keyless_policy_skopeo_and_http_through_berth() {
    let store = Sigstore::new();
    let (env, images) = world(&store);
    for img in &images {
        let name = img.repo.trim_start_matches("keyless/");
        let Some(why) = &img.why else {
            let out = skopeo(&env, img.repo, name).unwrap_or_else(|e| panic!("{e}"));
            check_copy(&out, img.repo, &img.platform);
            for reference in ["1", img.digest()] {
                let path = format!("/v2/{UPSTREAM}/{}/manifests/{reference}", img.repo);
                let r = http::get(env.berth_addr(), &path, Some(ACCEPT)).unwrap();
                let text = String::from_utf8_lossy(&r.body);
                assert_eq!(r.status, 200, "{path}: {text}");
                assert_eq!(digest_of(&r.body), img.digest(), "{path}");
            }
            continue;
        };
        let e = skopeo(&env, img.repo, name).expect_err("berth must refuse the copy");
        assert_refused("skopeo", img, &e);
        for reference in ["1", img.digest()] {
            let path = format!("/v2/{UPSTREAM}/{}/manifests/{reference}", img.repo);
            let r = http::get(env.berth_addr(), &path, Some(ACCEPT)).unwrap();
            let detail = assert_denial(&r, &path);
            for want in ["policy \"release\"", img.digest(), COMMON, why] {
                assert!(detail.contains(want), "{path}: want {want:?} in {detail:?}");
            }
        }
    }
    // The signatures themselves are served: the policy read them through berth.
    let a = &images[0];
    let sig = format!(
        "/v2/{UPSTREAM}/{}/manifests/{}.sig",
        a.repo,
        fallback_tag(a.digest())
    );
    let r = http::get(env.berth_addr(), &sig, Some(ACCEPT)).unwrap();
    assert_eq!(r.status, 200, "{sig}");
    let d = &images[3];
    let list = format!(
        "/v2/{UPSTREAM}/{}/referrers/{}",
        d.repo, d.platform.manifest.digest
    );
    let r = http::get(env.berth_addr(), &list, None).unwrap();
    assert_eq!(r.status, 200, "{list}");

    assert!(
        verdicts(&env, "verified") >= 3,
        "{}",
        verdicts(&env, "verified")
    );
    // skopeo's attempt and the two GETs, for each denied image.
    assert!(
        verdicts(&env, "denied") >= 4 * 3,
        "{}",
        verdicts(&env, "denied")
    );
}

/// containerd's ctr and podman pull through berth with the keyless policy: the images signed by
/// the right identity (tag scheme, DSSE and message-signature bundles) pull and are stored with their digests; the others
/// fail to pull. ctr prints only `403 Forbidden`: the reason is read from berth's WARN line;
/// podman prints the error's message, which carries the reason.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh and root; run by tests/run.sh"]
fn keyless_policy_containerd_and_podman_through_berth() {
    let store = Sigstore::new();
    let (env, images) = world(&store);
    let (daemon, ctr) = start_containerd(&env);
    let hosts = crate::ctr_hosts_dir(&env, "hosts", "");
    for img in &images {
        let reference = img.reference();
        match (crate::ctr_pull(&ctr, &hosts, &[], &reference), &img.why) {
            (Ok(_), None) => {
                let list = proc::run(&mut ctr(&["images", "ls"]), LIMIT);
                let line = list.lines().find(|l| l.starts_with(&reference));
                assert!(
                    line.is_some_and(|l| l.contains(img.digest())),
                    "{reference}: {list}"
                );
            }
            (Ok(out), Some(_)) => panic!("ctr pulled {reference}, which the policy denies: {out}"),
            (Err(e), None) => panic!("{e}"),
            (Err(e), Some(_)) => {
                assert_refused("ctr", img, &e);
                wait_logged(
                    &env,
                    &["denied by the signature policy", img.digest(), img.logged],
                );
            }
        }
    }
    drop(daemon);

    let podman = crate::podman_client(&env, None);
    let policy = env.policy.display().to_string();
    // podman 4.3 retries a failed pull three times, a second apart: two refusals (one per reason
    // that fits in the message's 300 characters) are enough here, ctr and skopeo see all of them.
    for img in images.iter().filter(|i| {
        [
            "keyless/a",
            "keyless/b",
            "keyless/c",
            "keyless/d",
            "keyless/g",
        ]
        .contains(&i.repo)
    }) {
        let reference = img.reference();
        let pulled = proc::try_run(
            &mut podman(&["pull", "-q", "--signature-policy", &policy, &reference]),
            LIMIT,
        );
        match (pulled, &img.why) {
            (Ok(_), None) => {
                let digest = proc::run(
                    &mut podman(&["image", "inspect", "--format", "{{.Digest}}", &reference]),
                    LIMIT,
                );
                assert_eq!(digest.trim(), img.digest(), "{reference}");
            }
            (Ok(out), Some(_)) => {
                panic!("podman pulled {reference}, which the policy denies: {out}")
            }
            (Err(e), None) => panic!("{e}"),
            (Err(e), Some(_)) => {
                assert_refused("podman", img, &e);
                assert!(
                    e.contains("denied by the signature policy") && e.contains(img.logged),
                    "podman {reference}: the reason ({}) is not in {e}",
                    img.logged
                );
            }
        }
    }
    assert!(verdicts(&env, "verified") >= 3);
    assert!(verdicts(&env, "denied") >= 4);
}
