//! The client side against a peer made of a bare hyper server: what a blob request carries, how
//! each failure is named, counted and moves the peer's state.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::*;
use crate::config::Secret;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The wait for calls a test expects answered (a fake peer on loopback): far past the 300 ms
/// `peer_timeout` these tests configure, which a loaded machine can exceed (the tests of
/// timeouts use that one).
const ANSWERED: Duration = Duration::from_secs(20);

fn cluster(peers: &[String], me: usize) -> (Cluster, prometheus::Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let list: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let mut cfg: ClusterConfig = toml::from_str(&format!(
        "self = {:?}\npeers = [{}]\nsecret_file = {:?}\npeer_timeout = \"300ms\"\ndown_after = 2\n",
        peers[me],
        list.join(", "),
        secret.display().to_string()
    ))
    .unwrap();
    cfg.validate().unwrap();
    let registry = prometheus::Registry::new();
    let c = Cluster::new(&cfg, &registry).unwrap();
    (c, registry, dir)
}

fn counter(v: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
    v.with_label_values(labels).get()
}

/// A peer that answers every request with `status` and hands the test what it received.
async fn fake_peer(
    status: StatusCode,
) -> (SocketAddr, mpsc::UnboundedReceiver<(String, HeaderMap)>) {
    slow_peer(status, Duration::ZERO).await
}

/// As [`fake_peer`], holding each answer's head for `delay` (an owner asking its upstream).
async fn slow_peer(
    status: StatusCode,
    delay: Duration,
) -> (SocketAddr, mpsc::UnboundedReceiver<(String, HeaderMap)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let pq = req.uri().path_and_query().unwrap().to_string();
                    let _ = tx.send((pq, req.headers().clone()));
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut r = Response::new(Full::new(Bytes::from_static(b"blob bytes")));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A loopback port nothing listens on.
async fn dead_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn a_blob_request_is_signed_and_streams() {
    let (addr, mut seen) = fake_peer(StatusCode::PARTIAL_CONTENT).await;
    let peers = vec!["http://127.0.0.1:1".to_owned(), format!("http://{addr}")];
    let (c, _registry, _dir) = cluster(&peers, 0);
    let c = Arc::new(c);
    let repo: RepoName = "library/app".parse().unwrap();
    let digest = Digest::of(b"blob bytes");
    let peer = &c.peers()[1];
    let range = Some(BlobRange {
        start: 5,
        end: None,
    });
    let resp = c
        .fetch_blob(peer, "registry.test:5001", &repo, &digest, range, ANSWERED)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"blob bytes");

    let (pq, headers) = seen.recv().await.unwrap();
    assert_eq!(
        pq,
        format!("/_berth/peer/v1/blobs/registry.test%3A5001/library/app/{digest}")
    );
    assert_eq!(headers.get("range").unwrap(), "bytes=5-");
    // The proof checks out with the shared secret, for this very request, and holds no secret.
    let key = PeerKey::new(&Secret::new(SECRET));
    let proof = headers.get("authorization");
    assert!(!proof.unwrap().to_str().unwrap().contains(SECRET));
    assert_eq!(key.verify("GET", &pq, proof, auth::now()), Ok(()));
    assert_eq!(
        key.verify("GET", HEALTH_PATH, proof, auth::now()),
        Err(Refusal::BadProof)
    );
    assert_eq!(counter(&c.metrics.requests, &[&peer.id, "ok"]), 1);
}

