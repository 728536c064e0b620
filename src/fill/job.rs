//! One blob fill: the task, detached from any client, that streams a source's body into the
//! store's pending file while hashing it, and commits it only once the digest checked out.
//!
//! The network and the disk work side by side: while one batch is hashed and written on a
//! blocking thread, the next one is read (up to `MAX_QUEUED` bytes ahead). A body that breaks
//! off is resumed from the upstream with `Range` (`FillJob::resume`, following
//! `upstream::resume`'s rule); a disk that fills up turns the fill into a pass-through from
//! memory (at most `MAX_PASS_THROUGH` at once). A fill from the upstream that committed is
//! uploaded to the bucket, when there is one (`Tier::upload`, without hashing the file again).
//!
//! Resuming: a body that breaks off (closed, reset, stalled) is asked for again with
//! `Range: bytes=<received>-` (at most `resume_attempts` times per fill, with the upstream's own
//! backoff), appended to the same temp file with the same running hash, so readers never notice.
//! What the answer means is `upstream::resume`'s rule: a 206 must start exactly at `received` and
//! end at the known end of the blob; a 200 means the upstream ignores `Range`, so its first
//! `received` bytes are skipped, never hashed or written twice; anything else fails the fill. The range request goes through `Upstream::send`, so it
//! carries the same auth and follows the same redirects (a CDN gets the `Range` header and never
//! the credentials). The final digest check still guards every byte, whichever way it arrived.
//!
//! A full disk: the fill passes through from memory (`store::PendingBlob::pass_through`: clients
//! following it get every byte, nothing is cached), the store is told (`Store::disk_full`, where
//! eviction makes room), and the fill leaves the `fills` map at once, so that the next request
//! for the digest starts a fresh fill that may find room again.
//!
//! Its source is chosen here (`bucket_source`, `peer_source`, `swarm_source`, else the upstream):
//! the bucket when it has the blob and may answer it through the fill's upstream ([`check`]),
//! then the digest's owner among the replicas (`[cluster]`), then on a fleet node the swarm
//! (verified bytes only, see `fill::swarm`), then the upstream.
//!
//! Rule of dependency: uses `store`, `tier`, `cluster`, `upstream`, `origins` (the records and
//! [`check`]), `metrics`, `error`, `oci`, its parent's `Fills` and its siblings `source` (the
//! bodies) and `swarm` (a node's swarm), which import nothing of this file; the mirror builds and
//! spawns it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, header};
use tokio::sync::watch;

use super::FillSource;
use super::Fills;
use super::source::Body;
use crate::cluster::Cluster;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::origins::Origins;
use crate::origins::check::{self, Place, Verdict};
use crate::store::s3::BlobRead;
use crate::store::{self, FillState, Store};
use crate::tier::{Recheck, Tier};
use crate::upstream::{
    NotFoundKind, Upstream, UpstreamResponse, blob_request, content_length, continuation,
};

/// Most bytes read from the upstream ahead of the disk; beyond it the fill stops reading (and TCP
/// slows the upstream down), so memory per fill stays bounded.
const MAX_QUEUED: usize = 4 * 1024 * 1024;

/// How far the slowest client of a fill that lost its disk may lag before the fill waits for it
/// (`store::PassThrough`). Such a fill holds at most this plus MAX_QUEUED (plus one batch being
/// hashed) in memory, about 24 MiB, whatever the blob's size.
const PASS_THROUGH_WINDOW: u64 = 16 * 1024 * 1024;

/// Most fills running from memory at once (a full disk): about 200 MiB together.
pub(crate) const MAX_PASS_THROUGH: usize = 8;

type WriteFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = (store::PendingBlob, std::io::Result<()>)> + Send>,
>;
/// One blob fetch from upstream into the store.
pub(crate) struct FillJob {
    /// The upstream's slot, and where a verified blob is recorded as having come through it.
    pub(crate) origin: (usize, Arc<Origins>),
    pub(crate) up: Arc<Upstream>,
    pub(crate) name: RepoName,
    pub(crate) digest: Digest,
    pub(crate) store: Arc<Store>,
    pub(crate) metrics: Metrics,
    /// The mirror's running fills, and this one's entry there.
    pub(crate) fills: Arc<Fills>,
    pub(crate) this_fill: watch::Receiver<FillState>,
    /// The mirror's count of fills running from memory, and whether this is one of them.
    pub(crate) pass_throughs: Arc<AtomicUsize>,
    pub(crate) passing: AtomicBool,
    /// The bucket: the fill's source when it has the blob, else where a verified fill goes.
    pub(crate) tier: Option<Arc<Tier>>,
    /// The replicas, when a miss is to be handed to the digest's owner (not for a peer's own
    /// request).
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// Where this fill's bytes come from, told to the requests sharing it.
    pub(crate) source: FillSource,
    /// A fleet node's swarm (`[fleet] parent`): the source before the upstream.
    pub(crate) swarm: Option<Arc<super::swarm::Swarm>>,
}

impl Drop for FillJob {
    fn drop(&mut self) {
        if self.passing.load(Ordering::Acquire) {
            self.pass_throughs.fetch_sub(1, Ordering::AcqRel);
        }
        self.metrics.fills_in_flight.dec();
        self.forget();
    }
}

impl FillJob {
    /// Takes this fill out of the mirror's map, so that the next request for the digest starts a
    /// new one. Only this fill: a newer one for the same digest may have replaced it.
    fn forget(&self) {
        self.fills.remove(&self.digest, &self.this_fill);
    }

    /// Counts a failed store write by kind and, when the disk is full, tells the store.
    fn write_failed(&self, e: &std::io::Error) {
        let full = store::is_disk_full(e);
        self.metrics
            .store_write_errors
            .with_label_values(&[if full { "enospc" } else { "io" }])
            .inc();
        if full {
            self.store.disk_full();
        }
    }

    /// A write found the disk full: the fill goes on from memory (see `store::PassThrough`) and
    /// leaves the map, so that new requests start a fresh fill (which may find room again). At most
    /// [`MAX_PASS_THROUGH`] at once: beyond that the fill fails (507), so that a fleet pulling one
    /// layer onto a full disk cannot turn into a download and 24 MiB of memory per client.
    fn pass_through(
        &self,
        pending: &mut store::PendingBlob,
        e: &std::io::Error,
    ) -> Result<(), Error> {
        self.write_failed(e);
        if self.pass_throughs.fetch_add(1, Ordering::AcqRel) >= MAX_PASS_THROUGH {
            self.pass_throughs.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(upstream = self.up.name(), digest = %self.digest, error = %e,
                "disk full during a blob fill, and {MAX_PASS_THROUGH} fills already run from memory: failing this one");
            return Err(Error::io("writing blob", e));
        }
        self.passing.store(true, Ordering::Release);
        tracing::error!(upstream = self.up.name(), repo = %self.name, digest = %self.digest,
            written = pending.written(), error = %e,
            "disk full during a blob fill: serving it from memory, caching nothing");
        pending.pass_through(store::PassThrough {
            window: PASS_THROUGH_WINDOW,
            lag_limit: self.up.config().stall_timeout,
        });
        self.forget();
        Ok(())
    }

    pub(crate) async fn run(&self, tx: watch::Sender<FillState>) {
        if let Err(e) = self.fetch(&tx).await {
            tracing::warn!(upstream = self.up.name(), repo = %self.name, digest = %self.digest, error = %e, "blob fill failed; nothing cached");
            tx.send_replace(FillState::Failed(e));
        }
    }

