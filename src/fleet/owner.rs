//! One tracker per digest for the whole cluster: on a replica of a `[cluster]` that is also the
//! fleet's parent, a node's swarm call and piece-table call for a digest this replica does not
//! own are forwarded to the digest's owner replica (`cluster::Cluster::owners`, the rendezvous
//! order blob misses follow), so that nodes reaching different replicas (a Service balancing
//! them) still form one swarm, one set of chains, and at most `parent_slots` nodes are fed by the
//! central berth in all, not `parent_slots` per replica.
//!
//! # The forwarded calls
//! Under the cluster's peer prefix, signed with the cluster's proof (`cluster::auth`), never the
//! fleet's:
//! - `POST /_berth/peer/v1/fleet/swarm/<digest>/<body digest>[?size=N]`: the node's body, byte for
//!   byte; `<body digest>` is its sha256, so the cluster proof, which signs the method, path and
//!   query but not the body, covers the body too. The owner refuses (401) a body that is not the
//!   one the path names.
//! - `GET /_berth/peer/v1/fleet/pieces/<digest>?from=K`.
//!
//! The owner answers them with its own tracker and tables, as it answers a node's call, and never
//! forwards them again (no ping-pong when two replicas disagree on membership for a moment). The
//! `?size`/`?from` are the replica's parse of the node's query, written again: nothing of the
//! node's request goes into the forwarded URL unchecked.
//!
//! # Who asked
//! The tracker knows a node by the `node` of its own fleet-signed call. The replica that receives
//! the call checks the fleet proof (`http::fleet`, as for any fleet route) and passes the body on
//! whole, `node` included; the owner takes a `node` from a forwarded call only under a valid
//! cluster proof whose path names that exact body. So:
//! - a node (which holds the fleet secret, not the cluster's) cannot reach the forwarded routes:
//!   a fleet proof is no cluster proof (other domain string), and a call without a cluster proof
//!   gets 401 on the peer prefix whatever its path;
//! - a replica forwards only what passed its own fleet check, and its proof binds that body: one
//!   who reads a forwarded call off the wire can replay it within the proof's age limit, but only
//!   with the same body (the same node's same report), never another node's name;
//! - through a replica a node gets no more than by calling the owner itself: it can name any URL
//!   as itself there too, the fleet secret being the fleet's trust boundary (`fleet::parent`).
//!   The cluster secret should differ from the fleet's (a node holding it could call the peer
//!   routes; `Config::warnings` says so at start), though even then the forwarded route gives it
//!   nothing the fleet route does not.
//!
//! # When the owner does not answer
//! Availability first, as for blob fills: the replica asks each live owner in rendezvous order;
//! one that cannot be reached, times out, refuses this replica's proof, answers 5xx, a 404 that is
//! not its tracker's (an owner without the fleet's tracker, or one that predates these routes), or
//! a 2xx that is not a valid answer (parsed with `swarm::protocol`'s checks, but the fleet's:
//! the owner knows nodes this replica never heard from; the node checks that) is passed over to
//! the next, and this replica tracks the digest itself once it comes to its own place in the
//! order. An owner's own verdict on the call (400: a wrong body; 404 `BLOB_UNKNOWN` on a swarm
//! call: it knows no size yet; 429: it knows too many nodes) is the node's answer, as a local
//! tracker's would be.
//!
//! The trade-off: an owner that every replica sees gone moves its digests to the next replica in
//! their rendezvous order, on which all of them agree (the ones that still try the gone owner
//! fail to connect at once, mark it down, and go on to that same next one): still one swarm per
//! digest. Two swarms of one digest arise only while replicas disagree, when one cannot reach an
//! owner the others reach (a partition, or the seconds before a returning owner's probes bring it
//! back everywhere): each side then feeds up to `parent_slots` nodes from the central berth, a
//! few more copies, never a failed pull and never a wrong byte (nodes check every piece and the
//! digest). A swarm that changes tracker moves at the nodes' next calls (reports every few
//! seconds): the new tracker does not know them, and a node it does not know rejoins with a
//! source, which may be one more parent-fed node. Rendezvous keeps this to the digests of the
//! replica that came or went.
//!
//! The bound: a node waits [`CALL_BUDGET`] for its whole call (`fill::swarm`'s `CALL_TIMEOUT`,
//! 3 s). A forwarded swarm call gets [`SWARM_WAIT`] (the owner only looks up a size and its
//! tracker), a forwarded piece call [`PIECES_WAIT`] (the owner may hold it `tables::WAIT` for a
//! new hash), each bounding the connect, the answer and its body; the local answer after a
//! failed forward then still fits in the node's wait. A connect error marks the owner down at
//! once (the next calls skip it); a timeout counts as a failed probe (`[cluster] down_after` of
//! them mark it down), so a black-holed owner costs each call at most the bound until then.
//!
//! # Piece tables go to the owner too
//! A node told to fetch pieces asks for the table from whichever replica it reaches; the replica
//! asks the owner, which holds the only fill of the blob for certain (every replica's miss is
//! forwarded to it), so the fleet hashes each blob once and the table follows that fill at its
//! pace, where a local table would exist only on a replica that happens to fill the blob too
//! (404 elsewhere: the node would give up the swarm for the parent). An owner's 404 or failure
//! leaves the table to this replica: a table is the sha256 of each piece of the blob, its last
//! only once the digest checked out, so two replicas' tables of one digest agree. The cost,
//! measured (BENCHMARKS.md, `benches/load/fleet_owner.py`): about 0.3 ms more per table call on
//! loopback, the owner's JSON parsed, checked and written again here.
//!
//! With a bucket tier (`[storage.s3]`), a replica that finds a blob in the bucket serves it
//! without asking the owner, so the owner may hold neither the blob nor a fill of it: its table
//! is then made from the bucket's object, read whole and checked and kept nowhere (the
//! [`Blobs`](super::tables::Blobs) the mirror gives, `mirror::follow`). Before that read, such
//! an owner answered 404 and the nodes behind any replica without a fill of the blob took it
//! whole from the parent after a few seconds without hashes (two copies out of the central
//! berth for four nodes behind two replicas, `tests/it/fleet_bucket.rs`; one since). The cost:
//! one more read of the object, bucket to owner, per table made. An owner that cannot read the
//! bucket (down, or a wrong object, deleted on the way) answers 404 too, and the replica asked
//! makes the table from its own fill or its own read of the bucket.
//!
//! `berth_fleet_owner_calls_total{call,result}` counts where each call was answered: `self` (this
//! replica owns the digest), `owner` (forwarded; the owner's answer or verdict), `fallback` (no
//! owner before this replica answered, or the owner had no piece table: answered here). The peer
//! requests themselves are counted in `berth_peer_requests_total{peer,outcome}`.
//!
//! Rule of dependency: part of `fleet`; uses `cluster` (the owners, the signed exchange),
//! `swarm::protocol` (the answers' parsers), `oci`, prometheus, and its sibling `call` (the
//! refusals, the query, the sender) and `tables` (its wait); `parent` holds it, `http` answers
//! the forwarded routes, `assemble` builds it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use prometheus::{IntCounterVec, Opts, Registry};

