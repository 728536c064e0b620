//! "May this upstream serve this digest?", answered once for every place that asks: the mirror
//! before it answers a cached manifest or blob through an upstream, and before it answers a HEAD
//! from the bucket; a fill before it reads a blob from the bucket; the mirror again before it
//! answers a manifest from the bucket.
//!
//! The evidence, in order: this berth's records ([`Origins`], only for a copy on this berth's
//! disk); the bucket's origin marker for the upstream (written by whichever replica fetched
//! through it); else the upstream's own answer to a HEAD. A yes from the bucket or the upstream
//! is remembered where the copy lives (the local records for a local copy, the bucket's marker for
//! a bucket copy), and an upstream's yes is counted (`berth_origin_confirmations_total`). A no is
//! the upstream's own answer (404, 403, 503), exactly what a miss would have got, so a client
//! learns nothing about what is cached.
//!
//! Rule of dependency: uses its parent's records, `tier` (the bucket's markers), `upstream` (the
//! HEAD, built by the caller), `metrics`, `oci`, `error`; `mirror` and `fill` use it.

use std::sync::Arc;

use super::{Origins, Provenance};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::tier::Tier;
use crate::upstream::{NotFoundKind, Upstream, UpstreamRequest, UpstreamResponse};

/// Where the copy that would answer lives: that decides which evidence counts and where a yes
/// is remembered.
#[derive(Clone, Copy)]
pub enum Place<'a> {
    /// On this berth's disk, recorded in `origins` under the upstream's `slot`: the records are
    /// asked first (a digest with no record at all was cached before records were kept, and is
    /// served as before), and a yes from the bucket or the upstream is recorded there. A bucket
    /// that cannot say leaves the upstream to ask.
    Local { origins: &'a Origins, slot: usize },
    /// In the bucket: an upstream's yes is marked in the bucket. `ask_if_unknown`: whether a
    /// bucket that cannot say (failed, skipped) leaves the upstream to ask, or the answer is
    /// [`Verdict::Unknown`] (the caller does not use the bucket's copy).
    Bucket { ask_if_unknown: bool },
}

/// Why the upstream may serve the digest (or that nobody could say).
pub enum Verdict {
    /// Recorded for this upstream here, or cached before records were kept.
    Recorded,
    /// The bucket's origin marker for this upstream.
    Marked,
    /// The upstream answered the HEAD with content just now: its answer (a size, for a HEAD).
    Confirmed(UpstreamResponse),
    /// The bucket could not say and the upstream was not asked (a bucket copy only).
    Unknown,
}

/// Whether `up` may serve `digest` from `copy`; `head` builds the HEAD that asks the upstream
/// (for a `kind` of content), only when it must be asked. An error is the upstream's own no.
pub async fn may_serve(
    up: &Upstream,
    digest: &Digest,
    copy: Place<'_>,
    tier: Option<&Arc<Tier>>,
    metrics: &Metrics,
    kind: NotFoundKind,
    head: impl FnOnce() -> UpstreamRequest,
) -> Result<Verdict, Error> {
    if let Place::Local { origins, slot } = copy
        && origins.check(slot, digest) != Provenance::Elsewhere
    {
        return Ok(Verdict::Recorded);
    }
    let origin = up.name().to_ascii_lowercase();
    // Another replica may have recorded this upstream in the bucket.
    let marked = match tier {
        Some(tier) => {
            tier.lookup("head origin", tier.bucket().has_origin(&origin, digest))
                .await
        }
        None => None,
    };
    match (marked, copy) {
        (Some(true), Place::Local { origins, slot }) => {
            origins.record(slot, &origin, digest);
            return Ok(Verdict::Marked);
        }
        (Some(true), Place::Bucket { .. }) => return Ok(Verdict::Marked),
        (
            None,
            Place::Bucket {
                ask_if_unknown: false,
            },
        ) => return Ok(Verdict::Unknown),
        _ => {}
    }
    let resp = up.send(head()).await?.error_for_status(kind).await?;
    metrics.origin_confirmations.inc();
    match copy {
        Place::Local { origins, slot } => origins.record(slot, &origin, digest),
        Place::Bucket { .. } => {
            if let Some(tier) = tier {
                tier.mark_origin(origin, digest.clone());
            }
        }
    }
    Ok(Verdict::Confirmed(resp))
}
