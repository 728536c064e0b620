//! A fleet node's fills from the swarm and its serving of other nodes, over real sockets: node
//! berths (started as `fleet.rs` starts them, each on a listener bound first so that the node set
//! can name it) in front of a fake parent that serves the upstream list, the ordinary blob route
//! (with `Range`), and the tracker's routes (`POST /_berth/fleet/v1/swarm/<digest>`, `GET
//! /_berth/fleet/v1/pieces/<digest>?from=K`) backed by an in-process `swarm::tracker::Tracker`
//! and the blob's whole `PieceTable`, each checking the fleet proof. The parent's real tracker
//! routes are another branch's; this fake speaks the same `swarm::protocol` types both ways.
//!
//! Covered: a node serves a committed blob and one whose fill is running (fleet-signed; 401
//! without the proof; manifests 404; 429 at `max_uploads`); three nodes pull one blob at once
//! with at most two copies out of the parent; a lying peer is dropped at its first bad piece and
//! the pull completes; a peer serves only a blob the parent lets the repository have; a
//! tracker that answers 500 or garbage, a piece table that never comes, or a dead peer leaves
//! the pull to the parent; a parent that fails the swarm's tries leaves it to the fill's resume.
//! The fake parent, the node set and the fake nodes serve `fleet_directory.rs` too (the parent
//! down: `State::down`, `State::gets_down`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::watch;

use berth::cluster::auth;
use berth::config::Secret;
use berth::oci::Digest;
use berth::swarm::node::{Fleet as Nodes, NodeUrl};
use berth::swarm::pieces::Layout;
use berth::swarm::protocol::{Pieces, SwarmRequest, pieces_from};
use berth::swarm::tracker::{Feed, Tracker};
use berth::swarm::transfer::{self, Outgoing, Uploads};

use crate::support::instance::{Berth, eventually, listeners_and_storage, same, start_on_listener};
use crate::support::random_bytes;
use crate::swarm::table;

pub(crate) const SECRET: &str = "fleet-secret-0123456789abcdef-0123456789";
pub(crate) const MIB: usize = 1 << 20;
const LISTING: &str = r#"{"upstreams":[{"name":"registry.test","aliases":[],"default":true,"library_prefix":true,"tag_ttl_ms":30000}]}"#;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = s;
    r
}

pub(crate) fn proof(method: &str, path: &str) -> HeaderValue {
    berth::fleet::key(&Secret::new(SECRET)).sign(method, path, auth::now())
}

/// The proof of a call with `body`: its `Authorization` and its `berth-fleet-body`.
pub(crate) fn body_proof(method: &str, path: &str, body: &[u8]) -> (HeaderValue, HeaderValue) {
    let key = berth::fleet::key(&Secret::new(SECRET));
    berth::fleet::sign_body(&key, method, path, body, auth::now())
}

/// How the fake tracker answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Normal,
    /// 500 to every swarm call.
    Error,
    /// 200 with a body that is no answer.
    Garbage,
}

/// The fake parent's state: its blobs, the swarm, and what it sent.
pub(crate) struct State {
    blobs: Mutex<HashMap<String, Bytes>>,
    pub(crate) tracker: Mutex<Tracker>,
    nodes: Mutex<Nodes>,
    mode: Mutex<Mode>,
    /// The pieces route answers 404 (the table never comes).
    no_pieces: Mutex<bool>,
    /// Pieces calls answered.
    pieces_asks: AtomicU64,
    /// What the tracker is told the parent has, before each swarm call (none: not told).
    feed: Mutex<Option<Feed>>,
    /// Blob body bytes sent on the `/v2/` route.
    sent: AtomicU64,
    swarm_calls: AtomicU64,
    /// A blob body stops at this offset until the gate opens.
    gate: Mutex<Option<(u64, watch::Receiver<bool>)>>,
    /// A pause between 64 KiB chunks of a blob body (a link's pace, so pulls overlap).
    pace: Duration,
    /// Blob requests under this repository are answered 404 (the parent refuses it).
    denied: Mutex<Option<String>>,
    /// The next blob body breaks off at this offset (once).
    pub(crate) cut: Mutex<Option<u64>>,
    /// The next this many blob GETs with `Range` are answered 503.
    pub(crate) refuse: AtomicU64,
    /// Blob GETs answered.
    gets: AtomicU64,
    /// Every request is answered 503 (the parent is down).
    pub(crate) down: std::sync::atomic::AtomicBool,
    /// Blob GETs are answered 503 (the parent fails after its `HEAD`).
    pub(crate) gets_down: std::sync::atomic::AtomicBool,
    /// Blob GETs are never answered (the parent goes silent after its `HEAD`).
    pub(crate) gets_silent: std::sync::atomic::AtomicBool,
    /// How long a blob `HEAD` takes to be answered (a parent slow to ask its upstream).
    pub(crate) head_delay: Mutex<Duration>,
}

