//! Three berths on loopback configured as one cluster (`[cluster]`): each sees the others up
//! through the signed health probes; one stopped is marked down within a bounded time and only
//! its digests move; a peer request without a valid proof gets 401 and is counted. A blob miss
//! goes through the digest's owner: concurrent pulls over the three cost one upstream fetch; an
//! owner that is gone is skipped; a peer's wrong bytes are never cached nor completed.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use berth::cluster::Cluster;
use berth::cluster::auth::{self, PeerKey};
use berth::config::Secret;
use berth::oci::Digest;
use support::instance::{
    Berth, berth, eventually, gated_blob, listeners_and_storage, same, start_on_listener,
    start_on_listener_with_bucket,
};
use support::{FakeRegistry, random_bytes};

const SECRET: &str = "cluster-secret-0123456789abcdef-0123456789";
/// How long a state change may take to be seen: probes run every 100 ms, a stopped peer refuses
/// connections at once, so this is a generous bound, not an expected time.
const DEADLINE: Duration = Duration::from_secs(10);

struct Replicas {
    berths: Vec<Option<Berth>>,
    clusters: Vec<Arc<Cluster>>,
    _secret: tempfile::TempDir,
}

/// Three berths whose registry listeners are bound first, so that each one's `[cluster]` can
/// name them all.
async fn three(fake: &FakeRegistry) -> Replicas {
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("\"http://{}\"", l.local_addr().unwrap()))
        .collect();
    replicas(fake, listeners, &urls).await
}

/// Berths on `listeners`, each with every one of `urls` (quoted) as its peers, in that order.
async fn replicas(
    fake: &FakeRegistry,
    listeners: Vec<std::net::TcpListener>,
    urls: &[String],
) -> Replicas {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("cluster-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let (mut berths, mut clusters) = (Vec::new(), Vec::new());
    for (i, listener) in listeners.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "{}[cluster]\nself = {}\npeers = [{}]\nsecret_file = {:?}\n\
             health_interval = \"100ms\"\npeer_timeout = \"1s\"\ndown_after = 2\n\
             [[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n",
            listeners_and_storage(dir.path()),
            urls[i],
            urls.join(", "),
            secret.display().to_string(),
            fake.url()
        );
        let (b, c) = start_on_listener(&cfg, dir, listener).await;
        berths.push(Some(b));
        clusters.push(c.expect("[cluster] builds a cluster"));
    }
    Replicas {
        berths,
        clusters,
        _secret: secret_dir,
    }
}

