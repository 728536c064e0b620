//! Three berths on loopback configured as one cluster (`[cluster]`): each sees the others up
//! through the signed health probes; one stopped is marked down within a bounded time and only
//! its digests move; a peer request without a valid proof gets 401 and is counted.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use berth::cluster::Cluster;
use berth::cluster::auth::{self, PeerKey};
use berth::config::Secret;
use berth::oci::Digest;
use support::FakeRegistry;
use support::instance::{Berth, berth, listeners_and_storage, start_on_listener};

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
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("cluster-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("\"http://{}\"", l.local_addr().unwrap()))
        .collect();
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
    let good = key.sign("GET", health, auth::now());
    let got = b
        .request(
            Method::GET,
            health,
            &[("authorization", good.to_str().unwrap())],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.bytes()[..], b"serving\n");
    let other = "/_berth/peer/v1/nothing";
    let proof = key.sign("GET", other, auth::now());
    let got = b
        .request(
            Method::GET,
            other,
            &[("authorization", proof.to_str().unwrap())],
        )
        .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);

    // The registry API is untouched by it.
    assert_eq!(b.get("/v2/").await.status, StatusCode::OK);
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
