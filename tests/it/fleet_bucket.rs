//! The fleet's parent as replicas over one bucket (`[cluster]`, `[fleet]`, a bucket tier): a blob
//! that only the bucket holds. A replica that finds it there serves it without asking the digest's
//! owner, so the owner, which tracks the digest and makes its piece table for every replica
//! (`fleet::owner`), holds neither the blob nor a fill of it: it reads the bucket's object for
//! the table (`tier::read`, checked as every bucket read is) and keeps nothing. Then nodes
//! behind both replicas share as they do without a bucket: one copy out of the central berth.
//! The replicas are `fleet_owner`'s, each over its own fault-injecting view of one in-memory
//! bucket.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, StatusCode};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::fleet_owner::{Replicas, from_parent, pull, replicas_over, start_nodes};
use crate::support::instance::{eventually, same};
use crate::support::random_bytes;
use crate::swarm::piece_hashes;
use berth::oci::Digest;
use berth::swarm::protocol::Pieces;

const MIB: usize = 1 << 20;
const PIECES_FALLBACK: &str = "berth_fleet_owner_calls_total{call=\"pieces\",result=\"fallback\"}";
const MISMATCH: &str = "berth_bucket_requests_total{op=\"get_body\",outcome=\"mismatch\"}";

fn blob_key(d: &Digest) -> Path {
    Path::from(format!("mirror/blobs/sha256/{}", d.hex()))
}

/// Two replicas over one bucket holding `body` under `named` (with the origin marker of the
/// upstream, as a replica that pulled it would have left it), and the fake upstream holding the
/// right blob (so that any fetch from it is counted). Neither replica has it on disk.
async fn two_replicas_over(
    named: &Digest,
    body: &Bytes,
    right: &Bytes,
) -> (Replicas, Arc<InMemory>) {
    let shared = Arc::new(InMemory::new());
    shared
        .put(&blob_key(named), PutPayload::from(body.clone()))
        .await
        .unwrap();
    let origin = format!("mirror/origins/registry.test/sha256/{}", named.hex());
    shared
        .put(&Path::from(origin), PutPayload::new())
        .await
        .unwrap();
    let r = replicas_over(&[true, true], Some(&shared)).await;
    r.fake.put_blob("library/app", right.clone());
    (r, shared)
}

/// The table of `d` asked of replica `i` from piece 0 until complete (each ask may wait a second
/// for a new hash); `None` if it answers other than 200 first.
async fn table(r: &Replicas, i: usize, d: &Digest, size: u64) -> Result<Pieces, String> {
    let deadline = std::time::Instant::now() + crate::support::instance::WAIT;
    loop {
        let a = r
            .fleet_call(i, Method::GET, &berth::fleet::pieces_path(d, 0), Vec::new())
            .await;
        if a.status != StatusCode::OK {
            return Err(format!("{}: {}", a.status, a.text()));
        }
        let p = Pieces::parse(&a.body, size).unwrap();
        if p.complete {
            return Ok(p);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the table never completed"
        );
    }
}

fn upstream_gets(r: &Replicas, d: &Digest) -> usize {
    r.fake
        .hits(Method::GET, &format!("/v2/library/app/blobs/{d}"))
}

/// A blob only the bucket holds: its table, asked of the replica that does not own it, comes
/// from the owner, which read the bucket's object for it and kept nothing (no file, no fill, no
/// upstream fetch); it matches the blob.
#[tokio::test]
async fn the_owner_makes_the_table_of_a_blob_only_the_bucket_holds() {
    let layer = random_bytes(3 * MIB + 77, 31);
    let d = Digest::of(&layer);
    let (r, _shared) = two_replicas_over(&d, &layer, &layer).await;
    let owner = r.owner_of(&d);
    let asker = 1 - owner;
    let got = table(&r, asker, &d, layer.len() as u64).await.unwrap();
    assert_eq!(got.hashes, piece_hashes(&layer));
    assert_eq!(
        r.counter(asker, PIECES_FALLBACK).await,
        0,
        "the owner's table"
    );
    assert_eq!(r.counter(owner, "berth_fleet_piece_tables").await, 1);
    assert_eq!(r.counter(asker, "berth_fleet_piece_tables").await, 0);
    assert!(
        !r.berth(owner).blob_file(&d.to_string()).exists(),
        "kept nothing"
    );
    assert_eq!(r.counter(owner, "berth_fills_in_flight").await, 0);
    assert_eq!(upstream_gets(&r, &d), 0);
}

