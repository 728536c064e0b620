//! Redirects: following an upstream's `Location` (to a CDN or an object store), within
//! `max_redirects`. Each hop is checked before it is sent: never from https down to http, only to
//! http(s), and only to addresses [`guard`](super::guard) allows; `Authorization` is dropped as soon
//! as a hop leaves the upstream's origin. A hop back to the upstream's origin keeps its `?ns=`
//! (an upstream that is another berth, see `UpstreamConfig::namespace`).
//!
//! Rule of dependency: under `upstream`, uses its parent's [`Upstream`] (its guard, its exchange),
//! `retry` (the failure it returns) and `auth` (what "the same origin" is); `error`.

use http::Method;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::body::Incoming;
use tracing::debug;
use url::Url;

use super::auth::same_origin;
use super::retry::Failure;
use super::{Upstream, redact};
use crate::error::Error;

impl Upstream {
    /// Sends and follows redirects; returns the final response and its URL.
    pub(super) async fn follow(
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
            self.keep_namespace(&mut next);
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

    /// A redirect back to the upstream's own origin (another berth, a fleet node's parent)
    /// keeps naming the registry it asked for: without `ns` there, that berth would answer for
    /// its default upstream instead. Elsewhere (a CDN, an object store) the URL is left as given.
    fn keep_namespace(&self, next: &mut Url) {
        let Some(ns) = &self.cfg.namespace else {
            return;
        };
        if same_origin(next, &self.cfg.url) && !next.query_pairs().any(|(k, _)| k == "ns") {
            next.query_pairs_mut().append_pair("ns", ns);
        }
    }
}
