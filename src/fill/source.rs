//! Where a fill's bytes come from: the bucket (when it has the blob and may answer it through the
//! fill's upstream), the digest's owner among the replicas (`[cluster]`), or the upstream; and
//! reading each with a stall timeout. Whatever the source, the bytes go through the same pending
//! file and digest check ([`super::job`]), and a body that breaks off is resumed from the upstream.
//!
//! Rule of dependency: uses `store`, `tier`, `cluster`, `upstream`, `error`, `oci`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use super::job::FillJob;
use crate::error::Error;
use crate::store::{self, s3::BlobRead};
use crate::tier::Tier;
use crate::upstream::{NotFoundKind, UpstreamResponse, blob_request};

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
        }
    }
}

impl FillJob {
    /// The blob from the bucket, when it has it and may answer it through this fill's upstream:
    /// the bucket records that upstream, or the upstream confirms it has the digest now (then
    /// recorded). `None`: no bucket, not there, or the bucket failed (the upstream serves).
    /// An error: the upstream's own answer to the confirmation (as a miss would have got).
    pub(crate) async fn bucket_source(&self) -> Result<Option<BlobRead>, Error> {
        let Some(tier) = &self.tier else {
            return Ok(None);
        };
        let bucket = tier.bucket();
        if tier
            .lookup("head", bucket.head_blob(&self.digest))
            .await
            .flatten()
            .is_none()
        {
            return Ok(None);
        }
        let origin = self.up.name().to_ascii_lowercase();
        let marked = tier
            .lookup("head origin", bucket.has_origin(&origin, &self.digest))
            .await;
        match marked {
            Some(true) => {}
            None => return Ok(None),
            Some(false) => {
                self.up
                    .send(blob_request(Method::HEAD, &self.name, &self.digest))
                    .await?
                    .error_for_status(NotFoundKind::Blob)
                    .await?;
                self.metrics.origin_confirmations.inc();
                tier.mark_origin(origin, self.digest.clone());
            }
        }
        Ok(tier
            .lookup("get", bucket.get_blob(&self.digest, None))
            .await
            .flatten())
    }

    /// The digest owner's answer, when this fill hands its miss to a peer ([`Cluster::from_owner`]).
    pub(crate) async fn peer_source(&self) -> Option<hyper::http::Response<hyper::body::Incoming>> {
        let cluster = self.cluster.as_ref()?;
        cluster
            .from_owner(
                self.up.name(),
                &self.name,
                &self.digest,
                self.up.config().response_timeout,
            )
            .await
    }
}
