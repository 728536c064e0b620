//! `berth warm`: the real binary, run as a child process against an in-process berth in front of
//! the fake upstream. The child is awaited with `tokio::process`, so the test's runtime keeps
//! serving while it runs.

use crate::support;

use std::process::{Output, Stdio};

use bytes::Bytes;
use http::{Method, StatusCode};

use berth::oci::media;
use support::instance::{Berth, berth, same};
use support::{FakeRegistry, Fault, random_bytes};

/// One image pushed to the fake: its manifest and the blobs it names (config first).
pub(crate) struct Image {
    pub(crate) manifest: String,
    manifest_len: usize,
    manifest_body: Bytes,
    pub(crate) blobs: Vec<(String, Bytes)>,
}

impl Image {
    fn blob_digests(&self) -> Vec<&str> {
        self.blobs.iter().map(|(d, _)| d.as_str()).collect()
    }
}

/// Pushes a config and `layers` to `repo` and an OCI image manifest naming them. `lie` adds to
/// the size the manifest gives for the last layer.
pub(crate) fn image(
    fake: &FakeRegistry,
    repo: &str,
    platform: &str,
    layers: &[Bytes],
    lie: u64,
) -> Image {
    let config = Bytes::from(format!(
        r#"{{"architecture":"{platform}","os":"linux","rootfs":{{"type":"layers"}},"repo":"{repo}"}}"#
    ));
    let mut blobs = vec![(fake.put_blob(repo, config.clone()), config)];
    for l in layers {
        blobs.push((fake.put_blob(repo, l.clone()), l.clone()));
    }
    let descriptor = |(d, b): &(String, Bytes), mt: &str, extra: u64| serde_json::json!({"mediaType": mt, "digest": d, "size": b.len() as u64 + extra});
    let n = blobs.len();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(&blobs[0], "application/vnd.oci.image.config.v1+json", 0),
        "layers": blobs[1..].iter().enumerate().map(|(i, b)| descriptor(
            b,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            if i + 2 == n { lie } else { 0 },
        )).collect::<Vec<_>>(),
    })
    .to_string();
    let manifest_body = Bytes::from(body);
    let manifest = fake.put_manifest(repo, media::OCI_MANIFEST, manifest_body.clone());
    Image {
        manifest,
        manifest_len: manifest_body.len(),
        manifest_body,
        blobs,
    }
}