/// A peer that cannot be connected to is down at once; one that refuses our proof or answers
/// an error counts toward `down_after`; the outcomes are named in the metric.
#[tokio::test]
async fn failures_are_named_and_move_the_state() {
    let (refusing, _seen) = fake_peer(StatusCode::UNAUTHORIZED).await;
    let (failing, _seen2) = fake_peer(StatusCode::NOT_FOUND).await;
    let dead = dead_port().await;
    let peers = vec![
        "http://127.0.0.1:1".to_owned(),
        format!("http://{dead}"),
        format!("http://{refusing}"),
        format!("http://{failing}"),
    ];
    let (c, _registry, _dir) = cluster(&peers, 0);
    let repo: RepoName = "library/app".parse().unwrap();
    let digest = Digest::of(b"x");
    // All up, as after good probes.
    for i in 1..4 {
        c.members.probe_ok(i);
    }
    assert_eq!(c.owners(&digest).len(), 4);

    let e = c
        .fetch_blob(&c.peers()[1], "r.test", &repo, &digest, None, ANSWERED)
        .await
        .unwrap_err();
    assert!(matches!(e, PeerError::Connect(_)), "{e:?}");
    assert!(!c.members.is_live(1), "down after one connect error");
    assert!(!c.owners(&digest).iter().any(|p| p.id == c.peers()[1].id));

    let e = c
        .fetch_blob(&c.peers()[2], "r.test", &repo, &digest, None, ANSWERED)
        .await
        .unwrap_err();
    assert_eq!(e, PeerError::Refused(StatusCode::UNAUTHORIZED));
    assert!(c.members.is_live(2), "one refusal is not down_after (2)");
    let _ = c
        .fetch_blob(&c.peers()[2], "r.test", &repo, &digest, None, ANSWERED)
        .await;
    assert!(!c.members.is_live(2), "down after two in a row");

    let e = c
        .fetch_blob(&c.peers()[3], "r.test", &repo, &digest, None, ANSWERED)
        .await
        .unwrap_err();
    assert_eq!(e, PeerError::Status(StatusCode::NOT_FOUND));

    let dead_id = &c.peers()[1].id;
    let refusing_id = &c.peers()[2].id;
    let failing_id = &c.peers()[3].id;
    assert_eq!(counter(&c.metrics.requests, &[dead_id, "connect_error"]), 1);
    assert_eq!(counter(&c.metrics.requests, &[refusing_id, "refused"]), 2);
    assert_eq!(counter(&c.metrics.requests, &[failing_id, "status"]), 1);
}

/// A peer that accepts connections and then says nothing; one that closes them at once.
async fn silent_and_closing() -> (SocketAddr, SocketAddr) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (silent.local_addr().unwrap(), closing.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = closing.accept().await {
            drop(s);
        }
    });
    addrs
}

/// No answer within `peer_timeout`, or a connection closed before the answer: named, counted,
/// and counted toward `down_after` (not down at once: the peer could be connected to).
#[tokio::test]
async fn silent_and_closing_peers() {
    let (silent, closing) = silent_and_closing().await;
    let peers = vec![
        "http://127.0.0.1:1".to_owned(),
        format!("http://{silent}"),
        format!("http://{closing}"),
    ];
    let (c, _registry, _dir) = cluster(&peers, 0);
    c.members.probe_ok(1);
    c.members.probe_ok(2);
    let repo: RepoName = "library/app".parse().unwrap();
    let digest = Digest::of(b"x");
    let started = std::time::Instant::now();
    let e = c
        .fetch_blob(
            &c.peers()[1],
            "r.test",
            &repo,
            &digest,
            None,
            c.client.timeout(),
        )
        .await
        .unwrap_err();
    assert_eq!(e, PeerError::Timeout(std::time::Duration::from_millis(300)));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(c.members.is_live(1), "one timeout is not down_after (2)");
    let e = c
        .fetch_blob(
            &c.peers()[2],
            "r.test",
            &repo,
            &digest,
            None,
            c.client.timeout(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, PeerError::Other(_)), "{e:?}");
    assert!(c.members.is_live(2));
    assert_eq!(
        counter(&c.metrics.requests, &[&c.peers()[1].id, "timeout"]),
        1
    );
    assert_eq!(
        counter(&c.metrics.requests, &[&c.peers()[2].id, "error"]),
        1
    );
    // The probes fail the same ways; two in a row take both down.
    c.probe_all().await;
    assert!(!c.members.is_live(1) && !c.members.is_live(2));
    assert_eq!(
        counter(&c.metrics.probes, &[&c.peers()[1].id, "timeout"]),
        1
    );
    assert_eq!(counter(&c.metrics.probes, &[&c.peers()[2].id, "error"]), 1);
}

