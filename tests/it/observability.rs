//! The operator's view, checked with the real tools: `promtool` checks and unit-tests the rules in
//! `deploy/prometheus/`, and a real Prometheus scrapes a real berth (in process, on a real port)
//! under traffic from the fake upstream, with the rules loaded. Every expression of every panel in
//! `deploy/grafana/berth.json` (parsed here, so a panel added later is checked too) and every
//! recording rule must then return data through Prometheus's query API, and the alerts the traffic
//! provokes must show up in `ALERTS`. Prometheus scrapes three berths: one with a bucket tier (an
//! in-memory object store whose first multipart completion fails, so an abort is counted) and two
//! replicas of a `[cluster]` whose third peer is gone, so every family the bucket and cluster
//! panels and alerts read exists (the first is also a fleet parent, and a node reports another for
//! a bad piece; the replicas are fleet parents too, so their calls' forwarding is counted); every `berth_*` metric an expression names (panels, recording
//! rules, alerts) must then be one of the scraped berths' series.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`, installed by
//! tests/install-deps.sh), hence `#[ignore]`; tests/run.sh runs them with `-- --ignored`.

use crate::support;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use tokio::time::Instant;

use berth::cluster::auth::{self, PeerKey};
use berth::config::Secret;
use berth::oci::media;
use berth::store::s3::{Bucket, BucketMetrics};
use support::instance::{
    Berth, gated_blob, listeners_and_storage, same, start_on_listener, start_with_bucket,
    until_metric,
};
use support::ports::Dead;
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
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: [{}]\n",
                repo_file("deploy/prometheus/berth-alerts.yml").display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        // A port free a moment ago; Prometheus cannot be told to pick one and say which.
        let port = support::ports::free_port();
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

    /// Every metric name Prometheus holds series of.
    async fn names(&self, b: &Berth) -> BTreeSet<String> {
        let (_, body) = self
            .get(b, "/api/v1/label/__name__/values")
            .await
            .expect("label values API");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
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

/// The `berth_*` metric names in a PromQL expression (recording rules, `berth:*`, are not).
fn metric_names(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("berth_") {
        let starts_token = !rest[..at].ends_with(is_ident);
        let len = rest[at..]
            .find(|c: char| !is_ident(c))
            .unwrap_or(rest.len() - at);
        if starts_token {
            out.push(rest[at..at + len].to_owned());
        }
        rest = &rest[at + len..];
    }
    out
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            r#"sum by (job) (rate(berth_a_total{job="berth",x="berth_b"}[5m])) / berth:c:rate5m + xberth_d + berth_e_bucket"#
        ),
        ["berth_a_total", "berth_b", "berth_e_bucket"]
    );
}

/// An in-memory bucket whose first multipart upload fails at its completion (the bucket failing
/// mid-upload), so berth aborts it and counts the abort and the failed upload.
#[derive(Debug)]
struct FirstCompletionFails {
    inner: InMemory,
    failed: Arc<AtomicBool>,
}

impl fmt::Display for FirstCompletionFails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FirstCompletionFails(memory)")
    }
}

#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    failed: Arc<AtomicBool>,
}

#[async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "test",
                source: "injected: completion failed".into(),
            });
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for FirstCompletionFails {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FailingUpload {
            inner,
            failed: self.failed.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

const SECRET: &str = "cluster-secret-0123456789abcdef-0123456789";

/// Two replicas of one `[cluster]` in front of `fake`, whose third peer is a port nobody listens
/// on (seen down by both) while the returned [`Dead`] lives, and the directory of their secret
/// file. Both are fleet parents too (`[fleet]` with `fleet_secret`): the owner-forwarding family.
async fn two_replicas_and_a_gone_one(
    fake: &FakeRegistry,
    fleet_secret: &Path,
) -> (Vec<Berth>, tempfile::TempDir, Dead) {
    let listeners: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let gone = Dead::new();
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap())
        .chain([gone.addr()])
        .map(|a| format!("\"http://{a}\""))
        .collect();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("cluster-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let mut berths = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "{}[cluster]\nself = {}\npeers = [{}]\nsecret_file = {:?}\n\
             health_interval = \"200ms\"\npeer_timeout = \"2s\"\n\
             [fleet]\nsecret_file = {:?}\n\
             [[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n\
             library_prefix = true\n",
            listeners_and_storage(dir.path()),
            urls[i],
            urls.join(", "),
            secret.display().to_string(),
            fleet_secret.display().to_string(),
            fake.url()
        );
        berths.push(start_on_listener(&cfg, dir, listener).await.0);
    }
    (berths, secret_dir, gone)
}

const FLEET_SECRET: &str = "fleet-secret-0123456789abcdef-0123456789";

