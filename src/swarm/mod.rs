//! The fleet's swarm: how the node berths of a fleet share a blob they pull at once. Pure logic
//! and the protocol's types; the HTTP wiring lives elsewhere.
//!
//! - [`node`]: a node's identity (its origin URL) and the fleet's known nodes.
//! - [`pieces`]: the piece size rule, the range arithmetic, the piece table and its hasher.
//! - [`tracker`]: the swarm of each digest on the central berth, and each node's source.
//! - [`select`]: one node's transfer as a state machine (frontier, source, decisions, timings).
//! - [`directory`]: the nodes that know the holders of a digest when the parent is down.
//!
//! Rule of dependency: a leaf beside `oci`: it uses `oci` (digests),
//! `cluster::ring` (the rendezvous weight, in `directory`), sha2 and url; it never calls
//! the mirror, the fill, the store, the upstream or the HTTP layer, and nothing of `fleet` (the
//! node mode uses it).

pub mod directory;
pub mod node;
pub mod pieces;
pub mod select;
pub mod tracker;
