//! The parent's tracker calls: the fleet learned from signed calls, the blob's size, the chain
//! rule through the protocol, refusals and counts.

use std::collections::HashMap;

use super::*;
use crate::error::Error;
use crate::fleet::tables::Followed;
use crate::swarm::protocol::{MAX_SMALL_BODY, SwarmRequest};
use futures_util::future::BoxFuture;

/// Blobs of known size only (the tables are tested in `tables`).
#[derive(Default)]
struct Sizes(Mutex<HashMap<Digest, u64>>);

impl Blobs for Sizes {
    fn size<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move { self.0.lock().unwrap().get(d).copied() })
    }
    fn follow<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Option<Followed>, Error>> {
        Box::pin(async { Ok(None) })
    }
}

fn parent() -> (Parent, Arc<Sizes>, Registry) {
    let sizes = Arc::new(Sizes::default());
    let registry = Registry::new();
    let p = Parent::new(sizes.clone(), Limits::default(), &registry).unwrap();
    (p, sizes, registry)
}

fn node(i: u8) -> NodeUrl {
    format!("http://10.0.0.{i}:5000").parse().unwrap()
}

fn join(n: &NodeUrl) -> Vec<u8> {
    SwarmRequest {
        node: n.clone(),
        have: 0,
        complete: false,
        need_source: true,
        uploads: None,
        dropped: None,
    }
    .encode()
}

fn d() -> Digest {
    Digest::of(b"blob")
}

const MIB: u64 = 1 << 20;

fn counted(p: &Parent, outcome: &str) -> u64 {
    p.requests.with_label_values(&[outcome]).get()
}