pub(crate) struct Parent {
    pub(crate) url: String,
    pub(crate) state: Arc<State>,
}

impl Parent {
    pub(crate) async fn start(pace: Duration) -> Parent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            blobs: Mutex::default(),
            tracker: Mutex::default(),
            nodes: Mutex::default(),
            mode: Mutex::new(Mode::Normal),
            no_pieces: Mutex::new(false),
            pieces_asks: AtomicU64::new(0),
            feed: Mutex::new(None),
            sent: AtomicU64::new(0),
            swarm_calls: AtomicU64::new(0),
            gate: Mutex::new(None),
            pace,
            denied: Mutex::new(None),
            cut: Mutex::new(None),
            refuse: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            down: Default::default(),
            gets_down: Default::default(),
            gets_silent: Default::default(),
            head_delay: Mutex::default(),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Parent {
            url: format!("http://{addr}"),
            state,
        }
    }

    pub(crate) fn put(&self, bytes: &Bytes) -> String {
        let d = Digest::of(bytes).to_string();
        self.state
            .blobs
            .lock()
            .unwrap()
            .insert(d.clone(), bytes.clone());
        d
    }

    pub(crate) fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }
}

async fn answer(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if st.down.load(Ordering::SeqCst) {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let path = req.uri().path().to_owned();
    let pq = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_owned());
    if path.starts_with("/_berth/fleet/") {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let key = berth::fleet::key(&Secret::new(SECRET));
        let (method, headers) = (parts.method.as_str(), &parts.headers);
        if berth::fleet::verify(&key, method, &pq, headers, &body, auth::now()).is_err() {
            return status(StatusCode::UNAUTHORIZED);
        }
        return fleet_answer(st, &path, parts.uri.query(), body).await;
    }
    blob_answer(st, &path, req).await
}

