//! The parent's side of the swarm over real sockets (`fleet::parent`, `fleet::tables`,
//! `http::fleet`): a central berth with `[fleet]` and a fake upstream; nodes' calls made by hand,
//! fleet-signed. Nodes joining a fresh digest form the tracker's chains; the piece table of a
//! pulled blob matches the blob, follows a fill in progress (a waiting request gets the next hash
//! as the fill moves, the last hash only once the digest checked out) and is dropped with a fill
//! whose body is wrong; refusals (no proof, a node URL that is no origin, an oversized body, a
//! digest that is not one, the wrong method) and a node berth, which is no tracker; and the whole
//! protocol as a node drives it (pull from the parent, check the pieces, hold, be handed out, be
//! blamed).

use crate::support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::fleet::{node_on, secret_file};
use crate::swarm::piece_hashes;
use berth::cluster::auth;
use berth::config::Secret;
use berth::oci::Digest;
use berth::swarm::node::{Fleet, NodeUrl};
use berth::swarm::pieces::Layout;
use berth::swarm::protocol::{MAX_SMALL_BODY, Pieces, SwarmAnswer, SwarmRequest};
use berth::swarm::tracker::Assignment;
use support::instance::{Berth, eventually, listeners_and_storage, start_toml};
use support::{FakeRegistry, Fault, random_bytes};

const SECRET: &str = "fleet-secret-0123456789abcdef-0123456789";
const MIB: usize = 1 << 20;

struct Bed {
    fake: FakeRegistry,
    parent: Berth,
    secret: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

/// A parent (`[fleet]` without `parent`) in front of one fake upstream, the default.
async fn bed() -> Bed {
    let fake = FakeRegistry::start().await;
    let (secret_dir, secret) = secret_file(SECRET);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"{}
        [fleet]
        secret_file = {:?}
        [[upstream]]
        name = "registry.test"
        url = "{}"
        default = true
        library_prefix = true
        "#,
        listeners_and_storage(dir.path()),
        secret.display().to_string(),
        fake.url(),
    );
    let parent = start_toml(&cfg, dir).await;
    Bed {
        fake,
        parent,
        secret,
        client: Client::builder(TokioExecutor::new()).build_http(),
        _dir: secret_dir,
    }
}

/// What a fleet call got.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Bed {
    fn proof(&self, method: &str, path: &str) -> http::HeaderValue {
        berth::fleet::key(&Secret::new(SECRET)).sign(method, path, auth::now())
    }

    /// `method path` to `to` with `body`, fleet-signed unless `signed` is false.
    async fn call_on(
        &self,
        to: &Berth,
        method: Method,
        path: &str,
        body: Vec<u8>,
        signed: bool,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", to.addr));
        if signed && berth::fleet::has_body(method.as_str()) {
            let key = berth::fleet::key(&Secret::new(SECRET));
            let (authz, named) =
                berth::fleet::sign_body(&key, method.as_str(), path, &body, auth::now());
            req = req
                .header("authorization", authz)
                .header(berth::fleet::BODY_HEADER, named);
        } else if signed {
            req = req.header("authorization", self.proof(method.as_str(), path));
        }
        let resp = self
            .client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer { status, body }
    }

    async fn call(&self, method: Method, path: &str, body: Vec<u8>) -> Answer {
        self.call_on(&self.parent, method, path, body, true).await
    }

    /// A node's swarm call for `digest`.
    async fn swarm(&self, digest: &Digest, req: &SwarmRequest, size: Option<u64>) -> Answer {
        let path = berth::fleet::swarm_path(digest, size);
        self.call(Method::POST, &path, req.encode()).await
    }

    /// The piece hashes of `digest` from `from` on, parsed for a blob of `size` bytes.
    async fn pieces(&self, digest: &Digest, from: u32, size: u64) -> Pieces {
        let got = self.pieces_raw(digest, from).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        Pieces::parse(&got.body, size).unwrap()
    }

    async fn pieces_raw(&self, digest: &Digest, from: u32) -> Answer {
        let path = berth::fleet::pieces_path(digest, from);
        self.call(Method::GET, &path, Vec::new()).await
    }

    /// Asks until the table has every hash (bounded).
    async fn whole_table(&self, digest: &Digest, size: u64) -> Pieces {
        let mut p = self.pieces(digest, 0, size).await;
        let deadline = Instant::now() + support::instance::WAIT;
        while !p.complete {
            assert!(Instant::now() < deadline, "the table never completed");
            p = self.pieces(digest, 0, size).await;
        }
        p
    }
}

