//! The tracker's rules, one test each (see the module docs of `swarm::tracker`).

use super::*;

/// The parent's slots in most scenarios below: two heads show the chain rules (evenness, which
/// head a node joins) that one head would hide.
const HEADS: usize = 2;

fn two_heads() -> Tracker {
    Tracker::new(Limits {
        parent_slots: HEADS,
        ..Limits::default()
    })
}

fn node(i: usize) -> NodeUrl {
    format!("http://10.0.{}.{}:5000", i / 250, i % 250 + 1)
        .parse()
        .unwrap()
}

fn fleet(n: usize) -> Fleet {
    Fleet::new((0..n).map(node))
}

fn digest() -> Digest {
    Digest::of(b"a layer")
}

const MIB: u64 = 1 << 20;

fn at(have: u64) -> Report<'static> {
    Report {
        have,
        complete: false,
        dropped: None,
    }
}

fn done(have: u64) -> Report<'static> {
    Report {
        have,
        complete: true,
        dropped: None,
    }
}

fn dropped(have: u64, source: &NodeUrl, reason: Reason) -> Report<'_> {
    Report {
        have,
        complete: false,
        dropped: Some((source, reason)),
    }
}

fn src_of(a: &Assignment) -> Option<NodeUrl> {
    match a {
        Assignment::Parent => None,
        Assignment::Node { url, .. } => Some(url.clone()),
    }
}

#[test]
fn a_simultaneous_cold_join_builds_two_chains_below_the_parent() {
    let n = 32;
    let f = fleet(n);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    let mut source: Vec<Option<NodeUrl>> = Vec::new();
    for i in 0..n {
        let a = t.join(&d, &node(i), 0, 4, &f, now).unwrap();
        source.push(src_of(&a));
    }
    let direct = source.iter().filter(|s| s.is_none()).count();
    assert_eq!(direct, HEADS, "{source:?}");
    // Chains: no node serves more than one child, and each chain ends at the parent.
    for i in 0..n {
        let children = source
            .iter()
            .filter(|s| s.as_ref() == Some(&node(i)))
            .count();
        assert!(children <= 1, "node {i} has {children} children");
        let mut at = i;
        let mut depth = 0;
        while let Some(s) = &source[at] {
            at = (0..n).find(|&j| node(j) == *s).unwrap();
            depth += 1;
            assert!(depth < n, "a cycle from node {i}");
        }
    }
    // Two chains of 16: the deepest node is 15 hops below a parent's child.
    let depth = |i: usize| {
        let mut at = i;
        let mut d = 0;
        while let Some(s) = &source[at] {
            at = (0..n).find(|&j| node(j) == *s).unwrap();
            d += 1;
        }
        d
    };
    assert_eq!((0..n).map(depth).max(), Some(n / HEADS - 1));
}

/// The default, one slot: a simultaneous cold start is one chain below the parent, which sends
/// one copy however many nodes pull.
#[test]
fn by_default_a_cold_join_is_one_chain() {
    let n = 8;
    let f = fleet(n);
    let d = digest();
    let mut t = Tracker::default();
    let now = Instant::now();
    let sources: Vec<Option<NodeUrl>> = (0..n)
        .map(|i| src_of(&t.join(&d, &node(i), 0, 4, &f, now).unwrap()))
        .collect();
    assert_eq!(PARENT_SLOTS, 1);
    assert_eq!(sources[0], None, "the first node is fed by the parent");
    for (i, s) in sources.iter().enumerate().skip(1) {
        assert_eq!(*s, Some(node(i - 1)), "node {i} follows the one before it");
    }
}

/// Five hundred nodes at once: still two parent children, and single-child chains of even depth.
/// (Each choice is linear in the swarm: the 500 joins take about a second unoptimized.)
#[test]
fn a_large_cold_join_stays_two_even_chains() {
    let n = 500;
    let f = fleet(n);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    let mut index = std::collections::HashMap::new();
    let mut source = Vec::new();
    for i in 0..n {
        index.insert(node(i), i);
        source.push(src_of(&t.join(&d, &node(i), 0, 4, &f, now).unwrap()));
    }
    assert_eq!(source.iter().filter(|s| s.is_none()).count(), HEADS);
    let mut children = vec![0; n];
    for s in source.iter().flatten() {
        children[index[s]] += 1;
    }
    assert!(children.iter().all(|&c| c <= 1));
    let mut depth = vec![0usize; n];
    for i in 0..n {
        if let Some(s) = &source[i] {
            // Sources joined before their children: their depth is known.
            depth[i] = depth[index[s]] + 1;
        }
    }
    assert_eq!(depth.iter().max(), Some(&(n / HEADS - 1)));
}