use super::call::{Refusal, asking_node, size_query};
use super::tables::WAIT;
use crate::cluster::Cluster;
use crate::oci::Digest;
use crate::swarm::protocol::{
    MAX_PIECES_BODY, MAX_SMALL_BODY, Pieces, ProtocolError, SwarmAnswer, pieces_from,
};

/// The forwarded swarm call: `POST` this, `<digest>/<body digest>[?size=N]`.
pub const FORWARD_SWARM_PATH: &str = "/_berth/peer/v1/fleet/swarm/";
/// The forwarded piece-table call: `GET` this, `<digest>?from=K`.
pub const FORWARD_PIECES_PATH: &str = "/_berth/peer/v1/fleet/pieces/";

/// How long a node waits for its whole tracker call (`fill::swarm::link::CALL_TIMEOUT`).
pub const CALL_BUDGET: Duration = Duration::from_secs(3);
/// A forwarded swarm call, whole (connect, answer, body).
pub const SWARM_WAIT: Duration = Duration::from_secs(1);
/// A forwarded piece-table call, whole: the owner may hold it [`WAIT`] for a new hash.
pub const PIECES_WAIT: Duration = Duration::from_millis(WAIT.as_millis() as u64 + 500);

/// How often an owner's failures are logged as warnings, at most.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The `call` labels of `berth_fleet_owner_calls_total`.
pub const CALLS: [&str; 2] = ["swarm", "pieces"];
/// The `result` labels of `berth_fleet_owner_calls_total`.
pub const RESULTS: [&str; 3] = ["self", "owner", "fallback"];

