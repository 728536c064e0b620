//! The registry client: one [`Upstream`] per configured `[[upstream]]`, speaking the read side of the
//! OCI distribution API over a pooled HTTPS client.
//!
//! Its one job is to turn "GET this `/v2/...` path" into the upstream's final response: it attaches
//! credentials or bearer tokens, answers auth challenges, follows redirects (to CDNs and object
//! stores) and enforces timeouts. It does not interpret statuses for the caller beyond
//! [`UpstreamResponse::error_for_status`].
//!
//! Retries: a request whose connection fails (refused, reset, connect timeout) or that ends in
//! 500/502/503/504 is sent again, the whole auth and redirect chain from the start, up to
//! `retries` more times with jittered exponential backoff. That all happens before `send`
//! returns, so no byte of a failed attempt ever reaches the caller. A 429 or 503 with a
//! `Retry-After` no longer than `retry_backoff_max` is waited out; a longer one is returned, so the
//! client hears it. A missing response (`response_timeout`) is not retried: the upstream has the
//! request and is slow, and waiting again would outlast the client's patience.
//!
//! Where secrets go: the configured credentials only to the upstream's own origin and to the token
//! realms in `auth_realms`; tokens only to the upstream's origin; `Authorization` is dropped as soon
//! as a redirect leaves the origin. The URL is always `cfg.url` plus a `/v2/` path: nothing a client
//! sends can pick the host.
//!
//! Rule of dependency: uses `config`, `error` and `oci`; knows nothing of the mirror or the store.

pub mod auth;
pub mod connect;
pub mod guard;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::time::Instant;
use tracing::debug;
use url::Url;

use self::auth::{
    Challenge, TokenCache, TokenKey, TokenResponse, credentials_allowed, same_origin,
};
use crate::config::{Secret, UpstreamConfig};
use crate::error::{Error, Missing};
use crate::oci::RepoName;

pub use self::connect::{ConnectTimeout, HttpClient, POOL_IDLE_TIMEOUT, TimeoutConnector};

/// How much of an error or token body is read.
const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// An error body is only context: it gets this long, not a full stall timeout.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// One configured upstream registry. Cheap to share in an `Arc`; all methods take `&self`.
pub struct Upstream {
    cfg: UpstreamConfig,
    client: HttpClient,
    /// Where this upstream's redirects and realms may lead (also applied by the client's resolver).
    guard: Arc<guard::Guard>,
    metrics: UpstreamMetrics,
    /// Shared with every response body for its error messages.
    name: Arc<str>,
    user_agent: HeaderValue,
    /// The last challenge and the tokens. A std mutex: held for map operations only, never across
    /// an await.
    auth: Mutex<AuthState>,
    /// Serializes token fetches, so that the many requests of one image pull that miss the token
    /// together ask the realm once; the others find the token in the cache when they get the lock.
    token_fetch: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct AuthState {
    /// What the upstream asked for last, so later requests can carry auth from the start.
    scheme: Option<Scheme>,
    tokens: TokenCache,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer { realm: Url, service: Option<String> },
}

/// The auth a request carries.
#[derive(Debug)]
enum Attached {
    None,
    Basic,
    Bearer {
        key: TokenKey,
        token: Secret,
        /// Taken from the cache (may be revoked) rather than just issued.
        cached: bool,
    },
}

/// A request for [`Upstream::send`].
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// GET or HEAD.
    pub method: Method,
    /// Starts with `/v2/`, e.g. `/v2/library/nginx/manifests/latest` or `.../tags/list?n=10`.
    pub path_and_query: String,
    /// Accept, Range and the like. `Authorization`, `Cookie`, `Host` and hop-by-hop headers are
    /// removed before sending.
    pub headers: HeaderMap,
    /// For the token scope `repository:<name>:pull`.
    pub repository: Option<RepoName>,
}

impl UpstreamRequest {
    /// A request without extra headers.
    pub fn new(
        method: Method,
        path_and_query: impl Into<String>,
        repository: Option<RepoName>,
    ) -> Self {
        UpstreamRequest {
            method,
            path_and_query: path_and_query.into(),
            headers: HeaderMap::new(),
            repository,
        }
    }
}

/// The upstream's final response (after auth and redirects), whatever its status.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

/// Which `*_UNKNOWN` a 404 becomes when the upstream's body does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFoundKind {
    Manifest,
    Blob,
    Repository,
}

