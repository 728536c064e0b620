//! The fleet's directory (holders found without the parent), over real sockets: node berths in
//! front of `fleet_swarm.rs`'s fake parent, which is then made to answer 503 to everything (or
//! replaced by a dead port); fake nodes (`fleet_swarm::fake_node`) as honest or lying holders.
//!
//! Covered: a node that completes a blob tells the digest's directory nodes; with the parent
//! down another node gets the blob from that holder (and then holds it too), the holder keeps
//! serving its own client, and a blob no node holds fails as before (503); a parent failing after
//! its `HEAD`, or mid-blob, leaves the pull (or its rest) to a holder; a lying holder is
//! dropped at the digest check and the next one tried, and a blob only a liar holds is never
//! completed; a busy holder is asked again; a node restarted empty with the parent down gets a blob from a holder and tells
//! the directory again; the holders route's refusals (401, 400, 404 on a parent, 405, 429).
//! `[fleet] parent_timeout`: a parent that accepts and never answers, one whose connections are
//! never accepted (a full backlog: the SYNs are dropped), and one that goes silent after its
//! `HEAD` each send the pull to a holder within the bound, not the upstream client's 30 s. A
//! node restarted on its storage tells the directory of its blobs again, and is found. A parent
//! merely slower than the bound still serves a blob no node holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use berth::oci::Digest;
use berth::swarm::directory::directory;
use berth::swarm::node::{Fleet as Nodes, NodeUrl};
use berth::swarm::protocol::HolderNote;

use crate::fleet_swarm::{
    MIB, Parent, blob_path, body_proof, fake_node, fleet, fleet_get, fleet_with, listeners, proof,
    read_all,
};
use crate::support::instance::{Berth, eventually, listeners_and_storage, same, start_on_listener};
use crate::support::{FakeRegistry, ports, random_bytes};

fn url(b: &Berth) -> String {
    format!("http://{}", b.addr)
}

fn holders_path(d: &str) -> String {
    format!("{}{d}", berth::fleet::HOLDERS_PATH)
}

/// A holders call to `node`: `method`, the fleet proof unless `signed` is false, `body`.
async fn call(
    node: &Berth,
    method: Method,
    path: &str,
    body: &[u8],
    signed: bool,
) -> (StatusCode, Bytes) {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(format!("http://{}{path}", node.addr));
    if signed && berth::fleet::has_body(method.as_str()) {
        let (authz, named) = body_proof(method.as_str(), path, body);
        req = req
            .header(header::AUTHORIZATION, authz)
            .header(berth::fleet::BODY_HEADER, named);
    } else if signed {
        req = req.header(header::AUTHORIZATION, proof(method.as_str(), path));
    }
    send(req, body).await
}

/// Sends a built call with `body`.
async fn send(req: http::request::Builder, body: &[u8]) -> (StatusCode, Bytes) {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// The holders `node` keeps for `d`.
async fn holders(node: &Berth, d: &str) -> Vec<String> {
    let (status, body) = call(node, Method::GET, &holders_path(d), b"", true).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect()
}

/// Tells `node` that `holder` holds `d`.
async fn note(node: &Berth, d: &str, holder: &NodeUrl) -> StatusCode {
    let body = HolderNote {
        node: holder.clone(),
    }
    .encode();
    call(node, Method::PUT, &holders_path(d), &body, true)
        .await
        .0
}

/// A node completes a blob and tells its directory nodes (here all three); the parent goes
/// down; another node gets the blob from the holder (not one byte from the parent), and is
/// named a holder too; the holder serves its own client meanwhile; a blob no node holds is 503
/// as before the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_parent_down_a_node_gets_a_blob_from_a_holder() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(3), &[], 4).await;
    let (a, b, c) = (&f.nodes[0], &f.nodes[1], &f.nodes[2]);
    let layer = random_bytes(3 * MIB + 11, 21);
    let d = parent.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    for n in [a, b, c] {
        let told = eventually(|| async { holders(n, &d).await == vec![url(a)] }).await;
        assert!(
            told,
            "{} never heard that {} holds the blob",
            url(n),
            url(a)
        );
    }

    parent.state.down.store(true, Ordering::SeqCst);
    let sent = parent.sent();
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(parent.sent(), sent, "the parent sent blob bytes while down");
    assert_eq!(
        b.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        layer.len() as u64
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
    let both = eventually(|| async {
        let h = holders(c, &d).await;
        h.contains(&url(a)) && h.contains(&url(b))
    })
    .await;
    assert!(both, "the directory never heard that b holds the blob");

    // The holder keeps serving its own client and other nodes.
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    same(&read_all(fleet_get(a, &d, None).await).await, &layer);

    // No node holds it: the parent's failure, as before the directory.
    let other = random_bytes(MIB, 22);
    let d2 = parent.put(&other);
    let got = c.get(&blob_path(&d2)).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.code(), "UNAVAILABLE");
    assert!(!c.blob_file(&d2).exists());
}