/// A fleet call to the fake parent, its proof checked.
async fn fleet_answer(
    st: Arc<State>,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Response<Body> {
    if path == "/_berth/fleet/v1/upstreams" {
        return Response::new(full(LISTING));
    }
    if let Some(d) = path.strip_prefix("/_berth/fleet/v1/swarm/") {
        st.swarm_calls.fetch_add(1, Ordering::SeqCst);
        match *st.mode.lock().unwrap() {
            Mode::Error => return status(StatusCode::INTERNAL_SERVER_ERROR),
            Mode::Garbage => return Response::new(full("{\"size\": \"many\"}")),
            Mode::Normal => {}
        }
        let Some(size) = st.blobs.lock().unwrap().get(d).map(|b| b.len() as u64) else {
            return status(StatusCode::NOT_FOUND);
        };
        let digest: Digest = d.parse().unwrap();
        let nodes = st.nodes.lock().unwrap().clone();
        let Ok(r) = SwarmRequest::parse(&body, &nodes) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let mut tracker = st.tracker.lock().unwrap();
        if let Some(feed) = *st.feed.lock().unwrap() {
            tracker.feed(&digest, feed, Instant::now());
        }
        return match r.apply(
            &mut tracker,
            &digest,
            Layout::new(size),
            &nodes,
            Instant::now(),
        ) {
            Ok(a) => Response::new(full(a.encode())),
            Err(_) => status(StatusCode::BAD_REQUEST),
        };
    }
    if let Some(d) = path.strip_prefix("/_berth/fleet/v1/pieces/") {
        st.pieces_asks.fetch_add(1, Ordering::SeqCst);
        let Some(bytes) = st.blobs.lock().unwrap().get(d).cloned() else {
            return status(StatusCode::NOT_FOUND);
        };
        if *st.no_pieces.lock().unwrap() {
            return status(StatusCode::NOT_FOUND);
        }
        let from = pieces_from(query).unwrap();
        return Response::new(full(Pieces::of(&table(&bytes), from).encode()));
    }
    status(StatusCode::NOT_FOUND)
}

/// The fake parent's `/v2/` blob route.
async fn blob_answer(st: Arc<State>, path: &str, req: Request<Incoming>) -> Response<Body> {
    let Some((repo, d)) = path.rsplit_once("/blobs/") else {
        return status(StatusCode::NOT_FOUND);
    };
    let Some(bytes) = st.blobs.lock().unwrap().get(d).cloned() else {
        return status(StatusCode::NOT_FOUND);
    };
    if st.denied.lock().unwrap().as_deref() == repo.strip_prefix("/v2/") {
        return status(StatusCode::NOT_FOUND);
    }
    let size = bytes.len() as u64;
    if req.method() == Method::HEAD {
        let delay = *st.head_delay.lock().unwrap();
        if !delay.is_zero() {
            // The parent's behaviour (a slow upstream behind it), not a wait for anything.
            tokio::time::sleep(delay).await;
        }
        let mut r = status(StatusCode::OK);
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        return r;
    }
    st.gets.fetch_add(1, Ordering::SeqCst);
    if st.gets_down.load(Ordering::SeqCst) {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    if st.gets_silent.load(Ordering::SeqCst) {
        return std::future::pending().await;
    }
    let from = req.headers().get(header::RANGE).and_then(|v| {
        v.to_str()
            .ok()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    });
    if from.is_some()
        && st
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let start = from.unwrap_or(0);
    let cut = st.cut.lock().unwrap().take();
    let gate = st.gate.lock().unwrap().clone();
    let pace = st.pace;
    let state = st.clone();
    let chunks = futures_util::stream::unfold(start, move |pos| {
        let (bytes, gate, state) = (bytes.clone(), gate.clone(), state.clone());
        async move {
            if pos >= size {
                return None;
            }
            if let Some((at, open)) = &gate
                && pos == *at
            {
                let mut open = open.clone();
                let _ = open.wait_for(|o| *o).await;
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            if cut.is_some_and(|c| pos >= c) {
                return Some((Err(std::io::Error::other("cut")), size));
            }
            let mut end = (pos + 64 * 1024).min(size);
            if let Some(c) = cut
                && pos < c
            {
                end = end.min(c);
            }
            if let Some((at, _)) = &gate
                && pos < *at
            {
                end = end.min(*at);
            }
            let chunk = bytes.slice(pos as usize..end as usize);
            state.sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(Frame::data(chunk)), end))
        }
    });
    let mut r = Response::new(StreamBody::new(chunks).boxed_unsync());
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size - start));
    if from.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", size - 1)
                .parse()
                .unwrap(),
        );
    }
    r
}

/// Listeners bound before any node starts, so that every node's `peers` names them all.
pub(crate) fn listeners(n: usize) -> Vec<(std::net::TcpListener, NodeUrl)> {
    (0..n)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", l.local_addr().unwrap())
                .parse()
                .unwrap();
            (l, url)
        })
        .collect()
}

pub(crate) struct Fleet {
    pub(crate) nodes: Vec<Berth>,
    pub(crate) _secret: tempfile::TempDir,
}

/// Starts a node on each listener, all knowing `nodes` (plus `extra`, fake nodes), the parent
/// knowing them too.
pub(crate) async fn fleet(
    parent: &Parent,
    bound: Vec<(std::net::TcpListener, NodeUrl)>,
    extra: &[NodeUrl],
    max_uploads: u32,
) -> Fleet {
    fleet_with(parent, bound, extra, max_uploads, "").await
}