#[test]
fn a_holder_with_a_free_slot_comes_first_fewest_children_first() {
    let f = fleet(10);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    // Two receivers ahead, then two holders.
    t.join(&d, &node(0), 0, 4, &f, now).unwrap();
    t.report(&d, &node(0), at(50 * MIB), &f, now).unwrap();
    t.hold(&d, &node(1), 100 * MIB, &f, now).unwrap();
    t.hold(&d, &node(2), 100 * MIB, &f, now).unwrap();
    let a = t.join(&d, &node(3), 0, 4, &f, now).unwrap();
    assert_eq!(
        a,
        Assignment::Node {
            url: node(1),
            have: 100 * MIB,
            complete: true
        }
    );
    // node 1 has a child now: node 2 is next.
    let a = t.join(&d, &node(4), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(2)));
    let a = t.join(&d, &node(5), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(1)));
}

#[test]
fn a_full_node_is_skipped() {
    let f = fleet(10);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    for i in 1..=DEFAULT_UPLOADS as usize {
        let a = t.join(&d, &node(i), 0, 4, &f, now).unwrap();
        assert_eq!(src_of(&a), Some(node(0)), "node {i}");
    }
    // The holder is full: the next goes to a receiver ahead of it (all are at 0: not ahead),
    // so to the parent.
    let a = t.join(&d, &node(5), 0, 4, &f, now).unwrap();
    assert_eq!(a, Assignment::Parent);
    // A node announcing one slot serves one child.
    let mut t = two_heads();
    t.join(&d, &node(0), 0, 1, &f, now).unwrap();
    t.join(&d, &node(1), 0, 4, &f, now).unwrap();
    // node 0 and node 1 have the parent; node 2 takes node 0's one slot, node 3 node 1's.
    let a2 = t.join(&d, &node(2), 0, 4, &f, now).unwrap();
    let a3 = t.join(&d, &node(3), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a2), Some(node(0)));
    assert_eq!(src_of(&a3), Some(node(1)));
    let a4 = t.join(&d, &node(4), 0, 4, &f, now).unwrap();
    assert_ne!(src_of(&a4), Some(node(0)), "node 0 has one slot");
}

#[test]
fn a_receiver_ahead_is_chosen_fewest_children_then_most_progress() {
    let f = fleet(10);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    for i in 0..2 {
        t.join(&d, &node(i), 0, 4, &f, now).unwrap();
    }
    t.report(&d, &node(0), at(10 * MIB), &f, now).unwrap();
    t.report(&d, &node(1), at(30 * MIB), &f, now).unwrap();
    // Both ahead of a newcomer, no child each: the one with most progress.
    let a = t.join(&d, &node(2), 0, 4, &f, now).unwrap();
    assert_eq!(
        a,
        Assignment::Node {
            url: node(1),
            have: 30 * MIB,
            complete: false
        }
    );
    // node 1 has a child now: node 0, fewer children, though behind node 1.
    let a = t.join(&d, &node(3), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(0)));
    // A newcomer at 20 MiB: only node 1 is ahead of it.
    let a = t.join(&d, &node(4), 20 * MIB, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(1)));
}

#[test]
fn a_node_reported_for_a_bad_piece_is_never_assigned_again() {
    let f = fleet(4);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    let a = t.join(&d, &node(1), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(0)));
    let next = t
        .report(
            &d,
            &node(1),
            dropped(0, &node(0), Reason::BadPiece),
            &f,
            now,
        )
        .unwrap();
    assert_eq!(next, Some(Assignment::Parent));
    // Not for this node, not for another, not later, not when it reports again as a holder.
    for s in [1, 60, 600, 3600] {
        let later = now + Duration::from_secs(s);
        t.hold(&d, &node(0), MIB, &f, later).unwrap();
        let a = t.join(&d, &node(2), 0, 4, &f, later).unwrap();
        assert_ne!(src_of(&a), Some(node(0)), "after {s}s");
        t.leave(&d, &node(2));
        assert!(!t.holders(&d, &f, later).contains(&node(0)));
    }
}

#[test]
fn a_report_blames_only_the_reporters_own_source() {
    let f = fleet(4);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    t.hold(&d, &node(1), MIB, &f, now).unwrap();
    let a = t.join(&d, &node(2), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(0)));
    // node 2 names node 1, which was not its source: no blame, but it gets a new source.
    let next = t
        .report(
            &d,
            &node(2),
            dropped(0, &node(1), Reason::BadPiece),
            &f,
            now,
        )
        .unwrap();
    assert!(next.is_some());
    let a = t.join(&d, &node(3), 0, 4, &f, now).unwrap();
    assert!(src_of(&a).is_some());
    assert_eq!(t.holders(&d, &f, now), vec![node(0), node(1)]);
}

