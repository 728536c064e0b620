//! Finding a holder without the central berth: for each digest, [`DIRECTORY_NODES`] nodes of the
//! fleet, chosen by rendezvous hashing of the digest over the node set, keep a list of the nodes
//! that hold it ([`Book`]).
//!
//! A node that completes a blob tells that digest's directory nodes
//! (`PUT /_berth/fleet/v1/holders/<digest>`); a node that cannot reach its parent (the central
//! berth down) asks them for holders (`GET` of the same path), and fetches from each in turn,
//! checking the whole digest at the end (there is no piece table without the parent: a liar is
//! found at the end and the next holder tried). The I/O is `fill::swarm`'s.
//!
//! Why rendezvous over the node set: every node computes the same directory nodes from the same
//! set with no coordination, and a node joining or leaving the set moves only the digests whose
//! directory it enters or leaves (each other node's weight is unchanged), so the lists kept by
//! the others stay where they are. The weight is `cluster::ring`'s (one rule for both rings).
//! Why three: a node restarted or drained leaves two that still answer, and a holder that tells
//! three costs three small requests per completed blob. Two nodes whose views of the set differ
//! (a DNS answer moments apart) may ask different directories: a miss costs the pull the parent
//! it could not reach anyway, never a wrong byte.
//!
//! Rule of dependency: uses `oci::Digest`, `cluster::ring` (the weight function) and
//! `swarm::node`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::node::{Fleet, NodeUrl};
use crate::cluster::ring;
use crate::oci::Digest;

/// How many nodes keep the holders of each digest.
pub const DIRECTORY_NODES: usize = 3;

/// How many holders a directory node keeps per digest (the most recent ones).
pub const MAX_HOLDERS: usize = 16;

/// How long a holder's word is kept: past it, the node may have evicted the blob (it tells again
/// each time it completes one, and a holder that no longer has it answers 404: the next is
/// tried).
pub const HOLDER_TTL: Duration = Duration::from_secs(24 * 3600);

/// The directory nodes of `digest` in `fleet`, in preference order.
pub fn directory(digest: &Digest, fleet: &Fleet) -> Vec<NodeUrl> {
    let ids: Vec<String> = fleet.iter().map(|n| n.as_str().to_owned()).collect();
    let nodes: Vec<&NodeUrl> = fleet.iter().collect();
    ring::rank(&ids, digest, |_| true)
        .into_iter()
        .take(DIRECTORY_NODES)
        .map(|i| nodes[i].clone())
        .collect()
}

/// What a directory node keeps: holders by digest, bounded.
#[derive(Debug)]
pub struct Book {
    holders: HashMap<Digest, VecDeque<(NodeUrl, Instant)>>,
    /// Digests by first entry, oldest first (to forget the oldest when full).
    order: VecDeque<Digest>,
    max_digests: usize,
}

impl Book {
    /// A book of at most `max_digests` digests (each at most [`MAX_HOLDERS`] holders).
    pub fn new(max_digests: usize) -> Book {
        Book {
            holders: HashMap::new(),
            order: VecDeque::new(),
            max_digests: max_digests.max(1),
        }
    }

    /// How many digests are kept.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// `node` holds `digest` (as of `now`).
    pub fn add(&mut self, digest: &Digest, node: NodeUrl, now: Instant) {
        if !self.holders.contains_key(digest) {
            while self.holders.len() >= self.max_digests {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.holders.remove(&old);
            }
            self.order.push_back(digest.clone());
        }
        let list = self.holders.entry(digest.clone()).or_default();
        list.retain(|(n, _)| *n != node);
        list.push_front((node, now));
        list.truncate(MAX_HOLDERS);
    }

