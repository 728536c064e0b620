//! The container image (deploy/container/): staged by stage.sh, built with `podman build` from the
//! repository root, run with podman (host network) in front of the in-process fake registry and
//! pulled through. Checks that the image is small, runs berth as the non-root berth user with its
//! cache on the named volume, answers its HEALTHCHECK, and serves verified bytes, the second pull
//! from its cache.
//!
//! Needs root and podman (tests/install-deps.sh), hence `#[ignore]`; tests/run.sh runs it with
//! `-- --ignored`. Podman's storage (vfs) lives under a temp dir and goes with it.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::process::Command;
use tokio::time::Instant;

use berth::oci::media;
use support::ports::{Dead, free_port};
use support::{FakeRegistry, digest_of, random_bytes};

const IMAGE: &str = "localhost/berth-test:latest";
const CONTAINER: &str = "berth-test";
const VOLUME: &str = "berth-test-cache";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// podman with its own storage under a temp dir; removes what it created when dropped.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        // podman refuses a runroot path longer than 50 characters: keep it short.
        let dir = tempfile::Builder::new()
            .prefix("bc")
            .tempdir_in("/tmp")
            .unwrap();
        Podman { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .current_dir(repo())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .await
            .expect("podman not found: run tests/install-deps.sh")
    }

    /// Runs podman and insists it succeeds; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "podman {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let podman = |args: &[&str]| {
            let _ = std::process::Command::new("podman")
                .arg("--root")
                .arg(self.dir.path().join("root"))
                .arg("--runroot")
                .arg(self.dir.path().join("run"))
                .args(["--storage-driver", "vfs"])
                .args(args)
                .output();
        };
        podman(&["rm", "--force", "--time", "0", CONTAINER]);
        podman(&["volume", "rm", "--force", VOLUME]);
        podman(&["rmi", "--force", IMAGE]);
        // The temp dir (vfs layers, volume, run state) goes with `dir`.
    }
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Option<(http::StatusCode, http::HeaderMap, Bytes)> {
    let resp = client.get(url.parse().unwrap()).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((parts.status, parts.headers, body))
}

/// The owner uid of a process, from /proc.
fn process_uid(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_owned()
}