/// An OCI index tagged `repo:tag` over `images`, one per (os, arch).
fn index(fake: &FakeRegistry, repo: &str, tag: &str, images: &[(&str, &Image)]) -> String {
    let manifests: Vec<_> = images
        .iter()
        .map(|(arch, img)| {
            serde_json::json!({
                "mediaType": media::OCI_MANIFEST,
                "digest": img.manifest,
                "size": img.manifest_len,
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    })
    .to_string();
    fake.put_tagged(repo, tag, media::OCI_INDEX, body)
}

/// `library/app:1`: an index of linux/amd64 and linux/arm64 that share their first layer.
pub(crate) struct App {
    pub(crate) index: String,
    pub(crate) amd64: Image,
    pub(crate) arm64: Image,
    shared: Bytes,
}

pub(crate) fn app(fake: &FakeRegistry) -> App {
    let shared = random_bytes(200_000, 1);
    let amd64 = image(
        fake,
        "library/app",
        "amd64",
        &[shared.clone(), random_bytes(70_000, 2)],
        0,
    );
    let arm64 = image(
        fake,
        "library/app",
        "arm64",
        &[shared.clone(), random_bytes(90_000, 3)],
        0,
    );
    let index = index(
        fake,
        "library/app",
        "1",
        &[("amd64", &amd64), ("arm64", &arm64)],
    );
    App {
        index,
        amd64,
        arm64,
        shared,
    }
}

/// Runs `berth warm <args>` to its end.
async fn warm(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("warm")
        .args(args)
        .env_remove("BERTH_CONFIG")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn server(b: &Berth) -> String {
    format!("http://{}", b.addr)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn exit(out: &Output, code: i32) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// Upstream GETs of a path.
fn gets(fake: &FakeRegistry, path: &str) -> usize {
    fake.hits(Method::GET, path)
}

#[tokio::test]
async fn every_platform_is_fetched_once_then_pulls_never_go_upstream() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let b = berth(&fake, "").await;

    let out = warm(&["--server", &server(&b), "app:1"]).await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("warmed app:1 (3 manifests, 5 blobs, "),
        "{stdout}"
    );
    assert!(
        stdout.contains("warmed 1/1 images: 3 manifests, 5 blobs, "),
        "{stdout}"
    );

    // Upstream: the tag, both platform manifests and every blob, each exactly once.
    let upstream = fake.requests();
    assert_eq!(
        gets(&fake, "/v2/library/app/manifests/1"),
        1,
        "{upstream:?}"
    );
    for img in [&app.amd64, &app.arm64] {
        let path = format!("/v2/library/app/manifests/{}", img.manifest);
        assert_eq!(gets(&fake, &path), 1, "{path}");
        for d in img.blob_digests() {
            assert_eq!(gets(&fake, &format!("/v2/library/app/blobs/{d}")), 1, "{d}");
        }
    }
    assert_eq!(upstream.len(), 8, "{upstream:?}");

    // A pull of either platform is now served from the cache alone.
    b.settled().await;
    fake.reset_counts();
    let got = b
        .request(
            Method::GET,
            "/v2/app/manifests/1",
            &[("accept", media::OCI_INDEX)],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("docker-content-digest"),
        Some(app.index.as_str())
    );
    for img in [&app.amd64, &app.arm64] {
        let got = b
            .request(
                Method::GET,
                &format!("/v2/app/manifests/{}", img.manifest),
                &[("accept", media::OCI_MANIFEST)],
            )
            .await;
        assert_eq!(got.status, StatusCode::OK);
        same(got.bytes(), &img.manifest_body);
        for (d, body) in &img.blobs {
            assert!(b.blob_file(d).exists(), "{d} not cached");
            let got = b.get(&format!("/v2/app/blobs/{d}")).await;
            assert_eq!(got.status, StatusCode::OK);
            same(got.bytes(), body);
        }
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn blobs_shared_between_images_are_fetched_once_per_run() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    // Another repository whose image carries the same base layer.
    let tools = image(
        &fake,
        "library/tools",
        "amd64",
        &[app.shared.clone(), random_bytes(10_000, 4)],
        0,
    );
    fake.tag("library/tools", "2", &tools.manifest);
    let b = berth(&fake, "").await;

    let out = warm(&["--server", &server(&b), "--jobs", "1", "app:1", "tools:2"]).await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    // 5 blobs in app, 3 in tools, one of them shared.
    assert!(
        stdout.contains("warmed 2/2 images: 4 manifests, 7 blobs, "),
        "{stdout}"
    );
    let shared = support::digest_of(&app.shared);
    let upstream = gets(&fake, &format!("/v2/library/app/blobs/{shared}"))
        + gets(&fake, &format!("/v2/library/tools/blobs/{shared}"));
    assert_eq!(upstream, 1);
    // And warm asked berth for each distinct blob once.
    let line = b
        .metric(r#"berth_http_requests_total{method="GET",route="blob",status="200"}"#)
        .await;
    assert!(line.ends_with(" 7"), "{line}");
}

#[tokio::test]
async fn references_come_from_files_and_arguments() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let tools = image(
        &fake,
        "library/tools",
        "amd64",
        &[random_bytes(5_000, 5)],
        0,
    );
    fake.tag("library/tools", "2", &tools.manifest);
    let b = berth(&fake, "").await;

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("rollout.txt");
    std::fs::write(
        &list,
        "# images for the rollout\n\n  registry.test/library/tools:2   # by registry name: ?ns=\n\t\n#app:2\ndocker.io/app:1\n",
    )
    .unwrap();
    let out = warm(&[
        "--server",
        &server(&b),
        "app:1",
        "--file",
        list.to_str().unwrap(),
    ])
    .await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    // docker.io/app:1 is app:1: warmed once.
    assert_eq!(stdout.matches("warmed app:1 ").count(), 1, "{stdout}");
    assert!(
        stdout.contains("warmed registry.test/library/tools:2 (1 manifest, 2 blobs, "),
        "{stdout}"
    );
    assert!(stdout.contains("warmed 2/2 images"), "{stdout}");
    assert_eq!(gets(&fake, "/v2/library/app/manifests/1"), 1);
    for d in tools.blob_digests() {
        assert_eq!(gets(&fake, &format!("/v2/library/tools/blobs/{d}")), 1);
    }
    assert_eq!(gets(&fake, "/v2/library/app/manifests/2"), 0, "a comment");
    let _ = app;
}

#[tokio::test]
async fn an_unmirrored_registry_or_unknown_tag_fails_and_the_rest_is_warmed() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let b = berth(&fake, "").await;

    let out = warm(&[
        "--server",
        &server(&b),
        "ghcr.io/acme/app:1",
        "app:1",
        "app:nope",
    ])
    .await;
    exit(&out, 1);
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains(
            "failed ghcr.io/acme/app:1: NAME_UNKNOWN: registry \"ghcr.io\" is not mirrored here (HTTP 404)"
        ) && stderr.contains("[[upstream]]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("failed app:nope: MANIFEST_UNKNOWN"),
        "{stderr}"
    );
    assert!(stdout.contains("warmed app:1 (3 manifests"), "{stdout}");
    assert!(
        stdout.contains("warmed 1/3 images: 3 manifests, 5 blobs, ")
            && stdout.contains("; 2 failed: ghcr.io/acme/app:1, app:nope"),
        "{stdout}"
    );
    for d in app.amd64.blob_digests() {
        assert_eq!(gets(&fake, &format!("/v2/library/app/blobs/{d}")), 1);
    }
    // Nothing was sent upstream for the unmirrored registry.
    assert!(
        fake.requests().iter().all(|r| !r.path.contains("acme")),
        "{:?}",
        fake.requests()
    );
}

#[tokio::test]
async fn usage_errors_exit_2_before_anything_is_fetched() {
    let fake = FakeRegistry::start().await;
    let _app = app(&fake);
    let b = berth(&fake, "").await;
    let s = server(&b);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "app:1\nnginx@sha256:xyz\n").unwrap();
    let list = list.to_str().unwrap();
    let missing = dir.path().join("missing.txt");
    let missing = missing.to_str().unwrap();
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "[server]\nlisten_typo = 1\n").unwrap();
    let bad_config = bad_config.to_str().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "no certificate here\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();

    let cases: [(&[&str], &[&str]); 9] = [
        (
            &["--server", &s, "app:1", "Bad/Name", "--file", list],
            &[
                "argument: \"Bad/Name\" is not an image reference",
                "list.txt:2: \"nginx@sha256:xyz\" is not an image reference",
            ],
        ),
        (&["--server", &s], &["no image references given"]),
        (
            &["--server", &s, "--file", missing],
            &["cannot read", "missing.txt"],
        ),
        (
            &["--server", "ftp://x", "app:1"],
            &["scheme must be http or https"],
        ),
        (&["--server", &s, "--jobs", "0", "app:1"], &["--jobs"]),
        (
            &["--server", &s, "--platform", "linux", "app:1"],
            &["os/arch"],
        ),
        (
            &["--server", &s, "--ca-file", missing, "app:1"],
            &["--ca-file", "missing.txt"],
        ),
        (
            &["--server", &s, "--ca-file", not_pem, "app:1"],
            &["--ca-file", "no usable PEM certificate"],
        ),
        (
            &["--config", bad_config, "app:1"],
            &["invalid config", "listen_typo"],
        ),
    ];
    for (args, want) in cases {
        let out = warm(args).await;
        exit(&out, 2);
        let (_, stderr) = text(&out);
        for w in want {
            assert!(stderr.contains(w), "{args:?}: want {w:?} in {stderr}");
        }
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn upstream_blob_faults_fail_their_image_and_are_reported() {
    let fake = FakeRegistry::start().await;
    let _app = app(&fake);
    let refused = image(
        &fake,
        "library/refused",
        "amd64",
        &[random_bytes(8_000, 6)],
        0,
    );
    fake.tag("library/refused", "1", &refused.manifest);
    let garbled = image(
        &fake,
        "library/garbled",
        "amd64",
        &[random_bytes(300_000, 7)],
        0,
    );
    fake.tag("library/garbled", "1", &garbled.manifest);
    let (refused_layer, garbled_layer) = (&refused.blobs[1].0, &garbled.blobs[1].0);
    fake.fault(
        &format!("/v2/library/refused/blobs/{refused_layer}"),
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, None),
    );
    fake.fault(
        &format!("/v2/library/garbled/blobs/{garbled_layer}"),
        Fault::WrongBytes,
    );
    let b = berth(&fake, "retries = 0").await;

    let out = warm(&["--server", &server(&b), "refused:1", "app:1", "garbled:1"]).await;
    exit(&out, 1);
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains(&format!("failed refused:1: blob {refused_layer}: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "failed garbled:1: blob {garbled_layer}: transfer broken"
        )),
        "{stderr}"
    );
    assert!(stdout.contains("warmed app:1 "), "{stdout}");
    assert!(
        stdout.contains("warmed 1/3 images") && stdout.contains("2 failed: refused:1, garbled:1"),
        "{stdout}"
    );
    b.settled().await;
    assert!(!b.blob_file(refused_layer).exists());
    assert!(!b.blob_file(garbled_layer).exists());
    // The sound blobs of the failed images are cached all the same.
    assert!(b.blob_file(&refused.blobs[0].0).exists());
}