/// Polls `check` until it holds, at most [`DEADLINE`]; the time it took.
async fn until(what: &str, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn owner_ids(c: &Cluster, d: &Digest) -> Vec<String> {
    c.owners(d).iter().map(|p| p.id.clone()).collect()
}

#[tokio::test]
async fn replicas_see_each_other_and_a_stopped_one_goes_down() {
    let fake = FakeRegistry::start().await;
    let mut r = three(&fake).await;
    let all_up = |c: &Arc<Cluster>| c.peers().iter().all(|p| p.is_up());
    let clusters = r.clusters.clone();
    until("every replica sees the other two up", || {
        clusters.iter().all(all_up)
    })
    .await;
    for b in r.berths.iter().flatten() {
        assert_eq!(b.counter("berth_cluster_peers{state=\"up\"}").await, 3);
        assert_eq!(b.counter("berth_cluster_peers{state=\"down\"}").await, 0);
        // The probes carried valid proofs: no replica refused one.
        assert_eq!(b.counter("berth_peer_auth_failures_total").await, 0);
        assert!(b.counter("berth_peer_probes_total").await >= 2);
    }

    // Every replica names the same owners, and each owns about a third.
    let digests: Vec<Digest> = (0..3000u32).map(|n| Digest::of(&n.to_be_bytes())).collect();
    let before: Vec<Vec<String>> = digests.iter().map(|d| owner_ids(&clusters[0], d)).collect();
    for c in &clusters[1..] {
        for (d, want) in digests.iter().zip(&before) {
            assert_eq!(&owner_ids(c, d), want);
        }
    }
    let gone = clusters[2].peers()[2].id.clone();
    assert!(clusters[2].is_me(&clusters[2].peers()[2]));
    let owned_by_gone = before.iter().filter(|o| o[0] == gone).count();
    assert!((800..=1200).contains(&owned_by_gone), "{owned_by_gone}");

    // Stop the third: the other two mark it down, within the bound.
    let stopped = r.berths[2].take().unwrap();
    drop(stopped);
    let survivors = clusters[..2].to_vec();
    let took = until("the stopped replica is marked down by both others", || {
        survivors.iter().all(|c| !c.peers()[2].is_up())
    })
    .await;
    eprintln!("a stopped replica was marked down after {took:?}");
    for c in &survivors {
        assert!(c.peers()[..2].iter().all(|p| p.is_up()));
    }
    for b in r.berths.iter().flatten() {
        assert_eq!(b.counter("berth_cluster_peers{state=\"up\"}").await, 2);
        assert_eq!(b.counter("berth_cluster_peers{state=\"down\"}").await, 1);
    }

    // Only the stopped replica's digests moved, each to its next choice.
    let mut moved = 0;
    for (d, was) in digests.iter().zip(&before) {
        let want: Vec<String> = was.iter().filter(|id| **id != gone).cloned().collect();
        for c in &survivors {
            assert_eq!(owner_ids(c, d), want);
        }
        if was[0] != want[0] {
            moved += 1;
        }
    }
    assert_eq!(moved, owned_by_gone);
}

#[tokio::test]
async fn peer_routes_need_a_valid_proof() {
    let fake = FakeRegistry::start().await;
    let r = three(&fake).await;
    let b = r.berths[0].as_ref().unwrap();
    let health = berth::cluster::HEALTH_PATH;

    // No proof, on the health route and on any other peer path: 401, nothing else learned.
    for path in [
        health,
        "/_berth/peer/v1/blobs/registry.test/library/app/sha256:00",
    ] {
        let got = b.get(path).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(got.code(), "UNAUTHORIZED");
        assert_eq!(got.header("www-authenticate"), Some("Berth-Peer"));
    }
    // A client's Basic login is no proof either.
    let basic = b
        .request(Method::GET, health, &[("authorization", "Basic YTpi")])
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        b.counter("berth_peer_auth_failures_total{reason=\"missing\"}")
            .await,
        3
    );

    // Signed with another secret, or an old timestamp: refused, counted by reason.
    let wrong = PeerKey::new(&Secret::new("another-secret-0123456789abcdef-012345"));
    let forged = wrong.sign("GET", health, auth::now());
    let got = b
        .request(
            Method::GET,
            health,
            &[("authorization", forged.to_str().unwrap())],
        )
        .await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    let key = PeerKey::new(&Secret::new(SECRET));
    let old = key.sign("GET", health, auth::now() - 600);
    let got = b
        .request(
            Method::GET,
            health,
            &[("authorization", old.to_str().unwrap())],
        )
        .await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        b.counter("berth_peer_auth_failures_total{reason=\"bad_proof\"}")
            .await,
        1
    );
    assert_eq!(
        b.counter("berth_peer_auth_failures_total{reason=\"expired\"}")
            .await,
        1
    );

    // A valid proof: the health answer; an unknown peer path: 404 (only once proven).
    let got = signed_get(b, &key, health).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.bytes()[..], b"serving\n");
    let got = signed_get(b, &key, "/_berth/peer/v1/nothing").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);

    // A proven blob request is answered from this berth's own upstream (never handed on to
    // another peer); one naming an upstream not configured here is a 404, not an address.
    let layer = random_bytes(10_000, 3);
    let blob = fake.put_blob("library/app", layer.clone());
    let path = format!("/_berth/peer/v1/blobs/registry.test/library/app/{blob}");
    let got = signed_get(b, &key, &path).await;
    assert_eq!(got.status, StatusCode::OK);
    same(got.bytes(), &layer);
    assert_eq!(b.counter("berth_owner_handoffs_total").await, 0);
    let path = format!("/_berth/peer/v1/blobs/127.0.0.1%3A1/library/app/{blob}");
    let got = signed_get(b, &key, &path).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(
        fake.requests().len(),
        1,
        "only the one blob fetch reached the upstream"
    );

    // The registry API is untouched by it.
    assert_eq!(b.get("/v2/").await.status, StatusCode::OK);
}

