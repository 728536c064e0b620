//! Node mode (`[fleet]`): a berth on every node, in front of a central berth (its parent), which
//! the node's container runtime uses as its mirror.
//!
//! - [`listing`]: the parent's upstream list (`GET /_berth/fleet/v1/upstreams`), made from its
//!   running upstreams, parsed strictly by the node, and turned into the node's upstreams;
//! - [`node`]: a node's side: asking its parent for that list at start and on reload, and keeping
//!   the last good one on disk;
//! - [`parent`]: the parent's side of the swarm: the tracker
//!   (`POST /_berth/fleet/v1/swarm/<digest>`), who the fleet is as the parent sees it (nodes
//!   known by their signed calls), the blob's size, the counts; [`tables`]: the parent's piece
//!   tables (`GET /_berth/fleet/v1/pieces/<digest>`), made lazily by reading the blob as a client
//!   would; [`owner`]: on a replica of a `[cluster]`, both calls forwarded to the digest's owner
//!   replica, so that one tracker decides each digest for the whole fleet; `call`: what both of
//!   those read of a node's call (its refusals, its query, its sender);
//! - this file: the protocol's paths, its proof ([`Fleet::admit`], the cluster's HMAC scheme under
//!   the fleet's own name) and its metric.
//!
//! # The node's design
//! A node is an ordinary berth whose upstreams are its parent's. At start (and on `SIGHUP`) it
//! asks the parent, fleet-signed, for the parent's upstream names, aliases, default flag, library
//! rule and tag TTL, and makes one upstream per name whose URL is the parent and whose every
//! request carries `?ns=<name>` (`UpstreamConfig::namespace`; the upstream client adds it after
//! the request's own query, `n`/`last` of a tag list or `artifactType` of a referrers list, and
//! keeps it across a redirect back to the parent). So a runtime's request in any form the parent
//! understands (a plain path for the default upstream, `?ns=<host>`, a `/v2/<host>/...` prefix,
//! an alias) is routed by the node's own route parser to the same upstream the parent would pick,
//! and answered by the node's ordinary mirror: manifests and tags fetched from the parent and
//! verified against their digest, blobs filled from the parent and verified while they stream,
//! both cached on the node's disk under the same names the parent uses, served stale (tags) or
//! from disk when the parent is down, `503` for what neither the node nor (for a blob) another
//! node holds.
//!
//! Why a synthesized upstream list rather than a new kind of source beside `upstream`: the
//! mirror's whole machinery (single-flight fills, resume with `Range`, the stall timeouts, the
//! stale-tag rule, the access check, the per-upstream cache layout) already works per upstream,
//! and a parent berth is, seen from the node, exactly a registry that serves several namespaces
//! on one address; the only new thing a request needs is the `ns` parameter, one line in the
//! upstream client. A new source would have had to repeat every rule the mirror keeps. The cost:
//! the node's list follows the parent's only at start and on reload (a new upstream on the parent
//! needs a `SIGHUP` or a restart of the nodes), which the DaemonSet's rollout gives anyway.
//!
//! Why the parent is the only source of manifests, tags and referrers: they decide *what* a pull
//! gets (a tag's digest, the signature policy's verdict, the access decision), and one place
//! deciding them keeps every node's answer the same and the policy unbypassable. Blobs are
//! content-addressed, so any holder's bytes can be checked against the digest the parent's
//! manifest named; only they may come from other nodes (the swarm, module `swarm`).
//!
//! With the parent down, a node serves what it holds: blobs and manifests by digest from its
//! disk, tags from its cache whatever their age (as any berth does with its upstream down), a
//! blob by digest that another node holds through the directory (the nodes that keep each
//! digest's holders, chosen by rendezvous over the node set; `fill::swarm`), checked whole, and
//! `503 UNAVAILABLE` for the rest. The list of upstreams is kept at
//! `<storage>/fleet/upstreams.json` (written atomically after each good answer), so a node
//! restarted while the parent is down still knows its upstreams and serves its disk. A first
//! start with neither the parent nor a saved list fails, saying so: the orchestrator restarts it.
//!
//! A node's blob misses go to the swarm (`fill::swarm`, over the core in module `swarm`): the
//! tracker on the parent names a source (another node, or the parent), and the node serves what
//! it has verified to the nodes the tracker sends it (`GET /_berth/fleet/v1/blobs/<digest>`,
//! `[fleet] max_uploads` at once); any failure of the swarm leaves the pull to the parent, as
//! before. `self`, the node set (`peers_dns`/`peers`) and `max_uploads` serve that.
//!
//! # Trust
//! Fleet requests (node to parent, node to node) carry `Authorization: Berth-Fleet <ts>
//! <hmac>`: the cluster's scheme (`cluster::auth`) with the domain string `berth-fleet-v1`, so a
//! cluster proof is never a fleet proof, even over one secret. Paths under [`PREFIX`] without a
//! valid proof get `401` and nothing else, counted in `berth_fleet_auth_failures_total{reason}`.
//!
//! A request with a body (`POST` of a swarm call, `PUT` of a holder's note: [`has_body`]) also
//! carries [`BODY_HEADER`]` : sha256:<hex>`, its body's digest, and the proof signs it: the signed
//! target is the path and query, a newline, and that digest ([`signed_target`]; a request target
//! holds no newline, so no bodiless request's target is a bodied one's). The proof is checked
//! before the body is read (so a caller without the secret holds no slot while it sends one), and
//! the body, once read, must hash to the digest named, else `401` (counted as `bad_proof`: it
//! is another request than the one signed). Why not sign the body itself: the check would then
//! wait for the body of anyone who sends a header of the right shape. What it gives: a reader of
//! a node's call can no longer send another body (another node's name, another progress, another
//! holder) under its proof; the same call, byte for byte, may still be replayed within the
//! proof's age limit (`cluster::auth::MAX_SKEW`), which repeats a report or a note already made.
//! The owner-forwarded call (`owner`) binds its body the same way, by its digest in the path.
//! The node's registry requests to the parent are ordinary client requests: with `[auth]` on the
//! parent, the node logs in with `[fleet] username`/`password_file` like any client, and the
//! parent's access policy applies to it. Nothing the parent sends picks an address: the node's
//! upstream URL is `[fleet] parent`, and the listing only names namespaces on it.
//!
//! Rule of dependency: uses `config` (its table, the upstream checks), `cluster::auth` (the HMAC
//! scheme) and `cluster::admit` (its counted check), `cluster::Cluster` (in [`owner`]: the
//! digests' owners and the signed peer exchange), `upstream::connect` (the HTTP client
//! builder), `swarm` (the tracker, the piece tables and the protocol's bodies, in [`parent`] and
//! [`tables`]; the drop reasons, as metric labels); `assemble` builds it (and hands the parent the
//! mirror as a [`tables::Blobs`]), `reload` asks [`node`] again, `http` answers the fleet routes
//! with it, `fill::swarm` (a node's fills from the swarm) signs with it and counts in its
//! [`NodeMetrics`]. It never calls the mirror, the fill or the store.

