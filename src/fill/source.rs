//! The bodies a fill reads, one kind per source: the bucket's object, the digest owner's answer
//! (`[cluster]`), a fleet node's swarm, or the upstream's; each read with a stall timeout (the
//! swarm's driver keeps its own), a failure told as the source's own. Which source a fill uses is
//! decided by the job ([`super::job`]); whatever the source, the bytes go through the same
//! pending file and digest check there, and a body that breaks off is resumed from the upstream.
//!
//! Rule of dependency: uses `store` (the bucket's body type), `tier` (to report a failing
//! bucket), `upstream`, `error`, its sibling `swarm` (the swarm's body); `job` uses it, and it
//! imports nothing of `job`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::store;
use crate::tier::Tier;
use crate::upstream::UpstreamResponse;

/// Where a fill's bytes come from.
pub(crate) enum Body {
    Upstream(UpstreamResponse),
    /// A bucket object; a break is resumed from the upstream like an upstream body's.
    Bucket {
        body: futures_util::stream::BoxStream<'static, Result<Bytes, store::s3::BucketError>>,
        stall: Duration,
    },
    /// The digest owner's answer (`[cluster]`); a break is resumed from the upstream too.
    Peer {
        body: hyper::body::Incoming,
        stall: Duration,
    },
    /// A fleet node's fill from the swarm ([`super::swarm`]): verified bytes only; a break is
    /// resumed from the upstream (the parent) too.
    Swarm(super::swarm::SwarmBody),
}

impl Body {
    pub(crate) async fn next_chunk(
        &mut self,
        tier: Option<&Arc<Tier>>,
    ) -> Result<Option<Bytes>, Error> {
        use futures_util::StreamExt;
        match self {
            Body::Upstream(resp) => resp.body.next_chunk().await,
            Body::Bucket { body, stall } => {
                let e = match tokio::time::timeout(*stall, body.next()).await {
                    Ok(None) => return Ok(None),
                    Ok(Some(Ok(c))) => return Ok(Some(c)),
                    Ok(Some(Err(e))) => e.to_string(),
                    Err(_) => format!("body stalled: no data for {stall:?}"),
                };
                if let Some(t) = tier {
                    t.failed("reading a blob", &e);
                }
                Err(Error::upstream_unavailable("bucket", e))
            }
            Body::Peer { body, stall } => loop {
                use http_body_util::BodyExt;
                let e = match tokio::time::timeout(*stall, body.frame()).await {
                    Ok(None) => return Ok(None),
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(c) => return Ok(Some(c)),
                        // Trailers carry nothing a fill keeps.
                        Err(_) => continue,
                    },
                    Ok(Some(Err(e))) => e.to_string(),
                    Err(_) => format!("body stalled: no data for {stall:?}"),
                };
                return Err(Error::upstream_unavailable("peer", e));
            },
            Body::Swarm(body) => body.next_chunk().await,
        }
    }
}