/// A GET of `path` with a fresh proof made with `key`.
async fn signed_get(b: &Berth, key: &PeerKey, path: &str) -> support::instance::Got {
    let proof = key.sign("GET", path, auth::now());
    b.request(
        Method::GET,
        path,
        &[("authorization", proof.to_str().unwrap())],
    )
    .await
}

/// Without `[cluster]`, the peer prefix is a path like any other that is not the registry API.
#[tokio::test]
async fn without_a_cluster_there_are_no_peer_routes() {
    let fake = FakeRegistry::start().await;
    let b = berth(&fake, "").await;
    let got = b.get(berth::cluster::HEALTH_PATH).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(b.counter("berth_peer_auth_failures_total").await, 0);
}

/// Waits until every replica sees every peer up.
async fn all_up(r: &Replicas) {
    let clusters = r.clusters.clone();
    until("every replica sees the others up", || {
        clusters.iter().all(|c| c.peers().iter().all(|p| p.is_up()))
    })
    .await;
}

/// The replica (by index) that owns `digest`; all replicas agree on it.
fn owner_of(r: &Replicas, digest: &str) -> usize {
    let d: Digest = digest.parse().unwrap();
    let first = owner_ids(&r.clusters[0], &d)[0].clone();
    r.clusters[0]
        .peers()
        .iter()
        .position(|p| p.id == first)
        .unwrap()
}

/// GETs `path` from a berth on a task of its own; the status and the body (Err: it broke off).
fn spawn_get(
    b: &Berth,
    path: &str,
) -> tokio::task::JoinHandle<(StatusCode, Result<Bytes, String>)> {
    let client = b.client.clone();
    let uri: http::Uri = format!("http://{}{path}", b.addr).parse().unwrap();
    tokio::spawn(async move {
        let resp = client.get(uri).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await;
        (
            status,
            body.map(|b| b.to_bytes()).map_err(|e| e.to_string()),
        )
    })
}