/// As [`fleet`], with `more` (keys of `[fleet]`) in every node's table.
pub(crate) async fn fleet_with(
    parent: &Parent,
    bound: Vec<(std::net::TcpListener, NodeUrl)>,
    extra: &[NodeUrl],
    max_uploads: u32,
    more: &str,
) -> Fleet {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret: PathBuf = secret_dir.path().join("fleet-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let urls: Vec<NodeUrl> = bound
        .iter()
        .map(|(_, u)| u.clone())
        .chain(extra.iter().cloned())
        .collect();
    *parent.state.nodes.lock().unwrap() = Nodes::new(urls.clone());
    let peers = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes = Vec::new();
    for (listener, me) in bound {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            r#"{}
            [fleet]
            parent = "{}"
            self = "{me}"
            peers = [{peers}]
            secret_file = {:?}
            max_uploads = {max_uploads}
            {more}
            "#,
            listeners_and_storage(dir.path()),
            parent.url,
            secret.display().to_string(),
        );
        nodes.push(start_on_listener(&cfg, dir, listener).await.0);
    }
    Fleet {
        nodes,
        _secret: secret_dir,
    }
}

pub(crate) fn blob_path(d: &str) -> String {
    format!("/v2/app/blobs/{d}")
}

/// A node's fleet route for `d`, with the proof, from `from` on.
pub(crate) async fn fleet_get(
    node: &Berth,
    d: &str,
    from: Option<u64>,
) -> http::Response<Incoming> {
    let path = format!("{}{d}", transfer::BLOBS_PATH);
    let mut req = Request::get(format!("http://{}{path}", node.addr))
        .header(header::AUTHORIZATION, proof("GET", &path));
    if let Some(f) = from {
        req = req.header(header::RANGE, format!("bytes={f}-"));
    }
    node.client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap()
}

pub(crate) async fn read_all(resp: http::Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// A node serves a committed blob to another node (whole, and from an offset), only with the
/// fleet's proof, only blobs; and a blob whose fill is still running, its written prefix first
/// (the parent holds the rest back), the rest as it comes; at `max_uploads` it answers 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_committed_and_running_blobs_to_other_nodes() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(1), &[], 1).await;
    let node = &f.nodes[0];
    let layer = random_bytes(3 * MIB + 100, 1);
    let d = parent.put(&layer);
    same(node.get(&blob_path(&d)).await.bytes(), &layer);
    node.settled().await;

    same(&read_all(fleet_get(node, &d, None).await).await, &layer);
    let tail = fleet_get(node, &d, Some(MIB as u64 + 7)).await;
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        tail.headers()[header::CONTENT_RANGE],
        format!("bytes {}-{}/{}", MIB + 7, layer.len() - 1, layer.len()).as_str()
    );
    same(&read_all(tail).await, &layer.slice(MIB + 7..));
    assert!(
        node.counter("berth_fleet_served_bytes_total").await >= (2 * layer.len() - MIB - 7) as u64
    );

    // No proof, a proof for another path: 401. A manifest, a tag, no digest: 404.
    let path = format!("{}{d}", transfer::BLOBS_PATH);
    assert_eq!(node.get(&path).await.status, StatusCode::UNAUTHORIZED);
    let wrong = proof("GET", "/_berth/fleet/v1/blobs/other");
    let got = node
        .request(
            Method::GET,
            &path,
            &[("authorization", wrong.to_str().unwrap())],
        )
        .await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    for other in [
        "/_berth/fleet/v1/manifests/latest".to_owned(),
        "/_berth/fleet/v1/blobs/latest".to_owned(),
        format!("/_berth/fleet/v1/blobs/{d}/x"),
    ] {
        let p = proof("GET", &other);
        let got = node
            .request(
                Method::GET,
                &other,
                &[("authorization", p.to_str().unwrap())],
            )
            .await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{other}");
    }
    // Not held: 404.
    let absent = Digest::of(b"absent").to_string();
    assert_eq!(
        fleet_get(node, &absent, None).await.status(),
        StatusCode::NOT_FOUND
    );

    // A running fill: the parent holds its body at 2 MiB; the node serves what it has written,
    // and says "waiting" (a short clean end) while the fill waits; asked again from where it
    // stopped, as a child does, it serves the rest once the parent sends it.
    let growing = random_bytes(4 * MIB, 2);
    let g = parent.put(&growing);
    let (open, gate) = watch::channel(false);
    *parent.state.gate.lock().unwrap() = Some((2 * MIB as u64, gate));
    let client = tokio::spawn({
        let (c, addr, p) = (node.client.clone(), node.addr, blob_path(&g));
        async move {
            let resp = c
                .get(format!("http://{addr}{p}").parse().unwrap())
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    });
    let mut got = Vec::new();
    let mut opened = false;
    while got.len() < growing.len() {
        let resp = fleet_get(node, &g, Some(got.len() as u64)).await;
        if resp.status() == StatusCode::NOT_FOUND {
            // The fill has not begun: the client's request is on its way.
            assert!(got.is_empty());
            continue;
        }
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            // The body held below is not seen gone yet.
            assert!(opened);
            continue;
        }
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(frame.unwrap().data_ref().unwrap());
            assert!(opened || got.len() <= 2 * MIB, "past what the fill has");
        }
        if got.len() == 2 * MIB && !opened {
            // At max_uploads (1): while one body is open (it cannot end before its tick: the
            // fill waits at the gate), a second is refused.
            let mut held = fleet_get(node, &g, Some(0)).await.into_body();
            held.frame().await.unwrap().unwrap();
            assert_eq!(
                fleet_get(node, &d, None).await.status(),
                StatusCode::TOO_MANY_REQUESTS
            );
            drop(held);
            opened = true;
            open.send_replace(true);
        }
    }
    same(&Bytes::from(got), &growing);
    same(&client.await.unwrap(), &growing);

    let freed = eventually(|| async {
        fleet_get(node, &d, Some(layer.len() as u64 - 1))
            .await
            .status()
            == StatusCode::PARTIAL_CONTENT
    })
    .await;
    assert!(freed, "the upload slot was never freed");
}

