//! The request berth sends: [`UpstreamRequest`] and the builders the mirror and the fills use
//! (`blob_request`, and `header_str` / `content_length` to read an answer's headers), its URL
//! (always `cfg.url` plus a `/v2/` path, and `?ns=` when the upstream is another berth) and headers
//! (the client's minus credentials and hop-by-hop ones), and one exchange on the wire within
//! `response_timeout`, counted, timed and its rate-limit headers recorded. A host the address
//! policy refused once resolved fails the exchange as a bad upstream, not retried (as a refused
//! redirect does).
//!
//! Rule of dependency: under `upstream`, uses its parent's [`Upstream`], `retry` (whether a
//! transport failure is worth another try), `auth` (what "the same origin" is) and `guard` (a
//! resolver's refusal); `error`, `oci`.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request};
use http_body_util::Empty;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::debug;
use url::Url;

use super::auth::same_origin;
use super::guard::refused_by_resolver;
use super::retry::{Failure, retryable_transport};
use super::{Upstream, redact};
use crate::error::Error;
use crate::oci::{Digest, RepoName};

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

/// A blob request to an upstream (`/v2/<name>/blobs/<digest>`), scoped to `name`.
pub(crate) fn blob_request(method: Method, name: &RepoName, digest: &Digest) -> UpstreamRequest {
    UpstreamRequest {
        method,
        path_and_query: format!("/v2/{name}/blobs/{digest}"),
        headers: HeaderMap::new(),
        repository: Some(name.clone()),
    }
}

/// A header's value, if it is there and visible ASCII.
pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The `Content-Length` a response declares.
pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
    header_str(h, "content-length").and_then(|v| v.trim().parse().ok())
}

impl Upstream {
    /// `cfg.url` joined with a `/v2/` path; anything else is a bug in the caller.
    pub(super) fn url_for(&self, path_and_query: &str) -> Result<Url, Error> {
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
        // Another berth serving several registries: name the one meant, after the request's own
        // query (`n`/`last`, `artifactType`), on every request.
        if let Some(ns) = &self.cfg.namespace {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        // `..` segments are resolved by `set_path`; the result must still be under /v2/.
        if !url.path().starts_with(&format!("{base}/v2/")) {
            return Err(bad());
        }
        Ok(url)
    }

    pub(super) fn request_headers(&self, req: &UpstreamRequest) -> HeaderMap {
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

    /// One request and its response headers, within `response_timeout`.
    pub(super) async fn exchange(
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
            // The address policy, not the network: the same answer as a refused redirect.
            Ok(Err(e)) if refused_by_resolver(&e) => {
                status_label = "error".to_owned();
                Err(Failure::from(Error::upstream_bad(
                    &self.name,
                    format!("{}: {}", redact(url), crate::error::chain(&e)),
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
                    self.metrics
                        .record_rate_limit(&self.cfg.name, resp.headers());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::tests::upstream;

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
        let mut ns = upstream("http://parent:5000");
        ns.cfg.namespace = Some("docker.io".into());
        assert_eq!(
            ns.url_for("/v2/library/a/manifests/x").unwrap().as_str(),
            "http://parent:5000/v2/library/a/manifests/x?ns=docker.io"
        );
        assert_eq!(
            ns.url_for("/v2/a/tags/list?n=10&last=b").unwrap().as_str(),
            "http://parent:5000/v2/a/tags/list?n=10&last=b&ns=docker.io"
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
}