/// A response body, read chunk by chunk with a stall timeout.
pub struct UpstreamBody {
    inner: Incoming,
    stall_timeout: Duration,
    upstream: Arc<str>,
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.cfg.name)
            .field("url", &self.cfg.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the upstream and its own connection pool.
    pub fn new(cfg: &UpstreamConfig, metrics: UpstreamMetrics) -> Result<Upstream, Error> {
        let guard = Arc::new(guard::Guard::new(
            &cfg.url,
            &cfg.auth_realms,
            cfg.allow_private_redirects,
        ));
        let client = connect::build_client(cfg, guard.clone())?;
        Ok(Upstream {
            guard,
            cfg: cfg.clone(),
            client,
            metrics,
            name: Arc::from(cfg.name.as_str()),
            user_agent: HeaderValue::from_static(concat!("berth/", env!("CARGO_PKG_VERSION"))),
            auth: Mutex::default(),
            token_fetch: tokio::sync::Mutex::new(()),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// GET or HEAD `req.path_and_query` on this upstream: attaches auth, follows redirects, applies
    /// timeouts, retries connection failures and 5xx (see the module docs). Returns the final
    /// response for any status (after retries, the last one); `Err` only for transport failures,
    /// timeouts, refused redirects and failed token requests.
    pub async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, Error> {
        if self.cfg.offline {
            return Err(Error::upstream_unavailable(
                &self.name,
                "offline = true: this upstream is not contacted, and this is not cached",
            ));
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return Err(Error::internal(format!(
                "upstream requests are GET or HEAD, not {}",
                req.method
            )));
        }
        let url = self.url_for(&req.path_and_query)?;
        let headers = self.request_headers(&req);
        let scope = req
            .repository
            .as_ref()
            .map(|r| format!("repository:{r}:pull"));

        let mut retry = 0;
        loop {
            let outcome = self
                .attempt(&req.method, &url, &headers, scope.as_deref())
                .await;
            let seen = match &outcome {
                Ok(resp) => {
                    Attempted::Status(resp.status, retry_after(&resp.headers, SystemTime::now()))
                }
                Err(f) if f.retryable => Attempted::ConnectFailed,
                Err(_) => Attempted::Final,
            };
            let Some((reason, wait)) = retry_plan(&self.cfg, retry, seen, jitter_unit()) else {
                match &outcome {
                    Ok(r)
                        if r.status.is_server_error()
                            || r.status == StatusCode::TOO_MANY_REQUESTS =>
                    {
                        self.metrics
                            .failed(&self.cfg.name, format!("{} {}", r.status, url.path()))
                    }
                    Err(f) => self.metrics.failed(&self.cfg.name, f.error.to_string()),
                    Ok(_) => {}
                }
                return outcome.map_err(|f| {
                    let mut e = f.error;
                    if retry > 0 {
                        let d = e.detail.take().unwrap_or_default();
                        e.detail = Some(format!("{d} (after {} attempts)", retry + 1));
                    }
                    e
                });
            };
            match &outcome {
                Ok(resp) => debug!(upstream = %self.name, status = resp.status.as_u16(),
                    retry = retry + 1, ?wait, "retrying upstream request"),
                Err(f) => debug!(upstream = %self.name, error = %f.error,
                    retry = retry + 1, ?wait, "retrying upstream request"),
            }
            // Dropping an unread response closes its connection; the retry gets a fresh one.
            drop(outcome);
            self.metrics
                .retries
                .with_label_values(&[&self.cfg.name, reason.as_str()])
                .inc();
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }

    /// How long to wait before try number `retry` (0 = the first one after a failure) of something
    /// the caller retries itself, such as resuming a broken blob body: the same jittered backoff
    /// as [`send`](Self::send) uses between its attempts.
    pub fn backoff(&self, retry: u32) -> Duration {
        backoff(
            self.cfg.retry_backoff,
            self.cfg.retry_backoff_max,
            retry,
            jitter_unit(),
        )
    }

    /// One try: auth, the request and its redirects, and one answer to a 401.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        scope: Option<&str>,
    ) -> Result<UpstreamResponse, Failure> {
        let mut attached = self.proactive_auth(scope).await?;
        let mut retried = false;
        loop {
            let auth = self.authorization(&attached);
            let (resp, final_url) = self.follow(method, url.clone(), headers, auth).await?;
            // A 401 from a CDN we were redirected to is not ours to answer.
            if resp.status() != StatusCode::UNAUTHORIZED
                || retried
                || !same_origin(&final_url, &self.cfg.url)
            {
                return Ok(self.wrap(resp));
            }
            let challenges = challenges(resp.headers());
            match self.answer(&challenges, &attached, scope).await? {
                Some(next) => {
                    attached = next;
                    retried = true;
                }
                None => return Ok(self.wrap(resp)),
            }
        }
    }

    /// `cfg.url` joined with a `/v2/` path; anything else is a bug in the caller.
    fn url_for(&self, path_and_query: &str) -> Result<Url, Error> {
        let bad = || {
            Error::internal(format!(
                "not an upstream registry path: {:?}",
                path_and_query.chars().take(100).collect::<String>()
            ))
        };
        if !path_and_query.starts_with("/v2/") || path_and_query.contains('#') {
            return Err(bad());
        }
        let pq: PathAndQuery = path_and_query.parse().map_err(|_| bad())?;
        let mut url = self.cfg.url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{}", pq.path()));
        url.set_query(pq.query());
        // `..` segments are resolved by `set_path`; the result must still be under /v2/.
        if !url.path().starts_with(&format!("{base}/v2/")) {
            return Err(bad());
        }
        Ok(url)
    }

    fn request_headers(&self, req: &UpstreamRequest) -> HeaderMap {
        let mut h = req.headers.clone();
        for name in [
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
            header::HOST,
            header::CONNECTION,
            header::TE,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ] {
            h.remove(name);
        }
        h.insert(header::USER_AGENT, self.user_agent.clone());
        let path = req.path_and_query.split('?').next().unwrap_or("");
        if path.contains("/blobs/") {
            // Blob bytes must arrive as stored, or their digest does not match.
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        h
    }

    /// Auth known from earlier challenges: a cached token, a new token for a new scope, or Basic.
    async fn proactive_auth(&self, scope: Option<&str>) -> Result<Attached, Error> {
        let scheme = self.auth.lock().expect("auth lock").scheme.clone();
        match scheme {
            None => Ok(Attached::None),
            Some(Scheme::Basic) => Ok(if self.cfg.credentials().is_some() {
                Attached::Basic
            } else {
                Attached::None
            }),
            Some(Scheme::Bearer { realm, service }) => {
                let key = TokenKey {
                    realm,
                    service,
                    scope: scope.map(str::to_owned),
                };
                let cached = self.auth.lock().expect("auth lock").tokens.get(&key);
                if let Some(token) = cached {
                    return Ok(Attached::Bearer {
                        key,
                        token,
                        cached: true,
                    });
                }
                Ok(match self.token(&key, None).await? {
                    Some(token) => Attached::Bearer {
                        key,
                        token,
                        cached: false,
                    },
                    None => Attached::None,
                })
            }
        }
    }

    /// The auth to retry a 401 with, or `None` to hand the 401 to the caller.
    async fn answer(
        &self,
        challenges: &[Challenge],
        prev: &Attached,
        scope: Option<&str>,
    ) -> Result<Option<Attached>, Error> {
        let bearer = challenges
            .iter()
            .find(|c| c.is("bearer") && c.param("realm").is_some());
        if let Some(ch) = bearer {
            let Some(realm) = self.usable_realm(ch.param("realm").unwrap_or_default()) else {
                return Ok(None);
            };
            let service = ch.param("service").map(str::to_owned);
            let key = TokenKey {
                realm: realm.clone(),
                service: service.clone(),
                scope: scope.or(ch.param("scope")).map(str::to_owned),
            };
            let mut stale = None;
            if let Attached::Bearer {
                key: k,
                token,
                cached,
            } = prev
            {
                self.auth
                    .lock()
                    .expect("auth lock")
                    .tokens
                    .remove_if(k, token);
                if !cached && *k == key {
                    debug!(upstream = %self.name, "a token just issued was refused");
                    return Ok(None);
                }
                stale = Some(token);
            }
            self.auth.lock().expect("auth lock").scheme = Some(Scheme::Bearer { realm, service });
            return Ok(self
                .token(&key, stale)
                .await?
                .map(|token| Attached::Bearer {
                    key,
                    token,
                    cached: false,
                }));
        }
        if challenges.iter().any(|c| c.is("basic")) {
            if self.cfg.credentials().is_none() || matches!(prev, Attached::Basic) {
                return Ok(None);
            }
            self.auth.lock().expect("auth lock").scheme = Some(Scheme::Basic);
            return Ok(Some(Attached::Basic));
        }
        debug!(upstream = %self.name, ?challenges, "401 without a challenge berth can answer");
        Ok(None)
    }

    /// A realm berth will ask for tokens: http(s), and not plain http behind an https upstream.
    fn usable_realm(&self, realm: &str) -> Option<Url> {
        let url = match Url::parse(realm) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            _ => {
                debug!(upstream = %self.name, "unusable token realm in challenge");
                return None;
            }
        };
        if self.cfg.url.scheme() == "https" && url.scheme() == "http" {
            debug!(upstream = %self.name, realm = %redact(&url), "refusing a plain-http token realm");
            return None;
        }
        if let Err(why) = self.guard.check_url(&url) {
            tracing::warn!(upstream = %self.name, realm = %redact(&url), %why, "refusing a token realm");
            return None;
        }
        Some(url)
    }

    fn authorization(&self, attached: &Attached) -> Option<HeaderValue> {
        let value = match attached {
            Attached::None => return None,
            Attached::Basic => basic_auth(self.cfg.credentials()?)?,
            Attached::Bearer { token, .. } => {
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?
            }
        };
        Some(value)
    }

    /// A token for `key`: from the cache if someone fetched it meanwhile (and it is not `stale`),
    /// else from the realm. `Ok(None)` when the realm refuses.
    async fn token(&self, key: &TokenKey, stale: Option<&Secret>) -> Result<Option<Secret>, Error> {
        let _one_at_a_time = self.token_fetch.lock().await;
        let cached = self.auth.lock().expect("auth lock").tokens.get(key);
        if let Some(t) = cached
            && Some(&t) != stale
        {
            return Ok(Some(t));
        }
        let outcome = self.fetch_token(key).await;
        let label = match &outcome {
            Ok(Some(_)) => "issued",
            Ok(None) => "denied",
            Err(_) => "failed",
        };
        self.metrics
            .token_requests
            .with_label_values(&[&self.cfg.name, label])
            .inc();
        let Some((token, keep)) = outcome? else {
            return Ok(None);
        };
        self.auth
            .lock()
            .expect("auth lock")
            .tokens
            .insert(key.clone(), token.clone(), keep);
        Ok(Some(token))
    }

    async fn fetch_token(&self, key: &TokenKey) -> Result<Option<(Secret, Duration)>, Error> {
        let mut url = key.realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &key.service {
                q.append_pair("service", s);
            }
            if let Some(s) = &key.scope {
                q.append_pair("scope", s);
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let auth = match self.cfg.credentials() {
            Some(creds) if credentials_allowed(&self.cfg.url, &self.cfg.auth_realms, &url) => {
                basic_auth(creds)
            }
            Some(_) => {
                debug!(upstream = %self.name, realm = %redact(&url),
                    "realm is not the upstream's origin nor in auth_realms: asking for an anonymous token");
                None
            }
            None => None,
        };
        let resp = self
            .exchange(&Method::GET, &url, &headers, auth, false)
            .await
            .map_err(|f| f.error)?;
        let status = resp.status();
        debug!(upstream = %self.name, realm = %redact(&url), status = status.as_u16(), "token response");
        let resp = self.wrap(resp);
        match status {
            s if s.is_success() => {
                let body = resp.bytes(SMALL_BODY_LIMIT).await?;
                // Only the position: serde's message can quote the value, and that may be the token.
                let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    Error::upstream_bad(
                        &self.name,
                        format!(
                            "malformed token response (line {}, column {})",
                            e.line(),
                            e.column()
                        ),
                    )
                })?;
                parsed
                    .into_token()
                    .map(Some)
                    .ok_or_else(|| Error::upstream_bad(&self.name, "token response holds no token"))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
            _ => match resp.error_for_status(NotFoundKind::Repository).await {
                Err(e) if e.is_not_found() => Err(Error::upstream_bad(
                    &self.name,
                    format!("token realm {} answered 404", redact(&url)),
                )),
                Err(e) => Err(e),
                Ok(_) => Err(Error::upstream_bad(
                    &self.name,
                    format!("token realm answered {status}"),
                )),
            },
        }
    }

    /// Sends and follows redirects; returns the final response and its URL.
    async fn follow(
        &self,
        method: &Method,
        mut url: Url,
        headers: &HeaderMap,
        mut auth: Option<HeaderValue>,
    ) -> Result<(hyper::Response<Incoming>, Url), Failure> {
        let max = self.cfg.max_redirects;
        let mut hops = 0u8;
        loop {
            let resp = self
                .exchange(method, &url, headers, auth.clone(), true)
                .await?;
            let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = resp.headers().get(header::LOCATION);
            let (true, Some(location)) = (redirect, location) else {
                return Ok((resp, url));
            };
            if hops >= max {
                return Err(Error::upstream_bad(
                    &self.name,
                    format!("more than {max} redirects, last to {}", redact(&url)),
                )
                .into());
            }
            hops += 1;
            let mut next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    Error::upstream_bad(&self.name, "redirect with an unparsable Location")
                })?;
            next.set_fragment(None);
            match (url.scheme(), next.scheme()) {
                ("https", "https") | ("http", "http" | "https") => {}
                ("https", "http") => {
                    return Err(Error::upstream_bad(
                        &self.name,
                        format!("refused redirect from https to {}", redact(&next)),
                    )
                    .into());
                }
                _ => {
                    return Err(Error::upstream_bad(
                        &self.name,
                        format!("refused redirect to scheme {:?}", next.scheme()),
                    )
                    .into());
                }
            }
            if let Err(why) = self.guard.check_url(&next) {
                return Err(Error::upstream_bad(
                    &self.name,
                    format!("refused redirect to {}: {why}", redact(&next)),
                )
                .into());
            }
            if auth.is_some() && !same_origin(&url, &next) {
                debug!(upstream = %self.name, to = %redact(&next), "redirect leaves the origin: dropping Authorization");
                auth = None;
            }
            debug!(upstream = %self.name, from = %redact(&url), to = %redact(&next), "following redirect");
            url = next;
        }
    }

    /// One request and its response headers, within `response_timeout`.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<HeaderValue>,
        count: bool,
    ) -> Result<hyper::Response<Incoming>, Failure> {
        let uri: http::Uri = url
            .as_str()
            .parse()
            .map_err(|e| Error::upstream_bad(&self.name, format!("{}: {e}", redact(url))))?;
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers.clone();
        if let Some(mut a) = auth {
            a.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, a);
        }
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.cfg.response_timeout, self.client.request(req)).await;
        let status_label;
        let result = match outcome {
            Err(_) => {
                status_label = "timeout".to_owned();
                Err(Failure::from(Error::upstream_unavailable(
                    &self.name,
                    format!(
                        "no response from {} within {:?}",
                        redact(url),
                        self.cfg.response_timeout
                    ),
                )))
            }
            Ok(Err(e)) => {
                status_label = "error".to_owned();
                Err(Failure {
                    retryable: retryable_transport(&e),
                    error: Error::upstream_unavailable(
                        &self.name,
                        format!("{}: {}", redact(url), crate::error::chain(&e)),
                    ),
                })
            }
            Ok(Ok(resp)) => {
                self.metrics
                    .duration
                    .with_label_values(&[&self.cfg.name])
                    .observe(started.elapsed().as_secs_f64());
                status_label = resp.status().as_str().to_owned();
                // A CDN's or token realm's headers say nothing about this upstream's limit.
                if same_origin(url, &self.cfg.url) {
                    self.record_rate_limit(resp.headers());
                }
                Ok(resp)
            }
        };
        if count {
            self.metrics
                .requests
                .with_label_values(&[&self.cfg.name, method.as_str(), &status_label])
                .inc();
        }
        match &result {
            Ok(resp) => debug!(upstream = %self.name, %method, url = %redact(url),
                status = resp.status().as_u16(), version = ?resp.version(), "upstream response"),
            Err(f) => {
                debug!(upstream = %self.name, %method, url = %redact(url), error = %f.error, "upstream request failed")
            }
        }
        result
    }

    /// Docker Hub's `ratelimit-limit` / `ratelimit-remaining` (`100;w=21600`) into the gauges.
    fn record_rate_limit(&self, headers: &HeaderMap) {
        for (name, gauge) in [
            ("ratelimit-limit", &self.metrics.ratelimit_limit),
            ("ratelimit-remaining", &self.metrics.ratelimit_remaining),
        ] {
            if let Some(n) = headers.get(name).and_then(rate_limit_value) {
                gauge.with_label_values(&[&self.cfg.name]).set(n);
            }
        }
    }

    fn wrap(&self, resp: hyper::Response<Incoming>) -> UpstreamResponse {
        let (parts, body) = resp.into_parts();
        UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: UpstreamBody {
                inner: body,
                stall_timeout: self.cfg.stall_timeout,
                upstream: self.name.clone(),
            },
        }
    }
}

