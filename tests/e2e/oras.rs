//! A real ORAS client, oras-py (PyPI `oras`, driven through tests/oras_client.py in the venv
//! tests/install-deps.sh makes): it pushes an artifact with a `subject` to the Distribution
//! registry, and pulls it back through berth, by digest and by tag, on the route forms; the files
//! it writes are the ones pushed, byte for byte. Then again with the registries stopped and berth
//! restarted.
//!
//! What oras-py 0.2.43 cannot do is done in plain HTTP here: it writes no referrers tag schema
//! index after a push (the Go `oras` does, where the registry has no referrers API), so the test
//! adds the artifact to the index under `sha256-<hex>` as that client would; and it has no call
//! that lists referrers (no `discover`), so the list is read through berth by HTTP and checked as
//! the conformance suite would, while oras-py reads the tag schema's index through berth with its
//! `get_manifest`, as a client of the schema does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::e2e_support::harness::{Env, Via};
use crate::e2e_support::proc;
use crate::e2e_support::seed::{self, OCI_INDEX, OCI_MANIFEST};
use crate::referrers::{
    Pusher, assert_conformant, digest_of, enc, fallback_tag, get_and_head, route_forms, subject_of,
};

const CYCLONEDX: &str = "application/vnd.cyclonedx+json";
const LIMIT: Duration = Duration::from_secs(60);

/// The Python of the venv tests/install-deps.sh installs oras-py into.
fn python() -> PathBuf {
    let venv = std::env::var_os("BERTH_CI_VENV").unwrap_or_else(|| "/opt/berth-ci/venv".into());
    Path::new(&venv).join("bin/python")
}

/// Runs tests/oras_client.py with `args` in `dir`; its JSON answer.
fn oras(env: &Env, dir: &Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    env.client_env(&mut cmd);
    cmd.current_dir(dir)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oras_client.py"))
        .args(args);
    let out = proc::run(&mut cmd, LIMIT);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("oras_client.py {args:?}: {e}: {out}"))
}

/// oras-py pulls `target` from `registry` into a fresh directory: exactly the one file pushed,
/// with its bytes.
#[track_caller]
fn oras_pull(env: &Env, registry: &str, target: &str, want: &[u8], n: usize) {
    let out = env.dir().join(format!("oras-pull-{n}"));
    let got = oras(
        env,
        env.dir(),
        &[
            "pull",
            "--registry",
            registry,
            "--target",
            target,
            "--outdir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(got, json!({"files": ["sbom.cdx.json"]}), "{target}");
    let bytes = std::fs::read(out.join("sbom.cdx.json")).unwrap();
    assert_eq!(bytes, want, "{target}: the file oras-py wrote");
}

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn oras_py_pushes_with_a_subject_and_pulls_through_berth() {
    let mut env = Env::start(Via::Berth);
    let app = seed::image("team/app");
    let registry = env.registry_addr("docker.io").to_owned();
    let work = env.dir().join("oras-push");
    std::fs::create_dir_all(&work).unwrap();
    let sbom = br#"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[]}"#;
    std::fs::write(work.join("sbom.cdx.json"), sbom).unwrap();
    std::fs::write(work.join("config.json"), b"{}").unwrap();

    // oras-py pushes the artifact, naming team/app:1.0 as its subject.
    let subject = format!("{},{},{}", app.media_type, app.top.digest, app.top.size);
    let file = format!("sbom.cdx.json:{CYCLONEDX}");
    let config = format!("config.json:{CYCLONEDX}");
    let pushed = oras(
        &env,
        &work,
        &[
            "push",
            "--registry",
            &registry,
            "--target",
            "team/app:sbom",
            "--file",
            &file,
            "--config",
            &config,
            "--annotation",
            "org.opencontainers.image.description=pushed by oras-py",
            "--subject",
            &subject,
        ],
    );
    let digest = pushed["digest"].as_str().expect("digest").to_owned();

    // The manifest as the registry holds it: the subject and the annotation oras-py wrote.
    let m = crate::e2e_support::http::get(
        &registry,
        &format!("/v2/team/app/manifests/{digest}"),
        Some(OCI_MANIFEST),
    )
    .unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(digest_of(&m.body), digest);
    let manifest: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(manifest["subject"], subject_of(app));
    assert_eq!(manifest.get("artifactType"), None, "oras-py writes none");

    // What oras-py leaves out: the referrers tag schema's index (see the module comment).
    let listed = json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": m.body.len(),
        "artifactType": CYCLONEDX,
        "annotations": {"org.opencontainers.image.description": "pushed by oras-py"},
    });
    let p = Pusher {
        addr: &registry,
        repo: "team/app",
    };
    p.fallback_index(&app.top.digest, std::slice::from_ref(&listed));

    let berth = env.berth_addr().to_owned();
    let check = |env: &Env, berth: &str, round: &str| {
        for (path, more) in route_forms("team/app", &app.top.digest) {
            let r = get_and_head(berth, &path);
            assert_conformant(&r, std::slice::from_ref(&listed), false, &path);
            let path = format!("{path}{more}artifactType={}", enc(CYCLONEDX));
            let r = get_and_head(berth, &path);
            assert_conformant(&r, std::slice::from_ref(&listed), true, &path);
        }
        // oras-py pulls the artifact through berth, by the digest the list gives and by its
        // tag, on the prefix and the plain route forms.
        let n = if round == "online" { 0 } else { 10 };
        oras_pull(env, berth, &format!("docker.io/team/app@{digest}"), sbom, n);
        oras_pull(env, berth, &format!("team/app@{digest}"), sbom, n + 1);
        oras_pull(env, berth, "docker.io/team/app:sbom", sbom, n + 2);
        // And reads the tag schema's index through berth, as a client of the schema does.
        let index = oras(
            env,
            env.dir(),
            &[
                "manifest",
                "--registry",
                berth,
                "--target",
                &format!("team/app:{}", fallback_tag(&app.top.digest)),
                "--accept",
                OCI_INDEX,
            ],
        );
        assert_eq!(index["manifests"], json!([listed]), "{round}");
        let got = oras(
            env,
            env.dir(),
            &[
                "manifest",
                "--registry",
                berth,
                "--target",
                &format!("docker.io/team/app@{digest}"),
                "--accept",
                OCI_MANIFEST,
            ],
        );
        assert_eq!(got, manifest, "{round}");
    };
    check(&env, &berth, "online");

    env.stop_registries();
    env.restart_berth();
    let berth = env.berth_addr().to_owned();
    check(&env, &berth, "offline");
    let r = get_and_head(&berth, &route_forms("team/app", &app.top.digest)[0].0);
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110 ")));
}
