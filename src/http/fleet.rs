//! The fleet's routes on the registry listener (`fleet`), answered as the cluster's peer routes
//! are: under `fleet::PREFIX` the proof first (`fleet::Fleet::admit`; without a valid one, 401
//! with the `Berth-Fleet` challenge, counted, whatever the path), client logins playing no part;
//! a body, once read, must be the one the proof names (`fleet::BODY_HEADER`), else 401 too;
//! then the route ([`parse`], pure):
//! - `GET`/`HEAD /_berth/fleet/v1/upstreams` on a parent: its running upstreams' listing
//!   (`fleet::listing`), from the set a reload may have swapped;
//! - `POST /_berth/fleet/v1/swarm/<digest>[?size=N]` on a parent: a node's call to the tracker
//!   (`fleet::parent`): the body (at most `swarm::protocol::MAX_SMALL_BODY`, read within
//!   [`BODY_TIMEOUT`]) is a `SwarmRequest`, the answer a `SwarmAnswer` (JSON); a wrong body 400
//!   saying why, a blob the parent knows no size of 404;
//! - `GET /_berth/fleet/v1/pieces/<digest>[?from=K]` on a parent: the piece hashes from piece K on
//!   (`swarm::protocol::Pieces`, JSON; `fleet::tables`), waiting up to a second for a new one; 404
//!   while the parent has neither the blob nor a running fill of it;
//! - the same on a node: 404 (a node answers other nodes for blobs only, never for what decides
//!   a pull, and it is no tracker);
//! - `PUT /_berth/fleet/v1/holders/<digest>` on a node: another node's note that it holds the
//!   blob (`swarm::protocol::HolderNote`, its URL one of the node set's, else 400), kept in this
//!   node's directory book (`fill::swarm`), answered 204; `GET` of the same path: the holders
//!   kept (`swarm::protocol::Holders`, JSON). No query. At most `fill::swarm::MAX_CALLS` at
//!   once, 429 beyond; on a parent 404 (the directory is for when the parent is down);
//! - `GET /_berth/fleet/v1/blobs/<digest>` on a node: the blob, for another node of the swarm
//!   (`fill::swarm::Swarm::serve`: a running fill's verified prefix or a committed blob, `Range:
//!   bytes=F-`, 429 at `max_uploads`); anything but a digest there 404 (a node serves blobs by
//!   digest only, never manifests or tags); on a parent 404 (nodes read the parent through its
//!   ordinary `/v2/` blob route);
//! - a digest that is not one: 400; anything else: 404, or 405 for another method;
//! - under the cluster's peer prefix, its proof checked by the caller: a node's swarm or
//!   piece-table call forwarded by another replica (`fleet::owner`), answered by this replica's
//!   own tracker and tables (404 on a berth without them: the replica then tracks it itself).
//!
//! Rule of dependency: under `http`, uses [`App`] and `LogFields` (its parent), `route` (the
//! forwarded calls' [`PeerRoute`]), `respond` (the
//! byte answer), `fleet`, `fill::swarm` (through the mirror), `swarm::protocol` (the bodies'
//! limits), `swarm::transfer` (the blob path), `oci`, `error`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use super::respond::bytes_response;
use super::route::PeerRoute;
use super::{App, Body, LogFields};
use crate::error::Error;
use crate::fleet::listing::Listing;
use crate::fleet::parent::{Parent, Refusal};
use crate::fleet::{BODY_HEADER, Fleet, HOLDERS_PATH, PIECES_PATH, SWARM_PATH, UPSTREAMS_PATH};
use crate::oci::Digest;
use crate::swarm::protocol::MAX_SMALL_BODY;
use crate::swarm::transfer::BLOBS_PATH;

/// How long a swarm call's body may take to arrive (a few hundred bytes).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A fleet route, from method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FleetRoute {
    /// The parent's upstream list (`head`: HEAD).
    Upstreams { head: bool },
    /// A node's call to the tracker.
    Swarm(Digest),
    /// The piece hashes of a digest.
    Pieces(Digest),
    /// A node's blob, for another node.
    Blob(Digest),
    /// A directory node's holders of a digest: told (`put`) or asked.
    Holders { digest: Digest, put: bool },
}