#[tokio::test]
async fn a_size_that_disagrees_with_the_descriptor_is_a_failure() {
    let fake = FakeRegistry::start().await;
    let img = image(&fake, "library/liar", "amd64", &[random_bytes(4_000, 8)], 1);
    fake.tag("library/liar", "1", &img.manifest);
    let b = berth(&fake, "").await;

    let out = warm(&["--server", &server(&b), "liar:1"]).await;
    exit(&out, 1);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!("failed liar:1: blob {}: ", img.blobs[1].0))
            && stderr.contains("the manifest says 4001 bytes"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_platform_filter_fetches_only_that_platform() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let b = berth(&fake, "").await;

    let out = warm(&[
        "--server",
        &server(&b),
        "--platform",
        "linux/arm64",
        "app:1",
    ])
    .await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("warmed app:1 (2 manifests, 3 blobs, "),
        "{stdout}"
    );
    let amd = format!("/v2/library/app/manifests/{}", app.amd64.manifest);
    let arm = format!("/v2/library/app/manifests/{}", app.arm64.manifest);
    assert_eq!((gets(&fake, &amd), gets(&fake, &arm)), (0, 1));
    let amd_only = &app.amd64.blobs[2].0;
    assert_eq!(gets(&fake, &format!("/v2/library/app/blobs/{amd_only}")), 0);

    let out = warm(&[
        "--server",
        &server(&b),
        "--platform",
        "linux/s390x",
        "app:1",
    ])
    .await;
    exit(&out, 1);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("failed app:1: no manifest for linux/s390x in the index (it has linux/amd64, linux/arm64)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_server_address_comes_from_the_config() {
    let fake = FakeRegistry::start().await;
    let _app = app(&fake);
    let b = berth(&fake, "").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("berth.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{}\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n",
            b.addr,
            fake.url()
        ),
    )
    .unwrap();
    let out = warm(&["--config", cfg.to_str().unwrap(), "app:1"]).await;
    exit(&out, 0);
    assert_eq!(gets(&fake, "/v2/library/app/manifests/1"), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_reported_once() {
    // Nothing listens there.
    let dead = support::ports::Dead::new();
    let url = format!("http://{}", dead.addr());
    let out = warm(&["--server", &url, "app:1", "quay.io/a/b:2"]).await;
    exit(&out, 1);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stderr.matches("cannot reach berth at").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&url), "{stderr}");
    assert!(
        stdout.contains("warmed 0/2 images") && stdout.contains("2 failed: app:1, quay.io/a/b:2"),
        "{stdout}"
    );
}