    async fn fetch(&self, tx: &watch::Sender<FillState>) -> Result<(), Error> {
        let stall = self.up.config().stall_timeout;
        let (mut resp, total, from) = match self.bucket_source().await? {
            Some(read) => {
                let body = Body::Bucket {
                    body: read.body,
                    stall,
                };
                (body, Some(read.size), "bucket")
            }
            None => match self.peer_source().await {
                Some(resp) => {
                    let total = content_length(resp.headers());
                    let body = resp.into_body();
                    (Body::Peer { body, stall }, total, "peer")
                }
                None => match self.swarm_source().await {
                    Some((body, total)) => (Body::Swarm(body), Some(total), "swarm"),
                    None => {
                        let resp: UpstreamResponse = self
                            .up
                            .send(blob_request(Method::GET, &self.name, &self.digest))
                            .await?;
                        let resp = resp.error_for_status(NotFoundKind::Blob).await?;
                        let total = content_length(&resp.headers);
                        (Body::Upstream(resp), total, "upstream")
                    }
                },
            },
        };
        let _ = self.source.set(from);
        let pending = self
            .store
            .begin(&self.digest, total, tx.clone())
            .await
            .map_err(|e| {
                self.write_failed(&e);
                Error::io("starting blob fill", &e)
            })?;
        // The network and the disk work side by side: while one batch is hashed and written on a
        // blocking thread, the next one is read from the upstream (up to MAX_QUEUED bytes ahead).
        let feed = pending.feed();
        let mut pending = Some(pending);
        let mut writing: Option<WriteFuture> = None;
        let mut queue: Vec<Bytes> = Vec::new();
        let (mut queued, mut received, mut eof) = (0usize, 0u64, false);
        // Resumes so far, and the bytes at the start of the current body the fill already has
        // (after an upstream answered a range request with the whole blob).
        let (mut resumes, mut skip) = (0u32, 0u64);
        // Where the last resume started: a body that breaks off again with nothing new since
        // then is not resumed again (see `resume`).
        let mut resumed_at: Option<u64> = None;
        loop {
            if writing.is_none() && !queue.is_empty() {
                let mut p = pending.take().expect("pending is home when no write runs");
                let batch = std::mem::take(&mut queue);
                queued = 0;
                writing = Some(Box::pin(async move {
                    let r = p.write_all(batch).await;
                    (p, r)
                }));
            }
            if eof && writing.is_none() {
                break;
            }
            tokio::select! {
                Some((mut p, r)) = futures_util::future::OptionFuture::from(writing.as_mut()), if writing.is_some() => {
                    writing = None;
                    match r {
                        Ok(()) => {}
                        Err(e) if store::is_disk_full(&e) && !p.is_pass_through() => self.pass_through(&mut p, &e)?,
                        Err(e) => {
                            self.write_failed(&e);
                            return Err(Error::io("writing blob", &e));
                        }
                    }
                    pending = Some(p);
                }
                chunk = resp.next_chunk(self.tier.as_ref()), if !eof && queued < MAX_QUEUED => {
                    let mut c = match chunk {
                        Ok(Some(c)) => c,
                        Ok(None) => {
                            eof = true;
                            continue;
                        }
                        // A write already started goes on meanwhile on its blocking threads; its
                        // end is picked up once the resume has an answer.
                        Err(cause) => {
                            let idle = resumed_at == Some(received);
                            resumed_at = Some(received);
                            let (r, s) = self.resume(&mut resumes, received, total, idle, cause).await?;
                            (resp, skip) = (Body::Upstream(r), s);
                            continue;
                        }
                    };
                    if skip > 0 {
                        let n = skip.min(c.len() as u64);
                        skip -= n;
                        c = c.slice(n as usize..);
                        if c.is_empty() {
                            continue;
                        }
                    }
                    received += c.len() as u64;
                    if total.is_some_and(|t| received > t) {
                        return Err(Error::upstream_bad(self.up.name(), format!("blob {}: more bytes than the announced {}", self.digest, total.unwrap_or(0))));
                    }
                    if matches!(resp, Body::Upstream(_)) {
                        self.metrics.fetched_bytes.with_label_values(&[self.up.name()]).inc_by(c.len() as u64);
                    }
                    queued += c.len();
                    feed.push(c.clone());
                    queue.push(c);
                }
            }
        }
        let mut pending = pending.expect("pending is home after the last write");
        // Where the blob came from is recorded once it is verified, before any client has it
        // whole or it is at its final path: until then it would look cached before records were
        // kept, and be answered through any upstream ([`crate::origins`]).
        let record_origin = || {
            let (slot, origins) = &self.origin;
            origins.record(*slot, &self.up.name().to_ascii_lowercase(), &self.digest);
        };
        match pending.commit_with(record_origin).await {
            Ok(blob) => {
                tracing::info!(upstream = self.up.name(), repo = %self.name, digest = %self.digest, bytes = blob.len, from, "blob cached");
                // A blob from a peer is its owner's to upload (it fills the bucket as it
                // serves), unless the peer's body broke off and this fill finished it from the
                // upstream: the owner may be gone (killed mid-fill) and never upload it.
                // Uploading twice costs a HEAD, not a second copy. The file is sent as it is:
                // this fill verified it a moment ago.
                if let Some(tier) = &self.tier
                    && (from == "upstream" || (from == "peer" && resumes > 0))
                {
                    tier.upload(
                        self.store.clone(),
                        self.digest.clone(),
                        self.up.name().to_ascii_lowercase(),
                        Recheck::JustVerified,
                    );
                }
                Ok(())
            }
            Err(store::CommitError::Persist(_)) if pending.is_pass_through() => {
                tracing::warn!(upstream = self.up.name(), repo = %self.name, digest = %self.digest, "blob verified and served from memory; not cached (the disk was full)");
                Ok(())
            }
            Err(store::CommitError::Persist(e)) => {
                // The clients got verified bytes; only the cache missed out.
                self.write_failed(&e);
                tracing::error!(upstream = self.up.name(), digest = %self.digest, error = %e, "blob verified and served but could not be stored");
                Ok(())
            }
            Err(e @ store::CommitError::NoRoom { .. }) => {
                tracing::warn!(upstream = self.up.name(), digest = %self.digest, error = %e, "blob verified and served but not cached: everything in the cache is in use or recently referenced");
                Ok(())
            }
            Err(store::CommitError::Io(e)) => {
                self.write_failed(&e);
                Err(Error::io("committing blob", &e))
            }
            Err(e) if from == "peer" => {
                tracing::error!(repo = %self.name, digest = %self.digest, error = %e, "blob from a peer failed verification; not cached");
                Err(Error::digest_mismatch(
                    "peer",
                    format!("blob {}: {e}", self.digest),
                ))
            }
            Err(e) if from == "bucket" => {
                // Whether the bucket's bytes were wrong or an upstream resume's, the object is
                // suspect: gone, so the next fill goes to the upstream.
                if let Some(tier) = &self.tier {
                    tier.delete_bad(&self.digest).await;
                }
                tracing::error!(repo = %self.name, digest = %self.digest, error = %e, "blob from the bucket failed verification; deleted from the bucket, not cached");
                Err(Error::digest_mismatch(
                    "bucket",
                    format!("blob {}: {e}", self.digest),
                ))
            }
            Err(e) => {
                self.metrics
                    .digest_mismatches
                    .with_label_values(&[self.up.name(), "blob"])
                    .inc();
                tracing::error!(upstream = self.up.name(), repo = %self.name, digest = %self.digest, error = %e, "upstream blob failed verification; not cached");
                Err(Error::digest_mismatch(
                    self.up.name(),
                    format!("blob {}: {e}", self.digest),
                ))
            }
        }
    }

