//! Replicas that share the work of filling blobs (`[cluster]`): who owns a digest, which
//! peers are live, and the peer protocol between them.
//!
//! - [`ring`]: rendezvous hashing of a digest over the peers (pure, pinned).
//! - [`membership`]: each peer's state (up/down) and the rules that move it; this berth is
//!   always live.
//! - [`auth`]: the proof a peer request carries (an HMAC of the request with the cluster secret)
//!   and its check.
//! - [`client`]: signed peer requests, sent with a bounded wait for the answer's head.
//! - [`metrics`]: `berth_cluster_peers{state}`, `berth_peer_requests_total{peer,outcome}`,
//!   `berth_peer_probes_total{peer,outcome}`, `berth_peer_auth_failures_total{reason}`.
//!
//! # The peer protocol
//! Peers talk to each other on the registry listener (the URL each gives as `[cluster] self`),
//! under [`PEER_PREFIX`], a path no OCI client sends (they all stay under `/v2/`), so one port
//! and one TLS setup serve clients and peers alike, and `/healthz` on the metrics listener stays
//! the readiness check of orchestrators. Every request under the prefix must carry a valid proof
//! ([`auth`]): one without gets `401` (counted in `berth_peer_auth_failures_total{reason}`) and
//! no peer-only behaviour, whatever the path; `[auth]` client logins play no part there.
//! - `GET /_berth/peer/v1/healthz` ([`HEALTH_PATH`]): `200` while this berth serves, `503` while
//!   it starts or drains. Probing it with a proof checks that the peer is up *and* shares the
//!   secret: a peer with another secret would refuse our blob requests, so it counts as down.
//! - `GET /_berth/peer/v1/blobs/<upstream>/<repo>/<digest>` ([`BLOBS_PATH`], `Range` allowed):
//!   the owner answers the blob as a client of its own would be answered (its single-flight fill,
//!   streamed while verified, uploaded to the bucket once committed), through the upstream of
//!   that name among its configured ones (looked up, never used as an address; unknown: 404),
//!   and never hands the miss on to another peer (no ping-pong when two replicas disagree on
//!   membership for a moment).
//! - `/_berth/peer/v1/fleet/...`: a fleet node's tracker calls, forwarded by the replica the node
//!   reached to the digest's owner when the replicas are also the fleet's parent (`fleet::owner`
//!   builds and answers them; this module only signs, sends and checks: [`Cluster::exchange`]).
//!
//! # How a fill calls it
//! On a blob miss (local disk, then the bucket), the fill asks [`Cluster::from_owner`]: when this
//! berth owns the digest it fills from its upstream as a single node would; otherwise it asks
//! each live owner in order and streams the first 2xx body into its own fill, still verified
//! against the digest here (a peer is trusted for availability, never for content), resumed from
//! its own upstream with `Range` if the peer's body breaks off. A peer that fails (down, slow,
//! refusing, 5xx) passes the miss to the next owner, then to this berth's own upstream; one that
//! answers 4xx has asked its upstream already, so only this berth's own upstream is asked after
//! it. Availability first: no peer can make a pull fail that the upstream could serve.
//! `berth_owner_handoffs_total{result}` counts what became of each miss (self, peer, fallback).
//!
//! The wait for an owner's answer head is `peer_timeout` plus the upstream's `response_timeout`
//! (the owner may be asking its upstream first); the connect alone is bounded by `peer_timeout`,
//! so a dead owner costs little and a live but slow one is waited for as the upstream would be.
//!
//! A peer's request joins a fill already running on the owner like any client's. Should two
//! replicas each believe the other owns a digest and both start a fill at once, each fill's peer
//! request joins the other's pending fill, and both wait out that bound before they fetch for
//! themselves: a delay and one extra fetch, never a failed pull or a wrong byte. Rendezvous
//! hashing makes it rare: a replica that sees one peer more or less than another never forms
//! such a pair with it (the best-ranked peer of the larger view that is also in the smaller one
//! is the smaller view's choice too); it takes two replicas each missing a different peer.
//!
//! Trade-offs: membership is each replica's own view (probes), not a consensus; for a moment
//! after a change two replicas may name different owners for a digest, which costs at most one
//! extra upstream fetch, never a wrong byte. Peers are a static list (`[cluster] peers`, a
//! restart to change), which a StatefulSet's stable names make sufficient.
//!
//! Rule of dependency: uses `config` (its settings), `oci`, `upstream::connect` (the
//! HTTP client builder); `assemble` builds it, `server` runs its prober, `http` answers the peer
//! routes with it, `fill` (`fill/job`) calls [`Cluster::from_owner`], `mirror` holds it for the
//! fills it starts. It never calls the mirror or the fill.