impl UpstreamResponse {
    /// Maps a non-2xx final status (304 passes too: it answers a conditional request) to the error
    /// the client should see: 404 -> `MANIFEST_UNKNOWN`/`BLOB_UNKNOWN`/`NAME_UNKNOWN` (the upstream's
    /// own code when its body says one of them, else by `kind`), 401/403 -> `DENIED` 403, 429 ->
    /// `TOOMANYREQUESTS` with its Retry-After, 5xx -> `UNAVAILABLE` 503, anything else -> 502.
    pub async fn error_for_status(self, kind: NotFoundKind) -> Result<UpstreamResponse, Error> {
        let status = self.status;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(self);
        }
        let name = self.body.upstream.clone();
        let retry_after = retry_after(&self.headers, SystemTime::now());
        let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, self.body.prefix(SMALL_BODY_LIMIT))
            .await
            .unwrap_or_default();
        let (code, message) = oci_error(&body).unzip();
        let detail = match message.filter(|m| !m.is_empty()) {
            Some(m) => format!("upstream {name} answered {status}: {m}"),
            None => format!("upstream {name} answered {status}"),
        };
        Err(match status.as_u16() {
            404 => {
                let missing = code
                    .and_then(|c| match c.as_str() {
                        "MANIFEST_UNKNOWN" => Some(Missing::Manifest),
                        "BLOB_UNKNOWN" => Some(Missing::Blob),
                        "NAME_UNKNOWN" => Some(Missing::Repository),
                        _ => None,
                    })
                    .unwrap_or(match kind {
                        NotFoundKind::Manifest => Missing::Manifest,
                        NotFoundKind::Blob => Missing::Blob,
                        NotFoundKind::Repository => Missing::Repository,
                    });
                match missing {
                    Missing::Manifest => Error::manifest_unknown(detail),
                    Missing::Blob => Error::blob_unknown(detail),
                    _ => Error::name_unknown(detail),
                }
            }
            401 | 403 => Error::upstream_denied(&name, detail),
            429 => Error::too_many_requests(&name, retry_after).with_detail(detail),
            500..=599 => Error::upstream_unavailable_for(&name, retry_after).with_detail(detail),
            _ => Error::upstream_bad(&name, detail),
        })
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn bytes(self, limit: usize) -> Result<Bytes, Error> {
        let name = self.body.upstream.clone();
        let too_big = |n: String| {
            Error::upstream_bad(
                &name,
                format!("body of {n} bytes is over the limit of {limit}"),
            )
        };
        let declared = self.body.exact_len();
        if let Some(len) = declared
            && len > limit as u64
        {
            return Err(too_big(len.to_string()));
        }
        let mut body = self.body;
        let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(chunk) = body.next_chunk().await? {
            if buf.len() + chunk.len() > limit {
                return Err(too_big(format!("more than {limit}")));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

impl UpstreamBody {
    /// The next chunk, `None` at the end. Fails if nothing arrives for the stall timeout or the
    /// connection breaks mid-body (including a body shorter than its `Content-Length`).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let frame = match tokio::time::timeout(self.stall_timeout, self.inner.frame()).await {
                Err(_) => {
                    return Err(Error::upstream_unavailable(
                        &self.upstream,
                        format!("body stalled: no data for {:?}", self.stall_timeout),
                    ));
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(Error::upstream_unavailable(
                        &self.upstream,
                        format!("body broke off: {}", crate::error::chain(&e)),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers and empty frames carry nothing for us.
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Ok(Some(data));
            }
        }
    }

    /// The body's length when the connection knows it: the `Content-Length` of a GET, 0 for a HEAD
    /// or a 204.
    pub fn exact_len(&self) -> Option<u64> {
        hyper::body::Body::size_hint(&self.inner).exact()
    }

    /// Up to `limit` bytes, for error context; failures just end it.
    async fn prefix(mut self, limit: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < limit {
            match self.next_chunk().await {
                Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(limit - out.len())]),
                _ => break,
            }
        }
        out
    }
}

/// The error codes of the OCI distribution spec (and `TOOMANYREQUESTS`, `UNAVAILABLE`, which
/// Docker Hub and the Distribution registry use): an error body with another code is not read.
const OCI_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_INVALID",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "TAG_INVALID",
    "PAGINATION_NUMBER_INVALID",
    "UNAVAILABLE",
];