/// Method and path into a [`FleetRoute`]: 404 for no such path, 405 for another method, 400 for
/// a digest that is not one.
pub(super) fn parse(method: &Method, path: &str) -> Result<FleetRoute, Error> {
    let digest = |rest: &str| {
        rest.parse::<Digest>().map_err(|_| {
            Error::digest_invalid(format!("{:?} is not a digest", super::route::clip(rest)))
        })
    };
    if path == UPSTREAMS_PATH {
        return match *method {
            Method::GET => Ok(FleetRoute::Upstreams { head: false }),
            Method::HEAD => Ok(FleetRoute::Upstreams { head: true }),
            _ => Err(Error::unsupported(
                "the fleet's upstream list is read with GET or HEAD",
            )),
        };
    }
    if let Some(rest) = path.strip_prefix(SWARM_PATH) {
        if *method != Method::POST {
            return Err(Error::unsupported("a swarm call is a POST"));
        }
        return Ok(FleetRoute::Swarm(digest(rest)?));
    }
    if let Some(rest) = path.strip_prefix(PIECES_PATH) {
        if *method != Method::GET {
            return Err(Error::unsupported("piece hashes are read with GET"));
        }
        return Ok(FleetRoute::Pieces(digest(rest)?));
    }
    if let Some(rest) = path.strip_prefix(HOLDERS_PATH) {
        let put = match *method {
            Method::GET => false,
            Method::PUT => true,
            _ => {
                return Err(Error::unsupported(
                    "a digest's holders are told with PUT and read with GET",
                ));
            }
        };
        return Ok(FleetRoute::Holders {
            digest: digest(rest)?,
            put,
        });
    }
    if let Some(rest) = path.strip_prefix(BLOBS_PATH) {
        let d = rest
            .parse::<Digest>()
            .map_err(|_| Error::not_found_route("a node serves blobs by digest only"))?;
        if *method != Method::GET {
            return Err(Error::unsupported("a node's blobs are read with GET"));
        }
        return Ok(FleetRoute::Blob(d));
    }
    Err(Error::not_found_route("no such fleet route"))
}

impl App {
    /// A request under the fleet prefix: the proof, then the route. `body` is read only for a
    /// swarm call on a parent or a holder's note on a node.
    pub(super) async fn fleet_answer<R, B>(
        &self,
        fleet: &Fleet,
        req: &Request<R>,
        body: B,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let uri = req.uri();
        let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let named = match fleet.admit(req.method().as_str(), path_and_query, req.headers()) {
            Ok(named) => named,
            Err(refusal) => {
                log.outcome = "refused";
                return Err(Error::login_required(format!(
                    "fleet routes need Authorization: Berth-Fleet with a valid proof ({}; a request with a body names its digest in {BODY_HEADER})",
                    refusal.as_str()
                )));
            }
        };
        let route = parse(req.method(), uri.path())?;
        let parent = match (fleet.is_node(), fleet.parent()) {
            (false, Some(p)) => Some(p),
            _ => None,
        };
        // Blobs are what a node answers; the rest only a parent.
        let parents_only = match &route {
            FleetRoute::Upstreams { .. } => Some("its upstreams are its parent's"),
            FleetRoute::Swarm(_) | FleetRoute::Pieces(_) => Some("it tracks no swarm"),
            FleetRoute::Blob(_) | FleetRoute::Holders { .. } => None,
        };
        if fleet.is_node()
            && let Some(what) = parents_only
        {
            return Err(Error::not_found_route(format!(
                "this berth is a fleet node: it answers other nodes for blobs only, and {what}"
            )));
        }
        match route {
            FleetRoute::Upstreams { head } => {
                let upstreams = self.mirror.upstreams();
                let listing = Listing::of(upstreams.iter().map(|(_, u)| u.config()));
                log.outcome = "upstreams";
                Ok(bytes_response(
                    StatusCode::OK,
                    Bytes::from(listing.to_json()),
                    "application/json",
                    head,
                ))
            }
            FleetRoute::Swarm(digest) => {
                let parent = parent.ok_or_else(no_tracker)?;
                let body = read_body(body).await.inspect_err(|_| parent.bad_body())?;
                signed_body(fleet, named.as_ref(), &body, log)?;
                let answer = parent
                    .swarm(&digest, &body, uri.query())
                    .await
                    .map_err(|r| refused(r, log))?;
                log.outcome = "swarm";
                Ok(json(answer.encode()))
            }
            FleetRoute::Pieces(digest) => {
                let parent: &Parent = parent.ok_or_else(no_tracker)?;
                let pieces = parent
                    .pieces(&digest, uri.query())
                    .await
                    .map_err(|r| refused(r, log))?;
                log.outcome = "pieces";
                Ok(json(pieces.encode()))
            }
            FleetRoute::Blob(digest) => self.fleet_blob(fleet, &digest, req, log).await,
            FleetRoute::Holders { digest, put } => {
                let call = HoldersCall {
                    digest: &digest,
                    put,
                    query: uri.query(),
                    named: named.as_ref(),
                };
                self.fleet_holders(fleet, call, body, log).await
            }
        }
    }
}

