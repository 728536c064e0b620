//! Each transition of a node's transfer (see the module docs of `swarm::select`).

use super::*;
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;
/// Four pieces, the last one short.
const SIZE: u64 = 3 * MIB + 100;

fn data() -> Vec<u8> {
    (0..SIZE as usize).map(|i| (i * 7 % 253) as u8).collect()
}

fn table(data: &[u8], known: u32) -> PieceTable {
    let l = Layout::new(data.len() as u64);
    let mut t = PieceTable::new(l);
    let hashes: Vec<PieceHash> = (0..known)
        .map(|k| {
            let r = l.range(k);
            Sha256::digest(&data[r.start as usize..r.end as usize]).into()
        })
        .collect();
    t.extend(0, &hashes).unwrap();
    t
}

fn peer(i: u8) -> NodeUrl {
    format!("http://10.0.0.{i}:5000").parse().unwrap()
}

fn secs(t: Instant, s: f64) -> Instant {
    t + Duration::from_secs_f64(s)
}

fn fetch(source: Source, from: u64) -> Vec<Action> {
    vec![Action::Fetch { source, from }]
}

fn ask(url: NodeUrl, reason: Reason) -> Vec<Action> {
    vec![Action::AskTracker {
        dropped: Some((url, reason)),
    }]
}

fn r(a: u64, b: u64) -> std::ops::Range<usize> {
    a as usize..b as usize
}

#[test]
fn a_transfer_from_a_peer_moves_the_frontier_piece_by_piece() {
    let d = data();
    let tab = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, first) = Transfer::start(SIZE, t0);
    assert_eq!(first, vec![Action::AskTracker { dropped: None }]);
    assert_eq!(t.route(), Route::Tracker);
    assert_eq!(
        t.assigned(Source::Node(peer(1)), t0),
        fetch(Source::Node(peer(1)), 0)
    );
    // Part of piece 0: nothing verified yet.
    assert_eq!(t.bytes(&d[r(0, 1000)], &tab, t0), vec![]);
    assert_eq!((t.frontier(), t.received()), (0, 1000));
    // The rest of piece 0 and half of piece 1, in one chunk: piece 0 verified.
    assert_eq!(
        t.bytes(&d[r(1000, MIB + MIB / 2)], &tab, t0),
        vec![Action::Verified { upto: MIB }]
    );
    // Everything else: every piece verified, then the digest check.
    assert_eq!(
        t.bytes(&d[r(MIB + MIB / 2, SIZE)], &tab, t0),
        vec![Action::Verified { upto: SIZE }, Action::CheckDigest]
    );
    assert_eq!(
        t.digest_checked(true, t0),
        vec![Action::Verified { upto: SIZE }, Action::Done]
    );
    // Finished: every later event is ignored.
    assert_eq!(t.tick(secs(t0, 100.0)), vec![]);
    assert_eq!(t.closed(t0), vec![]);
}

#[test]
fn a_piece_whose_hash_is_not_known_yet_waits_for_the_table() {
    let d = data();
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    // The table knows piece 0 only: piece 0 verifies, piece 1 and 2 wait, asked for once.
    let tab = table(&d, 1);
    assert_eq!(
        t.bytes(&d[r(0, 2 * MIB)], &tab, t0),
        vec![
            Action::Verified { upto: MIB },
            Action::NeedHashes { first: 1 }
        ]
    );
    assert_eq!(t.bytes(&d[r(2 * MIB, 3 * MIB)], &tab, t0), vec![]);
    assert_eq!((t.frontier(), t.received()), (MIB, 3 * MIB));
    // The table grew by one: piece 1 verifies; piece 2 is asked for again.
    let tab = table(&d, 2);
    assert_eq!(
        t.hashes(&tab, t0),
        vec![
            Action::Verified { upto: 2 * MIB },
            Action::NeedHashes { first: 2 }
        ]
    );
    // The whole table: the rest.
    let tab = table(&d, 4);
    assert_eq!(t.hashes(&tab, t0), vec![Action::Verified { upto: 3 * MIB }]);
    assert_eq!(
        t.bytes(&d[r(3 * MIB, SIZE)], &tab, t0),
        vec![Action::Verified { upto: SIZE }, Action::CheckDigest]
    );
}

