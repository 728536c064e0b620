//! A fleet node's blob fills from the swarm (`[fleet] parent`), and the node's side of serving
//! other nodes: the I/O around the pure [`swarm`](crate::swarm) core.
//!
//! # A node's fill
//! [`Swarm::open`] is the fill's source on a node (the job asks it after the bucket and the
//! cluster's owner, before the upstream). It asks the tracker on the parent for a source
//! (`POST /_berth/fleet/v1/swarm/<digest>`, a [`SwarmRequest`], answered a [`SwarmAnswer`] whose
//! size and piece size the fill takes as the blob's), and the parent's ordinary blob route,
//! with `HEAD`, whether this upstream and repository may have the blob (the tracker answers
//! for a digest, whoever asks: without this, a client that knows a digest could get from peers
//! what the parent's access policy or origin check refuses it; a refusal or another size, and
//! the fill asks the parent itself, as any miss). Then it spawns a driver that runs a
//! [`Transfer`] as `tests/it/swarm.rs`'s `pull` does:
//! - `AskTracker`/`Report`: the same route, with the node's frontier and the source it dropped;
//! - `NeedHashes`: `GET /_berth/fleet/v1/pieces/<digest>?from=K` (404: not yet, asked again a
//!   tick later), run beside the body so that reading never waits for it;
//! - `Fetch` from the parent: the node's ordinary upstream request for the blob with
//!   `Range: bytes=<from>-` ([`Upstream::send`]: the login and `?ns=` apply, and it is what
//!   starts the parent's own fill); from a node: `swarm::transfer::fetch`, fleet-signed;
//! - `Verified{upto}`: the bytes up to `upto` go to the fill, in order. **Only verified bytes
//!   reach the fill**, so everything in the node's pending file may be served to other nodes;
//! - `CheckDigest`: the driver ends the body, and the fill's own whole-digest check (unchanged)
//!   answers it: the driver waits for the fill's verdict (`Verified`/`Committed` or `Failed`),
//!   so the digest is hashed once, by the fill, and the tracker hears "complete" only once the
//!   blob is verified;
//! - `Done`: the tracker is told the node holds the blob.
//!
//! The rule the fallbacks keep: **nothing any peer or the tracker does can fail a pull the
//! parent could serve.** The tracker unreachable, refusing, or answering garbage at the start:
//! the node asks the parent for the blob (which starts the parent's fill and gives the size),
//! asks the tracker once more, and without an answer takes every byte from the parent (still
//! through the driver, so its children can read its verified bytes). The tracker failing later,
//! or the pieces route missing for [`MAX_HASH_MISSES`] ticks: the parent, from the frontier. Too
//! many failed sources: the parent (`select`'s rule). The driver giving up in any other way (the
//! parent failing repeatedly; the directory route of a parent that is down is not built yet):
//! the body breaks off, and the job resumes it from the upstream (the parent) with `Range`, as
//! it resumes any broken body; a parent that is down fails the fill as it does today.
//!
//! # Serving other nodes
//! [`Swarm::serve`] answers `GET /_berth/fleet/v1/blobs/<digest>` ([`serve`]): a fill running
//! on this node up to what it has written, or a committed blob. A peer can ask for any digest
//! the node holds, through whichever upstream it came: the fleet's secret is the trust boundary,
//! and a digest is only known from a manifest the parent served.
//!
//! Timings: the driver's clock ticks every [`TICK`] (stalls, reports); a call to the tracker or
//! the pieces route gets [`CALL_TIMEOUT`] whole, a peer [`select::STALL`] to answer its headers.
//!
//! Rule of dependency: uses `swarm` (the core), `fleet` (the proof, the paths, the node's
//! metrics), `config` (the table), `store` (the fill's states, the committed blob), `upstream`
//! (the parent's blob route and its `Range` rule), `oci`, `error`. The job and `source` use it;
//! it imports neither (the job hands it what it needs), nor the mirror or `http`. Its child
//! [`serve`] imports nothing of this file.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{mpsc, watch};
use url::Url;

mod serve;

use serve::Serving;