/// The parent answers the `HEAD` and the tracker, then fails every blob `GET`: once the swarm's
/// tries of the parent are spent (before any byte), the node asks the directory and completes
/// from the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_failing_after_its_head_leaves_the_pull_to_a_holder() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(2), &[], 4).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let layer = random_bytes(MIB + 17, 26);
    let d = parent.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    let told = eventually(|| async { holders(b, &d).await == vec![url(a)] }).await;
    assert!(told, "b never heard that a holds the blob");
    // The tracker would name a: forget it there, so that the parent is b's source.
    *parent.state.tracker.lock().unwrap() = Default::default();
    parent.state.gets_down.store(true, Ordering::SeqCst);
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(
        b.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        layer.len() as u64
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
}

/// The parent's body breaks off mid-blob and its next answers are refusals: once the swarm's
/// tries of the parent are spent, the node asks the directory for the rest, from its frontier,
/// and the whole digest (the parent's bytes and the holder's) checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_failing_mid_blob_leaves_the_rest_to_a_holder() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(2), &[], 4).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let layer = random_bytes(3 * MIB + 1, 28);
    let d = parent.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    let told = eventually(|| async { holders(b, &d).await == vec![url(a)] }).await;
    assert!(told, "b never heard that a holds the blob");
    *parent.state.tracker.lock().unwrap() = Default::default();
    *parent.state.cut.lock().unwrap() = Some(MIB as u64);
    parent.state.refuse.store(1000, Ordering::SeqCst);
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    // What of the parent's first MiB arrived before its body broke (a reset may drop the
    // last chunks in flight), then the rest from the holder.
    let from_parent = b
        .counter("berth_fleet_bytes_total{source=\"parent\"}")
        .await;
    assert!((1..=MIB as u64).contains(&from_parent), "{from_parent}");
    assert_eq!(
        b.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        layer.len() as u64 - from_parent
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
}

/// A fleet `GET` of `d` from `node` that is never read, on a socket whose receive buffer is
/// pinned small: the body cannot drain into the sockets (receive autotuning would let a few
/// tens of MiB in), so it holds its upload slot until the socket is dropped.
async fn held_get(node: &Berth, d: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(node.addr).await.unwrap();
    let path = format!("{}{d}", berth::swarm::transfer::BLOBS_PATH);
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n\r\n",
        node.addr,
        proof("GET", &path).to_str().unwrap()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    s.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200", "the held answer");
    s
}

/// The only holder is busy (its one upload slot held by a body nobody reads): the node, with
/// its parent down, asks the directory again a moment later, and gets the blob once the slot is
/// free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_holder_is_asked_again() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(2), &[], 1).await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    // Far more than the held socket's buffers: the held body keeps its slot.
    let layer = random_bytes(24 * MIB, 27);
    let d = parent.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    let told = eventually(|| async { holders(b, &d).await == vec![url(a)] }).await;
    assert!(told, "b never heard that a holds the blob");
    let held = held_get(a, &d).await;
    parent.state.down.store(true, Ordering::SeqCst);
    let release = async {
        let refused = eventually(|| async { a.counter("status=\"429\"").await >= 1 }).await;
        drop(held);
        refused
    };
    let path = blob_path(&d);
    let (got, refused) = tokio::join!(b.get(&path), release);
    assert!(
        refused,
        "the holder never refused b, which got {} ({:?})",
        got.status,
        got.body.as_ref().map(|b| b.len())
    );
    same(got.bytes(), &layer);
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
}

