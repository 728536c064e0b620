//! One node's transfer of one blob, as a pure state machine: where its bytes come from, how far
//! they are verified, and what to do when a source lies, stalls or goes away.
//!
//! The state: the verified *frontier* (bytes checked against the piece table, or straight from
//! the parent), the bytes received past it, the current source, the hashes of whole pieces past
//! the frontier whose table entry is not known yet, and the route by which the next source is
//! found. The caller (the node's fill, later) does the I/O and feeds each event in; each call
//! answers the [`Action`]s to take. Time is passed in.
//!
//! The decisions:
//! - a piece complete from a peer: its hash known, checked: good moves the frontier (the bytes
//!   may now be forwarded to this node's own children and kept), bad drops the source and resumes
//!   at the frontier from another; not known yet, kept aside and the table asked for more
//!   ([`Action::NeedHashes`]); the pieces after it wait their turn;
//! - bytes from the parent are as trusted as its table: the frontier follows them;
//! - no byte and no word from the source for [`STALL`]: drop it (`stall`), resume at the
//!   frontier from a new source; a source that says it is alive but waiting for its own source
//!   is given [`STARVE`] before it is dropped (`starved`, not held against it);
//! - a body that breaks off (`closed`), a refusal (`busy`), no connection (`unreachable`): the
//!   same, with that reason;
//! - [`MAX_FAILURES`] sources failed in a row (or the tracker unreachable): the parent itself;
//!   the parent failing as often, or unreachable: the directory nodes' holders, checked only by
//!   the whole digest at the end (no table without the parent), a holder whose bytes fail it is
//!   dropped and the next one tried from the frontier; no holder left: fail, unless one of them
//!   was only busy (`429`): then the directory is asked again (the caller waits a little), at
//!   most [`DIRECTORY_ROUNDS`] times, and a busy holder may be tried again.
//!
//! Timings, and why: [`STALL`] is 2 s. A live source at any cap that matters sends a read's worth
//! of bytes in milliseconds, and Linux retransmits a lost segment within its 200 ms minimum RTO
//! (1 s for a lost SYN): 2 s is past every ordinary hiccup, while a dead or wedged peer costs its
//! child at most 2 s plus one tracker round trip, the budget. A node whose own source
//! failed says so to its children (over HTTP, a body that ends clean and short of the blob, each
//! tick it has nothing new: [`transfer`](super::transfer)) so they do not drop it too: without
//! that, the whole chain below a stall would drop its sources at once and land on the parent.
//! [`STARVE`] (15 s) is the time such a node has before its children look elsewhere. It is also
//! what a node deep in a fresh chain waits for its first byte: the chain forwards verified
//! pieces, so the node k hops down gets its first piece about k piece-times after the head (1
//! MiB at 25 Mbit/s: a third of a second a hop). At 4 s (twice STALL, once enough for a source
//! to find a new one) the bed's 32 nodes at 25 Mbit/s dropped 24 such sources as `starved`,
//! re-joined as branches that split uploads, and took p99 3.73x one node's pull (1.86 blobs out
//! of the central berth); at 15 s, 1.27x, 1.02 blobs, nothing dropped (BENCHMARKS.md). What the
//! longer wait costs: a source that is itself stuck without a source for longer than its STALL
//! plus a tracker round trip keeps its children up to 15 s; one that died or broke off costs
//! them nothing more (`closed`, `unreachable`, `stall`), and a slow link's children are moved
//! by the tracker at their reports, not by starving.
//! [`REPORT_EVERY`] (5 s) keeps the tracker's view of progress fresh enough to choose sources
//! ahead and to measure rates (slow links), and a node well inside the tracker's expiry (30 s),
//! at one small request per receiving node every 5 s. The first report under a new source comes
//! sooner, at [`FIRST_REPORT`] (2.5 s, just past the tracker's 2 s rate window): the tracker
//! measures a rate from the assignment to a report, so a slow link is known 2.5 s into a pull,
//! before [`STARVE`] (4 s then) sent the nodes starving below it back to the tracker. With the first
//! report at 5 s, they came back at 4 s, were placed by progress alone (the slow link not yet
//! known), and re-joined the chain behind it or split a fast node's upload (the bed, 16 nodes:
//! the main chain fell from 5.3 to 2-3 MiB/s). The cost: one more small request per node per
//! source.
//!
//! Rule of dependency: uses `swarm::pieces`, `swarm::node` and the tracker's [`Reason`]; no I/O.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::node::NodeUrl;
use super::pieces::{Check, Layout, PieceHash, PieceHasher, PieceTable};
use super::tracker::Reason;

/// No byte and no word from a source for this long: it stalled.
pub const STALL: Duration = Duration::from_secs(2);