#[test]
fn a_stalled_source_is_avoided_for_a_while() {
    let f = fleet(4);
    let d = digest();
    for (reason, pause) in [
        (Reason::Stall, AVOID),
        (Reason::Closed, AVOID),
        (Reason::Unreachable, AVOID),
        (Reason::Busy, BUSY_AVOID),
    ] {
        let mut t = two_heads();
        let now = Instant::now();
        t.hold(&d, &node(0), MIB, &f, now).unwrap();
        t.join(&d, &node(1), 0, 4, &f, now).unwrap();
        let next = t
            .report(&d, &node(1), dropped(0, &node(0), reason), &f, now)
            .unwrap();
        assert_eq!(next, Some(Assignment::Parent), "{reason:?}");
        let just_before = now + pause - Duration::from_millis(1);
        t.hold(&d, &node(0), MIB, &f, just_before).unwrap();
        let a = t.join(&d, &node(2), 0, 4, &f, just_before).unwrap();
        assert_eq!(a, Assignment::Parent, "{reason:?}");
        let after = now + pause;
        let a = t.join(&d, &node(2), 0, 4, &f, after).unwrap();
        assert_eq!(src_of(&a), Some(node(0)), "{reason:?}");
    }
}

#[test]
fn a_starved_source_is_not_held_against_it() {
    let f = fleet(4);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    t.join(&d, &node(1), 0, 4, &f, now).unwrap();
    let next = t
        .report(&d, &node(1), dropped(0, &node(0), Reason::Starved), &f, now)
        .unwrap();
    // The same holder again: nothing against it, and its slot was freed.
    assert_eq!(src_of(&next.unwrap()), Some(node(0)));
}

#[test]
fn a_node_leaving_frees_its_slot_and_orphans_its_children() {
    let f = fleet(8);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    // node 0 serves nodes 1..=4 (its four slots); node 5 hangs below node 1 (ahead of it).
    for i in 1..=4 {
        t.join(&d, &node(i), 0, 4, &f, now).unwrap();
    }
    t.report(&d, &node(1), at(MIB / 2), &f, now).unwrap();
    let a = t.join(&d, &node(5), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(1)));
    // node 1 leaves: node 0 has a free slot again...
    t.leave(&d, &node(1));
    let a = t.join(&d, &node(6), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(0)));
    // ...and node 5's next report, with nothing dropped, gets a new source.
    let next = t.report(&d, &node(5), at(0), &f, now).unwrap();
    assert!(next.is_some());
    assert_ne!(src_of(&next.unwrap()), Some(node(1)));
}

#[test]
fn completing_frees_the_slot_and_makes_a_holder() {
    let f = fleet(8);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    for i in 1..=4 {
        t.join(&d, &node(i), 0, 1, &f, now).unwrap();
    }
    assert_eq!(t.report(&d, &node(1), done(MIB), &f, now), Ok(None));
    assert!(t.holders(&d, &f, now).contains(&node(1)));
    // node 0 has one free slot; node 1 (a holder now) one too (it announced one).
    let a = t.join(&d, &node(5), 0, 4, &f, now).unwrap();
    let b = t.join(&d, &node(6), 0, 4, &f, now).unwrap();
    let mut got = vec![src_of(&a).unwrap(), src_of(&b).unwrap()];
    got.sort();
    assert_eq!(got, vec![node(0), node(1)]);
}

#[test]
fn silent_nodes_expire_and_empty_swarms_are_swept() {
    let f = fleet(4);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    t.join(&d, &node(1), 0, 4, &f, now).unwrap();
    assert_eq!(t.members(&d), 2);
    let later = now + EXPIRY - Duration::from_millis(1);
    t.report(&d, &node(1), at(10), &f, later).unwrap();
    // node 0 is silent past EXPIRY: gone, and node 1's next report gets a new source.
    let gone = now + EXPIRY;
    assert_eq!(t.holders(&d, &f, gone), Vec::<NodeUrl>::new());
    let next = t.report(&d, &node(1), at(20), &f, gone).unwrap();
    assert_eq!(next, Some(Assignment::Parent));
    assert_eq!(t.members(&d), 1);
    t.sweep(gone + EXPIRY);
    assert_eq!(t.members(&d), 0);
    assert_eq!(t.swarms(), 0);
}

#[test]
fn a_swarm_remembers_its_blame_until_it_ends() {
    let f = fleet(4);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    t.join(&d, &node(1), 0, 4, &f, now).unwrap();
    t.report(&d, &node(1), dropped(0, &node(0), Reason::Stall), &f, now)
        .unwrap();
    t.leave(&d, &node(0));
    t.leave(&d, &node(1));
    // No members, an avoidance still running: kept; once it ended, swept.
    t.sweep(now);
    assert_eq!(t.swarms(), 1);
    t.sweep(now + AVOID);
    assert_eq!(t.swarms(), 0);
}