/// Two signed swarm calls to the parent `b`: node 1 joins a digest, node 2 joins it reporting
/// node 1 for a bad piece (`berth_fleet_sources_dropped_total{reason="bad_piece"}`).
async fn fleet_bad_piece(b: &Berth) {
    use berth::swarm::protocol::SwarmRequest;
    use berth::swarm::tracker::Reason;
    use http_body_util::Full;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let d = berth::oci::Digest::of(b"a blob the fleet pulls");
    let path = berth::fleet::swarm_path(&d, Some(1 << 20));
    let node = |i: u8| format!("http://10.0.0.{i}:5000").parse().unwrap();
    let calls = [
        SwarmRequest {
            node: node(1),
            have: 0,
            complete: false,
            need_source: true,
            uploads: None,
            dropped: None,
        },
        SwarmRequest {
            node: node(2),
            have: 0,
            complete: false,
            need_source: true,
            uploads: None,
            dropped: Some((node(1), Reason::BadPiece)),
        },
    ];
    for call in calls {
        let key = berth::fleet::key(&Secret::new(FLEET_SECRET));
        let body = call.encode();
        let (proof, named) = berth::fleet::sign_body(&key, "POST", &path, &body, auth::now());
        let req = http::Request::post(format!("http://{}{path}", b.addr))
            .header("authorization", proof)
            .header(berth::fleet::BODY_HEADER, named)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(
        b.counter("berth_fleet_sources_dropped_total{reason=\"bad_piece\"}")
            .await,
        1
    );
}

/// Families the berths here do not expose, each checked by its own test: write errors appear on
/// their first failed write (a full disk: tests/enospc.rs); TLS reloads are registered only
/// with TLS on a listener (tests/service.rs).
const NOT_EXPOSED_HERE: &[&str] = &["berth_store_write_errors_total", "berth_tls_reloads_total"];

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
    // The main berth: a small cache that evicts, and a bucket tier whose blob uploads (64 KiB
    // parts, so 100 KiB and up go multipart) fail once at completion.
    // A signature policy in warn mode over one repository, whose image is unsigned: each pull of
    // it is served, counted (warned) and alerted on.
    let dir = tempfile::tempdir().unwrap();
    // It is also a fleet parent (`[fleet]` without `parent`): the tracker's families.
    let fleet_dir = tempfile::tempdir().unwrap();
    let fleet_secret = fleet_dir.path().join("fleet-secret");
    std::fs::write(&fleet_secret, FLEET_SECRET).unwrap();
    let key = dir.path().join("release.pub");
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl ecparam -name prime256v1 -genkey -noout | openssl pkey -pubout -out {}",
            key.display()
        ))
        .status()
        .expect("openssl runs");
    assert!(made.success());
    let cfg = format!(
        "{}max_size = \"1MiB\"\nhigh_watermark = \"90%\"\nlow_watermark = \"50%\"\n\
         [[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n\
         library_prefix = true\nretry_backoff = \"1ms\"\ntag_ttl = \"1s\"\n\
         [[policy]]\nname = \"release\"\nupstreams = [\"*\"]\nrepositories = [\"library/policed\"]\n\
         mode = \"warn\"\nkeys = [{:?}]\n\
         [fleet]\nsecret_file = {:?}\n",
        listeners_and_storage(dir.path()),
        fake.url(),
        key.display().to_string(),
        fleet_secret.display().to_string()
    );
    let store = FirstCompletionFails {
        inner: InMemory::new(),
        failed: Arc::new(AtomicBool::new(false)),
    };
    let bucket = Bucket::with_store(Arc::new(store), "mirror/", BucketMetrics::new())
        .with_part_size(64 * KIB);
    let b = Arc::new(start_with_bucket(&cfg, dir, bucket).await);
    let (replicas, _secret, _gone) = two_replicas_and_a_gone_one(&fake, &fleet_secret).await;
    let replicas = Arc::new(replicas);
    // A fleet node of it: the node's swarm families, and a blob pulled through it below.
    let node_dir = tempfile::tempdir().unwrap();
    let node_cfg = crate::fleet::node_toml(
        node_dir.path(),
        &format!("http://{}", b.addr),
        &fleet_secret,
    );
    let node = support::instance::start_toml(&node_cfg, node_dir).await;
    let prom = Prometheus::start(&[
        b.metrics,
        replicas[0].metrics,
        replicas[1].metrics,
        node.metrics,
    ]);
    prom.until_ready(&b).await;

    // A blob through the node: its fill comes through the swarm, from the parent.
    let shared = random_bytes(64 * KIB, 4);
    let shared_blob = fake.put_blob("library/app", shared.clone());
    same(
        node.get(&format!("/v2/app/blobs/{shared_blob}"))
            .await
            .bytes(),
        &shared,
    );
    assert_eq!(
        node.counter("berth_fleet_bytes_total{source=\"parent\"}")
            .await,
        shared.len() as u64
    );

    // One-off events. A manifest: a miss here, hits in the traffic below.
    fake.put_tagged("library/app", "1.0", media::DOCKER_MANIFEST, DOCKER);
    fake.put_tagged("library/policed", "1", media::DOCKER_MANIFEST, DOCKER);
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
    // Its upload to the bucket (two parts) fails at completion: aborted and counted.
    until_metric(
        &b,
        "berth_bucket_multipart_aborts_total{reason=\"error\"}",
        1,
    )
    .await;
    assert_eq!(
        b.counter("berth_bucket_requests_total{op=\"upload\",outcome=\"error\"}")
            .await,
        1
    );
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

    // A fleet node reports another for a bad piece: counted, and the alert fires.
    fleet_bad_piece(&b).await;

    // Steady traffic while Prometheus scrapes, so every rate has two samples that differ: a new
    // blob each round (a miss, then a hit; the 1 MiB cache evicts; uploaded to the bucket), one
    // from 8 rounds ago (evicted by now, unless its upload was still queued: from the bucket),
    // the manifest again (its tag revalidated each second), a 404, the failing tag (stale once
    // its second is up). On the cluster: the new blob through both replicas (one of them owns it,
    // the other asks it), and a probe signed with another secret (refused, bad_proof).
    // The interval only paces the load; nothing waits on it.
    let traffic = tokio::spawn({
        let (b, fake, replicas) = (b.clone(), fake.clone(), replicas.clone());
        async move {
            let wrong = PeerKey::new(&Secret::new("another-secret-0123456789abcdef-012345"));
            let health = berth::cluster::HEALTH_PATH;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut blobs = Vec::new();
            for seed in 100.. {
                tick.tick().await;
                let data = random_bytes(200 * KIB, seed);
                let digest = fake.put_blob("library/app", data.clone());
                let path = format!("/v2/app/blobs/{digest}");
                for _ in 0..2 {
                    same(b.get(&path).await.bytes(), &data);
                }
                blobs.push((path, data));
                if let Some((old, data)) = blobs.len().checked_sub(8).map(|i| &blobs[i]) {
                    same(b.get(old).await.bytes(), data);
                }
                assert_eq!(b.get("/v2/app/manifests/1.0").await.status, 200);
                assert_eq!(b.get("/v2/app/manifests/nope").await.status, 404);
                assert_eq!(b.get("/v2/policed/manifests/1").await.status, 200);
                assert_eq!(b.get("/v2/app/manifests/old").await.status, 200);
                let (path, data) = blobs.last().unwrap();
                for r in replicas.iter() {
                    same(r.get(path).await.bytes(), data);
                }
                let forged = wrong.sign("GET", health, auth::now());
                let refused = replicas[0]
                    .request(
                        Method::GET,
                        health,
                        &[("authorization", forged.to_str().unwrap())],
                    )
                    .await;
                assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
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
    pending.push((
        "alert".into(),
        r#"ALERTS{alertname="BerthFleetBadPieces",alertstate="firing"}"#.into(),
    ));
    pending.push((
        "alert".into(),
        r#"ALERTS{alertname="BerthPolicyDenials",alertstate="firing",policy="release",verdict="warned"}"#.into(),
    ));
    // Pending (both wait minutes before firing): the gone peer, and the forged probes.
    pending.push((
        "alert".into(),
        r#"ALERTS{alertname="BerthPeerDown"}"#.into(),
    ));
    pending.push((
        "alert".into(),
        r#"ALERTS{alertname="BerthPeerAuthFailing",reason="bad_proof"}"#.into(),
    ));
    // Shown in the cluster panels only once both replicas asked the owner of some blob.
    for source in ["local", "bucket", "peer", "upstream"] {
        pending.push((
            "answers".into(),
            format!(r#"berth_answers_total{{source="{source}"}}"#),
        ));
    }
    pending.push((
        "hand-offs".into(),
        r#"berth_owner_handoffs_total{result="peer"} > 0"#.into(),
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
    let rules = prom.rules(&b).await;
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
    }
    // Every metric a panel or a rule names is one the berths expose: a misspelt name would
    // otherwise leave a panel empty or an alert silent forever.
    let exposed = prom.names(&b).await;
    let named: BTreeSet<String> = dashboard_expressions()
        .iter()
        .map(|(_, e)| e.as_str())
        .chain(rules.iter().map(|r| r["query"].as_str().unwrap()))
        .flat_map(metric_names)
        .collect();
    let unknown: Vec<&String> = named
        .iter()
        .filter(|n| !exposed.contains(*n) && !NOT_EXPOSED_HERE.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics named in the dashboard or the rules that no berth exposes: {unknown:?}"
    );
    eprintln!(
        "all {total} expressions returned data after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