/// Three nodes pull one fresh blob at once through the fake tracker: each gets the right bytes,
/// the parent sends at most two copies (its two direct slots), the rest goes node to node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_pull_a_blob_with_at_most_two_copies_from_the_parent() {
    let parent = Parent::start(Duration::from_millis(5)).await;
    let f = fleet(&parent, listeners(3), &[], 4).await;
    let layer = random_bytes(6 * MIB + 321, 3);
    let d = parent.put(&layer);
    let pulls: Vec<_> = f
        .nodes
        .iter()
        .map(|n| {
            let (c, addr, p) = (n.client.clone(), n.addr, blob_path(&d));
            tokio::spawn(async move {
                let resp = c
                    .get(format!("http://{addr}{p}").parse().unwrap())
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                resp.into_body().collect().await.unwrap().to_bytes()
            })
        })
        .collect();
    for p in pulls {
        same(&p.await.unwrap(), &layer);
    }
    let size = layer.len() as u64;
    let sent = parent.sent();
    assert!(
        (size..=2 * size).contains(&sent),
        "the parent sent {sent} bytes for a blob of {size}"
    );
    let mut from_peers = 0;
    let mut served = 0;
    for n in &f.nodes {
        n.settled().await;
        assert_eq!(std::fs::read(n.blob_file(&d)).unwrap(), layer);
        from_peers += n.counter("berth_fleet_bytes_total{source=\"peer\"}").await;
        served += n.counter("berth_fleet_served_bytes_total").await;
    }
    assert!(from_peers >= size, "{from_peers} bytes came from peers");
    assert!(served >= from_peers, "{served} served, {from_peers} got");
    // Each node told the tracker it holds the blob.
    let digest: Digest = d.parse().unwrap();
    let holds = eventually(|| async {
        let t = parent.state.tracker.lock().unwrap();
        let nodes = parent.state.nodes.lock().unwrap().clone();
        t.holders(&digest, &nodes, Instant::now()).len() == 3
    })
    .await;
    assert!(holds, "the nodes never all held the blob");
}