fn node(i: u8) -> NodeUrl {
    format!("http://10.0.0.{i}:5000").parse().unwrap()
}

fn join(n: &NodeUrl) -> SwarmRequest {
    SwarmRequest {
        node: n.clone(),
        have: 0,
        complete: false,
        need_source: true,
        uploads: None,
        dropped: None,
    }
}

fn parse_answer(a: &Answer, me: &NodeUrl, fleet: &Fleet) -> SwarmAnswer {
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    SwarmAnswer::parse(&a.body, fleet, me).unwrap()
}

/// Three nodes join a fresh digest (nobody has it, not even the parent: the size comes from the
/// call's `?size`): the first gets the parent, each next one the node before it. Without a size the
/// parent knows nothing: 404. Counted by outcome; the swarm is counted.
#[tokio::test]
async fn nodes_joining_a_fresh_digest_form_chains() {
    let bed = bed().await;
    let d = Digest::of(b"a fresh blob nobody has");
    let size = 40 * MIB as u64;
    let fleet = Fleet::new((1..=3).map(node));
    let none = bed.swarm(&d, &join(&node(1)), None).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.text());
    assert!(none.text().contains("BLOB_UNKNOWN"), "{}", none.text());
    let mut sources = Vec::new();
    for i in 1..=3 {
        let got = bed.swarm(&d, &join(&node(i)), Some(size)).await;
        let a = parse_answer(&got, &node(i), &fleet);
        assert_eq!(a.layout, Layout::new(size));
        sources.push(a.source.unwrap());
    }
    assert_eq!(sources[0], Assignment::Parent);
    for (i, s) in sources.iter().enumerate().skip(1) {
        match s {
            Assignment::Node { url, have, .. } => {
                assert_eq!(*url, node(i as u8), "one parent slot: a chain");
                assert_eq!(*have, 0);
            }
            other => panic!("{other:?}"),
        }
    }
    // A report that keeps its source: no source in the answer.
    let report = SwarmRequest {
        have: 3 * MIB as u64,
        need_source: false,
        ..join(&node(1))
    };
    let a = parse_answer(&bed.swarm(&d, &report, None).await, &node(1), &fleet);
    assert_eq!(a.source, None);
    let p = &bed.parent;
    let outcome = |o: &str| format!("berth_fleet_tracker_requests_total{{outcome=\"{o}\"}}");
    assert_eq!(p.counter(&outcome("assigned_parent")).await, 1);
    assert_eq!(p.counter(&outcome("assigned_node")).await, 2);
    assert_eq!(p.counter(&outcome("kept")).await, 1);
    assert_eq!(p.counter(&outcome("unknown_size")).await, 1);
    assert_eq!(p.counter("berth_fleet_swarms ").await, 1);
}

