//! The HTTP face of berth: route a request, call the mirror, write the response.
//!
//! This is the only layer that sees a client's `Request` and builds a `Response`. With `[auth]`,
//! the `Authorization` header becomes a principal before the path is even parsed, and the
//! principal is checked against the route's upstream before the mirror is asked (`access`). Every
//! request ends in one log line (route, upstream, outcome, status, bytes, duration) written when
//! its body is finished or dropped, so streamed blobs are logged with the bytes really sent.
//!
//! With `[cluster]`, paths under `cluster::PEER_PREFIX` are the peer protocol: their proof is
//! checked (`cluster::Cluster::admit`) before anything else, client logins play no part there,
//! and a request without a valid proof gets 401 whatever the path. With `[fleet]`, paths under
//! `fleet::PREFIX` are the fleet's routes, answered the same way (`fleet`, the child module).
//!
//! The mirror answers in its own terms and notes the pulls it answered itself (the bucket's
//! last-pull order), so this layer asks nothing of `tier` or `store`.
//!
//! The rooms:
//! - this file: [`App`] (registry requests: admission, dispatch, the answer) and the peer side;
//! - [`route`]: method + path + query into a typed [`route::Route`] (pure, fuzzed), building the
//!   mirror's [`Target`](crate::mirror::Target);
//! - [`error`]: the one table from an error's kind to its status, OCI code and headers, and
//!   [`error_response`], through which every error answer of berth goes;
//! - `respond`: the mirror's replies turned into responses (headers, bodies, HEAD);
//! - `log`: the request line, written when the body ends or is dropped;
//! - [`metrics`]: the metrics listener's router (`/metrics`, `/healthz`, `/admin`);
//! - [`admin`]: the admin API's face (`/admin/...`, bearer token, JSON) over `admin`'s operations;
//! - `fleet`: the fleet's routes (`/_berth/fleet/v1/`: the proof, the parent's upstream list,
//!   tracker and piece tables; a node's blobs for other nodes), and the tracker calls other
//!   replicas forward under the peer prefix (`fleet::owner`);
//! - `warm`: the admin API's warm, `warm`'s walk run through [`App`] in process (a request it
//!   builds carries the `AdminWarm` marker, which admits it as `Principal::Admin`).
//!
//! Rule of dependency: uses `access`, `admin` (the operations), `cluster` (the peer protocol's
//! proof and paths), `fleet` (the fleet's proof, paths, listing and parent), `swarm::protocol`
//! (the swarm bodies' limits), `health`, `mirror` (its replies, and the `Target` that `route`
//! builds), `upstreams` (the host table), `metrics`,
//! `logwriter`, `oci`, `error`, and `warm` (the admin API's warm runs its walk). Only `server` and
//! `assemble` use it; nothing below it sees HTTP types of the client side. Among the children,
//! `error` uses `respond`, `log` and `fleet` use `route`, `metrics` uses `admin`, `admin` uses
//! `warm`; no two use each other.

pub mod admin;
pub mod error;
mod fleet;
mod log;
pub mod metrics;
mod respond;
pub mod route;
mod warm;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};

use crate::access::{Access, Principal};
use crate::cluster::{Cluster, PEER_PREFIX};
use crate::error::{Error, Kind};
use crate::health::{Health, Phase};
use crate::logwriter::BatchWriter;
use crate::metrics::Metrics;
use crate::mirror::{ByteRange, Mirror};
pub use error::error_response;
use log::{LoggedBody, RequestLog};
use respond::{
    blob_response, bytes_response, empty, manifest_response, referrers_response, tags_response,
};
use route::{PeerRoute, Route, Target, Via};

/// The response body type of every answer.
pub type Body = UnsyncBoxBody<Bytes, Error>;

const BASIC_CHALLENGE: HeaderValue = HeaderValue::from_static("Basic realm=\"berth\"");
const PEER_CHALLENGE: HeaderValue = HeaderValue::from_static(crate::cluster::auth::SCHEME);
const FLEET_CHALLENGE: HeaderValue = HeaderValue::from_static(crate::fleet::SCHEME);
/// The route label of peer requests (logs, `berth_http_requests_total`).
const PEER_KIND: &str = "peer";
/// The route label of fleet requests.
const FLEET_KIND: &str = "fleet";
/// The target of the request lines (`berth::http`): filters and log readers name it, so it stays
/// this module's though the lines are written in `log`.
const LOG_TARGET: &str = module_path!();
const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");
const API_VERSION_HEADER: header::HeaderName =
    header::HeaderName::from_static("docker-distribution-api-version");