/// The path of a forwarded swarm call for `digest` with `body` and the node's size, if any.
pub fn swarm_path(digest: &Digest, body: &[u8], size: Option<u64>) -> String {
    let path = format!("{FORWARD_SWARM_PATH}{digest}/{}", Digest::of(body));
    match size {
        Some(n) => format!("{path}?size={n}"),
        None => path,
    }
}

/// The path of a forwarded piece-table call.
pub fn pieces_path(digest: &Digest, from: u32) -> String {
    format!("{FORWARD_PIECES_PATH}{digest}?from={from}")
}

/// What follows [`FORWARD_SWARM_PATH`]: the blob's digest and the body's; `None` if it is not
/// two digests.
pub fn parse_swarm_rest(rest: &str) -> Option<(Digest, Digest)> {
    let (digest, body) = rest.split_once('/')?;
    Some((digest.parse().ok()?, body.parse().ok()?))
}

/// Whether `body` is the one a forwarded call's path names.
pub fn body_matches(body: &[u8], named: &Digest) -> bool {
    Digest::of(body) == *named
}

/// What became of one owner's answer.
#[derive(Debug)]
enum Step<T> {
    /// The call's answer (or the owner's verdict on it): the node's.
    Answer(Result<T, Refusal>),
    /// Ask the next owner (or answer here, at this replica's place).
    Next(String),
    /// Answer here at once.
    Here,
}

/// Sends the tracker calls of digests this replica does not own to their owner.
pub struct Owners {
    cluster: Arc<Cluster>,
    /// `berth_fleet_owner_calls_total{call,result}`.
    calls: IntCounterVec,
    /// When an owner's failure was last logged as a warning.
    warned: Mutex<Option<Instant>>,
}

impl Owners {
    /// Over `cluster`; the metric family goes into `registry`.
    pub fn new(cluster: Arc<Cluster>, registry: &Registry) -> Result<Owners, String> {
        let calls = IntCounterVec::new(
            Opts::new(
                "berth_fleet_owner_calls_total",
                "Nodes' tracker calls on a replica, by call (swarm, pieces) and where they were answered (self: this replica owns the digest; owner: forwarded to it; fallback: no owner before this replica in the digest's order answered it, or the owner had no piece table: answered here).",
            ),
            &["call", "result"],
        )
        .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(calls.clone()))
            .map_err(|e| e.to_string())?;
        for c in CALLS {
            for r in RESULTS {
                calls.with_label_values(&[c, r]);
            }
        }
        Ok(Owners {
            cluster,
            calls,
            warned: Mutex::new(None),
        })
    }

    /// A node's swarm call, answered by the digest's owner replica; `None` when this replica is
    /// to answer it (it owns the digest, no owner before it answered, or the call is wrong, which
    /// this replica says as well as any).
    pub async fn swarm(
        &self,
        digest: &Digest,
        body: &[u8],
        query: Option<&str>,
    ) -> Option<Result<SwarmAnswer, Refusal>> {
        let (Ok(size), Ok(me)) = (size_query(query), asking_node(body)) else {
            return None;
        };
        let path = swarm_path(digest, body, size);
        let body = Bytes::copy_from_slice(body);
        let call = Call {
            name: "swarm",
            method: Method::POST,
            path: &path,
            body,
            wait: SWARM_WAIT,
            limit: MAX_SMALL_BODY,
        };
        self.forward(digest, call, |status, answer| match status {
            StatusCode::OK => match SwarmAnswer::parse_relayed(answer, &me) {
                Ok(a) => Step::Answer(Ok(a)),
                Err(e) => Step::Next(garbage(e)),
            },
            s => verdict(s, answer, true),
        })
        .await
    }

    /// A node's piece-table call, answered by the digest's owner replica; `None` when this
    /// replica is to answer it (as for [`Owners::swarm`], and when the owner has no table).
    pub async fn pieces(
        &self,
        digest: &Digest,
        query: Option<&str>,
    ) -> Option<Result<Pieces, Refusal>> {
        let from = pieces_from(query).ok()?;
        let path = pieces_path(digest, from);
        let call = Call {
            name: "pieces",
            method: Method::GET,
            path: &path,
            body: Bytes::new(),
            wait: PIECES_WAIT,
            limit: MAX_PIECES_BODY,
        };
        self.forward(digest, call, |status, answer| match status {
            StatusCode::OK => match Pieces::parse_relayed(answer) {
                Ok(p) => Step::Answer(Ok(p)),
                Err(e) => Step::Next(garbage(e)),
            },
            s => verdict(s, answer, false),
        })
        .await
    }

    /// Asks each live owner before this replica in turn; the first answer `judge` takes is the
    /// node's, counted `owner`; else `None`, counted `self` or `fallback`.
    async fn forward<T>(
        &self,
        digest: &Digest,
        call: Call<'_>,
        judge: impl Fn(StatusCode, &[u8]) -> Step<T>,
    ) -> Option<Result<T, Refusal>> {
        let mut result = "fallback";
        for (i, peer) in self.cluster.owners(digest).into_iter().enumerate() {
            if self.cluster.is_me(peer) {
                if i == 0 {
                    result = "self";
                }
                break;
            }
            let why = match self
                .cluster
                .exchange(
                    peer,
                    call.method.clone(),
                    call.path,
                    call.body.clone(),
                    call.wait,
                    call.limit,
                )
                .await
            {
                Ok((status, answer)) => match judge(status, &answer) {
                    Step::Answer(a) => {
                        self.count(call.name, "owner");
                        return Some(a);
                    }
                    Step::Next(why) => why,
                    Step::Here => break,
                },
                Err(e) => e.to_string(),
            };
            self.warn(&peer.id, digest, call.name, &why);
        }
        self.count(call.name, result);
        None
    }

    /// Logs an owner's failure: a warning at most every [`WARN_EVERY`] (nodes call every few
    /// seconds each, so a misconfigured owner would otherwise log per call), debug otherwise;
    /// `berth_fleet_owner_calls_total{result="fallback"}` counts them all.
    fn warn(&self, peer: &str, digest: &Digest, call: &str, why: &str) {
        let loud = time_to_warn(&mut self.warned.lock().unwrap(), Instant::now());
        if loud {
            tracing::warn!(%peer, %digest, call, error = %why, "fleet: a digest's owner replica did not answer a forwarded tracker call; asking the next owner (said at most every {WARN_EVERY:?})");
        } else {
            tracing::debug!(%peer, %digest, call, error = %why, "fleet: a digest's owner replica did not answer a forwarded tracker call");
        }
    }

    fn count(&self, call: &str, result: &str) {
        self.calls.with_label_values(&[call, result]).inc();
    }
}