impl App {
    /// A directory node's holders of `digest`: a note kept (`put`), or the holders answered.
    async fn fleet_holders<B>(
        &self,
        fleet: &Fleet,
        call: HoldersCall<'_>,
        body: B,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let HoldersCall {
            digest, put, query, ..
        } = call;
        let swarm = match self.mirror.swarm() {
            Some(s) if fleet.is_node() => s,
            _ => {
                return Err(Error::not_found_route(
                    "this berth is the fleet's parent: the directory of holders lives on the nodes",
                ));
            }
        };
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            log.outcome = "bad_request";
            return Err(Error::bad_request(format!(
                "a holders call takes no query, not {:?}",
                super::route::clip(q)
            )));
        }
        let Some(_slot) = swarm.directory_call() else {
            log.outcome = "busy";
            return Err(Error::busy(
                format!(
                    "this node answers {} directory calls at once",
                    crate::fill::swarm::MAX_CALLS
                ),
                Duration::from_secs(1),
            ));
        };
        if !put {
            log.outcome = "holders";
            return Ok(json(swarm.holders(digest).await.encode()));
        }
        let body = read_body(body).await?;
        signed_body(fleet, call.named, &body, log)?;
        swarm.note_holder(digest, &body).await.map_err(|e| {
            log.outcome = "bad_request";
            Error::bad_request(e.to_string())
        })?;
        log.outcome = "noted";
        Ok(bytes_response(
            StatusCode::NO_CONTENT,
            Bytes::new(),
            "application/json",
            false,
        ))
    }
}

impl App {
    /// A node's blob, for another node (parsed as a digest already, so never a manifest or tag).
    async fn fleet_blob<R>(
        &self,
        fleet: &Fleet,
        digest: &Digest,
        req: &Request<R>,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error> {
        let swarm = match self.mirror.swarm() {
            Some(s) if fleet.is_node() => s,
            _ => {
                return Err(Error::not_found_route(
                    "this berth is the fleet's parent: nodes read its blobs through /v2/",
                ));
            }
        };
        let resp = swarm.serve(req.headers().get(header::RANGE), digest).await;
        log.outcome = match resp.status() {
            StatusCode::TOO_MANY_REQUESTS => "busy",
            s if s.is_success() => "served",
            _ => "none",
        };
        Ok(resp.map(|b| {
            b.map_err(|e| Error::io("serving a blob to a node", &e))
                .boxed_unsync()
        }))
    }
}

impl App {
    /// A node's tracker call forwarded by another replica (`fleet::owner`), its cluster proof
    /// checked already: answered by this berth's own tracker and tables, never forwarded again.
    /// A swarm call's body must be the one its (signed) path names, else 401: the proof does not
    /// cover it.
    pub(super) async fn fleet_forwarded<R, B>(
        &self,
        route: PeerRoute,
        req: &Request<R>,
        body: B,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let parent = match self.fleet.as_deref() {
            Some(f) if !f.is_node() => f.parent().ok_or_else(no_tracker)?,
            _ => return Err(no_tracker()),
        };
        let query = req.uri().query();
        match route {
            PeerRoute::FleetSwarm {
                digest,
                body: named,
            } => {
                let body = read_body(body).await.inspect_err(|_| parent.bad_body())?;
                if !crate::fleet::owner::body_matches(&body, &named) {
                    log.outcome = "refused";
                    return Err(Error::login_required(
                        "a forwarded swarm call's body is not the one its proof names",
                    ));
                }
                let answer = parent
                    .swarm_here(&digest, &body, query)
                    .await
                    .map_err(|r| refused(r, log))?;
                log.outcome = "swarm";
                Ok(json(answer.encode()))
            }
            PeerRoute::FleetPieces(digest) => {
                let pieces = parent
                    .pieces_here(&digest, query)
                    .await
                    .map_err(|r| refused(r, log))?;
                log.outcome = "pieces";
                Ok(json(pieces.encode()))
            }
            PeerRoute::Health | PeerRoute::Blob { .. } => {
                Err(Error::not_found_route("not a forwarded fleet call"))
            }
        }
    }
}

/// A holders call, parsed and admitted: the digest, told (`put`) or asked, its query, and the
/// body digest its proof covers.
struct HoldersCall<'a> {
    digest: &'a Digest,
    put: bool,
    query: Option<&'a str>,
    named: Option<&'a Digest>,
}

/// A fleet request's body, read: the one its proof named, else 401 (counted).
fn signed_body(
    fleet: &Fleet,
    named: Option<&Digest>,
    body: &[u8],
    log: &mut LogFields,
) -> Result<(), Error> {
    fleet.admit_body(named, body).map_err(|r| {
        log.outcome = "refused";
        Error::login_required(format!(
            "the body is not the one the fleet proof names in {BODY_HEADER} ({})",
            r.as_str()
        ))
    })
}