#[test]
fn a_bad_piece_drops_the_source_and_resumes_at_the_frontier() {
    let d = data();
    let tab = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    let mut bad = d[r(0, 2 * MIB)].to_vec();
    bad[(MIB + 5) as usize] ^= 0xff;
    let mut expect = vec![Action::Verified { upto: MIB }];
    expect.extend(ask(peer(1), Reason::BadPiece));
    assert_eq!(t.bytes(&bad, &tab, t0), expect);
    assert_eq!((t.frontier(), t.received()), (MIB, MIB));
    assert_eq!(t.source(), None);
    // A late chunk of the dropped source is ignored.
    assert_eq!(t.bytes(&d[r(2 * MIB, 3 * MIB)], &tab, t0), vec![]);
    assert_eq!(
        t.assigned(Source::Node(peer(2)), t0),
        fetch(Source::Node(peer(2)), MIB)
    );
    assert_eq!(
        t.bytes(&d[r(MIB, SIZE)], &tab, t0),
        vec![Action::Verified { upto: SIZE }, Action::CheckDigest]
    );
}

#[test]
fn a_bad_piece_found_when_its_hash_arrives_drops_the_source_too() {
    let d = data();
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    let mut bad = d[r(0, 2 * MIB)].to_vec();
    bad[(MIB + 5) as usize] ^= 0xff;
    let tab = table(&d, 1);
    t.bytes(&bad, &tab, t0);
    assert_eq!(t.frontier(), MIB);
    assert_eq!(t.hashes(&table(&d, 4), t0), ask(peer(1), Reason::BadPiece));
    assert_eq!(t.received(), MIB);
}

#[test]
fn more_bytes_than_the_blob_has_is_a_lie() {
    let d = data();
    let tab = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    t.bytes(&d[r(0, MIB)], &tab, t0);
    let mut long = d[r(MIB, SIZE)].to_vec();
    long.push(0);
    assert_eq!(t.bytes(&long, &tab, t0), ask(peer(1), Reason::BadPiece));
    assert_eq!(t.received(), MIB);
}

#[test]
fn a_silent_source_is_dropped_after_the_stall_time() {
    let d = data();
    let tab = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    assert_eq!(t.tick(secs(t0, 1.9)), vec![]);
    // A byte restarts the clock.
    t.bytes(&d[r(0, 10)], &tab, secs(t0, 1.9));
    // (Only the first report is due.)
    assert_eq!(t.tick(secs(t0, 3.8)), vec![Action::Report]);
    assert_eq!(t.tick(secs(t0, 3.9)), ask(peer(1), Reason::Stall));
    // Back at the frontier: the unverified 10 bytes are dropped.
    assert_eq!(t.received(), 0);
    // No source (the tracker's answer is awaited), no stall.
    assert_eq!(t.tick(secs(t0, 4.0)), vec![]);
}

#[test]
fn a_source_waiting_for_its_own_source_gets_longer_then_is_left_without_blame() {
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    // Without a source, a wait means nothing.
    let (mut idle, _) = Transfer::start(SIZE, t0);
    assert_eq!(idle.waiting(t0), vec![]);
    // The same source again, from where the bytes stopped.
    assert_eq!(t.waiting(secs(t0, 1.0)), fetch(Source::Node(peer(1)), 0));
    // Past STALL since it spoke: not dropped, it is waiting (only the first report is due).
    assert_eq!(t.tick(secs(t0, 4.9)), vec![Action::Report]);
    t.waiting(secs(t0, 4.0));
    // STARVE from its first word: left, as starved (not a stall).
    let starve = STARVE.as_secs_f64();
    let before = t.tick(secs(t0, 1.0 + starve - 0.1));
    assert!(
        before
            .iter()
            .all(|a| !matches!(a, Action::AskTracker { .. })),
        "{before:?}"
    );
    assert_eq!(
        t.tick(secs(t0, 1.0 + starve)),
        ask(peer(1), Reason::Starved)
    );
}

#[test]
fn a_source_that_waited_and_sends_again_is_kept() {
    let d = data();
    let tab = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    t.bytes(&d[r(0, 10)], &tab, secs(t0, 0.5));
    // Asked again from the last byte received, not the frontier: the piece goes on.
    assert_eq!(t.waiting(secs(t0, 1.0)), fetch(Source::Node(peer(1)), 10));
    t.bytes(&d[r(10, 20)], &tab, secs(t0, 3.0));
    assert_eq!((t.frontier(), t.received()), (0, 20));
    // The waiting is over: the ordinary stall clock again, from the last byte (only the first
    // report is due before it).
    assert_eq!(t.tick(secs(t0, 4.9)), vec![Action::Report]);
    assert_eq!(t.tick(secs(t0, 5.0)), ask(peer(1), Reason::Stall));
}

