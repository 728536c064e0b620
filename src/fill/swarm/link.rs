//! A node's link to its parent's tracker: the node set (`[fleet] peers`, or `peers_dns` looked
//! up again every [`MEMBERS_TTL`]), the swarm call (`POST /_berth/fleet/v1/swarm/<digest>`) and
//! the piece table (`GET /_berth/fleet/v1/pieces/<digest>?from=K`), fleet-signed, each within
//! [`CALL_TIMEOUT`]; and the parent's ordinary blob route, through the upstream, its head within
//! `[fleet] parent_timeout` ([`parent_blob`]). Every connection the node's fleet clients make
//! (to the parent, to other nodes) is bounded by `parent_timeout` too ([`Conn`]).
//!
//! Rule of dependency: uses `swarm` (the protocol's types), `fleet` (the proof, the paths),
//! `upstream` (the blob route), `oci`, `error`; nothing of its parent or siblings.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use url::Url;

use crate::error::Error;
use crate::fleet::{BODY_HEADER, Fleet, PIECES_PATH, swarm_path};
use crate::oci::{Digest, RepoName};
use crate::swarm::node::{Fleet as Nodes, NodeUrl};
use crate::swarm::protocol::{MAX_PIECES_BODY, MAX_SMALL_BODY, Pieces, SwarmAnswer, SwarmRequest};
use crate::swarm::tracker::Reason;
use crate::upstream::connect::TimeoutConnector;
use crate::upstream::{NotFoundKind, Upstream, UpstreamResponse, blob_request};

/// The driver's clock: stalls are seen and reports sent at this grain (a piece-table miss
/// waits one before it is told).
pub const TICK: Duration = Duration::from_millis(100);
/// One call to the tracker or the pieces route, whole (the parent may hold a pieces call about
/// a second for new hashes).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a `peers_dns` lookup is used before it is made again.
pub const MEMBERS_TTL: Duration = Duration::from_secs(30);

/// Every fleet connection (to the parent, to other nodes) is bounded by `[fleet] parent_timeout`
/// (`Link::parent_timeout`): a black-holed address costs that, not the kernel's minutes.
pub type Conn = TimeoutConnector<HttpsConnector<HttpConnector>>;
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The fleet's node set: `[fleet] peers`, or `peers_dns` looked up again every [`MEMBERS_TTL`].
pub enum Members {
    Fixed(Nodes),
    Dns {
        name: String,
        scheme: String,
        port: u16,
        cached: Mutex<Option<(Instant, Nodes)>>,
    },
}

impl Members {
    pub async fn current(&self) -> Nodes {
        let (name, scheme, port, cached) = match self {
            Members::Fixed(n) => return n.clone(),
            Members::Dns {
                name,
                scheme,
                port,
                cached,
            } => (name, scheme, *port, cached),
        };
        if let Some((at, n)) = &*cached.lock().unwrap()
            && at.elapsed() < MEMBERS_TTL
        {
            return n.clone();
        }
        let found = match tokio::net::lookup_host((name.as_str(), port)).await {
            Ok(addrs) => {
                Nodes::new(addrs.filter_map(|a| format!("{scheme}://{a}").parse::<NodeUrl>().ok()))
            }
            Err(e) => {
                tracing::warn!(peers_dns = %name, error = %e, "fleet: the node set could not be looked up; using the last one");
                let last = cached.lock().unwrap().as_ref().map(|(_, n)| n.clone());
                return last.unwrap_or_default();
            }
        };
        *cached.lock().unwrap() = Some((Instant::now(), found.clone()));
        found
    }
}

/// The node's identity and its clients to the parent.
pub struct Link {
    pub fleet: Arc<Fleet>,
    pub me: NodeUrl,
    pub parent: Url,
    pub get: Client<Conn, Empty<Bytes>>,
    pub post: Client<Conn, Full<Bytes>>,
    pub max_uploads: u32,
    /// `[fleet] parent_timeout`: the bound on connecting and on the parent's response head.
    pub parent_timeout: Duration,
}

impl Link {
    pub fn request(&self, have: u64, dropped: Option<(NodeUrl, Reason)>) -> SwarmRequest {
        SwarmRequest {
            node: self.me.clone(),
            have,
            complete: false,
            need_source: true,
            uploads: Some(self.max_uploads),
            dropped,
        }
    }

    /// `POST /_berth/fleet/v1/swarm/<digest>`, fleet-signed, within [`CALL_TIMEOUT`].
    pub async fn ask(
        &self,
        digest: &Digest,
        req: &SwarmRequest,
        nodes: &Nodes,
    ) -> Result<SwarmAnswer, String> {
        self.ask_sized(digest, None, req, nodes).await
    }

