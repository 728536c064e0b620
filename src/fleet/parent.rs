//! The parent's side of the swarm (a berth with `[fleet]` and no `parent`): the tracker of every
//! digest's swarm (`POST /_berth/fleet/v1/swarm/<digest>`) and the piece tables
//! (`GET /_berth/fleet/v1/pieces/<digest>?from=K`, in [`tables`](super::tables)). The routes are
//! `http::fleet`'s; the rules of the swarm are `swarm`'s (`tracker`, `protocol`); this file holds
//! the state and the decisions between them: who the fleet is, what size a blob has, the counts.
//!
//! # Who the fleet is, seen from the parent
//! A parent has no node list (`peers`/`peers_dns` are node-only keys), so a node is known to the
//! parent by its own swarm calls: a call carries the fleet proof (checked before this file is
//! reached; for a call another replica forwarded, checked there, and the forward carries the
//! cluster's proof over that very body, `owner`), which shows its sender holds the fleet secret,
//! and its `node` field names the URL other nodes reach it at. That node joins the parent's
//! [`Fleet`] (the set `swarm::protocol` parses against and the tracker hands out from) and stays
//! while it calls at least every `tracker::EXPIRY`; the set is swept with the tracker. A tracker
//! answer can only name a node that is a member of that digest's swarm (`swarm::tracker`), which it
//! became only by its own signed call: nothing can make the parent point a node at a host that did
//! not itself join. A `dropped` source must be a node the parent knows too. The trust this leaves:
//! any holder of the fleet secret can name any URL as itself; the fleet secret is the fleet's trust
//! boundary (a holder can also serve bytes, which every node checks against the piece table and the
//! digest anyway). The proof signs the method, path and query, a timestamp and the body's digest
//! (`fleet`'s module docs): someone who can read a node's call off the wire can replay that very
//! call within the proof's age limit, never send another body under its proof. On a network that
//! is not trusted, the parent is reached over HTTPS, as its registry traffic is.
//!
//! # What size a blob has
//! The answer carries the blob's size and piece size (`SwarmAnswer`). The parent takes it from,
//! in order: its committed blob or a running fill of known size ([`Blobs::size`]), the digest's
//! piece table, the size the live swarm was first answered with, a complete node's `have`, or
//! the call's `?size=N` (the size the node read in the manifest's descriptor, which it
//! verified). A `?size` that disagrees with what the parent knows (or, while it knows nothing,
//! with the swarm's size) is refused; with none of these the answer is 404 (the node fetches from
//! the parent, whose fill then knows the size, and asks again). The query lets a cold start build
//! its chains before the parent's own fill has begun; the parent's own knowledge always wins.
//!
//! # Replicas
//! With `[cluster]`, one replica tracks each digest for the whole fleet: the digest's owner, as
//! for its blob fills. A node's calls to another replica are forwarded to it
//! ([`owner`](super::owner), [`Parent::swarm`], [`Parent::pieces`]), and a forwarded call is
//! answered here ([`Parent::swarm_here`], [`Parent::pieces_here`]) without being forwarded again.
//! An owner that cannot answer passes the digest to the next replica in its order, and at this
//! replica's own place to this one: a gone owner's digests move to the same next replica for
//! all, while an owner only some replicas reach makes two swarms for a while, never a failed
//! pull (the trade-off is written in `owner`).
//!
//! # What the parent has, told to the tracker
//! Before each call is applied the tracker is told what the parent has of the digest
//! (`tracker::Feed`): a fill running (seen from the first request on, with the bytes it has
//! received: whoever asked the parent for the blob started it), the blob or its piece table, or
//! nothing. The tracker measures its children against the fill's pace (a slow head of a chain),
//! and while the parent has nothing it hands out no node whose bytes could not be checked and
//! takes the slot back from a child that did not fetch (see `swarm::tracker`). The parent does
//! not know *which* node fetches (its blob route serves a node's upstream login, not its fleet
//! URL): a fill running is taken as its children having fetched. With `parent_slots = 1`, the
//! default, that is exact; with more, one child that fetches covers the others for the fill's
//! life.
//!
//! The tracker is swept (silent nodes, ended avoidances, empty swarms) at most every
//! [`SWEEP_EVERY`], on the next call, rather than by a task of its own: it holds nothing that
//! ages between calls except memory, bounded by `tracker::Limits` anyway.
//!
//! Rule of dependency: part of `fleet`; uses `swarm` (`tracker`, `protocol`, `node`, `pieces`),
//! `oci`, prometheus and its siblings `tables`, `call` (the refusals, the query, the sender) and
//! `owner` (the forwarding, on a replica), and reads blobs only through the
//! [`Blobs`] it is given (defined in `tables`; the mirror, wired in `assemble`): `fleet` never
//! calls the mirror, the fill or the store itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

