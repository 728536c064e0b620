//! The JSON bodies of the swarm's protocol, parsed strictly: a size limit before parsing,
//! unknown fields refused, every number and hash checked, and every URL one of the fleet's known
//! nodes (a tracker, or anything posing as one, cannot point a node at an arbitrary host).
//!
//! - `POST /_berth/fleet/v1/swarm/<digest>` (node to tracker): [`SwarmRequest`]
//!   `{"node", "have", "complete", "need_source", "uploads"?, "dropped"?: {"url", "reason"}}`,
//!   answered [`SwarmAnswer`] `{"size", "piece_size", "source"?}` where `source` is `"parent"` or
//!   `{"url", "have", "complete"}`, and absent when the node keeps its source (or is complete).
//! - `GET /_berth/fleet/v1/pieces/<digest>?from=K` (node to parent): [`Pieces`]
//!   `{"size", "piece_size", "first", "hashes": [hex...], "complete"}`, the hashes of pieces
//!   `first..` known so far; `complete` when that is all of them.
//! - `PUT /_berth/fleet/v1/holders/<digest>` (node to a directory node): [`HolderNote`]
//!   `{"node"}`; `GET` of the same path answers [`Holders`] `{"holders": [url...]}`.
//!
//! [`SwarmRequest::apply`] is the one mapping from a request to the tracker's calls (hold,
//! report, join), with the check of its numbers against the blob's size.
//!
//! The encoders write what the parsers read (unit tests round-trip them); the parsers are the
//! fuzz target `swarm` (fuzz/fuzz_targets/swarm.rs).
//!
//! Rule of dependency: uses `swarm::{node, pieces, tracker, directory}`, `oci::Digest` and
//! serde.

use serde::{Deserialize, Serialize};

use super::node::{Fleet, NodeUrl};
use super::pieces::{Layout, MAX_PIECES, PieceHash, PieceTable};
use super::tracker::{Assignment, DEFAULT_UPLOADS, MAX_UPLOADS, Reason, Refused, Report, Tracker};
use crate::oci::Digest;

/// The largest swarm request or answer, holders note or list (a few URLs and numbers).
pub const MAX_SMALL_BODY: usize = 8 * 1024;