#[tokio::test]
async fn manifests_are_checked_against_their_digest() {
    // Straight at the fake (berth would catch this itself): warm trusts no manifest blindly.
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    fake.fault(
        &format!("/v2/library/app/manifests/{}", app.arm64.manifest),
        Fault::WrongBytes,
    );
    let out = warm(&["--server", &fake.url(), "library/app:1"]).await;
    exit(&out, 1);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "failed library/app:1: platform manifest {}: ",
            app.arm64.manifest
        )),
        "{stderr}"
    );
    assert!(stderr.contains("not the one asked for"), "{stderr}");
}

#[test]
fn help_explains_warm() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["--help"]).contains("warm"));
    let help = run(&["warm", "--help"]);
    for word in [
        "--file",
        "--server",
        "--config",
        "--ca-file",
        "--platform",
        "--jobs",
        "--referrers",
        "quay.io/coreos/flannel:v0.11.0",
        "?ns=",
        "Exit 0",
    ] {
        assert!(help.contains(word), "warm --help lacks {word}: {help}");
    }
}

#[tokio::test]
async fn the_live_display_runs_the_same_warm() {
    // In process, with the live display on: its templates and counters are exercised (indicatif
    // draws nothing when stderr is not a terminal, so only the outcome is checked).
    use berth::warm::{ImageRef, Options, Warmer};
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let b = berth(&fake, "").await;
    let opts = Options {
        server: berth::warm::parse_server(&server(&b)).unwrap(),
        ca_file: None,
        jobs: 2,
        platforms: Vec::new(),
        live: true,
        credentials: None,
    };
    let refs: Vec<ImageRef> = ["app:1", "app:nope"]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    let summary = Warmer::new(&opts).unwrap().run(&refs).await;
    assert_eq!((summary.images_warmed, summary.blobs), (1, 5), "{summary}");
    assert_eq!(summary.failures.len(), 1, "{summary}");
    assert_eq!(summary.exit_code(), 1);
    let bytes: usize = [&app.amd64, &app.arm64]
        .iter()
        .flat_map(|i| i.blobs.iter().map(|(_, b)| b.len()))
        .sum::<usize>()
        - app.shared.len();
    assert_eq!(summary.bytes, bytes as u64);
}