#[test]
fn a_tracker_never_hands_a_node_itself_or_a_url_outside_the_fleet() {
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    let f = fleet(3);
    // Alone in the swarm, even complete before: the parent, never itself.
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    assert_eq!(t.join(&d, &node(0), 0, 4, &f, now), Ok(Assignment::Parent));
    // A holder that left the fleet (peers_dns no longer names it) is not handed out.
    t.hold(&d, &node(1), MIB, &f, now).unwrap();
    let smaller = Fleet::new([node(0), node(2)]);
    let a = t.join(&d, &node(2), 0, 4, &smaller, now).unwrap();
    assert_ne!(src_of(&a), Some(node(1)));
    assert!(!t.holders(&d, &smaller, now).contains(&node(1)));
    // A caller outside the fleet is refused, by every call.
    let stranger: NodeUrl = "http://192.0.2.9:5000".parse().unwrap();
    assert_eq!(
        t.join(&d, &stranger, 0, 4, &f, now),
        Err(Refused::NotInFleet(stranger.clone()))
    );
    assert!(t.report(&d, &stranger, at(0), &f, now).is_err());
    assert!(t.hold(&d, &stranger, MIB, &f, now).is_err());
    assert_eq!(t.members(&d), 3);
}

#[test]
fn no_cycle_is_ever_formed() {
    let f = fleet(3);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    // Fill the parent's slots, then a chain 0 -> 2.
    t.join(&d, &node(0), 0, 4, &f, now).unwrap();
    t.join(&d, &node(1), 0, 4, &f, now).unwrap();
    let a = t.join(&d, &node(2), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&a), Some(node(0)));
    t.report(&d, &node(2), at(5 * MIB), &f, now).unwrap();
    // node 0 drops the parent and rejoins behind its own child: node 2 is ahead, but its chain
    // runs through node 0, so node 0 gets node 1 or the parent, never node 2.
    t.report(&d, &node(0), at(MIB), &f, now).unwrap();
    let a = t.join(&d, &node(0), MIB, 4, &f, now).unwrap();
    assert_ne!(src_of(&a), Some(node(2)));
}

#[test]
fn an_unknown_reporter_rejoins() {
    let f = fleet(3);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    // A node the tracker never saw (it restarted) reports progress: it is rejoined, with a
    // source, and serves others like any receiver.
    t.join(&d, &node(0), 0, 4, &f, now).unwrap();
    let a = t.report(&d, &node(1), at(5 * MIB), &f, now).unwrap();
    assert!(a.is_some(), "an unknown reporter rejoins");
    let b = t.join(&d, &node(2), 0, 4, &f, now).unwrap();
    assert_eq!(src_of(&b), Some(node(1)), "ahead, and it has a source");
}

#[test]
fn an_ordinary_report_keeps_the_source() {
    let f = fleet(3);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    t.hold(&d, &node(0), MIB, &f, now).unwrap();
    t.join(&d, &node(1), 0, 4, &f, now).unwrap();
    assert_eq!(t.report(&d, &node(1), at(MIB / 2), &f, now), Ok(None));
    // An unknown node that reports complete becomes a holder without a source.
    assert_eq!(t.report(&d, &node(2), done(MIB), &f, now), Ok(None));
    assert_eq!(t.holders(&d, &f, now), vec![node(0), node(2)]);
}

#[test]
fn memory_is_bounded() {
    let f = fleet(4);
    let now = Instant::now();
    let mut t = Tracker::new(Limits {
        max_swarms: 2,
        max_members: 2,
        parent_slots: PARENT_SLOTS,
    });
    let d: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
    t.hold(&d[0], &node(0), MIB, &f, now).unwrap();
    t.hold(&d[1], &node(0), MIB, &f, now).unwrap();
    // Touch d[0]: d[1] is the least recently used, and goes when d[2] comes.
    t.join(&d[0], &node(1), 0, 4, &f, now).unwrap();
    t.hold(&d[2], &node(0), MIB, &f, now).unwrap();
    assert_eq!(t.swarms(), 2);
    assert_eq!(t.members(&d[1]), 0);
    assert_eq!(t.members(&d[0]), 2);
    // A third node in a full swarm: the parent, not recorded.
    assert_eq!(
        t.join(&d[0], &node(2), 0, 4, &f, now),
        Ok(Assignment::Parent)
    );
    t.hold(&d[0], &node(3), MIB, &f, now).unwrap();
    assert_eq!(t.members(&d[0]), 2);
}