#[test]
fn a_closed_body_a_refusal_and_no_connection_each_say_why() {
    let t0 = Instant::now();
    type Event = fn(&mut Transfer, Instant) -> Vec<Action>;
    let cases: [(Reason, Event); 3] = [
        (Reason::Closed, Transfer::closed),
        (Reason::Busy, |t, n| t.failed(Reason::Busy, n)),
        (Reason::Unreachable, |t, n| t.failed(Reason::Unreachable, n)),
    ];
    for (reason, f) in cases {
        let (mut t, _) = Transfer::start(SIZE, t0);
        // Without a source, nothing to drop.
        assert_eq!(f(&mut t, t0), vec![], "{reason:?}");
        t.assigned(Source::Node(peer(1)), t0);
        assert_eq!(f(&mut t, t0), ask(peer(1), reason));
    }
}

#[test]
fn too_many_failed_sources_go_to_the_parent() {
    let d = data();
    let tab = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    for i in 1..MAX_FAILURES as u8 {
        t.assigned(Source::Node(peer(i)), t0);
        assert_eq!(t.closed(t0), ask(peer(i), Reason::Closed));
    }
    t.assigned(Source::Node(peer(9)), t0);
    assert_eq!(t.closed(t0), fetch(Source::Parent, 0));
    assert_eq!(t.route(), Route::Parent);
    // A verified piece in between resets the count.
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    t.closed(t0);
    t.assigned(Source::Node(peer(2)), t0);
    t.bytes(&d[r(0, MIB)], &tab, t0);
    t.closed(t0);
    t.assigned(Source::Node(peer(3)), t0);
    assert_eq!(t.closed(t0), ask(peer(3), Reason::Closed));
}

#[test]
fn the_tracker_unreachable_means_the_parent() {
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    assert_eq!(t.tracker_unreachable(t0), fetch(Source::Parent, 0));
    assert_eq!(t.route(), Route::Parent);
    // No reports without a tracker.
    assert_eq!(t.tick(secs(t0, 1.0)), vec![]);
}

/// A peer's bytes that the table never checks are let go when the node turns to the parent:
/// it resumes at the frontier, and the parent's bytes complete the blob.
#[test]
fn leaving_a_peer_for_the_parent_resumes_at_the_frontier() {
    let d = data();
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    let one = table(&d, 1);
    t.bytes(&d[r(0, SIZE)], &one, t0);
    assert_eq!((t.frontier(), t.received()), (MIB, SIZE));
    assert_eq!(t.tracker_unreachable(t0), fetch(Source::Parent, MIB));
    assert_eq!(t.received(), MIB);
    let none = table(&d, 0);
    assert_eq!(
        t.bytes(&d[r(MIB, SIZE)], &none, t0),
        vec![Action::Verified { upto: SIZE }, Action::CheckDigest]
    );
}

#[test]
fn bytes_from_the_parent_are_verified_as_they_come() {
    let d = data();
    let none = table(&d, 0);
    let all = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Parent, t0);
    assert_eq!(
        t.bytes(&d[r(0, MIB + 10)], &none, t0),
        vec![Action::Verified { upto: MIB + 10 }]
    );
    // The tracker moves the node to a peer mid-piece; the peer's bytes complete piece 1, which
    // is checked whole (the parent's part is known good, so a mismatch is the peer's).
    t.closed(t0);
    t.assigned(Source::Node(peer(1)), t0);
    let mut bad = d[r(MIB + 10, 2 * MIB)].to_vec();
    bad[0] ^= 1;
    assert_eq!(t.bytes(&bad, &all, t0), ask(peer(1), Reason::BadPiece));
    assert_eq!((t.frontier(), t.received()), (MIB + 10, MIB + 10));
    t.assigned(Source::Node(peer(2)), t0);
    assert_eq!(
        t.bytes(&d[r(MIB + 10, 2 * MIB)], &all, t0),
        vec![Action::Verified { upto: 2 * MIB }]
    );
}

#[test]
fn the_parent_failing_leads_to_the_directory_and_its_holders() {
    let d = data();
    let none = table(&d, 0);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.tracker_unreachable(t0);
    // A stalling parent is retried, then left for the directory.
    for _ in 1..MAX_FAILURES {
        assert_eq!(t.closed(t0), fetch(Source::Parent, 0));
    }
    assert_eq!(t.closed(t0), vec![Action::AskDirectory]);
    assert_eq!(t.route(), Route::Directory);
    assert_eq!(
        t.holders(vec![peer(1), peer(2)], t0),
        fetch(Source::Holder(peer(1)), 0)
    );
    // A holder's bytes are not forwarded: no table, only the digest at the end.
    let mut bad = d.clone();
    bad[7] ^= 1;
    assert_eq!(t.bytes(&bad, &none, t0), vec![Action::CheckDigest]);
    assert_eq!(t.frontier(), 0);
    assert_eq!(
        t.digest_checked(false, t0),
        fetch(Source::Holder(peer(2)), 0)
    );
    assert_eq!(t.bytes(&d, &none, t0), vec![Action::CheckDigest]);
    assert_eq!(
        t.digest_checked(true, t0),
        vec![Action::Verified { upto: SIZE }, Action::Done]
    );
}