mod call;
pub mod listing;
pub mod node;
pub mod owner;
pub mod parent;
pub mod tables;

use http::{HeaderMap, HeaderValue};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::cluster::auth::{PeerKey, Refusal};
use crate::config::{FleetConfig, Secret};
use crate::oci::Digest;

/// Every fleet route lives under this prefix of the registry listener.
pub const PREFIX: &str = "/_berth/fleet/";
/// The parent's upstream list.
pub const UPSTREAMS_PATH: &str = "/_berth/fleet/v1/upstreams";
/// The tracker, on the parent: `POST` this followed by a digest.
pub const SWARM_PATH: &str = "/_berth/fleet/v1/swarm/";
/// The piece tables, on the parent: `GET` this followed by a digest, `?from=K`.
pub const PIECES_PATH: &str = "/_berth/fleet/v1/pieces/";
/// The directory, on a node (`swarm::directory`): `PUT` (a node holds it) or `GET` (who holds
/// it) this followed by a digest.
pub const HOLDERS_PATH: &str = "/_berth/fleet/v1/holders/";

/// The path of `digest`'s holders on a directory node.
pub fn holders_path(digest: &Digest) -> String {
    format!("{HOLDERS_PATH}{digest}")
}

/// The path of `digest`'s swarm call, with the size the node knows (`?size=N`) if any.
pub fn swarm_path(digest: &Digest, size: Option<u64>) -> String {
    match size {
        Some(n) => format!("{SWARM_PATH}{digest}?size={n}"),
        None => format!("{SWARM_PATH}{digest}"),
    }
}

