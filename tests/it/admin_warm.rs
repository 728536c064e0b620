//! `POST /admin/warm`: the admin API warms images (and their referrers) through the running
//! berth, in process, with the token: then served with the upstream down; refused without the
//! token (401) or with a bad body (400), nothing fetched then; one warm at a time (429); and
//! through a berth with `[auth]`, without any user's password; and `berth warm --url`, the
//! command through the admin API.

use crate::admin::{TOKEN, admin_toml};
use crate::support;
use crate::warm::{SBOM, SIG, app, artifact, image, referrers_of};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use berth::admin::Warmed;
use berth::oci::media;
use support::instance::{Berth, Got, berth, gated_blob, listeners_and_storage, same, start_toml};
use support::{FakeRegistry, Fault, random_bytes};

/// `POST /admin/warm` with `body`, and `Authorization: Bearer <token>` when given.
async fn post_warm(b: &Berth, body: &str, token: Option<&str>) -> Got {
    post_warm_at(b.metrics, body, token).await
}

/// [`post_warm`] to the metrics listener at `metrics`.
async fn post_warm_at(metrics: std::net::SocketAddr, body: &str, token: Option<&str>) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::post(format!("http://{metrics}/admin/warm"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string()),
    }
}

#[track_caller]
fn warmed(got: &Got) -> Warmed {
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.header("content-type"), Some("application/json"));
    serde_json::from_slice(got.bytes()).unwrap()
}

/// The OCI error's detail.
fn detail(got: &Got) -> String {
    let v: serde_json::Value = serde_json::from_slice(got.bytes()).unwrap();
    v["errors"][0]["detail"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn an_image_and_its_referrers_are_warmed_then_served_with_the_upstream_down() {
    let fake = FakeRegistry::start().await;
    fake.serve_referrers(2);
    let app = app(&fake);
    let repo = "library/app";
    let sig = artifact(&fake, repo, &app.index, SIG, Bytes::from_static(b"sig"));
    let sbom = artifact(
        &fake,
        repo,
        &app.amd64.manifest,
        SBOM,
        random_bytes(30_000, 9),
    );
    let secrets = tempfile::tempdir().unwrap();
    // Tags and lists revalidated on every ask: served from the cache only while the upstream
    // fails, which shows they were cached.
    let b = berth(
        &fake,
        &format!("tag_ttl = \"0s\"\n{}", admin_toml(secrets.path(), TOKEN)),
    )
    .await;

    let got = post_warm(
        &b,
        r#"{"images": ["app:1"], "referrers": true}"#,
        Some(TOKEN),
    )
    .await;
    let w = warmed(&got);
    assert_eq!(w.warmed, ["app:1"]);
    assert!(w.failed.is_empty(), "{:?}", w.failed);
    // The index and both platforms; two referrers. Blobs: both configs, the shared layer and one
    // of each platform; the empty config (one digest for both artifacts) and their layers.
    assert_eq!((w.manifests, w.referrers, w.blobs), (5, Some(2), 8));
    let blobs: Vec<&(String, Bytes)> = app
        .amd64
        .blobs
        .iter()
        .chain(&app.arm64.blobs)
        .chain([&sig.layer, &sbom.layer])
        .collect();
    let mut distinct: Vec<&String> = blobs.iter().map(|(d, _)| d).collect();
    distinct.sort();
    distinct.dedup();
    let bytes: u64 = 2 + distinct
        .iter()
        .map(|d| blobs.iter().find(|(x, _)| x == *d).unwrap().1.len() as u64)
        .sum::<u64>();
    assert_eq!(w.bytes, bytes);

    // The upstream down: the tag and every list berth would revalidate fail; the rest must
    // never go there.
    b.settled().await;
    fake.reset_counts();
    let tag = "/v2/library/app/manifests/1".to_owned();
    let lists: Vec<String> = [
        &app.index,
        &app.amd64.manifest,
        &app.arm64.manifest,
        &sig.manifest,
        &sbom.manifest,
    ]
    .iter()
    .map(|d| format!("/v2/library/app/referrers/{d}"))
    .collect();
    for p in lists.iter().chain([&tag]) {
        fake.fault(p, Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None));
    }
    let m = b
        .request(
            Method::GET,
            "/v2/app/manifests/1",
            &[("accept", media::OCI_INDEX)],
        )
        .await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.header("docker-content-digest"), Some(app.index.as_str()));
    for d in [&app.amd64.manifest, &app.arm64.manifest] {
        let got = b
            .request(
                Method::GET,
                &format!("/v2/app/manifests/{d}"),
                &[("accept", media::OCI_MANIFEST)],
            )
            .await;
        assert_eq!(got.status, StatusCode::OK, "{d}");
    }
    for (d, body) in &blobs {
        let got = b.get(&format!("/v2/app/blobs/{d}")).await;
        assert_eq!(got.status, StatusCode::OK, "{d}");
        same(got.bytes(), body);
    }
    for (subject, want) in [
        (&app.index, vec![sig.manifest.clone()]),
        (&app.amd64.manifest, vec![sbom.manifest.clone()]),
        (&app.arm64.manifest, vec![]),
    ] {
        assert_eq!(referrers_of(&b, subject).await.0, want, "{subject}");
    }
    for a in [&sig, &sbom] {
        let got = b
            .request(
                Method::GET,
                &format!("/v2/app/manifests/{}", a.manifest),
                &[("accept", media::OCI_MANIFEST)],
            )
            .await;
        assert_eq!(got.status, StatusCode::OK);
        same(got.bytes(), &a.body);
    }
    let upstream = fake.requests();
    assert!(
        upstream
            .iter()
            .all(|r| r.path == tag || lists.contains(&r.path)),
        "only the failing tag and lists went upstream: {upstream:?}"
    );
}

