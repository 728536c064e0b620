//! A fleet node's blob fills from the swarm (`[fleet] parent`), and the node's side of serving
//! other nodes: the I/O around the pure [`swarm`](crate::swarm) core.
//!
//! # A node's fill
//! [`Swarm::open`] is the fill's source on a node (the job asks it after the bucket and the
//! cluster's owner, before the upstream). It asks the parent's ordinary blob route, with
//! `HEAD`, whether this upstream and repository may have the blob, and its size (the tracker
//! answers for a digest, whoever asks: without this, a client that knows a digest could get from
//! peers what the parent's access policy or origin check refuses it; a refusal, and the fill asks
//! the parent itself, as any miss). Then it asks the tracker on the parent for a source
//! (`POST /_berth/fleet/v1/swarm/<digest>?size=N`, a `SwarmRequest`, answered a `SwarmAnswer`
//! whose piece size the fill takes; the size lets the tracker answer a cold start at once, before
//! the parent's own fill began). Then it spawns a driver that runs a
//! `swarm::select::Transfer` ([`drive`]) as `tests/it/swarm.rs`'s `pull` does:
//! - `AskTracker`/`Report`: the same route, with the node's frontier and the source it dropped;
//! - `NeedHashes`: `GET /_berth/fleet/v1/pieces/<digest>?from=K` (404: not yet, asked again a
//!   tick later), run beside the body so that reading never waits for it;
//! - `Fetch` from the parent: the node's ordinary upstream request for the blob with
//!   `Range: bytes=<from>-` (`Upstream::send`: the login and `?ns=` apply, and it is what
//!   starts the parent's own fill); from a node: `swarm::transfer::fetch`, fleet-signed;
//! - `Verified{upto}`: the bytes up to `upto` go to the fill, in order. **Only verified bytes
//!   reach the fill**, so everything in the node's pending file may be served to other nodes;
//! - `CheckDigest`: the driver ends the body, and the fill's own whole-digest check (unchanged)
//!   answers it: the driver waits for the fill's verdict (`Verified`/`Committed` or `Failed`),
//!   so the digest is hashed once, by the fill, and the tracker hears "complete" only once the
//!   blob is verified;
//! - `Done`: the tracker is told the node holds the blob (not on the directory route: the
//!   parent could not be reached; the directory is told once the fill commits).
//!
//! The rule the fallbacks keep: **nothing any peer or the tracker does can fail a pull the
//! parent could serve.** The tracker unreachable, refusing, or answering garbage at the start:
//! the node takes every byte from the parent (still through the driver, so its children can read
//! its verified bytes); a tracker that knows another size than the parent's `HEAD`: the fill
//! asks the parent itself. The tracker failing later,
//! or the pieces route missing for `drive::MAX_HASH_MISSES` ticks: the parent, from the frontier. Too
//! many failed sources: the parent (`select`'s rule). The parent failing repeatedly: the
//! directory's holders, from the frontier (below). The driver giving up in any other way (no
//! holder left): the body breaks off, and the job resumes it from the upstream (the parent) with
//! `Range`, as it resumes any broken body; a parent that is down then fails the fill as it did
//! before the swarm.
//!
//! # The parent down: the directory
//! Every node keeps, as a directory node (`swarm::directory`: three nodes per digest, by
//! rendezvous over the node set), the holders it is told of ([`holders`]), and answers them on
//! `GET /_berth/fleet/v1/holders/<digest>`; every fill that commits here is told to the digest's
//! directory nodes (`PUT` of the same path) in the background, never delaying the pull. When the
//! parent cannot be reached at the `HEAD` (no connection or no answer's head within
//! `[fleet] parent_timeout`, a 5xx; a refusal is the parent's answer and is kept), [`Swarm::open`] asks the directory nodes for holders and takes
//! the size from the first that answers; when the parent fails the swarm's tries (mid-blob too),
//! the driver asks them (`AskDirectory`) for the rest. A holder's bytes have no piece table to
//! be checked against: the driver spools them and hashes them itself (after the hash of what the
//! fill already has, read back from its file), and gives them to the fill only once the whole
//! digest checks ([`drive`]); a holder that fails the check is dropped and the next one asked
//! from the same byte, and **no byte of a wrong body reaches the fill**, so none is served, kept
//! or completed. No holder, or none that sends the blob: the pull fails as it did
//! before the directory (`503` from the fill's own try of the parent). A node restarted empty
//! has an empty book and asks the others; it is told again as nodes complete blobs (and as
//! nodes start: each tells the directory of the blobs on its disk, paced,
//! [`Swarm::announce_held`]), and tells them of its own, so it rejoins without any step of its
//! own; a node restarted with its blobs is found again the same way.
//!
//! Access, with the parent down: the parent's `HEAD` (its access policy for this login and
//! repository, its origin check for this upstream) cannot be asked. The choice made: **any
//! digest a holder has**, under any repository and upstream of this node. Every holder's copy
//! came at its origin from the parent, so some request of the fleet was admitted for it; it is
//! checked whole against the digest the client asked for; only blobs travel (manifests and tags
//! are never filled from holders, so what a pull *is* still comes from the parent, from the
//! node's cache while the parent is down); and a node's requests to the parent all carry the
//! node's one login, so what the parent would decide differently is only the repository and the
//! upstream. That is what is given up while the parent is down: a client of a node that knows a
//! digest some node pulled under another repository or upstream gets it, where the parent
//! might refuse it. The alternative, holders keyed by upstream and repository (or a manifest
//! this node holds naming the digest), would keep that decision but miss every blob shared
//! between repositories (base layers, the common case), and a pull by a manifest the parent gave
//! names its blobs anyway.
//!
//! # Serving other nodes
//! [`Swarm::serve`] answers `GET /_berth/fleet/v1/blobs/<digest>` ([`serve`]): a fill running
//! on this node up to what it has written, or a committed blob. A peer can ask for any digest
//! the node holds, through whichever upstream it came: the fleet's secret is the trust boundary,
//! and a digest is only known from a manifest the parent served.
//!
//! Timings: the driver's clock ticks every `link::TICK` (stalls, reports); a call to the tracker or
//! the pieces route gets `link::CALL_TIMEOUT` whole, a peer `swarm::select::STALL` to answer its headers.
//! Reports and piece-table calls run beside the body; asking for a new source and opening one
//! are awaited in line (the transfer has no source meanwhile anyway).
//!
//! # Trade-offs
//! - One `HEAD` to the parent per swarm fill (the access and origin check above, and the size):
//!   a round trip before the first byte, answered from the parent's cache, its running fill, or
//!   on a cold start its upstream's `HEAD`.
//! - The parent's silence is a stall too (`select`'s rule for every source): a parent whose own
//!   fill waits on a slow upstream for `swarm::select::STALL` is asked again from the frontier (its
//!   fill runs on, nothing is fetched upstream twice); three times without progress, and the
//!   job's resume takes over with the upstream's own, longer stall timeout.
//! - A node holds at most `drive::MAX_UNVERIFIED` (16 MiB, or two pieces) from a peer before
//!   their hashes are known, then stops reading it: memory stays bounded whatever a peer sends
//!   ahead of the parent's table, at the cost of a pause (a table poll) when the node reads
//!   faster than it polls, and of a peer that is far ahead being left as a stall.
//! - `berth_fleet_bytes_total` counts the driver's bytes; what a fill gets after the swarm gave
//!   up (the job's resume) or without it counts in `berth_upstream_fetched_bytes_total`, as any
//!   fill from an upstream.
//! - The directory route holds a holder's bytes back until the digest checks: they are written
//!   twice (the spool, then the fill's file) and hashed twice, and the node's client has its
//!   first byte only once the whole blob has arrived (the fill answers its headers at once, with
//!   the size). Its children cannot read it meanwhile either. It serves only while the parent
//!   is down, where the alternative is no blob at all.
//! - The size on the directory route is the first answering holder's word: a holder that lies
//!   about it fails that pull (every honest holder then sends another size, and is left), and is
//!   tried last for `holders::LIAR_MEMORY`, so the client's retry gets the blob.
//! - "Cannot be reached" is decided by `[fleet] parent_timeout` (5 s by default,
//!   `link::parent_blob`): the `HEAD` (and each blob request of the driver) must connect and
//!   bring its response head within it, every fleet connection connects within it (the
//!   `link::Conn`), and the tracker's calls are whole within `link::CALL_TIMEOUT` (3 s) anyway.
//!   So a parent that refuses connections is left at once, and one that black-holes them or
//!   accepts and never answers costs a pull `parent_timeout` (the driver's tries of a parent
//!   that went silent after its `HEAD`: three of it), where the upstream client's own bounds
//!   were about 30 s (10 s per connect, three tries; 30 s for an answer), past what a runtime
//!   waits for. The other side of it: a parent that is merely slow to answer a `HEAD` is taken
//!   for down for that pull, and its holders' copy is served by digest without its access
//!   decision (above). Why 5 s is not eager: a `HEAD` the parent answers from its disk or a
//!   running fill takes milliseconds, and a cold one costs one upstream `HEAD` (a token round
//!   trip included, well under a second for the registries berth mirrors), so 5 s is many times
//!   the slow case of a live parent; `select::STALL` already takes 2 s of a parent's silence
//!   mid-body for a stall. And what is given up is bounded: the verdict is the one pull's (the
//!   next one asks the parent again, no memory of it being down), the bytes are checked against
//!   the digest the parent's manifest named, and a blob no node holds still goes to the parent
//!   (the fill's own try, with the upstream client's bounds). An operator whose parent's
//!   upstreams are slower than that raises it (up to 300 s) and gets the old behaviour.
//! - The parent failing mid-blob: the bytes the fill has are read back and hashed once more (the
//!   fill's file, once it has written them; a fill that lost its disk keeps no file, and then
//!   the pull fails as before the directory).
//!
//! Rule of dependency: uses `swarm` (the core), `fleet` (the proof, the paths, the node's
//! metrics), `config` (the table), `store` (the fill's states, the committed blob), `upstream`
//! (the parent's blob route and its `Range` rule), `oci`, `error`. The job and `source` use it;
//! it imports neither (the job hands it what it needs), nor the mirror or `http`. Its children,
//! one concern each, import nothing of this file: [`link`] (the node set and the calls to the
//! parent), [`holders`] (the directory's book and calls, over `link`), [`spool`] (a holder's
//! bytes until the digest checks), [`drive`] (the transfer's driver, over the three), [`serve`]
//! (serving other nodes, handing each committed fill to a callback). This file builds them and
//! opens a fill's swarm.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Method, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;