/// The path of `digest`'s piece hashes from piece `from` on.
pub fn pieces_path(digest: &Digest, from: u32) -> String {
    format!("{PIECES_PATH}{digest}?from={from}")
}

/// The header naming the body of a fleet request that has one, `sha256:<hex>`; the proof signs it.
pub const BODY_HEADER: &str = "berth-fleet-body";

/// Whether a fleet request of `method` has a body its proof covers (`POST`, `PUT`).
pub fn has_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT")
}

/// What a fleet proof signs as the request's target: its path and query, and for a request with
/// a body a second line naming the body's digest.
pub fn signed_target<'a>(
    path_and_query: &'a str,
    body: Option<&Digest>,
) -> std::borrow::Cow<'a, str> {
    match body {
        Some(d) => format!("{path_and_query}\n{d}").into(),
        None => path_and_query.into(),
    }
}

/// The proof of a request with `body` made at `now`: its `Authorization` and its
/// [`BODY_HEADER`].
pub fn sign_body(
    key: &PeerKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: u64,
) -> (HeaderValue, HeaderValue) {
    let d = Digest::of(body);
    let named = HeaderValue::from_str(&d.to_string()).expect("a digest is a header value");
    (
        key.sign(method, &signed_target(path_and_query, Some(&d)), now),
        named,
    )
}

/// The body digest a request of `method` names, if it has a body: `Ok(None)` for a method
/// without one; a missing or unreadable header is a malformed proof.
fn named_body(method: &str, headers: &HeaderMap) -> Result<Option<Digest>, Refusal> {
    if !has_body(method) {
        return Ok(None);
    }
    let v = headers.get(BODY_HEADER).ok_or(Refusal::Malformed)?;
    let d = v.to_str().ok().and_then(|s| s.parse().ok());
    d.map(Some).ok_or(Refusal::Malformed)
}

