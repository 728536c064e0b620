//! Who owns a digest: rendezvous (highest random weight) hashing over the live peers.
//!
//! Each peer's weight for a digest is the first 8 bytes (big-endian) of
//! `sha256(peer_id || "\n" || digest)`, with `peer_id` the peer's origin (`http://10.0.0.1:5000`)
//! and `digest` as written (`sha256:<hex>`); the peers in falling weight are the preference
//! order. Ties (never seen with 64 bits, but defined) go to the smaller id. The function is pure
//! and fixed: every replica, of any version, computes the same owner from the same peer list, and
//! removing a peer moves only the digests it owned (each other peer's weight is unchanged), adding
//! one moves only the digests it now wins. sha256 rather than a faster hash: it is already linked,
//! its output is specified forever, and one hash per peer per miss costs nothing next to a fill.
//!
//! Rule of dependency: a leaf (sha2 and `oci::Digest`).

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

/// A peer's weight for `digest`.
pub fn weight(peer_id: &str, digest: &Digest) -> u64 {
    let mut h = Sha256::new();
    h.update(peer_id.as_bytes());
    h.update(b"\n");
    h.update(digest.to_string().as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// The indexes of `ids` for which `live` holds, in preference order for `digest`: first the
/// owner, then the fallbacks.
pub fn rank(ids: &[String], digest: &Digest, live: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut w: Vec<(u64, usize)> = (0..ids.len())
        .filter(|&i| live(i))
        .map(|i| (weight(&ids[i], digest), i))
        .collect();
    w.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| ids[a.1].cmp(&ids[b.1])));
    w.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(n: u64) -> Digest {
        Digest::of(&n.to_be_bytes())
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("http://10.0.0.{}:5000", i + 1))
            .collect()
    }

    /// The hash is part of the protocol between replicas: these values must never change (they
    /// were checked with `printf 'http://10.0.0.1:5000\nsha256:<hex>' | sha256sum`).
    #[test]
    fn weights_are_pinned() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(weight("http://10.0.0.1:5000", &d), PINNED[0]);
        assert_eq!(weight("http://10.0.0.2:5000", &d), PINNED[1]);
        assert_eq!(weight("https://berth-0.berth", &d), PINNED[2]);
    }

    const PINNED: [u64; 3] = [
        0xd21f_9425_34e0_d33b,
        0xe34b_29f9_671c_a949,
        0x7377_b261_b838_124d,
    ];

    #[test]
    fn owners_are_the_live_peers_in_order() {
        let ids = ids(3);
        let d = digest(7);
        let all = rank(&ids, &d, |_| true);
        assert_eq!(all.len(), 3);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2]);
        let w: Vec<u64> = all.iter().map(|&i| weight(&ids[i], &d)).collect();
        assert!(w.windows(2).all(|p| p[0] >= p[1]), "{w:?}");
        // A peer that is down is skipped; the order of the rest holds.
        let without = rank(&ids, &d, |i| i != all[0]);
        assert_eq!(without, all[1..]);
        assert!(rank(&ids, &d, |_| false).is_empty());
    }

    /// 30,000 digests over 3 peers: each gets its third within 3%.
    #[test]
    fn spread_is_even() {
        let ids = ids(3);
        let mut count = [0u32; 3];
        for n in 0..30_000 {
            count[rank(&ids, &digest(n), |_| true)[0]] += 1;
        }
        for c in count {
            assert!((9_700..=10_300).contains(&c), "{count:?}");
        }
    }

    proptest! {
        /// Removing a peer moves only the digests it owned, each to its next choice.
        #[test]
        fn removing_a_peer_moves_only_its_digests(n in 2usize..8, gone in 0usize..8, seeds in proptest::collection::vec(any::<u64>(), 1..200)) {
            let ids = ids(n);
            let gone = gone % n;
            for s in seeds {
                let d = digest(s);
                let before = rank(&ids, &d, |_| true);
                let after = rank(&ids, &d, |i| i != gone);
                let expect: Vec<usize> = before.iter().copied().filter(|&i| i != gone).collect();
                prop_assert_eq!(&after, &expect);
                if before[0] != gone {
                    prop_assert_eq!(after[0], before[0]);
                }
            }
        }

        /// Adding a peer moves only the digests it wins, and only to it.
        #[test]
        fn adding_a_peer_moves_only_digests_to_it(n in 1usize..8, seeds in proptest::collection::vec(any::<u64>(), 1..200)) {
            let small = ids(n);
            let big = ids(n + 1);
            for s in seeds {
                let d = digest(s);
                let before = rank(&small, &d, |_| true)[0];
                let after = rank(&big, &d, |_| true)[0];
                prop_assert!(after == before || after == n, "moved from {} to {}", before, after);
            }
        }
    }
}
