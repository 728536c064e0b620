//! A blob filled from the upstream goes into the bucket while it streams ([`Tee`]), rather than
//! from the committed file afterwards: in the bucket as soon as it is verified, and with no
//! second read of the file and no second sha256 of its bytes.
//!
//! The fill hands the tee each chunk it hashes, in the order it hashes them (the very `Bytes`,
//! shared, not copied), and at the end its verdict; the upload
//! ([`Bucket::put_blob_vouched`](crate::store::s3::Bucket::put_blob_vouched)) sends parts as they
//! fill and completes only on a verdict of "verified". Every other way out aborts it: wrong
//! bytes, a failed fill, a fill dropped mid-way (the verdict's sender goes with it). So nothing
//! unverified is ever under a digest's key, as with the upload from the file, whose own hash the
//! fill's replaces: both are sha256 over the same bytes.
//!
//! A bucket slower than the upstream must not slow the pull: the fill never waits for the tee.
//! When the bytes handed over but not yet taken by the upload pass [`BACKLOG`], the tee is called
//! off (the upload aborts) and the fill uploads from its committed file afterwards, as before
//! ([`Tier::upload`]); the same when all [`MAX_UPLOADS`](super::MAX_UPLOADS) upload slots are
//! busy as the fill starts. Memory: at most [`BACKLOG`] plus the upload's own parts
//! (`part_size * (parts_in_flight + 1)`) per tee.
//!
//! A bucket error mid-way is reported like any failed upload and not retried here: the share's
//! backfill puts back what was pulled but is missing from the bucket (`share`).
//!
//! Rule of dependency: part of `tier`; uses `store::s3` (the vouched upload) and `oci`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::Tier;
use crate::oci::Digest;
use crate::store::s3::{BucketError, Stored};

/// Most bytes handed to a tee and not yet taken by its upload; beyond, the tee is given up.
pub const BACKLOG: u64 = 16 * 1024 * 1024;

/// The fill's end of a blob streaming into the bucket; see the module docs.
pub struct Tee {
    chunks: Option<mpsc::UnboundedSender<Bytes>>,
    /// Bytes sent on `chunks` and not yet taken by the upload.
    backlog: Arc<AtomicU64>,
    verdict: watch::Sender<Option<bool>>,
    /// The upload fell [`BACKLOG`] behind and was called off.
    given_up: bool,
}

impl Tee {
    /// Hands the upload the fill's next chunk (never waits). Past [`BACKLOG`] behind, the upload
    /// is called off; the fill then uploads from its file ([`finish`](Self::finish) says so).
    pub fn push(&mut self, chunk: &Bytes) {
        let Some(tx) = &self.chunks else {
            return;
        };
        let len = chunk.len() as u64;
        if self.backlog.fetch_add(len, Ordering::AcqRel) + len > BACKLOG {
            self.given_up = true;
            self.chunks = None;
            self.verdict.send_replace(Some(false));
            return;
        }
        if tx.send(chunk.clone()).is_err() {
            // The upload ended on its own (the bucket had the blob, or failed): it says so itself.
            self.chunks = None;
        }
    }

    /// The fill's verdict on every byte it handed over: the upload completes only on `true`.
    /// Returns whether the blob is still the fill's to upload (from its file): the tee was
    /// called off for falling behind.
    pub fn finish(mut self, verified: bool) -> bool {
        self.chunks = None;
        if !self.given_up {
            self.verdict.send_replace(Some(verified));
        }
        self.given_up
    }
}

impl Tier {
    /// Starts streaming `digest` (of `size` bytes, when known) into the bucket beside its fill,
    /// then records that it came through `upstream`. `None` when every upload slot is taken:
    /// the fill uploads from its file afterwards ([`Tier::upload`]).
    pub fn tee(
        self: &Arc<Self>,
        digest: &Digest,
        size: Option<u64>,
        upstream: &str,
    ) -> Option<Tee> {
        let permit = self.uploads.clone().try_acquire_owned().ok()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let backlog = Arc::new(AtomicU64::new(0));
        let (verdict, verdict_rx) = watch::channel(None);
        let taken = backlog.clone();
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |c| {
            taken.fetch_sub(c.len() as u64, Ordering::AcqRel);
            Ok::<_, std::convert::Infallible>(c)
        });
        let (tier, digest, upstream) = (self.clone(), digest.clone(), upstream.to_owned());
        let mut fill_verdict = verdict_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stored = tier
                .bucket
                .put_blob_vouched(&digest, size, body, verdict_rx)
                .await;
            match stored {
                Ok(Stored::Uploaded) => {
                    tracing::info!(%digest, "blob uploaded to the bucket as it was filled");
                    tier.put_origin(&upstream, &digest).await;
                }
                // Another replica put it there: the origin is recorded once this fill has shown
                // that the upstream serves those bytes.
                Ok(Stored::AlreadyThere) => {
                    let verified = fill_verdict
                        .wait_for(Option::is_some)
                        .await
                        .is_ok_and(|v| *v == Some(true));
                    if verified {
                        tier.put_origin(&upstream, &digest).await;
                    }
                }
                // The fill failed, was dropped or called the tee off: nothing was stored, as it
                // should be.
                Err(BucketError::Unverified) => {}
                Err(e) => tier.failed(&format!("uploading {digest}"), &e),
            }
        });
        Some(Tee {
            chunks: Some(tx),
            backlog,
            verdict,
            given_up: false,
        })
    }
}