/// Checks a whole fleet request (its body read) under `key` at `now`, uncounted: for callers
/// that hold the body already (a test's fake parent).
pub fn verify(
    key: &PeerKey,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(), Refusal> {
    if !headers.contains_key(http::header::AUTHORIZATION) {
        return Err(Refusal::Missing);
    }
    let named = named_body(method, headers)?;
    let target = signed_target(path_and_query, named.as_ref());
    key.verify(
        method,
        &target,
        headers.get(http::header::AUTHORIZATION),
        now,
    )?;
    match named {
        Some(d) if Digest::of(body) != d => Err(Refusal::BadProof),
        _ => Ok(()),
    }
}

/// The `Authorization` scheme of fleet requests.
pub const SCHEME: &str = "Berth-Fleet";
/// The domain string of fleet proofs (the cluster's is `berth-peer-v1`).
pub const DOMAIN: &str = "berth-fleet-v1";

/// The fleet secret as an HMAC key, for the fleet's protocol only.
pub fn key(secret: &Secret) -> PeerKey {
    PeerKey::for_protocol(secret, SCHEME, DOMAIN)
}

/// This berth's place in a fleet: node or parent, and the check of incoming fleet requests.
pub struct Fleet {
    key: PeerKey,
    node: bool,
    /// On the parent: the tracker and the piece tables ([`Fleet::with_parent`]).
    parent: Option<parent::Parent>,
    /// `berth_fleet_auth_failures_total{reason}`: fleet requests refused with 401.
    auth_failures: IntCounterVec,
    metrics: NodeMetrics,
}

/// A node's swarm counters (registered on a node only; a parent keeps unregistered ones).
#[derive(Clone)]
pub struct NodeMetrics {
    /// `berth_fleet_bytes_total{source}`: bytes this node's fills got, from the parent or a peer.
    pub bytes: IntCounterVec,
    /// `berth_fleet_served_bytes_total`: bytes this node sent to other nodes.
    pub served: IntCounter,
    /// `berth_fleet_pieces_rejected_total`: pieces from a peer that failed the parent's table.
    pub pieces_rejected: IntCounter,
    /// `berth_fleet_peers_dropped_total{reason}`: sources this node left, by why.
    pub peers_dropped: IntCounterVec,
}

/// The `source` labels of `berth_fleet_bytes_total`.
pub const BYTE_SOURCES: [&str; 3] = ["parent", "peer", "holder"];

impl NodeMetrics {
    fn new() -> Result<NodeMetrics, prometheus::Error> {
        let m = NodeMetrics {
            bytes: IntCounterVec::new(
                Opts::new(
                    "berth_fleet_bytes_total",
                    "Bytes this node's blob fills got, by source (parent, peer, holder: a node the directory named while the parent could not be reached).",
                ),
                &["source"],
            )?,
            served: IntCounter::new(
                "berth_fleet_served_bytes_total",
                "Blob bytes this node sent to other nodes.",
            )?,
            pieces_rejected: IntCounter::new(
                "berth_fleet_pieces_rejected_total",
                "Pieces from other nodes that did not match the parent's piece table.",
            )?,
            peers_dropped: IntCounterVec::new(
                Opts::new(
                    "berth_fleet_peers_dropped_total",
                    "Sources (other nodes) this node left mid-blob, by reason (bad_piece, stall, starved, closed, busy, unreachable).",
                ),
                &["reason"],
            )?,
        };
        for s in BYTE_SOURCES {
            m.bytes.with_label_values(&[s]);
        }
        for r in crate::swarm::tracker::Reason::ALL {
            m.peers_dropped.with_label_values(&[r.as_str()]);
        }
        Ok(m)
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.bytes.clone()))?;
        registry.register(Box::new(self.served.clone()))?;
        registry.register(Box::new(self.pieces_rejected.clone()))?;
        registry.register(Box::new(self.peers_dropped.clone()))
    }
}

