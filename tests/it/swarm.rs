//! Node to node over real sockets (`swarm::transfer`): a node serves its verified bytes, follows
//! its frontier, says "waiting" with a short clean end, breaks its bodies when it gives up,
//! answers 429 at `max_uploads`; a node's transfer (`swarm::select`) finds a lying peer at its
//! first bad piece and completes the blob from an honest one; and eight nodes driven through the
//! tracker (`swarm::tracker`) pull a blob at once with at most two copies out of the parent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::oci::Digest;
use berth::swarm::node::NodeUrl;
use berth::swarm::pieces::{Layout, PieceHash, PieceTable};
use berth::swarm::select::{Action, Source, Transfer};
use berth::swarm::tracker::Reason;
use berth::swarm::transfer::{self, Event, Outgoing, Uploads};
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::support::instance::eventually;

const MIB: u64 = 1 << 20;

fn data(size: u64, seed: u8) -> Vec<u8> {
    (0..size as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A blob a test node serves: its file, and the sender of its frontier.
struct Served {
    path: PathBuf,
    size: u64,
    frontier: watch::Sender<u64>,
}

/// What a test node has: by request path, the file, its size and its frontier.
type Blobs = Arc<Mutex<HashMap<String, (PathBuf, u64, watch::Receiver<u64>)>>>;

/// A node's blob server on loopback: `serve` over whatever blobs the test put in.
struct Node {
    url: NodeUrl,
    blobs: Blobs,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Node {
    async fn start(max_uploads: usize, tick: Duration) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let blobs: Blobs = Arc::default();
        let uploads = Uploads::new(max_uploads, tick);
        let b = blobs.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (b, uploads) = (b.clone(), uploads.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let blob = b.lock().unwrap().get(req.uri().path()).map(
                                |(path, size, rx): &(PathBuf, u64, watch::Receiver<u64>)| {
                                    Outgoing {
                                        file: Arc::new(std::fs::File::open(path).unwrap()),
                                        size: *size,
                                        frontier: rx.clone(),
                                    }
                                },
                            );
                            let resp = uploads.serve(req.headers().get(http::header::RANGE), blob);
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        Node {
            url: format!("http://{addr}").parse().unwrap(),
            blobs,
            dir: dir.path().to_owned(),
            _dir: dir,
        }
    }

    /// Puts `bytes` in this node's file for `digest`, verified up to `frontier`.
    fn put(&self, digest: &Digest, bytes: &[u8], frontier: u64) -> Served {
        let path = self.dir.join(digest.hex());
        std::fs::write(&path, bytes).unwrap();
        let (tx, rx) = watch::channel(frontier);
        self.blobs.lock().unwrap().insert(
            transfer::path(digest),
            (path.clone(), bytes.len() as u64, rx),
        );
        Served {
            path,
            size: bytes.len() as u64,
            frontier: tx,
        }
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The fleet proof is checked by the wiring, not by these functions: any value goes here.
fn proof() -> HeaderValue {
    HeaderValue::from_static("Berth-Fleet 0 00")
}

/// Reads a body until it ends, returning its bytes and how it ended.
async fn drain(body: &mut transfer::BlobBody) -> (Vec<u8>, Event) {
    let mut got = Vec::new();
    loop {
        match body.next().await {
            Event::Bytes(b) => got.extend_from_slice(&b),
            end => return (got, end),
        }
    }
}

/// Reads a body until it has at least `n` bytes.
async fn read_at_least(body: &mut transfer::BlobBody, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match body.next().await {
            Event::Bytes(b) => got.extend_from_slice(&b),
            other => panic!("ended with {other:?} after {} bytes", got.len()),
        }
    }
    got
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_complete_blob_streams_whole_and_from_an_offset() {
    let node = Node::start(4, LONG).await;
    let bytes = data(3 * MIB + 5, 1);
    let d = Digest::of(&bytes);
    let _s = node.put(&d, &bytes, bytes.len() as u64);
    let c = client();
    let mut body = transfer::fetch(&c, &node.url, &d, 0, proof())
        .await
        .unwrap();
    assert_eq!(body.size(), bytes.len() as u64);
    let (got, end) = drain(&mut body).await;
    assert_eq!(end, Event::Done);
    assert!(got == bytes, "the whole blob");
    let from = MIB + 3;
    let mut body = transfer::fetch(&c, &node.url, &d, from, proof())
        .await
        .unwrap();
    let (got, end) = drain(&mut body).await;
    assert_eq!(end, Event::Done);
    assert!(got == bytes[from as usize..], "the tail");
}

#[tokio::test]
async fn a_receiving_node_follows_its_frontier() {
    let node = Node::start(4, LONG).await;
    let bytes = data(3 * MIB, 2);
    let d = Digest::of(&bytes);
    let s = node.put(&d, &bytes, MIB);
    let c = client();
    let mut body = transfer::fetch(&c, &node.url, &d, 0, proof())
        .await
        .unwrap();
    let first = read_at_least(&mut body, MIB as usize).await;
    assert_eq!(first.len() as u64, MIB, "never past the frontier");
    // The frontier moves: the same body goes on, to the end.
    s.frontier.send(s.size).unwrap();
    let (rest, end) = drain(&mut body).await;
    assert_eq!(end, Event::Done);
    assert!([first, rest].concat() == bytes);
    assert!(s.path.exists());
}

#[tokio::test]
async fn a_frontier_that_stays_put_ends_the_body_short() {
    let node = Node::start(4, Duration::from_millis(100)).await;
    let bytes = data(2 * MIB, 3);
    let d = Digest::of(&bytes);
    let s = node.put(&d, &bytes, MIB);
    let c = client();
    let mut body = transfer::fetch(&c, &node.url, &d, 0, proof())
        .await
        .unwrap();
    let (got, end) = drain(&mut body).await;
    assert_eq!((got.len() as u64, end), (MIB, Event::Waiting));
    // Asked again at the frontier: nothing new, waiting again.
    let mut body = transfer::fetch(&c, &node.url, &d, MIB, proof())
        .await
        .unwrap();
    let (got, end) = drain(&mut body).await;
    assert_eq!((got.len(), end), (0, Event::Waiting));
    // The frontier moved: the rest.
    s.frontier.send(s.size).unwrap();
    let mut body = transfer::fetch(&c, &node.url, &d, MIB, proof())
        .await
        .unwrap();
    let (got, end) = drain(&mut body).await;
    assert_eq!(end, Event::Done);
    assert!(got == bytes[MIB as usize..]);
}

#[tokio::test]
async fn a_node_that_gives_up_breaks_its_bodies() {
    let node = Node::start(4, LONG).await;
    let bytes = data(2 * MIB, 4);
    let d = Digest::of(&bytes);
    let s = node.put(&d, &bytes, MIB);
    let c = client();
    let mut body = transfer::fetch(&c, &node.url, &d, 0, proof())
        .await
        .unwrap();
    read_at_least(&mut body, MIB as usize).await;
    drop(s.frontier);
    assert_eq!(body.next().await, Event::Closed);
}

#[tokio::test]
async fn at_max_uploads_a_node_answers_429() {
    let node = Node::start(1, LONG).await;
    let bytes = data(2 * MIB, 5);
    let d = Digest::of(&bytes);
    let _s = node.put(&d, &bytes, MIB);
    let c = client();
    let mut first = transfer::fetch(&c, &node.url, &d, 0, proof())
        .await
        .unwrap();
    read_at_least(&mut first, 1).await;
    assert_eq!(
        transfer::fetch(&c, &node.url, &d, 0, proof()).await.err(),
        Some(Reason::Busy)
    );
    // The first body gone, its slot is free again.
    drop(first);
    let freed = eventually(|| {
        let c = c.clone();
        let url = node.url.clone();
        let d = d.clone();
        async move { transfer::fetch(&c, &url, &d, 0, proof()).await.is_ok() }
    })
    .await;
    assert!(freed, "the slot was never freed");
}

#[tokio::test]
async fn nothing_to_serve_is_404_and_a_range_past_the_end_416() {
    let node = Node::start(4, LONG).await;
    let bytes = data(MIB, 6);
    let d = Digest::of(&bytes);
    let _s = node.put(&d, &bytes, MIB);
    let c = client();
    let other = Digest::of(b"not here");
    assert_eq!(
        transfer::fetch(&c, &node.url, &other, 0, proof())
            .await
            .err(),
        Some(Reason::Unreachable)
    );
    assert_eq!(
        transfer::fetch(&c, &node.url, &d, MIB, proof()).await.err(),
        Some(Reason::Unreachable)
    );
    let req = http::Request::get(format!("{}{}", node.url, transfer::path(&d)))
        .header(http::header::RANGE, format!("bytes={MIB}-"))
        .body(Empty::new())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        resp.headers()[http::header::CONTENT_RANGE],
        format!("bytes */{MIB}").as_str()
    );
    // A node that is not there at all.
    let refusing = crate::support::ports::Dead::new();
    let dead: NodeUrl = format!("http://{}", refusing.addr()).parse().unwrap();
    assert_eq!(
        transfer::fetch(&c, &dead, &d, 0, proof()).await.err(),
        Some(Reason::Unreachable)
    );
}

/// sha256 of each piece of `bytes`, by the size rule, computed here (not by berth's hasher).
pub(crate) fn piece_hashes(bytes: &[u8]) -> Vec<PieceHash> {
    let l = Layout::new(bytes.len() as u64);
    (0..l.count())
        .map(|k| {
            let r = l.range(k);
            Sha256::digest(&bytes[r.start as usize..r.end as usize]).into()
        })
        .collect()
}

/// The whole piece table of `bytes`, as the parent would make it.
pub(crate) fn table(bytes: &[u8]) -> PieceTable {
    let mut t = PieceTable::new(Layout::new(bytes.len() as u64));
    t.extend(0, &piece_hashes(bytes)).unwrap();
    t
}

/// The tracker first names a liar (a wrong byte in piece 2), then an honest node: the transfer
/// drops the liar at piece 2 for a bad piece, resumes there from the honest one, and completes
/// the blob with the right digest; no byte of piece 2 or after was ever counted verified from
/// the liar.
#[tokio::test]
async fn a_lying_peer_is_found_at_its_first_bad_piece() {
    let bytes = data(4 * MIB + 77, 7);
    let d = Digest::of(&bytes);
    let mut lie = bytes.clone();
    lie[(2 * MIB + 1000) as usize] ^= 0x20;
    let liar = Node::start(4, LONG).await;
    let honest = Node::start(4, LONG).await;
    let _l = liar.put(&d, &lie, lie.len() as u64);
    let _h = honest.put(&d, &bytes, bytes.len() as u64);
    let tab = table(&bytes);
    let c = client();

    let t0 = Instant::now();
    let (mut t, mut actions) = Transfer::start(bytes.len() as u64, t0);
    let mut tracker = vec![honest.url.clone(), liar.url.clone()];
    let mut kept: Vec<u8> = Vec::new();
    let mut verified = 0u64;
    let mut body: Option<transfer::BlobBody> = None;
    let mut blamed = Vec::new();
    let mut done = false;
    for _ in 0..10_000 {
        let mut next = Vec::new();
        for a in actions.drain(..) {
            match a {
                Action::AskTracker { dropped } => {
                    if let Some(x) = dropped {
                        blamed.push((x, t.frontier()));
                    }
                    let url = tracker.pop().expect("the tracker has a source left");
                    next.extend(t.assigned(Source::Node(url), Instant::now()));
                }
                Action::Fetch { source, from } => {
                    let Source::Node(url) = source else {
                        panic!("only peers here: {source:?}")
                    };
                    kept.truncate(from as usize);
                    body = Some(transfer::fetch(&c, &url, &d, from, proof()).await.unwrap());
                }
                Action::Verified { upto } => {
                    assert!(upto >= verified);
                    verified = upto;
                    assert!(
                        kept[..upto as usize] == bytes[..upto as usize],
                        "verified bytes are right"
                    );
                }
                Action::CheckDigest => {
                    let ok = Digest::of(&kept) == d;
                    next.extend(t.digest_checked(ok, Instant::now()));
                }
                Action::Done => done = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        if done {
            break;
        }
        if !next.is_empty() {
            actions = next;
            continue;
        }
        let b = body.as_mut().expect("a body to read");
        match b.next().await {
            Event::Bytes(chunk) => {
                kept.extend_from_slice(&chunk);
                actions = t.bytes(&chunk, &tab, Instant::now());
            }
            other => panic!("the body ended with {other:?}"),
        }
    }
    assert!(done, "the transfer completed");
    assert_eq!(
        blamed,
        vec![((liar.url.clone(), Reason::BadPiece), 2 * MIB)]
    );
    assert!(kept == bytes);
    assert_eq!(t.frontier(), bytes.len() as u64);
}

/// One node's pull, driven the way the node's fill will drive it: the tracker called in process,
/// bytes fetched from the parent or peers over loopback, each verified prefix appended to the
/// node's file and offered to its own children through its frontier.
#[allow(clippy::too_many_arguments)]
async fn pull(
    me: NodeUrl,
    own: Served,
    parent: NodeUrl,
    tracker: Arc<Mutex<berth::swarm::tracker::Tracker>>,
    fleet: berth::swarm::node::Fleet,
    d: Digest,
    tab: PieceTable,
    from_parent: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<u8> {
    use berth::swarm::tracker::{Assignment, Report};
    let c = client();
    let size = own.size;
    let (mut t, mut actions) = Transfer::start(size, Instant::now());
    let mut kept: Vec<u8> = Vec::new();
    let mut written = 0u64;
    let mut body: Option<(transfer::BlobBody, bool)> = None;
    let to_source = |a: Assignment| match a {
        Assignment::Parent => Source::Parent,
        Assignment::Node { url, .. } => Source::Node(url),
    };
    loop {
        let now = Instant::now();
        let mut next = Vec::new();
        for a in actions.drain(..) {
            match a {
                Action::AskTracker { dropped } => {
                    let mut tr = tracker.lock().unwrap();
                    let a = match &dropped {
                        Some((url, reason)) => {
                            let r = Report {
                                have: t.frontier(),
                                complete: false,
                                dropped: Some((url, *reason)),
                            };
                            tr.report(&d, &me, r, &fleet, now).unwrap().unwrap()
                        }
                        None => tr.join(&d, &me, t.frontier(), 4, &fleet, now).unwrap(),
                    };
                    drop(tr);
                    next.extend(t.assigned(to_source(a), now));
                }
                Action::Report => {
                    let r = Report {
                        have: t.frontier(),
                        complete: false,
                        dropped: None,
                    };
                    let a = tracker.lock().unwrap().report(&d, &me, r, &fleet, now);
                    if let Some(a) = a.unwrap() {
                        next.extend(t.assigned(to_source(a), now));
                    }
                }
                Action::Fetch { source, from } => {
                    kept.truncate(from as usize);
                    let (url, is_parent) = match source {
                        Source::Parent => (parent.clone(), true),
                        Source::Node(u) | Source::Holder(u) => (u, false),
                    };
                    match transfer::fetch(&c, &url, &d, from, proof()).await {
                        Ok(b) => body = Some((b, is_parent)),
                        Err(reason) => {
                            body = None;
                            next.extend(t.failed(reason, now));
                        }
                    }
                }
                Action::Verified { upto } => {
                    // Appended, never rewritten: peers read the verified prefix meanwhile.
                    use std::io::Write as _;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&own.path)
                        .unwrap();
                    f.write_all(&kept[written as usize..upto as usize]).unwrap();
                    written = upto;
                    own.frontier.send(upto).unwrap();
                }
                Action::CheckDigest => {
                    next.extend(t.digest_checked(Digest::of(&kept) == d, now));
                }
                Action::Done => {
                    tracker
                        .lock()
                        .unwrap()
                        .hold(&d, &me, size, &fleet, now)
                        .unwrap();
                    return kept;
                }
                other => panic!("{me}: unexpected {other:?}"),
            }
        }
        if !next.is_empty() {
            actions = next;
            continue;
        }
        // The transfer's clock: a tick every 100 ms, for stalls and reports.
        let tick = tokio::time::sleep(Duration::from_millis(100));
        actions = match body.as_mut() {
            Some((b, is_parent)) => tokio::select! {
                ev = b.next() => match ev {
                    Event::Bytes(chunk) => {
                        if *is_parent {
                            let n = chunk.len() as u64;
                            from_parent.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                        }
                        kept.extend_from_slice(&chunk);
                        t.bytes(&chunk, &tab, Instant::now())
                    }
                    Event::Waiting => t.waiting(Instant::now()),
                    Event::Done => {
                        body = None;
                        Vec::new()
                    }
                    Event::Closed => t.closed(Instant::now()),
                },
                _ = tick => t.tick(Instant::now()),
            },
            None => {
                tick.await;
                t.tick(Instant::now())
            }
        };
    }
}

/// Eight nodes pull a fresh blob at once through the tracker: each ends with the right bytes,
/// and the parent sends at most two copies of the blob (its two direct slots), the rest flowing
/// node to node along the chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_pull_a_blob_sending_at_most_two_copies_out_of_the_parent() {
    let bytes = data(6 * MIB + 321, 9);
    let size = bytes.len() as u64;
    let d = Digest::of(&bytes);
    let parent = Node::start(64, Duration::from_millis(200)).await;
    let _p = parent.put(&d, &bytes, size);
    let mut nodes = Vec::new();
    for _ in 0..8 {
        nodes.push(Node::start(4, Duration::from_millis(200)).await);
    }
    let fleet = berth::swarm::node::Fleet::new(nodes.iter().map(|n| n.url.clone()));
    let tracker = Arc::new(Mutex::new(berth::swarm::tracker::Tracker::default()));
    let from_parent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tab = table(&bytes);
    let mut pulls = Vec::new();
    for n in &nodes {
        // An empty file, nothing verified yet: the node serves nothing until its first piece
        // is checked.
        let own = n.put(&d, &[], 0);
        let own = Served { size, ..own };
        n.blobs
            .lock()
            .unwrap()
            .get_mut(&transfer::path(&d))
            .unwrap()
            .1 = size;
        pulls.push(tokio::spawn(pull(
            n.url.clone(),
            own,
            parent.url.clone(),
            tracker.clone(),
            fleet.clone(),
            d.clone(),
            tab.clone(),
            from_parent.clone(),
        )));
    }
    for p in pulls {
        let got = tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("a pull ends")
            .unwrap();
        assert!(got == bytes, "a node ended with the wrong bytes");
    }
    let sent = from_parent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (size..=2 * size).contains(&sent),
        "the parent sent {sent} bytes for a blob of {size}"
    );
    assert_eq!(tracker.lock().unwrap().members(&d), 8);
}

/// A node dies mid-blob (it stops at 2 MiB and gives up, breaking the bodies it serves): the
/// nodes below it see a closed body, get a new source from the tracker, and every other node
/// still ends with the right bytes, the parent sending no more than a copy more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_mid_blob_costs_its_chain_a_new_source_not_the_pull() {
    let bytes = data(6 * MIB + 123, 10);
    let size = bytes.len() as u64;
    let d = Digest::of(&bytes);
    let parent = Node::start(64, Duration::from_millis(200)).await;
    let _p = parent.put(&d, &bytes, size);
    let victim = Node::start(4, Duration::from_millis(200)).await;
    let mut nodes = Vec::new();
    for _ in 0..7 {
        nodes.push(Node::start(4, Duration::from_millis(200)).await);
    }
    let fleet = berth::swarm::node::Fleet::new(
        nodes
            .iter()
            .map(|n| n.url.clone())
            .chain([victim.url.clone()]),
    );
    let tracker = Arc::new(Mutex::new(berth::swarm::tracker::Tracker::default()));
    // The victim is first below the parent, and never verifies past 2 MiB.
    let dying = victim.put(&d, &bytes, 2 * MIB);
    let first = tracker
        .lock()
        .unwrap()
        .join(&d, &victim.url, 0, 4, &fleet, Instant::now())
        .unwrap();
    assert_eq!(first, berth::swarm::tracker::Assignment::Parent);
    let from_parent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tab = table(&bytes);
    let mut pulls = Vec::new();
    for n in &nodes {
        let own = n.put(&d, &[], 0);
        let own = Served { size, ..own };
        n.blobs
            .lock()
            .unwrap()
            .get_mut(&transfer::path(&d))
            .unwrap()
            .1 = size;
        pulls.push(tokio::spawn(pull(
            n.url.clone(),
            own,
            parent.url.clone(),
            tracker.clone(),
            fleet.clone(),
            d.clone(),
            tab.clone(),
            from_parent.clone(),
        )));
    }
    // Once every node has joined (so some hang below the victim), it dies.
    let joined = eventually(|| {
        let tracker = tracker.clone();
        let d = d.clone();
        async move { tracker.lock().unwrap().members(&d) == 8 }
    })
    .await;
    assert!(joined, "the nodes never joined");
    drop(dying.frontier);
    for p in pulls {
        let got = tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("a pull ends")
            .unwrap();
        assert!(got == bytes, "a node ended with the wrong bytes");
    }
    let sent = from_parent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent <= 3 * size,
        "the parent sent {sent} bytes for a blob of {size}"
    );
}