/// With the parent down, a liar is the first holder the directory names: its bytes fail the
/// digest check, it is dropped (counted) and the honest holder gives the blob. A blob only a liar
/// holds: the pull fails, and nothing is completed or kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_holder_is_dropped_and_the_next_one_tried() {
    let parent = Parent::start(Duration::ZERO).await;
    let mut bound = listeners(4);
    let (liar2_listener, liar2) = bound.pop().unwrap();
    let (honest_listener, honest) = bound.pop().unwrap();
    let (liar_listener, liar) = bound.pop().unwrap();
    // The fake nodes answer no directory call: blobs whose directory nodes include the real one
    // (three of the four nodes are each digest's), so that its own book is the directory.
    let set = Nodes::new([
        bound[0].1.clone(),
        liar.clone(),
        honest.clone(),
        liar2.clone(),
    ]);
    let in_directory = |len: usize, mut seed: u64| loop {
        let b = random_bytes(len, seed);
        if directory(&Digest::of(&b), &set).contains(&bound[0].1) {
            return b;
        }
        seed += 100;
    };
    let layer = in_directory(2 * MIB + 3, 23);
    let only_lies = in_directory(MIB + 5, 24);
    let d = parent.put(&layer);
    let digest: Digest = d.parse().unwrap();
    let d2 = parent.put(&only_lies);
    let digest2: Digest = d2.parse().unwrap();
    let mut lie = layer.to_vec();
    lie[MIB] ^= 1;
    let liar_asked = fake_node(liar_listener, &digest, Bytes::from(lie)).await;
    let honest_asked = fake_node(honest_listener, &digest, layer.clone()).await;
    let mut lie2 = only_lies.to_vec();
    lie2[7] ^= 1;
    fake_node(liar2_listener, &digest2, Bytes::from(lie2)).await;
    let f = fleet(
        &parent,
        bound,
        &[liar.clone(), honest.clone(), liar2.clone()],
        4,
    )
    .await;
    let node = &f.nodes[0];
    // The most recent note first: the liar.
    assert_eq!(note(node, &d, &honest).await, StatusCode::NO_CONTENT);
    assert_eq!(note(node, &d, &liar).await, StatusCode::NO_CONTENT);
    assert_eq!(note(node, &d2, &liar2).await, StatusCode::NO_CONTENT);
    assert_eq!(
        holders(node, &d).await,
        vec![liar.to_string(), honest.to_string()]
    );

    parent.state.down.store(true, Ordering::SeqCst);
    same(node.get(&blob_path(&d)).await.bytes(), &layer);
    assert!(
        liar_asked.load(Ordering::SeqCst) >= 1,
        "the liar was never asked"
    );
    assert!(honest_asked.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        node.counter("berth_fleet_peers_dropped_total{reason=\"bad_piece\"}")
            .await,
        1
    );
    assert_eq!(
        node.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        2 * layer.len() as u64,
        "the liar's whole body, then the honest one's"
    );
    node.settled().await;
    assert_eq!(std::fs::read(node.blob_file(&d)).unwrap(), layer);

    let got = node.get(&blob_path(&d2)).await;
    assert!(
        got.status != StatusCode::OK || got.body.is_err(),
        "a blob only a liar holds was answered whole: {}",
        got.status
    );
    node.settled().await;
    assert!(!node.blob_file(&d2).exists(), "a wrong body was kept");
    assert_eq!(
        node.counter("berth_fleet_peers_dropped_total{reason=\"bad_piece\"}")
            .await,
        2
    );
}

/// A node restarted with an empty store (its saved upstream list only, which a start with the
/// parent down needs) and its parent a dead port: it gets a blob from the holder its directory
/// peers name, serves it, and tells the directory it holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_empty_rejoins_with_the_parent_down() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(2), &[], 4).await;
    let mut nodes = f.nodes;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let layer = random_bytes(2 * MIB + 1, 25);
    let d = parent.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    let told = eventually(|| async { holders(&b, &d).await == vec![url(&a)] }).await;
    assert!(told, "b never heard that a holds the blob");

    let (b_addr, b_url) = (b.addr, url(&b));
    let old = b.stop().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("fleet")).unwrap();
    std::fs::copy(
        old.path().join("fleet/upstreams.json"),
        dir.path().join("fleet/upstreams.json"),
    )
    .unwrap();
    let dead = ports::Dead::new();
    let cfg = format!(
        r#"{}
        [fleet]
        parent = "http://{}"
        self = "{b_url}"
        peers = ["{}", "{b_url}"]
        secret_file = {:?}
        "#,
        listeners_and_storage(dir.path()),
        dead.addr(),
        url(&a),
        f._secret.path().join("fleet-secret").display().to_string(),
    );
    let listener = std::net::TcpListener::bind(b_addr).unwrap();
    let (b, _) = start_on_listener(&cfg, dir, listener).await;
    assert!(
        holders(&b, &d).await.is_empty(),
        "restarted empty, its book is empty"
    );
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(
        b.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        layer.len() as u64
    );
    b.settled().await;
    same(&read_all(fleet_get(&b, &d, None).await).await, &layer);
    let back = eventually(|| async { holders(&a, &d).await.contains(&b_url) }).await;
    assert!(back, "the restarted node never told the directory");
    let own = eventually(|| async { holders(&b, &d).await.contains(&b_url) }).await;
    assert!(
        own,
        "the restarted node is a directory node of the blob again"
    );
}

