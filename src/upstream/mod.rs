//! The registry client: one [`Upstream`] per configured `[[upstream]]`, speaking the read side of the
//! OCI distribution API over a pooled HTTPS client.
//!
//! Its one job is to turn "GET this `/v2/...` path" into the upstream's final response: it attaches
//! credentials or bearer tokens, answers auth challenges, follows redirects (to CDNs and object
//! stores), retries what is worth retrying and enforces timeouts. It does not interpret statuses for
//! the caller beyond [`UpstreamResponse::error_for_status`].
//!
//! This file is the facade: [`Upstream`] and its [`send`](Upstream::send), which sends whole tries
//! again as `retry` decides; one try (`attempt`) is auth, the request with its redirects, and one
//! answer to a 401. The rooms beside it, each adding its `impl Upstream` where it needs one:
//! - `request`: the request berth sends ([`UpstreamRequest`], the blob request and header readers
//!   the mirror and the fills build with), its URL and headers, one exchange on the wire;
//! - `response`: the response it gets ([`UpstreamResponse`], [`UpstreamBody`]) and reading its body
//!   with a stall timeout and a size limit;
//! - `status`: an upstream's error answer mapped to the error the client sees
//!   ([`UpstreamResponse::error_for_status`], the OCI error body);
//! - `retry`: what is sent again, why and after how long (backoff, `Retry-After`), and the backoff
//!   callers use to resume a broken body;
//! - `resume`: what an answer to `Range: bytes=<received>-` means for a broken blob body
//!   ([`ContentRange`], the continuation rule the fills follow);
//! - `redirect`: following `Location`, each hop checked by `guard`;
//! - [`auth`]: challenges, the token flow and the token cache, and who may see the credentials;
//! - [`guard`]: where redirects and token realms may lead (no private addresses);
//! - [`connect`]: the pooled HTTPS client and its connect timeout (also used by `cluster`, `warm`
//!   and the admin CLI);
//! - `metrics`: [`UpstreamMetrics`], the families of upstream traffic and each upstream's last error.
//!
//! Where secrets go: the configured credentials only to the upstream's own origin and to the token
//! realms in `auth_realms`; tokens only to the upstream's origin; `Authorization` is dropped as soon
//! as a redirect leaves the origin. The URL is always `cfg.url` plus a `/v2/` path: nothing a client
//! sends can pick the host.
//!
//! Rule of dependency: uses `config`, `error` and `oci`; knows nothing of the mirror or the store.
//! Inside, the rooms use this facade's [`Upstream`] and each other one way only: `response`,
//! `metrics` and `guard` use no sibling; `connect` uses `guard`; `retry` uses `response`; `status`
//! uses `response` and `retry`; `auth` uses `response` and `status`; `request` and `redirect` use
//! `retry` and `auth`; `resume` uses `request`.

pub mod auth;
pub mod connect;
pub mod guard;
mod metrics;
mod redirect;
mod request;
mod response;
mod resume;
mod retry;
mod status;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use url::Url;

use self::auth::{AuthState, challenges, same_origin};
use self::retry::Failure;
use crate::config::UpstreamConfig;
use crate::error::Error;

pub use self::connect::{ConnectTimeout, HttpClient, POOL_IDLE_TIMEOUT, TimeoutConnector};
pub use self::metrics::{LastErrors, UpstreamMetrics};
pub use self::request::UpstreamRequest;
pub(crate) use self::request::{blob_request, content_length, header_str};
pub use self::response::{UpstreamBody, UpstreamResponse};
pub use self::resume::ContentRange;
pub(crate) use self::resume::continuation;
pub use self::retry::retry_after;
pub use self::status::NotFoundKind;

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

        self.with_retries(&req.method, &url, &headers, scope.as_deref())
            .await
    }

    /// How long to wait before try number `retry` (0 = the first one after a failure) of something
    /// the caller retries itself, such as resuming a broken blob body: the same jittered backoff
    /// as [`send`](Self::send) uses between its attempts.
    pub fn backoff(&self, retry: u32) -> Duration {
        retry::backoff(
            self.cfg.retry_backoff,
            self.cfg.retry_backoff_max,
            retry,
            retry::jitter_unit(),
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

#[cfg(test)]
pub(crate) mod tests {
    use prometheus::Registry;

    use super::*;

    /// An upstream at `url` named `u.io`, with the configuration's defaults.
    pub(crate) fn upstream(url: &str) -> Upstream {
        let text = format!("[[upstream]]\nname = \"u.io\"\nurl = \"{url}\"\n");
        let cfg = crate::config::Config::parse(&text, "t").unwrap();
        let metrics = UpstreamMetrics::register(&Registry::new()).unwrap();
        Upstream::new(&cfg.upstreams[0], metrics).unwrap()
    }

    #[test]
    fn redaction() {
        let u: Url = "https://user:pw@cdn.example:8443/blob?X-Amz-Signature=abc"
            .parse()
            .unwrap();
        assert_eq!(redact(&u), "https://cdn.example:8443/blob");
    }
}
