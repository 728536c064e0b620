//! The response berth gets: the upstream's final [`UpstreamResponse`] and its [`UpstreamBody`], read
//! chunk by chunk with a stall timeout, or whole up to a size limit.
//!
//! Rule of dependency: under `upstream`, uses its parent's [`Upstream`] (to wrap a response) and no
//! sibling; `error`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::HeaderMap;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::Upstream;
use crate::error::Error;

/// How much of an error or token body is read.
pub(super) const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// The upstream's final response (after auth and redirects), whatever its status.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

/// A response body, read chunk by chunk with a stall timeout.
pub struct UpstreamBody {
    inner: Incoming,
    stall_timeout: Duration,
    pub(super) upstream: Arc<str>,
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub(super) fn wrap(&self, resp: hyper::Response<Incoming>) -> UpstreamResponse {
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
    pub(super) async fn prefix(mut self, limit: usize) -> Vec<u8> {
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