/// Twelve clients, four on each replica, ask for one blob at once while the upstream holds its
/// body back: the owner fetches it once, the other two stream it from the owner, and every
/// client gets the verified bytes. Each replica then holds it on its own disk.
#[tokio::test]
async fn concurrent_misses_over_three_replicas_cost_one_upstream_fetch() {
    let fake = FakeRegistry::start().await;
    let r = three(&fake).await;
    all_up(&r).await;
    let (layer, blob, release) = gated_blob(&fake, 3 << 20, 81, 1);
    let path = format!("/v2/library/app/blobs/{blob}");
    let owner = owner_of(&r, &blob);
    let berths: Vec<&Berth> = r.berths.iter().flatten().collect();
    let clients: Vec<_> = (0..12).map(|i| spawn_get(berths[i % 3], &path)).collect();
    // Every request has started or joined its replica's fill before a byte flows.
    for b in &berths {
        let mut tries = 0;
        while b.counter("berth_cache_lookups_total{kind=\"blob\"").await < 4 {
            tries += 1;
            assert!(tries < 10_000, "requests did not reach the fills");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    release.send_replace(layer.len());
    for c in clients {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        same(&body.unwrap(), &layer);
    }
    assert_eq!(fake.hits(Method::GET, &path), 1, "one upstream fetch");
    for (i, b) in berths.iter().enumerate() {
        // The owner counts `self` only when its own client came first: a fill started by a
        // peer's request is the owner's answer to that peer, not a hand-off.
        let peer = b
            .counter("berth_owner_handoffs_total{result=\"peer\"}")
            .await;
        assert_eq!(peer, u64::from(i != owner), "replica {i}");
        assert_eq!(
            b.counter("berth_owner_handoffs_total{result=\"fallback\"}")
                .await,
            0
        );
        if i != owner {
            assert_eq!(b.counter("berth_answers_total{source=\"peer\"}").await, 4);
        }
        // Kept locally on every replica: the next pull is a local hit, no peer asked.
        let again = b.get(&path).await;
        same(again.bytes(), &layer);
        // The last byte leaves once the digest checked; the file's rename comes just after.
        b.settled().await;
        assert!(b.blob_file(&blob).exists(), "replica {i} keeps the blob");
    }
    assert_eq!(fake.hits(Method::GET, &path), 1);
}

/// The owner gone (stopped; known to be down or not yet, as the probes go): the replica that
/// misses falls through to the next owner or its own upstream, and the client still gets the
/// blob. One fetch.
#[tokio::test]
async fn a_gone_owner_is_skipped() {
    let fake = FakeRegistry::start().await;
    let mut r = three(&fake).await;
    all_up(&r).await;
    // A blob the first replica does not own.
    let (layer, blob) = (0u64..)
        .map(|seed| {
            let layer = random_bytes(64 << 10, 500 + seed);
            let blob = fake.put_blob("library/app", layer.clone());
            (layer, blob)
        })
        .find(|(_, blob)| owner_of(&r, blob) != 0)
        .unwrap();
    let owner = owner_of(&r, &blob);
    drop(r.berths[owner].take());
    let b = r.berths[0].as_ref().unwrap();
    let path = format!("/v2/library/app/blobs/{blob}");
    let got = b.get(&path).await;
    assert_eq!(got.status, StatusCode::OK);
    same(got.bytes(), &layer);
    assert_eq!(fake.hits(Method::GET, &path), 1);
    let handed = b
        .counter("berth_owner_handoffs_total{result=\"peer\"}")
        .await
        + b.counter("berth_owner_handoffs_total{result=\"fallback\"}")
            .await
        + b.counter("berth_owner_handoffs_total{result=\"self\"}")
            .await;
    assert_eq!(handed, 1);
    let c = r.clusters[0].clone();
    until("the gone owner is marked down", || {
        !c.peers()[owner].is_up()
    })
    .await;
}

/// The owner's upstream sends wrong bytes: the owner's fill fails its check, the replica that
/// asked it gets a broken body and resumes from its own upstream (wrong too), so no client gets a
/// complete body, no replica caches anything, and with the fault gone the next pull is right.
#[tokio::test]
async fn wrong_upstream_bytes_are_cached_by_no_replica() {
    let fake = FakeRegistry::start().await;
    let r = three(&fake).await;
    all_up(&r).await;
    let layer = random_bytes(256 << 10, 91);
    let blob = fake.put_blob("library/app", layer.clone());
    let path = format!("/v2/library/app/blobs/{blob}");
    fake.fault(&path, support::Fault::WrongBytes);
    let owner = owner_of(&r, &blob);
    let asker = (owner + 1) % 3;
    let b = r.berths[asker].as_ref().unwrap();
    let got = b.get(&path).await;
    assert!(
        got.status != StatusCode::OK || got.body.is_err(),
        "a wrong blob never arrives whole"
    );
    for (i, b) in r.berths.iter().flatten().enumerate() {
        assert!(
            !b.blob_file(&blob).exists(),
            "replica {i} cached wrong bytes"
        );
    }
    assert!(
        r.berths[owner]
            .as_ref()
            .unwrap()
            .counter("berth_digest_mismatches_total")
            .await
            >= 1
    );
    fake.clear_faults();
    let got = b.get(&path).await;
    same(got.bytes(), &layer);
}

/// A peer that holds the secret but answers wrong bytes (a bug, a corrupt disk) is trusted for
/// availability, never for content: the bytes are checked here, the client never gets a
/// complete wrong body, nothing is cached.
#[tokio::test]
async fn a_peer_with_wrong_bytes_is_never_believed() {
    let fake = FakeRegistry::start().await;
    let liar = LyingPeer::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let urls = vec![
        format!("\"http://{}\"", listener.local_addr().unwrap()),
        format!("\"http://{}\"", liar.addr),
    ];
    let r = replicas(&fake, vec![listener], &urls).await;
    all_up(&r).await;
    // A blob the liar owns.
    let (layer, blob) = (0u64..)
        .map(|seed| {
            let layer = random_bytes(64 << 10, 700 + seed);
            let blob = fake.put_blob("library/app", layer.clone());
            (layer, blob)
        })
        .find(|(_, blob)| owner_of(&r, blob) == 1)
        .unwrap();
    *liar.body.lock().unwrap() = random_bytes(layer.len(), 1);
    let b = r.berths[0].as_ref().unwrap();
    let path = format!("/v2/library/app/blobs/{blob}");
    let got = b.get(&path).await;
    assert!(got.body.is_err(), "the wrong body is cut short");
    assert!(!b.blob_file(&blob).exists());
    assert_eq!(
        b.counter("berth_owner_handoffs_total{result=\"peer\"}")
            .await,
        1
    );
    assert!(liar.asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The peer is blamed, not the upstream (whose mismatches are counted).
    assert_eq!(b.counter("berth_digest_mismatches_total").await, 0);
    // The liar's request carried a proof for exactly that path.
    let seen = liar.last_path.lock().unwrap().clone();
    assert_eq!(
        seen,
        format!("/_berth/peer/v1/blobs/registry.test/library/app/{blob}")
    );
}

/// A blob from its owner is the owner's to upload to the shared bucket (it uploads what it
/// fills), so the replica that asked uploads nothing; unless the owner's body broke off and this
/// replica finished the fill from its own upstream: the owner may be gone (killed mid-fill) and
/// never upload it, so this replica does.
#[tokio::test]
async fn a_blob_from_its_owner_is_uploaded_only_by_a_replica_that_finished_it_from_the_upstream() {
    use berth::store::s3::testing::Faulty;
    use berth::store::s3::{Bucket, BucketMetrics};
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use object_store::path::Path;

    let fake = FakeRegistry::start().await;
    // The owner of the blobs below: whole and honest bodies, or one that breaks off.
    let owner = LyingPeer::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let urls = [
        format!("\"http://{}\"", listener.local_addr().unwrap()),
        format!("\"http://{}\"", owner.addr),
    ];
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("cluster-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}[cluster]\nself = {}\npeers = [{}]\nsecret_file = {:?}\n\
         health_interval = \"100ms\"\npeer_timeout = \"1s\"\ndown_after = 2\n\
         [[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n\
         retry_backoff = \"1ms\"\nstall_timeout = \"300ms\"\n",
        listeners_and_storage(dir.path()),
        urls[0],
        urls.join(", "),
        secret.display().to_string(),
        fake.url()
    );
    let shared = Arc::new(InMemory::new());
    let (store, _faults) = Faulty::new(shared.clone());
    let bucket = Bucket::with_store(Arc::new(store), "mirror/", BucketMetrics::new());
    let (b, c) = start_on_listener_with_bucket(&cfg, dir, listener, bucket).await;
    let r = Replicas {
        berths: vec![Some(b)],
        clusters: vec![c.expect("[cluster] builds a cluster")],
        _secret: secret_dir,
    };
    all_up(&r).await;
    let b = r.berths[0].as_ref().unwrap();
    let blob_owned_by = |who: usize, seed: u64| {
        (0u64..)
            .map(|i| {
                let layer = random_bytes(64 << 10, seed + i);
                let blob = fake.put_blob("library/app", layer.clone());
                (layer, blob)
            })
            .find(|(_, blob)| owner_of(&r, blob) == who)
            .unwrap()
    };
    let in_bucket = |blob: &str| {
        let (shared, key) = (
            shared.clone(),
            Path::from(format!(
                "mirror/blobs/sha256/{}",
                blob.trim_start_matches("sha256:")
            )),
        );
        async move { shared.get(&key).await.ok() }
    };

    // A whole body from the owner: cached here, not uploaded from here.
    let (whole, whole_blob) = blob_owned_by(1, 900);
    *owner.body.lock().unwrap() = whole.clone();
    let got = b.get(&format!("/v2/library/app/blobs/{whole_blob}")).await;
    same(got.bytes(), &whole);
    assert_eq!(
        b.counter("berth_owner_handoffs_total{result=\"peer\"}")
            .await,
        1
    );
    // A blob this replica owns comes from its upstream and is uploaded. Had the whole body been
    // uploaded too, its upload began before this fill did.
    let (own, own_blob) = blob_owned_by(0, 1900);
    same(
        b.get(&format!("/v2/library/app/blobs/{own_blob}"))
            .await
            .bytes(),
        &own,
    );
    assert!(
        eventually(|| async { in_bucket(&own_blob).await.is_some() }).await,
        "a fill from the upstream is uploaded"
    );
    assert!(
        in_bucket(&whole_blob).await.is_none(),
        "a blob from its owner is the owner's to upload"
    );

    // A body that stops half-way: resumed from the upstream, then uploaded from here.
    let (cut, cut_blob) = blob_owned_by(1, 2900);
    *owner.body.lock().unwrap() = cut.clone();
    *owner.cut.lock().unwrap() = Some(cut.len() / 2);
    let path = format!("/v2/library/app/blobs/{cut_blob}");
    same(b.get(&path).await.bytes(), &cut);
    assert_eq!(
        b.counter("berth_owner_handoffs_total{result=\"peer\"}")
            .await,
        2
    );
    assert_eq!(
        fake.hits(Method::GET, &path),
        1,
        "the rest, resumed from the upstream"
    );
    assert!(
        eventually(|| async { in_bucket(&cut_blob).await.is_some() }).await,
        "a blob this replica finished from the upstream is uploaded from here"
    );
    let body = in_bucket(&cut_blob).await.unwrap().bytes().await.unwrap();
    same(&body, &cut);
}

/// A peer that answers its health probes and every blob request with 200 and `body`; with `cut`
/// set, only that many of its bytes, then nothing (the length said the whole).
struct LyingPeer {
    addr: std::net::SocketAddr,
    body: Arc<std::sync::Mutex<Bytes>>,
    cut: Arc<std::sync::Mutex<Option<usize>>>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
    last_path: Arc<std::sync::Mutex<String>>,
}

impl LyingPeer {
    async fn start() -> LyingPeer {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(std::sync::Mutex::new(Bytes::new()));
        let cut = Arc::new(std::sync::Mutex::new(None));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let last_path = Arc::new(std::sync::Mutex::new(String::new()));
        let (b, c, a, l) = (body.clone(), cut.clone(), asked.clone(), last_path.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (b, c, a, l) = (b.clone(), c.clone(), a.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (body, cut) = if req.uri().path() == berth::cluster::HEALTH_PATH {
                            (Bytes::from_static(b"serving\n"), None)
                        } else {
                            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            *l.lock().unwrap() = req.uri().path().to_owned();
                            (b.lock().unwrap().clone(), *c.lock().unwrap())
                        };
                        async move { Ok::<_, std::convert::Infallible>(cut_body(body, cut)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        LyingPeer {
            addr,
            body,
            cut,
            asked,
            last_path,
        }
    }
}

/// A 200 announcing all of `body`, of which only the first `cut` bytes come: then the peer
/// sends nothing more (a stall, which the asking replica's `stall_timeout` ends).
fn cut_body(
    body: Bytes,
    cut: Option<usize>,
) -> http::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>> {
    use futures_util::StreamExt;
    use hyper::body::Frame;
    let len = body.len();
    let sent = body.slice(..cut.unwrap_or(len));
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(sent))]);
    let stream = match cut {
        None => first.boxed(),
        Some(_) => first.chain(futures_util::stream::pending()).boxed(),
    };
    http::Response::builder()
        .header(http::header::CONTENT_LENGTH, len)
        .body(BodyExt::boxed_unsync(http_body_util::StreamBody::new(
            stream,
        )))
        .unwrap()
}