/// The first entry of an OCI error body: its code (when it is one of [`OCI_CODES`]) and message.
fn oci_error(body: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: Option<String>,
    }
    let first = serde_json::from_slice::<Body>(body)
        .ok()?
        .errors
        .into_iter()
        .next()?;
    let code = OCI_CODES
        .contains(&first.code.as_str())
        .then_some(first.code)?;
    let message: String = first
        .message
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Some((code, message))
}

/// `Retry-After` as seconds or an HTTP date (a date in the past means now).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A failed exchange, and whether sending it again is safe and may help.
#[derive(Debug)]
struct Failure {
    error: Error,
    /// The connection failed before any response: refused, reset, closed, connect timeout.
    retryable: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            error,
            retryable: false,
        }
    }
}

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempted {
    /// A final response with its status and parsed `Retry-After`.
    Status(StatusCode, Option<Duration>),
    /// The connection failed before any response.
    ConnectFailed,
    /// Any other error (response timeout, refused redirect, token trouble): not retried.
    Final,
}

/// Why a request is sent again: the `reason` label of `berth_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryReason {
    Connect,
    Status5xx,
    RetryAfter,
}

impl RetryReason {
    fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Status5xx => "status_5xx",
            RetryReason::RetryAfter => "retry_after",
        }
    }
}