/// The holders route refuses: no proof 401; a body that is not the one the proof names (or a
/// proof that names none) 401; a note naming a node outside the set, a body that
/// is no note, one over the limit, a digest that is not one, a query: 400; another method 405;
/// on a parent 404; past `MAX_CALLS` calls at once 429 (and free again once they end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holders_route_refuses_bad_calls() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(1), &[], 4).await;
    let node = &f.nodes[0];
    let d = Digest::of(b"x").to_string();
    let path = holders_path(&d);
    let me: NodeUrl = url(node).parse().unwrap();
    assert_eq!(
        call(node, Method::GET, &path, b"", false).await.0,
        StatusCode::UNAUTHORIZED
    );
    let stranger: NodeUrl = "http://10.9.9.9:5000".parse().unwrap();
    let (s, body) = call(
        node,
        Method::PUT,
        &path,
        &HolderNote { node: stranger }.encode(),
        true,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("10.9.9.9"),
        "{body:?}"
    );
    assert_eq!(
        call(node, Method::PUT, &path, b"{\"node\": 1}", true)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let big = vec![b' '; berth::swarm::protocol::MAX_SMALL_BODY + 1];
    assert_eq!(
        call(node, Method::PUT, &path, &big, true).await.0,
        StatusCode::BAD_REQUEST
    );
    let not_digest = holders_path("sha256:abc");
    assert_eq!(
        call(node, Method::GET, &not_digest, b"", true).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(node, Method::GET, &format!("{path}?all=1"), b"", true)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(node, Method::POST, &path, b"", true).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert!(
        holders(node, &d).await.is_empty(),
        "a refused note was kept"
    );

    // The proof covers the body: another body under a note's proof, a note signed as if it
    // had no body, a body header that names no digest, and a proof over another body header:
    // 401, counted, nothing kept.
    let refused = || node.counter("berth_fleet_auth_failures_total{reason=\"bad_proof\"}");
    let malformed = || node.counter("berth_fleet_auth_failures_total{reason=\"malformed\"}");
    let (bad_before, malformed_before) = (refused().await, malformed().await);
    let uri = format!("http://{}{path}", node.addr);
    let mine = HolderNote { node: me.clone() }.encode();
    let altered = format!("{} ", String::from_utf8_lossy(&mine)).into_bytes();
    let (authz, named) = body_proof("PUT", &path, &mine);
    let put = || Request::put(&uri).header(header::AUTHORIZATION, authz.clone());
    let (s, body) = send(put().header(berth::fleet::BODY_HEADER, &named), &altered).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("not the one the fleet proof names"),
        "{body:?}"
    );
    let other_named = Digest::of(&altered).to_string();
    let (s, _) = send(
        put().header(berth::fleet::BODY_HEADER, &other_named),
        &altered,
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a body header the proof does not cover"
    );
    let bodiless = Request::put(&uri).header(header::AUTHORIZATION, proof("PUT", &path));
    assert_eq!(send(bodiless, &mine).await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = send(put().header(berth::fleet::BODY_HEADER, "sha256:abc"), &mine).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a body header that is no digest"
    );
    assert_eq!(refused().await, bad_before + 2);
    assert_eq!(malformed().await, malformed_before + 2);
    assert!(
        holders(node, &d).await.is_empty(),
        "a note under another body's proof was kept"
    );

    // MAX_CALLS calls whose bodies never come hold every slot.
    let mut held = Vec::new();
    for _ in 0..berth::fill::swarm::MAX_CALLS {
        let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let (authz, named) = body_proof("PUT", &path, &[b' '; 100]);
        let head = format!(
            "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n{}: {}\r\ncontent-length: 100\r\n\r\n{{",
            authz.to_str().unwrap(),
            berth::fleet::BODY_HEADER,
            named.to_str().unwrap()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    let body = HolderNote { node: me.clone() }.encode();
    let busy = eventually(|| async {
        call(node, Method::PUT, &path, &body, true).await.0 == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    assert!(busy, "never 429 with every slot held");
    drop(held);
    let free = eventually(|| async {
        call(node, Method::PUT, &path, &body, true).await.0 == StatusCode::NO_CONTENT
    })
    .await;
    assert!(free, "the slots never came back");
    assert_eq!(holders(node, &d).await, vec![me.to_string()]);

    // A parent keeps no directory.
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let (_dir, secret) = crate::fleet::secret_file(crate::fleet_swarm::SECRET);
    let central = crate::fleet::central(&a, &b, &secret).await;
    let (s, body) = call(&central, Method::GET, &path, b"", true).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body:?}");
}

/// How long a pull may take whose parent is unusable, with `parent_timeout = "1s"`: the bound,
/// plus a few tries and the holder's transfer on a loaded machine. The upstream client's own
/// bounds, which decided before `parent_timeout`, are 30 s for an answer and 10 s per connect
/// (three tries): far past it.
const WITHIN: Duration = Duration::from_secs(12);

/// Two nodes; `a` pulls a blob and the directory (both nodes) hears of it; `b` is stopped and
/// started again on its storage (its saved upstream list serves the start) with `parent` as
/// its parent and `parent_timeout = "1s"`.
async fn holder_and_restarted(parent: SocketAddr) -> Restarted {
    let fake = Parent::start(Duration::ZERO).await;
    let f = fleet(&fake, listeners(2), &[], 4).await;
    let mut nodes = f.nodes;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let layer = random_bytes(2 * MIB + 9, 29);
    let d = fake.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    let told = eventually(|| async { holders(&b, &d).await == vec![url(&a)] }).await;
    assert!(told, "b never heard that a holds the blob");
    let peers = [url(&a), url(&b)];
    let secret = f._secret.path().join("fleet-secret");
    let b = restart(b, &parent.to_string(), &peers, &secret).await;
    Restarted {
        layer,
        d,
        b,
        _a: a,
        _fake: fake,
        _secret: f._secret,
    }
}

/// What [`holder_and_restarted`] made: the blob, its digest, the restarted node, and what must
/// live as long as it (the holder, the first parent, the secret's directory).
struct Restarted {
    layer: Bytes,
    d: String,
    b: Berth,
    _a: Berth,
    _fake: Parent,
    _secret: tempfile::TempDir,
}

/// `b` pulls `d` with its parent unusable: the blob comes whole from the holder, within
/// [`WITHIN`].
async fn pulled_from_the_holder_in_time(b: &Berth, d: &str, layer: &Bytes) {
    let started = Instant::now();
    same(b.get(&blob_path(d)).await.bytes(), layer);
    let took = started.elapsed();
    assert!(took < WITHIN, "the pull took {took:?}");
    assert_eq!(
        b.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        layer.len() as u64
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(d)).unwrap(), *layer);
}

/// A parent that accepts connections and never answers: the node's start takes its saved list
/// after `parent_timeout`, and its pull goes to the holder within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_parent_leaves_the_pull_to_a_holder_within_parent_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let r = holder_and_restarted(addr).await;
    let at_start = accepted.load(Ordering::SeqCst);
    assert!(at_start >= 1, "the start never asked the parent");
    pulled_from_the_holder_in_time(&r.b, &r.d, &r.layer).await;
    assert!(
        accepted.load(Ordering::SeqCst) > at_start,
        "the pull never asked the parent"
    );
    holding.abort();
}

/// A parent whose connections are never accepted: a listener whose one backlog slot is taken
/// by a connection nobody accepts, so the kernel drops every later SYN (a black hole, as a
/// firewall's DROP is): the pull goes to the holder within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_parent_leaves_the_pull_to_a_holder_within_parent_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hole = socket.listen(0).unwrap();
    let addr = hole.local_addr().unwrap();
    let _queued = std::net::TcpStream::connect(addr).unwrap();
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    assert!(probe.is_err(), "the backlog is not full: {probe:?}");
    let r = holder_and_restarted(addr).await;
    pulled_from_the_holder_in_time(&r.b, &r.d, &r.layer).await;
    drop(hole);
}