#[test]
fn reasons_have_stable_names() {
    for r in Reason::ALL {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
    }
    assert_eq!(Reason::parse("bad piece"), None);
    assert_eq!(Reason::BadPiece.as_str(), "bad_piece");
}

/// Reports `have` for each `(node, have)` at `at`, in order; answers what each got.
fn report_all(
    t: &mut Tracker,
    f: &Fleet,
    at: Instant,
    reports: &[(usize, u64)],
) -> Vec<Option<Assignment>> {
    reports
        .iter()
        .map(|&(i, have)| {
            t.report(&digest(), &node(i), self::at(have), f, at)
                .unwrap()
        })
        .collect()
}

#[test]
fn a_slow_link_feeds_nobody_and_its_children_move() {
    let f = fleet(8);
    let d = digest();
    let mut t = two_heads();
    let t0 = Instant::now();
    // Nodes 0 and 1 below the parent; node 2 below node 0, node 3 below node 1, node 4 below
    // node 2 (fewest children, then nearest the parent, then the URL).
    let mut src = Vec::new();
    for i in 0..5 {
        src.push(src_of(&t.join(&d, &node(i), 0, 4, &f, t0).unwrap()));
    }
    assert_eq!(
        src,
        vec![None, None, Some(node(0)), Some(node(1)), Some(node(2))]
    );
    // Two seconds on: node 2's link runs at a tenth of the others'; node 4, below it, at its pace.
    let t1 = t0 + RATE_WINDOW;
    let fast = 200 * MIB;
    let slow = 20 * MIB;
    let got = report_all(
        &mut t,
        &f,
        t1,
        &[(0, fast), (1, fast), (2, slow), (3, fast), (4, slow)],
    );
    // Node 2 keeps its source; node 4, below the slow link, is moved (not to node 2).
    assert_eq!(got[..4], [None, None, None, None]);
    let moved = src_of(got[4].as_ref().expect("node 4 is moved"));
    assert!(moved.is_some() && moved != Some(node(2)), "{moved:?}");
    // A newcomer is never put below the slow link, though it has no child now.
    let a = t.join(&d, &node(5), 0, 4, &f, t1).unwrap();
    assert_ne!(src_of(&a), Some(node(2)));
}

/// One chain (the default single parent slot), node 2's link slow: node 3, below it, is moved
/// to node 1, node 2's own source, whose upload node 2 barely uses, not to node 0 (ahead of
/// node 1 and nearer the parent), whose one child, node 1 and the chain below it, would then
/// share its upload with node 3. Node 2 still holds one of node 1's slots: with one slot each,
/// every node ahead is full, and node 3 goes to the parent (rule 5). The node moved is measured
/// afresh under its new source, so node 4 stays below it.
#[test]
fn the_children_of_a_slow_link_go_to_its_source_first() {
    for (uploads, expected) in [(4, Some(1)), (2, Some(1)), (1, None)] {
        let f = fleet(8);
        let d = digest();
        let mut t = Tracker::new(Limits::default());
        let t0 = Instant::now();
        let mut src = Vec::new();
        for i in 0..5 {
            src.push(src_of(&t.join(&d, &node(i), 0, uploads, &f, t0).unwrap()));
        }
        let chain: Vec<_> = (0..4).map(|i| Some(node(i))).collect();
        assert_eq!(src[0], None);
        assert_eq!(src[1..], chain[..], "uploads {uploads}");
        let t1 = t0 + RATE_WINDOW;
        let (fast, slow) = (200 * MIB, 20 * MIB);
        let got = report_all(
            &mut t,
            &f,
            t1,
            &[(0, fast), (1, fast), (2, slow), (3, slow), (4, slow)],
        );
        assert_eq!(got[..3], [None, None, None], "uploads {uploads}");
        let moved = got[3].as_ref().expect("node 3 is moved");
        assert_eq!(src_of(moved), expected.map(node), "uploads {uploads}");
        // Node 4 stays below node 3, which is no slow link: it was as slow as its source.
        assert_eq!(got[4], None, "uploads {uploads}");
        let s = &t.swarms[&d];
        let view = s.view(1);
        let children = |i: usize| view.children.get(&node(i)).map_or(0, Vec::len);
        assert_eq!(children(2), 0, "uploads {uploads}");
        assert_eq!(
            (children(0), children(1)),
            if expected.is_some() { (1, 2) } else { (1, 1) },
            "uploads {uploads}"
        );
    }
}