/// Three nodes join a fresh digest: the first gets the parent, each next one the node before it
/// (the tracker's chain rule, one parent slot by default), over the protocol's bodies; the
/// answer carries the size.
#[tokio::test]
async fn three_nodes_make_a_chain() {
    let (p, sizes, registry) = parent();
    sizes.0.lock().unwrap().insert(d(), 10 * MIB);
    let mut sources = Vec::new();
    for i in 1..=3 {
        let a = p.swarm(&d(), &join(&node(i)), None).await.unwrap();
        assert_eq!(a.layout, Layout::new(10 * MIB));
        sources.push(a.source.unwrap());
    }
    assert_eq!(sources[0], Assignment::Parent);
    for (i, s) in sources.iter().enumerate().skip(1) {
        match s {
            Assignment::Node { url, .. } => assert_eq!(*url, node(i as u8)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(p.nodes(), 3);
    assert_eq!(p.swarms.get(), 1);
    assert_eq!(
        (counted(&p, "assigned_parent"), counted(&p, "assigned_node")),
        (1, 2)
    );
    // Every family is there from the start, each label too.
    let names: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    for n in [
        "berth_fleet_swarms",
        "berth_fleet_piece_tables",
        "berth_fleet_tracker_requests_total",
        "berth_fleet_sources_dropped_total",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
}

/// The size: the parent's own first, else a complete node's, else the request's `?size`; none:
/// unknown; a `?size` against what the parent knows: refused.
#[tokio::test]
async fn the_size_comes_from_the_parent_first() {
    let (p, sizes, _) = parent();
    match p.swarm(&d(), &join(&node(1)), None).await {
        Err(Refusal::Unknown(m)) => assert!(m.contains("size"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(counted(&p, "unknown_size"), 1);
    let a = p
        .swarm(&d(), &join(&node(1)), Some("size=5000"))
        .await
        .unwrap();
    assert_eq!(a.layout.size(), 5000);
    // The live swarm keeps that size for calls that do not say it, and refuses another.
    let a = p.swarm(&d(), &join(&node(2)), None).await.unwrap();
    assert_eq!(a.layout.size(), 5000);
    match p.swarm(&d(), &join(&node(2)), Some("size=4000")).await {
        Err(Refusal::BadRequest(m)) => assert!(m.contains("swarm's blob has 5000"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A holder says its size by being complete.
    let other = Digest::of(b"other");
    let hold = SwarmRequest {
        node: node(2),
        have: 7,
        complete: true,
        need_source: false,
        uploads: None,
        dropped: None,
    };
    let a = p.swarm(&other, &hold.encode(), None).await.unwrap();
    assert_eq!((a.layout.size(), a.source), (7, None));
    assert_eq!(counted(&p, "kept"), 1);
    // The parent's own size wins, and a claim against it is refused.
    sizes.0.lock().unwrap().insert(d(), 6000);
    let a = p.swarm(&d(), &join(&node(3)), None).await.unwrap();
    assert_eq!(a.layout.size(), 6000);
    match p.swarm(&d(), &join(&node(3)), Some("size=5000")).await {
        Err(Refusal::BadRequest(m)) => assert!(m.contains("6000"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A complete node whose `have` is not the blob's size.
    let liar = SwarmRequest {
        have: 5,
        ..hold.clone()
    };
    assert!(matches!(
        p.swarm(&d(), &liar.encode(), None).await,
        Err(Refusal::BadRequest(_))
    ));
    assert_eq!(counted(&p, "bad_request"), 3);
}

/// Wrong bodies are refused with why, and leave no node behind; a `dropped` source must be a
/// node the parent knows (one that joined by its own call); a drop is counted by reason.
#[tokio::test]
async fn wrong_bodies_are_refused_and_leave_nothing() {
    let (p, sizes, _) = parent();
    sizes.0.lock().unwrap().insert(d(), MIB);
    let bad = |r: Result<SwarmAnswer, Refusal>| match r {
        Err(Refusal::BadRequest(m)) => m,
        other => panic!("{other:?}"),
    };
    let huge = vec![b' '; MAX_SMALL_BODY + 1];
    assert!(bad(p.swarm(&d(), &huge, None).await).contains("over"));
    assert!(bad(p.swarm(&d(), b"{", None).await).contains("malformed"));
    assert!(bad(p.swarm(&d(), b"{\"have\":0}", None).await).contains("malformed"));
    let pathy =
        br#"{"node":"http://10.0.0.1:5000/v2/","have":0,"complete":false,"need_source":true}"#;
    assert!(bad(p.swarm(&d(), pathy, None).await).contains("origin"));
    let unknown_field =
        br#"{"node":"http://10.0.0.1:5000","have":0,"complete":false,"need_source":true,"x":1}"#;
    assert!(bad(p.swarm(&d(), unknown_field, None).await).contains("malformed"));
    assert!(bad(p.swarm(&d(), &join(&node(1)), Some("size=x")).await).contains("size"));
    assert!(bad(p.swarm(&d(), &join(&node(1)), Some("from=1")).await).contains("unexpected"));
    assert_eq!(p.nodes(), 0, "no refused body leaves its node");

    // Node 1 joins; node 2 names a source nobody knows: refused.
    p.swarm(&d(), &join(&node(1)), None).await.unwrap();
    let drop_from = |src: &str, reason: &str| {
        format!(
            r#"{{"node":"{}","have":0,"complete":false,"need_source":true,"dropped":{{"url":"{src}","reason":"{reason}"}}}}"#,
            node(2)
        )
    };
    let m = bad(p
        .swarm(
            &d(),
            drop_from("http://evil.example:80", "stall").as_bytes(),
            None,
        )
        .await);
    assert!(m.contains("not a node of the fleet"), "{m}");
    assert_eq!(p.nodes(), 1);
    // Node 1 is known: a drop of it is taken and counted.
    p.swarm(
        &d(),
        drop_from(node(1).as_str(), "bad_piece").as_bytes(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(p.dropped.with_label_values(&["bad_piece"]).get(), 1);
    assert_eq!(p.dropped.with_label_values(&["stall"]).get(), 0);
    assert_eq!(p.nodes(), 2);
    assert_eq!(counted(&p, "bad_request"), 8);
}

/// Nodes not heard from for `EXPIRY` are forgotten at the next sweep, with their swarms.
#[tokio::test]
async fn silent_nodes_are_forgotten() {
    let (p, sizes, _) = parent();
    sizes.0.lock().unwrap().insert(d(), MIB);
    let t0 = Instant::now();
    for i in 1..=3 {
        p.swarm_at(&d(), &join(&node(i)), None, t0).await.unwrap();
    }
    assert_eq!((p.nodes(), p.swarms.get()), (3, 1));
    let later = t0 + EXPIRY + SWEEP_EVERY;
    let other = Digest::of(b"other");
    sizes.0.lock().unwrap().insert(other.clone(), MIB);
    let a = p
        .swarm_at(&other, &join(&node(4)), None, later)
        .await
        .unwrap();
    assert_eq!(a.source, Some(Assignment::Parent));
    assert_eq!((p.nodes(), p.swarms.get()), (1, 1));
    // A forgotten node that comes back rejoins, and is never handed a forgotten one.
    let a = p
        .swarm_at(&d(), &join(&node(1)), None, later)
        .await
        .unwrap();
    assert_eq!(a.source, Some(Assignment::Parent));
}

#[test]
fn the_size_query() {
    assert_eq!(size_query(None), Ok(None));
    assert_eq!(size_query(Some("")), Ok(None));
    assert_eq!(size_query(Some("size=12")), Ok(Some(12)));
    for bad in [
        "size=",
        "size=-1",
        "size=1&size=2",
        "from=1",
        "size",
        "size=1&x=2",
    ] {
        assert!(size_query(Some(bad)).is_err(), "{bad}");
    }
}

/// Past the most nodes it knows, the parent refuses a new one (known ones go on), until silent
/// ones are forgotten.
#[tokio::test]
async fn the_node_set_is_bounded() {
    let (mut p, sizes, _) = parent();
    p.max_nodes = 2;
    sizes.0.lock().unwrap().insert(d(), MIB);
    let t0 = Instant::now();
    p.swarm_at(&d(), &join(&node(1)), None, t0).await.unwrap();
    p.swarm_at(&d(), &join(&node(2)), None, t0).await.unwrap();
    match p.swarm_at(&d(), &join(&node(3)), None, t0).await {
        Err(Refusal::Full(m)) => assert!(m.contains("2 nodes"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!((p.nodes(), counted(&p, "refused")), (2, 1));
    p.swarm_at(&d(), &join(&node(1)), None, t0).await.unwrap();
    let later = t0 + EXPIRY + SWEEP_EVERY;
    p.swarm_at(&d(), &join(&node(3)), None, later)
        .await
        .unwrap();
    assert_eq!(p.nodes(), 1);
}
