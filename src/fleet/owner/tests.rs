//! The forwarding rules against a fake owner replica (a bare hyper server that checks nothing
//! and answers what the test sets), and the pure parts: the paths, the body binding, the
//! verdicts, the time bounds.

use std::net::SocketAddr;
use std::sync::Mutex;

use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;
use crate::cluster::auth::{self, PeerKey, Refusal as ProofRefusal};
use crate::config::{ClusterConfig, Secret};
use crate::swarm::node::NodeUrl;
use crate::swarm::pieces::Layout;
use crate::swarm::tracker::Assignment;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// What the fake owner received: method, path and query, headers, body.
type Seen = (Method, String, HeaderMap, Bytes);

/// A fake owner: 200 to its health probe, `answer` to anything else; what it got is kept.
struct FakeOwner {
    addr: SocketAddr,
    answer: Arc<Mutex<(StatusCode, Bytes)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// How long each answer (but the health probe's) is held.
    hold: Arc<Mutex<Duration>>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeOwner {
    async fn start() -> FakeOwner {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new((StatusCode::OK, Bytes::new())));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(Mutex::new(Duration::ZERO));
        let (a, s, h) = (answer.clone(), seen.clone(), hold.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (a, s, h) = (a.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (a, s, h) = (a.clone(), s.clone(), h.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let pq = parts.uri.path_and_query().unwrap().to_string();
                            let (status, answer) = match pq == crate::cluster::HEALTH_PATH {
                                true => (StatusCode::OK, Bytes::new()),
                                false => {
                                    s.lock()
                                        .unwrap()
                                        .push((parts.method, pq, parts.headers, body));
                                    let hold = *h.lock().unwrap();
                                    tokio::time::sleep(hold).await;
                                    a.lock().unwrap().clone()
                                }
                            };
                            let mut r = Response::new(Full::new(answer));
                            *r.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    // One request per connection: once stopped, nothing pooled reaches it.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeOwner {
            addr,
            answer,
            seen,
            hold,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// Closes the listener (the accept task is gone when this returns): connections are
    /// refused from now on.
    async fn stop(&self) {
        let task = self.accept.lock().unwrap().take().unwrap();
        task.abort();
        let _ = task.await;
    }

    fn answers(&self, status: StatusCode, body: &str) {
        *self.answer.lock().unwrap() = (status, Bytes::from(body.to_owned()));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct Bed {
    owners: Owners,
    cluster: Arc<Cluster>,
    /// A digest the other peer owns, and one this replica owns.
    theirs: Digest,
    mine: Digest,
    _dir: tempfile::TempDir,
}

/// This replica (`me`, a port nothing listens on: it is never called) and `other`, seen up.
async fn bed(other: SocketAddr) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let me = "http://127.0.0.1:1";
    let other = format!("http://{other}");
    let mut cfg: ClusterConfig = toml::from_str(&format!(
        "self = {me:?}\npeers = [{me:?}, {other:?}]\nsecret_file = {:?}\npeer_timeout = \"500ms\"\ndown_after = 2\n",
        secret.display().to_string()
    ))
    .unwrap();
    cfg.validate().unwrap();
    let registry = Registry::new();
    let cluster = Arc::new(Cluster::new(&cfg, &registry).unwrap());
    cluster.probe_all().await;
    let owned_by = |i: usize| {
        (0u32..)
            .map(|n| Digest::of(&n.to_be_bytes()))
            .find(|d| std::ptr::eq(cluster.owners(d)[0], &cluster.peers()[i]))
            .unwrap()
    };
    let (mine, theirs) = (owned_by(0), owned_by(1));
    Bed {
        owners: Owners::new(cluster.clone(), &registry).unwrap(),
        cluster,
        theirs,
        mine,
        _dir: dir,
    }
}

impl Bed {
    fn counted(&self, call: &str, result: &str) -> u64 {
        self.owners.calls.with_label_values(&[call, result]).get()
    }
}

fn node(i: u8) -> NodeUrl {
    format!("http://10.0.0.{i}:5000").parse().unwrap()
}

fn call_of(n: &NodeUrl) -> Vec<u8> {
    format!(r#"{{"node":"{n}","have":0,"complete":false,"need_source":true}}"#).into_bytes()
}

fn oci_error(code: &str, detail: &str) -> String {
    format!(r#"{{"errors":[{{"code":"{code}","message":"m","detail":"{detail}"}}]}}"#)
}

/// The owner's answer is the node's: the call went there signed with the cluster's proof over
/// the path that names the body's digest, the body byte for byte, `?size` written again.
#[tokio::test]
async fn an_owners_answer_is_relayed_and_its_call_is_signed_over_the_body() {
    let owner = FakeOwner::start().await;
    let bed = bed(owner.addr).await;
    assert!(bed.cluster.peers()[1].is_up());
    let answer = SwarmAnswer {
        layout: Layout::new(1000),
        source: Some(Assignment::Node {
            url: node(2),
            have: 10,
            complete: false,
        }),
    };
    owner.answers(
        StatusCode::OK,
        std::str::from_utf8(&answer.encode()).unwrap(),
    );
    let body = call_of(&node(1));
    let got = bed
        .owners
        .swarm(&bed.theirs, &body, Some("size=1000"))
        .await;
    assert_eq!(got.unwrap().unwrap(), answer);
    assert_eq!(bed.counted("swarm", "owner"), 1);
    let seen = owner.seen();
    let (method, pq, headers, sent) = &seen[0];
    assert_eq!(*method, Method::POST);
    assert_eq!(*pq, swarm_path(&bed.theirs, &body, Some(1000)));
    assert!(pq.contains(&Digest::of(&body).to_string()));
    assert_eq!(&sent[..], &body[..]);
    let key = PeerKey::new(&Secret::new(SECRET));
    let proof = headers.get("authorization");
    assert_eq!(key.verify("POST", pq, proof, auth::now()), Ok(()));
    // The same proof over another body's path is no proof.
    let other = swarm_path(&bed.theirs, &call_of(&node(9)), Some(1000));
    assert_eq!(
        key.verify("POST", &other, proof, auth::now()),
        Err(ProofRefusal::BadProof)
    );
    // Not the fleet's proof either.
    let fleet = super::super::key(&Secret::new(SECRET));
    assert_eq!(
        fleet.verify("POST", pq, proof, auth::now()),
        Err(ProofRefusal::Missing)
    );

    // The piece table too.
    let table = Pieces {
        layout: Layout::new(1000),
        first: 0,
        hashes: vec![[7; 32]],
        complete: true,
    };
    owner.answers(
        StatusCode::OK,
        std::str::from_utf8(&table.encode()).unwrap(),
    );
    let got = bed.owners.pieces(&bed.theirs, Some("from=0")).await;
    assert_eq!(got.unwrap().unwrap(), table);
    let seen = owner.seen();
    assert_eq!(seen[1].0, Method::GET);
    assert_eq!(seen[1].1, pieces_path(&bed.theirs, 0));
    assert_eq!(bed.counted("pieces", "owner"), 1);
}

/// The owner's verdicts are the node's: 400, 429, and a swarm call's 404 `BLOB_UNKNOWN`; a piece
/// call's 404 is answered here (this replica may have the table).
#[tokio::test]
async fn an_owners_verdict_is_the_nodes() {
    let owner = FakeOwner::start().await;
    let bed = bed(owner.addr).await;
    let body = call_of(&node(1));
    let swarm = || bed.owners.swarm(&bed.theirs, &body, None);
    owner.answers(
        StatusCode::BAD_REQUEST,
        &oci_error("UNSUPPORTED", "size=3, but the blob has 4 bytes"),
    );
    match swarm().await {
        Some(Err(Refusal::BadRequest(m))) => assert!(m.contains("size=3"), "{m}"),
        other => panic!("{other:?}"),
    }
    owner.answers(
        StatusCode::TOO_MANY_REQUESTS,
        &oci_error("TOOMANYREQUESTS", "full"),
    );
    assert!(matches!(swarm().await, Some(Err(Refusal::Full(_)))));
    owner.answers(StatusCode::NOT_FOUND, &oci_error("BLOB_UNKNOWN", "no size"));
    assert!(matches!(swarm().await, Some(Err(Refusal::Unknown(_)))));
    assert_eq!(bed.counted("swarm", "owner"), 3);
    assert!(bed.owners.pieces(&bed.theirs, None).await.is_none());
    assert_eq!(bed.counted("pieces", "fallback"), 1);
}

/// An owner that answers garbage, a 5xx, a 404 that is not its tracker's (no tracker there, or
/// an older berth), or refuses this replica's proof: this replica answers. None marks the owner
/// down (it answered).
#[tokio::test]
async fn a_failing_owner_leaves_the_call_here() {
    let owner = FakeOwner::start().await;
    let bed = bed(owner.addr).await;
    let body = call_of(&node(1));
    for (status, answer) in [
        (StatusCode::OK, "{\"size\": \"many\"}".to_owned()),
        (StatusCode::OK, "not json".to_owned()),
        // A source that is no node URL, and the asker itself as its own source.
        (
            StatusCode::OK,
            r#"{"size":10,"piece_size":1048576,"source":{"url":"http://10.0.0.2:5000/x","have":0,"complete":false}}"#.to_owned(),
        ),
        (
            StatusCode::OK,
            r#"{"size":10,"piece_size":1048576,"source":{"url":"http://10.0.0.1:5000","have":0,"complete":false}}"#.to_owned(),
        ),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            oci_error("UNKNOWN", "boom"),
        ),
        (
            StatusCode::NOT_FOUND,
            oci_error("NAME_UNKNOWN", "not a peer API path"),
        ),
        (StatusCode::METHOD_NOT_ALLOWED, String::new()),
        (StatusCode::UNAUTHORIZED, String::new()),
    ] {
        owner.answers(status, &answer);
        let got = bed.owners.swarm(&bed.theirs, &body, None).await;
        assert!(got.is_none(), "{status} {answer}: {got:?}");
    }
    owner.answers(StatusCode::OK, "{\"first\": -1}");
    assert!(bed.owners.pieces(&bed.theirs, None).await.is_none());
    assert_eq!(bed.counted("swarm", "fallback"), 8);
    assert_eq!(bed.counted("pieces", "fallback"), 1);
    assert_eq!(bed.counted("swarm", "owner"), 0);
    assert!(bed.cluster.peers()[1].is_up());
}

/// An owner that is gone: the call is answered here, the owner marked down at once, and the
/// next call does not try it (this replica owns the digest while the other is down).
#[tokio::test]
async fn a_gone_owner_is_marked_down_and_skipped() {
    let owner = FakeOwner::start().await;
    let bed = bed(owner.addr).await;
    assert!(bed.cluster.peers()[1].is_up());
    owner.stop().await;
    let body = call_of(&node(1));
    assert!(bed.owners.swarm(&bed.theirs, &body, None).await.is_none());
    assert_eq!(bed.counted("swarm", "fallback"), 1);
    assert!(!bed.cluster.peers()[1].is_up(), "a refused connect: down");
    assert!(bed.owners.pieces(&bed.theirs, None).await.is_none());
    assert_eq!(bed.counted("pieces", "self"), 1);
    assert!(owner.seen().is_empty());
}

/// An owner that holds its answer past the bound: the call is answered here once the bound is
/// up (the node's own wait leaves room for it), and the owner counts a failed probe, not down at
/// once (it is slow, not gone: `down_after` of these mark it down).
#[tokio::test]
async fn a_slow_owner_costs_at_most_the_bound() {
    let owner = FakeOwner::start().await;
    let bed = bed(owner.addr).await;
    *owner.hold.lock().unwrap() = CALL_BUDGET;
    let body = call_of(&node(1));
    let start = std::time::Instant::now();
    assert!(bed.owners.swarm(&bed.theirs, &body, None).await.is_none());
    let took = start.elapsed();
    assert!(
        (SWARM_WAIT..SWARM_WAIT + Duration::from_millis(500)).contains(&took),
        "{took:?}"
    );
    assert_eq!(bed.counted("swarm", "fallback"), 1);
    assert!(bed.cluster.peers()[1].is_up(), "one slow answer: still up");
    assert_eq!(owner.seen().len(), 1);
}

/// This replica's own digests, and calls this replica refuses anyway (a body or query that is
/// wrong), are answered here without asking anyone.
#[tokio::test]
async fn own_digests_and_wrong_calls_stay_here() {
    let owner = FakeOwner::start().await;
    let bed = bed(owner.addr).await;
    let body = call_of(&node(1));
    assert!(bed.owners.swarm(&bed.mine, &body, None).await.is_none());
    assert!(bed.owners.pieces(&bed.mine, None).await.is_none());
    assert_eq!(bed.counted("swarm", "self"), 1);
    assert_eq!(bed.counted("pieces", "self"), 1);
    for (b, q) in [
        (&b"not json"[..], None),
        (&br#"{"node":"http://10.0.0.1:5000/path"}"#[..], None),
        (&body[..], Some("size=many")),
        (&body[..], Some("size=1&x=2")),
    ] {
        assert!(bed.owners.swarm(&bed.theirs, b, q).await.is_none());
    }
    assert!(
        bed.owners
            .pieces(&bed.theirs, Some("from=x"))
            .await
            .is_none()
    );
    assert!(owner.seen().is_empty(), "nothing was forwarded");
}

#[test]
fn forwarded_paths_name_the_body() {
    let d = Digest::of(b"blob");
    let p = swarm_path(&d, b"body", None);
    let rest = p.strip_prefix(FORWARD_SWARM_PATH).unwrap();
    assert_eq!(
        parse_swarm_rest(rest),
        Some((d.clone(), Digest::of(b"body")))
    );
    assert!(body_matches(b"body", &Digest::of(b"body")));
    assert!(!body_matches(b"other", &Digest::of(b"body")));
    assert_eq!(swarm_path(&d, b"body", Some(7)), format!("{p}?size=7"));
    assert_eq!(
        pieces_path(&d, 3),
        format!("{FORWARD_PIECES_PATH}{d}?from=3")
    );
    for bad in [
        "",
        "x",
        &format!("{d}"),
        &format!("{d}/x"),
        &format!("x/{d}"),
    ] {
        assert_eq!(parse_swarm_rest(bad), None, "{bad:?}");
    }
}

/// A forwarded call that fails at its bound still leaves this replica the time to answer
/// within the node's own wait for the call.
#[test]
fn a_failed_forward_leaves_time_to_answer_here() {
    assert!(SWARM_WAIT + Duration::from_millis(500) < CALL_BUDGET);
    assert!(PIECES_WAIT + WAIT < CALL_BUDGET);
}

#[test]
fn error_bodies_are_read_as_far_as_they_go() {
    assert_eq!(
        error_of(oci_error("BLOB_UNKNOWN", "why").as_bytes()),
        ("BLOB_UNKNOWN".to_owned(), "why".to_owned())
    );
    assert_eq!(
        error_of(br#"{"errors":[{"code":"X","message":"m"}]}"#),
        ("X".to_owned(), "m".to_owned())
    );
    assert_eq!(error_of(b"garbage"), (String::new(), String::new()));
}

/// An owner's failures are warned about once per `WARN_EVERY`, the rest go to debug.
#[test]
fn warnings_are_spaced() {
    let t0 = std::time::Instant::now();
    let mut last = None;
    assert!(time_to_warn(&mut last, t0));
    assert!(!time_to_warn(&mut last, t0 + Duration::from_secs(1)));
    assert!(!time_to_warn(
        &mut last,
        t0 + WARN_EVERY - Duration::from_millis(1)
    ));
    assert!(time_to_warn(&mut last, t0 + WARN_EVERY));
    assert!(!time_to_warn(
        &mut last,
        t0 + WARN_EVERY + Duration::from_secs(1)
    ));
    // A clock that seems to go back (another thread's earlier `now`): no warning, no panic.
    assert!(!time_to_warn(&mut last, t0));
}
