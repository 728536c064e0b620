//! Blobs: a hit streams the cached file. A miss joins a fill already running for that digest that
//! it may share (same upstream; another repository's only once the upstream answered it with
//! content, so that nobody's failing request can fail another's pull: see [`crate::fill`]), or
//! starts one: a task, detached from any client, that streams its source into the store while
//! hashing it ([`crate::fill::job`]: resumed with `Range` when the body breaks off, passed through
//! from memory when the disk is full). Every client asking for that digest, the first included,
//! reads the growing file (`store::read_range`), which releases the last byte only after the
//! digest checked out. So the first bytes leave at once, a slow client never slows the fill, a
//! client that goes away does not stop it, and a wrong body never completes.
//!
//! With a bucket (`[storage.s3]`, see [`crate::tier`]) the read order is local disk, then the
//! bucket, then the upstream; with `[cluster]` ([`crate::cluster`]) a miss the bucket cannot answer
//! is handed to the digest's owner among the live replicas before the upstream (the fill's
//! sources: [`crate::fill::job`]). A peer's own request ([`Mirror::peer_blob`]) is never handed
//! on. A HEAD starts no fill: a running fill, the bucket or the upstream's HEAD knows the size.
//! A cached blob is answered through an upstream only once that upstream may serve it
//! (`may_serve`).
//!
//! A client's blob is answered only if the signature policy lets it through (`policy`); a peer's
//! was let through by the replica its client asked.
//!
//! A GET answered is noted for the bucket's last-pull order (`tier`), by where it was read from.
//!
//! Rule of dependency: uses `fill`, `origins`, `store`, `tier`, `cluster`, `upstream`, `oci`,
//! `error`, `metrics`, its sibling `range` and its parent's `Mirror`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use futures_util::Stream;
use http::Method;
use tokio::sync::watch;
use tokio::time::Instant;

use super::range::ByteRange;
use super::{Mirror, Target};
use crate::cluster::Cluster;
use crate::error::Error;
use crate::fill::job::FillJob;
use crate::fill::{FillSource, Share};
use crate::oci::{Digest, RepoName};
use crate::origins::check::{self, Place, Verdict};
use crate::store::{self, FillState, Source};
use crate::tier::PullSource;
use crate::upstream::{NotFoundKind, Upstream, blob_request, content_length};

/// A blob answer: headers now, bytes as they come.
pub struct BlobReply {
    pub digest: Digest,
    /// The blob's full size, when known (it is unknown only for a fill whose upstream sent no length).
    pub total: Option<u64>,
    /// The span served, when the client asked for a range.
    pub range: Option<(u64, u64)>,
    /// `None` for HEAD.
    pub body: Option<BlobStream>,
    /// `hit`, `miss`, `joined`, `bucket`, `bucket_joined` (a fill from the bucket, started or
    /// joined): for logs and the served-bytes metric.
    pub outcome: &'static str,
}

pub type BlobStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

impl Mirror {
    /// A blob, or part of it. `head` answers the size without a body (and starts no fill).
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, Error> {
        self.check_blob_policy(target, digest)?;
        let reply = self
            .blob_for(target, digest, range, head, self.cluster.as_ref())
            .await?;
        self.note_blob_pull(target, digest, reply.outcome, head);
        Ok(reply)
    }

    /// A blob for a peer that handed its miss to this berth: as [`Mirror::blob`], but a miss
    /// is filled here, never handed on to another peer (two replicas that disagree on the owner
    /// for a moment must not send the request back and forth).
    pub async fn peer_blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, Error> {
        let reply = self.blob_for(target, digest, range, head, None).await?;
        // The asking replica notes its client's pull too; this one notes its own read of the
        // bucket (a reader eviction must see) or of its disk.
        self.note_blob_pull(target, digest, reply.outcome, head);
        Ok(reply)
    }

    /// With a bucket, notes a blob GET for the share's last-pull order (memory only; see
    /// `tier`).
    fn note_blob_pull(&self, target: &Target, digest: &Digest, outcome: &str, head: bool) {
        let Some(tier) = &self.tier else {
            return;
        };
        if head {
            return;
        }
        let source = match outcome {
            "hit" => PullSource::Local,
            o if o.starts_with("bucket") => PullSource::Bucket,
            // A fill from the upstream or a peer: its own upload takes it to the bucket.
            _ => PullSource::Fill,
        };
        let upstream = self.upstream_name(target.upstream);
        tier.touch_blob(digest, &upstream, source);
    }