/// A fake node that serves `bytes` as the blob `d` (a lie, when they are wrong), and counts the
/// requests for it.
pub(crate) async fn fake_node(
    listener: std::net::TcpListener,
    d: &Digest,
    bytes: Bytes,
) -> Arc<AtomicU64> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, &bytes).unwrap();
    let path = transfer::path(d);
    let asked = Arc::new(AtomicU64::new(0));
    let counted = asked.clone();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let uploads = Uploads::new(4, Duration::from_millis(200));
    let size = bytes.len() as u64;
    let (_tx, rx) = watch::channel(size);
    tokio::spawn(async move {
        let _dir = dir;
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (uploads, file, path, rx, counted) = (
                uploads.clone(),
                file.clone(),
                path.clone(),
                rx.clone(),
                counted.clone(),
            );
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    // Only the blob's requests: a node also tells this one, as a directory node
                    // of the digest, that it holds the blob (retried in the background).
                    if req.uri().path() == path {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    let blob = (req.uri().path() == path).then(|| Outgoing {
                        file: Arc::new(std::fs::File::open(&file).unwrap()),
                        size,
                        frontier: rx.clone(),
                    });
                    let resp = uploads.serve(req.headers().get(header::RANGE), blob);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    asked
}

/// A peer that lies (a wrong byte in piece 2) is the tracker's first answer: the node finds it
/// at that piece, drops it (counted), gets the parent from the tracker, and completes the right
/// blob; what it then serves to another node is right too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_is_dropped_and_the_pull_completes_elsewhere() {
    let parent = Parent::start(Duration::ZERO).await;
    let layer = random_bytes(4 * MIB + 77, 4);
    let d = parent.put(&layer);
    let digest: Digest = d.parse().unwrap();
    let mut bound = listeners(3);
    let (liar_listener, liar) = bound.pop().unwrap();
    let mut lie = layer.to_vec();
    lie[2 * MIB + 1000] ^= 0x20;
    let asked = fake_node(liar_listener, &digest, Bytes::from(lie)).await;
    let f = fleet(&parent, bound, std::slice::from_ref(&liar), 4).await;
    // The liar holds the blob, as far as the tracker knows.
    {
        let nodes = parent.state.nodes.lock().unwrap().clone();
        let mut t = parent.state.tracker.lock().unwrap();
        t.hold(&digest, &liar, layer.len() as u64, &nodes, Instant::now())
            .unwrap();
    }
    let first = &f.nodes[0];
    same(first.get(&blob_path(&d)).await.bytes(), &layer);
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "the liar was never asked"
    );
    assert_eq!(first.counter("berth_fleet_pieces_rejected_total").await, 1);
    assert_eq!(
        first
            .counter("berth_fleet_peers_dropped_total{reason=\"bad_piece\"}")
            .await,
        1
    );
    first.settled().await;
    assert_eq!(std::fs::read(first.blob_file(&d)).unwrap(), layer);
    same(&read_all(fleet_get(first, &d, None).await).await, &layer);
    // The next node never gets the liar again (banned for this digest) and pulls it right.
    let second = &f.nodes[1];
    let before = asked.load(Ordering::SeqCst);
    same(second.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(asked.load(Ordering::SeqCst), before);
    assert_eq!(second.counter("berth_fleet_pieces_rejected_total").await, 0);
}

/// A tracker that answers 500, then one that answers garbage: each pull completes from the
/// parent, every byte counted as the parent's; and a tracker that names an honest peer while the
/// piece table never comes: the node stops reading the peer at its bound of unverified bytes,
/// leaves it for the parent and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tracker_or_table_leaves_the_pull_to_the_parent() {
    let parent = Parent::start(Duration::ZERO).await;
    let mut bound = listeners(2);
    let (honest_listener, honest) = bound.pop().unwrap();
    let f = fleet(&parent, bound, std::slice::from_ref(&honest), 4).await;
    let node = &f.nodes[0];
    let mut expected = 0;
    for (mode, seed) in [(Mode::Error, 5), (Mode::Garbage, 6)] {
        *parent.state.mode.lock().unwrap() = mode;
        let layer = random_bytes(2 * MIB + 5, seed);
        let d = parent.put(&layer);
        let calls = parent.state.swarm_calls.load(Ordering::SeqCst);
        same(node.get(&blob_path(&d)).await.bytes(), &layer);
        assert!(
            parent.state.swarm_calls.load(Ordering::SeqCst) > calls,
            "{mode:?}: the tracker was never asked"
        );
        node.settled().await;
        assert_eq!(
            std::fs::read(node.blob_file(&d)).unwrap(),
            layer,
            "{mode:?}"
        );
        expected += layer.len() as u64;
        assert_eq!(
            node.counter("berth_fleet_bytes_total{source=\"parent\"}")
                .await,
            expected,
            "{mode:?}"
        );
    }

    *parent.state.mode.lock().unwrap() = Mode::Normal;
    *parent.state.no_pieces.lock().unwrap() = true;
    // Larger than what a node holds unverified: it stops reading the peer there.
    let layer = random_bytes(24 * MIB, 7);
    let d = parent.put(&layer);
    let digest: Digest = d.parse().unwrap();
    let asked = fake_node(honest_listener, &digest, layer.clone()).await;
    {
        let nodes = parent.state.nodes.lock().unwrap().clone();
        let mut t = parent.state.tracker.lock().unwrap();
        t.hold(&digest, &honest, layer.len() as u64, &nodes, Instant::now())
            .unwrap();
    }
    same(node.get(&blob_path(&d)).await.bytes(), &layer);
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "the peer was never asked"
    );
    assert!(
        node.counter("berth_fleet_bytes_total{source=\"parent\"}")
            .await
            > expected,
        "the parent never sent the rest"
    );
    assert_eq!(node.counter("berth_fleet_pieces_rejected_total").await, 0);
    // Without a table nothing from the peer is verified: the node read at most its bound of
    // unverified bytes (16 MiB) and a read's worth more, not the whole blob.
    let from_peer = node
        .counter("berth_fleet_bytes_total{source=\"peer\"}")
        .await;
    assert!(
        from_peer <= (17 * MIB) as u64,
        "{from_peer} bytes read from a peer while none could be checked"
    );
}

