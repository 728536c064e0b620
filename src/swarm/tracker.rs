//! The tracker: for each digest, the swarm of nodes pulling or holding it, and the choice of
//! each node's source. It runs on the central berth (on the digest's owner replica).
//!
//! Pure: every call takes the time as an argument and does no I/O, so each rule below is a unit
//! test. The rules, in the order a source is chosen for a node asking with `have` verified bytes
//! ([`Tracker::join`]):
//! 1. a *holder* (a node that completed the blob) with a free upload slot, fewest children first;
//! 2. a *receiver* strictly ahead of the asking node with a free slot, fewest children first,
//!    then most progress, then nearest a whole copy (fewest hops to the parent or a holder);
//! 3. the parent, while it serves fewer than `parent_slots` ([`Limits`]; [`PARENT_SLOTS`] by
//!    default) nodes of this digest directly;
//! 4. a receiver not behind the asking node (same progress: a simultaneous cold start), by the
//!    same order, so the nodes form chains of even length below the parent's children rather
//!    than a tree: every link of a chain runs at the cap, where a fan-out would split a node's
//!    upload;
//! 5. the parent anyway: a node is never left without a source.
//!
//! A candidate is never a *slow link*: a receiver whose rate (from its reports, over at least
//! [`RATE_WINDOW`]) is [`SLOW_RATIO`] times below its share of what feeds it (its source's rate,
//! or below a holder the swarm's best receiver's, divided among the source's children, since
//! they share its upload), and which is [`SLOW_LAG`] behind it (the start of a chain is no slow
//! link): a chain is as fast as its slowest link, so such a node feeds nobody, and its children
//! get a new source at their next report. Its own children, as slow as it is
//! but no slower than their source, are not slow links themselves.
//!
//! # The parent's children: what the parent can send, and who really fetches
//! A child of the parent is measured against what the parent can send it: the pace of the
//! parent's own fill of the blob (the parent tells it, [`Tracker::feed`]; the last pace measured
//! is kept once the fill ends) or the swarm's best receiver's, whichever is higher, shared among
//! the parent's children. The swarm's best alone cannot find a slow *head*: with one parent slot
//! every receiver is below the head and runs at its pace (the bed: a node at a tenth of the cap
//! joined first, and the 15 others ran at its pace for the whole pull, p99 120.7 s against about
//! 25 s when it was deep). The fill's pace is the one rate above the head that the tracker can
//! know. The other choices: the rate of the parent's other children (there are none with one
//! slot), or the head's lag behind the fill (the same measure, less directly).
//!
//! A child of the parent found slow is *demoted*: it keeps its stream from the parent and pulls
//! at its own pace, but feeds nobody, no longer counts against the parent's slots, and its
//! children are moved at their next report: the first of them to the parent (the slot it frees),
//! the rest below that one. At most `parent_slots` children are demoted at once (the slowest), so
//! the parent serves at most twice its slots in streams of one blob. A slow head's own copy thus
//! still comes from the parent, at its own pace: about two copies out of the parent instead of
//! one (moving the slow head below a fast node as its second child would save that copy at a
//! tenth of that node's upload; not done). The trade-off: a parent
//! whose upstream fills [`SLOW_RATIO`] times faster than a node's link carries sees its fast
//! head as slow and gives one more node a stream of its own (no more: the bound, and once that
//! node's chain runs at the cap the swarm's best shows the head is no slow link after all).
//!
//! While the parent has nothing of the blob ([`Feed::Cold`]: no blob, no table, no fill, so no
//! node has fetched from it), a node's bytes cannot be checked, since no piece table can come:
//! - a holder is not handed out, nor a receiver whose chain of sources does not end at a child
//!   of the parent (a node claiming the blob with slots for every node took every node at a
//!   cold start, nobody asked the parent, and each waited about 3 s for a table before going to
//!   the parent); so the first node to ask gets the parent, and the next ones its chain;
//! - a child of the parent that claims verified bytes, or that was named [`FETCH_GRACE`] ago,
//!   did not fetch from the parent (the parent sees a fill from the first request on): it is
//!   *idle*, demoted as a slow one is (idle ones first) until it joins again, so its slot goes
//!   to the next node that asks, and its children move at their next report (a node claiming
//!   progress took the only parent slot without fetching, and its chain waited ~3 s). A node
//!   reports after a second of piece-table misses for this (`fill::swarm::drive`).
//!
//! "Fewest children" in the rules above counts the children that share a candidate's upload: a
//! slow link among them takes only what its own link carries, so it is not counted (it still
//! holds one of the candidate's upload slots). So the children a slow link leaves go first to
//! the slow link's own source, whose upload it barely uses, rather than to the node furthest
//! ahead with one child, whose child (the whole chain below it) would then share its upload: in
//! the bed (16 nodes in one chain, one link at a tenth of the others'), the nodes moved and the
//! chain they joined ran at 2-3 MiB/s where the chain had run at 5.3.
//!
//! A candidate is never the asking node itself, never a node outside the fleet as it is known
//! now, never one whose own chain of sources runs through the asking node (no cycle), never one
//! that has no source of its own (it would stream nothing), never one silent for [`EXPIRY`],
//! never one blamed for a bad piece in this swarm, and not one blamed for a stall, a closed body
//! or an unreachable address for [`AVOID`] (a busy one for [`BUSY_AVOID`]).
//!
//! Progress comes from each node's reports (every few seconds) and from its children's: a node
//! forwards only bytes it verified, so a child's report raises its source's known progress to at
//! least its own, which keeps the heads of a chain "ahead" in the tracker's view between their
//! own reports.
//!
//! Slots are counted, not reserved: a node's children are the live receivers whose current source
//! it is, so a node that leaves, completes, expires or drops its source frees its slot at that
//! source the moment it does; one that leaves or expires also leaves its own children without a
//! source, and their next report gets a new one (a node that completes keeps its children, as a
//! holder). A report can blame only the reporter's current source, so a node cannot get an
//! innocent peer banned by naming it.
//!
//! Bounded memory: at most `max_swarms` swarms (the least recently used one is forgotten, as if
//! every node had left it) and `max_members` nodes per swarm (a node past it is sent to the parent
//! and not recorded). [`Tracker::sweep`] drops silent nodes, ended avoidances and empty swarms.
//!
//! The view of one swarm (who feeds whom, the demoted heads, the slow links, the depths) is
//! computed in [`view`], once per choice.
//!
//! Rule of dependency: uses `oci::Digest` and `swarm::node`; nothing else.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::node::{Fleet, NodeUrl};
use crate::oci::Digest;