    pub(super) async fn blob_for(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<BlobReply, Error> {
        let up = self.upstream(target.upstream)?;
        let started = Instant::now();
        // A cached file that cannot be opened is a miss, not an error: the fill fetches the blob
        // again (and replaces the file if it can).
        let cached = self.store.open_blob(digest).await.unwrap_or_else(|e| {
            tracing::error!(%digest, error = %e, "cached blob cannot be read; fetching it again");
            None
        });
        if let Some(blob) = cached {
            self.may_serve(target, &up, digest, NotFoundKind::Blob)
                .await?;
            self.metrics.cache("blob", up.name(), "hit");
            self.metrics.answer("local");
            let span = range.map(|r| r.resolve(blob.len)).transpose()?;
            let (start, end) = span.unwrap_or((0, blob.len));
            let body = (!head).then(|| {
                Box::pin(store::read_range(
                    Source::File(blob.clone()),
                    start,
                    Some(end),
                )) as BlobStream
            });
            return Ok(BlobReply {
                digest: digest.clone(),
                total: Some(blob.len),
                range: span,
                body,
                outcome: "hit",
            });
        }
        if head {
            return self.head_blob(&up, target, digest).await;
        }
        let (mut rx, source, joined) = self
            .fill(target.upstream, &up, &target.name, digest, cluster)
            .await;
        self.metrics
            .cache("blob", up.name(), if joined { "joined" } else { "miss" });
        // Wait for the upstream's answer (size known), or the end when a range needs a size the
        // upstream did not announce.
        let total = loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Failed(e) => return Err(e),
                FillState::Verified(b) | FillState::Committed(b) => break Some(b.len),
                FillState::Writing(p) => match p.total {
                    Some(t) => break Some(t),
                    None if range.is_none() => break None,
                    None => {}
                },
                FillState::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err(Error::internal("blob fill ended without a result"));
            }
        };
        self.metrics
            .first_byte
            .observe(started.elapsed().as_secs_f64());
        // Set by the fill before its first byte, so before any state this loop stops at.
        let source = source.get().copied().unwrap_or("upstream");
        self.metrics.answer(source);
        let span = match (range, total) {
            (Some(r), Some(t)) => Some(r.resolve(t)?),
            _ => None,
        };
        let (start, end) = span.map_or((0, None), |(s, e)| (s, Some(e)));
        let body = Box::pin(store::read_range(Source::Fill(rx), start, end)) as BlobStream;
        Ok(BlobReply {
            digest: digest.clone(),
            total,
            range: span,
            body: Some(body),
            outcome: match (joined, source) {
                (false, "bucket") => "bucket",
                (true, "bucket") => "bucket_joined",
                (false, "peer") => "peer",
                (true, "peer") => "peer_joined",
                (false, _) => "miss",
                (true, _) => "joined",
            },
        })
    }

    async fn head_blob(
        &self,
        up: &Upstream,
        target: &Target,
        digest: &Digest,
    ) -> Result<BlobReply, Error> {
        // A fill already running (with content, through this upstream) knows the size.
        if let Some(t) = self.fills.known_size(target.upstream, digest) {
            return Ok(BlobReply {
                digest: digest.clone(),
                total: Some(t),
                range: None,
                body: None,
                outcome: "joined",
            });
        }
        self.metrics.cache("blob", up.name(), "miss");
        let in_bucket = match &self.tier {
            Some(tier) => tier
                .lookup("head", tier.bucket().head_blob(digest))
                .await
                .flatten(),
            None => None,
        };
        let resp = match in_bucket {
            // In the bucket: through this upstream only when the bucket records it; else the
            // upstream's HEAD is the confirmation (and the answer).
            Some(info) => {
                let place = Place::Bucket {
                    ask_if_unknown: true,
                };
                let tier = self.tier.as_ref();
                match check::may_serve(
                    up,
                    digest,
                    place,
                    tier,
                    &self.metrics,
                    NotFoundKind::Blob,
                    || blob_request(Method::HEAD, &target.name, digest),
                )
                .await?
                {
                    Verdict::Confirmed(resp) => resp,
                    _ => {
                        self.metrics.answer("bucket");
                        return Ok(BlobReply {
                            digest: digest.clone(),
                            total: Some(info.size),
                            range: None,
                            body: None,
                            outcome: "bucket",
                        });
                    }
                }
            }
            None => {
                up.send(blob_request(Method::HEAD, &target.name, digest))
                    .await?
                    .error_for_status(NotFoundKind::Blob)
                    .await?
            }
        };
        self.metrics.answer("upstream");
        let total = content_length(&resp.headers);
        Ok(BlobReply {
            digest: digest.clone(),
            total,
            range: None,
            body: None,
            outcome: "miss",
        })
    }

    /// Joins a fill for `digest` this request may share, or starts one ([`crate::fill`]).
    /// Returns its progress and whether it was joined.
    async fn fill(
        &self,
        upstream: usize,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
        cluster: Option<&Arc<Cluster>>,
    ) -> (watch::Receiver<FillState>, FillSource, bool) {
        let mut may_wait = true;
        let (tx, rx, source) = loop {
            match self.fills.share(upstream, name, digest, may_wait) {
                Share::Join(rx, source) => {
                    self.metrics.coalesced.with_label_values(&["blob"]).inc();
                    return (rx, source, true);
                }
                Share::Start(tx, rx, source) => break (tx, rx, source),
                Share::Wait(mut other) => {
                    // Another repository's fill, not yet answered: its content, or our own fill.
                    may_wait = false;
                    self.metrics.fill_waits.inc();
                    let _ = other.wait_for(|s| !matches!(s, FillState::Pending)).await;
                }
            }
        };
        let job = FillJob {
            origin: (upstream, self.origins.clone()),
            up: up.clone(),
            name: name.clone(),
            digest: digest.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            fills: self.fills.clone(),
            this_fill: rx.clone(),
            pass_throughs: self.pass_throughs.clone(),
            passing: AtomicBool::new(false),
            tier: self.tier.clone(),
            cluster: cluster.cloned(),
            source: source.clone(),
            swarm: self.swarm.clone(),
        };
        self.metrics.fills_in_flight.inc();
        // The task, not any client, owns the fill: it runs to the end even if every client leaves.
        // The job ends in its Drop (counted out, taken out of the map), so that even a panic in it
        // cannot leave a dead entry that every later request for the digest would join.
        tokio::spawn(async move {
            job.run(tx).await;
        });
        (rx, source, false)
    }
}
