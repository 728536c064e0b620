//! The bucket tier as the request path uses it: reads that may not hold a pull up, uploads that
//! run beside it, and what `/healthz?verbose` says about the bucket.
//!
//! # Read order
//! A blob is answered from the local disk; on a miss, the fill's source is the bucket when it has
//! the blob (HEAD, then a streamed GET), else the upstream (`mirror`). Whatever the source, the
//! bytes go through the same pending file, so the local tier keeps them and the digest is checked
//! as always; a bucket object that does not hash to its name is counted
//! (`berth_bucket_requests_total{op="get_body",outcome="mismatch"}`), deleted from the bucket,
//! and then the fill fails like any fill whose bytes were wrong: its clients get a short body,
//! never a complete wrong one, and the next request (a client's retry) fetches from the upstream.
//! Trade-off: falling back within the same response is impossible once bucket bytes have
//! streamed (the client holds a wrong prefix); verifying before streaming would cost every bucket
//! hit its first byte. A wrong object is rare (S3 completes only verified uploads); streaming is
//! every hit.
//!
//! # The bucket down
//! Every lookup ([`Tier::lookup`]) is bounded by [`LOOKUP_TIMEOUT`]; an error or a timeout skips
//! the bucket for that request (the upstream serves it) and for the next [`SKIP_AFTER_ERROR`],
//! so an unreachable bucket costs one bounded wait, not one per pull (the skipped lookups are
//! `berth_bucket_requests_total{op="lookup",outcome="skipped"}`). Uploads are still tried. A bucket body that breaks
//! off mid-blob is resumed from the upstream with a range request, as an upstream body is. Errors
//! are logged at warn at most once per [`WARN_EVERY`] (with the count since) and the last one is
//! what `/healthz?verbose` reports under `bucket`. The bucket never makes berth unready.
//!
//! # Manifests and tags
//! A manifest cached from an upstream is put by digest (its media type as `Content-Type`) with
//! the upstream's origin marker; a tag resolved or revalidated with an upstream is put as a tag
//! record (digest, media type, when). On a local miss, a manifest by digest is read from the
//! bucket (its digest checked again; through upstream U only with U's marker, else U confirms
//! first), and a tag from its record, which ages like a local answer: trusted for `tag_ttl`
//! from `resolved_at`, then revalidated, and served stale while the upstream fails.
//!
//! # Uploads
//! A blob filled from the upstream and committed to the local disk is uploaded from that
//! verified file by a background task ([`Tier::upload`]; it is skipped when the bucket already
//! has it), at most [`MAX_UPLOADS`] at once; then the upstream's origin marker is written
//! (`store::s3`'s layout). The fill that committed the file hashed it a moment before, so its
//! upload does not hash it again ([`Recheck::JustVerified`]); a file put back by the share's
//! backfill, committed who knows how long ago, is hashed on the way ([`Recheck::Hash`]). Either
//! way every read from the bucket verifies the object before any client gets its last byte.
//! A fill that passed through from memory (the disk was full) or that could not be kept
//! locally is not uploaded: there is no verified file to read it from, and holding a second copy
//! in memory for the bucket is what a full disk cannot afford.
//! Why after the commit, not beside the fill: measured (BENCHMARKS.md, issue 19), an upload
//! streaming beside the fill got the blob into a local Ceph RGW 0.9 s sooner for 256 MiB, but the
//! bucket's own ingest (2.8 CPU s/GB) then competed with the pull for the node's cores and made
//! the pull itself 1.9x slower; a client waits for its pull, not for the bucket, and until the
//! upload lands the other replicas hand their misses to this one (the owner), not to the bucket.
//! Trade-off: a replica that dies between its local commit and the end of the upload leaves the
//! bucket without the blob; the next replica's miss fetches it again.
//!
//! # Whole reads for the fleet's piece tables
//! [`Tier::read_blob`] (`read`): an object read whole and checked, keeping nothing, for a fleet
//! parent's piece table of a blob it neither holds nor fills (a replica found it in the bucket
//! and never asked the owner).
//!
//! # The share
//! Pulls are noted in memory and flushed as access markers; what was pulled here but is missing
//! from the bucket is put back; with `[storage.s3] max_size` or `max_age` an eviction pass runs
//! every [`EVICT_EVERY`] (`share`, policy and markers in `store::s3::evict`).
//!
//! Rule of dependency: uses `store` (`s3`, reading committed files) and `oci`; `mirror` uses it
//! (notes the pulls it answers in it, and reads whole blobs through it for the fleet's tables),
//! `assemble` builds it and `health` reads its last error and share.