/// A blob pulled through the parent: its table is complete, every hash is the sha256 of its
/// piece, `from=K` answers from piece K, and a swarm call needs no `?size` any more.
#[tokio::test]
async fn the_table_of_a_pulled_blob_matches_it() {
    let bed = bed().await;
    let layer = random_bytes(3 * MIB + 12_345, 1);
    let blob = bed.fake.put_blob("library/app", layer.clone());
    let got = bed.parent.get(&format!("/v2/app/blobs/{blob}")).await;
    assert_eq!(got.bytes().len(), layer.len());
    bed.parent.settled().await;
    let d: Digest = blob.parse().unwrap();
    let size = layer.len() as u64;
    let want = piece_hashes(&layer);
    assert_eq!(want.len(), 4);
    let p = bed.whole_table(&d, size).await;
    assert_eq!((p.first, p.layout), (0, Layout::new(size)));
    assert_eq!(p.hashes, want);
    let tail = bed.pieces(&d, 2, size).await;
    assert_eq!((tail.first, tail.hashes.as_slice()), (2, &want[2..]));
    assert!(tail.complete);
    let end = bed.pieces(&d, 4, size).await;
    assert!(end.hashes.is_empty() && end.complete);
    let past = bed.pieces_raw(&d, 5).await;
    assert_eq!(past.status, StatusCode::BAD_REQUEST, "{}", past.text());
    assert!(past.text().contains("past the blob's 4 pieces"));
    assert_eq!(bed.parent.counter("berth_fleet_piece_tables ").await, 1);
    let fleet = Fleet::new([node(1)]);
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(1)), None).await,
        &node(1),
        &fleet,
    );
    assert_eq!(a.layout.size(), size);
    // A claim against the parent's size is refused.
    let wrong = bed.swarm(&d, &join(&node(1)), Some(size + 1)).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(wrong.text().contains(&size.to_string()), "{}", wrong.text());
    // The upstream was asked once: the table read the parent's copy.
    assert_eq!(
        bed.fake
            .requests_to(&format!("/v2/library/app/blobs/{blob}"))
            .len(),
        1
    );
}

/// A fill in progress: the table grows with it; a request that finds no new hash waits for the
/// next one; the last hash comes only once the digest checked out.
#[tokio::test]
async fn the_table_follows_a_fill_in_progress() {
    let bed = bed().await;
    let size = 3 * MIB + 100;
    let (layer, blob, release) = support::instance::gated_blob(&bed.fake, size, 2, 1);
    let d: Digest = blob.parse().unwrap();
    let want = piece_hashes(&layer);
    let (size, n) = (size as u64, want.len());
    assert_eq!(n, 4);
    // Nothing is filling yet: no table.
    let none = bed.pieces_raw(&d, 0).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.text());
    let mut client = bed.parent.stream(&format!("/v2/app/blobs/{blob}")).await;
    release.send_replace(MIB + MIB / 2);
    client.read_at_least(MIB).await;
    // Piece 0 is written: it is in the table (the table may be made a moment after the fill's
    // bytes, so ask until it is).
    let mut p = bed.pieces(&d, 0, size).await;
    let deadline = Instant::now() + support::instance::WAIT;
    while p.hashes.is_empty() {
        assert!(Instant::now() < deadline, "piece 0 never hashed");
        p = bed.pieces(&d, 0, size).await;
    }
    assert_eq!((p.hashes.as_slice(), p.complete), (&want[..1], false));

    // A request past the known hashes waits: the fill moves on meanwhile, and it gets the hash.
    let waiting = {
        let (client, addr) = (bed.client.clone(), bed.parent.addr);
        let path = berth::fleet::pieces_path(&d, 1);
        let proof = bed.proof("GET", &path);
        tokio::spawn(async move {
            let started = Instant::now();
            let req = Request::get(format!("http://{addr}{path}"))
                .header("authorization", proof)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (Pieces::parse(&body, size).unwrap(), started.elapsed())
        })
    };
    release.send_replace(2 * MIB + MIB / 2);
    let (p, took) = waiting.await.unwrap();
    // On a loaded machine the wait (a second) may run out first: then it says so by its time.
    assert!(
        p.hashes.first() == Some(&want[1]) || took >= Duration::from_millis(900),
        "an empty answer after {took:?}"
    );
    assert_eq!(p.first, 1);
    // All but the last byte: every piece but the last is known; the last waits for the digest.
    release.send_replace(size as usize - 1);
    client.read_at_least(size as usize - 1).await;
    let deadline = Instant::now() + support::instance::WAIT;
    let mut p = bed.pieces(&d, 0, size).await;
    while p.hashes.len() < n - 1 {
        assert!(Instant::now() < deadline, "pieces 0..3 never hashed");
        p = bed.pieces(&d, 0, size).await;
    }
    assert_eq!(p.hashes, want[..n - 1]);
    assert!(!p.complete, "the last hash before the digest checked out");
    release.send_replace(size as usize);
    assert_eq!(client.finish().await.unwrap().len(), size as usize);
    let p = bed.whole_table(&d, size).await;
    assert_eq!(p.hashes, want);
}