#[test]
fn a_slow_chain_head_is_measured_against_the_swarms_best() {
    let f = fleet(8);
    let d = digest();
    let mut t = two_heads();
    let t0 = Instant::now();
    for i in 0..2 {
        assert_eq!(t.join(&d, &node(i), 0, 4, &f, t0), Ok(Assignment::Parent));
    }
    // Both children of the parent; node 0's link is slow. Before two seconds, no rate: both
    // are candidates.
    let t1 = t0 + RATE_WINDOW - Duration::from_millis(1);
    report_all(&mut t, &f, t1, &[(0, MIB), (1, 10 * MIB)]);
    let a = t.join(&d, &node(2), 0, 4, &f, t1).unwrap();
    assert!(src_of(&a).is_some());
    t.leave(&d, &node(2));
    let t2 = t0 + RATE_WINDOW;
    report_all(&mut t, &f, t2, &[(0, MIB), (1, 100 * MIB)]);
    for i in 2..5 {
        let a = t.join(&d, &node(i), 0, 4, &f, t2).unwrap();
        assert_ne!(src_of(&a), Some(node(0)), "node {i}");
    }
    let s = &t.swarms[&d];
    assert!(s.is_slow(&node(0), &s.view(HEADS)));
    // A receiver that went back (a restart at 0) has no rate until it is measured again.
    report_all(&mut t, &f, t2 + RATE_WINDOW, &[(0, 0)]);
    let s = &t.swarms[&d];
    assert!(!s.is_slow(&node(0), &s.view(HEADS)));
}

#[test]
fn children_sharing_a_holder_are_not_slow_links() {
    let f = fleet(8);
    let d = digest();
    let mut t = two_heads();
    let t0 = Instant::now();
    t.hold(&d, &node(0), 1 << 30, &f, t0).unwrap();
    // Nodes 1 to 4 share the holder's upload; nodes 5 and 6 each have a parent's stream.
    for i in 1..=6 {
        t.join(&d, &node(i), 0, 4, &f, t0).unwrap();
    }
    let t1 = t0 + RATE_WINDOW;
    let reports: Vec<(usize, u64)> = (1..=6)
        .map(|i| (i, if i <= 4 { 40 * MIB } else { 200 * MIB }))
        .collect();
    report_all(&mut t, &f, t1, &reports);
    let s = &t.swarms[&d];
    let view = s.view(HEADS);
    // A quarter of the holder's upload each: a fifth of the best, yet no slow link.
    for i in 1..=4 {
        assert!(!s.is_slow(&node(i), &view), "node {i}");
    }
}

#[test]
fn a_childs_report_raises_its_sources_progress() {
    let f = fleet(8);
    let d = digest();
    let mut t = two_heads();
    let now = Instant::now();
    for i in 0..3 {
        t.join(&d, &node(i), 0, 4, &f, now).unwrap();
    }
    // Node 2 hangs below node 0 and reports 5 MiB (node 0 last said 0), then leaves.
    t.report(&d, &node(2), at(5 * MIB), &f, now).unwrap();
    assert_eq!(t.swarms[&d].members[&node(0)].have, 5 * MIB);
    t.report(&d, &node(2), at(4 * MIB), &f, now).unwrap();
    assert_eq!(
        t.swarms[&d].members[&node(0)].have,
        5 * MIB,
        "never lowered"
    );
    t.leave(&d, &node(2));
    // A newcomer at 3 MiB: node 0 is ahead of it (without the child's word it would look
    // behind, and the parent's slots are taken: the parent anyway).
    let a = t.join(&d, &node(3), 3 * MIB, 4, &f, now).unwrap();
    assert_eq!(
        a,
        Assignment::Node {
            url: node(0),
            have: 5 * MIB,
            complete: false
        }
    );
}

/// Joins nodes `0..n` at `at` in order, each asking with nothing; answers their sources.
fn join_all(t: &mut Tracker, f: &Fleet, n: usize, at: Instant) -> Vec<Option<NodeUrl>> {
    (0..n)
        .map(|i| src_of(&t.join(&digest(), &node(i), 0, 4, f, at).unwrap()))
        .collect()
}