#[tokio::test]
async fn without_the_token_or_with_a_bad_body_nothing_is_fetched() {
    let fake = FakeRegistry::start().await;
    app(&fake);
    let secrets = tempfile::tempdir().unwrap();
    let b = berth(&fake, &admin_toml(secrets.path(), TOKEN)).await;
    let body = r#"{"images": ["app:1"]}"#;

    for token in [None, Some("wrong-token-0123456789abcdef0123456789")] {
        let got = post_warm(&b, body, token).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(got.code(), "UNAUTHORIZED");
        assert!(
            got.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer ")
        );
    }
    for (bad, says) in [
        ("", "the body is not a warm request"),
        ("{\"images\": [\"app:1\"", "the body is not a warm request"),
        (
            r#"{"images": ["app:1"], "jobs": 9}"#,
            "unknown field `jobs`",
        ),
        (r#"{"images": []}"#, "\"images\" is empty"),
        (
            r#"{"images": ["app:1", "App:Bad:Ref"]}"#,
            "nothing was warmed: images[1]: ",
        ),
        (
            r#"{"images": ["app:1"], "platforms": ["linux"]}"#,
            "nothing was warmed: platforms[0]: ",
        ),
    ] {
        let got = post_warm(&b, bad, Some(TOKEN)).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(detail(&got).contains(says), "{bad}: {}", detail(&got));
    }
    // More than the bound: refused whole, by count or by size.
    let many: Vec<String> = (0..1001).map(|i| format!("\"a{i}\"")).collect();
    let got = post_warm(
        &b,
        &format!(r#"{{"images": [{}]}}"#, many.join(",")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(detail(&got).contains("at most 1000"), "{}", detail(&got));
    // Just over the bound, so the few bytes left unread do not cut the answer off.
    let huge = format!(r#"{{"images": ["{}"]}}"#, "a".repeat(1 << 20));
    let got = post_warm(&b, &huge, Some(TOKEN)).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(
        detail(&got).contains("could not be read"),
        "{}",
        detail(&got)
    );
    // Only POST.
    let got = b
        .client
        .request(
            Request::get(format!("http://{}/admin/warm", b.metrics))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::METHOD_NOT_ALLOWED);

    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn one_warm_at_a_time_a_second_is_told_to_retry() {
    let fake = FakeRegistry::start().await;
    let (layer, blob, release) = gated_blob(&fake, 100_000, 7, 1);
    let img = image(
        &fake,
        "library/app",
        "amd64",
        std::slice::from_ref(&layer),
        0,
    );
    fake.tag("library/app", "slow", &img.manifest);
    let secrets = tempfile::tempdir().unwrap();
    let b = berth(&fake, &admin_toml(secrets.path(), TOKEN)).await;
    let body = r#"{"images": ["app:slow"]}"#;

    let first = post_warm(&b, body, Some(TOKEN));
    let second = async {
        // The first warm is in its blobs, the layer held by the gate.
        support::instance::until_metric(&b, "berth_fills_in_flight", 1).await;
        let got = post_warm(&b, body, Some(TOKEN)).await;
        release.send(usize::MAX - 1).unwrap();
        got
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.code(), "TOOMANYREQUESTS");
    assert_eq!(second.header("retry-after"), Some("30"));
    assert!(detail(&second).contains("a warm is running"));
    let w = warmed(&first);
    assert_eq!(
        (w.warmed.as_slice(), w.blobs),
        (&["app:slow".to_owned()][..], 2)
    );

    // The slot is free again once the first has ended: a second warm is all hits.
    b.settled().await;
    fake.reset_counts();
    let again = warmed(&post_warm(&b, body, Some(TOKEN)).await);
    assert_eq!(again.warmed, ["app:slow"]);
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
        0
    );
    same(
        b.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
}

#[tokio::test]
async fn a_berth_with_auth_warms_without_a_password_and_names_what_failed() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    // One user whose password nobody here knows.
    std::fs::write(
        &htpasswd,
        "alice:$2y$10$AumV7ft8qMOicWnalyZuSOzWoqXo9vQ41ShidQoou6XeAuFNET1um\n",
    )
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}\n[auth]\nhtpasswd = \"{}\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\n\
         default = true\nlibrary_prefix = true\n{}",
        listeners_and_storage(dir.path()),
        htpasswd.display(),
        fake.url(),
        admin_toml(secrets.path(), TOKEN)
    );
    let b = start_toml(&cfg, dir).await;
    let path = format!("/v2/app/blobs/{}", app.arm64.blobs[1].0);
    assert_eq!(b.get(&path).await.status, StatusCode::UNAUTHORIZED);

    let got = post_warm(
        &b,
        r#"{"images": ["app:1", "app:missing"], "platforms": ["linux/arm64"]}"#,
        Some(TOKEN),
    )
    .await;
    let w = warmed(&got);
    assert_eq!(w.warmed, ["app:1"]);
    assert_eq!(w.failed.len(), 1);
    assert_eq!(w.failed[0].image, "app:missing");
    assert!(
        w.failed[0].reason.contains("MANIFEST_UNKNOWN"),
        "{:?}",
        w.failed
    );
    // The index and the arm64 platform only; its config and two layers.
    assert_eq!((w.manifests, w.referrers, w.blobs), (2, None, 3));
    b.settled().await;
    assert!(b.blob_file(&app.arm64.blobs[1].0).exists());
    assert!(!b.blob_file(&app.amd64.blobs[2].0).exists());
    // Warming opened nothing to anonymous clients.
    assert_eq!(b.get(&path).await.status, StatusCode::UNAUTHORIZED);
}

/// `berth warm --url`: the binary asks the admin API, with the config's token, and prints what a
/// local run prints.
#[tokio::test]
async fn berth_warm_url_goes_through_the_admin_api() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let secrets = tempfile::tempdir().unwrap();
    let b = berth(&fake, &admin_toml(secrets.path(), TOKEN)).await;
    // A config naming the admin token `token` (in a directory of its own).
    let config = |token: &str| {
        let dir = secrets.path().join(token.len().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        let text = format!(
            "[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n{}",
            fake.url(),
            admin_toml(&dir, token)
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |config: Option<std::path::PathBuf>, extra: &'static [&'static str]| {
        let url = format!("http://{}", b.metrics);
        async move {
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
            cmd.arg("warm")
                .env_remove("BERTH_CONFIG")
                .stdin(std::process::Stdio::null());
            if let Some(c) = config {
                cmd.arg("--config").arg(c);
            }
            let out = cmd
                .args(["--url", &url])
                .args(extra)
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    let good = config(TOKEN);
    let (code, stdout, stderr) = run(Some(good.clone()), &["app:1", "app:nope"]).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("warmed app:1\n"), "{stdout}");
    assert!(
        stdout.contains("warmed 1/2 images: 3 manifests, 5 blobs, ")
            && stdout.contains("; 1 failed: app:nope"),
        "{stdout}"
    );
    assert!(
        stderr.contains("failed app:nope: MANIFEST_UNKNOWN"),
        "{stderr}"
    );
    b.settled().await;
    assert!(b.blob_file(&app.arm64.blobs[2].0).exists());
    fake.reset_counts();

    // A wrong token, no token in the config, a bad reference: exit 2, nothing asked.
    let wrong = config("another-token-0123456789abcdef0123456789");
    let (code, _, stderr) = run(Some(wrong), &["app:1"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    let (code, _, stderr) = run(None, &["app:1"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--url needs the admin token"), "{stderr}");
    let (code, _, stderr) = run(Some(good), &["Bad Ref"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not an image reference"), "{stderr}");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

/// TLS on the registry listener, with a certificate for a public name only (not the loopback
/// address): the warm never goes through that listener, so nothing about it is in the way.
#[tokio::test]
async fn tls_on_the_registry_listener_is_not_in_the_way() {
    let fake = FakeRegistry::start().await;
    let app = app(&fake);
    let dir = tempfile::tempdir().unwrap();
    let pair = support::certs::self_signed(dir.path(), "registry", &["mirror.example"]);
    let secrets = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n\
         [[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n\
         library_prefix = true\n{}",
        pair.cert.display(),
        pair.key.display(),
        dir.path().display(),
        fake.url(),
        admin_toml(secrets.path(), TOKEN)
    );
    let b = start_toml(&cfg, dir).await;
    let w = warmed(&post_warm(&b, r#"{"images": ["app:1"]}"#, Some(TOKEN)).await);
    assert_eq!(
        (w.warmed.as_slice(), w.manifests, w.blobs),
        (&["app:1".to_owned()][..], 3, 5)
    );
    b.settled().await;
    for (d, _) in app.amd64.blobs.iter().chain(&app.arm64.blobs) {
        assert!(b.blob_file(d).exists(), "{d}");
    }
}

/// CPU seconds (user + system) of this process, and of its waited-for children, from
/// `/proc/self/stat` (in clock ticks of 1/100 s).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name in parentheses (which may hold spaces).
    let rest: Vec<f64> = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 of stat(5): 11-14 after the name.
    ((rest[11] + rest[12]) / 100.0, (rest[13] + rest[14]) / 100.0)
}

/// How long and how much CPU a warm of cached content takes, in process through the admin API
/// and over loopback with `berth warm`: the cost of the in-process transport (the design question
/// of `http::warm`). Prints the figures; run with
/// `cargo test --test it admin_warm::measure -- --ignored --nocapture` (figures in the report
/// of the change that added it).
#[tokio::test]
#[ignore]
async fn measure_in_process_against_loopback() {
    let fake = FakeRegistry::start().await;
    let layers: Vec<Bytes> = (0..4).map(|i| random_bytes(32 << 20, 100 + i)).collect();
    let img = image(&fake, "library/big", "amd64", &layers, 0);
    fake.tag("library/big", "1", &img.manifest);
    let secrets = tempfile::tempdir().unwrap();
    let b = berth(&fake, &admin_toml(secrets.path(), TOKEN)).await;
    let body = r#"{"images": ["big:1"]}"#;
    // Cold: every blob from the upstream, hashed and written.
    let (cpu, _) = cpu_seconds();
    let t = std::time::Instant::now();
    let w = warmed(&post_warm(&b, body, Some(TOKEN)).await);
    b.settled().await;
    println!(
        "cold admin API (in process): {:.3}s wall, {:.2} CPU s",
        t.elapsed().as_secs_f64(),
        cpu_seconds().0 - cpu
    );
    let total: u64 = img.blobs.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(w.bytes, total);
    let other = berth(&fake, "").await;
    let (cpu, children) = cpu_seconds();
    let t = std::time::Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "warm",
            "--server",
            &format!("http://{}", other.addr),
            "big:1",
        ])
        .env_remove("BERTH_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    other.settled().await;
    assert_eq!(out.status.code(), Some(0));
    let (cpu_after, children_after) = cpu_seconds();
    println!(
        "cold berth warm (loopback): {:.3}s wall, {:.2} CPU s in berth, {:.2} in the client",
        t.elapsed().as_secs_f64(),
        cpu_after - cpu,
        children_after - children
    );
    let server = format!("http://{}", b.addr);
    for round in 0..3 {
        let (cpu, _) = cpu_seconds();
        let t = std::time::Instant::now();
        let w = warmed(&post_warm(&b, body, Some(TOKEN)).await);
        let (wall, cpu_after) = (t.elapsed().as_secs_f64(), cpu_seconds().0);
        assert!(w.failed.is_empty());
        println!(
            "round {round} admin API (in process): {:.3}s wall, {:.2} CPU s, {} bytes",
            wall,
            cpu_after - cpu,
            w.bytes
        );
        let (cpu, children) = cpu_seconds();
        let t = std::time::Instant::now();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["warm", "--server", &server, "big:1"])
            .env_remove("BERTH_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let wall = t.elapsed().as_secs_f64();
        let (cpu_after, children_after) = cpu_seconds();
        assert_eq!(out.status.code(), Some(0));
        println!(
            "round {round} berth warm (loopback): {:.3}s wall, {:.2} CPU s in berth, {:.2} in the client",
            wall,
            cpu_after - cpu,
            children_after - children
        );
    }
}

struct Sink(std::sync::mpsc::Sender<Vec<u8>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The warm's requests are in the request log, one line each, as the user `admin:warm`.
#[tokio::test]
async fn the_request_log_names_the_warm_as_its_user() {
    use berth::logwriter::{BatchWriter, Batching};
    // The lines are written at INFO: a subscriber that lets INFO through, on this test's thread
    // (a current-thread runtime runs every task here).
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::level_filters::LevelFilter::INFO)
        .with_writer(std::io::sink)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let fake = FakeRegistry::start().await;
    app(&fake);
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n\
         library_prefix = true\n{}",
        listeners_and_storage(dir.path()),
        fake.url(),
        admin_toml(secrets.path(), TOKEN)
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let (writer, guard) = BatchWriter::spawn(Sink(tx), Batching::default());
    let server = berth::server::Server::bind(&berth::config::Config::parse(&cfg, "test").unwrap())
        .await
        .unwrap()
        .log_requests_to(Some(writer));
    let metrics = server.metrics_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let ready = support::instance::eventually(|| async move {
        post_warm_at(metrics, r#"{"images": ["app:1"]}"#, Some(TOKEN))
            .await
            .status
            == StatusCode::OK
    })
    .await;
    assert!(ready);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    drop(guard);
    let out = String::from_utf8(rx.try_iter().flatten().collect()).unwrap();
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" path=/v2/")).collect();
    // /v2/, the index and two platforms, two configs and three layers.
    assert_eq!(lines.len(), 9, "{out}");
    assert!(
        lines.iter().all(|l| l.contains(" user=\"admin:warm\"")),
        "{out}"
    );
}