/// A fill whose body is wrong (same length, other bytes): its table is dropped when the digest
/// fails, nothing is answered for it afterwards, and the next good fill makes a good table.
#[tokio::test]
async fn a_wrong_fill_leaves_no_table() {
    let bed = bed().await;
    let size = 2 * MIB + 7;
    let layer = random_bytes(size, 3);
    let blob = bed.fake.put_blob("library/app", layer.clone());
    let d: Digest = blob.parse().unwrap();
    let mut wrong = layer.to_vec();
    for b in &mut wrong[..10] {
        *b = !*b;
    }
    let (release, gate) = tokio::sync::watch::channel(0usize);
    bed.fake.fault_times(
        &format!("/v2/library/app/blobs/{blob}"),
        Fault::GatedWith(gate, Bytes::from(wrong.clone())),
        1,
    );
    let mut client = bed.parent.stream(&format!("/v2/app/blobs/{blob}")).await;
    release.send_replace(MIB + 1);
    client.read_at_least(MIB).await;
    let mut p = bed.pieces(&d, 0, size as u64).await;
    let deadline = Instant::now() + support::instance::WAIT;
    while p.hashes.is_empty() {
        assert!(Instant::now() < deadline, "piece 0 never hashed");
        p = bed.pieces(&d, 0, size as u64).await;
    }
    // The hash of what the fill wrote so far: the wrong bytes (the digest is checked at the end).
    assert_eq!(p.hashes, piece_hashes(&wrong)[..1]);
    release.send_replace(size);
    assert!(
        client.finish().await.is_err(),
        "a wrong body never completes"
    );
    bed.parent.settled().await;
    // The table is dropped: no blob, no fill, 404 (and the gauge says so).
    let gone =
        eventually(|| async { bed.pieces_raw(&d, 0).await.status == StatusCode::NOT_FOUND }).await;
    assert!(gone, "a table outlived its failed fill");
    assert_eq!(bed.parent.counter("berth_fleet_piece_tables ").await, 0);
    assert!(!bed.parent.blob_file(&blob).exists());
    // The next pull is good, and so is its table.
    let got = bed.parent.get(&format!("/v2/app/blobs/{blob}")).await;
    assert_eq!(got.bytes().len(), size);
    bed.parent.settled().await;
    let p = bed.whole_table(&d, size as u64).await;
    assert_eq!(p.hashes, piece_hashes(&layer));
}

/// Refusals: no proof, or a body other than the one the proof names (401, counted), a node URL that is no origin, an oversized body, a digest
/// that is not one (400, saying why), the wrong method (405), an unknown blob's table (404); on a
/// node berth both routes are 404.
#[tokio::test]
async fn wrong_calls_are_refused() {
    let bed = bed().await;
    let d = Digest::of(b"x");
    let swarm = berth::fleet::swarm_path(&d, Some(10));
    let body = join(&node(1)).encode();
    let p = &bed.parent;
    let unsigned = bed
        .call_on(p, Method::POST, &swarm, body.clone(), false)
        .await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        p.counter("berth_fleet_auth_failures_total{reason=\"missing\"}")
            .await,
        1
    );
    // The proof covers the body: node 1's call under its proof with node 2's body is refused
    // before the tracker sees it.
    let key = berth::fleet::key(&Secret::new(SECRET));
    let (authz, named) = berth::fleet::sign_body(&key, "POST", &swarm, &body, auth::now());
    let forged = bed
        .client
        .request(
            Request::post(format!("http://{}{swarm}", p.addr))
                .header("authorization", authz)
                .header(berth::fleet::BODY_HEADER, named)
                .body(Full::new(Bytes::from(join(&node(2)).encode())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        p.counter("berth_fleet_auth_failures_total{reason=\"bad_proof\"}")
            .await,
        1
    );
    let pathy =
        br#"{"node":"http://10.0.0.1:5000/v2/","have":0,"complete":false,"need_source":true}"#;
    let got = bed.call(Method::POST, &swarm, pathy.to_vec()).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(got.text().contains("origin"), "{}", got.text());
    let huge = vec![b' '; MAX_SMALL_BODY + 1];
    let got = bed.call(Method::POST, &swarm, huge).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(got.text().contains("at most"), "{}", got.text());
    let got = bed.call(Method::POST, &swarm, b"{".to_vec()).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(got.text().contains("malformed"), "{}", got.text());
    let not_digest = "/_berth/fleet/v1/swarm/sha256:abc";
    let got = bed.call(Method::POST, not_digest, body.clone()).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(got.text().contains("DIGEST_INVALID"), "{}", got.text());
    assert_eq!(
        p.counter("berth_fleet_tracker_requests_total{outcome=\"bad_request\"}")
            .await,
        3
    );
    let got = bed.call(Method::GET, &swarm, Vec::new()).await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
    let pieces = berth::fleet::pieces_path(&d, 0);
    let got = bed.call(Method::POST, &pieces, Vec::new()).await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
    let got = bed.call(Method::GET, &pieces, Vec::new()).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    let bad_from = format!("{}{d}?from=x", berth::fleet::PIECES_PATH);
    let got = bed.call(Method::GET, &bad_from, Vec::new()).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);

    // A node berth is no tracker.
    let parent_url = format!("http://{}", bed.parent.addr);
    let node = node_on(&parent_url, &bed.secret, tempfile::tempdir().unwrap()).await;
    let got = bed.call_on(&node, Method::POST, &swarm, body, true).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());
    let got = bed
        .call_on(&node, Method::GET, &pieces, Vec::new(), true)
        .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());
    assert!(got.text().contains("no swarm"), "{}", got.text());
}