mod read;
mod share;

pub use read::{BODY_STALL, CheckedBody};
pub use share::{
    EVICT_EVERY, FLUSH_EVERY, PullSource, READ_TOUCH_EVERY, ShareInfo, ShareState, TOUCH_EVERY,
};

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::oci::Digest;
use crate::store::s3::{Bucket, BucketError, Stored, TagRecord};
use crate::store::{self, Source, Store};

/// A bucket lookup (HEAD, or a GET to its headers) that takes longer is given up: the upstream
/// serves the pull instead.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// After a bucket error, reads skip the bucket this long.
pub const SKIP_AFTER_ERROR: Duration = Duration::from_secs(10);
/// Bucket errors are logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// Uploads running at once.
pub const MAX_UPLOADS: usize = 4;
/// How often open multipart uploads are looked for, and how old they must be to be aborted.
pub const STALE_EVERY: Duration = Duration::from_secs(600);
pub const STALE_AGE: Duration = Duration::from_secs(3600);

/// Whether an upload of a committed file hashes it on the way ([`Tier::upload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// The fill that committed the file verified its bytes a moment ago: sent as they are.
    JustVerified,
    /// A file committed earlier (the share's backfill): hashed again, and not completed unless
    /// it still matches its digest.
    Hash,
}

/// The bucket's last error and when, for `/healthz?verbose`.
pub type LastError = Arc<Mutex<Option<(SystemTime, String)>>>;