#[test]
fn no_holder_left_fails_the_pull() {
    let t0 = Instant::now();
    // The parent unreachable, the directory names one holder, whose body breaks off.
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Parent, t0);
    assert_eq!(t.parent_unreachable(), vec![Action::AskDirectory]);
    assert_eq!(t.route(), Route::Directory);
    assert_eq!(
        t.holders(vec![peer(1)], t0),
        fetch(Source::Holder(peer(1)), 0)
    );
    assert_eq!(t.closed(t0), vec![Action::Fail]);
    // Finished: a late answer changes nothing.
    assert_eq!(t.holders(vec![peer(2)], t0), vec![]);
    // The directory knows no holder.
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.parent_unreachable();
    assert_eq!(t.holders(vec![], t0), vec![Action::Fail]);
}

#[test]
fn a_holder_already_tried_is_not_tried_again() {
    let d = data();
    let none = table(&d, 0);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.parent_unreachable();
    t.holders(vec![peer(1), peer(2)], t0);
    t.bytes(&d, &none, t0);
    // peer 1 lied; the directory, asked again, names it first again: peer 2 is next.
    assert_eq!(
        t.digest_checked(false, t0),
        fetch(Source::Holder(peer(2)), 0)
    );
    assert_eq!(
        t.holders(vec![peer(1), peer(3)], t0),
        fetch(Source::Holder(peer(3)), 0)
    );
}

#[test]
fn busy_holders_are_asked_again_for_a_few_rounds() {
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.parent_unreachable();
    t.holders(vec![peer(1), peer(2)], t0);
    // peer 1 is busy, peer 2 unreachable: the directory again, and peer 1 with it, not peer 2.
    assert_eq!(
        t.failed(Reason::Busy, t0),
        fetch(Source::Holder(peer(2)), 0)
    );
    assert_eq!(
        t.failed(Reason::Unreachable, t0),
        vec![Action::AskDirectory]
    );
    assert_eq!(t.directory_rounds(), 1);
    assert_eq!(
        t.holders(vec![peer(2), peer(1)], t0),
        fetch(Source::Holder(peer(1)), 0)
    );
    // Busy every round: the rounds run out, and the pull fails.
    for round in 2..=DIRECTORY_ROUNDS {
        assert_eq!(t.failed(Reason::Busy, t0), vec![Action::AskDirectory]);
        assert_eq!(t.directory_rounds(), round);
        assert_eq!(
            t.holders(vec![peer(1)], t0),
            fetch(Source::Holder(peer(1)), 0)
        );
    }
    assert_eq!(t.failed(Reason::Busy, t0), vec![Action::Fail]);
    // A round where no holder was busy ends it at once.
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.parent_unreachable();
    t.holders(vec![peer(1)], t0);
    assert_eq!(t.failed(Reason::Stall, t0), vec![Action::Fail]);
}

#[test]
fn a_digest_mismatch_after_a_verified_table_fails() {
    let d = data();
    let tab = table(&d, 4);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    t.bytes(&d, &tab, t0);
    assert_eq!(t.digest_checked(false, t0), vec![Action::Fail]);
}

#[test]
fn progress_is_reported_while_the_tracker_is_in_use() {
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    // Kept alive without bytes by its source's word, so only the report is due: the first at
    // FIRST_REPORT under a source, the next REPORT_EVERY later.
    t.waiting(secs(t0, 1.0));
    assert_eq!(t.tick(secs(t0, 2.4)), vec![]);
    assert_eq!(t.tick(secs(t0, 2.5)), vec![Action::Report]);
    assert_eq!(t.tick(secs(t0, 4.9)), vec![]);
    // While it waits, reports every REPORT_EVERY; waiting for STARVE since its first word:
    // given up.
    let starve = STARVE.as_secs_f64();
    assert_eq!(t.tick(secs(t0, 2.5 + 5.0)), vec![Action::Report]);
    let before = t.tick(secs(t0, 1.0 + starve - 0.1));
    assert!(!before.contains(&Action::AskTracker {
        dropped: Some((peer(1), Reason::Starved))
    }));
    assert_eq!(
        t.tick(secs(t0, 1.0 + starve)),
        ask(peer(1), Reason::Starved)
    );
    // A source named afresh (the tracker's answer): the first report again.
    let b = 2.0 + starve;
    t.assigned(Source::Node(peer(2)), secs(t0, b));
    t.waiting(secs(t0, b + 0.1));
    assert_eq!(t.tick(secs(t0, b + 2.4)), vec![]);
    assert_eq!(t.tick(secs(t0, b + 2.5)), vec![Action::Report]);
    t.waiting(secs(t0, b + 3.0));
    assert_eq!(t.tick(secs(t0, b + 3.5)), vec![]);
    assert_eq!(
        t.tick(secs(t0, b + 0.1 + starve)),
        ask(peer(2), Reason::Starved)
    );
}