    /// The holders of `digest` known to the fleet, most recent first, none older than
    /// [`HOLDER_TTL`].
    pub fn holders(&self, digest: &Digest, fleet: &Fleet, now: Instant) -> Vec<NodeUrl> {
        self.holders.get(digest).map_or_else(Vec::new, |l| {
            l.iter()
                .filter(|(n, at)| {
                    fleet.contains(n) && now.saturating_duration_since(*at) < HOLDER_TTL
                })
                .map(|(n, _)| n.clone())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize) -> NodeUrl {
        format!("http://10.0.{}.{}:5000", i / 250, i % 250 + 1)
            .parse()
            .unwrap()
    }

    fn fleet(range: std::ops::Range<usize>) -> Fleet {
        Fleet::new(range.map(node))
    }

    fn digest(n: u32) -> Digest {
        Digest::of(&n.to_be_bytes())
    }

    #[test]
    fn three_distinct_nodes_stable_for_the_same_set() {
        let f = fleet(0..20);
        let reversed = Fleet::new((0..20).rev().map(node));
        for n in 0..100 {
            let d = digest(n);
            let dir = directory(&d, &f);
            assert_eq!(dir.len(), DIRECTORY_NODES);
            let mut uniq = dir.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), DIRECTORY_NODES);
            assert!(dir.iter().all(|n| f.contains(n)));
            // The same set, built in another order, on another call: the same answer.
            assert_eq!(directory(&d, &reversed), dir);
        }
    }

    #[test]
    fn a_small_fleet_is_its_own_directory() {
        let d = digest(1);
        assert!(directory(&d, &Fleet::default()).is_empty());
        assert_eq!(directory(&d, &fleet(0..1)), vec![node(0)]);
        let mut two = directory(&d, &fleet(0..2));
        two.sort();
        assert_eq!(two, vec![node(0), node(1)]);
    }

    #[test]
    fn one_node_more_or_less_moves_few_digests() {
        let small = fleet(0..20);
        let big = fleet(0..21);
        let without_5 = Fleet::new((0..20).filter(|&i| i != 5).map(node));
        let n = 3000;
        let (mut moved_in, mut moved_out) = (0, 0);
        for i in 0..n {
            let d = digest(i);
            let before = directory(&d, &small);
            // Adding node 20 changes a digest's directory only by putting node 20 in it.
            let after = directory(&d, &big);
            if after != before {
                moved_in += 1;
                assert!(after.contains(&node(20)), "{d}");
                let rest: Vec<_> = after.iter().filter(|n| **n != node(20)).collect();
                assert!(rest.iter().all(|n| before.contains(n)), "{d}");
            }
            // Removing node 5 changes only the directories it was in.
            let after = directory(&d, &without_5);
            if after != before {
                moved_out += 1;
                assert!(before.contains(&node(5)), "{d}");
                assert!(
                    before
                        .iter()
                        .filter(|n| **n != node(5))
                        .all(|n| after.contains(n)),
                    "{d}"
                );
            }
        }
        // Expected 3/21 and 3/20 of the digests (about 430 and 450): well under a quarter.
        for moved in [moved_in, moved_out] {
            assert!((300..=600).contains(&moved), "{moved_in} {moved_out}");
        }
    }

    #[test]
    fn the_book_keeps_recent_holders_of_the_fleet() {
        let f = fleet(0..40);
        let d = digest(1);
        let t0 = Instant::now();
        let mut b = Book::new(10);
        assert!(b.is_empty());
        b.add(&d, node(1), t0);
        b.add(&d, node(2), t0);
        // Telling again moves a holder to the front, once.
        b.add(&d, node(1), t0);
        assert_eq!(b.holders(&d, &f, t0), vec![node(1), node(2)]);
        // A node that left the fleet is not answered.
        assert_eq!(b.holders(&d, &fleet(2..3), t0), vec![node(2)]);
        // Old words expire.
        assert_eq!(b.holders(&d, &f, t0 + HOLDER_TTL), Vec::<NodeUrl>::new());
        // At most MAX_HOLDERS, the most recent.
        for i in 0..30 {
            b.add(&d, node(i), t0);
        }
        let h = b.holders(&d, &f, t0);
        assert_eq!(h.len(), MAX_HOLDERS);
        assert_eq!(h[0], node(29));
        assert_eq!(b.holders(&digest(2), &f, t0), Vec::<NodeUrl>::new());
    }

    #[test]
    fn the_book_forgets_the_oldest_digest_when_full() {
        let f = fleet(0..4);
        let t0 = Instant::now();
        let mut b = Book::new(2);
        b.add(&digest(1), node(0), t0);
        b.add(&digest(2), node(0), t0);
        b.add(&digest(3), node(0), t0);
        assert_eq!(b.len(), 2);
        assert!(b.holders(&digest(1), &f, t0).is_empty());
        assert_eq!(b.holders(&digest(3), &f, t0), vec![node(0)]);
    }
}