use crate::config::FleetConfig;
use crate::error::Error;
use crate::fleet::{Fleet, PIECES_PATH, SWARM_PATH};
use crate::oci::{Digest, RepoName};
use crate::store::{FillState, Store};
use crate::swarm::node::{Fleet as Nodes, NodeUrl};
use crate::swarm::pieces::{Layout, PieceTable};
use crate::swarm::protocol::{MAX_PIECES_BODY, MAX_SMALL_BODY, Pieces, SwarmAnswer, SwarmRequest};
use crate::swarm::select::{self, Action, Source, Transfer};
use crate::swarm::tracker::{Assignment, Reason};
use crate::swarm::transfer::{self, BlobBody, Event, ServeBody, Uploads, WAIT_TICK};
use crate::upstream::{
    NotFoundKind, Upstream, UpstreamResponse, blob_request, content_length, continuation,
};

/// The driver's clock: stalls are seen and reports sent at this grain.
pub const TICK: Duration = Duration::from_millis(100);
/// One call to the tracker or the pieces route, whole (the parent may hold a pieces call about
/// a second for new hashes).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pieces calls in a row that brought nothing (404, an error, garbage), a tick apart, before the
/// node leaves its peer for the parent: about three seconds of a table that does not come.
pub const MAX_HASH_MISSES: u32 = 30;
/// How long a `peers_dns` lookup is used before it is made again.
const MEMBERS_TTL: Duration = Duration::from_secs(30);
/// Verified chunks queued for the fill (each at most a read's worth).
const QUEUE: usize = 32;

type Conn = HttpsConnector<HttpConnector>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The fleet's node set: `[fleet] peers`, or `peers_dns` looked up again every [`MEMBERS_TTL`].
enum Members {
    Fixed(Nodes),
    Dns {
        name: String,
        scheme: String,
        port: u16,
        cached: Mutex<Option<(Instant, Nodes)>>,
    },
}

impl Members {
    async fn current(&self) -> Nodes {
        let (name, scheme, port, cached) = match self {
            Members::Fixed(n) => return n.clone(),
            Members::Dns {
                name,
                scheme,
                port,
                cached,
            } => (name, scheme, *port, cached),
        };
        if let Some((at, n)) = &*cached.lock().unwrap()
            && at.elapsed() < MEMBERS_TTL
        {
            return n.clone();
        }
        let found = match tokio::net::lookup_host((name.as_str(), port)).await {
            Ok(addrs) => {
                Nodes::new(addrs.filter_map(|a| format!("{scheme}://{a}").parse::<NodeUrl>().ok()))
            }
            Err(e) => {
                tracing::warn!(peers_dns = %name, error = %e, "fleet: the node set could not be looked up; using the last one");
                let last = cached.lock().unwrap().as_ref().map(|(_, n)| n.clone());
                return last.unwrap_or_default();
            }
        };
        *cached.lock().unwrap() = Some((Instant::now(), found.clone()));
        found
    }
}

/// A node's swarm: its identity, the parent, the node set, its clients and upload slots, and
/// the fills running on it (served to other nodes).
pub struct Swarm {
    fleet: Arc<Fleet>,
    me: NodeUrl,
    parent: Url,
    members: Members,
    get: Client<Conn, Empty<Bytes>>,
    post: Client<Conn, Full<Bytes>>,
    max_uploads: u32,
    serving: Serving,
}

impl Swarm {
    /// A node's swarm from its validated `[fleet]` table; `None` on a parent.
    pub fn new(
        cfg: &FleetConfig,
        fleet: Arc<Fleet>,
        store: Arc<Store>,
    ) -> Result<Option<Swarm>, String> {
        let Some(parent) = cfg.parent.clone() else {
            return Ok(None);
        };
        let me_url = cfg.self_url.as_ref().ok_or("a node needs fleet.self")?;
        let me = NodeUrl::from_url(me_url)?;
        let members = match (&cfg.peers, &cfg.peers_dns) {
            (Some(peers), _) => Members::Fixed(Nodes::new(
                peers
                    .iter()
                    .map(NodeUrl::from_url)
                    .collect::<Result<Vec<_>, _>>()?,
            )),
            (None, Some(name)) => Members::Dns {
                name: name.clone(),
                scheme: me_url.scheme().to_owned(),
                port: me_url.port_or_known_default().unwrap_or(80),
                cached: Mutex::new(None),
            },
            (None, None) => return Err("a node needs fleet.peers or fleet.peers_dns".into()),
        };
        let https = crate::upstream::connect::https_connector(cfg.ca_file.as_deref())?;
        let build = || {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .clone()
        };
        Ok(Some(Swarm {
            me,
            parent,
            members,
            get: build().build(https.clone()),
            post: build().build(https),
            max_uploads: cfg.max_uploads,
            serving: Serving::new(
                Uploads::new(cfg.max_uploads as usize, WAIT_TICK),
                store,
                fleet.metrics().served.clone(),
            ),
            fleet,
        }))
    }