/// Probes: a good answer brings a peer up, a dead one stays down; this berth is never probed.
#[tokio::test]
async fn probes_bring_peers_up() {
    let (live, mut seen) = fake_peer(StatusCode::OK).await;
    let dead = dead_port().await;
    let peers = vec![
        "http://127.0.0.1:1".to_owned(),
        format!("http://{live}"),
        format!("http://{dead}"),
    ];
    let (c, registry, _dir) = cluster(&peers, 0);
    c.probe_all().await;
    assert!(c.members.is_live(1));
    assert!(!c.members.is_live(2));
    let (pq, headers) = seen.recv().await.unwrap();
    assert_eq!(pq, HEALTH_PATH);
    let key = PeerKey::new(&Secret::new(SECRET));
    assert_eq!(
        key.verify("GET", &pq, headers.get("authorization"), auth::now()),
        Ok(())
    );
    let id = |i: usize| c.peers()[i].id.clone();
    assert_eq!(counter(&c.metrics.probes, &[&id(1), "ok"]), 1);
    assert_eq!(counter(&c.metrics.probes, &[&id(2), "connect_error"]), 1);
    assert!(
        !registry
            .gather()
            .iter()
            .flat_map(|f| f.get_metric())
            .any(|m| m.get_label().iter().any(|l| l.value() == id(0))),
        "this berth is never probed"
    );
}

/// Incoming proofs: refusals are counted by reason.
#[test]
fn admit_counts_refusals() {
    let (c, _registry, _dir) = cluster(&["http://127.0.0.1:1".to_owned()], 0);
    let key = PeerKey::new(&Secret::new(SECRET));
    let mut h = HeaderMap::new();
    assert_eq!(c.admit("GET", HEALTH_PATH, &h), Err(Refusal::Missing));
    h.insert("authorization", key.sign("GET", HEALTH_PATH, auth::now()));
    assert_eq!(c.admit("GET", HEALTH_PATH, &h), Ok(()));
    assert_eq!(
        c.admit("GET", "/_berth/peer/v1/x", &h),
        Err(Refusal::BadProof)
    );
    assert_eq!(counter(&c.metrics.auth_failures, &["missing"]), 1);
    assert_eq!(counter(&c.metrics.auth_failures, &["bad_proof"]), 1);
}

/// A hand-off asks the owners in order: one that fails passes the miss to the next, one that
/// answers a 4xx (its upstream's answer) sends it to this berth's own upstream and nobody else,
/// and this berth first in the order keeps it. Each outcome is counted once.
#[tokio::test]
async fn a_hand_off_goes_down_the_owners_until_an_answer() {
    let (refusing, _r) = fake_peer(StatusCode::SERVICE_UNAVAILABLE).await;
    let (missing, _m) = fake_peer(StatusCode::NOT_FOUND).await;
    let (serving, served) = fake_peer(StatusCode::OK).await;
    let peers = vec![
        "http://127.0.0.1:1".to_owned(),
        format!("http://{refusing}"),
        format!("http://{missing}"),
        format!("http://{serving}"),
    ];
    let (c, _registry, _dir) = cluster(&peers, 0);
    for i in 1..4 {
        c.members.probe_ok(i);
    }
    let repo: RepoName = "library/app".parse().unwrap();
    let rank = |d: &Digest| -> Vec<usize> {
        c.owners(d)
            .iter()
            .map(|p| c.peers().iter().position(|q| q.id == p.id).unwrap())
            .collect()
    };
    // A digest for each order wanted, found by trying.
    let find = |want: &dyn Fn(&[usize]) -> bool| {
        (0u32..)
            .map(|n| Digest::of(&n.to_be_bytes()))
            .find(|d| want(&rank(d)))
            .unwrap()
    };
    let wait = c.client.timeout();
    let handoffs = |r: &str| counter(&c.metrics.handoffs, &[r]);

    // 503 first, then the serving peer: its answer.
    let d = find(&|o| o[..2] == [1, 3]);
    let got = c.from_owner("r.test", &repo, &d, wait).await;
    assert_eq!(got.unwrap().status(), StatusCode::OK);
    assert_eq!(handoffs("peer"), 1);

    // 404 first, the serving peer next: not asked; this berth fetches.
    let d = find(&|o| o[..2] == [2, 3]);
    let before = served.len();
    assert!(c.from_owner("r.test", &repo, &d, wait).await.is_none());
    assert_eq!(served.len(), before, "nobody asked after a 4xx");
    assert_eq!(handoffs("fallback"), 1);

    // This berth first: nobody is asked.
    let d = find(&|o| o[0] == 0);
    assert!(c.from_owner("r.test", &repo, &d, wait).await.is_none());
    assert_eq!(handoffs("self"), 1);
    assert_eq!(handoffs("peer"), 1);
}

