//! A node's tracker call as both its readers see it, the tracker ([`parent`](super::parent)) and
//! the replica that forwards it to the digest's owner ([`owner`](super::owner)): why it gets no
//! answer, its query, and the node it names as its sender.
//!
//! Rule of dependency: part of `fleet`; uses `swarm::protocol` (the body's limit, the query
//! rule), `swarm::node`, `error`. Both `parent` and `owner` use it; it uses neither.

use crate::error::Error;
use crate::swarm::node::NodeUrl;
use crate::swarm::protocol::{MAX_SMALL_BODY, ProtocolError, only_param};

/// Why a swarm or pieces call gets no answer.
#[derive(Debug)]
pub enum Refusal {
    /// The body, the query or the numbers are wrong (400, with why).
    BadRequest(String),
    /// The parent knows nothing of the blob yet (404: ask again later).
    Unknown(String),
    /// The node cannot be taken (too many nodes known): 429.
    Full(String),
    /// Reading the blob failed on the parent.
    Failed(Error),
}

/// Only the `node` of a swarm request, read before the whole body is parsed against the fleet
/// it may join.
#[derive(serde::Deserialize)]
struct NodeField {
    node: String,
}

/// The node a swarm call's body names as its sender, read before the whole body is parsed
/// against the fleet it may join.
pub(super) fn asking_node(body: &[u8]) -> Result<NodeUrl, Refusal> {
    if body.len() > MAX_SMALL_BODY {
        return Err(bad(ProtocolError::TooLarge(MAX_SMALL_BODY)));
    }
    let node: NodeField =
        serde_json::from_slice(body).map_err(|e| bad(ProtocolError::Malformed(e.to_string())))?;
    node.node
        .parse()
        .map_err(|e: String| bad(ProtocolError::NotInFleet(e)))
}

pub(super) fn bad(e: ProtocolError) -> Refusal {
    Refusal::BadRequest(e.to_string())
}

/// The `size` of `POST swarm/<digest>?size=N` (absent: `None`); nothing else is accepted.
pub fn size_query(query: Option<&str>) -> Result<Option<u64>, String> {
    only_param(query, "size")?
        .map(|v| {
            v.parse()
                .map_err(|_| format!("size={v:?} is not a byte count"))
        })
        .transpose()
}