/// The parent answers the `HEAD` and the tracker, then never answers a blob `GET`: each try of
/// the parent ends at `parent_timeout`, and once the swarm's tries are spent the holder sends
/// the blob, within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_silent_after_its_head_leaves_the_pull_to_a_holder_within_parent_timeout() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet_with(&parent, listeners(2), &[], 4, "parent_timeout = \"1s\"").await;
    let (a, b) = (&f.nodes[0], &f.nodes[1]);
    let layer = random_bytes(MIB + 3, 30);
    let d = parent.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    let told = eventually(|| async { holders(b, &d).await == vec![url(a)] }).await;
    assert!(told, "b never heard that a holds the blob");
    *parent.state.tracker.lock().unwrap() = Default::default();
    parent.state.gets_silent.store(true, Ordering::SeqCst);
    pulled_from_the_holder_in_time(b, &d, &layer).await;
}

/// A node stopped and started again on its storage (its blobs on disk, the directory's books
/// forgotten: every node restarted), its parent down: the restarted holder tells the directory
/// of the blobs it holds at start, and another node finds it and gets the blob from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_its_storage_tells_the_directory_again() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(2), &[], 4).await;
    let mut nodes = f.nodes;
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let layer = random_bytes(MIB + 21, 31);
    let d = parent.put(&layer);
    same(a.get(&blob_path(&d)).await.bytes(), &layer);
    a.settled().await;
    let told = eventually(|| async { holders(&b, &d).await == vec![url(&a)] }).await;
    assert!(told, "b never heard that a holds the blob");

    let dead = ports::Dead::new();
    let peers = [url(&a), url(&b)];
    let secret = f._secret.path().join("fleet-secret");
    // b first, so that it hears a's notes; its book starts empty.
    let b = restart(b, &dead.addr().to_string(), &peers, &secret).await;
    assert!(holders(&b, &d).await.is_empty(), "b's book outlived it");
    let a = restart(a, &dead.addr().to_string(), &peers, &secret).await;
    let told = eventually(|| async { holders(&b, &d).await == vec![url(&a)] }).await;
    assert!(told, "the restarted holder never told the directory");
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(
        b.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        layer.len() as u64
    );
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
}

