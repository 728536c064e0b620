//! The fleet's routes on the registry listener (`fleet`), answered as the cluster's peer routes
//! are: under `fleet::PREFIX` the proof first (`fleet::Fleet::admit`; without a valid one, 401
//! with the `Berth-Fleet` challenge, counted, whatever the path), client logins playing no part;
//! then the route:
//! - `GET`/`HEAD /_berth/fleet/v1/upstreams` on a parent: its running upstreams' listing
//!   (`fleet::listing`), from the set a reload may have swapped;
//! - the same on a node: 404 (a node answers other nodes for blobs only, never for what decides
//!   a pull; its list is its parent's);
//! - `GET /_berth/fleet/v1/blobs/<digest>` on a node: the blob, for another node of the swarm
//!   (`fill::swarm::Swarm::serve`: a running fill's verified prefix or a committed blob, `Range:
//!   bytes=F-`, 429 at `max_uploads`); on a parent 404 (nodes read the parent through its
//!   ordinary `/v2/` blob route);
//! - anything else: 404, or 405 for another method.
//!
//! Rule of dependency: under `http`, uses [`App`] and `LogFields` (its parent), `respond` (the
//! byte answer), `fleet`, `fill::swarm` (through the mirror), `swarm::transfer` (the blob path),
//! `oci`, `error`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::respond::bytes_response;
use super::{App, Body, LogFields};
use crate::error::Error;
use crate::fleet::listing::Listing;
use crate::fleet::{Fleet, UPSTREAMS_PATH};
use crate::oci::Digest;
use crate::swarm::transfer::BLOBS_PATH;

impl App {
    /// A request under the fleet prefix: the proof, then the route.
    pub(super) async fn fleet_answer<B>(
        &self,
        fleet: &Fleet,
        req: &Request<B>,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error> {
        let uri = req.uri();
        let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        if let Err(refusal) = fleet.admit(req.method().as_str(), path_and_query, req.headers()) {
            log.outcome = "refused";
            return Err(Error::login_required(format!(
                "fleet routes need Authorization: Berth-Fleet with a valid proof ({})",
                refusal.as_str()
            )));
        }
        if let Some(digest) = uri.path().strip_prefix(BLOBS_PATH) {
            return self.fleet_blob(fleet, req, digest, log).await;
        }
        if uri.path() != UPSTREAMS_PATH {
            return Err(Error::not_found_route("no such fleet route"));
        }
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                return Err(Error::unsupported(
                    "the fleet's upstream list is read with GET or HEAD",
                ));
            }
        };
        if fleet.is_node() {
            return Err(Error::not_found_route(
                "this berth is a fleet node: it answers other nodes for blobs only, and its upstreams are its parent's",
            ));
        }
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

    /// A node's blob, for another node: only by digest, only blobs (a manifest's path names no
    /// digest here, and a tag is no digest at all).
    async fn fleet_blob<B>(
        &self,
        fleet: &Fleet,
        req: &Request<B>,
        digest: &str,
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
        let digest: Digest = digest
            .parse()
            .map_err(|_| Error::not_found_route("a node serves blobs by digest only"))?;
        if req.method() != Method::GET {
            return Err(Error::unsupported("a node's blobs are read with GET"));
        }
        let resp = swarm.serve(req.headers().get(header::RANGE), &digest).await;
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