fn file_uid(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).unwrap().uid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and podman; run by tests/run.sh"]
async fn image_builds_runs_as_berth_and_serves_pulls() {
    // Stage with the binary this test run built (the release build is stage.sh's default).
    let stage = Command::new("bash")
        .arg(repo().join("deploy/container/stage.sh"))
        .env("BERTH_BIN", env!("CARGO_BIN_EXE_berth"))
        .current_dir(repo())
        .output()
        .await
        .unwrap();
    assert!(
        stage.status.success(),
        "stage.sh failed: {}",
        String::from_utf8_lossy(&stage.stderr)
    );

    let podman = Podman::new();
    let started = Instant::now();
    podman
        .ok(&[
            "build",
            "--format",
            "docker",
            "-f",
            "deploy/container/Containerfile",
            "-t",
            IMAGE,
            ".",
        ])
        .await;
    let built_in = started.elapsed();
    let size: u64 = podman
        .ok(&["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .await
        .parse()
        .unwrap();
    eprintln!(
        "image built in {:.1}s, {:.1} MiB",
        built_in.as_secs_f64(),
        size as f64 / (1 << 20) as f64
    );
    // The debug binary (debug info stripped) and four glibc files: no base image, no shell.
    assert!(size < 64 << 20, "image is {size} bytes");
    let config = podman
        .ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{json .Config.ExposedPorts}}|{{json .Config.Volumes}}|{{json .Config.Healthcheck.Test}}",
            IMAGE,
        ])
        .await;
    for want in [
        "berth:berth|",
        r#"["berth"]"#,
        r#"["serve","--config","/etc/berth/config.toml"]"#,
        "5000/tcp",
        "9090/tcp",
        "/var/lib/berth",
        r#""berth","health""#,
    ] {
        assert!(config.contains(want), "image config lacks {want}: {config}");
    }

    let run = ["--runtime", "runc", "--ulimit", "nofile=4096:4096"];
    let run = [
        &run[..],
        &["--ulimit", "nproc=1024:1024", "--network", "host"],
    ]
    .concat();
    // The image's own config is valid as shipped.
    let mut args = vec!["run", "--rm"];
    args.extend(&run);
    args.extend([IMAGE, "check-config", "--config", "/etc/berth/config.toml"]);
    let shipped = podman.ok(&args).await;
    assert!(shipped.contains("0.0.0.0:5000"), "{shipped}");

    // An upstream on loopback, and a config (mounted as the README says) pointing at it.
    let fake = FakeRegistry::start().await;
    let layers: Vec<Bytes> = (0..3)
        .map(|i| random_bytes(300_000 + i, 40 + i as u64))
        .collect();
    let blobs: Vec<String> = layers
        .iter()
        .map(|l| fake.put_blob("library/app", l.clone()))
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{}"}},"layers":[{}]}}"#,
        media::DOCKER_MANIFEST,
        layers[0].len(),
        blobs[0],
        blobs[1..]
            .iter()
            .zip(&layers[1..])
            .map(|(d, l)| format!(
                r#"{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{d}"}}"#,
                l.len()
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let manifest_digest = fake.put_tagged(
        "library/app",
        "1.0",
        media::DOCKER_MANIFEST,
        manifest.clone(),
    );
    // berth in the container is told its ports (host networking).
    let (port, metrics) = (free_port(), free_port());
    let cfg = podman.dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[storage]\npath = \"/var/lib/berth\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\nlibrary_prefix = true\n",
            fake.url()
        ),
    )
    .unwrap();
    let mount = format!("{}:/etc/berth/config.toml:ro", cfg.display());
    let volume = format!("{VOLUME}:/var/lib/berth");
    let health_env = format!("BERTH_HEALTH_URL=http://127.0.0.1:{metrics}/healthz");
    let mut args = vec!["run", "--detach", "--name", CONTAINER];
    args.extend(&run);
    args.extend(["-e", &health_env, "-v", &mount, "-v", &volume, IMAGE]);
    podman.ok(&args).await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Some((status, _, _)) = get(&client, &format!("{base}/v2/")).await {
            assert_eq!(status, 200);
            break;
        }
        if Instant::now() > deadline {
            let logs = podman.run(&["logs", CONTAINER]).await;
            panic!(
                "berth in the container did not answer within 30s:\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
    }

    // Pull twice: manifest and blobs, each checked against its digest.
    for round in 0..2 {
        let (status, headers, body) = get(&client, &format!("{base}/v2/app/manifests/1.0"))
            .await
            .unwrap();
        assert_eq!(status, 200, "round {round}");
        assert_eq!(digest_of(&body), manifest_digest);
        assert_eq!(
            headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok()),
            Some(manifest_digest.as_str())
        );
        for (blob, layer) in blobs.iter().zip(&layers) {
            let (status, _, body) = get(&client, &format!("{base}/v2/app/blobs/{blob}"))
                .await
                .unwrap();
            assert_eq!(status, 200);
            assert_eq!(&digest_of(&body), blob);
            assert_eq!(body.len(), layer.len());
        }
    }
    for blob in &blobs {
        assert_eq!(
            fake.hits(http::Method::GET, &format!("/v2/library/app/blobs/{blob}")),
            1,
            "the second pull went upstream again"
        );
    }

    // berth runs as the berth user (uid 10001), and its cache files on the volume are that user's.
    let pid = podman
        .ok(&["inspect", "--format", "{{.State.Pid}}", CONTAINER])
        .await;
    assert_eq!(process_uid(&pid), "10001");
    let mountpoint = podman
        .ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", VOLUME])
        .await;
    let cached = Path::new(&mountpoint)
        .join("blobs/sha256")
        .join(blobs[0].trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(&cached).unwrap(), layers[0]);
    assert_eq!(file_uid(&cached), 10001);

    // The image's HEALTHCHECK, run by podman inside the container: healthy. A probe of a port
    // nothing listens on fails.
    let health = podman.run(&["healthcheck", "run", CONTAINER]).await;
    assert!(
        health.status.success(),
        "healthcheck: {}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    let dead = Dead::new();
    let dead = format!("http://{}/healthz", dead.addr());
    let probe = podman
        .run(&["exec", CONTAINER, "berth", "health", "--url", &dead])
        .await;
    assert_eq!(probe.status.code(), Some(1));

    // SIGTERM (podman stop) ends it cleanly.
    podman.ok(&["stop", "--time", "10", CONTAINER]).await;
    let code = podman
        .ok(&["inspect", "--format", "{{.State.ExitCode}}", CONTAINER])
        .await;
    assert_eq!(code, "0");
}
