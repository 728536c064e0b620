//! A blob filled from the upstream goes into the bucket while it fills ([`Tier::tee`]), rather
//! than from the committed file afterwards: in the bucket as soon as the bucket can take it, with
//! no second hash of its bytes.
//!
//! The upload is one more reader of the fill, like a client's: it follows the fill's progress
//! (`store::read_range` over the fill), taking bytes from memory while it keeps up and from the
//! pending file once it falls behind, so a bucket slower than the upstream never slows the pull
//! and never makes the upload hold more than its own parts in memory
//! (`part_size * (parts_in_flight + 1)`). Like every reader of a fill, it cannot get the blob's
//! last byte before the digest matched: a failed fill ends its body in an error, and the
//! upload aborts. On top of that the upload is vouched
//! ([`Bucket::put_blob_vouched`](crate::store::s3::Bucket::put_blob_vouched)): it is completed
//! only once the fill's state says verified, never on the body's end alone. So nothing unverified
//! is ever under a digest's key, as with the upload from the file, and the bytes are hashed once,
//! by the fill, instead of twice.
//!
//! A fill that turns into a pass-through from memory (the disk is full) calls its tee off
//! ([`Tee::call_off`]): a fill from memory waits for its slowest reader, and an upload must not
//! set the pull's pace. Such a blob is not uploaded (nor was it before: no file to read it from).
//!
//! A bucket error mid-way is reported like any failed upload and not retried here: the share's
//! backfill puts back what was pulled but is missing from the bucket (`share`).
//!
//! Rule of dependency: part of `tier`; uses `store` (the fill's reader and state, the vouched
//! upload) and `oci`.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::Tier;
use crate::oci::Digest;
use crate::store::s3::{BucketError, Stored};
use crate::store::{FillState, Source, read_range};

/// The fill's handle on its blob's upload; see the module docs. Dropping it leaves the upload
/// following the fill (the fill job ends at its commit, the upload may still be catching up).
pub struct Tee {
    call_off: watch::Sender<bool>,
}

impl Tee {
    /// Ends the upload now, aborted (the fill passes through memory: see the module docs).
    pub fn call_off(&mut self) {
        self.call_off.send_replace(true);
    }
}

/// Resolves when the tee is called off; never when its handle is merely dropped.
async fn called_off(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|off| *off).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether a fill's state is verified bytes: `true` once the digest matched, `false` when the
/// fill failed or is gone.
async fn verified(mut fill: watch::Receiver<FillState>) -> bool {
    loop {
        match &*fill.borrow_and_update() {
            FillState::Verified(_) | FillState::Committed(_) => return true,
            FillState::Failed(_) => return false,
            FillState::Pending | FillState::Writing(_) => {}
        }
        if fill.changed().await.is_err() {
            return false;
        }
    }
}

impl Tier {
    /// Starts uploading `digest` (of `size` bytes, when known) from its running fill, then records
    /// that it came through `upstream`. `None` when every upload slot is taken: the fill uploads
    /// from its file once committed ([`Tier::upload`]).
    pub fn tee(
        self: &Arc<Self>,
        fill: watch::Receiver<FillState>,
        digest: &Digest,
        size: Option<u64>,
        upstream: &str,
    ) -> Option<Tee> {
        let permit = self.uploads.clone().try_acquire_owned().ok()?;
        let (call_off, off) = watch::channel(false);
        // Registered as a reader of the fill now, before the fill moves on.
        let body =
            read_range(Source::Fill(fill.clone()), 0, None).take_until(called_off(off.clone()));
        let verdict = {
            let fill = fill.clone();
            async move {
                tokio::select! {
                    v = verified(fill) => v,
                    () = called_off(off) => false,
                }
            }
        };
        let (tier, digest, upstream) = (self.clone(), digest.clone(), upstream.to_owned());
        tokio::spawn(async move {
            let _permit = permit;
            let stored = tier
                .bucket
                .put_blob_vouched(&digest, size, body, verdict)
                .await;
            match stored {
                Ok(Stored::Uploaded) => {
                    tracing::info!(%digest, "blob uploaded to the bucket beside its fill");
                    tier.put_origin(&upstream, &digest).await;
                }
                // Another replica put it there: the origin is recorded once this fill has shown
                // that the upstream serves those bytes.
                Ok(Stored::AlreadyThere) => {
                    if verified(fill).await {
                        tier.put_origin(&upstream, &digest).await;
                    }
                }
                // The fill failed, or called the tee off: nothing stored, as it should be.
                Err(BucketError::Unverified | BucketError::Source(_)) => {}
                Err(e) => tier.failed(&format!("uploading {digest}"), &e),
            }
        });
        Some(Tee { call_off })
    }
}