/// How long a source may say it waits for its own source before it is left.
pub const STARVE: Duration = Duration::from_secs(15);

/// Sources failed in a row before the parent is asked directly (and parent failures before the
/// directory is).
pub const MAX_FAILURES: u32 = 3;

/// How many times the directory is asked again when every holder it named was busy (`429`):
/// each holder serves `max_uploads` nodes at once, and with the parent down the nodes that
/// complete become holders too, so a node that waits a little finds a free one.
pub const DIRECTORY_ROUNDS: u32 = 5;

/// How often a receiving node reports its progress to the tracker at least.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// When a node reports first after a new source is named: just past the tracker's
/// [`RATE_WINDOW`](super::tracker::RATE_WINDOW), so that its rate under that source is known
/// then, long before a node below a slow link starves ([`STARVE`]).
pub const FIRST_REPORT: Duration = Duration::from_millis(2500);

/// Where the bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The central berth: trusted like its table.
    Parent,
    /// A node the tracker named: every piece checked against the table.
    Node(NodeUrl),
    /// A holder the directory named (the parent unreachable): only the whole digest checks it.
    Holder(NodeUrl),
}

/// How the next source is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Tracker,
    Parent,
    Directory,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Report to the tracker (`have` = the frontier) and take the source it answers, if any.
    AskTracker { dropped: Option<(NodeUrl, Reason)> },
    /// Report progress to the tracker; keep the source.
    Report,
    /// Fetch from `source`, from byte `from` on (the frontier; after a wait, the last byte
    /// received), dropping any other fetch.
    Fetch { source: Source, from: u64 },
    /// Bytes `..upto` are verified: they may be kept and forwarded to this node's children.
    Verified { upto: u64 },
    /// Ask for the piece table from piece `first` on.
    NeedHashes { first: u32 },
    /// Ask the directory nodes who holds the blob.
    AskDirectory,
    /// Every byte is in: check the whole digest and say how it went
    /// ([`Transfer::digest_checked`]).
    CheckDigest,
    /// Done: the blob is complete and verified.
    Done,
    /// Nothing left to try (the parent down, no holder left): the pull fails.
    Fail,
}

/// One node's transfer of one blob.
pub struct Transfer {
    layout: Layout,
    route: Route,
    source: Option<Source>,
    /// Verified bytes.
    frontier: u64,
    /// The hasher as it was at the frontier, to resume there.
    at_frontier: PieceHasher,
    /// The hasher at the last byte received.
    hasher: PieceHasher,
    /// Whole pieces received past the frontier whose hash the table does not have yet.
    pending: VecDeque<(u32, PieceHash)>,
    /// When the source last sent a byte or a word.
    heard: Instant,
    /// Since when the source says it waits for its own source.
    waiting_since: Option<Instant>,
    /// Sources failed in a row, since the frontier last moved.
    failures: u32,
    /// Holders the directory named, not tried yet, and the ones tried (a busy one is not: it may
    /// be free at the next round).
    holders: VecDeque<NodeUrl>,
    tried: BTreeSet<NodeUrl>,
    /// Rounds of the directory asked again, and whether a holder of this round was busy.
    rounds: u32,
    busy: bool,
    reported: Instant,
    /// The time from `reported` to the next report: [`FIRST_REPORT`] under a new source, then
    /// [`REPORT_EVERY`].
    report_in: Duration,
    finished: bool,
}

impl Transfer {
    /// A transfer of a blob of `size` bytes, starting at `now`: ask the tracker first.
    pub fn start(size: u64, now: Instant) -> (Transfer, Vec<Action>) {
        let layout = Layout::new(size);
        let hasher = PieceHasher::new(layout);
        let t = Transfer {
            layout,
            route: Route::Tracker,
            source: None,
            frontier: 0,
            at_frontier: hasher.snapshot(),
            hasher,
            pending: VecDeque::new(),
            heard: now,
            waiting_since: None,
            failures: 0,
            holders: VecDeque::new(),
            tried: BTreeSet::new(),
            rounds: 0,
            busy: false,
            reported: now,
            report_in: FIRST_REPORT,
            finished: false,
        };
        (t, vec![Action::AskTracker { dropped: None }])
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Verified bytes.
    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// Bytes received (verified or not).
    pub fn received(&self) -> u64 {
        self.hasher.offset()
    }

    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    pub fn route(&self) -> Route {
        self.route
    }

    /// How many times the directory was asked again after a round of busy holders (the caller
    /// waits a little before each).
    pub fn directory_rounds(&self) -> u32 {
        self.rounds
    }

    /// The tracker (or the parent, or the directory) named a source: it is read from the
    /// frontier, so the bytes received past it, unchecked, are let go with the old source (a
    /// tracker's answer to a progress report may move a node mid-piece: had the hasher kept
    /// them, the new source's bytes would have been counted after them, and the frontier would
    /// have run ahead of the bytes the fill got).
    pub fn assigned(&mut self, source: Source, now: Instant) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        self.hasher = self.at_frontier.snapshot();
        self.pending.clear();
        self.source = Some(source.clone());
        self.heard = now;
        self.waiting_since = None;
        self.reported = now;
        self.report_in = FIRST_REPORT;
        vec![Action::Fetch {
            source,
            from: self.frontier,
        }]
    }

