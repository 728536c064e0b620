//! The driver of one node's transfer into its fill: runs a `swarm::select::Transfer` (the
//! parent module's docs say how each action is met), yields only verified bytes to the fill,
//! in order, and ends the body once every byte is verified, to hear the fill's verdict.
//!
//! A holder the directory named (the parent cannot be reached) has no piece table to be checked
//! against: its bytes go to a `spool::Spool` (an unnamed file in the store's temp directory, hashed as
//! it is written), and only once the whole digest checks are they given to the fill, which
//! checks it again as it checks every body. When the parent fails mid-blob, the holders send the
//! rest, from the frontier, and the spool's hash starts from the hash of the bytes the fill
//! already has (read back from its file). A holder whose bytes do not check is dropped (and
//! tried last for a while, `holders::LIAR_MEMORY`) and the next one asked from the same byte:
//! the fill has had nothing of it. The cost: the blob's bytes are written twice and hashed twice on this
//! route, and the node's client has no byte before the whole blob has arrived; the route serves
//! only while the parent is down, where the alternative is no blob at all.
//!
//! Rule of dependency: uses its siblings `link` (the parent's routes), `holders` (the
//! directory) and `spool`, `swarm` (the core and `transfer::fetch`), `store` (the fill's states),
//! `upstream` (the `Range` rule), `oci`, `error`, sha2; nothing of its parent.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use bytes::Bytes;
use http::Method;
use tokio::sync::{mpsc, watch};

use super::holders::Directory;
use super::link::{BoxFuture, CALL_TIMEOUT, Link, TICK, parent_blob};
use super::spool::Spool;
use crate::error::Error;
use crate::oci::{Digest, RepoName};
use crate::store::FillState;
use crate::swarm::node::{Fleet as Nodes, NodeUrl};
use crate::swarm::pieces::{Layout, PieceTable};
use crate::swarm::protocol::{Pieces, SwarmAnswer};
use crate::swarm::select::{self, Action, Route, Source, Transfer};
use crate::swarm::tracker::{Assignment, Reason};
use crate::swarm::transfer::{self, BlobBody, Event};
use crate::upstream::{Upstream, UpstreamResponse, continuation};

/// Pieces calls in a row that brought nothing (404, an error, garbage), a tick apart, before the
/// node leaves its peer for the parent: about three seconds of a table that does not come.
pub const MAX_HASH_MISSES: u32 = 30;
/// Pieces calls in a row that brought nothing before the node reports to the tracker (and again
/// after as many): a table that does not come may mean that the head of this node's chain never
/// fetched from the parent (so the parent fills nothing), which the tracker sees a
/// `tracker::FETCH_GRACE` after it named it, and answers with a new source; about a second,
/// where the misses alone leave the peer after three.
pub const REPORT_MISSES: u32 = 10;
/// Verified chunks queued for the fill (each at most a read's worth).
const QUEUE: usize = 32;
/// Most bytes from a peer held unverified (their piece's hash not known yet) before the driver
/// stops reading that peer until the table catches up: so a node's memory stays bounded
/// whatever a peer sends ahead of the parent's table. An honest peer is never far ahead (it
/// forwards only bytes it checked against the same table: the lag is this node's table poll);
/// a peer that is, stops being heard, and after `select::STALL` it is left for another source.
/// At least two pieces, so a piece is always whole before the reading stops.
pub const MAX_UNVERIFIED: u64 = 16 << 20;

/// How long a node waits before it asks the directory again after every holder was busy.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a transfer starts from: the blob, its layout, the tracker's first answer (`None`: the
/// tracker did not answer, so the parent), or the directory's holders (the parent cannot be
/// reached: `first` is not used).
pub struct Start {
    pub link: Arc<Link>,
    pub up: Arc<Upstream>,
    pub name: RepoName,
    pub digest: Digest,
    pub nodes: Nodes,
    pub fill: watch::Receiver<FillState>,
    pub layout: Layout,
    pub first: Option<Assignment>,
    pub holders: Option<Vec<NodeUrl>>,
    pub directory: Arc<Directory>,
    /// Where a holder's bytes are spooled.
    pub spool_dir: PathBuf,
}