/// How many nodes the parent serves directly per digest while other sources exist, by default:
/// the heads of the chains of a cold start, so the parent sends about this many copies of a blob
/// however many nodes pull it. One never oversubscribes a parent whose link is no faster than a
/// node's (two heads would each get half of it, and every chain below them half the cap); the
/// chain it makes is deeper, one piece of latency a hop (see the module docs of `swarm`).
pub const PARENT_SLOTS: usize = 1;

/// A node not heard from for this long has left (nodes report at least every
/// [`REPORT_EVERY`](super::select::REPORT_EVERY)).
pub const EXPIRY: Duration = Duration::from_secs(30);

/// How long a source blamed for a stall, a closed body or an unreachable address is not handed
/// out in that swarm: long enough for the pull to end elsewhere (a 256 MiB blob takes a few
/// seconds at the cap), short enough that a node that was only restarting serves again soon.
pub const AVOID: Duration = Duration::from_secs(30);

/// How long a source that answered "too busy" (429: its `max_uploads` taken by other digests,
/// which this swarm cannot see) is not handed out in that swarm.
pub const BUSY_AVOID: Duration = Duration::from_secs(5);

/// The shortest time over which a receiver's rate is measured from its reports.
pub const RATE_WINDOW: Duration = Duration::from_secs(2);

/// A receiver this many times slower than what feeds it is a slow link: it gets no children, and
/// its children are moved at their next report.
pub const SLOW_RATIO: f64 = 4.0;

/// A receiver is a slow link only once it is also this far behind what feeds it. A chain starts
/// a hop (a piece, and a table poll) later at each node, so at its first report a deep node's
/// rate, measured from its join, is many times below its source's by one hop's bytes, not by a
/// gap that grows (the bed at 2.5 s: nodes ten hops down looked slow, and the moves that followed
/// split fast nodes' uploads; `all` p99 2.05x). A link at a tenth of the others' falls this far
/// behind within a second or two at any cap that matters (1.5 s at 50 Mbit/s).
pub const SLOW_LAG: u64 = 8 << 20;

/// How long a child of the parent has to start fetching from it: a parent still neither holding
/// nor filling the blob this long after it named itself a node's source was not asked by that
/// node (a node's fetch is one round trip after the answer; the fill is seen from its first
/// request on, before its upstream answers).
pub const FETCH_GRACE: Duration = Duration::from_secs(1);