/// The first report under a source comes once the tracker can measure a rate from it, and
/// before a node starving below a slow link gives its source up: the tracker knows the slow
/// link when the starving nodes come back to it.
#[test]
fn the_first_report_measures_a_rate_before_a_node_starves() {
    use super::super::tracker::RATE_WINDOW;
    assert!(FIRST_REPORT >= RATE_WINDOW);
    assert!(FIRST_REPORT < STARVE);
    assert!(FIRST_REPORT < REPORT_EVERY);
}

#[test]
fn a_zero_byte_blob_completes_at_once() {
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(0, t0);
    let tab = PieceTable::new(Layout::new(0));
    t.assigned(Source::Node(peer(1)), t0);
    assert_eq!(t.bytes(&[], &tab, t0), vec![Action::CheckDigest]);
    assert_eq!(
        t.digest_checked(true, t0),
        vec![Action::Verified { upto: 0 }, Action::Done]
    );
    assert_eq!(t.layout().count(), 0);
}

#[test]
fn once_every_byte_is_in_the_source_may_close_and_fall_silent() {
    let d = data();
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    // The last piece's hash is not known yet, and the digest is checked after it.
    let tab = table(&d, 3);
    t.bytes(&d, &tab, t0);
    assert_eq!(t.received(), SIZE);
    assert_eq!(t.closed(t0), vec![]);
    // Only the report that is due; no stall.
    assert_eq!(t.tick(secs(t0, 10.0)), vec![Action::Report]);
    assert_eq!(
        t.hashes(&table(&d, 4), secs(t0, 10.0)),
        vec![Action::Verified { upto: SIZE }, Action::CheckDigest]
    );
    assert_eq!(
        t.digest_checked(true, secs(t0, 11.0)),
        vec![Action::Verified { upto: SIZE }, Action::Done]
    );
}

/// A source named afresh while bytes past the frontier wait for their hashes (the tracker's
/// answer to a progress report moving this node) is read from the frontier, and its bytes are
/// counted from there: the frontier never runs ahead of the bytes received in order.
#[test]
fn a_source_named_afresh_is_read_from_the_frontier_and_unchecked_bytes_are_let_go() {
    let d = data();
    let tab = table(&d, 1);
    let t0 = Instant::now();
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    // Piece 0 verified; piece 1 whole but its hash not known yet; part of piece 2.
    assert_eq!(
        t.bytes(&d[r(0, 2 * MIB + 10)], &tab, t0),
        vec![
            Action::Verified { upto: MIB },
            Action::NeedHashes { first: 1 }
        ]
    );
    assert_eq!((t.frontier(), t.received()), (MIB, 2 * MIB + 10));
    // The tracker moves this node to the parent.
    assert_eq!(t.assigned(Source::Parent, t0), fetch(Source::Parent, MIB));
    assert_eq!(t.received(), MIB);
    assert_eq!(
        t.bytes(&d[r(MIB, 2 * MIB)], &tab, t0),
        vec![Action::Verified { upto: 2 * MIB }]
    );
    assert_eq!(
        t.bytes(&d[r(2 * MIB, SIZE)], &tab, t0),
        vec![Action::Verified { upto: SIZE }, Action::CheckDigest]
    );
    // And to another node: the same, piece by piece against the table.
    let (mut t, _) = Transfer::start(SIZE, t0);
    t.assigned(Source::Node(peer(1)), t0);
    t.bytes(&d[r(0, MIB + 10)], &table(&d, 1), t0);
    assert_eq!(
        t.assigned(Source::Node(peer(2)), t0),
        fetch(Source::Node(peer(2)), MIB)
    );
    assert_eq!(
        t.bytes(&d[r(MIB, SIZE)], &table(&d, 4), t0),
        vec![Action::Verified { upto: SIZE }, Action::CheckDigest]
    );
}
