//! The client side of the peer protocol: building signed requests, sending them with a bounded
//! wait for the answer's head, and naming the outcome.
//!
//! One pooled client for all peers (HTTP/1.1 or HTTP/2, `https://` peers trusting the web PKI
//! roots and `[cluster] ca_file`). `peer_timeout` bounds the connect (TCP + TLS) and the wait for
//! response headers; a blob body then streams without a deadline here: the fill that reads it has
//! its own stall timeout.
//!
//! Rule of dependency: uses `upstream::connect` (the client builder), `oci`, `auth`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::auth::{self, PeerKey};
use super::{BLOBS_PATH, HEALTH_PATH};
use crate::oci::{Digest, RepoName};
use crate::upstream::connect::{POOL_IDLE_TIMEOUT, TimeoutConnector, https_connector};

/// A peer request: most are bodiless `GET`s; a forwarded fleet call (`fleet::owner`) carries
/// the node's small body.
pub type PeerRequest = Request<Full<Bytes>>;

/// What an upstream's name keeps unencoded in a path segment: the unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// Why a peer request did not get a good answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No connection (refused, unreachable, TLS failed, connect timed out): the peer is down.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Connected, but no response head within `peer_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// It answered 401 or 403: it does not share this berth's secret (or clock).
    #[error("refused: {0}")]
    Refused(StatusCode),
    /// It answered something else than 2xx.
    #[error("answered {0}")]
    Status(StatusCode),
    /// The connection failed after it was made.
    #[error("{0}")]
    Other(String),
}

impl PeerError {
    /// The `outcome` label of the request metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            PeerError::Connect(_) => "connect_error",
            PeerError::Timeout(_) => "timeout",
            PeerError::Refused(_) => "refused",
            PeerError::Status(_) => "status",
            PeerError::Other(_) => "error",
        }
    }
}

/// A byte range of a blob: `bytes=start-end` (`end` inclusive; `None`: to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRange {
    pub start: u64,
    pub end: Option<u64>,
}

/// Sends signed requests to peers.
pub struct PeerClient {
    http: Client<TimeoutConnector<HttpsConnector<HttpConnector>>, Full<Bytes>>,
    key: PeerKey,
    timeout: Duration,
}

impl PeerClient {
    pub fn new(
        key: PeerKey,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<PeerClient, String> {
        let https = https_connector(ca_file)?;
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(TimeoutConnector::new(https, timeout));
        Ok(PeerClient { http, key, timeout })
    }

    /// `GET <peer>/_berth/peer/v1/blobs/<upstream>/<repo>/<digest>`, signed, with `Range` when
    /// asked. The upstream's name is percent-encoded as one path segment (an IPv6 literal's
    /// brackets); repository names and digests are path-safe by their grammar.
    pub fn blob_request(
        &self,
        peer: &str,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        range: Option<BlobRange>,
    ) -> PeerRequest {
        let upstream = percent_encoding::utf8_percent_encode(upstream, SEGMENT);
        let path = format!("{BLOBS_PATH}{upstream}/{}/{digest}", repo.as_str());
        let mut req = self.request(peer, &path);
        if let Some(r) = range {
            let value = match r.end {
                Some(end) => format!("bytes={}-{end}", r.start),
                None => format!("bytes={}-", r.start),
            };
            req.headers_mut().insert(
                header::RANGE,
                value.parse().expect("digits make a valid header value"),
            );
        }
        req
    }

    /// `GET <peer>/_berth/peer/v1/healthz`, signed.
    pub fn health_request(&self, peer: &str) -> PeerRequest {
        self.request(peer, HEALTH_PATH)
    }

    fn request(&self, peer: &str, path: &str) -> PeerRequest {
        self.signed(peer, Method::GET, path, Bytes::new())
    }

    /// `method <peer><path_and_query>` with `body`, signed. The proof covers the method, path and
    /// query, not the body: a caller whose body matters names its digest in the path (as
    /// `fleet::owner` does).
    pub fn signed(
        &self,
        peer: &str,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> PeerRequest {
        let proof = self.key.sign(method.as_str(), path_and_query, auth::now());
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = format!("{peer}{path_and_query}")
            .parse()
            .expect("a validated origin and a path-safe path make a URI");
        req.headers_mut().insert(header::AUTHORIZATION, proof);
        req
    }

    /// Sends `req`; a 2xx answer's head within `peer_timeout`, its body still streaming.
    pub async fn send(&self, req: PeerRequest) -> Result<Response<Incoming>, PeerError> {
        self.send_within(req, self.timeout).await
    }

    /// Sends `req`; a 2xx answer's head within `wait` (the connect still within `peer_timeout`).
    pub async fn send_within(
        &self,
        req: PeerRequest,
        wait: Duration,
    ) -> Result<Response<Incoming>, PeerError> {
        let resp = self.answer_within(req, wait).await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            s => Err(PeerError::Status(s)),
        }
    }

    /// Sends `req`; its answer's head within `wait` whatever its status but a refusal (401,
    /// 403: the peer does not share this berth's secret), the body still streaming.
    async fn answer_within(
        &self,
        req: PeerRequest,
        wait: Duration,
    ) -> Result<Response<Incoming>, PeerError> {
        let resp = match tokio::time::timeout(wait, self.http.request(req)).await {
            Err(_) => return Err(PeerError::Timeout(wait)),
            Ok(Err(e)) if e.is_connect() => {
                return Err(PeerError::Connect(crate::error::chain(&e)));
            }
            Ok(Err(e)) => return Err(PeerError::Other(crate::error::chain(&e))),
            Ok(Ok(r)) => r,
        };
        match resp.status() {
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(PeerError::Refused(s)),
            _ => Ok(resp),
        }
    }

    /// Sends `req` and reads its whole (small) answer, at most `limit` bytes, all within `wait`:
    /// its status and body, whatever the status but a refusal.
    pub async fn exchange(
        &self,
        req: PeerRequest,
        wait: Duration,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), PeerError> {
        let call = async {
            let resp = self.answer_within(req, wait).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| PeerError::Other(format!("the answer's body: {e}")))?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(wait, call)
            .await
            .unwrap_or(Err(PeerError::Timeout(wait)))
    }

    /// Sends a health probe and reads its (small) answer, all within `peer_timeout`, so the
    /// connection goes back to the pool for the next one.
    /// `peer_timeout`: how long a connect or a probe may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn probe(&self, peer: &str) -> Result<(), PeerError> {
        let resp = self.send(self.health_request(peer)).await?;
        match tokio::time::timeout(self.timeout, resp.into_body().collect()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PeerError::Other(crate::error::chain(&e))),
            Err(_) => Err(PeerError::Timeout(self.timeout)),
        }
    }
}