    /// The body broke off with `cause` after `received` bytes: asks for the rest with
    /// `Range: bytes=<received>-`, backing off between tries, while this fill has resumes left
    /// (`resume_attempts`; `done` counts them). Returns the response to read on and how many of
    /// its first bytes the fill already has (all `received` of them when the upstream ignored the
    /// range and sent the whole blob). A refusal or a range that does not continue the blob ends
    /// the fill; a resume request that fails in transit uses up an attempt and is tried again.
    ///
    /// `idle`: the body that broke off was the last resume's, and it brought no byte. That one is
    /// not resumed again: an upstream that answers and then sends nothing would otherwise keep
    /// every client waiting a full `stall_timeout` per attempt, with nothing to show for it. So a
    /// client waits at most about two stall timeouts (the first stall, one resume) without a byte,
    /// while a resume that made progress earns the next one, up to `resume_attempts`.
    async fn resume(
        &self,
        done: &mut u32,
        received: u64,
        total: Option<u64>,
        idle: bool,
        mut cause: Error,
    ) -> Result<(UpstreamResponse, u64), Error> {
        let limit = self.up.config().resume_attempts;
        let up = self.up.name();
        if idle && limit > 0 {
            self.metrics
                .resumes
                .with_label_values(&[up, "failed"])
                .inc();
            tracing::warn!(upstream = up, repo = %self.name, digest = %self.digest, received, error = %cause, "a resumed blob download broke off again without a byte; giving up");
            let d = cause.detail.take().unwrap_or_default();
            cause.detail = Some(format!("{d} (the last resume brought no byte)"));
            return Err(cause);
        }
        loop {
            if *done >= limit {
                if limit == 0 {
                    return Err(cause);
                }
                self.metrics
                    .resumes
                    .with_label_values(&[up, "failed"])
                    .inc();
                let d = cause.detail.take().unwrap_or_default();
                cause.detail = Some(format!("{d} (gave up after {limit} resumes)"));
                return Err(cause);
            }
            let wait = self.up.backoff(*done);
            *done += 1;
            tracing::warn!(upstream = up, repo = %self.name, digest = %self.digest, received, attempt = *done, ?wait, error = %cause, "blob download broke off; resuming from where it stopped");
            tokio::time::sleep(wait).await;
            let mut req = blob_request(Method::GET, &self.name, &self.digest);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={received}-")) {
                req.headers.insert(header::RANGE, v);
            }
            let resp = match self.up.send(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    cause = e;
                    continue;
                }
            };
            let refused = |detail: String| {
                self.metrics
                    .resumes
                    .with_label_values(&[up, "failed"])
                    .inc();
                tracing::warn!(upstream = up, digest = %self.digest, received, %detail, "blob download cannot be resumed; the fill fails");
                Error::upstream_bad(
                    up,
                    format!("resuming blob {} at byte {received}: {detail}", self.digest),
                )
            };
            if !resp.status.is_success() {
                let status = resp.status;
                let e = match resp.error_for_status(NotFoundKind::Blob).await {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("answered {status}"),
                };
                return Err(refused(e));
            }
            match continuation(resp.status, &resp.headers, received, total) {
                Ok(skip) => {
                    let outcome = if skip > 0 { "restart" } else { "partial" };
                    self.metrics.resumes.with_label_values(&[up, outcome]).inc();
                    tracing::info!(upstream = up, digest = %self.digest, received, outcome, "blob download resumed");
                    return Ok((resp, skip));
                }
                Err(detail) => return Err(refused(detail)),
            }
        }
    }
}

impl FillJob {
    /// The blob from the bucket, when it has it and may answer it through this fill's upstream
    /// ([`check`]): the bucket records that upstream, or the upstream confirms it has the digest
    /// now (then recorded). `None`: no bucket, not there, or the bucket failed (the upstream
    /// serves). An error: the upstream's own answer to the confirmation (as a miss would have got).
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
        let place = Place::Bucket {
            ask_if_unknown: false,
        };
        let verdict = check::may_serve(
            &self.up,
            &self.digest,
            place,
            Some(tier),
            &self.metrics,
            NotFoundKind::Blob,
            || blob_request(Method::HEAD, &self.name, &self.digest),
        )
        .await?;
        if let Verdict::Unknown = verdict {
            return Ok(None);
        }
        Ok(tier
            .lookup("get", bucket.get_blob(&self.digest, None))
            .await
            .flatten())
    }

    /// The swarm's verified bytes and the blob's size, on a fleet node ([`super::swarm`]).
    async fn swarm_source(&self) -> Option<(super::swarm::SwarmBody, u64)> {
        let swarm = self.swarm.as_ref()?;
        swarm
            .open(&self.up, &self.name, &self.digest, &self.this_fill)
            .await
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