/// Marks a request that the admin API's warm built in this process (`warm`), after its bearer
/// token was checked: `access` sees [`Principal::Admin`]. hyper gives every request read from a
/// socket empty extensions, so no client can send one.
#[derive(Debug, Clone, Copy)]
struct AdminWarm;

/// Everything a request handler needs; built once by the server.
pub struct App {
    pub mirror: Arc<Mirror>,
    pub metrics: Metrics,
    /// Client login and the access policy; `None` without `[auth]` (everyone may pull).
    pub access: Option<Arc<Access>>,
    /// Where request lines go directly, when set (see `logwriter`); else through `tracing`.
    pub request_log: OnceLock<BatchWriter>,
    /// Request lines as JSON objects (`[log] format = "json"`), written to `request_log`.
    pub json_log: AtomicBool,
    /// Responses not yet finished (their body still going out): what a drain waits for.
    pub in_flight: AtomicUsize,
    /// With `[cluster]`: what answers the peer routes.
    pub peers: Option<PeerSide>,
    /// With `[fleet]`: what checks and answers the fleet routes (`fleet`).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// What the peer routes need: the cluster (to check proofs) and this berth's phase.
pub struct PeerSide {
    pub cluster: Arc<Cluster>,
    pub health: Arc<Health>,
}

/// What the request log line says about a request. The parsed route is kept whole (its upstream,
/// repository and reference are named from it when the line is written) rather than copied into
/// strings on every request.
struct LogFields {
    kind: &'static str,
    route: Option<Route>,
    outcome: &'static str,
    /// Who asked, once the login checked out (`None`: anonymous, or no `[auth]`).
    user: Option<Principal>,
}

impl App {
    pub fn new(mirror: Arc<Mirror>, metrics: Metrics) -> App {
        App {
            mirror,
            metrics,
            access: None,
            request_log: OnceLock::new(),
            json_log: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            peers: None,
            fleet: None,
        }
    }