/// Whether to send again after retry number `retry` (0 = after the first attempt), why, and after
/// how long; `None` hands the outcome to the caller. `unit` in [0, 1) draws the jitter.
fn retry_plan(
    cfg: &UpstreamConfig,
    retry: u32,
    seen: Attempted,
    unit: f64,
) -> Option<(RetryReason, Duration)> {
    if retry >= cfg.retries {
        return None;
    }
    let backoff = || backoff(cfg.retry_backoff, cfg.retry_backoff_max, retry, unit);
    match seen {
        Attempted::ConnectFailed => Some((RetryReason::Connect, backoff())),
        Attempted::Final => None,
        // The upstream said when: wait that long if it is short, else let the client hear it.
        Attempted::Status(
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE,
            Some(after),
        ) => (after <= cfg.retry_backoff_max).then_some((RetryReason::RetryAfter, after)),
        Attempted::Status(s, _) if matches!(s.as_u16(), 500 | 502 | 503 | 504) => {
            Some((RetryReason::Status5xx, backoff()))
        }
        Attempted::Status(..) => None,
    }
}

/// "Full jitter": a uniform draw (`unit` in [0, 1)) below `base * 2^retry`, capped at `max`, so
/// that mirrors failing together do not come back together.
fn backoff(base: Duration, max: Duration, retry: u32, unit: f64) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(retry)).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A uniform draw from [0, 1). std's `RandomState` is keyed afresh from OS randomness (per thread,
/// then incremented) on every `new()`, which is random enough to spread retries without a crate.
fn jitter_unit() -> f64 {
    let bits = RandomState::new().hash_one(0u8) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Whether a transport error happened before the upstream could answer: the connection was not
/// made (refused, connect timeout) or broke before a response (reset, closed). A certificate the
/// upstream will present again is not worth a retry.
fn retryable_transport(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut connect = e.is_connect();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_tls_error(io) {
                return false;
            }
            connect |= matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        if err.is::<rustls::Error>() {
            return false;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            connect |= h.is_incomplete_message() || h.is_canceled();
        }
        source = err.source();
    }
    connect
}