impl Fleet {
    /// From a validated `[fleet]` table; the metric family goes into `registry`.
    pub fn new(cfg: &FleetConfig, registry: &Registry) -> Result<Fleet, String> {
        let secret = cfg
            .secret
            .as_ref()
            .ok_or("the fleet secret was not read (the config was not validated)")?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "berth_fleet_auth_failures_total",
                "Requests to the fleet routes refused for want of a valid proof, by reason (missing, malformed, expired, bad_proof).",
            ),
            &["reason"],
        )
        .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(auth_failures.clone()))
            .map_err(|e| e.to_string())?;
        for r in Refusal::ALL {
            auth_failures.with_label_values(&[r.as_str()]);
        }
        let metrics = NodeMetrics::new().map_err(|e| e.to_string())?;
        if cfg.is_node() {
            metrics.register(registry).map_err(|e| e.to_string())?;
        }
        Ok(Fleet {
            key: key(secret),
            node: cfg.is_node(),
            parent: None,
            auth_failures,
            metrics,
        })
    }

    /// The parent's tracker and piece tables (on a node, ignored: a node is no tracker).
    pub fn with_parent(mut self, parent: parent::Parent) -> Fleet {
        if !self.node {
            self.parent = Some(parent);
        }
        self
    }

    /// The tracker and piece tables, on a parent built with them.
    pub fn parent(&self) -> Option<&parent::Parent> {
        self.parent.as_ref()
    }

    /// A node's swarm counters.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// The proof of an outgoing fleet request without a body (`Authorization`), made now.
    pub fn sign(&self, method: &str, path_and_query: &str) -> HeaderValue {
        self.key
            .sign(method, path_and_query, crate::cluster::auth::now())
    }

    /// The proof of an outgoing fleet request with `body`, made now: its `Authorization` and
    /// its [`BODY_HEADER`].
    pub fn sign_body(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> (HeaderValue, HeaderValue) {
        sign_body(
            &self.key,
            method,
            path_and_query,
            body,
            crate::cluster::auth::now(),
        )
    }

    /// Whether this berth is a node (else the parent).
    pub fn is_node(&self) -> bool {
        self.node
    }

    /// Checks a fleet request's proof before its body is read; a refusal is counted. For a
    /// request with a body, the digest its proof covers: the body, once read, must pass
    /// [`Fleet::admit_body`].
    pub fn admit(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Digest>, Refusal> {
        let named = match named_body(method, headers) {
            Ok(named) => named,
            // No proof at all: the check below says so (`missing`).
            Err(_) if !headers.contains_key(http::header::AUTHORIZATION) => None,
            Err(r) => {
                self.refused(r);
                return Err(r);
            }
        };
        crate::cluster::admit(
            &self.key,
            method,
            &signed_target(path_and_query, named.as_ref()),
            headers,
            &self.auth_failures,
        )?;
        Ok(named)
    }

    /// Checks that a body read is the one the admitted proof named (`named`, from
    /// [`Fleet::admit`]; `None`: its request was admitted as one without a body); a refusal is
    /// counted as a bad proof.
    pub fn admit_body(&self, named: Option<&Digest>, body: &[u8]) -> Result<(), Refusal> {
        match named {
            Some(d) if Digest::of(body) == *d => Ok(()),
            _ => {
                self.refused(Refusal::BadProof);
                Err(Refusal::BadProof)
            }
        }
    }

    fn refused(&self, r: Refusal) {
        self.auth_failures.with_label_values(&[r.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::auth;
    use http::header;

    fn fleet(secret: &str, parent: Option<&str>) -> (Fleet, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, secret).unwrap();
        let mut text = format!("secret_file = {:?}\n", f.display().to_string());
        if let Some(p) = parent {
            text.push_str(&format!(
                "parent = \"{p}\"\nself = \"http://n1:5000\"\npeers_dns = \"nodes\"\n"
            ));
        }
        let mut cfg: FleetConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        let registry = Registry::new();
        (Fleet::new(&cfg, &registry).unwrap(), registry)
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// A fleet proof passes; none, a cluster proof over the same secret, or another fleet's
    /// secret is refused and counted by reason.
    #[test]
    fn only_a_fleet_proof_is_admitted() {
        let (parent, registry) = fleet(SECRET, None);
        assert!(!parent.is_node());
        let secret = Secret::new(SECRET);
        let now = auth::now();
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            key(&secret).sign("GET", UPSTREAMS_PATH, now),
        );
        assert_eq!(parent.admit("GET", UPSTREAMS_PATH, &h), Ok(None));
        assert_eq!(
            parent.admit("GET", "/_berth/fleet/v1/other", &h),
            Err(Refusal::BadProof)
        );
        assert_eq!(
            parent.admit("GET", UPSTREAMS_PATH, &HeaderMap::new()),
            Err(Refusal::Missing)
        );
        // The cluster's proof, with its scheme renamed to the fleet's.
        let cluster = PeerKey::new(&secret).sign("GET", UPSTREAMS_PATH, now);
        let renamed = cluster.to_str().unwrap().replacen(auth::SCHEME, SCHEME, 1);
        h.insert(header::AUTHORIZATION, renamed.parse().unwrap());
        assert_eq!(
            parent.admit("GET", UPSTREAMS_PATH, &h),
            Err(Refusal::BadProof)
        );
        let other = key(&Secret::new("fedcba9876543210fedcba9876543210"));
        h.insert(
            header::AUTHORIZATION,
            other.sign("GET", UPSTREAMS_PATH, now),
        );
        assert_eq!(
            parent.admit("GET", UPSTREAMS_PATH, &h),
            Err(Refusal::BadProof)
        );
        let counted = |r: &str| parent.auth_failures.with_label_values(&[r]).get();
        assert_eq!((counted("bad_proof"), counted("missing")), (3, 1));
        assert_eq!(
            registry.gather().len(),
            1,
            "one family on a parent, registered"
        );
        let (node, registry) = fleet(SECRET, Some("http://parent:5000"));
        assert!(node.is_node());
        assert_eq!(registry.gather().len(), 5, "a node's swarm counters too");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, node.sign("GET", UPSTREAMS_PATH));
        assert_eq!(parent.admit("GET", UPSTREAMS_PATH, &h), Ok(None));
    }

    /// A request with a body: its proof names the body's digest, and the body read must be that
    /// one; the proof as another method, one without the body header, a header that is no
    /// digest, or one naming another body than the proof: refused, counted. `verify` (the whole
    /// request at once) agrees.
    #[test]
    fn a_proof_covers_the_body() {
        let (parent, _registry) = fleet(SECRET, None);
        let k = key(&Secret::new(SECRET));
        let now = auth::now();
        let path = holders_path(&Digest::of(b"blob"));
        let body = br#"{"node":"http://n1:5000"}"#;
        let (authz, named) = sign_body(&k, "PUT", &path, body, now);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, authz);
        h.insert(BODY_HEADER, named);
        let d = parent.admit("PUT", &path, &h).unwrap().unwrap();
        assert_eq!(d, Digest::of(body));
        assert_eq!(parent.admit_body(Some(&d), body), Ok(()));
        assert_eq!(
            parent.admit_body(Some(&d), b"other"),
            Err(Refusal::BadProof)
        );
        assert_eq!(parent.admit_body(None, body), Err(Refusal::BadProof));
        assert_eq!(verify(&k, "PUT", &path, &h, body, now), Ok(()));
        assert_eq!(
            verify(&k, "PUT", &path, &h, b"other", now),
            Err(Refusal::BadProof)
        );
        assert_eq!(parent.admit("POST", &path, &h), Err(Refusal::BadProof));

        let mut bare = HeaderMap::new();
        bare.insert(header::AUTHORIZATION, k.sign("PUT", &path, now));
        assert_eq!(parent.admit("PUT", &path, &bare), Err(Refusal::Malformed));
        assert_eq!(
            verify(&k, "PUT", &path, &bare, body, now),
            Err(Refusal::Malformed)
        );
        let mut not_digest = h.clone();
        not_digest.insert(BODY_HEADER, HeaderValue::from_static("sha256:abc"));
        assert_eq!(
            parent.admit("PUT", &path, &not_digest),
            Err(Refusal::Malformed)
        );
        let mut other = h.clone();
        let other_named = Digest::of(b"other").to_string();
        other.insert(BODY_HEADER, other_named.parse().unwrap());
        assert_eq!(parent.admit("PUT", &path, &other), Err(Refusal::BadProof));
        // A request without a body ignores the header: its proof is over the path alone.
        let mut get = bare.clone();
        get.insert(header::AUTHORIZATION, k.sign("GET", &path, now));
        get.insert(BODY_HEADER, HeaderValue::from_static("sha256:abc"));
        assert_eq!(parent.admit("GET", &path, &get), Ok(None));
        assert_eq!(verify(&k, "GET", &path, &get, b"", now), Ok(()));
        // No proof at all, with or without a body: missing, whatever the body header.
        let none = HeaderMap::new();
        assert_eq!(parent.admit("PUT", &path, &none), Err(Refusal::Missing));
        assert_eq!(
            verify(&k, "PUT", &path, &none, body, now),
            Err(Refusal::Missing)
        );

        let counted = |r: &str| parent.auth_failures.with_label_values(&[r]).get();
        assert_eq!(
            (
                counted("bad_proof"),
                counted("malformed"),
                counted("missing")
            ),
            (4, 2, 1)
        );
        assert!(has_body("POST") && has_body("PUT") && !has_body("GET") && !has_body("HEAD"));
    }
}