pub mod auth;
pub mod client;
pub mod membership;
pub mod metrics;
pub mod ring;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response, header};
use hyper::body::Incoming;

use prometheus::IntCounterVec;

use crate::config::ClusterConfig;
use crate::oci::{Digest, RepoName};
use auth::{PeerKey, Refusal};
use client::{BlobRange, PeerClient, PeerError};
use membership::{Membership, Peer};
use metrics::ClusterMetrics;

/// Every peer route lives under this prefix of the registry listener.
pub const PEER_PREFIX: &str = "/_berth/peer/";
/// The health route probed by the other peers.
pub const HEALTH_PATH: &str = "/_berth/peer/v1/healthz";
/// The blob route: `<upstream>/<repo>/<digest>` follows.
pub const BLOBS_PATH: &str = "/_berth/peer/v1/blobs/";

/// This berth's view of its cluster.
pub struct Cluster {
    members: Membership,
    /// Peer ids in config order, for hashing.
    ids: Vec<String>,
    client: PeerClient,
    /// Checks the proofs of incoming peer requests.
    key: PeerKey,
    health_interval: Duration,
    metrics: ClusterMetrics,
}

impl Cluster {
    /// Builds the cluster from a validated `[cluster]` table; the metric families go into
    /// `registry`.
    pub fn new(cfg: &ClusterConfig, registry: &prometheus::Registry) -> Result<Cluster, String> {
        let secret = cfg
            .secret
            .as_ref()
            .ok_or("the cluster secret was not read (the config was not validated)")?;
        let metrics = ClusterMetrics::register(registry).map_err(|e| e.to_string())?;
        let me_id = ClusterConfig::peer_id(&cfg.self_url);
        let peers: Vec<Peer> = cfg
            .peers
            .iter()
            .map(|u| Peer::new(u.clone(), ClusterConfig::peer_id(u), false))
            .collect();
        let me = peers
            .iter()
            .position(|p| p.id == me_id)
            .ok_or("self is not one of the peers")?;
        let ids = peers.iter().map(|p| p.id.clone()).collect();
        let client = PeerClient::new(
            PeerKey::new(secret),
            cfg.peer_timeout,
            cfg.ca_file.as_deref(),
        )?;
        Ok(Cluster {
            members: Membership::new(peers, me, cfg.down_after, metrics.clone()),
            ids,
            client,
            key: PeerKey::new(secret),
            health_interval: cfg.health_interval,
            metrics,
        })
    }

    /// The live peers for `digest` in preference order: the owner first, then the fallbacks.
    /// Never empty: this berth is always live.
    pub fn owners(&self, digest: &Digest) -> Vec<&Peer> {
        ring::rank(&self.ids, digest, |i| self.members.is_live(i))
            .into_iter()
            .map(|i| &self.members.peers()[i])
            .collect()
    }

    /// Whether `peer` is this berth.
    pub fn is_me(&self, peer: &Peer) -> bool {
        std::ptr::eq(peer, &self.members.peers()[self.members.me()])
    }

    /// Every configured peer, this berth included, in config order.
    pub fn peers(&self) -> &[Peer] {
        self.members.peers()
    }

    /// Whether an incoming request carries a valid proof; a refusal is counted.
    pub fn admit(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        admit(
            &self.key,
            method,
            path_and_query,
            headers,
            &self.metrics.auth_failures,
        )
    }

    /// Asks `peer` for a blob through `upstream` (its configured name), waiting `wait` for the
    /// answer's head (the connect within `peer_timeout`). A connect error marks the peer down at
    /// once, a timeout counts as a failed probe; either way the caller goes on to the next owner.
    pub async fn fetch_blob(
        &self,
        peer: &Peer,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        range: Option<BlobRange>,
        wait: Duration,
    ) -> Result<Response<Incoming>, PeerError> {
        let req = self
            .client
            .blob_request(&peer.id, upstream, repo, digest, range);
        let result = self.client.send_within(req, wait).await;
        self.count(peer, &result, |_| "ok");
        result
    }

    /// Sends `peer` a small signed call (`method path_and_query` with `body`) and reads its whole
    /// answer, at most `limit` bytes, within `wait`: its status and body, whatever the status but
    /// a refusal. Counted and failed like [`Cluster::fetch_blob`] (a connect error marks the peer
    /// down, a timeout counts as a failed probe). The fleet's forwarded tracker calls use it
    /// (`fleet::owner`); the cluster knows nothing of what they mean.
    pub async fn exchange(
        &self,
        peer: &Peer,
        method: http::Method,
        path_and_query: &str,
        body: bytes::Bytes,
        wait: Duration,
        limit: usize,
    ) -> Result<(http::StatusCode, bytes::Bytes), PeerError> {
        let req = self.client.signed(&peer.id, method, path_and_query, body);
        let result = self.client.exchange(req, wait, limit).await;
        self.count(
            peer,
            &result,
            |(s, _)| {
                if s.is_success() { "ok" } else { "status" }
            },
        );
        result
    }