/// An empty blob comes through the swarm like any other (its end completes it).
#[tokio::test]
async fn an_empty_blob_completes() {
    let parent = Parent::start(Duration::ZERO).await;
    let f = fleet(&parent, listeners(1), &[], 4).await;
    let empty = Bytes::new();
    let d = parent.put(&empty);
    let node = &f.nodes[0];
    let got = node.get(&blob_path(&d)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.bytes().is_empty());
    node.settled().await;
    assert_eq!(std::fs::read(node.blob_file(&d)).unwrap(), b"");
    assert!(
        parent.state.swarm_calls.load(Ordering::SeqCst) >= 2,
        "join, then complete"
    );
}

/// The tracker names a peer that holds the blob, but the parent refuses the repository the
/// client asked under: the node answers 404 and never asks the peer. Under a repository the
/// parent serves, every byte comes from the peer (the parent answers a HEAD, sends nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serves_only_a_blob_the_parent_lets_the_repository_have() {
    let parent = Parent::start(Duration::ZERO).await;
    let layer = random_bytes(2 * MIB + 9, 8);
    let d = parent.put(&layer);
    let digest: Digest = d.parse().unwrap();
    let mut bound = listeners(2);
    let (peer_listener, peer) = bound.pop().unwrap();
    let asked = fake_node(peer_listener, &digest, layer.clone()).await;
    let f = fleet(&parent, bound, std::slice::from_ref(&peer), 4).await;
    {
        let nodes = parent.state.nodes.lock().unwrap().clone();
        let mut t = parent.state.tracker.lock().unwrap();
        t.hold(&digest, &peer, layer.len() as u64, &nodes, Instant::now())
            .unwrap();
    }
    *parent.state.denied.lock().unwrap() = Some("library/secret".into());
    let node = &f.nodes[0];
    let got = node.get(&format!("/v2/secret/blobs/{d}")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.code(), "BLOB_UNKNOWN");
    assert_eq!(asked.load(Ordering::SeqCst), 0, "the peer was asked");
    assert!(!node.blob_file(&d).exists());

    same(node.get(&blob_path(&d)).await.bytes(), &layer);
    assert!(asked.load(Ordering::SeqCst) >= 1);
    assert_eq!(parent.sent(), 0, "the parent sent blob bytes");
    assert_eq!(
        node.counter("berth_fleet_bytes_total{source=\"peer\"}")
            .await,
        layer.len() as u64
    );
}