// `--referrers`: an image's signatures and SBOMs (OCI 1.1 referrers) and theirs, one level.

pub(crate) const SIG: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub(crate) const SBOM: &str = "application/spdx+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An artifact pushed to the fake: a manifest naming a subject, with the empty config and one
/// layer.
pub(crate) struct Artifact {
    pub(crate) manifest: String,
    pub(crate) body: Bytes,
    pub(crate) layer: (String, Bytes),
}

/// Pushes an artifact of `artifact_type` to `repo` whose `subject` is `subject` and whose one
/// layer is `payload`.
pub(crate) fn artifact(
    fake: &FakeRegistry,
    repo: &str,
    subject: &str,
    artifact_type: &str,
    payload: Bytes,
) -> Artifact {
    let empty = fake.put_blob(repo, Bytes::from_static(b"{}"));
    let layer = fake.put_blob(repo, payload.clone());
    let body = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": layer, "size": payload.len()}],
            "subject": {"mediaType": media::OCI_MANIFEST, "digest": subject, "size": 1},
        })
        .to_string(),
    );
    let manifest = fake.put_manifest(repo, media::OCI_MANIFEST, body.clone());
    Artifact {
        manifest,
        body,
        layer: (layer, payload),
    }
}

/// The digests berth lists as `subject`'s referrers (in `/v2/app`), and its `Warning` header.
pub(crate) async fn referrers_of(b: &Berth, subject: &str) -> (Vec<String>, Option<String>) {
    let got = b.get(&format!("/v2/app/referrers/{subject}")).await;
    assert_eq!(got.status, StatusCode::OK, "{subject}: {:?}", got.body);
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    let digests = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    (digests, got.header("warning").map(str::to_owned))
}