/// The whole protocol as a node will drive it: a node told to use the parent pulls the blob from
/// it, checks every piece against the parent's table, and reports itself complete; the next node
/// is handed it as a holder (no `?size` needed: the parent has the blob); a node that reports it
/// for a bad piece gets another source, and it is never handed out for that digest again.
#[tokio::test]
async fn a_holder_is_handed_out_until_blamed() {
    use berth::swarm::pieces::{Check, PieceTable};
    let bed = bed().await;
    let layer = random_bytes(2 * MIB + 999, 4);
    let blob = bed.fake.put_blob("library/app", layer.clone());
    let d: Digest = blob.parse().unwrap();
    let size = layer.len() as u64;
    let fleet = Fleet::new((1..=4).map(node));
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(1)), Some(size)).await,
        &node(1),
        &fleet,
    );
    assert_eq!(a.source, Some(Assignment::Parent));
    let got = bed.parent.get(&format!("/v2/app/blobs/{blob}")).await;
    let bytes = got.bytes().clone();
    bed.parent.settled().await;
    let p = bed.whole_table(&d, size).await;
    let mut table = PieceTable::new(a.layout);
    table.extend(p.first, &p.hashes).unwrap();
    for k in 0..a.layout.count() {
        let r = a.layout.range(k);
        assert_eq!(
            table.verify(k, &bytes[r.start as usize..r.end as usize]),
            Check::Good,
            "piece {k}"
        );
    }
    let mut bad = bytes[..MIB].to_vec();
    bad[7] ^= 1;
    assert_eq!(table.verify(0, &bad), Check::Bad);
    let done = SwarmRequest {
        have: size,
        complete: true,
        need_source: false,
        ..join(&node(1))
    };
    let a = parse_answer(&bed.swarm(&d, &done, None).await, &node(1), &fleet);
    assert_eq!(a.source, None);
    let holder = Assignment::Node {
        url: node(1),
        have: size,
        complete: true,
    };
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(2)), None).await,
        &node(2),
        &fleet,
    );
    assert_eq!(a.source, Some(holder.clone()));
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(3)), None).await,
        &node(3),
        &fleet,
    );
    assert_eq!(a.source, Some(holder));
    let blame = SwarmRequest {
        dropped: Some((node(1), berth::swarm::tracker::Reason::BadPiece)),
        ..join(&node(3))
    };
    let a = parse_answer(&bed.swarm(&d, &blame, None).await, &node(3), &fleet);
    assert_eq!(a.source, Some(Assignment::Parent));
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(4)), None).await,
        &node(4),
        &fleet,
    );
    assert!(
        !matches!(&a.source, Some(Assignment::Node { url, .. }) if *url == node(1)),
        "a blamed holder handed out again: {:?}",
        a.source
    );
    assert_eq!(
        bed.parent
            .counter("berth_fleet_sources_dropped_total{reason=\"bad_piece\"}")
            .await,
        1
    );
}

