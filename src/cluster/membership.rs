//! Which peers are live: each peer's state, and the rules that move it.
//!
//! A peer other than this one starts down (not yet seen) and is up after its first good probe,
//! so a replica that starts next to dead peers fetches directly rather than waiting on them. It
//! goes down after `down_after` failed probes in a row, or at once when a peer request cannot
//! connect to it (a refused or timed-out connect is not a slow peer: asking it again would only
//! repeat the wait); one good probe brings it back. This berth itself is always live: it owns its
//! share whatever the others think of it, and fills it itself.
//!
//! Rule of dependency: a leaf (std atomics, the metrics handed in).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use url::Url;

use super::metrics::ClusterMetrics;

/// One replica of the cluster, as configured.
#[derive(Debug)]
pub struct Peer {
    /// Where it is reached (`[cluster] peers`).
    pub url: Url,
    /// Its identity, what ownership is hashed over: the URL's origin.
    pub id: String,
    up: AtomicBool,
    /// Failed probes in a row.
    failures: AtomicU32,
}

impl Peer {
    pub fn new(url: Url, id: String, up: bool) -> Peer {
        Peer {
            url,
            id,
            up: AtomicBool::new(up),
            failures: AtomicU32::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// The peers and their states.
#[derive(Debug)]
pub struct Membership {
    peers: Vec<Peer>,
    me: usize,
    down_after: u32,
    metrics: ClusterMetrics,
}

impl Membership {
    /// `me` indexes this berth in `peers` (up from the start; the others start down).
    pub fn new(peers: Vec<Peer>, me: usize, down_after: u32, metrics: ClusterMetrics) -> Self {
        let m = Membership {
            peers,
            me,
            down_after: down_after.max(1),
            metrics,
        };
        m.peers[me].up.store(true, Ordering::Relaxed);
        m.publish();
        m
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn me(&self) -> usize {
        self.me
    }

    pub fn is_live(&self, i: usize) -> bool {
        i == self.me || self.peers[i].is_up()
    }

    /// A probe of peer `i` answered well.
    pub fn probe_ok(&self, i: usize) {
        let p = &self.peers[i];
        p.failures.store(0, Ordering::Relaxed);
        if !p.up.swap(true, Ordering::Relaxed) {
            tracing::info!(peer = %p.id, "cluster peer is up");
            self.publish();
        }
    }

    /// A probe of peer `i` failed (or a request to it timed out): down after `down_after` in a row.
    pub fn probe_failed(&self, i: usize, why: &str) {
        let p = &self.peers[i];
        let n = p.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n >= self.down_after {
            self.mark_down(i, why);
        }
    }

    /// Peer `i` could not be connected to: down at once. Never this berth.
    pub fn mark_down(&self, i: usize, why: &str) {
        if i == self.me {
            return;
        }
        let p = &self.peers[i];
        if p.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(peer = %p.id, reason = why, "cluster peer is down; its digests go to the next owners");
            self.publish();
        }
    }

    fn publish(&self) {
        let up = (0..self.peers.len()).filter(|&i| self.is_live(i)).count() as i64;
        let g = &self.metrics.peers;
        g.with_label_values(&["up"]).set(up);
        g.with_label_values(&["down"])
            .set(self.peers.len() as i64 - up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(down_after: u32) -> (Membership, prometheus::Registry) {
        let r = prometheus::Registry::new();
        let metrics = ClusterMetrics::register(&r).unwrap();
        let peers = (1..=3)
            .map(|i| {
                let url: Url = format!("http://10.0.0.{i}:5000").parse().unwrap();
                let id = url.origin().ascii_serialization();
                Peer::new(url, id, false)
            })
            .collect();
        (Membership::new(peers, 0, down_after, metrics), r)
    }

    fn gauge(m: &Membership, state: &str) -> i64 {
        m.metrics.peers.with_label_values(&[state]).get()
    }

    #[test]
    fn states_move_by_the_rules() {
        let (m, _r) = three(2);
        assert!(m.is_live(0), "this berth is always live");
        assert!(!m.is_live(1) && !m.is_live(2), "others start unseen");
        assert_eq!((gauge(&m, "up"), gauge(&m, "down")), (1, 2));
        m.probe_ok(1);
        m.probe_ok(2);
        assert_eq!((gauge(&m, "up"), gauge(&m, "down")), (3, 0));
        // One failure is not enough; a good probe in between starts the count again.
        m.probe_failed(1, "timeout");
        m.probe_ok(1);
        m.probe_failed(1, "timeout");
        assert!(m.is_live(1));
        m.probe_failed(1, "timeout");
        assert!(!m.is_live(1));
        assert_eq!((gauge(&m, "up"), gauge(&m, "down")), (2, 1));
        // A connect error: down at once.
        m.mark_down(2, "connect");
        assert!(!m.is_live(2));
        // This berth cannot be marked down.
        m.mark_down(0, "connect");
        m.probe_failed(0, "x");
        m.probe_failed(0, "x");
        assert!(m.is_live(0));
        assert_eq!((gauge(&m, "up"), gauge(&m, "down")), (1, 2));
        m.probe_ok(2);
        assert_eq!((gauge(&m, "up"), gauge(&m, "down")), (2, 1));
    }
}