#[tokio::test]
async fn referrers_and_theirs_are_warmed_then_served_with_the_upstream_down() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(2);
    let app = app(&fake);
    let repo = "library/app";
    // A signature of the index, an SBOM of the amd64 manifest, a signature of that SBOM, and a
    // signature of that signature: a third level, which is not warmed.
    let sig = artifact(
        &fake,
        repo,
        &app.index,
        SIG,
        Bytes::from_static(b"index sig"),
    );
    let sbom = artifact(
        &fake,
        repo,
        &app.amd64.manifest,
        SBOM,
        random_bytes(30_000, 9),
    );
    let sbom_sig = artifact(
        &fake,
        repo,
        &sbom.manifest,
        SIG,
        Bytes::from_static(b"sbom sig"),
    );
    let deep = artifact(
        &fake,
        repo,
        &sbom_sig.manifest,
        SIG,
        Bytes::from_static(b"deep"),
    );
    // Lists revalidated on every ask: served from the cache only while the upstream fails.
    let b = berth(&fake, "tag_ttl = \"0s\"").await;

    let out = warm(&["--server", &server(&b), "--referrers", "app:1"]).await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    // 3 manifests and 5 blobs of the image; 3 referrers, the empty config and their 3 layers.
    assert!(
        stdout.contains("warmed app:1 (6 manifests, 3 referrers, 9 blobs, "),
        "{stdout}"
    );
    assert!(
        stdout.contains("warmed 1/1 images: 6 manifests, 3 referrers, 9 blobs, "),
        "{stdout}"
    );
    // The lists of the index, both platforms, the signature and the SBOM: each asked once.
    let list = |d: &str| format!("/v2/library/app/referrers/{d}");
    let lists: Vec<String> = [
        &app.index,
        &app.amd64.manifest,
        &app.arm64.manifest,
        &sig.manifest,
        &sbom.manifest,
    ]
    .iter()
    .map(|d| list(d))
    .collect();
    for l in &lists {
        assert_eq!(gets(&fake, l), 1, "{l}");
    }
    for a in [&sig, &sbom, &sbom_sig] {
        assert_eq!(
            gets(&fake, &format!("/v2/library/app/manifests/{}", a.manifest)),
            1
        );
        assert_eq!(
            gets(&fake, &format!("/v2/library/app/blobs/{}", a.layer.0)),
            1
        );
    }
    // Nothing deeper: the signature of the SBOM's signature is neither listed nor fetched.
    assert_eq!(gets(&fake, &list(&sbom_sig.manifest)), 0);
    assert_eq!(
        gets(
            &fake,
            &format!("/v2/library/app/manifests/{}", deep.manifest)
        ),
        0
    );
    assert!(!b.blob_file(&deep.layer.0).exists());

    // The upstream down: every list berth would revalidate fails; the rest never goes there.
    b.settled().await;
    fake.reset_counts();
    for l in &lists {
        fake.fault(l, Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None));
    }
    for (subject, want) in [
        (&app.index, vec![sig.manifest.clone()]),
        (&app.amd64.manifest, vec![sbom.manifest.clone()]),
        (&app.arm64.manifest, vec![]),
        (&sbom.manifest, vec![sbom_sig.manifest.clone()]),
        (&sig.manifest, vec![]),
    ] {
        let (got, warning) = referrers_of(&b, subject).await;
        assert_eq!(got, want, "referrers of {subject}");
        assert!(warning.is_some_and(|w| w.starts_with("110 ")), "{subject}");
    }
    for a in [&sig, &sbom, &sbom_sig] {
        let got = b
            .request(
                Method::GET,
                &format!("/v2/app/manifests/{}", a.manifest),
                &[("accept", media::OCI_MANIFEST)],
            )
            .await;
        assert_eq!(got.status, StatusCode::OK);
        same(got.bytes(), &a.body);
        let got = b.get(&format!("/v2/app/blobs/{}", a.layer.0)).await;
        assert_eq!(got.status, StatusCode::OK);
        same(got.bytes(), &a.layer.1);
    }
    let upstream = fake.requests();
    assert!(
        upstream.iter().all(|r| lists.contains(&r.path)),
        "only the failing lists went upstream: {upstream:?}"
    );
}