/// The largest pieces answer: 4096 hashes of 64 hex characters, quoted and separated, and the
/// rest.
pub const MAX_PIECES_BODY: usize = MAX_PIECES as usize * 67 + 1024;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// Over the size limit (the limit).
    TooLarge(usize),
    /// Not the JSON expected (serde's words).
    Malformed(String),
    /// A URL that is not one of the fleet's nodes (or not a node URL at all).
    NotInFleet(String),
    /// Well-formed, but not possible (the reason).
    Invalid(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::TooLarge(n) => write!(f, "body over {n} bytes"),
            ProtocolError::Malformed(e) => write!(f, "malformed body: {e}"),
            ProtocolError::NotInFleet(e) => write!(f, "{e}"),
            ProtocolError::Invalid(e) => write!(f, "invalid body: {e}"),
        }
    }
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8], limit: usize) -> Result<T, ProtocolError> {
    if body.len() > limit {
        return Err(ProtocolError::TooLarge(limit));
    }
    serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

fn member(fleet: &Fleet, url: &str) -> Result<NodeUrl, ProtocolError> {
    fleet.member(url).map_err(ProtocolError::NotInFleet)
}

fn invalid(s: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid(s.into())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain structs of strings and numbers serialize")
}

/// A node's call to the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmRequest {
    pub node: NodeUrl,
    /// Verified bytes.
    pub have: u64,
    pub complete: bool,
    /// The node has no source (it starts, or dropped one) and asks for one.
    pub need_source: bool,
    /// Its upload slots (`[fleet] max_uploads`).
    pub uploads: Option<u32>,
    pub dropped: Option<(NodeUrl, Reason)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    node: String,
    have: u64,
    complete: bool,
    need_source: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uploads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropped: Option<WireDropped>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDropped {
    url: String,
    reason: String,
}

impl SwarmRequest {
    pub fn encode(&self) -> Vec<u8> {
        encode(&WireRequest {
            node: self.node.to_string(),
            have: self.have,
            complete: self.complete,
            need_source: self.need_source,
            uploads: self.uploads,
            dropped: self.dropped.as_ref().map(|(u, r)| WireDropped {
                url: u.to_string(),
                reason: r.as_str().to_owned(),
            }),
        })
    }

    /// Parses a request from a node of `fleet`.
    pub fn parse(body: &[u8], fleet: &Fleet) -> Result<SwarmRequest, ProtocolError> {
        let w: WireRequest = json(body, MAX_SMALL_BODY)?;
        let node = member(fleet, &w.node)?;
        if let Some(u) = w.uploads
            && !(1..=MAX_UPLOADS).contains(&u)
        {
            return Err(invalid(format!("uploads {u} is not 1 to {MAX_UPLOADS}")));
        }
        if w.complete && w.need_source {
            return Err(invalid("a complete node needs no source"));
        }
        let dropped = match w.dropped {
            None => None,
            Some(d) => {
                let url = member(fleet, &d.url)?;
                if url == node {
                    return Err(invalid("a node is never its own source"));
                }
                let reason = Reason::parse(&d.reason)
                    .ok_or_else(|| invalid(format!("unknown reason {:?}", d.reason)))?;
                Some((url, reason))
            }
        };
        if dropped.is_some() && !w.need_source {
            return Err(invalid("a node that dropped its source needs another"));
        }
        Ok(SwarmRequest {
            node,
            have: w.have,
            complete: w.complete,
            need_source: w.need_source,
            uploads: w.uploads,
            dropped,
        })
    }
}

impl SwarmRequest {
    /// The tracker's answer to this request, for a blob laid out as `layout` (the parent's fill
    /// knows its size): a complete node becomes a holder; a node that dropped its source is
    /// blamed against it and gets another; one that asks gets one; a plain report keeps its
    /// source unless that source left or is a slow link (or the tracker forgot the node, which
    /// then rejoins with a source).
    pub fn apply(
        &self,
        tracker: &mut Tracker,
        digest: &Digest,
        layout: Layout,
        fleet: &Fleet,
        now: std::time::Instant,
    ) -> Result<SwarmAnswer, ApplyError> {
        if self.have > layout.size() || (self.complete && self.have != layout.size()) {
            return Err(ApplyError::Invalid(invalid(format!(
                "{} bytes{} of a blob of {}",
                self.have,
                if self.complete { ", complete" } else { "" },
                layout.size()
            ))));
        }
        let source = if self.complete {
            tracker
                .hold(digest, &self.node, self.have, fleet, now)
                .map_err(ApplyError::Refused)?;
            None
        } else if self.dropped.is_some() || !self.need_source {
            let report = Report {
                have: self.have,
                complete: false,
                dropped: self.dropped.as_ref().map(|(u, r)| (u, *r)),
            };
            tracker
                .report(digest, &self.node, report, fleet, now)
                .map_err(ApplyError::Refused)?
        } else {
            let uploads = self.uploads.unwrap_or(DEFAULT_UPLOADS);
            Some(
                tracker
                    .join(digest, &self.node, self.have, uploads, fleet, now)
                    .map_err(ApplyError::Refused)?,
            )
        };
        Ok(SwarmAnswer { layout, source })
    }
}

/// Why a request could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// Its numbers do not fit the blob.
    Invalid(ProtocolError),
    /// The tracker refused the node.
    Refused(Refused),
}

