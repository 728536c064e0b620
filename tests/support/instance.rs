//! berth itself, in process, in front of a [`FakeRegistry`](super::FakeRegistry): start it on a
//! temporary data directory, talk to it over a real socket, read its metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use berth::config::Config;
use berth::server::Server;

use super::{FakeRegistry, Fault, random_bytes};

/// A running berth in front of a fake registry.
pub struct Berth {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub client: Client<HttpConnector, Empty<Bytes>>,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's run, awaited by [`Berth::stop`]: it holds the storage directory's lock
    /// until it returns, so a berth restarted on the same directory waits for it.
    run: Option<tokio::task::JoinHandle<Result<(), berth::server::StartError>>>,
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A response read to its end; `body` is Err when the body failed (a short or broken response).
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Got {
    pub fn bytes(&self) -> &Bytes {
        self.body
            .as_ref()
            .unwrap_or_else(|e| panic!("body failed: {e}"))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(self.bytes()).unwrap();
        v["errors"][0]["code"].as_str().unwrap().to_owned()
    }
}

pub async fn berth(fake: &FakeRegistry, upstream_extra: &str) -> Berth {
    let dir = tempfile::tempdir().unwrap();
    start_on(fake, upstream_extra, dir).await
}

pub async fn start_on(fake: &FakeRegistry, upstream_extra: &str, dir: tempfile::TempDir) -> Berth {
    start_with(fake, "", upstream_extra, dir).await
}

/// Starts berth on `dir` with extra `[storage]` and `[[upstream]]` keys.
pub async fn start_with(
    fake: &FakeRegistry,
    storage_extra: &str,
    upstream_extra: &str,
    dir: tempfile::TempDir,
) -> Berth {
    let cfg = format!(
        r#"
        {}
        {storage_extra}
        [[upstream]]
        name = "registry.test"
        url = "{}"
        default = true
        library_prefix = true
        {upstream_extra}
        "#,
        listeners_and_storage(dir.path()),
        fake.url()
    );
    start_toml(&cfg, dir).await
}

/// The head of every test config: both listeners on port 0 (read back from the bound server),
/// the cache in `dir`; `[storage]` is last, so a caller may add its keys right after.
pub fn listeners_and_storage(dir: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [storage]\npath = \"{}\"\n",
        dir.display()
    )
}

/// Starts berth from a whole config text (listeners on port 0, storage in `dir`, chosen by the
/// caller).
pub async fn start_toml(cfg: &str, dir: tempfile::TempDir) -> Berth {
    start_reloadable(cfg, dir).await.0
}

/// As [`start_toml`], with what applies a new configuration to the running berth.
pub async fn start_reloadable(
    cfg: &str,
    dir: tempfile::TempDir,
) -> (Berth, berth::reload::Reloader) {
    let cfg = Config::parse(cfg, "test").unwrap();
    launch(Server::bind(&cfg).await.unwrap(), dir).await
}

/// Starts berth serving the registry on `listener`, bound already (so that a cluster's `self`
/// and `peers` can name it before berth starts); hands back its view of the cluster.
pub async fn start_on_listener(
    cfg: &str,
    dir: tempfile::TempDir,
    listener: std::net::TcpListener,
) -> (Berth, Option<std::sync::Arc<berth::cluster::Cluster>>) {
    let cfg = Config::parse(cfg, "test").unwrap();
    let server = Server::bind_with_registry(&cfg, listener).await.unwrap();
    let cluster = server.cluster().cloned();
    (launch(server, dir).await.0, cluster)
}

/// As [`start_on_listener`], with this bucket tier (see [`start_with_bucket`]): a replica of a
/// cluster over one bucket.
pub async fn start_on_listener_with_bucket(
    cfg: &str,
    dir: tempfile::TempDir,
    listener: std::net::TcpListener,
    bucket: berth::store::s3::Bucket,
) -> (Berth, Option<std::sync::Arc<berth::cluster::Cluster>>) {
    let cfg = Config::parse(cfg, "test").unwrap();
    let parts = berth::assemble::Parts::build(&cfg, Some(bucket)).unwrap();
    let server = Server::bind_parts(parts, Some(listener)).await.unwrap();
    let cluster = server.cluster().cloned();
    (launch(server, dir).await.0, cluster)
}

/// Starts berth from a whole config text with this bucket tier (one over a fault-injecting
/// store), as `[storage.s3]` would give it.
pub async fn start_with_bucket(
    cfg: &str,
    dir: tempfile::TempDir,
    bucket: berth::store::s3::Bucket,
) -> Berth {
    let cfg = Config::parse(cfg, "test").unwrap();
    let server = Server::bind_with_bucket(&cfg, Some(bucket)).await.unwrap();
    launch(server, dir).await.0
}

/// As [`start_with_bucket`], also handing back the running mirror: tests drive its bucket
/// tier's flushes and eviction passes without waiting for their timers.
pub async fn start_with_bucket_mirror(
    cfg: &str,
    dir: tempfile::TempDir,
    bucket: berth::store::s3::Bucket,
) -> (Berth, std::sync::Arc<berth::mirror::Mirror>) {
    let cfg = Config::parse(cfg, "test").unwrap();
    let server = Server::bind_with_bucket(&cfg, Some(bucket)).await.unwrap();
    let mirror = server.mirror().clone();
    (launch(server, dir).await.0, mirror)
}