/// One parent slot, and the slow node joined first: it heads the one chain, every receiver runs
/// at its pace, so the swarm's best cannot show it. Against the parent's fill (6 MiB/s, the
/// head 0.6), it is demoted: it keeps its stream from the parent, its child is moved to the
/// parent (the slot it frees), the chain below that child stays. Without the fill's pace (a
/// parent that says nothing), nobody moves.
#[test]
fn a_slow_head_is_measured_against_the_parents_fill() {
    for told in [true, false] {
        let f = fleet(8);
        let d = digest();
        let mut t = Tracker::new(Limits::default());
        let t0 = Instant::now();
        if told {
            t.feed(&d, Feed::Filling(0), t0);
        }
        let src = join_all(&mut t, &f, 4, t0);
        assert_eq!(src, vec![None, Some(node(0)), Some(node(1)), Some(node(2))]);
        let t1 = t0 + RATE_WINDOW + Duration::from_millis(500);
        if told {
            t.feed(&d, Feed::Filling(15 * MIB), t1);
        }
        let slow = 3 * MIB / 2;
        let got = report_all(
            &mut t,
            &f,
            t1,
            &[(0, slow), (1, slow), (2, slow), (3, slow)],
        );
        if !told {
            assert_eq!(got, vec![None, None, None, None]);
            continue;
        }
        assert_eq!(got, vec![None, Some(Assignment::Parent), None, None]);
        let s = &t.swarms[&d];
        let view = s.view(1);
        assert!(view.demoted.contains(&node(0)));
        assert!(s.is_slow(&node(0), &view));
        assert_eq!(view.parent_children, 1, "the new head holds the slot");
        // The slow head still pulls from the parent, and a newcomer never goes below it.
        assert_eq!(s.members[&node(0)].source, Some(Src::Parent));
        let a = t.join(&d, &node(4), 0, 4, &f, t1).unwrap();
        assert_ne!(src_of(&a), Some(node(0)));
        assert_ne!(a, Assignment::Parent);
    }
}

/// A parent whose fill runs far faster than any node's link sees every head as slow: at most
/// `parent_slots` of its children are demoted at once, so it never serves more than twice its
/// slots in streams of one blob, however long the fill runs.
#[test]
fn demoted_heads_are_bounded_by_the_parents_slots() {
    let f = fleet(10);
    let d = digest();
    let mut t = Tracker::new(Limits::default());
    let mut now = Instant::now();
    t.feed(&d, Feed::Filling(0), now);
    join_all(&mut t, &f, 8, now);
    let mut have = [0; 8];
    for round in 1..=6u64 {
        now += crate::swarm::select::REPORT_EVERY;
        t.feed(&d, Feed::Filling(round * 500 * MIB), now);
        for (i, h) in have.iter_mut().enumerate() {
            *h += 10 * MIB;
            t.report(&d, &node(i), at(*h), &f, now).unwrap();
        }
        let s = &t.swarms[&d];
        let view = s.view(1);
        assert!(view.demoted.len() <= 1, "round {round}");
        let streams = s
            .members
            .values()
            .filter(|m| m.source == Some(Src::Parent))
            .count();
        assert!(
            streams <= 2,
            "round {round}: {streams} streams from the parent"
        );
    }
}

/// A node claims the whole blob with a slot for every node while the parent has nothing (no
/// blob, no fill): it is not handed out, since no piece table can come until someone fetches
/// from the parent. The first node to ask gets the parent, the next one its chain; once the
/// parent fills, the holder is handed out again (its bytes can be checked now).
#[test]
fn while_the_parent_has_nothing_the_first_node_gets_it_and_no_holder_is_handed_out() {
    let f = fleet(8);
    let d = digest();
    let mut t = Tracker::new(Limits::default());
    let t0 = Instant::now();
    t.hold(&d, &node(7), 64 * MIB, &f, t0).unwrap();
    t.feed(&d, Feed::Cold, t0);
    assert_eq!(
        join_all(&mut t, &f, 3, t0),
        vec![None, Some(node(0)), Some(node(1))]
    );
    // Without the parent's word (the rule off): the holder first.
    let mut blind = Tracker::new(Limits::default());
    blind.hold(&d, &node(7), 64 * MIB, &f, t0).unwrap();
    assert_eq!(join_all(&mut blind, &f, 1, t0), vec![Some(node(7))]);
    t.feed(&d, Feed::Filling(0), t0);
    let a = t.join(&d, &node(3), 0, 4, &f, t0).unwrap();
    assert_eq!(src_of(&a), Some(node(7)));
}