pub use super::call::{Refusal, size_query};
use super::call::{asking_node, bad};
use super::owner::Owners;
use super::tables::{Blobs, NoTable, Tables, WAIT};
use crate::oci::Digest;
use crate::swarm::node::{Fleet, NodeUrl};
use crate::swarm::pieces::Layout;
use crate::swarm::protocol::{ApplyError, Pieces, SwarmAnswer, SwarmRequest, pieces_from};
use crate::swarm::tracker::{Assignment, EXPIRY, Feed, Limits, Reason, Refused, Tracker};

/// How often the tracker and the node set are swept, at most.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The most nodes the parent knows at once (a node that calls past it is refused until others
/// expire): a bound against a secret holder inventing URLs, far above any fleet.
pub const MAX_NODES: usize = 100_000;

/// The outcomes of `berth_fleet_tracker_requests_total`.
pub const OUTCOMES: [&str; 6] = [
    "assigned_parent",
    "assigned_node",
    "kept",
    "unknown_size",
    "refused",
    "bad_request",
];

struct State {
    tracker: Tracker,
    fleet: Fleet,
    /// When each known node last called.
    heard: std::collections::HashMap<NodeUrl, Instant>,
    /// The size each live swarm was answered with, for calls that do not say it while the parent
    /// does not know it itself (its fill not begun).
    sizes: std::collections::HashMap<Digest, u64>,
    swept: Instant,
}

/// The parent's tracker and piece tables.
pub struct Parent {
    state: Mutex<State>,
    /// [`MAX_NODES`] (smaller in tests).
    max_nodes: usize,
    tables: Tables,
    blobs: Arc<dyn Blobs>,
    /// `berth_fleet_swarms`.
    swarms: IntGauge,
    /// `berth_fleet_tracker_requests_total{outcome}`.
    requests: IntCounterVec,
    /// `berth_fleet_sources_dropped_total{reason}`.
    dropped: IntCounterVec,
    /// On a replica of a cluster: the digests' owners, which answer the calls of digests this
    /// replica does not own.
    owners: Option<Owners>,
}