    /// The tracker did not answer, or the piece table does not come (a node's bytes cannot be
    /// checked): the parent directly, from the frontier (the bytes past it, unchecked, are let
    /// go, and the source with them, unblamed).
    pub fn tracker_unreachable(&mut self, now: Instant) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        self.route = Route::Parent;
        self.failures = 0;
        self.hasher = self.at_frontier.snapshot();
        self.pending.clear();
        self.assigned(Source::Parent, now)
    }

    /// The parent did not answer (no connection, or an error): the directory.
    pub fn parent_unreachable(&mut self) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        self.enter_directory()
    }

    /// The directory nodes answered these holders (best first).
    pub fn holders(&mut self, holders: Vec<NodeUrl>, now: Instant) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        self.holders = holders
            .into_iter()
            .filter(|h| !self.tried.contains(h))
            .collect();
        self.next_holder(now)
    }

    /// Bytes from the current source, in order from where it was asked to start.
    pub fn bytes(&mut self, chunk: &[u8], table: &PieceTable, now: Instant) -> Vec<Action> {
        let Some(source) = self.source.clone() else {
            // A late chunk of a source already dropped.
            return Vec::new();
        };
        self.heard = now;
        self.waiting_since = None;
        let mut done = Vec::new();
        if self.hasher.update(chunk, |k, h| done.push((k, h))).is_err() {
            // More bytes than the blob has: a lying source, whatever its kind.
            return self.drop_source(Reason::BadPiece, now);
        }
        let mut out = Vec::new();
        match source {
            Source::Parent => {
                self.frontier = self.hasher.offset();
                self.at_frontier = self.hasher.snapshot();
                self.failures = 0;
                out.push(Action::Verified {
                    upto: self.frontier,
                });
            }
            Source::Node(_) => {
                let asked = self.pending.is_empty();
                self.pending.extend(done);
                out.extend(self.verify_pending(table, now));
                if asked
                    && let Some(&(k, _)) = self.pending.front()
                    && !matches!(
                        out.last(),
                        Some(Action::Fetch { .. } | Action::AskTracker { .. })
                    )
                {
                    out.push(Action::NeedHashes { first: k });
                }
            }
            // No table: the bytes wait for the whole digest.
            Source::Holder(_) => {}
        }
        out.extend(self.maybe_complete());
        out
    }

    /// The table grew (or the parent answered without new hashes): check the pieces that
    /// waited for it, and ask again for those still unknown (the parent's answer waits a while
    /// for hashes it does not have yet, so this is no busy loop).
    pub fn hashes(&mut self, table: &PieceTable, now: Instant) -> Vec<Action> {
        let mut out = self.verify_pending(table, now);
        if let Some(&(k, _)) = self.pending.front() {
            out.push(Action::NeedHashes { first: k });
        }
        out.extend(self.maybe_complete());
        out
    }

    /// The source is alive but has nothing new yet (it waits for its own source; over HTTP, its
    /// body ended clean and short): ask it again from the last byte received. (Its answer waits
    /// a tick for new bytes, so this is no busy loop; [`Transfer::tick`] leaves it after
    /// [`STARVE`].)
    pub fn waiting(&mut self, now: Instant) -> Vec<Action> {
        let Some(source) = self.source.clone() else {
            return Vec::new();
        };
        if self.finished {
            return Vec::new();
        }
        self.heard = now;
        self.waiting_since.get_or_insert(now);
        vec![Action::Fetch {
            source,
            from: self.received(),
        }]
    }

    /// The source's body broke off.
    pub fn closed(&mut self, now: Instant) -> Vec<Action> {
        self.failed(Reason::Closed, now)
    }

    /// The source failed: `Busy` for a 429, `Unreachable` for no connection or an error answer.
    /// Once every byte is in, the source has nothing left to send: its connection closing, or
    /// its silence while the table or the digest check is awaited, is no failure.
    pub fn failed(&mut self, reason: Reason, now: Instant) -> Vec<Action> {
        if self.source.is_none() || self.finished || self.hasher.is_done() {
            return Vec::new();
        }
        self.drop_source(reason, now)
    }

    /// Time passed: a stall, a starved source, a report due.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        if self.source.is_some() && !self.hasher.is_done() {
            if let Some(since) = self.waiting_since
                && now.saturating_duration_since(since) >= STARVE
            {
                return self.drop_source(Reason::Starved, now);
            }
            if self.waiting_since.is_none() && now.saturating_duration_since(self.heard) >= STALL {
                return self.drop_source(Reason::Stall, now);
            }
        }
        if self.route == Route::Tracker
            && now.saturating_duration_since(self.reported) >= self.report_in
        {
            self.reported = now;
            self.report_in = REPORT_EVERY;
            return vec![Action::Report];
        }
        Vec::new()
    }

    /// The whole digest was checked after [`Action::CheckDigest`].
    pub fn digest_checked(&mut self, ok: bool, now: Instant) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        if ok {
            self.finished = true;
            self.frontier = self.layout.size();
            self.source = None;
            return vec![
                Action::Verified {
                    upto: self.frontier,
                },
                Action::Done,
            ];
        }
        match self.source.clone() {
            // Only a holder's bytes were unchecked: it lied; the next holder, from the frontier.
            Some(Source::Holder(_)) => self.drop_source(Reason::BadPiece, now),
            // Every piece matched the table, or came from the parent, and the digest does not:
            // the table is wrong, which no other source can fix.
            _ => {
                self.finished = true;
                vec![Action::Fail]
            }
        }
    }

    /// Checks the pending pieces in order against the table.
    fn verify_pending(&mut self, table: &PieceTable, now: Instant) -> Vec<Action> {
        let mut moved = false;
        while let Some(&(k, h)) = self.pending.front() {
            match table.verify_hash(k, &h) {
                Check::Good => {
                    self.pending.pop_front();
                    self.frontier = self.layout.range(k).end;
                    moved = true;
                }
                Check::Unknown => break,
                Check::Bad => {
                    let mut out = self.moved(moved);
                    out.extend(self.drop_source(Reason::BadPiece, now));
                    return out;
                }
            }
        }
        self.moved(moved)
    }

    fn moved(&mut self, moved: bool) -> Vec<Action> {
        if !moved {
            return Vec::new();
        }
        self.failures = 0;
        self.at_frontier = if self.frontier == self.hasher.offset() {
            self.hasher.snapshot()
        } else {
            PieceHasher::at_boundary(self.layout, self.frontier)
                .expect("a verified piece ends at a boundary")
        };
        vec![Action::Verified {
            upto: self.frontier,
        }]
    }

    /// Every byte in: verified ones are done but for the digest; a holder's wait for it.
    fn maybe_complete(&mut self) -> Vec<Action> {
        if self.hasher.is_done() && self.pending.is_empty() && self.source.is_some() {
            vec![Action::CheckDigest]
        } else {
            Vec::new()
        }
    }

    /// Leaves the current source for `reason`, back to the frontier, and finds the next one.
    fn drop_source(&mut self, reason: Reason, now: Instant) -> Vec<Action> {
        let Some(source) = self.source.take() else {
            return Vec::new();
        };
        self.hasher = self.at_frontier.snapshot();
        self.pending.clear();
        self.waiting_since = None;
        self.failures += 1;
        match source {
            Source::Node(url) => {
                if self.route == Route::Tracker && self.failures < MAX_FAILURES {
                    self.reported = now;
                    vec![Action::AskTracker {
                        dropped: Some((url, reason)),
                    }]
                } else {
                    self.route = Route::Parent;
                    self.failures = 0;
                    self.assigned(Source::Parent, now)
                }
            }
            Source::Parent => {
                if self.failures < MAX_FAILURES {
                    self.assigned(Source::Parent, now)
                } else {
                    self.enter_directory()
                }
            }
            Source::Holder(url) => {
                if reason == Reason::Busy {
                    self.busy = true;
                } else {
                    self.tried.insert(url);
                }
                self.next_holder(now)
            }
        }
    }

    fn enter_directory(&mut self) -> Vec<Action> {
        self.route = Route::Directory;
        self.source = None;
        self.hasher = self.at_frontier.snapshot();
        self.pending.clear();
        vec![Action::AskDirectory]
    }

    fn next_holder(&mut self, now: Instant) -> Vec<Action> {
        match self.holders.pop_front() {
            Some(h) => self.assigned(Source::Holder(h), now),
            // Every holder of this round was tried, and one of them was only busy.
            None if self.busy && self.rounds < DIRECTORY_ROUNDS => {
                self.rounds += 1;
                self.busy = false;
                self.source = None;
                vec![Action::AskDirectory]
            }
            None => {
                self.finished = true;
                self.source = None;
                vec![Action::Fail]
            }
        }
    }
}

#[cfg(test)]
mod tests;