#[tokio::test]
async fn with_a_platform_filter_only_that_platform_s_referrers_come() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let app = app(&fake);
    let repo = "library/app";
    let sig = artifact(
        &fake,
        repo,
        &app.index,
        SIG,
        Bytes::from_static(b"index sig"),
    );
    let amd64 = artifact(
        &fake,
        repo,
        &app.amd64.manifest,
        SBOM,
        random_bytes(3_000, 10),
    );
    let arm64 = artifact(
        &fake,
        repo,
        &app.arm64.manifest,
        SBOM,
        random_bytes(3_000, 11),
    );
    let b = berth(&fake, "").await;

    let out = warm(&[
        "--server",
        &server(&b),
        "--referrers",
        "--platform",
        "linux/arm64",
        "app:1",
    ])
    .await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    // The index, arm64's manifest, the index's signature and arm64's SBOM; arm64's config and two
    // layers, the empty config and the two artifacts' layers.
    assert!(
        stdout.contains("warmed app:1 (4 manifests, 2 referrers, 6 blobs, "),
        "{stdout}"
    );
    let manifest = |d: &str| format!("/v2/{repo}/manifests/{d}");
    assert_eq!(gets(&fake, &manifest(&sig.manifest)), 1);
    assert_eq!(gets(&fake, &manifest(&arm64.manifest)), 1);
    assert_eq!(gets(&fake, &manifest(&amd64.manifest)), 0);
    assert_eq!(
        gets(
            &fake,
            &format!("/v2/{repo}/referrers/{}", app.amd64.manifest)
        ),
        0
    );
}

#[tokio::test]
async fn without_the_flag_no_referrer_is_listed_or_fetched() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let app = app(&fake);
    let sig = artifact(
        &fake,
        "library/app",
        &app.index,
        SIG,
        Bytes::from_static(b"index sig"),
    );
    let b = berth(&fake, "").await;

    let out = warm(&["--server", &server(&b), "app:1"]).await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("warmed app:1 (3 manifests, 5 blobs, ")
            && stdout.contains("warmed 1/1 images: 3 manifests, 5 blobs, "),
        "{stdout}"
    );
    let upstream = fake.requests();
    assert!(
        upstream
            .iter()
            .all(|r| !r.path.contains("/referrers/") && !r.path.contains(&sig.manifest)),
        "{upstream:?}"
    );
    assert!(!b.blob_file(&sig.manifest).exists());
}

#[tokio::test]
async fn the_referrers_tag_schema_works_through_berth() {
    // An upstream without the API (the Distribution registry 2.8): the referrers are in the index
    // tagged sha256-<hex>, which berth reads for warm as for any client.
    let fake = FakeRegistry::start().await;
    let tools = image(
        &fake,
        "library/tools",
        "amd64",
        &[random_bytes(10_000, 4)],
        0,
    );
    fake.tag("library/tools", "2", &tools.manifest);
    let sig = artifact(
        &fake,
        "library/tools",
        &tools.manifest,
        SIG,
        Bytes::from_static(b"tools sig"),
    );
    let fallback = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": sig.manifest, "size": sig.body.len(), "artifactType": SIG}],
    })
    .to_string();
    let tag = tools.manifest.replace(':', "-");
    fake.put_tagged("library/tools", &tag, media::OCI_INDEX, fallback);
    let b = berth(&fake, "").await;

    let out = warm(&["--server", &server(&b), "--referrers", "tools:2"]).await;
    exit(&out, 0);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("warmed tools:2 (2 manifests, 1 referrer, 4 blobs, "),
        "{stdout}"
    );
    assert_eq!(
        gets(&fake, &format!("/v2/library/tools/manifests/{tag}")),
        1
    );
    b.settled().await;
    assert!(b.blob_file(&sig.layer.0).exists());
    // The list is kept by berth too: asked again, it is a cache hit.
    fake.reset_counts();
    let got = b
        .get(&format!("/v2/tools/referrers/{}", tools.manifest))
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        std::str::from_utf8(got.bytes())
            .unwrap()
            .contains(&sig.manifest)
    );
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn a_referrer_that_fails_fails_its_image_and_names_the_referrer() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(10);
    let app = app(&fake);
    // app:1's signature: its layer fails.
    let sig = artifact(
        &fake,
        "library/app",
        &app.index,
        SIG,
        Bytes::from_static(b"index sig"),
    );
    fake.fault(
        &format!("/v2/library/app/blobs/{}", sig.layer.0),
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, None),
    );
    // tools:2's SBOM: its manifest fails.
    let tools = image(
        &fake,
        "library/tools",
        "amd64",
        &[random_bytes(10_000, 4)],
        0,
    );
    fake.tag("library/tools", "2", &tools.manifest);
    let sbom = artifact(
        &fake,
        "library/tools",
        &tools.manifest,
        SBOM,
        Bytes::from_static(b"{}"),
    );
    fake.fault(
        &format!("/v2/library/tools/manifests/{}", sbom.manifest),
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, None),
    );
    // lone:1's referrers cannot be listed.
    let lone = image(&fake, "library/lone", "amd64", &[random_bytes(5_000, 5)], 0);
    fake.tag("library/lone", "1", &lone.manifest);
    fake.fault(
        &format!("/v2/library/lone/referrers/{}", lone.manifest),
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, None),
    );
    // ok:1 has a signature that is fine.
    let ok = image(&fake, "library/ok", "amd64", &[random_bytes(5_000, 6)], 0);
    fake.tag("library/ok", "1", &ok.manifest);
    let ok_sig = artifact(
        &fake,
        "library/ok",
        &ok.manifest,
        SIG,
        Bytes::from_static(b"ok sig"),
    );
    let b = berth(&fake, "retries = 0").await;

    let out = warm(&[
        "--server",
        &server(&b),
        "--referrers",
        "app:1",
        "tools:2",
        "lone:1",
        "ok:1",
    ])
    .await;
    exit(&out, 1);
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "failed app:1: referrer {}: blob {}: ",
            sig.manifest, sig.layer.0
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("failed tools:2: referrer {}: ", sbom.manifest)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("failed lone:1: referrers of {}: ", lone.manifest)),
        "{stderr}"
    );
    assert!(
        stdout.contains("warmed ok:1 (2 manifests, 1 referrer, 4 blobs, "),
        "{stdout}"
    );
    assert!(
        stdout.contains("warmed 1/4 images: ")
            && stdout.contains("3 failed: app:1, tools:2, lone:1"),
        "{stdout}"
    );
    b.settled().await;
    assert!(b.blob_file(&ok_sig.layer.0).exists());
    // The image's own blobs were fetched all the same: only the referrer's is missing.
    assert!(b.blob_file(&app.amd64.blobs[1].0).exists());
    assert!(!b.blob_file(&sig.layer.0).exists());
}