/// A TLS failure (certificate, handshake), which tokio-rustls wraps in an `io::Error`, sometimes
/// twice; `io::Error::source` skips the wrapped error itself, so this looks inside by hand.
fn is_tls_error(io: &std::io::Error) -> bool {
    let mut inner = io.get_ref();
    while let Some(e) = inner {
        if e.is::<rustls::Error>() {
            return true;
        }
        inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
    }
    false
}

/// The number in a `ratelimit-*` header: `100;w=21600` -> 100.
fn rate_limit_value(v: &HeaderValue) -> Option<i64> {
    let s = v.to_str().ok()?;
    s.split([';', ',']).next()?.trim().parse().ok()
}

fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in headers.get_all(header::WWW_AUTHENTICATE) {
        match v.to_str().map(auth::parse_challenges) {
            Ok(Ok(c)) => out.extend(c),
            Ok(Err(e)) => debug!(error = %e, "ignoring a WWW-Authenticate header"),
            Err(_) => debug!("ignoring a non-ASCII WWW-Authenticate header"),
        }
    }
    out
}

fn basic_auth((user, password): (&str, &Secret)) -> Option<HeaderValue> {
    let raw = format!("{user}:{}", password.expose());
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A URL for logs and error details: no query (presigned object-store URLs carry signatures there)
/// and no user info.
fn redact(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(url.path());
    s
}

/// Metric families for upstream traffic, registered in a registry that is handed in.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// Each request sent, redirects included: `status` is the code, or `error` / `timeout`.
    requests: IntCounterVec,
    /// Time to response headers.
    duration: HistogramVec,
    /// Token requests by `outcome`: `issued`, `denied`, `failed`.
    token_requests: IntCounterVec,
    /// Requests sent again, by `reason`: `connect`, `status_5xx`, `retry_after`.
    retries: IntCounterVec,
    /// Docker Hub's pull allowance per window, from `ratelimit-limit`.
    ratelimit_limit: IntGaugeVec,
    /// What is left of it, from `ratelimit-remaining`.
    ratelimit_remaining: IntGaugeVec,
    /// Each upstream's last failure, by name, for `/healthz?verbose`. Kept here rather than in the
    /// [`Upstream`] so that it survives a reload that rebuilds the upstream's client.
    last_errors: LastErrors,
}