impl Parent {
    /// A parent reading blobs through `blobs`, feeding at most `limits.parent_slots` nodes of a
    /// digest directly; its metric families go into `registry`.
    pub fn new(
        blobs: Arc<dyn Blobs>,
        limits: Limits,
        registry: &Registry,
    ) -> Result<Parent, String> {
        let e = |e: prometheus::Error| e.to_string();
        let swarms = IntGauge::new(
            "berth_fleet_swarms",
            "Digests whose swarm the parent tracks now.",
        )
        .map_err(e)?;
        let tables = IntGauge::new(
            "berth_fleet_piece_tables",
            "Piece tables the parent keeps now (made on a node's first ask for a digest).",
        )
        .map_err(e)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "berth_fleet_tracker_requests_total",
                "Swarm calls to the parent's tracker, by outcome (assigned_parent, assigned_node, kept, unknown_size, refused, bad_request).",
            ),
            &["outcome"],
        )
        .map_err(e)?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "berth_fleet_sources_dropped_total",
                "Sources nodes reported dropping, by reason (bad_piece, stall, closed, unreachable, busy, starved).",
            ),
            &["reason"],
        )
        .map_err(e)?;
        for c in [&swarms, &tables] {
            registry.register(Box::new(c.clone())).map_err(e)?;
        }
        for c in [&requests, &dropped] {
            registry.register(Box::new(c.clone())).map_err(e)?;
        }
        for o in OUTCOMES {
            requests.with_label_values(&[o]);
        }
        for r in Reason::ALL {
            dropped.with_label_values(&[r.as_str()]);
        }
        Ok(Parent {
            state: Mutex::new(State {
                tracker: Tracker::new(limits),
                fleet: Fleet::default(),
                heard: Default::default(),
                sizes: Default::default(),
                swept: Instant::now(),
            }),
            tables: Tables::new(tables),
            max_nodes: MAX_NODES,
            blobs,
            swarms,
            requests,
            dropped,
            owners: None,
        })
    }

    /// This parent as a replica of a cluster: the calls of digests it does not own go to their
    /// owner replica first.
    pub fn with_owners(mut self, owners: Owners) -> Parent {
        self.owners = Some(owners);
        self
    }

    /// A node's swarm call for `digest`: its body and the query (`size=N`, optional), answered by
    /// the digest's owner replica when there is one to ask, else here.
    pub async fn swarm(
        &self,
        digest: &Digest,
        body: &[u8],
        query: Option<&str>,
    ) -> Result<SwarmAnswer, Refusal> {
        if let Some(owners) = &self.owners
            && let Some(answer) = owners.swarm(digest, body, query).await
        {
            return answer;
        }
        self.swarm_here(digest, body, query).await
    }

    /// A swarm call answered by this parent's own tracker, never forwarded (a forwarded call, or
    /// this replica's own digest). Counted by outcome.
    pub async fn swarm_here(
        &self,
        digest: &Digest,
        body: &[u8],
        query: Option<&str>,
    ) -> Result<SwarmAnswer, Refusal> {
        self.swarm_at(digest, body, query, Instant::now()).await
    }

    /// [`Parent::swarm`] at the time `now` (the tests move it).
    async fn swarm_at(
        &self,
        digest: &Digest,
        body: &[u8],
        query: Option<&str>,
        now: Instant,
    ) -> Result<SwarmAnswer, Refusal> {
        let answer = self.swarm_uncounted(digest, body, query, now).await;
        let outcome = match &answer {
            Ok(SwarmAnswer {
                source: Some(Assignment::Parent),
                ..
            }) => "assigned_parent",
            Ok(SwarmAnswer {
                source: Some(Assignment::Node { .. }),
                ..
            }) => "assigned_node",
            Ok(_) => "kept",
            Err(Refusal::Unknown(_)) => "unknown_size",
            Err(Refusal::BadRequest(_)) => "bad_request",
            Err(Refusal::Full(_) | Refusal::Failed(_)) => "refused",
        };
        self.requests.with_label_values(&[outcome]).inc();
        answer
    }

    async fn swarm_uncounted(
        &self,
        digest: &Digest,
        body: &[u8],
        query: Option<&str>,
        now: Instant,
    ) -> Result<SwarmAnswer, Refusal> {
        let claimed = size_query(query).map_err(Refusal::BadRequest)?;
        let node = asking_node(body)?;
        // The blob's size, before the lock (it may look at the disk), and what the parent has
        // of it: a fill running (someone fetched it), the blob or its table, or nothing.
        let known = match self.blobs.size(digest).await {
            Some(n) => Some(n),
            None => self.tables.layout(digest).map(|l| l.size()),
        };
        let feed = match self.blobs.filling(digest) {
            Some(received) => Feed::Filling(received),
            None if known.is_some() => Feed::Holds,
            None => Feed::Cold,
        };
        if let (Some(k), Some(c)) = (known, claimed)
            && k != c
        {
            return Err(Refusal::BadRequest(format!(
                "size={c}, but the blob has {k} bytes"
            )));
        }
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        if now.saturating_duration_since(st.swept) >= SWEEP_EVERY {
            st.sweep(now);
        }
        let new = st.fleet.insert(node.clone());
        if new && st.fleet.len() > self.max_nodes {
            st.fleet.remove(&node);
            return Err(Refusal::Full(format!(
                "the parent knows {} nodes already",
                self.max_nodes
            )));
        }
        let req = match SwarmRequest::parse(body, &st.fleet) {
            Ok(r) => r,
            Err(e) => {
                if new {
                    st.fleet.remove(&node);
                }
                return Err(bad(e));
            }
        };
        st.heard.insert(node, now);
        // A size only claimed so far: the one this swarm was first given, while it lives.
        let remembered = st.sizes.get(digest).copied();
        if known.is_none()
            && let (Some(r), Some(c)) = (remembered, claimed)
            && r != c
        {
            return Err(Refusal::BadRequest(format!(
                "size={c}, but this swarm's blob has {r} bytes"
            )));
        }
        let size = known
            .or(remembered)
            .or(req.complete.then_some(req.have))
            .or(claimed)
            .ok_or_else(|| {
                Refusal::Unknown(
                    "the parent knows no size for this blob yet: fetch it from the parent, or give ?size= from its descriptor"
                        .to_owned(),
                )
            })?;
        st.tracker.feed(digest, feed, now);
        let answer = req
            .apply(&mut st.tracker, digest, Layout::new(size), &st.fleet, now)
            .map_err(|e| match e {
                ApplyError::Invalid(e) => bad(e),
                ApplyError::Refused(Refused::NotInFleet(n)) => {
                    Refusal::BadRequest(format!("{n} is not a node of the fleet"))
                }
            });
        if answer.is_ok() {
            st.remember(digest, size);
            if let Some((_, reason)) = &req.dropped {
                self.dropped.with_label_values(&[reason.as_str()]).inc();
            }
        }
        self.swarms.set(st.tracker.swarms() as i64);
        answer
    }

    /// The piece hashes of `digest` from the query's `from` on (see [`tables`](super::tables)),
    /// from the digest's owner replica when there is one to ask and it has them, else from here.
    pub async fn pieces(&self, digest: &Digest, query: Option<&str>) -> Result<Pieces, Refusal> {
        if let Some(owners) = &self.owners
            && let Some(answer) = owners.pieces(digest, query).await
        {
            return answer;
        }
        self.pieces_here(digest, query).await
    }

    /// The piece hashes from this parent's own tables, never forwarded.
    pub async fn pieces_here(
        &self,
        digest: &Digest,
        query: Option<&str>,
    ) -> Result<Pieces, Refusal> {
        let from = pieces_from(query).map_err(bad)?;
        self.tables
            .pieces(self.blobs.as_ref(), digest, from, WAIT)
            .await
            .map_err(|e| match e {
                NoTable::Unknown(m) => Refusal::Unknown(m),
                NoTable::BadFrom(m) => Refusal::BadRequest(m),
                NoTable::Failed(e) => Refusal::Failed(e),
            })
    }

    /// Counts a swarm call whose body could not be read (too large, too slow) as a bad request.
    pub fn bad_body(&self) {
        self.requests.with_label_values(&["bad_request"]).inc();
    }

    /// How many nodes the parent knows now.
    pub fn nodes(&self) -> usize {
        self.state.lock().unwrap().fleet.len()
    }
}

impl State {
    /// Forgets silent nodes (not heard for `EXPIRY`) and sweeps the tracker.
    fn sweep(&mut self, now: Instant) {
        self.tracker.sweep(now);
        let fleet = &mut self.fleet;
        self.heard.retain(|n, heard| {
            let alive = now.saturating_duration_since(*heard) < EXPIRY;
            if !alive {
                fleet.remove(n);
            }
            alive
        });
        self.forget_sizes();
        self.swept = now;
    }

    /// Remembers the size `digest`'s swarm was answered with (bounded: past twice the tracker's
    /// swarms, the sizes of swarms it no longer has are forgotten at once).
    fn remember(&mut self, digest: &Digest, size: u64) {
        self.sizes.insert(digest.clone(), size);
        if self.sizes.len() > 2 * Limits::default().max_swarms {
            self.forget_sizes();
        }
    }

    /// Forgets the sizes of swarms the tracker no longer has.
    fn forget_sizes(&mut self) {
        let tracker = &self.tracker;
        self.sizes.retain(|d, _| tracker.members(d) > 0);
    }
}

#[cfg(test)]
mod tests;
