//! The fleet's swarm: how the node berths of a fleet share a blob they pull at once, so that N
//! nodes pulling a fresh blob take about one node's pull and about one blob of the central
//! berth's bandwidth. Pure logic, the protocol's types and the node-to-node transfer as
//! functions; the routes, the fleet proof and the wiring into the fill live elsewhere.
//!
//! - [`node`]: a node's identity (its origin URL) and the fleet's known nodes.
//! - [`pieces`]: the piece size rule, the range arithmetic, the piece table and its hasher.
//! - [`tracker`]: the swarm of each digest on the central berth, and each node's source.
//! - [`select`]: one node's transfer as a state machine (frontier, source, decisions, timings).
//! - [`directory`]: the nodes that know the holders of a digest when the parent is down.
//! - [`protocol`]: the JSON bodies, parsed strictly; URLs only among the fleet's nodes.
//! - [`transfer`]: a node serving its verified bytes to peers (429 at `max_uploads`, a short
//!   clean end as the "waiting" word) and fetching from one.
//!
//! # The design
//! The central berth (the *parent*) fills a blob from upstream once, as any berth does, and
//! while it writes it, hashes it in pieces (1 MiB, doubled until at most 4096 pieces; see
//! [`pieces`]). For each digest it keeps a swarm ([`tracker`]): who holds the blob, who is
//! receiving it, how far each has verified, and who feeds whom. A node that misses the blob asks
//! the tracker for a source and streams from it with `Range`, from its verified frontier on; each
//! node serves the bytes it has verified to the nodes that asked it, while it is still receiving
//! them. Manifests and tags never travel between nodes: they come from the parent, so one policy
//! and one access decision govern them.
//!
//! What the others taught (and where berth differs):
//! - Uber's Kraken: an origin makes the piece metainfo, a tracker hands out peers, agents
//!   blacklist a peer after a failed connection for a while. berth's parent is both origin and
//!   tracker, the piece table is made during the fill (not after it), so nodes start before the
//!   parent has the whole blob, and a bad piece bans a peer for the whole digest, for everyone.
//! - Dragonfly: a scheduler picks *parents* for each peer by free upload slots and progress, and
//!   filters "bad nodes" by piece cost (last piece over 20x the mean, or mean + 3 sigma); a peer
//!   that failed a child is not offered to it again; after too many failures the peer goes back
//!   to source. berth's tracker chooses by slots, then progress ([`tracker`]); a node that
//!   fails too many sources goes to the parent ([`select`]).
//! - BitTorrent: rarest-first spreads pieces so that every peer uploads something others lack,
//!   and endgame mode asks several peers for the last pieces. berth keeps one source per node at a
//!   time and streams in order instead: a container runtime reads a layer front to back, and the
//!   node's own client is served while the pull goes on (stream-while-verify), which a random
//!   piece order would stall. In-order chains give every node an upload partner anyway (its
//!   child), which is what rarest-first is for.
//! - Spegel: no content check between peers (wrong content served), stalls on slow peers, a
//!   simultaneous cold rollout no faster than without it (24.1 s against 25.8 s). berth checks
//!   every piece against the parent's table before forwarding it, drops a silent peer after 2 s,
//!   and builds chains for the cold start.
//!
//! # Why forward only verified pieces
//! A node forwards to its children only the pieces it has checked against the table (or that
//! came from the parent itself). A bad piece at a node is therefore always its own source's
//! fault: blame is clean, one report bans exactly the liar, and a lie never spreads past one hop.
//! The cost is one piece of latency per hop (the piece must be whole before it is checked): at
//! 1 MiB and 100 MB/s, about 10 ms per hop. A node still checks the whole digest at the end; the
//! table only finds a liar early, at its first bad piece, instead of after the whole blob.
//!
//! # Why chains for a simultaneous cold start
//! When N nodes ask for a blob nobody has yet, the parent serves `parent_slots` of them directly
//! (`[fleet] parent_slots`; [`tracker::PARENT_SLOTS`], 1, by default), and each later node is
//! given the receiver with the fewest children: the nodes form that many chains below the parent.
//! In a chain every link runs at the cap C: each node uploads to exactly one child at its full
//! rate, where a tree of fan-out k would give each child C/k. The parent sends `parent_slots`
//! copies of the blob whatever N is. One slot by default because a parent whose link is no faster
//! than a node's would give each of k heads C/k, and every chain below them would run at that
//! (the bed measured p99 2x with two heads); a parent with a link k times a node's may take k.
//!
//! Expected time, for a blob of S bytes, N nodes, a cap C on every link, pieces of P bytes, and
//! k parent slots, each stream out of the parent at C:
//!
//! ```text
//! T(N) ~ S/C + (ceil(N/k) - 1) * P/C + a tracker round trip
//! ```
//!
//! The second term is the chain's depth, one piece per hop. For S = 256 MiB, P = 1 MiB,
//! C = 100 MB/s, k = 1: S/C = 2.7 s; N = 16 adds 15 hops, 0.16 s (1.06x one node's pull); N = 32
//! adds 0.33 s (1.12x); N = 1000 adds 10.4 s (4.9x; with k = 2, 2.9x). The depth term reaches
//! the blob term at N ~ k S/P (256 here). Past that, the remedies are more parent slots (more
//! copies out of the parent, shallower chains) or a node taking alternate pieces from two sources
//! (halving the depth at the same per-link rate); the second is not built yet. Late joiners get
//! holders (complete nodes) first, fewest children first, so a rollout spread over time is a tree
//! of holders, not a chain.
//!
//! A chain is as fast as its slowest link: one node with a 10x slower link slows every node
//! below it. The tracker measures each receiver's rate from its reports and treats one that is
//! [`tracker::SLOW_RATIO`] (4) times slower than what feeds it as a *slow link*: it gets no
//! children, and its children are moved at their next report (to a receiver ahead, at worst a
//! second child of a fast node: a fan-out of two beats a chain at a tenth of the cap). What feeds
//! a child of the parent is measured by the parent's own fill's pace, so a slow node at the head
//! of the chain is found too; it keeps its stream, and gives its parent slot back to its child
//! ([`tracker`]). The rate is measured from a node's assignment to its report, at least
//! [`tracker::RATE_WINDOW`] (2 s) apart, and a node reports first [`select::FIRST_REPORT`]
//! (2.5 s) after a source is named, then every [`select::REPORT_EVERY`] (5 s): a slow link is
//! found about 2.5 s into a pull (7.5 s when its child happened to report before it), before
//! the nodes below it starve ([`select::STARVE`], 15 s); a faster rule would need the child to
//! judge its source's pace itself, which it cannot tell from its source starving. STARVE also
//! bounds the chain's depth term for a node's first byte, `(depth) * P/C`: at 15 s, 44 hops at
//! 25 Mbit/s (the bed's 32 nodes need 31), 1,800 at 1 Gbit/s; past it, a healthy deep chain's
//! tail would give up its source as starved and re-join as a branch.
//!
//! # What a lying or stalling peer costs
//! - A peer that sends a wrong byte: the rest of that piece (at most one piece, P bytes) and a
//!   tracker round trip; it is then never handed out again for that digest, and the node resumes
//!   at its frontier from another source.
//! - A peer that stops sending: [`select::STALL`] (2 s) and a round trip to its child; the child
//!   resumes at its frontier from a new source. Its own children do not drop it: it tells them it
//!   waits for its source, and they give it [`select::STARVE`] to find one.
//! - A peer that dies: its children see the connection close at once: a round trip.
//! - A peer that lies about its progress to the tracker: its children wait for bytes it does
//!   not have, then leave it after a stall, as for a silent peer. At a cold start (the parent
//!   has nothing yet) a node that claims bytes, or takes the parent's slot and does not fetch
//!   within [`tracker::FETCH_GRACE`], loses that slot to the next node that asks, and no holder
//!   is handed out before someone fetches from the parent (no piece table could come): the
//!   nodes below it move at their next report, which a second of missing table brings.
//! - A node that reports an innocent peer: only its own current source can be blamed, so it can
//!   ban one peer per source it is given, for one digest.
//! - The parent down: nodes that hold the blob still serve it; a node that misses it asks the
//!   digest's directory nodes ([`directory`]) for holders and checks the whole digest.
//!
//! Rule of dependency: a leaf beside `oci`: it uses `oci` (digests), `cluster::ring` (the
//! rendezvous weight, in `directory`), sha2, url and serde, hyper and tokio (in `transfer`); it
//! never calls the mirror, the fill, the store, the upstream or the HTTP layer, and nothing of
//! `fleet` (the node mode uses it).

pub mod directory;
pub mod node;
pub mod pieces;
pub mod protocol;
pub mod select;
pub mod tracker;
pub mod transfer;
