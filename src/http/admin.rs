//! The admin API: `/admin/...` on the metrics listener, JSON in and out, behind a bearer token.
//!
//! - `GET /admin/cache[?repo=R][&upstream=U]`: [`Listing`](crate::admin::Listing)
//! - `DELETE /admin/cache/<ref>[?upstream=U]`: [`Removal`](crate::admin::Removal) (404 when nothing matches)
//! - `GET /admin/stats`: [`Stats`](crate::admin::Stats)
//! - `POST /admin/warm` with a JSON body ([`WarmRequest`](crate::admin::WarmRequest)):
//!   [`Warmed`](crate::admin::Warmed); one at a time, a second gets 429 (`http::warm`)
//!
//! Off unless `[admin] enabled = true`; then every `/admin` request needs
//! `Authorization: Bearer <token>`, compared in constant time, or gets 401 with the OCI error body
//! and `WWW-Authenticate` before anything else is looked at. `/metrics` and `/healthz` stay open.
//! It works on the running berth's own [`Manifests`](crate::manifests::Manifests) and
//! [`Store`](crate::store::Store), so what it removes is gone from memory as well as from disk,
//! and on its bucket tier (`[storage.s3]`), if any.
//!
//! The HTTP face of the admin operations (`admin`), as the rest of `http` is the registry's face
//! of the mirror. A warm's body is read here (at most `admin::MAX_BODY` bytes) and checked by
//! `admin` before `http::warm` runs it.
//!
//! Rule of dependency: uses `admin` (the operations and their answers), `mirror` (to reach the
//! cache), `http::warm` (to run a warm, over the parent's [`App`]), this directory's error
//! response, `config` (the token) and `error`. `http::metrics` (the metrics listener's router)
//! and `assemble` use it.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use sha2::{Digest as _, Sha256};

use super::warm::Warms;
use super::{App, Body, error_response};
use crate::admin::{Cache, Op, WarmRequest};
use crate::config::Secret;
use crate::error::{Error, Origin};
use crate::mirror::Mirror;

/// Where the admin API lives on the metrics listener.
pub const PREFIX: &str = "/admin";

/// Whether a metrics-listener path belongs to the admin API.
pub fn is_admin_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/admin/")
}

/// What an admin request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A cache operation, the same as `berth cache` does.
    Cache(Op),
    /// `POST /admin/warm`: the body says what.
    Warm,
}