    /// Answers one request. Never fails: errors become OCI error responses.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Result<Response<Body>, Infallible>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        // The head routes; the body is read only by the one route that takes one (a fleet
        // swarm call).
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, ());
        let mut log = LogFields {
            kind: "unknown",
            route: None,
            outcome: "-",
            user: None,
        };
        let result = self.dispatch(&req, body, &mut log).await;
        // The request is done with: its method and URI move into the log line, uncopied.
        let http::request::Parts { method, uri, .. } = req.into_parts().0;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                if log.outcome == "-" {
                    log.outcome = e.origin.as_str();
                }
                let mut r = error_response(&e, method == Method::HEAD);
                if e.kind == Kind::LoginRequired {
                    let challenge = match log.kind {
                        PEER_KIND => PEER_CHALLENGE,
                        FLEET_KIND => FLEET_CHALLENGE,
                        _ => BASIC_CHALLENGE,
                    };
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
                }
                r
            }
        };
        resp.headers_mut().insert(API_VERSION_HEADER, API_VERSION);
        let status = resp.status();
        self.metrics.request(
            log.kind,
            method.as_str(),
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
        let served_from = match log.outcome {
            "hit" => Some("cache"),
            "miss" | "joined" if log.kind == "blob" => Some("upstream"),
            "bucket" | "bucket_joined" if log.kind == "blob" => Some("bucket"),
            "peer" | "peer_joined" if log.kind == "blob" => Some("peer"),
            _ => None,
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        // hyper stops polling a body once it has sent the `Content-Length` it announced, so the
        // end of the stream is never seen there: the count of bytes decides instead.
        let length = (method != Method::HEAD)
            .then(|| resp.headers().get(header::CONTENT_LENGTH))
            .flatten()
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let done = RequestLog {
            started,
            length,
            method,
            uri,
            status,
            fields: log,
            bytes: 0,
            served_from,
            app: self,
        };
        Ok(resp.map(|b| {
            LoggedBody {
                inner: b,
                log: Some(done),
            }
            .boxed_unsync()
        }))
    }

    async fn dispatch<B>(
        &self,
        req: &Request<()>,
        body: B,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // berth is not a forward proxy: absolute-form targets and CONNECT are refused. (HTTP/2
        // requests always carry an authority, so the check is for HTTP/1 only.)
        if req.method() == Method::CONNECT {
            return Err(Error::unsupported(
                "CONNECT is refused: berth is a registry mirror, not a proxy",
            ));
        }
        if req.version() <= Version::HTTP_11 && req.uri().authority().is_some() {
            return Err(Error::bad_request(
                "absolute-form request targets are refused: berth is a registry mirror, not a proxy",
            ));
        }
        if let Some(side) = &self.peers
            && req.uri().path().starts_with(PEER_PREFIX)
        {
            log.kind = PEER_KIND;
            return self.peer_answer(side, req, body, log).await;
        }
        if let Some(fleet) = &self.fleet
            && req.uri().path().starts_with(crate::fleet::PREFIX)
        {
            log.kind = FLEET_KIND;
            return self.fleet_answer(fleet, req, body, log).await;
        }
        // One snapshot of the upstream set routes this request (a reload swaps it whole).
        let upstreams = self.mirror.upstreams();
        // Parsing is pure and cheap: done first so the log and metrics name the route even
        // when the login fails, but its errors wait until the login is checked.
        let parsed = route::parse(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            upstreams.hosts(),
        );
        if let Ok(route) = &parsed {
            log.kind = route.kind();
        }
        let admin = req.extensions().get::<AdminWarm>().is_some();
        let who = match &self.access {
            Some(access) => {
                let who = match admin {
                    true => Principal::Admin,
                    false => {
                        access
                            .authenticate(req.headers().get(header::AUTHORIZATION))
                            .await
                    }
                };
                log.user = Some(who.clone());
                Some((access, who))
            }
            None => {
                log.user = admin.then_some(Principal::Admin);
                None
            }
        };
        let route = match parsed {
            Ok(route) => route,
            Err(e) => {
                // A client without a login learns no more than "log in", not which paths or
                // registries exist.
                if let Some((access, who)) = &who {
                    access.authorize(who, None)?;
                }
                return Err(e);
            }
        };
        if let Some((access, who)) = &who {
            access.authorize(who, route.target().map(|t| t.upstream))?;
        }
        let answer = self.answer(req, &route, log).await;
        log.route = Some(route);
        answer
    }

    async fn answer<B>(
        &self,
        req: &Request<B>,
        route: &Route,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error> {
        let head = req.method() == Method::HEAD;
        let mut resp = match route {
            Route::Base => Ok(empty(StatusCode::OK, head)),
            Route::Manifest { target, reference } => {
                let accept = joined(req.headers(), header::ACCEPT);
                let reply = self
                    .mirror
                    .manifest(target, reference, accept.as_deref(), head)
                    .await?;
                log.outcome = reply.outcome;
                Ok(manifest_response(reply, head))
            }
            Route::Blob { target, digest } => {
                let range = req
                    .headers()
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(ByteRange::parse);
                let reply = self.mirror.blob(target, digest, range, head).await?;
                log.outcome = reply.outcome;
                Ok(blob_response(reply))
            }
            Route::TagsList { target, n, last } => {
                let reply = self.mirror.tags(target, *n, last.as_ref()).await?;
                log.outcome = "passthrough";
                Ok(tags_response(reply, target, head))
            }
            Route::Referrers {
                target,
                subject,
                artifact_type,
            } => {
                let reply = self
                    .mirror
                    .referrers(target, subject, artifact_type.as_deref())
                    .await?;
                log.outcome = reply.outcome;
                Ok(referrers_response(reply, head))
            }
        }?;
        if let Some(Target {
            via: Via::Namespace(ns),
            ..
        }) = route.target()
            && let Ok(v) = HeaderValue::from_str(ns)
        {
            resp.headers_mut().insert("oci-namespace", v);
        }
        Ok(resp)
    }
}

impl App {
    /// A request under the peer prefix: the proof first, then the route. A blob is answered as
    /// a client's would be, through the named upstream (looked up among the configured ones,
    /// never used as an address), except that this berth does not ask a peer in turn; a
    /// forwarded fleet call by this berth's own tracker (`fleet`, the child module).
    async fn peer_answer<R, B>(
        &self,
        side: &PeerSide,
        req: &Request<R>,
        body: B,
        log: &mut LogFields,
    ) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let head = req.method() == Method::HEAD;
        let (upstream, repo, digest) = match admit_peer(side, req, log)? {
            PeerRoute::Health => return Ok(peer_health(side, head, log)),
            PeerRoute::Blob {
                upstream,
                repo,
                digest,
            } => (upstream, repo, digest),
            forwarded => return self.fleet_forwarded(forwarded, req, body, log).await,
        };
        let slot = self
            .mirror
            .upstreams()
            .iter()
            .find(|(_, u)| u.name() == upstream)
            .map(|(slot, _)| slot)
            .ok_or_else(|| {
                Error::not_found_route(format!(
                    "no upstream named {:?} is configured here",
                    route::clip(&upstream)
                ))
            })?;
        let target = Target {
            upstream: slot,
            name: repo,
            via: Via::Default,
        };
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(ByteRange::parse);
        let reply = self.mirror.peer_blob(&target, &digest, range, head).await?;
        log.outcome = reply.outcome;
        Ok(blob_response(reply))
    }
}

