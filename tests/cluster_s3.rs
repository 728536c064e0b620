//! Three berth replicas (real `berth serve` processes, so a SIGKILL is real) on loopback, one
//! cluster (`[cluster]`), over one bucket on Ceph's radosgw (`[storage.s3]`), each with its own
//! port and its own `[storage] path`. Needs radosgw, named by `BERTH_TEST_S3` (keys
//! testkey/testsecret); tests/run.sh starts one and runs
//! `cargo test --test cluster_s3 -- --ignored --test-threads=1` (one test at a time: each runs
//! three berths, and the first moves 8 GiB).
//!
//! - 32 concurrent pulls of a fresh 256 MiB blob spread over the three: one upstream fetch, and
//!   32 bodies each hashed by the test.
//! - A replica restarted with an empty disk, the other two and the upstream registries stopped,
//!   serves every image another replica cached to skopeo and containerd's ctr (the Distribution
//!   registry upstream of tests/e2e.rs; skopeo, ctr and docker-registry from
//!   tests/install-deps.sh).
//! - The owner of a blob SIGKILLed mid-fill, round after round: clients get the right bytes or a
//!   short body, never a complete wrong one, and the survivors put the blob in the bucket; then
//!   the owner SIGKILLed mid-upload: its multipart upload is never completed and the stale-upload
//!   pass aborts it. Afterwards every object under the blob keys hashes to its name, every file
//!   on every replica's disk too, and no multipart upload a live replica started is left open.
//! - Wrong bytes from the upstream are never completed into the bucket, whichever replica asks.
//!
//! The fake upstream (tests/support) counts requests per path and injects the faults; a transfer
//! is held mid-way by its gate (`Fault::Gated`), never by a sleep. Waits poll with a bound.

#[allow(dead_code)] // the end-to-end suite's support: this file uses its registries and seeds
mod e2e_support;
mod support;

