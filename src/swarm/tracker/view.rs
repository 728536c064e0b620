//! The tracker's view of one swarm: who feeds whom, which children of the parent it no longer
//! counts against its slots (idle or slow heads), which receivers are slow links, how far each
//! member is from a whole copy, and, while the parent has nothing, whose bytes will come. Computed
//! once per choice, in one pass over the swarm (see the module docs of `swarm::tracker`).
//!
//! Rule of dependency: part of `swarm::tracker` (its swarm and members); nothing else.

use std::collections::{BTreeSet, HashMap};

use super::{Feed, Member, SLOW_LAG, SLOW_RATIO, Src, Swarm};
use crate::swarm::node::NodeUrl;

impl Swarm {
    /// A receiver much slower than its share of what feeds it (its source's rate, or for a
    /// child of a holder the swarm's best, divided among the source's children): its own link is
    /// the bottleneck, so it should feed nobody. A child of the parent is one if the view
    /// demoted it (measured against what the parent can send, within the parent's slots).
    pub(super) fn is_slow(&self, url: &NodeUrl, view: &View<'_>) -> bool {
        let Some(m) = self.members.get(url) else {
            return false;
        };
        let Some(rate) = m.rate.filter(|_| !m.complete) else {
            return view.demoted.contains(url);
        };
        let (feed, siblings) = match &m.source {
            Some(Src::Node(s)) => {
                let (feed, ahead) = match self.members.get(s) {
                    Some(src) if !src.complete => (src.rate.unwrap_or(0.0), src.have),
                    Some(src) => (view.best, src.have),
                    None => (view.best, u64::MAX),
                };
                if ahead.saturating_sub(m.have) <= SLOW_LAG {
                    return false;
                }
                (feed, view.children.get(s).map_or(1, Vec::len))
            }
            Some(Src::Parent) => return view.demoted.contains(url),
            None => return false,
        };
        rate * SLOW_RATIO < feed / siblings.max(1) as f64
    }

    /// Who feeds whom, computed once per choice (one pass over the swarm, so a choice costs
    /// O(members), not O(members^2)), and which children of the parent it no longer counts
    /// against its `slots` (see the module docs).
    pub(super) fn view(&self, slots: usize) -> View<'_> {
        let mut children: HashMap<&NodeUrl, Vec<&NodeUrl>> = HashMap::new();
        let mut heads: Vec<(&NodeUrl, &Member)> = Vec::new();
        let mut best = 0.0_f64;
        for (u, m) in &self.members {
            if m.complete {
                continue;
            }
            best = best.max(m.rate.unwrap_or(0.0));
            match &m.source {
                Some(Src::Parent) => heads.push((u, m)),
                Some(Src::Node(s)) => children.entry(s).or_default().push(u),
                None => {}
            }
        }
        // What the parent can send a child: its own fill's pace, or what the best receiver
        // gets, shared among its children.
        let share = best.max(self.fill_rate.unwrap_or(0.0)) / heads.len().max(1) as f64;
        let mut idle: Vec<_> = heads.iter().filter(|(_, m)| m.idle).collect();
        idle.sort_by_key(|(u, m)| (m.fed_at, *u));
        // How far the parent is (its fill's bytes; all of them once it holds the blob), when
        // it says: a head is slow only once that far behind it.
        let parent_have = match self.feed {
            Feed::Filling(h) => Some(h),
            Feed::Holds => Some(u64::MAX),
            Feed::Unknown | Feed::Cold => None,
        };
        let behind = |m: &Member| parent_have.is_none_or(|p| p.saturating_sub(m.have) > SLOW_LAG);
        let mut slow: Vec<_> = heads
            .iter()
            .filter(|(_, m)| !m.idle && behind(m) && m.rate.is_some_and(|r| r * SLOW_RATIO < share))
            .collect();
        slow.sort_by(|a, b| {
            a.1.rate
                .partial_cmp(&b.1.rate)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let demoted: BTreeSet<&NodeUrl> = idle
            .into_iter()
            .chain(slow)
            .take(slots)
            .map(|(u, _)| *u)
            .collect();
        let cold = self.feed == Feed::Cold;
        View {
            children,
            parent_children: heads.len() - demoted.len(),
            heads: if cold {
                Some(self.heads(&demoted))
            } else {
                None
            },
            demoted,
            best,
        }
    }

    /// Each member whose chain of sources ends at a child of the parent not `demoted`: the
    /// nodes whose bytes will come, while the parent has nothing yet.
    fn heads<'a>(&'a self, demoted: &BTreeSet<&NodeUrl>) -> BTreeSet<&'a NodeUrl> {
        let depths = self.depths();
        let mut live = BTreeSet::new();
        for (u, (_, head)) in &depths {
            if head.is_some_and(|h| !demoted.contains(h)) {
                live.insert(*u);
            }
        }
        live
    }

    /// Each member's distance from a whole copy (a holder 0, a child of the parent 1, a child of
    /// a node one more than it; a node whose source left, or with none, very far), and the child
    /// of the parent its chain of sources ends at (none for a holder and the nodes below one).
    pub(super) fn depths(&self) -> HashMap<&NodeUrl, (usize, Option<&NodeUrl>)> {
        const FAR: (usize, Option<&NodeUrl>) = (usize::MAX / 2, None);
        let mut depth: HashMap<&NodeUrl, (usize, Option<&NodeUrl>)> = HashMap::new();
        for start in self.members.keys() {
            let mut path: Vec<&NodeUrl> = Vec::new();
            let mut at = start;
            let base = loop {
                if let Some(&d) = depth.get(at) {
                    break d;
                }
                // A cycle cannot form (see `assign`), but never loop on one.
                if path.contains(&at) {
                    break FAR;
                }
                let Some(m) = self.members.get(at) else {
                    break FAR;
                };
                let end = match &m.source {
                    _ if m.complete => (0, None),
                    Some(Src::Parent) => (1, Some(at)),
                    Some(Src::Node(next)) => {
                        path.push(at);
                        at = next;
                        continue;
                    }
                    None => FAR,
                };
                depth.insert(at, end);
                break end;
            };
            for (i, u) in path.iter().rev().enumerate() {
                depth.insert(u, (base.0.saturating_add(i + 1), base.1));
            }
        }
        depth
    }
}

/// Who feeds whom in a swarm.
pub(super) struct View<'a> {
    /// The live receivers of each node.
    pub(super) children: HashMap<&'a NodeUrl, Vec<&'a NodeUrl>>,
    /// The receivers the parent serves directly, but the demoted ones.
    pub(super) parent_children: usize,
    /// Children of the parent it does not count against its slots (at most that many): idle
    /// ones first, then those [`SLOW_RATIO`] below what the parent can send, slowest first.
    pub(super) demoted: BTreeSet<&'a NodeUrl>,
    /// The best rate among the receivers: what a link of this swarm can do.
    pub(super) best: f64,
    /// While the parent has nothing ([`Feed::Cold`]): the members whose bytes will come (their
    /// chain ends at a child of the parent not demoted); `None` otherwise.
    pub(super) heads: Option<BTreeSet<&'a NodeUrl>>,
}

impl View<'_> {
    /// Whether `url`'s bytes can come to a node it feeds: always, unless the parent has nothing
    /// and its chain does not end at a child of the parent that will fetch.
    pub(super) fn feeds(&self, url: &NodeUrl) -> bool {
        self.heads.as_ref().is_none_or(|h| h.contains(url))
    }
}