/// Before anyone fetched a blob from the parent (no blob, no fill, so no piece table can come),
/// a node claiming to hold it with a slot for every node is not handed out: the first node to
/// ask gets the parent, the next its chain. Once that node fetched (the parent fills, then
/// holds the blob), the holder is handed out as any.
#[tokio::test]
async fn a_holder_is_not_handed_out_before_anyone_fetched_from_the_parent() {
    let bed = bed().await;
    let layer = random_bytes(2 * MIB + 5, 9);
    let blob = bed.fake.put_blob("library/app", layer.clone());
    let d: Digest = blob.parse().unwrap();
    let size = layer.len() as u64;
    let fleet = Fleet::new((1..=7).map(node));
    let claim = SwarmRequest {
        have: size,
        complete: true,
        need_source: false,
        uploads: Some(64),
        ..join(&node(7))
    };
    let got = bed.swarm(&d, &claim, Some(size)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let mut sources = Vec::new();
    for i in 1..=2 {
        let got = bed.swarm(&d, &join(&node(i)), Some(size)).await;
        sources.push(parse_answer(&got, &node(i), &fleet).source.unwrap());
    }
    let node1 = Assignment::Node {
        url: node(1),
        have: 0,
        complete: false,
    };
    assert_eq!(sources, vec![Assignment::Parent, node1]);
    let got = bed.parent.get(&format!("/v2/app/blobs/{blob}")).await;
    assert_eq!(got.bytes().len(), layer.len());
    bed.parent.settled().await;
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(3)), None).await,
        &node(3),
        &fleet,
    );
    assert!(
        matches!(&a.source, Some(Assignment::Node { url, complete: true, .. }) if *url == node(7)),
        "{:?}",
        a.source
    );
}

/// A node that takes the parent's only slot and never fetches: claiming bytes the parent does
/// not have, it loses the slot at once; claiming nothing, once `FETCH_GRACE` has passed with the
/// parent still filling nothing: the node below it is moved to the parent at its next report.
#[tokio::test]
async fn a_child_of_the_parent_that_never_fetches_loses_its_slot() {
    let bed = bed().await;
    let fleet = Fleet::new((1..=7).map(node));
    let size = 8 * MIB as u64;
    // It claims a piece it cannot have.
    let d = Digest::of(b"claimed progress");
    let liar = SwarmRequest {
        have: MIB as u64,
        ..join(&node(7))
    };
    let a = parse_answer(&bed.swarm(&d, &liar, Some(size)).await, &node(7), &fleet);
    assert_eq!(a.source, Some(Assignment::Parent));
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(1)), Some(size)).await,
        &node(1),
        &fleet,
    );
    assert_eq!(a.source, Some(Assignment::Parent));
    // It claims nothing and does not fetch.
    let d = Digest::of(b"never fetched");
    let joined = Instant::now();
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(7)), Some(size)).await,
        &node(7),
        &fleet,
    );
    assert_eq!(a.source, Some(Assignment::Parent));
    let a = parse_answer(
        &bed.swarm(&d, &join(&node(1)), Some(size)).await,
        &node(1),
        &fleet,
    );
    let grace = berth::swarm::tracker::FETCH_GRACE;
    if a.source == Some(Assignment::Parent) {
        // The machine was slow enough for the grace to pass between the two calls.
        assert!(joined.elapsed() >= grace);
        return;
    }
    assert!(
        matches!(&a.source, Some(Assignment::Node { url, .. }) if *url == node(7)),
        "{:?}",
        a.source
    );
    let report = SwarmRequest {
        need_source: false,
        ..join(&node(1))
    };
    let (bed, fleet, report, d) = (&bed, &fleet, &report, &d);
    let moved = eventually(|| async move {
        let got = bed.swarm(d, report, Some(size)).await;
        parse_answer(&got, &node(1), fleet).source == Some(Assignment::Parent)
    })
    .await;
    assert!(moved, "node 1 was never moved off the idle node");
    assert!(joined.elapsed() >= grace);
}