    /// Answers another node's (authenticated) request for `digest` from `range` on
    /// ([`serve::Serving::serve`]).
    pub async fn serve(&self, range: Option<&HeaderValue>, digest: &Digest) -> Response<ServeBody> {
        self.serving.serve(range, digest).await
    }

    /// The fill's body from the swarm, and the blob's size; `None` when the node could learn
    /// the size from neither the tracker nor the parent (the fill then asks the upstream itself,
    /// and gets the parent's answer as any miss does).
    pub(crate) async fn open(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
        fill: &watch::Receiver<FillState>,
    ) -> Option<(SwarmBody, u64)> {
        self.serving.register(digest, fill);
        let nodes = self.members.current().await;
        let join = self.request(0, None);
        let (layout, first, early) = match self.ask(digest, &join, &nodes).await {
            Ok(a) => (a.layout, a.source, None),
            Err(e) => {
                tracing::info!(digest = %digest, error = %e, "fleet: no swarm for this blob yet; asking the parent for it");
                let resp = parent_get(up, name, digest, 0).await.ok()?;
                let size =
                    content_length(&resp.headers).filter(|_| resp.status == StatusCode::OK)?;
                // The parent's fill runs now: the tracker may know the blob.
                match self.ask(digest, &join, &nodes).await {
                    Ok(a) if a.layout.size() == size => (a.layout, a.source, Some(resp)),
                    _ => (Layout::new(size), None, Some(resp)),
                }
            }
        };
        if early.is_none() {
            // The tracker answers for a digest, whoever asks; whether this upstream and
            // repository may have it is the parent's to say (its access policy, its origin
            // check), as it would for an ordinary miss. A refusal, or another size: the fill
            // asks the parent itself and gets its answer.
            let head = up
                .send(blob_request(Method::HEAD, name, digest))
                .await
                .ok()?
                .error_for_status(NotFoundKind::Blob)
                .await
                .ok()?;
            if content_length(&head.headers) != Some(layout.size()) {
                return None;
            }
        }
        let now = Instant::now();
        let (mut t, _) = Transfer::start(layout.size(), now);
        let actions = match first {
            Some(a) => t.assigned(to_source(a), now),
            None => t.tracker_unreachable(now),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let driver = Driver {
            swarm: self.clone(),
            up: up.clone(),
            name: name.clone(),
            digest: digest.clone(),
            nodes,
            fill: fill.clone(),
            table: PieceTable::new(layout),
            t,
            out: Some(tx),
            yielded: 0,
            buf: VecDeque::new(),
            early,
            misses: 0,
        };
        let task = tokio::spawn(driver.run(actions));
        Some((
            SwarmBody {
                rx,
                task,
                ended: false,
            },
            layout.size(),
        ))
    }

    fn request(&self, have: u64, dropped: Option<(NodeUrl, Reason)>) -> SwarmRequest {
        SwarmRequest {
            node: self.me.clone(),
            have,
            complete: false,
            need_source: true,
            uploads: Some(self.max_uploads),
            dropped,
        }
    }

    /// `POST /_berth/fleet/v1/swarm/<digest>`, fleet-signed, within [`CALL_TIMEOUT`].
    async fn ask(
        &self,
        digest: &Digest,
        req: &SwarmRequest,
        nodes: &Nodes,
    ) -> Result<SwarmAnswer, String> {
        let path = format!("{SWARM_PATH}{digest}");
        let url = self.parent.join(&path).map_err(|e| e.to_string())?;
        let r = Request::post(url.as_str())
            .header(header::AUTHORIZATION, self.fleet.sign("POST", &path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(req.encode())))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.post.request(r).await.map_err(|e| e.to_string())?;
            if resp.status() != StatusCode::OK {
                return Err(format!("the tracker answered {}", resp.status()));
            }
            let body = read(resp, MAX_SMALL_BODY).await?;
            SwarmAnswer::parse(&body, nodes, &self.me).map_err(|e| e.to_string())
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| format!("no answer from the tracker within {CALL_TIMEOUT:?}"))?
    }