mod drive;
mod holders;
mod link;
mod serve;
mod spool;

use drive::Start;
pub(crate) use drive::SwarmBody;
use holders::Directory;
pub use holders::{MAX_BOOK, MAX_CALLS};
use link::{Link, Members};
use serve::Serving;

use crate::config::FleetConfig;
use crate::error::Kind;
use crate::fleet::Fleet;
use crate::oci::{Digest, RepoName};
use crate::store::{FillState, Store};
use crate::swarm::node::{Fleet as Nodes, NodeUrl};
use crate::swarm::pieces::Layout;
use crate::swarm::protocol::{Holders, ProtocolError};
use crate::swarm::select;
use crate::swarm::tracker::Reason;
use crate::swarm::transfer::{self, ServeBody, Uploads, WAIT_TICK};
use crate::upstream::{Upstream, content_length};

/// A node's swarm: its link to the parent, the node set, what it serves other nodes, and its
/// part in the directory.
pub struct Swarm {
    link: Arc<Link>,
    members: Arc<Members>,
    serving: Serving,
    directory: Arc<Directory>,
    /// Where a holder's bytes wait for the whole digest (the store's temp directory).
    spool_dir: std::path::PathBuf,
    /// The store whose blobs [`Swarm::announce_held`] tells the directory of.
    store: Arc<Store>,
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
        let https = crate::upstream::connect::TimeoutConnector::new(https, cfg.parent_timeout());
        let build = || {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .clone()
        };
        let members = Arc::new(members);
        let link = Arc::new(Link {
            fleet: fleet.clone(),
            me,
            parent,
            get: build().build(https.clone()),
            post: build().build(https),
            max_uploads: cfg.max_uploads,
            parent_timeout: cfg.parent_timeout(),
        });
        let directory = Arc::new(Directory::default());
        let committed: serve::Committed = {
            let (directory, link, members) = (directory.clone(), link.clone(), members.clone());
            Arc::new(move |d: &Digest| directory.tell(&link, &members, d))
        };
        Ok(Some(Swarm {
            members,
            spool_dir: store.tmp().to_path_buf(),
            store: store.clone(),
            serving: Serving::new(
                Uploads::new(cfg.max_uploads as usize, WAIT_TICK),
                store,
                fleet.metrics().served.clone(),
                committed,
            ),
            link,
            directory,
        }))
    }

    /// Tells the directory of every blob the store holds (`holders::Directory::announce`:
    /// paced, in the background of a start); for the server to run once its store's index is
    /// built, so that a node restarted with its blobs is found while the parent is down.
    pub async fn announce_held(self: Arc<Self>) {
        let held = self.store.index().digests();
        let (directory, link, members) = (
            self.directory.clone(),
            self.link.clone(),
            self.members.clone(),
        );
        directory.announce(link, members, held).await;
    }

    /// A slot for one directory call (`PUT`/`GET .../holders/<digest>`); `None` when
    /// [`MAX_CALLS`] are being answered (the route answers `429`).
    pub fn directory_call(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.directory.call()
    }

    /// A node's note that it holds `digest`: kept if it names a node of the set.
    pub async fn note_holder(&self, digest: &Digest, body: &[u8]) -> Result<(), ProtocolError> {
        let nodes = self.members.current().await;
        self.directory.note(digest, body, &nodes)
    }

    /// The holders of `digest` this node keeps as a directory node.
    pub async fn holders(&self, digest: &Digest) -> Holders {
        let nodes = self.members.current().await;
        self.directory.holders(digest, &nodes)
    }

    /// Answers another node's (authenticated) request for `digest` from `range` on
    /// (`serve::Serving::serve`).
    pub async fn serve(&self, range: Option<&HeaderValue>, digest: &Digest) -> Response<ServeBody> {
        self.serving.serve(range, digest).await
    }

    /// The fill's body from the swarm, and the blob's size; `None` when the node could learn
    /// the size from neither the tracker nor the parent (the fill then asks the upstream itself,
    /// and gets the parent's answer as any miss does).
    pub(crate) async fn open(
        &self,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
        fill: &watch::Receiver<FillState>,
    ) -> Option<(SwarmBody, u64)> {
        self.serving.register(digest, fill);
        let nodes = self.members.current().await;
        // The tracker answers for a digest, whoever asks; whether this upstream and repository
        // may have it is the parent's to say (its access policy, its origin check), as it would
        // for an ordinary miss: a HEAD first, whose length is also the size the tracker is told
        // (so that on a cold start, before the parent's own fill, it can answer at once). A
        // refusal, no length, or a tracker that knows another size: the fill asks the parent
        // itself and gets its answer.
        let limit = self.link.parent_timeout;
        let head = link::parent_blob(up, Method::HEAD, name, digest, 0, limit).await;
        let head = match head {
            Ok(h) => h,
            // No connection, no answer within `parent_timeout`, a 5xx: the parent is down; its
            // holders may not be.
            Err(e) if matches!(e.kind, Kind::UpstreamUnavailable { .. }) => {
                return self
                    .open_from_holders(up, name, digest, fill, nodes, &e)
                    .await;
            }
            Err(_) => return None,
        };
        let size = content_length(&head.headers)?;
        let join = self.link.request(0, None);
        let (layout, first) = match self.link.ask_sized(digest, Some(size), &join, &nodes).await {
            Ok(a) if a.layout.size() == size => (a.layout, a.source),
            Ok(a) => {
                tracing::warn!(digest = %digest, size, tracker = a.layout.size(), "fleet: the tracker knows another size than the parent's HEAD; asking the parent itself");
                return None;
            }
            Err(e) => {
                tracing::info!(digest = %digest, error = %e, "fleet: no answer from the tracker; taking the blob from the parent through the swarm's driver");
                (Layout::new(size), None)
            }
        };
        Some((
            drive::spawn(Start {
                first,
                ..self.start(up, name, digest, fill, nodes, layout)
            }),
            layout.size(),
        ))
    }

    /// A driver's start for `digest` of `layout`, with neither the tracker's first answer nor
    /// the directory's holders: each caller sets the one it has.
    fn start(
        &self,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
        fill: &watch::Receiver<FillState>,
        nodes: Nodes,
        layout: Layout,
    ) -> Start {
        Start {
            link: self.link.clone(),
            up: up.clone(),
            name: name.clone(),
            digest: digest.clone(),
            nodes,
            fill: fill.clone(),
            layout,
            first: None,
            holders: None,
            directory: self.directory.clone(),
            spool_dir: self.spool_dir.clone(),
        }
    }

    /// The parent cannot be reached: the directory's holders of `digest`, tried in turn, each
    /// one's bytes held back until the whole digest checks. The size is the first answering
    /// holder's word (the parent's `HEAD` is what would say it): a holder that then sends
    /// another size or other bytes is dropped like any liar. No holder, or none that answers:
    /// `None`, and the fill asks the parent itself and fails as it did before the directory.
    async fn open_from_holders(
        &self,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
        fill: &watch::Receiver<FillState>,
        nodes: Nodes,
        why: &crate::error::Error,
    ) -> Option<(SwarmBody, u64)> {
        let mut holders = Vec::new();
        let mut size = None;
        // As the driver does (`select::DIRECTORY_ROUNDS`): every holder busy, the directory is
        // asked again a moment later.
        for round in 0..=select::DIRECTORY_ROUNDS {
            if round > 0 {
                tokio::time::sleep(drive::BUSY_WAIT).await;
            }
            holders = self.directory.ask(&self.link, digest, &nodes).await;
            let mut busy = false;
            for h in &holders {
                let proof = self.link.fleet.sign("GET", &transfer::path(digest));
                let call = transfer::fetch(&self.link.get, h, digest, 0, proof);
                match tokio::time::timeout(select::STALL, call).await {
                    Ok(Ok(b)) => {
                        size = Some(b.size());
                        break;
                    }
                    Ok(Err(Reason::Busy)) => busy = true,
                    _ => {}
                }
            }
            if size.is_some() || !busy {
                break;
            }
        }
        let Some(size) = size else {
            tracing::warn!(digest = %digest, parent = %why, holders = holders.len(), "fleet: the parent cannot be reached and no holder of the blob answers");
            return None;
        };
        tracing::info!(digest = %digest, parent = %why, holders = holders.len(), "fleet: the parent cannot be reached; taking the blob from a holder the directory named");
        Some((
            drive::spawn(Start {
                holders: Some(holders),
                ..self.start(up, name, digest, fill, nodes, Layout::new(size))
            }),
            size,
        ))
    }
}