/// The upload slots of a node that does not say how many it has (`[fleet] max_uploads`).
pub const DEFAULT_UPLOADS: u32 = 4;

/// The most upload slots a node may announce.
pub const MAX_UPLOADS: u32 = 64;

/// Why a node dropped its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A piece did not match the table: never handed out again for this digest.
    BadPiece,
    /// No byte and no word for the stall time: avoided for [`AVOID`].
    Stall,
    /// The body broke off: avoided for [`AVOID`] (it is likely dying).
    Closed,
    /// No connection, or an error answer: avoided for [`AVOID`].
    Unreachable,
    /// It answered 429: avoided for [`BUSY_AVOID`].
    Busy,
    /// It is alive but its own source failed for too long: not held against it.
    Starved,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::BadPiece,
        Reason::Stall,
        Reason::Closed,
        Reason::Unreachable,
        Reason::Busy,
        Reason::Starved,
    ];

    /// The name in the protocol and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadPiece => "bad_piece",
            Reason::Stall => "stall",
            Reason::Closed => "closed",
            Reason::Unreachable => "unreachable",
            Reason::Busy => "busy",
            Reason::Starved => "starved",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Where a node is told to get the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// The central berth itself.
    Parent,
    /// Another node, with what the tracker last heard of it.
    Node {
        url: NodeUrl,
        have: u64,
        complete: bool,
    },
}

/// What the parent has of a digest, as it tells the tracker before each call
/// ([`Tracker::feed`]; `fleet::parent` sees its own store and fills).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Feed {
    /// Not told (a tracker used on its own): the rules that need it do not apply.
    #[default]
    Unknown,
    /// The parent neither holds the blob nor fills it: nobody has fetched it from the parent,
    /// so no piece table can come, and no node's bytes can be checked.
    Cold,
    /// A fill runs on the parent, with this many bytes received (0 while its upstream has not
    /// answered).
    Filling(u64),
    /// The parent holds the whole blob (or its piece table).
    Holds,
}

/// What a node reports: its progress, and the source it dropped and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report<'a> {
    /// Verified bytes.
    pub have: u64,
    /// It holds the whole verified blob.
    pub complete: bool,
    pub dropped: Option<(&'a NodeUrl, Reason)>,
}

/// Why the tracker refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The caller is not a node of the fleet.
    NotInFleet(NodeUrl),
}

/// The tracker's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_swarms: usize,
    pub max_members: usize,
    /// Nodes the parent feeds directly per digest while other sources exist.
    pub parent_slots: usize,
}