/// The tracker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmAnswer {
    pub layout: Layout,
    /// `None`: keep the current source (or none needed).
    pub source: Option<Assignment>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAnswer {
    size: u64,
    piece_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<WireSource>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WireSource {
    Word(String),
    Node(WireNode),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireNode {
    url: String,
    have: u64,
    complete: bool,
}

const PARENT: &str = "parent";

impl SwarmAnswer {
    pub fn encode(&self) -> Vec<u8> {
        encode(&WireAnswer {
            size: self.layout.size(),
            piece_size: self.layout.piece_size(),
            source: self.source.as_ref().map(|a| match a {
                Assignment::Parent => WireSource::Word(PARENT.to_owned()),
                Assignment::Node {
                    url,
                    have,
                    complete,
                } => WireSource::Node(WireNode {
                    url: url.to_string(),
                    have: *have,
                    complete: *complete,
                }),
            }),
        })
    }

    /// Parses the tracker's answer to `me`, a node of `fleet`: the source must be another node
    /// of the fleet, its progress within the blob.
    pub fn parse(body: &[u8], fleet: &Fleet, me: &NodeUrl) -> Result<SwarmAnswer, ProtocolError> {
        SwarmAnswer::parse_with(body, me, |url| member(fleet, url))
    }

    /// Parses an answer to be relayed to `me` (a replica passing on its owner replica's answer,
    /// `fleet::owner`): every check of [`SwarmAnswer::parse`] but the fleet's, which the replica
    /// cannot make (the owner knows nodes this replica never heard from); the source must still
    /// be a node URL, and `me`'s own node checks it against its node set.
    pub fn parse_relayed(body: &[u8], me: &NodeUrl) -> Result<SwarmAnswer, ProtocolError> {
        SwarmAnswer::parse_with(body, me, |url| {
            url.parse().map_err(ProtocolError::NotInFleet)
        })
    }

    fn parse_with(
        body: &[u8],
        me: &NodeUrl,
        member: impl Fn(&str) -> Result<NodeUrl, ProtocolError>,
    ) -> Result<SwarmAnswer, ProtocolError> {
        let w: WireAnswer = json(body, MAX_SMALL_BODY)?;
        let layout = Layout::checked(w.size, w.piece_size).ok_or_else(|| {
            invalid(format!(
                "piece size {} is not the rule's for {} bytes",
                w.piece_size, w.size
            ))
        })?;
        let source = match w.source {
            None => None,
            Some(WireSource::Word(word)) if word == PARENT => Some(Assignment::Parent),
            Some(WireSource::Word(word)) => {
                return Err(invalid(format!("unknown source {word:?}")));
            }
            Some(WireSource::Node(n)) => {
                let url = member(&n.url)?;
                if url == *me {
                    return Err(invalid("the tracker named this node as its own source"));
                }
                if n.have > w.size || (n.complete && n.have != w.size) {
                    return Err(invalid(format!(
                        "a source with {} of {} bytes{}",
                        n.have,
                        w.size,
                        if n.complete { ", complete" } else { "" }
                    )));
                }
                Some(Assignment::Node {
                    url,
                    have: n.have,
                    complete: n.complete,
                })
            }
        };
        Ok(SwarmAnswer { layout, source })
    }
}

/// The piece hashes known from piece `first` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    pub layout: Layout,
    pub first: u32,
    pub hashes: Vec<PieceHash>,
    /// Every piece's hash is known (`first + hashes.len()` is the count).
    pub complete: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePieces {
    size: u64,
    piece_size: u64,
    first: u32,
    hashes: Vec<String>,
    complete: bool,
}

impl Pieces {
    /// The answer for a table, from piece `first` on.
    pub fn of(table: &PieceTable, first: u32) -> Pieces {
        let layout = table.layout();
        let first = first.min(table.known());
        Pieces {
            layout,
            first,
            hashes: table.hashes_from(first).to_vec(),
            complete: table.is_complete(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(&WirePieces {
            size: self.layout.size(),
            piece_size: self.layout.piece_size(),
            first: self.first,
            hashes: self.hashes.iter().map(hex::encode).collect(),
            complete: self.complete,
        })
    }

    /// Parses the parent's answer for a blob of `size` bytes (the size the node was told).
    pub fn parse(body: &[u8], size: u64) -> Result<Pieces, ProtocolError> {
        let p = Pieces::parse_relayed(body)?;
        if p.layout.size() != size {
            return Err(invalid(format!(
                "a table of {} bytes for a blob of {size}",
                p.layout.size()
            )));
        }
        Ok(p)
    }

    /// Parses an answer to be relayed (a replica passing on its owner replica's table,
    /// `fleet::owner`): every check of [`Pieces::parse`] but the size, which the node that asked
    /// makes.
    pub fn parse_relayed(body: &[u8]) -> Result<Pieces, ProtocolError> {
        let w: WirePieces = json(body, MAX_PIECES_BODY)?;
        let layout = Layout::checked(w.size, w.piece_size).ok_or_else(|| {
            invalid(format!(
                "piece size {} is not the rule's for {} bytes",
                w.piece_size, w.size
            ))
        })?;
        let end = u64::from(w.first) + w.hashes.len() as u64;
        if end > u64::from(layout.count()) {
            return Err(invalid(format!(
                "hashes up to piece {end} of a blob of {} pieces",
                layout.count()
            )));
        }
        if w.complete != (end == u64::from(layout.count())) {
            return Err(invalid("complete does not match the hashes given"));
        }
        let hashes = w
            .hashes
            .iter()
            .map(|h| parse_hash(h))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pieces {
            layout,
            first: w.first,
            hashes,
            complete: w.complete,
        })
    }
}

fn parse_hash(h: &str) -> Result<PieceHash, ProtocolError> {
    let ok = h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let bytes = ok.then(|| hex::decode(h).ok()).flatten();
    bytes
        .and_then(|b| <PieceHash>::try_from(b.as_slice()).ok())
        .ok_or_else(|| invalid(format!("{h:?} is not a sha256 (64 lowercase hex)")))
}

/// The value of `name` in a query that may hold it once and nothing else (absent or empty:
/// `None`); why not, otherwise. The fleet's calls take one parameter each: anything else is a
/// caller speaking another protocol.
pub fn only_param<'q>(query: Option<&'q str>, name: &str) -> Result<Option<&'q str>, String> {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let mut value = None;
    for pair in q.split('&') {
        match pair.split_once('=') {
            Some((k, v)) if k == name && value.is_none() => value = Some(v),
            _ => return Err(format!("unexpected query {pair:?}")),
        }
    }
    Ok(value)
}

/// The `from` of `GET pieces/<digest>?from=K` (absent: 0).
pub fn pieces_from(query: Option<&str>) -> Result<u32, ProtocolError> {
    let Some(v) = only_param(query, "from").map_err(invalid)? else {
        return Ok(0);
    };
    let k: u32 = v
        .parse()
        .map_err(|_| invalid(format!("from={v:?} is not a piece number")))?;
    if u64::from(k) > MAX_PIECES {
        return Err(invalid(format!("from={k} is past any blob's pieces")));
    }
    Ok(k)
}

/// A node tells a directory node it holds a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderNote {
    pub node: NodeUrl,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireNote {
    node: String,
}

impl HolderNote {
    pub fn encode(&self) -> Vec<u8> {
        encode(&WireNote {
            node: self.node.to_string(),
        })
    }

    pub fn parse(body: &[u8], fleet: &Fleet) -> Result<HolderNote, ProtocolError> {
        let w: WireNote = json(body, MAX_SMALL_BODY)?;
        Ok(HolderNote {
            node: member(fleet, &w.node)?,
        })
    }
}

/// A directory node's answer: who holds a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holders {
    pub holders: Vec<NodeUrl>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHolders {
    holders: Vec<String>,
}

impl Holders {
    pub fn encode(&self) -> Vec<u8> {
        encode(&WireHolders {
            holders: self.holders.iter().map(|h| h.to_string()).collect(),
        })
    }

    /// Parses a directory node's answer to `me`: at most
    /// [`MAX_HOLDERS`](super::directory::MAX_HOLDERS) nodes of the fleet, `me` left out.
    pub fn parse(body: &[u8], fleet: &Fleet, me: &NodeUrl) -> Result<Holders, ProtocolError> {
        let w: WireHolders = json(body, MAX_SMALL_BODY)?;
        if w.holders.len() > super::directory::MAX_HOLDERS {
            return Err(invalid(format!("{} holders", w.holders.len())));
        }
        let mut holders = Vec::with_capacity(w.holders.len());
        for h in &w.holders {
            let n = member(fleet, h)?;
            if n != *me && !holders.contains(&n) {
                holders.push(n);
            }
        }
        Ok(Holders { holders })
    }
}

#[cfg(test)]
mod tests;