    /// `GET /_berth/fleet/v1/pieces/<digest>?from=K`, fleet-signed; a miss waits a tick before
    /// it is told, so that asking again is no busy loop.
    fn pieces(
        self: &Arc<Self>,
        digest: &Digest,
        from: u32,
        size: u64,
    ) -> BoxFuture<Option<Pieces>> {
        let path = format!("{PIECES_PATH}{digest}?from={from}");
        let this = self.clone();
        Box::pin(async move {
            let call = async {
                let url = this.parent.join(&path).ok()?;
                let r = Request::get(url.as_str())
                    .header(header::AUTHORIZATION, this.fleet.sign("GET", &path))
                    .body(Empty::new())
                    .ok()?;
                let resp = this.get.request(r).await.ok()?;
                if resp.status() != StatusCode::OK {
                    return None;
                }
                let body = read(resp, MAX_PIECES_BODY).await.ok()?;
                Pieces::parse(&body, size).ok()
            };
            let got = tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .ok()
                .flatten();
            if got.is_none() {
                tokio::time::sleep(TICK).await;
            }
            got
        })
    }
}

async fn read(resp: Response<hyper::body::Incoming>, limit: usize) -> Result<Bytes, String> {
    Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("the body: {e}"))
}

/// The parent's blob route, from byte `from` on (`Range` when past 0), through the upstream.
async fn parent_get(
    up: &Upstream,
    name: &RepoName,
    digest: &Digest,
    from: u64,
) -> Result<UpstreamResponse, Error> {
    let mut req = blob_request(Method::GET, name, digest);
    if from > 0
        && let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-"))
    {
        req.headers.insert(header::RANGE, v);
    }
    up.send(req)
        .await?
        .error_for_status(NotFoundKind::Blob)
        .await
}

fn to_source(a: Assignment) -> Source {
    match a {
        Assignment::Parent => Source::Parent,
        Assignment::Node { url, .. } => Source::Node(url),
    }
}

/// The fill's body from the swarm: verified chunks, in order, from the driver's task. Dropped
/// before its end (the fill failed or went away), it stops the driver; after its end, the
/// driver lives on to hear the fill's verdict and tell the tracker.
pub(crate) struct SwarmBody {
    rx: mpsc::Receiver<Result<Bytes, Error>>,
    task: tokio::task::JoinHandle<()>,
    ended: bool,
}

impl Drop for SwarmBody {
    fn drop(&mut self) {
        if !self.ended {
            self.task.abort();
        }
    }
}

impl SwarmBody {
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        let next = self.rx.recv().await.transpose();
        self.ended = matches!(next, Ok(None));
        next
    }
}

/// Where the driver's current bytes come from.
enum Incoming {
    Parent { resp: UpstreamResponse, skip: u64 },
    Peer(BlobBody),
}

/// What a body did.
enum Ev {
    Bytes(Bytes, bool),
    Waiting,
    End,
    Closed,
}

impl Incoming {
    async fn next(&mut self) -> Ev {
        match self {
            Incoming::Parent { resp, skip } => loop {
                match resp.body.next_chunk().await {
                    Ok(Some(mut c)) => {
                        let n = (*skip).min(c.len() as u64);
                        *skip -= n;
                        c = c.slice(n as usize..);
                        if !c.is_empty() {
                            return Ev::Bytes(c, true);
                        }
                    }
                    Ok(None) => return Ev::End,
                    Err(_) => return Ev::Closed,
                }
            },
            Incoming::Peer(b) => match b.next().await {
                Event::Bytes(c) => Ev::Bytes(c, false),
                Event::Waiting => Ev::Waiting,
                Event::Done => Ev::End,
                Event::Closed => Ev::Closed,
            },
        }
    }
}

/// One node's transfer of one blob into its fill.
struct Driver {
    swarm: Arc<Swarm>,
    up: Arc<Upstream>,
    name: RepoName,
    digest: Digest,
    nodes: Nodes,
    fill: watch::Receiver<FillState>,
    table: PieceTable,
    t: Transfer,
    /// To the fill; dropped (the body's end) once every byte is verified.
    out: Option<mpsc::Sender<Result<Bytes, Error>>>,
    /// Bytes given to the fill: the transfer's frontier.
    yielded: u64,
    /// Bytes received past `yielded`, not verified yet.
    buf: VecDeque<Bytes>,
    /// The parent's answer from byte 0, asked before the transfer started.
    early: Option<UpstreamResponse>,
    /// Pieces calls in a row that brought nothing.
    misses: u32,
}