    /// Hands a blob miss to the digest's owner: the first live owner's answer, streaming, or
    /// `None` when this berth is to fetch the blob itself (it owns the digest, or no owner before
    /// it in the order could answer). A peer that fails (down, slow, refusing, a 5xx) passes the
    /// miss to the next owner; one that answers a 4xx has asked its upstream, so nobody else is
    /// asked but this berth's own upstream, whose answer the client then gets. Never an error:
    /// availability first.
    ///
    /// An owner that misses too asks its upstream before it answers, so its answer's head may
    /// take `peer_timeout` plus `upstream_wait` (the upstream's `response_timeout`): cutting it
    /// at `peer_timeout` alone would send every miss behind a slow upstream (a token, a redirect
    /// to a CDN) to the upstream twice. The connect stays bounded by `peer_timeout`, and a dead
    /// peer is skipped at once.
    pub async fn from_owner(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        upstream_wait: Duration,
    ) -> Option<Response<Incoming>> {
        let wait = self.client.timeout() + upstream_wait;
        let owners = self.owners(digest);
        let mut result = "fallback";
        for (i, peer) in owners.into_iter().enumerate() {
            if self.is_me(peer) {
                if i == 0 {
                    result = "self";
                }
                break;
            }
            match self
                .fetch_blob(peer, upstream, repo, digest, None, wait)
                .await
            {
                Ok(resp) => {
                    self.metrics.handoffs.with_label_values(&["peer"]).inc();
                    return Some(resp);
                }
                Err(e) => {
                    // A 4xx is the owner's upstream's answer: only ours is asked after it.
                    let answered = matches!(e, PeerError::Status(s) if s.is_client_error());
                    let next = match answered {
                        true => "this replica's upstream",
                        false => "the next owner",
                    };
                    tracing::warn!(peer = %peer.id, %digest, error = %e, next, "a digest's owner did not serve the blob");
                    if answered {
                        break;
                    }
                }
            }
        }
        self.metrics.handoffs.with_label_values(&[result]).inc();
        None
    }

    fn index_of(&self, peer: &Peer) -> Option<usize> {
        self.members
            .peers()
            .iter()
            .position(|p| std::ptr::eq(p, peer))
    }

    /// Counts a request to `peer` by its outcome (`answered` names an answer's), and fails the
    /// peer on an error (see [`Cluster::failed`]).
    fn count<T>(
        &self,
        peer: &Peer,
        result: &Result<T, PeerError>,
        answered: impl FnOnce(&T) -> &'static str,
    ) {
        let outcome = match result {
            Ok(answer) => answered(answer),
            Err(e) => {
                self.failed(peer, e);
                e.outcome()
            }
        };
        self.metrics
            .requests
            .with_label_values(&[&peer.id, outcome])
            .inc();
    }

    fn failed(&self, peer: &Peer, e: &PeerError) {
        let Some(i) = self.index_of(peer) else { return };
        let why = e.to_string();
        match e {
            PeerError::Connect(_) => self.members.mark_down(i, &why),
            _ => self.members.probe_failed(i, &why),
        }
    }

    /// Probes every other peer once, all at once.
    pub async fn probe_all(&self) {
        let me = self.members.me();
        let probes = self
            .members
            .peers()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(i, p)| async move {
                let result = self.client.probe(&p.id).await;
                let outcome = match &result {
                    Ok(()) => {
                        self.members.probe_ok(i);
                        "ok"
                    }
                    Err(e) => {
                        tracing::debug!(peer = %p.id, error = %e, "cluster probe failed");
                        self.members.probe_failed(i, &e.to_string());
                        e.outcome()
                    }
                };
                self.metrics
                    .probes
                    .with_label_values(&[&p.id, outcome])
                    .inc();
            });
        futures_util::future::join_all(probes).await;
    }

    /// Probes the peers every `health_interval`, the first time at once, until aborted.
    pub fn spawn_prober(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cluster.health_interval);
            // A round that took long (peers timing out) is not followed by a burst of catch-ups.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                cluster.probe_all().await;
            }
        })
    }
}

/// Checks a signed request's proof under `key` now, counting a refusal by its reason in
/// `failures`: the one check of both signed protocols (the peers' here, the fleet's in `fleet`).
pub fn admit(
    key: &PeerKey,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    failures: &IntCounterVec,
) -> Result<(), Refusal> {
    key.verify(
        method,
        path_and_query,
        headers.get(header::AUTHORIZATION),
        auth::now(),
    )
    .inspect_err(|r| failures.with_label_values(&[r.as_str()]).inc())
}

#[cfg(test)]
mod tests;