/// Stops `node` and starts it again on its storage and address, `parent` (`host:port`) its
/// parent, `peers` the node set, `parent_timeout = "1s"`; its saved upstream list serves the
/// start.
async fn restart(node: Berth, parent: &str, peers: &[String], secret: &std::path::Path) -> Berth {
    let (addr, me) = (node.addr, url(&node));
    let dir = node.stop().await;
    let peers = peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = format!(
        r#"{}
        [fleet]
        parent = "http://{parent}"
        self = "{me}"
        peers = [{peers}]
        secret_file = {:?}
        parent_timeout = "1s"
        "#,
        listeners_and_storage(dir.path()),
        secret.display().to_string(),
    );
    let listener = std::net::TcpListener::bind(addr).unwrap();
    start_on_listener(&cfg, dir, listener).await.0
}

/// A parent slower than `parent_timeout` to answer a `HEAD`, for a blob no node holds: taken for
/// down by the swarm, the directory names no holder, and the fill's own request of the parent
/// serves the pull. A slow parent costs a pull the bound, never the pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_parent_still_serves_a_blob_no_node_holds() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet_with(&parent, listeners(2), &[], 4, "parent_timeout = \"1s\"").await;
    let b = &f.nodes[1];
    let layer = random_bytes(MIB + 5, 32);
    let d = parent.put(&layer);
    *parent.state.head_delay.lock().unwrap() = Duration::from_secs(3);
    same(b.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(
        b.counter("berth_fleet_bytes_total{source=\"holder\"}")
            .await,
        0
    );
    assert_eq!(parent.sent(), layer.len() as u64);
    b.settled().await;
    assert_eq!(std::fs::read(b.blob_file(&d)).unwrap(), layer);
}