/// An owner that misses asks its upstream before it answers: the hand-off waits `peer_timeout`
/// plus the upstream's wait for its head, not `peer_timeout` alone (which would send every miss
/// behind a slow upstream there twice).
#[tokio::test]
async fn a_hand_off_waits_for_an_owner_asking_its_upstream() {
    // peer_timeout is 300 ms here; the owner answers after 600 ms.
    let (slow, _seen) = slow_peer(StatusCode::OK, Duration::from_millis(600)).await;
    let peers = vec!["http://127.0.0.1:1".to_owned(), format!("http://{slow}")];
    let (c, _registry, _dir) = cluster(&peers, 0);
    c.members.probe_ok(1);
    let repo: RepoName = "library/app".parse().unwrap();
    let d = (0u32..)
        .map(|n| Digest::of(&n.to_be_bytes()))
        .find(|d| !c.is_me(c.owners(d)[0]))
        .unwrap();
    let upstream_wait = Duration::from_secs(5);
    let got = c.from_owner("r.test", &repo, &d, upstream_wait).await;
    assert_eq!(got.unwrap().status(), StatusCode::OK);
    assert_eq!(counter(&c.metrics.handoffs, &["peer"]), 1);
    // With no upstream wait it is given up at peer_timeout, and this berth fetches.
    let got = c.from_owner("r.test", &repo, &d, Duration::ZERO).await;
    assert!(got.is_none());
    assert_eq!(
        counter(&c.metrics.requests, &[&c.peers()[1].id, "timeout"]),
        1
    );
}

/// A small signed exchange (the fleet's forwarded calls): the method, path and body go as given,
/// signed over the method and path; any status comes back with its body but a refusal; a body
/// over the limit is an error; each is counted by outcome.
#[tokio::test]
async fn an_exchange_reads_any_answer_but_a_refusal() {
    let (failing, mut seen) = fake_peer(StatusCode::NOT_FOUND).await;
    let (refusing, _seen2) = fake_peer(StatusCode::FORBIDDEN).await;
    let peers = vec![
        "http://127.0.0.1:1".to_owned(),
        format!("http://{failing}"),
        format!("http://{refusing}"),
    ];
    let (c, _registry, _dir) = cluster(&peers, 0);
    let wait = ANSWERED;
    let (status, body) = c
        .exchange(
            &c.peers()[1],
            http::Method::POST,
            "/_berth/peer/v1/x?y=1",
            Bytes::from_static(b"{}"),
            wait,
            64,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::NOT_FOUND, &b"blob bytes"[..])
    );
    let (pq, headers) = seen.recv().await.unwrap();
    assert_eq!(pq, "/_berth/peer/v1/x?y=1");
    let key = PeerKey::new(&Secret::new(SECRET));
    let proof = headers.get("authorization");
    assert_eq!(key.verify("POST", &pq, proof, auth::now()), Ok(()));
    assert_eq!(
        counter(&c.metrics.requests, &[&c.peers()[1].id, "status"]),
        1
    );
    // Over the limit: an error, not a truncated answer.
    let e = c
        .exchange(
            &c.peers()[1],
            http::Method::GET,
            "/_berth/peer/v1/x",
            Bytes::new(),
            wait,
            4,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, PeerError::Other(_)), "{e:?}");
    assert_eq!(
        counter(&c.metrics.requests, &[&c.peers()[1].id, "error"]),
        1
    );
    let e = c
        .exchange(
            &c.peers()[2],
            http::Method::GET,
            "/_berth/peer/v1/x",
            Bytes::new(),
            wait,
            64,
        )
        .await
        .unwrap_err();
    assert_eq!(e, PeerError::Refused(StatusCode::FORBIDDEN));
    assert_eq!(
        counter(&c.metrics.requests, &[&c.peers()[2].id, "refused"]),
        1
    );
}
