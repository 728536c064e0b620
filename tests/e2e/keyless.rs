//! Keyless signatures (`trusted_root` + `identities`) end to end: cosign tag-scheme signatures with
//! the keyless annotations (certificate, chain, Rekor bundle) pushed to the real Distribution
//! registry, pulled through a real `berth serve` by skopeo.
//!
//! The trusted root is the test's own, offline (tests/support/sigstore.rs, shared with the
//! integration tests): a Fulcio-like CA and leaves built with rcgen over keys openssl made, a
//! Rekor-like log key whose signed entry timestamps openssl computes. Every leaf is valid for one
//! day, 2026-01-01, so has expired when the test runs: only a Rekor entry integrated that day makes
//! a signature good. Images are in `quay.io`'s registry under `keyless/`, the policy's scope, and
//! pushed as in tests/e2e/policy.rs; clients go to berth only.

use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::e2e_support::harness::{BerthExtra, Env, Via};
use crate::e2e_support::seed::Platform;
use crate::e2e_support::{http, proc};
use crate::policy::{
    ACCEPT, LIMIT, UPSTREAM, assert_denial, check_copy, push_image, push_signature_layer,
};
use crate::referrers::{Pusher, digest_of, fallback_tag};
use crate::sigstore::{GITHUB, NOON, Signer, Sigstore, WORKFLOW, sign};

const OTHER: &str = "https://github.com/otherorg/app/.github/workflows/x.yml@refs/heads/main";

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

/// With a keyless policy, through berth to the real registry: the image signed by the right
/// identity, logged, copies byte for byte with skopeo; one signed by another identity, and one
/// whose (expired) certificate has no log entry, fail to copy, and a plain GET of each (by tag and
/// by digest) is `403 DENIED` with the reason.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn keyless_policy_skopeo_and_http_through_berth() {
    let store = Sigstore::new();
    let env = Env::start_with(Via::Berth, |_| BerthExtra {
        tables: policy_table(&store),
        upstream: Vec::new(),
    });
    // The premise of case C: every leaf expired on 2026-01-02T00:00:00Z.
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs((NOON + 12 * 3600) as u64);
    assert!(
        SystemTime::now() > expiry,
        "the test's leaves have not expired yet"
    );
    let ours = store.leaf(&store.fulcio, WORKFLOW, GITHUB);
    let theirs = store.leaf(&store.fulcio, OTHER, GITHUB);
    let a = push_signed(&env, &store, ("keyless/a", 3001), &ours, true);
    let b = push_signed(&env, &store, ("keyless/b", 3002), &theirs, true);
    let c = push_signed(&env, &store, ("keyless/c", 3003), &ours, false);

    let out = skopeo(&env, "keyless/a", "a").unwrap_or_else(|e| panic!("{e}"));
    check_copy(&out, "keyless/a", &a);
    for reference in ["1", a.manifest.digest.as_str()] {
        let path = format!("/v2/{UPSTREAM}/keyless/a/manifests/{reference}");
        let r = http::get(env.berth_addr(), &path, Some(ACCEPT)).unwrap();
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(digest_of(&r.body), a.manifest.digest, "{path}");
    }
    // The signature itself is served: the policy read it through berth.
    let sig = format!(
        "/v2/{UPSTREAM}/keyless/a/manifests/{}.sig",
        fallback_tag(&a.manifest.digest)
    );
    let r = http::get(env.berth_addr(), &sig, Some(ACCEPT)).unwrap();
    assert_eq!(r.status, 200, "{sig}");

    let common =
        "verifies with the trusted root for the 1 configured identity; found 1 signature: ";
    for (repo, image, why) in [
        (
            "keyless/b",
            &b,
            format!(
                "#1: its certificate names \"{OTHER}\" from issuer \"{GITHUB}\", which matches no configured identity"
            ),
        ),
        (
            "keyless/c",
            &c,
            "#1: it carries no Rekor entry, so nothing shows it was signed while its certificate \
             was valid (valid from 2026-01-01T00:00:00Z to 2026-01-02T00:00:00Z)"
                .to_owned(),
        ),
    ] {
        let e = skopeo(&env, repo, repo.trim_start_matches("keyless/"))
            .expect_err("berth must refuse the copy");
        eprintln!("skopeo copying {repo} (denied):\n{e}");
        let lower = e.to_lowercase();
        assert!(
            lower.contains("denied") || lower.contains("403"),
            "{repo}: {e}"
        );
        for reference in ["1", image.manifest.digest.as_str()] {
            let path = format!("/v2/{UPSTREAM}/{repo}/manifests/{reference}");
            let r = http::get(env.berth_addr(), &path, Some(ACCEPT)).unwrap();
            let detail = assert_denial(&r, &path);
            for want in [
                "policy \"release\"",
                image.manifest.digest.as_str(),
                common,
                &why,
            ] {
                assert!(detail.contains(want), "{path}: want {want:?} in {detail:?}");
            }
        }
    }
    let verdicts = |v: &str| {
        env.metric_sum(&format!(
            "berth_policy_verdicts_total{{policy=\"release\",verdict=\"{v}\"}}"
        ))
    };
    assert!(verdicts("verified") >= 1, "{}", verdicts("verified"));
    // skopeo's attempt and the two GETs, for each denied image.
    assert!(verdicts("denied") >= 2 * 3, "{}", verdicts("denied"));
}