/// Whether a failure seen at `now` is to be a warning, given when the last one was (updated).
fn time_to_warn(last: &mut Option<Instant>, now: Instant) -> bool {
    let due = last.is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
    if due {
        *last = Some(now);
    }
    due
}

/// One forwarded call.
struct Call<'a> {
    name: &'static str,
    method: Method,
    path: &'a str,
    body: Bytes,
    wait: Duration,
    limit: usize,
}

fn garbage(e: ProtocolError) -> String {
    format!("its answer is no tracker answer: {e}")
}

/// An owner's error answer: its tracker's verdict (400; 404 `BLOB_UNKNOWN` for a swarm call,
/// while for a piece table this replica may have one; 429), or a failure to pass over.
fn verdict<T>(status: StatusCode, body: &[u8], swarm: bool) -> Step<T> {
    let (code, detail) = error_of(body);
    let said = |d: String| format!("the digest's owner replica: {d}");
    match status {
        StatusCode::BAD_REQUEST => Step::Answer(Err(Refusal::BadRequest(said(detail)))),
        StatusCode::TOO_MANY_REQUESTS => Step::Answer(Err(Refusal::Full(said(detail)))),
        StatusCode::NOT_FOUND if code == "BLOB_UNKNOWN" => match swarm {
            true => Step::Answer(Err(Refusal::Unknown(said(detail)))),
            false => Step::Here,
        },
        s => Step::Next(format!("it answered {s} ({code}: {detail})")),
    }
}

/// The code and detail of an OCI error body (`{"errors":[{"code","message","detail"}]}`), as
/// far as it is one.
fn error_of(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let e = &v["errors"][0];
    let text = |k: &str| match &e[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let detail = match text("detail") {
        d if d.is_empty() => text("message"),
        d => d,
    };
    (text("code"), detail)
}

#[cfg(test)]
mod tests;
