//! The cluster's metric families, registered in the registry it is handed.
//!
//! Rule of dependency: a leaf (prometheus).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::auth::Refusal;

/// Handles on the cluster's families; cheap to clone.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// `berth_cluster_peers{state}`: peers up (this one always counts as up) and down.
    pub peers: IntGaugeVec,
    /// `berth_peer_requests_total{peer,outcome}`: requests this berth sent to a peer (not the
    /// probes), by outcome: ok, refused (401/403: the peer does not share our secret), status
    /// (another answer), connect_error (the peer is marked down at once), timeout, error.
    pub requests: IntCounterVec,
    /// `berth_peer_probes_total{peer,outcome}`: health probes sent, by the same outcomes.
    pub probes: IntCounterVec,
    /// `berth_peer_auth_failures_total{reason}`: requests to the peer routes refused with 401:
    /// missing, malformed, expired, bad_proof.
    pub auth_failures: IntCounterVec,
    /// `berth_owner_handoffs_total{result}`: blob misses and who filled them: `self` (this berth
    /// owns the digest), `peer` (its owner answered), `fallback` (no owner could; fetched here).
    pub handoffs: IntCounterVec,
}

impl ClusterMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ClusterMetrics> {
        let m = ClusterMetrics {
            peers: IntGaugeVec::new(
                Opts::new(
                    "berth_cluster_peers",
                    "Cluster peers by state (up, down), this berth included (always up).",
                ),
                &["state"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "berth_peer_requests_total",
                    "Requests sent to a peer, by peer and outcome (ok, refused, status, connect_error, timeout, error).",
                ),
                &["peer", "outcome"],
            )?,
            probes: IntCounterVec::new(
                Opts::new(
                    "berth_peer_probes_total",
                    "Health probes sent to a peer, by peer and outcome (as berth_peer_requests_total).",
                ),
                &["peer", "outcome"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "berth_peer_auth_failures_total",
                    "Requests to the peer routes refused for want of a valid proof, by reason (missing, malformed, expired, bad_proof).",
                ),
                &["reason"],
            )?,
            handoffs: IntCounterVec::new(
                Opts::new(
                    "berth_owner_handoffs_total",
                    "Blob misses by who filled them: self (this berth owns the digest), peer (its owner answered), fallback (no owner could; fetched here).",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.peers.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.probes.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.handoffs.clone()))?;
        for r in ["self", "peer", "fallback"] {
            m.handoffs.with_label_values(&[r]);
        }
        for r in Refusal::ALL {
            m.auth_failures.with_label_values(&[r.as_str()]);
        }
        Ok(m)
    }
}