async fn launch(server: Server, dir: tempfile::TempDir) -> (Berth, berth::reload::Reloader) {
    let reloader = server.reloader();
    let (addr, metrics) = (server.local_addr(), server.metrics_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let b = Berth {
        addr,
        metrics,
        client,
        dir,
        stop: Some(tx),
        run: Some(run),
    };
    b.ready().await;
    (b, reloader)
}

impl Berth {
    /// Waits until `/healthz` says ready: the cache index is rebuilt and pulls are served.
    pub async fn ready(&self) {
        let uri: http::Uri = format!("http://{}/healthz", self.metrics).parse().unwrap();
        let (client, uri) = (&self.client, &uri);
        let ready = eventually(|| async move {
            client.get(uri.clone()).await.unwrap().status() == StatusCode::OK
        })
        .await;
        assert!(ready, "berth not ready within {WAIT:?}");
    }

    /// Begins this berth's shutdown: no new connections; running transfers drain.
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops this berth, waits until it has ended (drained, its storage lock released), and hands
    /// back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.begin_shutdown();
        if let Some(run) = self.run.take() {
            run.await.unwrap().unwrap();
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Sends `method path` with `headers` and hands back the response, its body unread.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap()
    }

    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
        let resp = self.send(method, path, headers).await;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("{e:?}"));
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Waits until no fill is running (a verified blob is renamed into place just after its last
    /// byte is released).
    pub async fn settled(&self) {
        until_metric(self, "berth_fills_in_flight", 0).await;
    }

    pub async fn get(&self, path: &str) -> Got {
        self.request(Method::GET, path, &[]).await
    }

    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        self.dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The sum of the samples whose line contains `needle` (0 when none): a counter across its
    /// labels, or one series named exactly.
    pub async fn counter(&self, needle: &str) -> u64 {
        self.metric(needle)
            .await
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub async fn metric(&self, needle: &str) -> String {
        let resp = self
            .client
            .get(format!("http://{}/metrics", self.metrics).parse().unwrap())
            .await
            .unwrap();
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        text.lines()
            .filter(|l| l.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Compares bodies without printing megabytes on failure.
#[track_caller]
pub fn same(got: &Bytes, want: &Bytes) {
    assert!(
        got == want,
        "body differs: got {} bytes, want {} bytes",
        got.len(),
        want.len()
    );
}

/// Bound on a wait for something berth does on its own time (an index rebuilt, a fill settled, a
/// file removed): generous for a loaded 2-core machine, never reached when berth works. A hang
/// guard, not a synchronisation: the wait ends as soon as what it waits for is seen.
pub const WAIT: Duration = Duration::from_secs(20);

/// Between two looks in [`eventually`]: short, so that a wait ends soon after its condition holds,
/// and not a busy loop that starves the tasks it waits for on a current-thread runtime.
const LOOK_AGAIN: Duration = Duration::from_millis(2);

/// Looks at `done` until it says yes (true) or [`WAIT`] has passed (false), measured in time, not
/// in tries.
pub async fn eventually<F: Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    tokio::time::timeout(WAIT, async {
        while !done().await {
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    })
    .await
    .is_ok()
}

/// Waits (bounded by [`WAIT`]) until a metric line reads `value`, polling the metrics endpoint.
pub async fn until_metric(b: &Berth, needle: &str, value: u64) {
    let reached = eventually(|| async move {
        let line = b.metric(needle).await;
        line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) == Some(value)
    })
    .await;
    assert!(
        reached,
        "{needle} did not reach {value} within {WAIT:?}: {}",
        b.metric(needle).await
    );
}

/// A blob in the fake whose first `times` transfers send only as many bytes as the returned gate
/// allows (`usize::MAX` breaks the transfer).
pub fn gated_blob(
    fake: &FakeRegistry,
    size: usize,
    seed: u64,
    times: usize,
) -> (Bytes, String, tokio::sync::watch::Sender<usize>) {
    let layer = random_bytes(size, seed);
    let blob = fake.put_blob("library/app", layer.clone());
    let (release, gate) = tokio::sync::watch::channel(0usize);
    fake.fault_times(
        &format!("/v2/library/app/blobs/{blob}"),
        Fault::Gated(gate),
        times,
    );
    (layer, blob, release)
}

/// A blob response whose body the test reads frame by frame.
pub struct Streaming {
    pub body: hyper::body::Incoming,
    pub got: Vec<u8>,
}

impl Berth {
    /// A GET with these headers, its status and headers at once and its body read frame by frame.
    pub async fn stream_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Streaming) {
        let resp = self.send(Method::GET, path, headers).await;
        let (parts, body) = resp.into_parts();
        let body = Streaming {
            body,
            got: Vec::new(),
        };
        (parts.status, parts.headers, body)
    }

    pub async fn stream(&self, path: &str) -> Streaming {
        let uri = format!("http://{}{path}", self.addr).parse().unwrap();
        let resp = self.client.get(uri).await.unwrap();
        assert_eq!(resp.status(), 200);
        Streaming {
            body: resp.into_body(),
            got: Vec::new(),
        }
    }
}

impl Streaming {
    /// Reads until at least `n` bytes have arrived.
    pub async fn read_at_least(&mut self, n: usize) {
        while self.got.len() < n {
            let frame = self
                .body
                .frame()
                .await
                .expect("body ended early")
                .expect("body failed");
            if let Ok(data) = frame.into_data() {
                self.got.extend_from_slice(&data);
            }
        }
    }

    /// Reads to the end: Ok(all bytes) or Err when the body failed.
    pub async fn finish(mut self) -> Result<Vec<u8>, String> {
        while let Some(frame) = self.body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        self.got.extend_from_slice(&data);
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(self.got)
    }
}