/// A bucket object that does not hash to its name: no complete table is ever answered (the
/// owner's read holds its last chunk back until the digest checked), the object is deleted and
/// counted as a mismatch, and the node is told 404 (it then takes the blob from its parent,
/// which fetches it from the upstream).
#[tokio::test]
async fn a_wrong_object_in_the_bucket_gives_no_table_and_is_deleted() {
    let right = random_bytes(2 * MIB + 5, 32);
    let mut wrong = right.to_vec();
    wrong[MIB + 9] ^= 0x40;
    let d = Digest::of(&right);
    let (r, shared) = two_replicas_over(&d, &Bytes::from(wrong), &right).await;
    let owner = r.owner_of(&d);
    let asker = 1 - owner;
    let got = table(&r, asker, &d, right.len() as u64).await;
    let why = got.expect_err("a table over a wrong object");
    assert!(why.starts_with("404"), "{why}");
    assert_eq!(r.counter(owner, MISMATCH).await, 1);
    assert!(
        shared.head(&blob_key(&d)).await.is_err(),
        "deleted from the bucket"
    );
    // Asked again: nothing anywhere now.
    let a = r
        .fleet_call(
            asker,
            Method::GET,
            &berth::fleet::pieces_path(&d, 0),
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    assert_eq!(r.total(MISMATCH).await, 1, "read wrong once");
}

/// The owner's view of the bucket down: its read fails (no table there), and the replica asked
/// makes the table itself from its own view, counted as a fallback: the node still gets it.
#[tokio::test]
async fn with_the_owners_bucket_down_the_replica_asked_makes_the_table() {
    let layer = random_bytes(2 * MIB + 11, 33);
    let d = Digest::of(&layer);
    let (r, _shared) = two_replicas_over(&d, &layer, &layer).await;
    let owner = r.owner_of(&d);
    let asker = 1 - owner;
    r.bucket_faults[owner].down.store(true, Ordering::SeqCst);
    let got = table(&r, asker, &d, layer.len() as u64).await.unwrap();
    assert_eq!(got.hashes, piece_hashes(&layer));
    assert!(r.counter(asker, PIECES_FALLBACK).await >= 1);
    assert_eq!(r.counter(asker, "berth_fleet_piece_tables").await, 1);
    assert_eq!(r.counter(owner, "berth_fleet_piece_tables").await, 0);
    assert_eq!(upstream_gets(&r, &d), 0);
}

/// Four node berths behind two replicas over a bucket holding a blob (neither replica has it on
/// disk) pull it at once: about one copy leaves the central berth and the rest goes node to node,
/// every body verified, nothing fetched upstream. The node the parent feeds is made to be behind
/// the replica that does not own the digest (it pulls first; that replica's bucket reads are
/// held until every node joined), so its fill is there, not on the owner: before the owner
/// read the bucket for its table, the nodes behind the owner got no table, waited, and took
/// the whole blob from their parent (about 3 copies out of the central berth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_behind_replicas_over_a_bucket_share_one_copy() {
    let size = 4 * MIB + 123;
    let layer = random_bytes(size, 34);
    let d = Digest::of(&layer);
    let (r, _shared) = two_replicas_over(&d, &layer, &layer).await;
    let owner = r.owner_of(&d);
    let other = 1 - owner;
    let faults = &r.bucket_faults[other];
    faults.hold_get.store(true, Ordering::SeqCst);
    let behind = [other, owner, other, owner];
    let nodes = start_nodes(&r, &behind).await;
    let blob = d.to_string();
    let assigned = |n: u64| {
        let r = &r;
        move || async move {
            r.counter(
                owner,
                "berth_fleet_tracker_requests_total{outcome=\"assigned",
            )
            .await
                >= n
        }
    };
    let mut pulls = vec![pull(&nodes[0], &blob)];
    assert!(eventually(assigned(1)).await, "the first node never joined");
    let parent_fed = r
        .counter(
            owner,
            "berth_fleet_tracker_requests_total{outcome=\"assigned_parent\"}",
        )
        .await;
    assert_eq!(parent_fed, 1, "the first node is the parent's");
    pulls.extend(nodes[1..].iter().map(|n| pull(n, &blob)));
    assert!(
        eventually(assigned(behind.len() as u64)).await,
        "the nodes never all joined one swarm"
    );
    faults.hold_get.store(false, Ordering::SeqCst);
    faults.release.notify_one();
    for p in pulls {
        same(&p.await.unwrap(), &layer);
    }
    let from_parent = from_parent(&nodes).await;
    let size = size as u64;
    eprintln!(
        "4 nodes behind 2 replicas over a bucket got {from_parent} bytes of a {size}-byte blob \
         from the central berth"
    );
    // The same slack as without a bucket (`fleet_owner`): a node that gives a stalled peer up
    // to the parent on a loaded machine.
    assert!(
        from_parent <= size + size / 2,
        "{from_parent} bytes out of the central berth for a blob of {size}"
    );
    let mut from_peers = 0;
    for n in &nodes {
        from_peers += n.counter("berth_fleet_bytes_total{source=\"peer\"}").await;
    }
    assert!(from_peers >= 2 * size, "{from_peers} bytes node to node");
    assert_eq!(upstream_gets(&r, &d), 0, "the bucket held it");
    assert_eq!(r.total(PIECES_FALLBACK).await, 0, "every table the owner's");
}
