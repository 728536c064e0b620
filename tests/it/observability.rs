//! The operator's view, checked with the real tools: `promtool` checks and unit-tests the rules in
//! `deploy/prometheus/`, and a real Prometheus scrapes a real berth (in process, on a real port)
//! under traffic from the fake upstream, with the rules loaded. Every expression of every panel in
//! `deploy/grafana/berth.json` (parsed here, so a panel added later is checked too) and every
//! recording rule must then return data through Prometheus's query API, and the alerts the traffic
//! provokes must show up in `ALERTS`.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`, installed by
//! tests/install-deps.sh), hence `#[ignore]`; tests/run.sh runs them with `-- --ignored`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use berth::oci::media;
use support::instance::{Berth, gated_blob, same, start_with, until_metric};
use support::{FakeRegistry, Fault, random_bytes};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_file("deploy/prometheus"))
        .output()
        .expect("promtool not found: run tests/install-deps.sh");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs promtool (apt package prometheus); run by tests/run.sh"]
fn promtool_checks_and_unit_tests_the_rules() {
    promtool(&["check", "rules", "berth-alerts.yml"]);
    promtool(&["test", "rules", "berth-alerts.test.yml"]);
}

/// Every PromQL expression in the dashboard, with Grafana's variables set as "All" would set them.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/berth.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    collect_targets(&dash["panels"], &mut out);
    assert!(
        out.len() >= 20,
        "only {} panel expressions found",
        out.len()
    );
    out.into_iter()
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$job", ".+")
                .replace("$instance", ".+");
            assert!(!expr.contains('$'), "unknown variable in {title}: {expr}");
            (title, expr)
        })
        .collect()
}

/// (panel title, expr) of every target, rows' nested panels included.
fn collect_targets(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
    for p in panels.as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: target without expr"));
            out.push((title.to_owned(), expr.to_owned()));
        }
        if p["type"] != "row" {
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "panel {title} has no query"
            );
        }
        collect_targets(&p["panels"], out);
    }
}