/// The bucket and the state of using it.
pub struct Tier {
    bucket: Arc<Bucket>,
    uploads: Arc<Semaphore>,
    last_error: LastError,
    /// Reads skip the bucket until then (after an error).
    skip_until: Mutex<Option<Instant>>,
    /// When an error was last logged, and how many were not logged since.
    warned: Mutex<(Option<Instant>, u64)>,
    /// This replica's pulls, for the access markers (`share`).
    touches: Mutex<share::Touches>,
    /// The share as the last eviction pass left it.
    share: ShareState,
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Tier {
    pub fn new(bucket: Arc<Bucket>) -> Tier {
        Tier {
            bucket,
            uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
            last_error: LastError::default(),
            skip_until: Mutex::new(None),
            warned: Mutex::new((None, 0)),
            touches: Mutex::default(),
            share: ShareState::default(),
        }
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// The last error, shared with `health`.
    pub fn last_error(&self) -> &LastError {
        &self.last_error
    }

    /// Records a failed bucket request: for `/healthz`, the skip window, and the (rate-limited)
    /// log.
    pub fn failed(&self, what: &str, error: &dyn fmt::Display) {
        *self.skip_until.lock().unwrap() = Some(Instant::now() + SKIP_AFTER_ERROR);
        self.report(what, error);
    }

    /// Records an object that is not what berth wrote (a manifest that does not hash to its
    /// name, a tag record that is not JSON): reported like a failure, but the bucket answered,
    /// so it is not skipped.
    fn bad_content(&self, what: &str, error: &dyn fmt::Display) {
        self.report(what, error);
    }

    fn report(&self, what: &str, error: &dyn fmt::Display) {
        let text = format!("{what}: {error}");
        *self.last_error.lock().unwrap() = Some((SystemTime::now(), text.clone()));
        let mut warned = self.warned.lock().unwrap();
        let now = Instant::now();
        match warned.0 {
            Some(at) if now.duration_since(at) < WARN_EVERY => warned.1 += 1,
            _ => {
                let suppressed = std::mem::take(&mut warned.1);
                warned.0 = Some(now);
                tracing::warn!(error = %text, suppressed,
                    "bucket request failed; local disk and upstreams serve instead");
            }
        }
    }

    /// Whether reads may use the bucket now (not within [`SKIP_AFTER_ERROR`] of an error).
    pub fn readable(&self) -> bool {
        self.skip_until
            .lock()
            .unwrap()
            .is_none_or(|t| Instant::now() >= t)
    }

    /// Runs one read, bounded by [`LOOKUP_TIMEOUT`]; `None` when the bucket is being skipped,
    /// failed or was too slow (recorded with [`failed`](Self::failed)).
    pub async fn lookup<T>(
        &self,
        what: &str,
        read: impl Future<Output = Result<T, BucketError>>,
    ) -> Option<T> {
        if !self.readable() {
            self.bucket
                .metrics()
                .requests
                .with_label_values(&["lookup", "skipped"])
                .inc();
            return None;
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, read).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e @ (BucketError::Invalid(_) | BucketError::Digest { .. }))) => {
                self.bad_content(what, &e);
                None
            }
            Ok(Err(e)) => {
                self.failed(what, &e);
                None
            }
            // The read was dropped before the bucket's own metrics could count it.
            Err(_) => {
                self.bucket
                    .metrics()
                    .requests
                    .with_label_values(&["lookup", "timeout"])
                    .inc();
                self.failed(what, &format!("no answer within {LOOKUP_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Uploads a verified blob committed to `store` in the background, then records that it came
    /// through `upstream` (see the module docs). The file is opened once the upload's turn has
    /// come, so a queue of uploads holds no descriptors and no eviction leases; a blob evicted
    /// meanwhile is not uploaded.
    pub fn upload(
        self: &Arc<Self>,
        store: Arc<Store>,
        digest: Digest,
        upstream: String,
        recheck: Recheck,
    ) {
        let tier = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = tier.uploads.clone().acquire_owned().await else {
                return;
            };
            let blob = match store.open_blob(&digest).await {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "cannot read a cached blob to upload it");
                    return;
                }
            };
            let len = blob.len;
            let body = store::read_range(Source::File(blob), 0, Some(len));
            let stored = match recheck {
                Recheck::Hash => tier.bucket.put_blob(&digest, Some(len), body).await,
                Recheck::JustVerified => {
                    let verified = std::future::ready(true);
                    tier.bucket
                        .put_blob_vouched(&digest, Some(len), body, verified)
                        .await
                }
            };
            match stored {
                Ok(stored) => {
                    if stored == Stored::Uploaded {
                        tracing::info!(%digest, bytes = len, "blob uploaded to the bucket");
                    }
                    tier.put_origin(&upstream, &digest).await;
                }
                Err(e) => tier.failed(&format!("uploading {digest}"), &e),
            }
        });
    }

    /// Records in the bucket that `digest` came through `upstream` (in the background).
    pub fn mark_origin(self: &Arc<Self>, upstream: String, digest: Digest) {
        let tier = self.clone();
        tokio::spawn(async move { tier.put_origin(&upstream, &digest).await });
    }

    async fn put_origin(&self, upstream: &str, digest: &Digest) {
        if let Err(e) = self.bucket.put_origin(upstream, digest).await {
            self.failed(&format!("recording the origin of {digest}"), &e);
        }
    }

    /// Puts a verified manifest (with its media type) and the marker of the upstream it came
    /// through, in the background.
    pub fn put_manifest(
        self: &Arc<Self>,
        digest: Digest,
        media_type: String,
        body: Bytes,
        upstream: String,
    ) {
        let tier = self.clone();
        tokio::spawn(async move {
            match tier.bucket.put_manifest(&digest, &media_type, body).await {
                Ok(()) => tier.put_origin(&upstream, &digest).await,
                Err(e) => tier.failed(&format!("putting manifest {digest}"), &e),
            }
        });
    }