/// A child of the parent that does not fetch from it: one that claims bytes while the parent
/// has none (it joined first, claiming progress, and took the only slot), or one the parent
/// still has nothing for FETCH_GRACE after it was named. It is idle: its slot goes to the next
/// node that asks, its children move at their next report (to the parent), and it feeds nobody
/// until it joins again, even once the parent fills.
#[test]
fn a_child_of_the_parent_that_does_not_fetch_loses_its_slot() {
    let f = fleet(8);
    let d = digest();
    let t0 = Instant::now();
    // It claims a piece at its join.
    let mut t = Tracker::new(Limits::default());
    t.feed(&d, Feed::Cold, t0);
    assert_eq!(t.join(&d, &node(7), MIB, 4, &f, t0), Ok(Assignment::Parent));
    t.feed(&d, Feed::Cold, t0);
    assert_eq!(join_all(&mut t, &f, 2, t0), vec![None, Some(node(0))]);
    // It claims nothing, and does not fetch.
    let mut t = Tracker::new(Limits::default());
    t.feed(&d, Feed::Cold, t0);
    assert_eq!(t.join(&d, &node(7), 0, 4, &f, t0), Ok(Assignment::Parent));
    let t1 = t0 + FETCH_GRACE / 2;
    t.feed(&d, Feed::Cold, t1);
    assert_eq!(
        join_all(&mut t, &f, 2, t1),
        vec![Some(node(7)), Some(node(0))]
    );
    // Within the grace, a report keeps it.
    assert_eq!(t.report(&d, &node(0), at(0), &f, t1), Ok(None));
    let t2 = t0 + FETCH_GRACE;
    t.feed(&d, Feed::Cold, t2);
    assert_eq!(
        t.report(&d, &node(0), at(0), &f, t2),
        Ok(Some(Assignment::Parent))
    );
    assert_eq!(
        t.report(&d, &node(1), at(0), &f, t2),
        Ok(None),
        "below node 0 still"
    );
    // Node 0 fetches: the parent fills; node 7 stays idle, never a source.
    t.feed(&d, Feed::Filling(0), t2);
    t.report(&d, &node(7), at(8 * MIB), &f, t2).unwrap();
    let a = t.join(&d, &node(2), 0, 4, &f, t2).unwrap();
    assert_ne!(src_of(&a), Some(node(7)));
    let view = t.swarms[&d].view(1);
    assert!(view.demoted.contains(&node(7)));
    // Joining again clears it.
    t.join(&d, &node(7), 0, 4, &f, t2).unwrap();
    assert!(!t.swarms[&d].members[&node(7)].idle);
}

/// A node's first report comes at `select::FIRST_REPORT`, past RATE_WINDOW: the rates are
/// known then, and a node below a slow link is moved before its own child starves
/// (`select::STARVE`) and re-joins by progress alone.
#[test]
fn the_first_reports_find_a_slow_link_before_anyone_starves() {
    use crate::swarm::select::{FIRST_REPORT, STARVE};
    let f = fleet(8);
    let d = digest();
    let mut t = Tracker::new(Limits::default());
    let t0 = Instant::now();
    t.feed(&d, Feed::Filling(0), t0);
    join_all(&mut t, &f, 5, t0);
    let t1 = t0 + FIRST_REPORT;
    assert!(t1 < t0 + STARVE);
    t.feed(&d, Feed::Filling(15 * MIB), t1);
    let (fast, slow) = (14 * MIB, MIB);
    let got = report_all(
        &mut t,
        &f,
        t1,
        &[(0, fast), (1, fast), (2, slow), (3, slow), (4, slow)],
    );
    assert_eq!(got[..3], [None, None, None]);
    let moved = src_of(got[3].as_ref().expect("node 3 is moved off the slow link"));
    assert_eq!(moved, Some(node(1)));
    assert_eq!(got[4], None);
}

/// The start of a chain: each node's bytes begin a hop (a piece and a table poll) after its
/// source's, so at the first reports the last nodes of a long chain have a few hundred KiB where
/// their sources have a MiB more: a rate from the join more than SLOW_RATIO below the source's,
/// but one hop behind, not SLOW_LAG: no slow link, nobody moved. The same node still that slow
/// a report later is SLOW_LAG behind, and its child is moved.
#[test]
fn the_start_of_a_chain_is_no_slow_link() {
    use crate::swarm::select::{FIRST_REPORT, REPORT_EVERY};
    let f = fleet(8);
    let d = digest();
    let mut t = Tracker::new(Limits::default());
    let t0 = Instant::now();
    t.feed(&d, Feed::Filling(0), t0);
    join_all(&mut t, &f, 5, t0);
    let t1 = t0 + FIRST_REPORT;
    t.feed(&d, Feed::Filling(15 * MIB), t1);
    let kib = 1 << 10;
    let first = [
        (0, 6 * MIB),
        (1, 2 * MIB),
        (2, 1200 * kib),
        (3, 200 * kib),
        (4, 0),
    ];
    let (r2, r3) = (1200.0 / 2.5, 200.0 / 2.5);
    assert!(r3 * SLOW_RATIO < r2, "node 3 is as slow as the rule needs");
    assert_eq!(report_all(&mut t, &f, t1, &first), vec![None; 5]);
    let t2 = t1 + REPORT_EVERY;
    t.feed(&d, Feed::Filling(45 * MIB), t2);
    let later = [
        (0, 44 * MIB),
        (1, 40 * MIB),
        (2, 30 * MIB),
        (3, 2 * MIB),
        (4, MIB),
    ];
    let got = report_all(&mut t, &f, t2, &later);
    assert_eq!(got[..4], [None, None, None, None]);
    assert!(
        got[4].is_some(),
        "node 4, below the slow link, is moved: {got:?}"
    );
}