/// How the driver ended.
struct Ended;

/// The calls to the parent that run beside the body: the piece table, a progress report.
#[derive(Default)]
struct Calls {
    hashes: Option<BoxFuture<Option<Pieces>>>,
    report: Option<BoxFuture<Option<SwarmAnswer>>>,
}

impl Driver {
    async fn run(mut self, mut actions: Vec<Action>) {
        let mut body: Option<Incoming> = None;
        let mut calls = Calls::default();
        let mut ticked = tokio::time::Instant::now();
        loop {
            let mut queue: VecDeque<Action> = actions.drain(..).collect();
            let mut opened = false;
            while let Some(a) = queue.pop_front() {
                opened |= matches!(a, Action::Fetch { .. } | Action::AskTracker { .. });
                match self.act(a, &mut body, &mut calls).await {
                    Ok(more) => queue.extend(more),
                    Err(Ended) => return,
                }
            }
            if opened {
                // A source just opened (or the tracker just asked) starts the clock again: a
                // tick is due a whole TICK later, so its first bytes are read first.
                ticked = tokio::time::Instant::now();
            }
            let now = Instant::now;
            // Biased: bytes first (each one is news from the source), the clock last, and the
            // clock is read after every event, so a busy body cannot starve it.
            actions = tokio::select! {
                biased;
                ev = async { body.as_mut().expect("guarded").next().await }, if body.is_some() => {
                    match ev {
                        Ev::Bytes(c, from_parent) => {
                            let label = if from_parent { "parent" } else { "peer" };
                            self.swarm.fleet.metrics().bytes.with_label_values(&[label]).inc_by(c.len() as u64);
                            self.buf.push_back(c.clone());
                            let before = self.t.source().cloned();
                            let out = self.t.bytes(&c, &self.table, now());
                            self.dropped(before, Reason::BadPiece, out)
                        }
                        Ev::Waiting => {
                            body = None;
                            self.t.waiting(now())
                        }
                        Ev::End if self.t.received() >= self.t.layout().size() => {
                            body = None;
                            Vec::new()
                        }
                        Ev::End | Ev::Closed => {
                            body = None;
                            let before = self.t.source().cloned();
                            let out = self.t.closed(now());
                            self.dropped(before, Reason::Closed, out)
                        }
                    }
                }
                got = async { calls.hashes.as_mut().expect("guarded").await }, if calls.hashes.is_some() => {
                    calls.hashes = None;
                    match got.filter(|p| self.table.extend(p.first, &p.hashes).is_ok()) {
                        Some(_) => self.misses = 0,
                        None => self.misses += 1,
                    }
                    if self.misses >= MAX_HASH_MISSES {
                        tracing::warn!(digest = %self.digest, "fleet: the parent's piece table does not come; taking the blob from the parent");
                        self.misses = 0;
                        body = None;
                        self.t.tracker_unreachable(now())
                    } else {
                        let before = self.t.source().cloned();
                        let out = self.t.hashes(&self.table, now());
                        self.dropped(before, Reason::BadPiece, out)
                    }
                }
                got = async { calls.report.as_mut().expect("guarded").await }, if calls.report.is_some() => {
                    calls.report = None;
                    match got {
                        Some(SwarmAnswer { layout, source: Some(s) }) if layout == self.t.layout() => {
                            body = None;
                            self.t.assigned(to_source(s), now())
                        }
                        // A report is best effort: the source stays.
                        _ => Vec::new(),
                    }
                }
                _ = tokio::time::sleep_until(ticked + TICK) => Vec::new(),
            };
            if actions.is_empty() && ticked.elapsed() >= TICK {
                ticked = tokio::time::Instant::now();
                let before = self.t.source().cloned();
                let out = self.t.tick(now());
                actions = self.dropped(before, Reason::Stall, out);
            }
        }
    }