#[tokio::test]
async fn a_berth_without_the_referrers_api_is_named_not_crashed_on() {
    // The fake registry itself stands for a berth from before the referrers route: it answers
    // the manifests and blobs warm asks for, and 404 for /referrers/.
    let fake = FakeRegistry::start().await;
    let _app = app(&fake);
    let out = warm(&["--server", &fake.url(), "--referrers", "library/app:1"]).await;
    exit(&out, 1);
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "failed library/app:1: referrers of {}: {} has no referrers API: ",
            _app.index,
            fake.url()
        )) && stderr.contains("warm without --referrers"),
        "{stderr}"
    );
    assert!(stdout.contains("1 failed: library/app:1"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_list_that_is_no_index_or_too_large_fails_its_image() {
    // The fake registry as the server again, its referrers route answering what the test says.
    let fake = FakeRegistry::start().await;
    let garbled = image(
        &fake,
        "library/garbled",
        "amd64",
        &[random_bytes(1_000, 12)],
        0,
    );
    fake.tag("library/garbled", "1", &garbled.manifest);
    let huge = image(
        &fake,
        "library/huge",
        "amd64",
        &[random_bytes(1_000, 13)],
        0,
    );
    fake.tag("library/huge", "1", &huge.manifest);
    fake.fault(
        &format!("/v2/library/garbled/referrers/{}", garbled.manifest),
        Fault::Answer(vec![], Bytes::from_static(b"<html>")),
    );
    fake.fault(
        &format!("/v2/library/huge/referrers/{}", huge.manifest),
        Fault::Answer(vec![], Bytes::from(vec![b' '; (16 << 20) + 1])),
    );
    let out = warm(&[
        "--server",
        &fake.url(),
        "--referrers",
        "library/garbled:1",
        "library/huge:1",
    ])
    .await;
    exit(&out, 1);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "failed library/garbled:1: referrers of {}: the referrers list is no image index",
            garbled.manifest
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "failed library/huge:1: referrers of {}: larger than 16777216 bytes",
            huge.manifest
        )),
        "{stderr}"
    );
}