/// A peer request's proof, then its route: 401 without a valid proof, whatever the path.
fn admit_peer<B>(
    side: &PeerSide,
    req: &Request<B>,
    log: &mut LogFields,
) -> Result<PeerRoute, Error> {
    let uri = req.uri();
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    if let Err(refusal) = side
        .cluster
        .admit(req.method().as_str(), path_and_query, req.headers())
    {
        log.outcome = "refused";
        return Err(Error::login_required(format!(
            "peer routes need Authorization: Berth-Peer with a valid proof ({})",
            refusal.as_str()
        )));
    }
    route::parse_peer(req.method(), uri.path())
}

/// The peer health answer: 200 while this berth serves, 503 while it starts or drains.
fn peer_health(side: &PeerSide, head: bool, log: &mut LogFields) -> Response<Body> {
    let phase = side.health.phase();
    log.outcome = phase.as_str();
    let status = match phase {
        Phase::Serving => StatusCode::OK,
        Phase::Starting | Phase::Draining => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = Bytes::from(format!("{}\n", phase.as_str()));
    bytes_response(status, body, "text/plain", head)
}

/// All values of a header joined with `, ` (Docker sends one `Accept` per media type); a single
/// value is borrowed, not copied.
fn joined(h: &HeaderMap, name: header::HeaderName) -> Option<Cow<'_, str>> {
    let mut values = h.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut all = [first, second].join(", ");
            for v in values {
                all.push_str(", ");
                all.push_str(v);
            }
            Some(Cow::Owned(all))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer health route answers this berth's phase, only with a proof, GET or HEAD only.
    #[tokio::test]
    async fn the_peer_health_route_follows_the_phase() {
        use crate::cluster::auth::{self, PeerKey};
        use crate::config::{ClusterConfig, Secret};
        let dir = tempfile::tempdir().unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        std::fs::write(dir.path().join("s"), secret).unwrap();
        let mut cfg: ClusterConfig = toml::from_str(&format!(
            "self = \"http://a:1\"\npeers = [\"http://a:1\"]\nsecret_file = {:?}\n",
            dir.path().join("s").display().to_string()
        ))
        .unwrap();
        cfg.validate().unwrap();
        let cluster = Arc::new(Cluster::new(&cfg, &prometheus::Registry::new()).unwrap());
        let index = Arc::new(crate::index::Index::new(Default::default()));
        let health = Arc::new(Health::new(
            dir.path().to_owned(),
            index,
            Default::default(),
        ));
        let side = PeerSide {
            cluster: cluster.clone(),
            health: health.clone(),
        };
        let key = PeerKey::new(&Secret::new(secret));
        let path = crate::cluster::HEALTH_PATH;
        let ask = |method: Method| {
            let req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(
                    header::AUTHORIZATION,
                    key.sign(method.as_str(), path, auth::now()),
                )
                .body(())
                .unwrap();
            let mut log = LogFields {
                kind: PEER_KIND,
                route: None,
                outcome: "-",
                user: None,
            };
            let head = method == Method::HEAD;
            let r = admit_peer(&side, &req, &mut log).map(|route| {
                assert_eq!(route, PeerRoute::Health);
                peer_health(&side, head, &mut log)
            });
            (r, log.outcome)
        };
        for (phase, status) in [
            (Phase::Starting, StatusCode::SERVICE_UNAVAILABLE),
            (Phase::Serving, StatusCode::OK),
            (Phase::Draining, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            health.set(phase);
            let (r, outcome) = ask(Method::GET);
            let r = r.unwrap();
            assert_eq!((r.status(), outcome), (status, phase.as_str()));
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("{}\n", phase.as_str()));
        }
        let (head, _) = ask(Method::HEAD);
        let head = head.unwrap();
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "9");
        assert!(
            head.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        let (post, _) = ask(Method::POST);
        assert_eq!(post.unwrap_err().kind, Kind::Unsupported);

        // No proof: refused before the route is looked at.
        let req = Request::builder().uri(path).body(()).unwrap();
        let mut log = LogFields {
            kind: PEER_KIND,
            route: None,
            outcome: "-",
            user: None,
        };
        let e = admit_peer(&side, &req, &mut log).unwrap_err();
        assert_eq!((e.kind, log.outcome), (Kind::LoginRequired, "refused"));
    }
}