    /// Counts a source this event made the transfer leave (a node, not the parent), by the
    /// reason the transfer tells the tracker, else `reason`.
    fn dropped(&self, before: Option<Source>, reason: Reason, out: Vec<Action>) -> Vec<Action> {
        let was_peer = matches!(before, Some(Source::Node(_) | Source::Holder(_)));
        if was_peer && self.t.source() != before.as_ref() {
            let told = out.iter().find_map(|a| match a {
                Action::AskTracker {
                    dropped: Some((_, r)),
                } => Some(*r),
                _ => None,
            });
            let r = told.unwrap_or(reason);
            let m = self.swarm.fleet.metrics();
            m.peers_dropped.with_label_values(&[r.as_str()]).inc();
            if r == Reason::BadPiece {
                m.pieces_rejected.inc();
            }
        }
        out
    }

    async fn act(
        &mut self,
        a: Action,
        body: &mut Option<Incoming>,
        calls: &mut Calls,
    ) -> Result<Vec<Action>, Ended> {
        let now = Instant::now();
        Ok(match a {
            Action::AskTracker { dropped } => {
                let req = self.swarm.request(self.t.frontier(), dropped);
                match self.swarm.ask(&self.digest, &req, &self.nodes).await {
                    Ok(SwarmAnswer {
                        layout,
                        source: Some(s),
                    }) if layout == self.t.layout() => self.t.assigned(to_source(s), now),
                    Ok(_) | Err(_) => self.t.tracker_unreachable(now),
                }
            }
            Action::Report => {
                if calls.report.is_none() {
                    let mut req = self.swarm.request(self.t.frontier(), None);
                    req.need_source = false;
                    let (swarm, digest, nodes) =
                        (self.swarm.clone(), self.digest.clone(), self.nodes.clone());
                    calls.report = Some(Box::pin(async move {
                        swarm.ask(&digest, &req, &nodes).await.ok()
                    }));
                }
                Vec::new()
            }
            Action::Fetch { source, from } => {
                *body = None;
                keep(&mut self.buf, from.saturating_sub(self.yielded));
                match self.fetch(&source, from).await {
                    Ok(b) => {
                        *body = Some(b);
                        Vec::new()
                    }
                    Err(reason) => {
                        let before = self.t.source().cloned();
                        let out = self.t.failed(reason, now);
                        self.dropped(before, reason, out)
                    }
                }
            }
            Action::Verified { upto } => {
                let chunks = take(&mut self.buf, upto.saturating_sub(self.yielded));
                self.yielded = self.yielded.max(upto);
                for c in chunks {
                    let out = self.out.as_ref().ok_or(Ended)?;
                    out.send(Ok(c)).await.map_err(|_| Ended)?;
                }
                Vec::new()
            }
            Action::NeedHashes { .. } => {
                if calls.hashes.is_none() {
                    let size = self.t.layout().size();
                    calls.hashes = Some(self.swarm.pieces(&self.digest, self.table.known(), size));
                }
                Vec::new()
            }
            Action::CheckDigest => {
                // The body ends here; the fill checks the whole digest and says how it went.
                self.out = None;
                let verdict = self
                    .fill
                    .wait_for(|s| {
                        matches!(
                            s,
                            FillState::Verified(_) | FillState::Committed(_) | FillState::Failed(_)
                        )
                    })
                    .await
                    .map(|s| !matches!(*s, FillState::Failed(_)))
                    .unwrap_or(false);
                self.t.digest_checked(verdict, Instant::now())
            }
            Action::Done => {
                let mut req = self.swarm.request(self.t.layout().size(), None);
                (req.complete, req.need_source) = (true, false);
                if let Err(e) = self.swarm.ask(&self.digest, &req, &self.nodes).await {
                    tracing::info!(digest = %self.digest, error = %e, "fleet: the tracker did not hear this node holds the blob");
                }
                return Err(Ended);
            }
            // The parent failed as often as the transfer allows, and there is no directory
            // route yet: the body breaks off, and the fill resumes it from the parent.
            Action::AskDirectory | Action::Fail => {
                if let Some(out) = self.out.take() {
                    let e = Error::upstream_unavailable(
                        self.up.name(),
                        format!("the fleet's swarm gave blob {} up", self.digest),
                    );
                    let _ = out.send(Err(e)).await;
                }
                return Err(Ended);
            }
        })
    }