/// The last failure of each upstream, by name: when, and what.
pub type LastErrors = Arc<Mutex<std::collections::HashMap<String, (SystemTime, String)>>>;

impl UpstreamMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<UpstreamMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "berth_upstream_requests_total",
                "Requests sent to upstream registries (each redirect hop counts).",
            ),
            &["upstream", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_upstream_request_duration_seconds",
                "Time from sending an upstream request to its response headers.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["upstream"],
        )?;
        let token_requests = IntCounterVec::new(
            Opts::new(
                "berth_upstream_token_requests_total",
                "Bearer token requests to upstream token realms.",
            ),
            &["upstream", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "berth_upstream_retries_total",
                "Upstream requests sent again after a connection failure, a 5xx or a short Retry-After.",
            ),
            &["upstream", "reason"],
        )?;
        let ratelimit_limit = IntGaugeVec::new(
            Opts::new(
                "berth_upstream_ratelimit_limit",
                "Pulls allowed per window, from the upstream's last ratelimit-limit header.",
            ),
            &["upstream"],
        )?;
        let ratelimit_remaining = IntGaugeVec::new(
            Opts::new(
                "berth_upstream_ratelimit_remaining",
                "Pulls left in the window, from the upstream's last ratelimit-remaining header.",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(token_requests.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(ratelimit_limit.clone()))?;
        registry.register(Box::new(ratelimit_remaining.clone()))?;
        Ok(UpstreamMetrics {
            requests,
            duration,
            token_requests,
            retries,
            ratelimit_limit,
            ratelimit_remaining,
            last_errors: LastErrors::default(),
        })
    }

    /// Each upstream's last failure (a transport error, a timeout, a 5xx or 429 after retries).
    pub fn last_errors(&self) -> &LastErrors {
        &self.last_errors
    }

    fn failed(&self, upstream: &str, what: String) {
        self.last_errors
            .lock()
            .unwrap()
            .insert(upstream.to_owned(), (SystemTime::now(), what));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        let text = format!("[[upstream]]\nname = \"u.io\"\nurl = \"{url}\"\n");
        let cfg = crate::config::Config::parse(&text, "t").unwrap();
        let metrics = UpstreamMetrics::register(&Registry::new()).unwrap();
        Upstream::new(&cfg.upstreams[0], metrics).unwrap()
    }

    #[test]
    fn urls_come_from_config_only() {
        let u = upstream("https://u.io");
        assert_eq!(
            u.url_for("/v2/a/tags/list?n=10").unwrap().as_str(),
            "https://u.io/v2/a/tags/list?n=10"
        );
        let u = upstream("https://u.io/mirror/");
        assert_eq!(
            u.url_for("/v2/a/manifests/x").unwrap().as_str(),
            "https://u.io/mirror/v2/a/manifests/x"
        );
        for bad in [
            "/v3/x",
            "v2/x",
            "//evil.io/v2/x",
            "/v2/../x",
            "/v2/%2e%2e/x",
            "/v2/x#frag",
            "http://evil.io/v2/x",
            "/v2/x y",
        ] {
            assert!(u.url_for(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blob_requests_ask_for_identity() {
        let u = upstream("https://u.io");
        let mut req = UpstreamRequest::new(Method::GET, "/v2/a/blobs/sha256:00", None);
        req.headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        req.headers
            .insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        let h = u.request_headers(&req);
        assert_eq!(h[header::ACCEPT_ENCODING], "identity");
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert_eq!(h[header::RANGE], "bytes=0-9");
        assert!(
            h[header::USER_AGENT]
                .to_str()
                .unwrap()
                .starts_with("berth/")
        );
        let req = UpstreamRequest::new(Method::GET, "/v2/a/manifests/x?blobs/", None);
        assert!(
            u.request_headers(&req)
                .get(header::ACCEPT_ENCODING)
                .is_none()
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&earlier).unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn oci_error_bodies() {
        let b =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            oci_error(b),
            Some(("MANIFEST_UNKNOWN".into(), "manifest unknown".into()))
        );
        assert_eq!(oci_error(b"not json"), None);
        assert_eq!(oci_error(br#"{"errors":[]}"#), None);
        assert_eq!(oci_error(br#"{"errors":[{"code":"WEIRD"}]}"#), None);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let (base, max) = (Duration::from_millis(200), Duration::from_secs(5));
        for retry in 0..12 {
            let ceiling = (base * 2u32.pow(retry)).min(max);
            assert_eq!(backoff(base, max, retry, 0.0), Duration::ZERO);
            assert!(backoff(base, max, retry, 0.999_999) <= ceiling);
            assert!(backoff(base, max, retry, 0.999_999) >= ceiling.mul_f64(0.99));
            assert_eq!(backoff(base, max, retry, 0.5), ceiling / 2);
        }
        assert_eq!(backoff(base, max, 2, 0.5), Duration::from_millis(400));
        assert_eq!(
            backoff(base, max, 40, 1.0),
            max,
            "no overflow for large retry counts"
        );
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        // Not constant: a thousand draws land in both halves.
        let draws: Vec<f64> = (0..1000).map(|_| jitter_unit()).collect();
        assert!(draws.iter().any(|u| *u < 0.5) && draws.iter().any(|u| *u >= 0.5));
    }

    #[test]
    fn what_is_retried() {
        let cfg = upstream("https://u.io").cfg;
        let plan = |retry, seen| retry_plan(&cfg, retry, seen, 0.5);
        let status = |code: u16, after: Option<u64>| {
            Attempted::Status(
                StatusCode::from_u16(code).unwrap(),
                after.map(Duration::from_secs),
            )
        };
        let backoff_0 = Some(Duration::from_millis(100));
        for code in [500, 502, 503, 504] {
            assert_eq!(
                plan(0, status(code, None)).map(|p| p.0),
                Some(RetryReason::Status5xx),
                "{code}"
            );
        }
        assert_eq!(
            plan(0, status(502, None)).map(|p| p.1),
            backoff_0,
            "backoff, not a Retry-After, for 502"
        );
        for code in [200, 206, 304, 400, 401, 403, 404, 501, 505] {
            assert_eq!(plan(0, status(code, None)), None, "{code}");
        }
        assert_eq!(
            plan(0, Attempted::ConnectFailed),
            Some((RetryReason::Connect, Duration::from_millis(100)))
        );
        assert_eq!(plan(0, Attempted::Final), None);
        // Retry-After: waited out when short, handed back when long; 429 needs one.
        assert_eq!(plan(0, status(429, None)), None);
        assert_eq!(
            plan(1, status(429, Some(5))),
            Some((RetryReason::RetryAfter, Duration::from_secs(5)))
        );
        assert_eq!(plan(0, status(429, Some(6))), None);
        assert_eq!(
            plan(0, status(503, Some(0))),
            Some((RetryReason::RetryAfter, Duration::ZERO))
        );
        assert_eq!(plan(0, status(503, Some(3600))), None);
        // The budget: `retries` (2) more attempts, then the outcome goes to the caller.
        assert!(plan(1, Attempted::ConnectFailed).is_some());
        assert_eq!(plan(2, Attempted::ConnectFailed), None);
        assert_eq!(plan(2, status(503, None)), None);
    }

    #[test]
    fn rate_limit_header_values() {
        let v = |s: &'static str| rate_limit_value(&HeaderValue::from_static(s));
        assert_eq!(v("100;w=21600"), Some(100));
        assert_eq!(v(" 76 ;w=21600"), Some(76));
        assert_eq!(v("0"), Some(0));
        assert_eq!(v("many;w=1"), None);
        assert_eq!(v(""), None);
    }

    #[test]
    fn redaction() {
        let u: Url = "https://user:pw@cdn.example:8443/blob?X-Amz-Signature=abc"
            .parse()
            .unwrap();
        assert_eq!(redact(&u), "https://cdn.example:8443/blob");
    }
}