fn json(body: Vec<u8>) -> Response<Body> {
    bytes_response(StatusCode::OK, Bytes::from(body), "application/json", false)
}

fn no_tracker() -> Error {
    Error::not_found_route("this berth was built without the fleet's tracker")
}

/// A swarm call's body: at most `MAX_SMALL_BODY` bytes, within [`BODY_TIMEOUT`].
async fn read_body<B>(body: B) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = Limited::new(body, MAX_SMALL_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(Error::bad_request(format!(
            "the body could not be read (at most {MAX_SMALL_BODY} bytes): {e}"
        ))),
        Err(_) => Err(Error::bad_request(format!(
            "the body did not arrive within {BODY_TIMEOUT:?}"
        ))),
    }
}

/// A parent's refusal as an error answer: 400 with why, 404 for a blob it knows nothing of yet,
/// 429 when it knows too many nodes.
fn refused(r: Refusal, log: &mut LogFields) -> Error {
    match r {
        Refusal::BadRequest(m) => {
            log.outcome = "bad_request";
            Error::bad_request(m)
        }
        Refusal::Unknown(m) => {
            log.outcome = "unknown";
            Error::blob_unknown(m)
        }
        Refusal::Full(m) => {
            log.outcome = "full";
            Error::busy(m, Duration::from_secs(5))
        }
        Refusal::Failed(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Kind, Malformed, Missing};

    /// A body over the limit, or one that does not arrive in time: 400, saying which.
    #[tokio::test(start_paused = true)]
    async fn a_body_is_read_within_its_limits() {
        use futures_util::{StreamExt, stream};
        use http_body_util::{Full, StreamBody};
        let fits = read_body(Full::new(Bytes::from(vec![b'x'; MAX_SMALL_BODY])))
            .await
            .unwrap();
        assert_eq!(fits.len(), MAX_SMALL_BODY);
        let e = read_body(Full::new(Bytes::from(vec![b'x'; MAX_SMALL_BODY + 1])))
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::Invalid(Malformed::Request));
        assert!(e.to_string().contains("at most"), "{e}");
        // A first frame, then nothing: the clock runs to the timeout.
        let first = stream::iter([Ok::<_, std::convert::Infallible>(http_body::Frame::data(
            Bytes::from_static(b"{"),
        ))]);
        let stalled = StreamBody::new(first.chain(stream::pending()));
        let e = read_body(stalled).await.unwrap_err();
        assert_eq!(e.kind, Kind::Invalid(Malformed::Request));
        assert!(e.to_string().contains("did not arrive"), "{e}");
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn routes_parse_by_method_and_path() {
        let d: Digest = D.parse().unwrap();
        let swarm = format!("{SWARM_PATH}{D}");
        let pieces = format!("{PIECES_PATH}{D}");
        assert_eq!(
            parse(&Method::POST, &swarm).unwrap(),
            FleetRoute::Swarm(d.clone())
        );
        assert_eq!(
            parse(&Method::GET, &pieces).unwrap(),
            FleetRoute::Pieces(d.clone())
        );
        let holders = format!("{HOLDERS_PATH}{D}");
        assert_eq!(
            parse(&Method::PUT, &holders).unwrap(),
            FleetRoute::Holders {
                digest: d.clone(),
                put: true
            }
        );
        assert_eq!(
            parse(&Method::GET, &holders).unwrap(),
            FleetRoute::Holders {
                digest: d,
                put: false
            }
        );
        assert_eq!(
            parse(&Method::HEAD, UPSTREAMS_PATH).unwrap(),
            FleetRoute::Upstreams { head: true }
        );
        let kind = |m: Method, p: &str| parse(&m, p).unwrap_err().kind;
        assert_eq!(kind(Method::GET, &swarm), Kind::Unsupported);
        assert_eq!(kind(Method::POST, &pieces), Kind::Unsupported);
        assert_eq!(kind(Method::POST, UPSTREAMS_PATH), Kind::Unsupported);
        assert_eq!(kind(Method::POST, &holders), Kind::Unsupported);
        assert_eq!(
            kind(Method::PUT, &format!("{HOLDERS_PATH}sha256:abc")),
            Kind::Invalid(Malformed::Digest)
        );
        assert_eq!(
            kind(Method::POST, &format!("{SWARM_PATH}sha256:abc")),
            Kind::Invalid(Malformed::Digest)
        );
        assert_eq!(
            kind(Method::GET, &format!("{PIECES_PATH}{D}/x")),
            Kind::Invalid(Malformed::Digest)
        );
        assert_eq!(
            kind(Method::GET, "/_berth/fleet/v1/nothing"),
            Kind::NotFound(Missing::Route)
        );
    }
}