    /// Opens `source` from byte `from` on.
    async fn fetch(&mut self, source: &Source, from: u64) -> Result<Incoming, Reason> {
        let size = self.t.layout().size();
        // The parent's early answer is for the first fetch only, and only from byte 0: left
        // open, it would hold bytes in flight from the parent for nothing.
        let early = self.early.take();
        match source {
            Source::Parent => {
                let early = early.filter(|_| from == 0);
                let resp = match early {
                    Some(r) => r,
                    None => parent_get(&self.up, &self.name, &self.digest, from)
                        .await
                        .map_err(|_| Reason::Unreachable)?,
                };
                let skip = continuation(resp.status, &resp.headers, from, Some(size))
                    .map_err(|_| Reason::Unreachable)?;
                Ok(Incoming::Parent { resp, skip })
            }
            Source::Node(url) | Source::Holder(url) => {
                let proof = self.swarm.fleet.sign("GET", &transfer::path(&self.digest));
                let call = transfer::fetch(&self.swarm.get, url, &self.digest, from, proof);
                match tokio::time::timeout(select::STALL, call).await {
                    Ok(Ok(b)) if b.size() == size => Ok(Incoming::Peer(b)),
                    Ok(Ok(_)) => Err(Reason::BadPiece),
                    Ok(Err(r)) => Err(r),
                    Err(_) => Err(Reason::Stall),
                }
            }
        }
    }
}

/// Keeps the first `n` bytes of `buf`.
fn keep(buf: &mut VecDeque<Bytes>, n: u64) {
    let mut left = n;
    let mut kept = VecDeque::new();
    for c in buf.drain(..) {
        if left == 0 {
            break;
        }
        let k = left.min(c.len() as u64);
        kept.push_back(c.slice(..k as usize));
        left -= k;
    }
    *buf = kept;
}

/// Takes the first `n` bytes off `buf` (fewer if it has fewer).
fn take(buf: &mut VecDeque<Bytes>, n: u64) -> Vec<Bytes> {
    let mut left = n;
    let mut out = Vec::new();
    while left > 0 {
        let Some(mut c) = buf.pop_front() else { break };
        if c.len() as u64 > left {
            buf.push_front(c.split_off(left as usize));
        }
        left -= c.len() as u64;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(parts: &[&'static [u8]]) -> VecDeque<Bytes> {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    fn flat(b: impl IntoIterator<Item = Bytes>) -> Vec<u8> {
        b.into_iter().flat_map(|c| c.to_vec()).collect()
    }

    fn dns(name: &str) -> Members {
        Members::Dns {
            name: name.into(),
            scheme: "http".into(),
            port: 5000,
            cached: Mutex::new(None),
        }
    }

    /// `peers_dns`: every address of the name, on the port and scheme of `self`; a lookup that
    /// fails keeps the last set (none yet: empty, and the tracker's answers naming nodes are
    /// refused, so the pull goes to the parent).
    #[tokio::test]
    async fn a_dns_node_set_is_every_address_on_the_port_of_self() {
        let m = dns("localhost");
        let n = m.current().await;
        assert!(
            n.contains(&"http://127.0.0.1:5000".parse().unwrap()),
            "{n:?}"
        );
        assert!(n.iter().all(|u| u.as_str().ends_with(":5000")), "{n:?}");
        let bad = dns("no-such-node.invalid");
        assert!(bad.current().await.is_empty());
        if let Members::Dns { cached, .. } = &bad {
            *cached.lock().unwrap() = Some((Instant::now() - MEMBERS_TTL, n.clone()));
        }
        assert_eq!(bad.current().await, n, "the last set is kept");
    }

    #[test]
    fn verified_bytes_leave_in_order_and_a_resume_cuts_the_rest() {
        let mut b = buf(&[b"abc", b"defg", b"h"]);
        assert_eq!(flat(take(&mut b, 0)), b"");
        assert_eq!(flat(take(&mut b, 2)), b"ab");
        assert_eq!(flat(take(&mut b, 3)), b"cde");
        assert_eq!(flat(b.clone()), b"fgh");
        keep(&mut b, 2);
        assert_eq!(flat(b.clone()), b"fg");
        keep(&mut b, 5);
        assert_eq!(
            flat(b.clone()),
            b"fg",
            "keeping more than there is keeps it all"
        );
        assert_eq!(flat(take(&mut b, 9)), b"fg");
        assert!(b.is_empty());
        keep(&mut b, 0);
        assert!(b.is_empty());
        let mut b = buf(&[b"xyz"]);
        keep(&mut b, 0);
        assert!(
            b.is_empty(),
            "a resume at the frontier drops every unverified byte"
        );
    }
}