/// A Prometheus server under a temp dir, killed (by its pid) when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: ['{target}']\n",
                repo_file("deploy/prometheus/berth-alerts.yml").display()
            ),
        )
        .unwrap();
        // A port free a moment ago; Prometheus cannot be told to pick one and say which.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus not found: run tests/install-deps.sh");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, b: &Berth, path_and_query: &str) -> Option<(StatusCode, Bytes)> {
        let uri = format!("{}{path_and_query}", self.url).parse().unwrap();
        let resp = b.client.get(uri).await.ok()?;
        let status = resp.status();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    }

    async fn until_ready(&self, b: &Berth) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if let Some((StatusCode::OK, _)) = self.get(b, "/-/ready").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30s:\n{}",
                self.log()
            );
        }
    }

    /// Every rule Prometheus loaded, with its health.
    async fn rules(&self, b: &Berth) -> Vec<serde_json::Value> {
        let (_, body) = self.get(b, "/api/v1/rules").await.expect("rules API");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect()
    }

    /// The instant query's result vector (empty on no data or error).
    async fn query(&self, b: &Berth, expr: &str) -> Vec<serde_json::Value> {
        let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let Some((_, body)) = self.get(b, &format!("/api/v1/query?query={q}")).await else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_ne!(
            v["status"], "error",
            "prometheus refused {expr}: {}",
            v["error"]
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Some sample in `result` holds a number (histogram_quantile over no traffic gives NaN: a
/// panel with nothing to show).
fn has_data(result: &[serde_json::Value]) -> bool {
    result.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

const DOCKER: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;
const KIB: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus (apt package prometheus); run by tests/run.sh"]
async fn every_dashboard_panel_and_recording_rule_returns_data() {
    let exprs = dashboard_expressions();
    let fake = std::sync::Arc::new(FakeRegistry::start().await);
    // Docker Hub's headers: 5 of 100 left, below the alert's 10%.
    fake.response_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "5;w=21600"),
    ]);
    let b = std::sync::Arc::new(
        start_with(
            &fake,
            "max_size = \"1MiB\"\nhigh_watermark = \"90%\"\nlow_watermark = \"50%\"",
            "retry_backoff = \"1ms\"\ntag_ttl = \"1s\"",
            tempfile::tempdir().unwrap(),
        )
        .await,
    );
    let prom = Prometheus::start(b.metrics);
    prom.until_ready(&b).await;

    // One-off events. A manifest: a miss here, hits in the traffic below.
    fake.put_tagged("library/app", "1.0", media::DOCKER_MANIFEST, DOCKER);
    assert_eq!(b.get("/v2/app/manifests/1.0").await.status, 200);
    // A tag whose upstream then fails: once its TTL is up it is answered stale.
    fake.put_tagged(
        "library/app",
        "old",
        media::DOCKER_MANIFEST,
        DOCKER.replace('2', "2  "),
    );
    assert_eq!(b.get("/v2/app/manifests/old").await.status, 200);
    fake.fault(
        "/v2/library/app/manifests/old",
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
    );
    // Two clients on one blob download: the second joins the first.
    let (layer, blob, release) = gated_blob(&fake, 100 * KIB, 1, 1);
    let path = format!("/v2/app/blobs/{blob}");
    let first = tokio::spawn({
        let (b, path) = (b.clone(), path.clone());
        async move { b.get(&path).await }
    });
    until_metric(&b, "berth_fills_in_flight", 1).await;
    let second = tokio::spawn({
        let (b, path) = (b.clone(), path.clone());
        async move { b.get(&path).await }
    });
    until_metric(&b, "berth_coalesced_requests_total{kind=\"blob\"}", 1).await;
    release.send(layer.len()).unwrap();
    same(first.await.unwrap().bytes(), &layer);
    same(second.await.unwrap().bytes(), &layer);
    // Wrong bytes from upstream: refused, counted, the alert fires.
    fake.put_tagged(
        "library/bad",
        "1",
        media::DOCKER_MANIFEST,
        DOCKER.replace('2', "2 "),
    );
    fake.fault("/v2/library/bad/manifests/1", Fault::WrongBytes);
    assert_eq!(b.get("/v2/bad/manifests/1").await.status, 502);
    // An upstream failing: retried, then passed on.
    let broken = fake.put_blob("library/app", random_bytes(10 * KIB, 2));
    fake.fault(
        &format!("/v2/library/app/blobs/{broken}"),
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, None),
    );
    assert!(
        b.get(&format!("/v2/app/blobs/{broken}"))
            .await
            .status
            .is_server_error()
    );
    // A body that breaks off, resumed.
    let data = random_bytes(100 * KIB, 3);
    let resumed = fake.put_blob("library/app", data.clone());
    fake.fault_times(
        &format!("/v2/library/app/blobs/{resumed}"),
        Fault::CloseAfter(10 * KIB),
        1,
    );
    same(
        b.get(&format!("/v2/app/blobs/{resumed}")).await.bytes(),
        &data,
    );

    // Steady traffic while Prometheus scrapes, so every rate has two samples that differ: a new
    // blob each round (a miss, then a hit; the 1 MiB cache evicts), the manifest again (its tag
    // revalidated each second), a 404, the failing tag (stale once its second is up).
    // The interval only paces the load; nothing waits on it.
    let traffic = tokio::spawn({
        let (b, fake) = (b.clone(), fake.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            for seed in 100.. {
                tick.tick().await;
                let data = random_bytes(200 * KIB, seed);
                let digest = fake.put_blob("library/app", data.clone());
                for _ in 0..2 {
                    same(
                        b.get(&format!("/v2/app/blobs/{digest}")).await.bytes(),
                        &data,
                    );
                }
                assert_eq!(b.get("/v2/app/manifests/1.0").await.status, 200);
                assert_eq!(b.get("/v2/app/manifests/nope").await.status, 404);
                assert_eq!(b.get("/v2/app/manifests/old").await.status, 200);
            }
        }
    });

    // Recording rules as Prometheus loaded them.
    let rules: Vec<(String, String)> = prom
        .rules(&b)
        .await
        .into_iter()
        .filter(|r| r["type"] == "recording")
        .map(|r| {
            (
                "recording rule".to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(rules.len() >= 10, "recording rules not loaded: {rules:?}");
    let mut pending: Vec<(String, String)> = exprs.into_iter().chain(rules).collect();
    pending.push((
        "alert".into(),
        r#"ALERTS{alertname="BerthDigestMismatch",alertstate="firing",upstream="registry.test",kind="manifest"}"#.into(),
    ));
    pending.push((
        "alert".into(),
        r#"ALERTS{alertname="BerthDockerHubRateLimitLow",upstream="registry.test"}"#.into(),
    ));
    let total = pending.len();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !pending.is_empty() && Instant::now() < deadline {
        tick.tick().await;
        let mut still = Vec::new();
        for (title, expr) in pending {
            if !has_data(&prom.query(&b, &expr).await) {
                still.push((title, expr));
            }
        }
        pending = still;
    }
    assert!(
        !traffic.is_finished(),
        "the traffic task failed: {:?}",
        traffic.await
    );
    traffic.abort();
    assert!(
        pending.is_empty(),
        "no data after 90s for {} of {total} expressions:\n{}",
        pending.len(),
        pending
            .iter()
            .map(|(t, e)| format!("  [{t}] {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // By now every rule has been evaluated many times: none may have failed.
    for r in prom.rules(&b).await {
        assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
    }
    eprintln!(
        "all {total} expressions returned data after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