/// Spawns the driver; its verified bytes are the body.
pub fn spawn(s: Start) -> SwarmBody {
    let now = Instant::now();
    let (mut t, _) = Transfer::start(s.layout.size(), now);
    let actions = match (s.holders, s.first) {
        (Some(holders), _) => {
            t.parent_unreachable();
            t.holders(holders, now)
        }
        (None, Some(a)) => t.assigned(to_source(a), now),
        (None, None) => t.tracker_unreachable(now),
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let driver = Driver {
        link: s.link,
        up: s.up,
        name: s.name,
        digest: s.digest,
        nodes: s.nodes,
        fill: s.fill,
        table: PieceTable::new(s.layout),
        t,
        out: Some(tx),
        yielded: 0,
        buf: VecDeque::new(),
        misses: 0,
        directory: s.directory,
        spool_dir: s.spool_dir,
        spool: None,
    };
    let task = tokio::spawn(driver.run(actions));
    SwarmBody {
        rx,
        task,
        ended: false,
        size: s.layout.size(),
        given: 0,
    }
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
    size: u64,
    /// Bytes given to the fill so far.
    given: u64,
}

impl Drop for SwarmBody {
    fn drop(&mut self) {
        if !self.ended {
            self.task.abort();
        }
    }
}

impl SwarmBody {
    /// The next verified chunk. The driver's end short of the blob's size is a break, never an
    /// end: the fill then resumes from the upstream (the parent) at the byte it has, as for any
    /// body that breaks off, instead of failing its digest check on a short blob.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        let next = self.rx.recv().await.transpose();
        match &next {
            Ok(Some(c)) => self.given += c.len() as u64,
            Ok(None) if self.given < self.size => {
                return Err(Error::upstream_unavailable(
                    "fleet swarm",
                    format!(
                        "the swarm's body ended at byte {} of {}",
                        self.given, self.size
                    ),
                ));
            }
            _ => {}
        }
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
    link: Arc<Link>,
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
    /// Pieces calls in a row that brought nothing.
    misses: u32,
    directory: Arc<Directory>,
    spool_dir: PathBuf,
    /// A holder's bytes, until the digest checks.
    spool: Option<Spool>,
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
                ev = async { body.as_mut().expect("guarded").next().await }, if body.is_some() && self.may_read() => {
                    match ev {
                        Ev::Bytes(c, from_parent) => {
                            let holder = matches!(self.t.source(), Some(Source::Holder(_)));
                            let label = match (from_parent, holder) {
                                (true, _) => "parent",
                                (false, true) => "holder",
                                (false, false) => "peer",
                            };
                            self.link.fleet.metrics().bytes.with_label_values(&[label]).inc_by(c.len() as u64);
                            let spooled = match (&mut self.spool, holder) {
                                (Some(spool), true) => spool.write(&c).await.map_err(|e| {
                                    tracing::warn!(digest = %self.digest, error = %e, "fleet: a holder's bytes could not be spooled");
                                }),
                                (None, true) => Err(()),
                                (_, false) => {
                                    self.buf.push_back(c.clone());
                                    Ok(())
                                }
                            };
                            let before = self.t.source().cloned();
                            let out = match spooled {
                                Ok(()) => self.t.bytes(&c, &self.table, now()),
                                Err(()) => self.t.failed(Reason::Unreachable, now()),
                            };
                            self.dropped(before, Reason::BadPiece, out)
                        }
                        Ev::Waiting => {
                            body = None;
                            self.t.waiting(now())
                        }
                        Ev::End if self.t.received() >= self.t.layout().size() => {
                            body = None;
                            // An empty blob has no byte to complete it: its end does.
                            if self.t.layout().size() == 0 {
                                self.t.bytes(&[], &self.table, now())
                            } else {
                                Vec::new()
                            }
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
                        let mut out = self.t.hashes(&self.table, now());
                        let report = self.misses > 0 && self.misses.is_multiple_of(REPORT_MISSES);
                        if report && self.t.route() == Route::Tracker {
                            out.push(Action::Report);
                        }
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

    /// Whether the body may be read on: fewer unverified bytes held than [`MAX_UNVERIFIED`] (or
    /// two pieces, for pieces larger than half of it).
    fn may_read(&self) -> bool {
        if matches!(self.t.source(), Some(Source::Holder(_))) {
            // A holder's bytes go to the spool, not to memory.
            return true;
        }
        let held = self.t.received().saturating_sub(self.yielded);
        held < MAX_UNVERIFIED.max(2 * self.t.layout().piece_size())
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
            let m = self.link.fleet.metrics();
            m.peers_dropped.with_label_values(&[r.as_str()]).inc();
            if r == Reason::BadPiece && matches!(before, Some(Source::Node(_))) {
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
                let req = self.link.request(self.t.frontier(), dropped);
                match self.link.ask(&self.digest, &req, &self.nodes).await {
                    Ok(SwarmAnswer {
                        layout,
                        source: Some(s),
                    }) if layout == self.t.layout() => self.t.assigned(to_source(s), now),
                    Ok(_) | Err(_) => self.t.tracker_unreachable(now),
                }
            }
            Action::Report => {
                if calls.report.is_none() {
                    let mut req = self.link.request(self.t.frontier(), None);
                    req.need_source = false;
                    let (link, digest, nodes) =
                        (self.link.clone(), self.digest.clone(), self.nodes.clone());
                    calls.report = Some(Box::pin(async move {
                        link.ask(&digest, &req, &nodes).await.ok()
                    }));
                }
                Vec::new()
            }
            Action::Fetch { source, from } => {
                *body = None;
                keep(&mut self.buf, from.saturating_sub(self.yielded));
                if matches!(source, Source::Holder(_)) && from == self.t.frontier() {
                    match &mut self.spool {
                        Some(spool) => spool.reset(),
                        None => match Spool::new(&self.spool_dir, 0, Sha256::new()) {
                            Ok(spool) => self.spool = Some(spool),
                            Err(e) => {
                                tracing::warn!(digest = %self.digest, error = %e, "fleet: no spool for a holder's bytes");
                                return Ok(vec![Action::Fail]);
                            }
                        },
                    }
                }
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
            Action::Verified { upto } if self.spool.as_ref().is_some_and(|s| s.checked) => {
                // A holder's whole blob, checked: to the fill, and the body ends.
                let spool = self.spool.take().expect("guarded");
                let out = self.out.take().ok_or(Ended)?;
                let mut at = self.yielded;
                while at < upto {
                    let c = match spool.read(at, upto - at).await {
                        Ok(c) if !c.is_empty() => c,
                        read => {
                            let e = read
                                .err()
                                .map_or("it ended early".into(), |e| e.to_string());
                            tracing::warn!(digest = %self.digest, error = %e, "fleet: the spool could not be read back");
                            return Err(Ended);
                        }
                    };
                    at += c.len() as u64;
                    out.send(Ok(c)).await.map_err(|_| Ended)?;
                }
                self.yielded = upto;
                Vec::new()
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
                    calls.hashes = Some(self.link.pieces(&self.digest, self.table.known(), size));
                }
                Vec::new()
            }
            Action::CheckDigest if matches!(self.t.source(), Some(Source::Holder(_))) => {
                // No table, so no byte of it went to the fill: the driver checks it itself.
                let size = self.t.layout().size();
                let ok = self
                    .spool
                    .as_mut()
                    .is_some_and(|s| s.check(&self.digest, size));
                let before = self.t.source().cloned();
                if !ok && let Some(Source::Holder(h)) = &before {
                    tracing::warn!(digest = %self.digest, holder = %h, "fleet: a holder sent bytes that are not the blob; dropped");
                    self.directory.lied(h);
                }
                let out = self.t.digest_checked(ok, now);
                if ok {
                    out
                } else {
                    self.dropped(before, Reason::BadPiece, out)
                }
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
            // The parent could not be reached: the directory hears of this node's blob once the
            // fill commits (`holders`), the tracker is not asked.
            Action::Done if self.t.route() == Route::Directory => return Err(Ended),
            Action::Done => {
                let mut req = self.link.request(self.t.layout().size(), None);
                (req.complete, req.need_source) = (true, false);
                if let Err(e) = self.link.ask(&self.digest, &req, &self.nodes).await {
                    tracing::info!(digest = %self.digest, error = %e, "fleet: the tracker did not hear this node holds the blob");
                }
                return Err(Ended);
            }
            // The parent failed as often as the transfer allows: its holders, if the directory
            // knows any, from the frontier on (after the hash of the bytes before it, read back
            // from the fill's file: the whole digest is what checks a holder's bytes).
            Action::AskDirectory => {
                if self.t.directory_rounds() > 0 {
                    // Every holder was busy: a moment for one to free a slot (or for another
                    // node to complete and be named).
                    tokio::time::sleep(BUSY_WAIT).await;
                } else if self.spool.is_none() {
                    let base = self.t.frontier();
                    let prefix = match base == self.yielded {
                        true => self.prefix_hash(base).await,
                        false => None,
                    };
                    let spool = match prefix {
                        Some(prefix) => {
                            Spool::new(&self.spool_dir, base, prefix).map_err(|e| e.to_string())
                        }
                        None => Err(format!(
                            "the fill's first {base} bytes could not be read back"
                        )),
                    };
                    match spool {
                        Ok(s) => self.spool = Some(s),
                        Err(e) => {
                            tracing::warn!(digest = %self.digest, error = %e, "fleet: no spool for a holder's bytes; the directory is not asked");
                            return Ok(vec![Action::Fail]);
                        }
                    }
                }
                let holders = self
                    .directory
                    .ask(&self.link, &self.digest, &self.nodes)
                    .await;
                tracing::info!(digest = %self.digest, holders = holders.len(), "fleet: the parent failed the swarm's tries; asking the directory's holders");
                self.t.holders(holders, now)
            }
            // No holder left: the body breaks off, and the fill resumes it from the parent (and
            // fails as it did before the directory, if the parent is still down).
            Action::Fail => {
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

    /// The hash of the blob's first `upto` bytes, read back from the fill's file once the fill
    /// has written them (they were given to it verified); `None` if it does not within
    /// `link::CALL_TIMEOUT`, or keeps no file (a full disk), or the file cannot be read.
    async fn prefix_hash(&mut self, upto: u64) -> Option<Sha256> {
        if upto == 0 {
            return Some(Sha256::new());
        }
        let written = self.fill.wait_for(|s| match s {
            FillState::Writing(p) => p.written >= upto || p.pass_through,
            FillState::Pending => false,
            _ => true,
        });
        let file = match &*tokio::time::timeout(CALL_TIMEOUT, written)
            .await
            .ok()?
            .ok()?
        {
            FillState::Writing(p) if !p.pass_through => p.file.clone(),
            _ => return None,
        };
        tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            let mut buf = vec![0; 1 << 20];
            let mut at = 0;
            while at < upto {
                let n = (upto - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], at).ok()?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            Some(h)
        })
        .await
        .ok()
        .flatten()
    }

    /// Opens `source` from byte `from` on.
    async fn fetch(&mut self, source: &Source, from: u64) -> Result<Incoming, Reason> {
        let size = self.t.layout().size();
        match source {
            Source::Parent => {
                let limit = self.link.parent_timeout;
                let resp =
                    parent_blob(&self.up, Method::GET, &self.name, &self.digest, from, limit)
                        .await
                        .map_err(|_| Reason::Unreachable)?;
                let skip = continuation(resp.status, &resp.headers, from, Some(size))
                    .map_err(|_| Reason::Unreachable)?;
                Ok(Incoming::Parent { resp, skip })
            }
            Source::Node(url) | Source::Holder(url) => {
                let proof = self.link.fleet.sign("GET", &transfer::path(&self.digest));
                let call = transfer::fetch(&self.link.get, url, &self.digest, from, proof);
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

    fn body(size: u64, chunks: &[&'static [u8]]) -> SwarmBody {
        let (tx, rx) = mpsc::channel(QUEUE);
        for c in chunks {
            tx.try_send(Ok(Bytes::from_static(c))).unwrap();
        }
        SwarmBody {
            rx,
            task: tokio::spawn(async {}),
            ended: false,
            size,
            given: 0,
        }
    }

    /// The driver's end after every byte ends the body; short of them, it is a break (so the
    /// fill resumes from the parent rather than failing on a short blob).
    #[tokio::test]
    async fn a_body_ending_short_of_the_blob_is_a_break() {
        let mut whole = body(5, &[b"ab", b"cde"]);
        assert_eq!(whole.next_chunk().await.unwrap().unwrap(), "ab");
        assert_eq!(whole.next_chunk().await.unwrap().unwrap(), "cde");
        assert_eq!(whole.next_chunk().await.unwrap(), None);
        assert!(whole.ended);
        let mut short = body(5, &[b"ab"]);
        assert_eq!(short.next_chunk().await.unwrap().unwrap(), "ab");
        let e = short.next_chunk().await.unwrap_err();
        assert!(e.to_string().contains("ended at byte 2 of 5"), "{e}");
        assert!(!short.ended);
    }
}