impl Default for Limits {
    /// 4096 swarms of up to 10,000 nodes: a member is about 150 bytes, so a full tracker is
    /// bounded by the fleet's size times the blobs pulled at once, never by a caller.
    fn default() -> Limits {
        Limits {
            max_swarms: 4096,
            max_members: 10_000,
            parent_slots: PARENT_SLOTS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Src {
    Parent,
    Node(NodeUrl),
}

#[derive(Debug, Clone)]
struct Member {
    /// Verified bytes, as last reported.
    have: u64,
    complete: bool,
    source: Option<Src>,
    uploads: u32,
    heard: Instant,
    /// Where the rate is measured from: (when, have).
    sample: (Instant, u64),
    /// Verified bytes per second over the last [`RATE_WINDOW`] or more, since its source was set.
    rate: Option<f64>,
    /// When its source last became the parent.
    fed_at: Instant,
    /// A child of the parent that did not fetch from it ([`FETCH_GRACE`]) or claimed bytes the
    /// parent did not have: it feeds nobody until it joins again.
    idle: bool,
}

impl Member {
    fn new(have: u64, complete: bool, now: Instant) -> Member {
        Member {
            have,
            complete,
            source: None,
            uploads: DEFAULT_UPLOADS,
            heard: now,
            sample: (now, have),
            rate: None,
            fed_at: now,
            idle: false,
        }
    }

    /// A new source: the rate starts again.
    fn restart(&mut self, have: u64, now: Instant) {
        self.have = have;
        self.heard = now;
        self.sample = (now, have);
        self.rate = None;
    }

    fn observe(&mut self, have: u64, now: Instant) {
        self.have = have;
        self.heard = now;
        let (at, from) = self.sample;
        let dt = now.saturating_duration_since(at);
        if have < from {
            self.sample = (now, have);
            self.rate = None;
        } else if dt >= RATE_WINDOW {
            self.rate = Some((have - from) as f64 / dt.as_secs_f64());
            self.sample = (now, have);
        }
    }
}

#[derive(Debug, Default)]
struct Swarm {
    members: BTreeMap<NodeUrl, Member>,
    /// Blamed for a bad piece: never handed out again in this swarm.
    bad: BTreeSet<NodeUrl>,
    /// Blamed otherwise: not handed out until then.
    avoid: BTreeMap<NodeUrl, Instant>,
    /// The tracker's tick when last used (LRU).
    used: u64,
    /// What the parent has of the blob, as last told.
    feed: Feed,
    /// The parent's fill: where its pace is measured from (when, bytes), and the pace.
    fill_sample: Option<(Instant, u64)>,
    fill_rate: Option<f64>,
}

/// The swarms of every digest this berth tracks.
#[derive(Debug, Default)]
pub struct Tracker {
    swarms: HashMap<Digest, Swarm>,
    limits: Limits,
    tick: u64,
}

impl Tracker {
    pub fn new(limits: Limits) -> Tracker {
        Tracker {
            swarms: HashMap::new(),
            limits,
            tick: 0,
        }
    }

    /// How many swarms are tracked.
    pub fn swarms(&self) -> usize {
        self.swarms.len()
    }

    /// How many nodes are in the swarm of `digest` (holders and receivers).
    pub fn members(&self, digest: &Digest) -> usize {
        self.swarms.get(digest).map_or(0, |s| s.members.len())
    }

    /// `node` asks for a source of `digest`, having `have` verified bytes and `uploads` slots to
    /// serve others: it gets one (and gives up the one it had, if any).
    pub fn join(
        &mut self,
        digest: &Digest,
        node: &NodeUrl,
        have: u64,
        uploads: u32,
        fleet: &Fleet,
        now: Instant,
    ) -> Result<Assignment, Refused> {
        if !fleet.contains(node) {
            return Err(Refused::NotInFleet(node.clone()));
        }
        let (max_members, slots) = (self.limits.max_members, self.limits.parent_slots);
        let swarm = self.swarm(digest);
        swarm.expire(now);
        if !swarm.members.contains_key(node) && swarm.members.len() >= max_members {
            return Ok(Assignment::Parent);
        }
        let m = swarm
            .members
            .entry(node.clone())
            .or_insert_with(|| Member::new(have, false, now));
        m.restart(have, now);
        m.complete = false;
        m.source = None;
        m.idle = false;
        m.uploads = uploads.clamp(1, MAX_UPLOADS);
        Ok(swarm.assign(node, fleet, slots, now))
    }

    /// The parent tells what it has of `digest` now ([`Feed`]), before a node's call is
    /// applied: while it fills, the fill's pace is measured (over at least [`RATE_WINDOW`], as
    /// a receiver's); while it has nothing, every child of the parent that claims bytes or was
    /// named [`FETCH_GRACE`] ago did not fetch from it, and is marked idle.
    pub fn feed(&mut self, digest: &Digest, feed: Feed, now: Instant) {
        let swarm = self.swarm(digest);
        swarm.feed = feed;
        match feed {
            Feed::Filling(have) => match swarm.fill_sample {
                Some((at, from)) if have >= from => {
                    let dt = now.saturating_duration_since(at);
                    if dt >= RATE_WINDOW {
                        swarm.fill_rate = Some((have - from) as f64 / dt.as_secs_f64());
                        swarm.fill_sample = Some((now, have));
                    }
                }
                _ => swarm.fill_sample = Some((now, have)),
            },
            Feed::Cold => {
                for m in swarm.members.values_mut() {
                    if !m.complete
                        && m.source == Some(Src::Parent)
                        && (m.have > 0 || now.saturating_duration_since(m.fed_at) >= FETCH_GRACE)
                    {
                        m.idle = true;
                    }
                }
            }
            Feed::Unknown | Feed::Holds => {}
        }
    }

    /// `node` reports its progress on `digest` ([`Report`]). Answers a new source when the
    /// node needs one (it dropped its source, or its source left), else `None` (keep going, or
    /// it is complete).
    pub fn report(
        &mut self,
        digest: &Digest,
        node: &NodeUrl,
        report: Report<'_>,
        fleet: &Fleet,
        now: Instant,
    ) -> Result<Option<Assignment>, Refused> {
        let Report {
            have,
            complete,
            dropped,
        } = report;
        if !fleet.contains(node) {
            return Err(Refused::NotInFleet(node.clone()));
        }
        let slots = self.limits.parent_slots;
        let known = self
            .swarms
            .get(digest)
            .is_some_and(|s| s.members.contains_key(node));
        if !known {
            // The tracker forgot it (a restart, an expiry, an evicted swarm): a rejoin.
            if complete {
                self.hold(digest, node, have, fleet, now)?;
                return Ok(None);
            }
            return self
                .join(digest, node, have, DEFAULT_UPLOADS, fleet, now)
                .map(Some);
        }
        let swarm = self.swarm(digest);
        swarm.expire(now);
        let Some(m) = swarm.members.get_mut(node) else {
            // Expired just now: a rejoin.
            return self
                .join(digest, node, have, DEFAULT_UPLOADS, fleet, now)
                .map(Some);
        };
        m.observe(have, now);
        let current = m.source.clone();
        // A node's verified bytes all came through its source, which forwards only what it
        // verified: the source has at least as much, whatever it last reported.
        if let Some(Src::Node(s)) = &current
            && let Some(src) = swarm.members.get_mut(s)
            && src.have < have
        {
            src.have = have;
        }
        let m = swarm
            .members
            .get_mut(node)
            .expect("the reporter is a member: it was found above");
        if complete {
            m.complete = true;
            m.source = None;
        }
        if let Some((url, reason)) = dropped
            && current == Some(Src::Node(url.clone()))
        {
            swarm.blame(url, reason, now);
        }
        if complete {
            return Ok(None);
        }
        let source_gone = match &current {
            None => true,
            Some(Src::Parent) => false,
            Some(Src::Node(s)) => {
                let view = swarm.view(slots);
                !swarm.members.contains_key(s) || swarm.is_slow(s, &view) || !view.feeds(s)
            }
        };
        if dropped.is_some() || source_gone {
            if let Some(m) = swarm.members.get_mut(node) {
                m.source = None;
                // Its rate was its old source's pace: it is measured again under the new one
                // (else the children of a node just moved off a slow link would find it slow
                // at their next report and scatter, though it now runs at its new source's).
                m.restart(have, now);
            }
            return Ok(Some(swarm.assign(node, fleet, slots, now)));
        }
        Ok(None)
    }

    /// `node` holds the whole verified blob (it completed it, or has it from before): it becomes
    /// a holder.
    pub fn hold(
        &mut self,
        digest: &Digest,
        node: &NodeUrl,
        size: u64,
        fleet: &Fleet,
        now: Instant,
    ) -> Result<(), Refused> {
        if !fleet.contains(node) {
            return Err(Refused::NotInFleet(node.clone()));
        }
        let max_members = self.limits.max_members;
        let swarm = self.swarm(digest);
        swarm.expire(now);
        if !swarm.members.contains_key(node) && swarm.members.len() >= max_members {
            return Ok(());
        }
        let m = swarm
            .members
            .entry(node.clone())
            .or_insert_with(|| Member::new(size, true, now));
        m.restart(size, now);
        m.complete = true;
        m.source = None;
        Ok(())
    }

    /// `node` leaves the swarm of `digest` (it gave up, or evicted the blob).
    pub fn leave(&mut self, digest: &Digest, node: &NodeUrl) {
        if let Some(s) = self.swarms.get_mut(digest) {
            s.members.remove(node);
        }
    }

    /// The holders of `digest` the fleet knows, most recently heard first (for a node that asks
    /// who holds a blob, without a piece table).
    pub fn holders(&self, digest: &Digest, fleet: &Fleet, now: Instant) -> Vec<NodeUrl> {
        let Some(s) = self.swarms.get(digest) else {
            return Vec::new();
        };
        let mut h: Vec<(&NodeUrl, Instant)> = s
            .members
            .iter()
            .filter(|(u, m)| m.complete && fleet.contains(u) && s.usable(u, now) && alive(m, now))
            .map(|(u, m)| (u, m.heard))
            .collect();
        h.sort_by_key(|&(u, heard)| (Reverse(heard), u));
        h.into_iter().map(|(u, _)| u.clone()).collect()
    }

    /// Drops silent nodes, ended avoidances and swarms left with nothing to remember.
    pub fn sweep(&mut self, now: Instant) {
        self.swarms.retain(|_, s| {
            s.expire(now);
            !s.members.is_empty() || !s.bad.is_empty() || !s.avoid.is_empty()
        });
    }

    /// The swarm of `digest`, made if new (forgetting the least recently used one when full).
    fn swarm(&mut self, digest: &Digest) -> &mut Swarm {
        self.tick += 1;
        if !self.swarms.contains_key(digest) && self.swarms.len() >= self.limits.max_swarms {
            let oldest = self
                .swarms
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(d, _)| d.clone());
            if let Some(d) = oldest {
                self.swarms.remove(&d);
            }
        }
        let swarm = self.swarms.entry(digest.clone()).or_default();
        swarm.used = self.tick;
        swarm
    }
}

fn alive(m: &Member, now: Instant) -> bool {
    now.saturating_duration_since(m.heard) < EXPIRY
}

impl Swarm {
    /// Forgets silent nodes and ended avoidances.
    fn expire(&mut self, now: Instant) {
        self.members.retain(|_, m| alive(m, now));
        self.avoid.retain(|_, until| *until > now);
    }

    fn blame(&mut self, url: &NodeUrl, reason: Reason, now: Instant) {
        let until = match reason {
            Reason::BadPiece => {
                self.bad.insert(url.clone());
                self.avoid.remove(url);
                return;
            }
            Reason::Stall | Reason::Closed | Reason::Unreachable => now + AVOID,
            Reason::Busy => now + BUSY_AVOID,
            Reason::Starved => return,
        };
        let e = self.avoid.entry(url.clone()).or_insert(until);
        *e = (*e).max(until);
    }

    /// Not blamed: may be handed out.
    fn usable(&self, url: &NodeUrl, now: Instant) -> bool {
        !self.bad.contains(url) && self.avoid.get(url).is_none_or(|until| *until <= now)
    }

    /// Chooses `node`'s source by the rules in the module docs (the parent feeding at most
    /// `slots` nodes directly), and records it.
    fn assign(&mut self, node: &NodeUrl, fleet: &Fleet, slots: usize, now: Instant) -> Assignment {
        let have = self.members.get(node).map_or(0, |m| m.have);
        let view = self.view(slots);
        let depths = self.depths();
        // `node` and everything below it: a source among them would close a cycle.
        let mut below: BTreeSet<&NodeUrl> = BTreeSet::new();
        let mut todo = vec![node];
        while let Some(u) = todo.pop() {
            if below.insert(u) {
                todo.extend(view.children.get(u).into_iter().flatten().copied());
            }
        }
        struct Cand<'a> {
            url: &'a NodeUrl,
            have: u64,
            complete: bool,
            /// Its live receivers: each holds one of its upload slots.
            children: usize,
            /// Those that share its upload: its children but the slow links among them.
            sharing: usize,
            depth: usize,
        }
        let cands: Vec<Cand<'_>> = self
            .members
            .iter()
            .filter(|(u, m)| {
                !below.contains(u)
                    && fleet.contains(u)
                    && self.usable(u, now)
                    && alive(m, now)
                    && (m.complete || (m.source.is_some() && !self.is_slow(u, &view)))
                    && view.feeds(u)
            })
            .map(|(u, m)| {
                let children = view.children.get(u).map_or(&[][..], Vec::as_slice);
                Cand {
                    url: u,
                    have: m.have,
                    complete: m.complete,
                    children: children.len(),
                    sharing: children.iter().filter(|c| !self.is_slow(c, &view)).count(),
                    depth: depths.get(u).map_or(usize::MAX, |d| d.0),
                }
            })
            .filter(|c| c.children < self.members[c.url].uploads as usize)
            .collect();
        // Fewest children sharing its upload (a slow link takes little of it), then most
        // progress, then nearest a whole copy (so the chains of a cold start grow evenly), then
        // the URL (a stable answer).
        let best = |pred: &dyn Fn(&Cand<'_>) -> bool| {
            cands
                .iter()
                .filter(|c| pred(c))
                .min_by_key(|c| (c.sharing, Reverse(c.have), c.depth, c.url))
                .map(|c| (c.url.clone(), c.have, c.complete))
        };
        let chosen = best(&|c| c.complete).or_else(|| best(&|c| c.have > have));
        let chosen = match chosen {
            Some(c) => Some(c),
            None if view.parent_children < slots => None,
            None => best(&|c| c.have >= have),
        };
        let (src, answer) = match chosen {
            Some((url, have, complete)) => (
                Src::Node(url.clone()),
                Assignment::Node {
                    url,
                    have,
                    complete,
                },
            ),
            None => (Src::Parent, Assignment::Parent),
        };
        if let Some(m) = self.members.get_mut(node) {
            if src == Src::Parent {
                m.fed_at = now;
            }
            m.source = Some(src);
        }
        answer
    }
}

mod view;

#[cfg(test)]
mod tests;