    /// Records what `upstream`'s `repo:tag` resolved to now, in the background.
    pub fn put_tag(
        self: &Arc<Self>,
        upstream: String,
        repo: String,
        tag: String,
        digest: &Digest,
        media_type: &str,
    ) {
        let record = TagRecord {
            digest: digest.to_string(),
            media_type: media_type.to_owned(),
            resolved_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let tier = self.clone();
        tokio::spawn(async move {
            if let Err(e) = tier.bucket.put_tag(&upstream, &repo, &tag, &record).await {
                tier.failed(&format!("putting tag {repo}:{tag}"), &e);
            }
        });
    }

    /// Deletes a blob whose bytes did not hash to its name. Awaited (bounded) before the fill
    /// fails, so a client's retry cannot find the object again; when the delete fails, the
    /// bucket is skipped for a while instead.
    pub async fn delete_bad(&self, digest: &Digest) {
        self.bucket
            .metrics()
            .requests
            .with_label_values(&["get_body", "mismatch"])
            .inc();
        let what = format!("deleting the bad object of {digest}");
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.bucket.delete_blob(digest)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed(&what, &e),
            Err(_) => self.failed(&what, &format!("no answer within {LOOKUP_TIMEOUT:?}")),
        }
    }

    /// Every [`STALE_EVERY`], aborts multipart uploads older than [`STALE_AGE`] (left by a
    /// replica killed mid-upload). Runs until dropped (the server aborts it on shutdown).
    pub async fn abort_stale_uploads(self: Arc<Self>) {
        if !self.bucket.lists_uploads() {
            return;
        }
        let mut tick = tokio::time::interval(STALE_EVERY);
        loop {
            tick.tick().await;
            match self.bucket.abort_stale_uploads(STALE_AGE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(aborted = n, "aborted stale multipart uploads"),
                Err(e) => self.failed("aborting stale multipart uploads", &e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::BucketMetrics;

    fn tier() -> Tier {
        let store = Arc::new(object_store::memory::InMemory::new());
        Tier::new(Arc::new(Bucket::with_store(
            store,
            "",
            BucketMetrics::new(),
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_skips_the_bucket_for_a_while_and_is_reported() {
        let t = tier();
        assert!(t.readable());
        let got: Option<()> = t
            .lookup("head", async { Err(BucketError::Http("refused".into())) })
            .await;
        assert_eq!(got, None);
        assert!(!t.readable());
        let (_, text) = t.last_error().lock().unwrap().clone().unwrap();
        assert_eq!(text, "head: bucket request: refused");
        // Skipped: the read is not even started.
        assert_eq!(t.lookup("head", async { Ok(1) }).await, None);
        tokio::time::advance(SKIP_AFTER_ERROR).await;
        assert_eq!(t.lookup("head", async { Ok(1) }).await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn bad_content_is_reported_but_does_not_skip_the_bucket() {
        let t = tier();
        let got: Option<()> = t
            .lookup("get manifest", async {
                Err(BucketError::Invalid("x does not hash to its name".into()))
            })
            .await;
        assert_eq!(got, None);
        assert!(t.readable());
        let (_, text) = t.last_error().lock().unwrap().clone().unwrap();
        assert!(text.contains("does not hash"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_are_rate_limited() {
        let t = tier();
        t.failed("head", &"refused");
        t.failed("head", &"refused");
        t.failed("get", &"refused");
        assert_eq!(t.warned.lock().unwrap().1, 2, "two not logged");
        tokio::time::advance(WARN_EVERY).await;
        t.failed("head", &"refused");
        assert_eq!(
            t.warned.lock().unwrap().1,
            0,
            "logged, with the count since"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_bucket_is_given_up() {
        let t = tier();
        let got = t
            .lookup("get", async {
                tokio::time::sleep(LOOKUP_TIMEOUT * 2).await;
                Ok(1)
            })
            .await;
        assert_eq!(got, None);
        let (_, text) = t.last_error().lock().unwrap().clone().unwrap();
        assert!(text.starts_with("get: no answer within"), "{text}");
        let requests = &t.bucket().metrics().requests;
        assert_eq!(requests.with_label_values(&["lookup", "timeout"]).get(), 1);
    }
}