/// The parent's body breaks off mid-blob and its next answers are refusals: the swarm's tries
/// run out, its body breaks, and the fill resumes from the parent with `Range` as it resumes
/// any body, completing the blob; a dead peer named by the tracker is dropped as unreachable
/// and the pull goes to the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_failing_the_swarm_leaves_the_pull_to_the_fill_resume() {
    let parent = Parent::start(Duration::ZERO).await;
    let mut bound = listeners(2);
    let (dead_listener, dead) = bound.pop().unwrap();
    drop(dead_listener);
    let f = fleet(&parent, bound, std::slice::from_ref(&dead), 4).await;
    let node = &f.nodes[0];

    let layer = random_bytes(3 * MIB + 1, 9);
    let d = parent.put(&layer);
    *parent.state.cut.lock().unwrap() = Some(MIB as u64);
    // The swarm's two more tries of the parent (the break was its first failure), each sent
    // three times by the upstream client (`retries` = 2).
    parent.state.refuse.store(6, Ordering::SeqCst);
    same(node.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(parent.state.refuse.load(Ordering::SeqCst), 0);
    assert_eq!(
        parent.state.gets.load(Ordering::SeqCst),
        8,
        "the first body, six refused tries, the fill's resume"
    );
    assert_eq!(node.counter("outcome=\"partial\"").await, 1);
    node.settled().await;
    assert_eq!(std::fs::read(node.blob_file(&d)).unwrap(), layer);

    let layer = random_bytes(MIB + 3, 10);
    let d = parent.put(&layer);
    let digest: Digest = d.parse().unwrap();
    {
        let nodes = parent.state.nodes.lock().unwrap().clone();
        let mut t = parent.state.tracker.lock().unwrap();
        t.hold(&digest, &dead, layer.len() as u64, &nodes, Instant::now())
            .unwrap();
    }
    same(node.get(&blob_path(&d)).await.bytes(), &layer);
    assert_eq!(
        node.counter("berth_fleet_peers_dropped_total{reason=\"unreachable\"}")
            .await,
        1
    );
}

/// The head of a node's chain took the parent's slot and never fetched (the parent fills
/// nothing, so no table comes): the node reads the head's bytes, cannot check them, and after a
/// second of table misses reports; the tracker, a `FETCH_GRACE` after it named the head, finds it
/// idle and answers the parent, well before the node's own fallback (`MAX_HASH_MISSES` misses,
/// about 3 s). The blob comes whole.
#[tokio::test]
async fn a_node_below_a_head_that_never_fetched_is_moved_to_the_parent() {
    let parent = Parent::start(Duration::ZERO).await;
    let mut bound = listeners(2);
    let (head_listener, head) = bound.pop().unwrap();
    let f = fleet(&parent, bound, std::slice::from_ref(&head), 4).await;
    let node = &f.nodes[0];
    *parent.state.no_pieces.lock().unwrap() = true;
    *parent.state.feed.lock().unwrap() = Some(Feed::Cold);
    let layer = random_bytes(4 * MIB, 11);
    let d = parent.put(&layer);
    let digest: Digest = d.parse().unwrap();
    let asked = fake_node(head_listener, &digest, layer.clone()).await;
    {
        let nodes = parent.state.nodes.lock().unwrap().clone();
        let mut t = parent.state.tracker.lock().unwrap();
        t.feed(&digest, Feed::Cold, Instant::now());
        let a = t
            .join(&digest, &head, 0, 4, &nodes, Instant::now())
            .unwrap();
        assert_eq!(a, berth::swarm::tracker::Assignment::Parent);
    }
    same(node.get(&blob_path(&d)).await.bytes(), &layer);
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "the head was never asked"
    );
    let misses = parent.state.pieces_asks.load(Ordering::SeqCst);
    assert!(
        misses < u64::from(MAX_HASH_MISSES),
        "{misses} table misses: the node left the head by its own fallback, not the tracker"
    );
    assert_eq!(
        node.counter("berth_fleet_bytes_total{source=\"parent\"}")
            .await,
        layer.len() as u64
    );
}

/// `fill::swarm::drive::MAX_HASH_MISSES` (private to the crate).
const MAX_HASH_MISSES: u32 = 30;