use support::ports;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use berth::config::{ClusterConfig, Config};
use berth::oci::Digest;
use berth::store::s3::{Bucket, BucketMetrics};
use e2e_support::harness::{Env, Via, start_containerd};
use e2e_support::proc;
use e2e_support::seed;
use ports::free_port;
use support::served::{Served, serve};
use support::{FakeRegistry, Fault, digest_of, random_bytes};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "berth-cluster";
const CLUSTER_SECRET: &str = "cluster-secret-0123456789abcdef-0123456789";
/// Bound on every wait (start-up, peers seen, bytes arriving, the bucket catching up): generous
/// for a loaded 2-core CI machine, never reached when berth works.
const WAIT: Duration = Duration::from_secs(90);
const REPO: &str = "team/app";

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn endpoint() -> String {
    std::env::var("BERTH_TEST_S3")
        .expect("BERTH_TEST_S3 names the S3 endpoint (tests/run.sh starts radosgw and sets it)")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Polls `check` until it holds, at most [`WAIT`]; panics with `what` (and the last state).
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(t) => return t,
            Err(state) if start.elapsed() > WAIT => {
                panic!("{what}: not within {WAIT:?}; last: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Bound on a whole test: a radosgw that stops answering (a full memstore holds writes
/// forever) or a berth that hangs fails the test instead of holding CI.
const TEST_LIMIT: Duration = Duration::from_secs(240);

async fn within(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_LIMIT:?}"));
}

/// One replica: its config, its disk, and the process while it runs.
struct Replica {
    url: String,
    addr: SocketAddr,
    metrics: SocketAddr,
    config: PathBuf,
    data: PathBuf,
    served: Option<Served>,
}

impl Replica {
    async fn start(&mut self, client: &HttpClient) {
        assert!(self.served.is_none(), "{} runs already", self.url);
        let mut served = serve(&self.config, &[("RUST_LOG", "info")]);
        served.started().await;
        assert_eq!(served.registry, self.addr, "{}", self.url);
        self.served = Some(served);
        let health: http::Uri = format!("http://{}/healthz", self.metrics).parse().unwrap();
        until(&format!("{} ready", self.url), || {
            let (c, u) = (client.clone(), health.clone());
            async move {
                match c.get(u).await {
                    Ok(r) if r.status() == StatusCode::OK => Ok(()),
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        let mut s = self.served.take().expect("a running replica");
        s.child.kill().unwrap(); // SIGKILL on Unix
        s.child.wait().unwrap();
    }

    fn running(&self) -> bool {
        self.served.is_some()
    }

    /// The sum of the samples whose line starts with `prefix` (a family, or a series named with
    /// all its labels); 0 when none.
    async fn metric(&self, client: &HttpClient, prefix: &str) -> u64 {
        let uri = format!("http://{}/metrics", self.metrics).parse().unwrap();
        let resp = client.get(uri).await.unwrap();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        sample_sum(&String::from_utf8_lossy(&text), prefix)
    }
}

fn sample_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Three replicas over one bucket, under a key prefix of this run's own (so every blob is fresh
/// to the bucket), and the test's own view of that bucket.
struct Replicas {
    replicas: Vec<Replica>,
    /// The peer ids ownership is hashed over, in `replicas` order.
    ids: Vec<String>,
    bucket: Bucket,
    prefix: String,
    client: HttpClient,
    _dir: tempfile::TempDir,
}

/// `[[upstream]]` tables for the fake registry.
fn fake_upstream(fake: &FakeRegistry) -> String {
    format!(
        "[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    )
}

async fn three(name: &str, upstreams: &str) -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let s3_secret = dir.path().join("s3-secret");
    std::fs::write(&s3_secret, "testsecret\n").unwrap();
    let cluster_secret = dir.path().join("cluster-secret");
    std::fs::write(&cluster_secret, format!("{CLUSTER_SECRET}\n")).unwrap();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("{name}-{nanos}");
    let s3 = format!(
        "[storage.s3]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nprefix = \"{prefix}/\"\n\
         access_key_id = \"testkey\"\nsecret_access_key_file = \"{}\"\n",
        endpoint(),
        s3_secret.display()
    );
    let bucket = connect_bucket(&s3, upstreams).await;

    // Free right now: the replicas' URLs must be known before any of them starts, and each is a
    // `berth serve` process, told its ports (berth has no socket activation).
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|(p, _)| format!("http://127.0.0.1:{p}"))
        .collect();
    let peers = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut replicas = Vec::new();
    for (i, (port, metrics)) in ports.iter().enumerate() {
        let data = dir.path().join(format!("data-{i}"));
        let config = dir.path().join(format!("berth-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
                 [storage]\npath = \"{}\"\n{s3}\
                 [cluster]\nself = \"{}\"\npeers = [{peers}]\nsecret_file = \"{}\"\n\
                 health_interval = \"100ms\"\npeer_timeout = \"2s\"\ndown_after = 2\n{upstreams}",
                data.display(),
                urls[i],
                cluster_secret.display(),
            ),
        )
        .unwrap();
        replicas.push(Replica {
            url: urls[i].clone(),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            metrics: format!("127.0.0.1:{metrics}").parse().unwrap(),
            config,
            data,
            served: None,
        });
    }
    let client = client();
    for r in &mut replicas {
        r.start(&client).await;
    }
    let ids = urls
        .iter()
        .map(|u| ClusterConfig::peer_id(&u.parse().unwrap()))
        .collect();
    let r = Replicas {
        replicas,
        ids,
        bucket,
        prefix,
        client,
        _dir: dir,
    };
    r.see_each_other().await;
    r
}

/// The bucket as the test sees it (under the run's prefix), created if need be.
async fn connect_bucket(s3: &str, upstreams: &str) -> Bucket {
    let cfg = Config::parse(&format!("{s3}{upstreams}"), "cluster_s3.toml").unwrap();
    let bucket = Bucket::connect(&cfg.storage.s3.unwrap(), BucketMetrics::new()).unwrap();
    // object_store makes no buckets: create it with a presigned request (rusty-s3 signs).
    let url: url::Url = endpoint().parse().unwrap();
    let rb = rusty_s3::Bucket::new(
        url,
        rusty_s3::UrlStyle::Path,
        BUCKET.to_owned(),
        "us-east-1",
    )
    .unwrap();
    let creds = rusty_s3::Credentials::new("testkey", "testsecret");
    let signed = rusty_s3::S3Action::sign(&rb.create_bucket(&creds), Duration::from_secs(60));
    let res = reqwest::Client::new().put(signed).send().await.unwrap();
    assert!(
        res.status().is_success() || res.status() == reqwest::StatusCode::CONFLICT,
        "create bucket {BUCKET}: {}",
        res.status()
    );
    bucket
}

impl Replicas {
    /// Waits until every running replica counts every running one (itself included) up.
    async fn see_each_other(&self) {
        let running = self.replicas.iter().filter(|r| r.running()).count() as u64;
        for r in self.replicas.iter().filter(|r| r.running()) {
            until(
                &format!("{} sees {running} peers up", r.url),
                || async move {
                    let up = r
                        .metric(&self.client, "berth_cluster_peers{state=\"up\"}")
                        .await;
                    (up == running).then_some(()).ok_or(format!("{up} up"))
                },
            )
            .await;
        }
    }

    /// The index of `digest`'s owner with every replica up.
    fn owner(&self, digest: &Digest) -> usize {
        berth::cluster::ring::rank(&self.ids, digest, |_| true)[0]
    }

    /// The sum of a metric over the running replicas.
    async fn metric(&self, prefix: &str) -> u64 {
        let mut sum = 0;
        for r in self.replicas.iter().filter(|r| r.running()) {
            sum += r.metric(&self.client, prefix).await;
        }
        sum
    }

    /// Where the running replicas' blob answers came from, for the test's output.
    async fn sources(&self) -> String {
        let mut out = Vec::new();
        for (i, r) in self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.running())
        {
            let mut s = Vec::new();
            for src in ["local", "bucket", "peer", "upstream"] {
                let n = r
                    .metric(
                        &self.client,
                        &format!("berth_answers_total{{source=\"{src}\"}}"),
                    )
                    .await;
                s.push(format!("{src}={n}"));
            }
            out.push(format!("replica {i}: {}", s.join(" ")));
        }
        out.join("; ")
    }

    /// Waits until no running replica has a fill in flight.
    async fn settled(&self) {
        for r in self.replicas.iter().filter(|r| r.running()) {
            until(&format!("{} settles", r.url), || async move {
                let n = r.metric(&self.client, "berth_fills_in_flight").await;
                (n == 0).then_some(()).ok_or(format!("{n} fills"))
            })
            .await;
        }
    }

    fn blob_key(&self, digest: &Digest) -> Key {
        self.bucket.blob_key(digest)
    }

    /// Waits until the bucket holds `digest`'s blob at `size` (uploads run beside the pull).
    async fn in_bucket(&self, digest: &Digest, size: usize) {
        until(&format!("{digest} in the bucket"), || async move {
            match self.bucket.head_blob(digest).await {
                Ok(Some(i)) if i.size == size as u64 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    /// Every object under the bucket's blob keys, read back and hashed: each must be the bytes
    /// its name says. Returns the digests found.
    async fn check_blob_objects(&self) -> Vec<String> {
        let store = self.bucket.object_store();
        let dir = Key::from(format!("{}/blobs/sha256", self.prefix));
        let listed: Vec<_> = store.list(Some(&dir)).try_collect().await.unwrap();
        let mut found = Vec::new();
        for meta in listed {
            let name = meta.location.filename().unwrap().to_owned();
            let mut body = store.get(&meta.location).await.unwrap().into_stream();
            let mut h = Sha256::new();
            while let Some(chunk) = body.next().await {
                h.update(chunk.unwrap());
            }
            assert_eq!(
                hex::encode(h.finalize()),
                name,
                "{} holds other bytes than its name says",
                meta.location
            );
            found.push(format!("sha256:{name}"));
        }
        found
    }

    /// Removes what this run put in the bucket (radosgw keeps it in memory).
    async fn clean_bucket(&self) {
        let store = self.bucket.object_store();
        let all: Vec<_> = store
            .list(Some(&Key::from(self.prefix.as_str())))
            .try_collect()
            .await
            .unwrap();
        for meta in all {
            store.delete(&meta.location).await.unwrap();
        }
    }
}

/// `n` bytes, different for each `seed`, made quickly: one random MiB repeated, each copy
/// stamped with its index and the seed (the blob's content matters only through its digest).
fn blob(n: usize, seed: u64) -> Bytes {
    let unit = random_bytes(MIB, seed);
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        let start = out.len();
        out.extend_from_slice(&unit[..MIB.min(n - start)]);
        let stamp = (i ^ (seed << 32)).to_le_bytes();
        let end = out.len().min(start + stamp.len());
        out[start..end].copy_from_slice(&stamp[..end - start]);
        i += 1;
    }
    out.into()
}

/// What a client got: the status, the byte count, their sha256 and whether the body ended
/// cleanly.
#[derive(Debug)]
struct Pulled {
    status: StatusCode,
    len: usize,
    sha256: String,
    complete: bool,
}

/// GETs `path` from `addr` and hashes the body as it streams (never holding it whole); `first`
/// is told once the first body bytes have arrived.
async fn pull_hashed(
    client: HttpClient,
    addr: SocketAddr,
    path: String,
    first: Option<tokio::sync::mpsc::Sender<()>>,
) -> Pulled {
    let uri = format!("http://{addr}{path}").parse().unwrap();
    let resp = client.get(uri).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let (mut h, mut len, mut complete, mut first) = (Sha256::new(), 0, true, first);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    h.update(&data);
                    len += data.len();
                    if !data.is_empty()
                        && let Some(tx) = first.take()
                    {
                        let _ = tx.send(()).await;
                    }
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    Pulled {
        status,
        len,
        sha256: format!("sha256:{}", hex::encode(h.finalize())),
        complete,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn thirty_two_pulls_over_three_replicas_fetch_a_fresh_blob_once() {
    within(async {
        const SIZE: usize = 256 * MIB;
        const CLIENTS: usize = 32;
        let fake = FakeRegistry::start().await;
        let r = three("fetch-once", &fake_upstream(&fake)).await;

        let t = Instant::now();
        let data = blob(SIZE, 7);
        let d = fake.put_blob(REPO, data.clone());
        eprintln!("256 MiB blob made and hashed in {:.1?}", t.elapsed());
        drop(data);
        let path = format!("/v2/{REPO}/blobs/{d}");
        // Every upstream transfer of it sends only what the gate allows: all 32 clients have their
        // first bytes while the fill is still held, so the 32 pulls are provably concurrent.
        let (release, gate) = watch::channel(4 * MIB);
        fake.fault(&path, Fault::Gated(gate));

        let started = Instant::now();
        let (first_tx, mut first_rx) = tokio::sync::mpsc::channel(CLIENTS);
        let pulls: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let addr = r.replicas[i % 3].addr;
                tokio::spawn(pull_hashed(
                    r.client.clone(),
                    addr,
                    path.clone(),
                    Some(first_tx.clone()),
                ))
            })
            .collect();
        drop(first_tx);
        for n in 0..CLIENTS {
            tokio::time::timeout(WAIT, first_rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {n} of {CLIENTS} clients got bytes in time"))
                .expect("a client failed before its first bytes");
        }
        release.send_replace(SIZE);
        let mut got = Vec::new();
        for p in pulls {
            got.push(
                tokio::time::timeout(WAIT, p)
                    .await
                    .expect("pull in time")
                    .unwrap(),
            );
        }
        let took = started.elapsed();
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.status, StatusCode::OK, "client {i}");
            assert!(p.complete && p.len == SIZE, "client {i}: {p:?}");
            assert_eq!(p.sha256, d, "client {i} got other bytes");
        }
        eprintln!(
            "{CLIENTS} verified pulls of 256 MiB over 3 replicas in {took:.1?}; {}",
            r.sources().await
        );
        let (fetches, sources) = (fake.hits(Method::GET, &path), r.sources().await);
        r.settled().await;
        r.in_bucket(&d.parse().unwrap(), SIZE).await;
        // Before the last assertion: radosgw keeps objects in memory, and this is 256 MiB of it.
        r.clean_bucket().await;
        assert_eq!(
            fetches, 1,
            "upstream fetches of one blob pulled through 3 replicas ({sources})"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn sigkill_of_the_owner_mid_fill_never_completes_wrong_bytes() {
    within(async {
        const ROUNDS: usize = 5;
        const SIZE: usize = 40 * MIB; // three parts of a multipart upload
        const RELEASED: usize = 8 * MIB;
        const READ_BEFORE_KILL: usize = 2 * MIB;
        const PER_REPLICA: usize = 2;
        /// Four parts: an upload that lasts long enough to be seen open and killed.
        const UPLOAD_SIZE: usize = 64 * MIB;
        let fake = FakeRegistry::start().await;
        let mut r = three("sigkill", &fake_upstream(&fake)).await;
        // Gates stay open until the end: the fake expects its gates to outlive its transfers.
        let mut gates = Vec::new();
        let mut killed: Vec<(String, SystemTime)> = Vec::new();
        let (mut complete, mut short) = (0, 0);

        for round in 0..ROUNDS {
            let data = blob(SIZE, 100 + round as u64);
            let d = fake.put_blob(REPO, data.clone());
            let digest: Digest = d.parse().unwrap();
            let owner = r.owner(&digest);
            let path = format!("/v2/{REPO}/blobs/{d}");
            // Every upstream transfer of this blob is held after RELEASED bytes until the owner is
            // dead, so its fill is mid-transfer when it is killed.
            let (release, gate) = watch::channel(RELEASED);
            fake.fault(&path, Fault::Gated(gate));

            let mut open = Vec::new();
            for (i, rep) in r.replicas.iter().enumerate() {
                for _ in 0..PER_REPLICA {
                    let uri: http::Uri = format!("http://{}{path}", rep.addr).parse().unwrap();
                    let resp = tokio::time::timeout(WAIT, r.client.get(uri))
                        .await
                        .expect("response headers in time")
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::OK, "round {round}, replica {i}");
                    open.push((i, resp.into_body(), Vec::<u8>::new()));
                }
            }
            for (i, body, got) in &mut open {
                tokio::time::timeout(WAIT, async {
                    while got.len() < READ_BEFORE_KILL {
                        let frame = body.frame().await.expect("body ended early").unwrap();
                        if let Ok(b) = frame.into_data() {
                            got.extend_from_slice(&b);
                        }
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("round {round}: replica {i}'s client got no bytes"));
                assert_eq!(&got[..], &data[..got.len()], "round {round}: early bytes");
            }
            let filling = r.replicas[owner]
                .metric(&r.client, "berth_fills_in_flight")
                .await;
            assert!(filling >= 1, "round {round}: the owner is not mid-fill");

            r.replicas[owner].kill();
            killed.push((d.clone(), SystemTime::now()));
            release.send_replace(SIZE);
            gates.push(release);

            for (i, mut body, mut got) in open {
                let ended = tokio::time::timeout(WAIT, async {
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => {
                                if let Ok(b) = f.into_data() {
                                    got.extend_from_slice(&b);
                                }
                            }
                            Err(_) => return false,
                        }
                    }
                    true
                })
                .await
                .unwrap_or_else(|_| panic!("round {round}: replica {i}'s client hangs"));
                if ended && got.len() == SIZE {
                    assert_eq!(
                        digest_of(&got),
                        d,
                        "round {round}: replica {i} completed wrong bytes"
                    );
                    complete += 1;
                } else {
                    assert!(
                        got.len() < SIZE && got[..] == data[..got.len()],
                        "round {round}: replica {i}: {} bytes, ended cleanly: {ended}",
                        got.len()
                    );
                    assert!(
                        !ended,
                        "round {round}: replica {i}: a short body that ended cleanly"
                    );
                    if i != owner {
                        eprintln!("round {round}: a client of survivor {i} got a short body");
                    }
                    short += 1;
                }
            }
            // The survivors serve it whole, right away.
            for (i, rep) in r.replicas.iter().enumerate().filter(|(_, x)| x.running()) {
                let p = pull_hashed(r.client.clone(), rep.addr, path.clone(), None).await;
                assert!(
                    p.complete && p.sha256 == d,
                    "round {round}: replica {i}: {p:?}"
                );
            }
            // The owner died before its upload: the survivors, which finished the blob from their
            // upstream, put it in the bucket.
            r.in_bucket(&digest, SIZE).await;
            // The owner comes back on its disk (the killed fill's temp file cleared) and serves it
            // too.
            let client = r.client.clone();
            r.replicas[owner].start(&client).await;
            r.see_each_other().await;
            let p = pull_hashed(r.client.clone(), r.replicas[owner].addr, path, None).await;
            assert!(
                p.complete && p.sha256 == d,
                "round {round}: the restarted owner: {p:?}"
            );
        }
        eprintln!(
            "{ROUNDS} rounds: {complete} clients got the whole blob, {short} a short body; {}",
            r.sources().await
        );

        // A last kill, mid-upload: the owner has the blob verified on its disk and is putting it in
        // the bucket (a multipart upload, beside the pull) when it dies. That upload is never
        // completed; it stays open for the sweep. An upload that ends before the test sees it open
        // (or before the kill lands) is tried again with another blob.
        let mut mid_upload = None;
        for attempt in 0..5 {
            let data = blob(UPLOAD_SIZE, 300 + attempt);
            let d = fake.put_blob(REPO, data);
            let digest: Digest = d.parse().unwrap();
            let (owner, key) = (r.owner(&digest), r.blob_key(&digest).to_string());
            let path = format!("/v2/{REPO}/blobs/{d}");
            let p = pull_hashed(r.client.clone(), r.replicas[owner].addr, path, None).await;
            assert!(p.complete && p.sha256 == d, "mid-upload {attempt}: {p:?}");
            let started = Instant::now();
            let open = loop {
                assert!(started.elapsed() < WAIT, "no upload of {d} began");
                if r.bucket
                    .open_uploads()
                    .await
                    .unwrap()
                    .iter()
                    .any(|u| u.key == key)
                {
                    break true;
                }
                if r.bucket.head_blob(&digest).await.unwrap().is_some() {
                    break false;
                }
            };
            if open {
                r.replicas[owner].kill();
                let at = SystemTime::now();
                let client = r.client.clone();
                r.replicas[owner].start(&client).await;
                r.see_each_other().await;
                if r.bucket.head_blob(&digest).await.unwrap().is_none() {
                    mid_upload = Some((d, key, at));
                    break;
                }
            }
            eprintln!("mid-upload {attempt}: the upload ended before the kill; another blob");
        }
        let (upload_digest, upload_key, upload_killed) =
            mid_upload.expect("no upload caught in flight in 5 tries");
        r.settled().await;

        // Every upload a live replica started ends (completed, or aborted on failure); what a killed
        // owner left open is the stale-upload sweep's.
        let killed_keys: Vec<(String, SystemTime)> = killed
            .iter()
            .map(|(d, at)| (r.blob_key(&d.parse().unwrap()).to_string(), *at))
            .chain([(upload_key.clone(), upload_killed)])
            .collect();
        let (bucket, killed_keys) = (&r.bucket, &killed_keys);
        let left = until("only killed replicas' uploads are open", || async move {
            let left = bucket.open_uploads().await.map_err(|e| e.to_string())?;
            let live: Vec<_> = left
                .iter()
                .filter(|u| {
                    !killed_keys
                        .iter()
                        .any(|(k, at)| *k == u.key && u.initiated <= *at + Duration::from_secs(1))
                })
                .collect();
            if live.is_empty() {
                Ok(left)
            } else {
                Err(format!("{live:?}"))
            }
        })
        .await;
        eprintln!("{} uploads left open by killed owners", left.len());
        assert!(left.iter().any(|u| u.key == upload_key), "{left:?}");
        // The replicas' sweep aborts them once STALE_AGE old; the same pass, with no age to wait for.
        let aborted = r.bucket.abort_stale_uploads(Duration::ZERO).await.unwrap();
        assert_eq!(aborted, left.len());
        assert!(r.bucket.open_uploads().await.unwrap().is_empty());

        let found = r.check_blob_objects().await;
        for (d, _) in &killed {
            assert!(found.contains(d), "{d} is not in the bucket: {found:?}");
        }
        assert!(
            !found.contains(&upload_digest),
            "the killed upload was completed"
        );
        // Each replica's disk too: whatever is at a final path is what its name says.
        for rep in &r.replicas {
            let dir = rep.data.join("blobs/sha256");
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(Digest::of(&bytes).hex(), name, "{}", path.display());
            }
        }
        r.clean_bucket().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs radosgw: BERTH_TEST_S3 (tests/run.sh starts one)"]
async fn wrong_bytes_from_upstream_never_reach_the_bucket() {
    within(async {
        const SIZE: usize = 24 * MIB; // two parts of a multipart upload
        let fake = FakeRegistry::start().await;
        let r = three("wrong-bytes", &fake_upstream(&fake)).await;
        let data = blob(SIZE, 42);
        let d = fake.put_blob(REPO, data.clone());
        let digest: Digest = d.parse().unwrap();
        let path = format!("/v2/{REPO}/blobs/{d}");
        fake.fault(&path, Fault::WrongBytes);

        // Two clients on each replica at once: the owner's fill and the others' (through the owner,
        // or on their own) all meet the wrong bytes.
        let pulls: Vec<_> = (0..6)
            .map(|i| {
                let addr = r.replicas[i % 3].addr;
                tokio::spawn(pull_hashed(r.client.clone(), addr, path.clone(), None))
            })
            .collect();
        for (i, p) in pulls.into_iter().enumerate() {
            let p = tokio::time::timeout(WAIT, p)
                .await
                .expect("pull in time")
                .unwrap();
            assert!(
                !(p.status == StatusCode::OK && p.complete),
                "client {i} of replica {} got a complete body of wrong bytes: {p:?}",
                i % 3
            );
        }
        r.settled().await;
        assert!(r.metric("berth_digest_mismatches_total").await >= 1);
        let (bucket, key) = (&r.bucket, &r.blob_key(&digest).to_string());
        until("no upload of the wrong bytes left open", || async move {
            let open = bucket.open_uploads().await.map_err(|e| e.to_string())?;
            let mine: Vec<_> = open.iter().filter(|u| u.key == *key).collect();
            mine.is_empty().then_some(()).ok_or(format!("{mine:?}"))
        })
        .await;
        assert_eq!(
            r.bucket.head_blob(&digest).await.unwrap(),
            None,
            "the wrong bytes were completed into the bucket"
        );
        for rep in &r.replicas {
            let file = rep.data.join("blobs/sha256").join(digest.hex());
            assert!(!file.exists(), "{} cached wrong bytes", rep.url);
        }

        // Once the upstream sends the right bytes, each replica serves them and the bucket gets
        // them: the bucket was reachable all along.
        fake.clear_faults();
        for (i, rep) in r.replicas.iter().enumerate() {
            let p = pull_hashed(r.client.clone(), rep.addr, path.clone(), None).await;
            assert!(p.complete && p.sha256 == d, "replica {i}: {p:?}");
        }
        r.in_bucket(&digest, SIZE).await;
        assert_eq!(r.check_blob_objects().await, vec![d.clone()]);
        eprintln!("{}", r.sources().await);
        r.clean_bucket().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Real clients

const PULL_LIMIT: Duration = Duration::from_secs(120);

/// The upstream tables for the end-to-end registries, as tests/e2e.rs configures berth.
fn registry_upstreams(env: &Env) -> String {
    e2e_support::harness::UPSTREAMS
        .iter()
        .map(|host| {
            let default = if *host == "docker.io" {
                "default = true\nlibrary_prefix = true\n"
            } else {
                ""
            };
            format!(
                "[[upstream]]\nname = \"{host}\"\nurl = \"http://{}\"\n{default}",
                env.mirror(host)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs radosgw: BERTH_TEST_S3, and skopeo, ctr, containerd, docker-registry (tests/run.sh)"]
async fn an_empty_replica_serves_what_another_cached_to_skopeo_and_ctr() {
    within(async {
        // The registries, seeded with the end-to-end images; the replicas are their mirror.
        let t = Instant::now();
        let mut env = tokio::task::block_in_place(|| Env::start(Via::Registry));
        let mut r = three("clients", &registry_upstreams(&env)).await;
        let images = seed::images();
        eprintln!("registries seeded, replicas up in {:.1?}", t.elapsed());

        // Replica 0 caches every image, every platform (`berth warm` pulls like a client).
        let refs: Vec<String> = images.iter().map(|img| img.full_reference()).collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("warm")
            .arg("--server")
            .arg(&r.replicas[0].url)
            .args(&refs);
        let t = Instant::now();
        tokio::task::block_in_place(|| proc::run(&mut cmd, PULL_LIMIT));
        r.settled().await;
        eprintln!("replica 0 warmed in {:.1?}", t.elapsed());

        // Everything a later replica needs reaches the bucket: blobs, manifests, tag records, and the
        // marks of which upstream each digest came through.
        let mut keys = Vec::new();
        for img in images {
            keys.push(format!("tags/{}/{}/{}", img.upstream, img.repo, img.tag));
            let mut digests = vec![&img.top];
            for p in &img.platforms {
                digests.push(&p.manifest);
                digests.push(&p.config);
                digests.extend(&p.layers);
            }
            for b in digests {
                let kind = if b.digest == img.top.digest
                    || img.platforms.iter().any(|p| p.manifest.digest == b.digest)
                {
                    "manifests"
                } else {
                    "blobs"
                };
                keys.push(format!("{kind}/sha256/{}", b.hex()));
                keys.push(format!("origins/{}/sha256/{}", img.upstream, b.hex()));
            }
        }
        let store = r.bucket.object_store();
        for key in &keys {
            let path = &Key::from(format!("{}/{key}", r.prefix));
            until(&format!("{key} in the bucket"), || async move {
                store
                    .head(path)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await;
        }

        eprintln!(
            "the bucket holds it all {:.1?} after the warm began",
            t.elapsed()
        );

        // The upstreams gone, the two replicas that have pulled anything gone; the third starts over
        // with an empty disk: only the bucket can answer it.
        env.stop_registries();
        r.replicas[0].kill();
        r.replicas[1].kill();
        r.replicas[2].kill();
        std::fs::remove_dir_all(&r.replicas[2].data).unwrap();
        let client = r.client.clone();
        r.replicas[2].start(&client).await;
        let only = &r.replicas[2];

        // skopeo: every image, every platform, byte for byte.
        let t = Instant::now();
        for (i, img) in images.iter().enumerate() {
            let out = env.dir().join(format!("skopeo-{i}"));
            let mut cmd = Command::new("skopeo");
            env.client_env(&mut cmd);
            cmd.arg("--policy")
                .arg(&env.policy)
                .args(["copy", "-q", "--all", "--src-tls-verify=false"])
                .arg(format!(
                    "docker://{}/{}/{}",
                    only.addr,
                    img.upstream,
                    img.reference()
                ))
                .arg(format!("dir:{}", out.display()));
            tokio::task::block_in_place(|| proc::run(&mut cmd, PULL_LIMIT));
            check_dir(&out, img);
        }

        eprintln!(
            "skopeo copied every image from the empty replica in {:.1?}",
            t.elapsed()
        );

        // containerd: the linux/amd64 image of each, listed with the right digest.
        let t = Instant::now();
        let (daemon, ctr) = tokio::task::block_in_place(|| start_containerd(&env));
        let hosts = ctr_hosts_dir(&env, only.addr);
        for img in images {
            let reference = img.full_reference();
            let mut cmd = ctr(&[
                "images",
                "pull",
                "--hosts-dir",
                &hosts,
                "--snapshotter",
                "native",
                "--platform",
                "linux/amd64",
                &reference,
            ]);
            let list = tokio::task::block_in_place(|| {
                proc::run(&mut cmd, PULL_LIMIT);
                proc::run(&mut ctr(&["images", "ls"]), PULL_LIMIT)
            });
            let listed = list.lines().find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&reference.as_str())).then(|| cols[2].to_owned())
            });
            assert_eq!(listed.as_deref(), Some(img.top.digest.as_str()), "{list}");
        }
        drop(daemon);
        eprintln!(
            "containerd pulled every image from it in {:.1?}",
            t.elapsed()
        );

        eprintln!("{}", r.sources().await);
        let c = &r.client;
        assert!(
            only.metric(c, "berth_answers_total{source=\"bucket\"}")
                .await
                > 0
        );
        assert_eq!(
            only.metric(c, "berth_answers_total{source=\"upstream\"}")
                .await,
            0
        );
        r.clean_bucket().await;
    })
    .await;
}

/// A skopeo `dir:` copy (`--all`) holds exactly the seeded manifests and blobs.
fn check_dir(out: &Path, img: &seed::Image) {
    let read = |name: &str| {
        std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{}: {name}: {e}", img.reference()))
    };
    let top = seed::sha256_hex(&read("manifest.json"));
    assert_eq!(top, img.top.hex(), "{}", img.reference());
    for p in &img.platforms {
        if img.is_list() {
            let m = read(&format!("{}.manifest.json", p.manifest.hex()));
            assert_eq!(
                seed::sha256_hex(&m),
                p.manifest.hex(),
                "{}",
                img.reference()
            );
        }
        for b in std::iter::once(&p.config).chain(&p.layers) {
            assert_eq!(
                seed::sha256_hex(&read(b.hex())),
                b.hex(),
                "{}",
                img.reference()
            );
        }
    }
}

/// A `--hosts-dir` where every registry (docker.io's own file, `_default` for the rest) is a dead
/// server with `mirror` as its only pull host, so only the mirror can answer.
fn ctr_hosts_dir(env: &Env, mirror: SocketAddr) -> String {
    let hosts = env.dir().join("hosts");
    for dir in ["docker.io", "_default"] {
        std::fs::create_dir_all(hosts.join(dir)).unwrap();
        std::fs::write(
            hosts.join(dir).join("hosts.toml"),
            format!(
                "server = \"http://{}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                env.dead
            ),
        )
        .unwrap();
    }
    hosts.display().to_string()
}