/// Parses method, path and query into a [`Route`]: 404 for an unknown path, 405 for a
/// known path with another method, 400 for a malformed reference or query.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, Error> {
    let mut repo = None;
    let mut upstream = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "repo" => repo = Some(v.into_owned()),
            "upstream" => upstream = Some(v.into_owned()),
            other => {
                return Err(Error::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let allow = |ok: &Method| -> Result<(), Error> {
        match method == ok {
            true => Ok(()),
            false => Err(Error::unsupported(format!("{path} answers {ok} only"))),
        }
    };
    match path.strip_prefix(PREFIX) {
        Some("/cache") => {
            allow(&Method::GET)?;
            Ok(Route::Cache(Op::List { repo, upstream }))
        }
        Some("/stats") => {
            allow(&Method::GET)?;
            Ok(Route::Cache(Op::Stats))
        }
        Some(rest) if rest.starts_with("/cache/") && rest.len() > "/cache/".len() => {
            allow(&Method::DELETE)?;
            Ok(Route::Cache(Op::Remove {
                reference: percent_decode(&rest["/cache/".len()..])?,
                upstream,
            }))
        }
        Some("/warm") => {
            allow(&Method::POST)?;
            match (repo, upstream) {
                (None, None) => Ok(Route::Warm),
                _ => Err(Error::bad_request(
                    "/admin/warm takes no query: the body names the images",
                )),
            }
        }
        _ => Err(Error::not_found_route(format!(
            "{path}: the admin API has /admin/cache, /admin/cache/<ref>, /admin/stats, /admin/warm"
        ))),
    }
}

/// `%XX` escapes in a path segment (a client may escape the `:` of a tag or digest).
fn percent_decode(s: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::bad_request("bad percent escape in the path"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::bad_request("the path is not UTF-8"))
}

/// The admin API of one running berth.
pub struct Api {
    mirror: Arc<Mirror>,
    root: PathBuf,
    token: Secret,
    /// `[storage.s3] max_size`, for `stats`.
    bucket_max: Option<u64>,
    /// What runs `POST /admin/warm`; `None`: not offered (404).
    warms: Option<Warms>,
}

impl Api {
    /// `root` is the storage directory of `mirror`'s store.
    pub fn new(mirror: Arc<Mirror>, root: PathBuf, token: Secret) -> Api {
        Api {
            mirror,
            root,
            token,
            bucket_max: None,
            warms: None,
        }
    }

    /// `POST /admin/warm`, warming through `app` (this berth's registry service, in process).
    pub fn with_warm(mut self, app: Arc<App>) -> Api {
        self.warms = Some(Warms::new(app));
        self
    }

    /// The bucket's `max_size` (`[storage.s3]`), shown by `stats`.
    pub fn with_bucket_max(mut self, max: Option<u64>) -> Api {
        self.bucket_max = max;
        self
    }

    /// Answers one `/admin` request. Never fails: errors become OCI error responses.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !self.authorized(req.headers()) {
            let e = Error::login_required(
                "the admin API needs Authorization: Bearer <token> ([admin] in the config)",
            );
            let mut r = error_response(&e, req.method() == Method::HEAD);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"berth-admin\""),
            );
            return r;
        }
        let (parts, body) = req.into_parts();
        match self.answer(&parts, body).await {
            Ok(json) => {
                let mut r = Response::new(
                    Full::new(Bytes::from(json))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => {
                if e.origin == Origin::Internal {
                    tracing::error!(error = %e, path = parts.uri.path(), "admin request failed");
                }
                error_response(&e, parts.method == Method::HEAD)
            }
        }
    }

    /// Whether the request carries the token. Both sides are hashed first, so the comparison
    /// takes the same time whatever the token's length or the first differing byte.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return false;
        };
        let (a, b) = (
            Sha256::digest(given.as_bytes()),
            Sha256::digest(self.token.expose().as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }

    async fn answer<B>(&self, req: &http::request::Parts, body: B) -> Result<String, Error>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let op = match parse(&req.method, req.uri.path(), req.uri.query())? {
            Route::Cache(op) => op,
            Route::Warm => {
                let warms = self.warms.as_ref().ok_or_else(|| {
                    Error::not_found_route("this admin API does not warm".to_owned())
                })?;
                let body = Limited::new(body, crate::admin::MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| {
                        Error::bad_request(format!(
                            "the body could not be read (at most {} bytes): {e}",
                            crate::admin::MAX_BODY
                        ))
                    })?
                    .to_bytes();
                let asked = WarmRequest::parse(&body)?;
                return Ok(json(&warms.run(asked).await?));
            }
        };
        let bucket = self.mirror.tier().map(|t| t.bucket().as_ref());
        let cache = Cache::new(self.mirror.store(), self.mirror.manifests(), &self.root)
            .with_bucket(bucket, self.bucket_max);
        match op {
            Op::List { repo, upstream } => {
                let filter = match repo {
                    Some(r) => Some(cache.parse_ref(&r, upstream.as_deref()).await?),
                    None => None,
                };
                Ok(json(&cache.list(filter.as_ref()).await?))
            }
            Op::Remove {
                reference,
                upstream,
            } => {
                let r = cache.parse_ref(&reference, upstream.as_deref()).await?;
                let removal = cache.remove(&r, &reference).await?;
                tracing::info!(
                    reference = %reference,
                    tags = removal.tags.len(),
                    files = removal.removed.len(),
                    bytes = removal.bytes,
                    "admin: removed from the cache"
                );
                Ok(json(&removal))
            }
            Op::Stats => {
                let max = self.mirror.store().index().limits().max_size;
                Ok(json(&cache.stats(max).await?))
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // The answers are plain structs of strings and numbers: serializing them cannot fail.
    serde_json::to_string(v).expect("admin answers serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::Answered;
    use http::StatusCode;

    #[test]
    fn routes() {
        let ok = [
            (
                Method::GET,
                "/admin/cache",
                None,
                Op::List {
                    repo: None,
                    upstream: None,
                },
            ),
            (
                Method::GET,
                "/admin/cache",
                Some("repo=library%2Fapp&upstream=docker.io"),
                Op::List {
                    repo: Some("library/app".into()),
                    upstream: Some("docker.io".into()),
                },
            ),
            (Method::GET, "/admin/stats", None, Op::Stats),
            (
                Method::DELETE,
                "/admin/cache/registry.test/library/app%3A1",
                None,
                Op::Remove {
                    reference: "registry.test/library/app:1".into(),
                    upstream: None,
                },
            ),
        ];
        for (m, p, q, want) in ok {
            assert_eq!(parse(&m, p, q).unwrap(), Route::Cache(want), "{m} {p}");
        }
        assert_eq!(
            parse(&Method::POST, "/admin/warm", None).unwrap(),
            Route::Warm
        );
        let bad = [
            (Method::GET, "/admin", None, StatusCode::NOT_FOUND),
            (Method::GET, "/admin/nope", None, StatusCode::NOT_FOUND),
            (Method::DELETE, "/admin/cache/", None, StatusCode::NOT_FOUND),
            (
                Method::POST,
                "/admin/cache",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::GET,
                "/admin/cache/x",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::DELETE,
                "/admin/stats",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::GET,
                "/admin/cache",
                Some("rep=x"),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::DELETE,
                "/admin/cache/a%zz",
                None,
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                "/admin/warm",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::POST,
                "/admin/warm",
                Some("repo=x"),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (m, p, q, status) in bad {
            assert_eq!(
                parse(&m, p, q).unwrap_err().status(),
                status,
                "{m} {p} {q:?}"
            );
        }
        assert!(is_admin_path("/admin") && is_admin_path("/admin/stats"));
        assert!(!is_admin_path("/administrator") && !is_admin_path("/metrics"));
    }
}