    /// As [`Link::ask`], telling the tracker the blob's size (`?size=N`, from the parent's
    /// `HEAD`): a first call, before the tracker may know it.
    pub async fn ask_sized(
        &self,
        digest: &Digest,
        size: Option<u64>,
        req: &SwarmRequest,
        nodes: &Nodes,
    ) -> Result<SwarmAnswer, String> {
        let path = swarm_path(digest, size);
        let url = self.parent.join(&path).map_err(|e| e.to_string())?;
        let (status, body) = self
            .call(
                Method::POST,
                url.as_str(),
                &path,
                Some(req.encode()),
                MAX_SMALL_BODY,
            )
            .await
            .map_err(|e| format!("the tracker: {e}"))?;
        if status != StatusCode::OK {
            return Err(format!("the tracker answered {status}"));
        }
        SwarmAnswer::parse(&body, nodes, &self.me).map_err(|e| e.to_string())
    }

    /// A fleet-signed call: `method` to `url`, whose path and query `path` the proof signs, with
    /// `body` (JSON; the proof names its digest) if it has one; the answer's status and body (at
    /// most `limit` bytes), all within [`CALL_TIMEOUT`]. The tracker, piece-table and holder
    /// calls all go through it.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        path: &str,
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), String> {
        let sent = async {
            let req = Request::builder().method(method.clone()).uri(url);
            let resp = match body {
                None => {
                    let r = req
                        .header(
                            header::AUTHORIZATION,
                            self.fleet.sign(method.as_str(), path),
                        )
                        .body(Empty::new())
                        .map_err(|e| e.to_string())?;
                    self.get.request(r).await
                }
                Some(body) => {
                    let (proof, named) = self.fleet.sign_body(method.as_str(), path, &body);
                    let r = req
                        .header(header::AUTHORIZATION, proof)
                        .header(BODY_HEADER, named)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .map_err(|e| e.to_string())?;
                    self.post.request(r).await
                }
            }
            .map_err(|e| e.to_string())?;
            let status = resp.status();
            Ok((status, read(resp, limit).await?))
        };
        tokio::time::timeout(CALL_TIMEOUT, sent)
            .await
            .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
    }

    /// `GET /_berth/fleet/v1/pieces/<digest>?from=K`, fleet-signed; a miss waits a tick before
    /// it is told, so that asking again is no busy loop.
    pub fn pieces(
        self: &Arc<Self>,
        digest: &Digest,
        from: u32,
        size: u64,
    ) -> BoxFuture<Option<Pieces>> {
        let path = format!("{PIECES_PATH}{digest}?from={from}");
        let this = self.clone();
        Box::pin(async move {
            let got = async {
                let url = this.parent.join(&path).ok()?;
                let (status, body) = this
                    .call(Method::GET, url.as_str(), &path, None, MAX_PIECES_BODY)
                    .await
                    .ok()?;
                (status == StatusCode::OK).then_some(())?;
                Pieces::parse(&body, size).ok()
            }
            .await;
            if got.is_none() {
                tokio::time::sleep(TICK).await;
            }
            got
        })
    }
}
/// A small answer's body, at most `limit` bytes.
pub async fn read(resp: Response<hyper::body::Incoming>, limit: usize) -> Result<Bytes, String> {
    Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("the body: {e}"))
}

/// The parent's blob route (`GET`, or `HEAD` before a fill), from byte `from` on (`Range` when
/// past 0), through the upstream; its head within `limit` (`[fleet] parent_timeout`), else the
/// parent is unavailable (as the upstream client says of one that refuses connections).
pub async fn parent_blob(
    up: &Upstream,
    method: Method,
    name: &RepoName,
    digest: &Digest,
    from: u64,
    limit: Duration,
) -> Result<UpstreamResponse, Error> {
    let mut req = blob_request(method, name, digest);
    if from > 0
        && let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-"))
    {
        req.headers.insert(header::RANGE, v);
    }
    let head = async {
        up.send(req)
            .await?
            .error_for_status(NotFoundKind::Blob)
            .await
    };
    tokio::time::timeout(limit, head).await.unwrap_or_else(|_| {
        Err(Error::upstream_unavailable(
            up.name(),
            format!("the fleet's parent did not answer within {limit:?} (fleet.parent_timeout)"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(name: &str) -> Members {
        Members::Dns {
            name: name.into(),
            scheme: "http".into(),
            port: 5000,
            cached: Mutex::new(None),
        }
    }

    /// `peers_dns`: every address of the name, on the port and scheme of `self`; a lookup that
    /// fails keeps the last set (none yet: empty, and the tracker's answers naming nodes are
    /// refused, so the pull goes to the parent).
    #[tokio::test]
    async fn a_dns_node_set_is_every_address_on_the_port_of_self() {
        let m = dns("localhost");
        let n = m.current().await;
        assert!(
            n.contains(&"http://127.0.0.1:5000".parse().unwrap()),
            "{n:?}"
        );
        assert!(n.iter().all(|u| u.as_str().ends_with(":5000")), "{n:?}");
        let bad = dns("no-such-node.invalid");
        assert!(bad.current().await.is_empty());
        if let Members::Dns { cached, .. } = &bad {
            *cached.lock().unwrap() = Some((Instant::now() - MEMBERS_TTL, n.clone()));
        }
        assert_eq!(bad.current().await, n, "the last set is kept");
    }
}
