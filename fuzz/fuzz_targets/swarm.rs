//! The swarm protocol's bodies (from nodes, the tracker and directory nodes, all across the
//! network): parsing never panics, and what parses names only the fleet's nodes, stays inside the
//! blob, and encodes back to itself. The first byte picks the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

use berth::swarm::node::{Fleet, NodeUrl};
use berth::swarm::protocol::{
    HolderNote, Holders, Pieces, SwarmAnswer, SwarmRequest, pieces_from,
};
use berth::swarm::tracker::Assignment;

fn fleet() -> Fleet {
    Fleet::new(
        ["http://10.0.0.1:5000", "http://10.0.0.2:5000", "https://node-3.berth"]
            .iter()
            .map(|s| s.parse::<NodeUrl>().expect("a node URL")),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let fleet = fleet();
    let me: NodeUrl = "http://10.0.0.1:5000".parse().expect("a node URL");
    match pick % 6 {
        0 => {
            if let Ok(r) = SwarmRequest::parse(body, &fleet) {
                assert!(fleet.contains(&r.node));
                assert!(r.dropped.as_ref().is_none_or(|(u, _)| fleet.contains(u) && *u != r.node));
                assert_eq!(SwarmRequest::parse(&r.encode(), &fleet), Ok(r));
            }
        }
        1 => {
            if let Ok(a) = SwarmAnswer::parse(body, &fleet, &me) {
                if let Some(Assignment::Node { url, have, .. }) = &a.source {
                    assert!(fleet.contains(url) && *url != me);
                    assert!(*have <= a.layout.size());
                }
                assert_eq!(SwarmAnswer::parse(&a.encode(), &fleet, &me), Ok(a));
            }
        }
        2 | 3 => {
            // The size the node was told: the body's own, when it names one, so parsing goes deep.
            let size = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("size").and_then(|s| s.as_u64()))
                .unwrap_or(0);
            if let Ok(p) = Pieces::parse(body, size) {
                let end = u64::from(p.first) + p.hashes.len() as u64;
                assert!(end <= u64::from(p.layout.count()));
                assert_eq!(Pieces::parse(&p.encode(), size), Ok(p));
            }
        }
        4 => {
            if let Ok(h) = Holders::parse(body, &fleet, &me) {
                assert!(h.holders.iter().all(|n| fleet.contains(n) && *n != me));
                assert_eq!(Holders::parse(&h.encode(), &fleet, &me), Ok(h));
            }
            if let Ok(n) = HolderNote::parse(body, &fleet) {
                assert_eq!(HolderNote::parse(&n.encode(), &fleet), Ok(n));
            }
        }
        _ => {
            if let Ok(q) = std::str::from_utf8(body)
                && let Ok(k) = pieces_from(Some(q))
            {
                assert!(k <= 4096);
            }
        }
    }
});
