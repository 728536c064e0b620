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
//! The decision table itself is a pure function (`decide`, tested row by row); [`may_serve`]
//! gathers the evidence it asks for and does what it says.
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
    let evidence = match copy {
        Place::Local { origins, slot } => Evidence::Local(origins.check(slot, digest)),
        Place::Bucket { ask_if_unknown } => Evidence::Bucket { ask_if_unknown },
    };
    let mut step = decide(evidence, Marker::NotAsked);
    let origin = up.name().to_ascii_lowercase();
    if step == Step::AskBucket {
        // Another replica may have recorded this upstream in the bucket.
        let marked = match tier {
            Some(tier) => {
                tier.lookup("head origin", tier.bucket().has_origin(&origin, digest))
                    .await
            }
            None => None,
        };
        step = decide(evidence, marked.map_or(Marker::CannotSay, Marker::Says));
    }
    let remember = match step {
        Step::Recorded => return Ok(Verdict::Recorded),
        Step::Marked(remember) => {
            if let (Some(Remember::Records), Place::Local { origins, slot }) = (remember, copy) {
                origins.record(slot, &origin, digest);
            }
            return Ok(Verdict::Marked);
        }
        Step::Unknown => return Ok(Verdict::Unknown),
        Step::AskUpstream(remember) => remember,
        Step::AskBucket => unreachable!("the bucket's marker was looked up"),
    };
    let resp = up.send(head()).await?.error_for_status(kind).await?;
    metrics.origin_confirmations.inc();
    match (remember, copy) {
        (Remember::Records, Place::Local { origins, slot }) => {
            origins.record(slot, &origin, digest)
        }
        (Remember::Bucket, _) => {
            if let Some(tier) = tier {
                tier.mark_origin(origin, digest.clone());
            }
        }
        (Remember::Records, Place::Bucket { .. }) => {}
    }
    Ok(Verdict::Confirmed(resp))
}

/// The evidence about the copy before any I/O: the local records' word, or that the copy is in
/// the bucket (which has no records here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    Local(Provenance),
    Bucket { ask_if_unknown: bool },
}

/// The bucket's origin marker for the upstream: not looked up yet, its word, or it could not say
/// (no bucket, or the lookup failed or was skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    NotAsked,
    Says(bool),
    CannotSay,
}

/// Where a yes is remembered: the local records, or the bucket's origin marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remember {
    Records,
    Bucket,
}

/// What the evidence so far decides ([`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Served on the local records: recorded here, or cached before records were kept.
    Recorded,
    /// The records do not settle it: look up the bucket's marker and decide again.
    AskBucket,
    /// Served on the bucket's marker, remembered where it says (nowhere more for a bucket copy).
    Marked(Option<Remember>),
    /// Ask the upstream's HEAD; a yes is remembered where it says, a no is the answer.
    AskUpstream(Remember),
    /// Nobody could say, and the upstream is not asked (a bucket copy only).
    Unknown,
}

/// The decision table of [`may_serve`], without its I/O: called first with [`Marker::NotAsked`],
/// and again with the marker when it answers [`Step::AskBucket`].
fn decide(evidence: Evidence, marker: Marker) -> Step {
    match (evidence, marker) {
        (Evidence::Local(Provenance::Recorded | Provenance::Unrecorded), _) => Step::Recorded,
        (_, Marker::NotAsked) => Step::AskBucket,
        (Evidence::Local(_), Marker::Says(true)) => Step::Marked(Some(Remember::Records)),
        (Evidence::Bucket { .. }, Marker::Says(true)) => Step::Marked(None),
        (
            Evidence::Bucket {
                ask_if_unknown: false,
            },
            Marker::CannotSay,
        ) => Step::Unknown,
        (Evidence::Local(_), _) => Step::AskUpstream(Remember::Records),
        (Evidence::Bucket { .. }, _) => Step::AskUpstream(Remember::Bucket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Provenance::{Elsewhere, Recorded, Unrecorded};

    const BUCKET_ASKS: Evidence = Evidence::Bucket {
        ask_if_unknown: true,
    };
    const BUCKET_STOPS: Evidence = Evidence::Bucket {
        ask_if_unknown: false,
    };
    const MARKERS: [Marker; 4] = [
        Marker::NotAsked,
        Marker::Says(true),
        Marker::Says(false),
        Marker::CannotSay,
    ];

    /// Every row of the table, written out: evidence, the bucket's marker, what follows.
    #[test]
    fn the_decision_table() {
        let table = [
            // A copy on this disk: the records first. Recorded here, or cached before records
            // were kept: served, and the bucket is never looked at, whatever it would say.
            (Evidence::Local(Recorded), Marker::NotAsked, Step::Recorded),
            (
                Evidence::Local(Recorded),
                Marker::Says(true),
                Step::Recorded,
            ),
            (
                Evidence::Local(Recorded),
                Marker::Says(false),
                Step::Recorded,
            ),
            (Evidence::Local(Recorded), Marker::CannotSay, Step::Recorded),
            (
                Evidence::Local(Unrecorded),
                Marker::NotAsked,
                Step::Recorded,
            ),
            (
                Evidence::Local(Unrecorded),
                Marker::Says(true),
                Step::Recorded,
            ),
            (
                Evidence::Local(Unrecorded),
                Marker::Says(false),
                Step::Recorded,
            ),
            (
                Evidence::Local(Unrecorded),
                Marker::CannotSay,
                Step::Recorded,
            ),
            // Recorded for other upstreams only: the bucket's marker, then the upstream; a yes
            // from either is recorded here.
            (
                Evidence::Local(Elsewhere),
                Marker::NotAsked,
                Step::AskBucket,
            ),
            (
                Evidence::Local(Elsewhere),
                Marker::Says(true),
                Step::Marked(Some(Remember::Records)),
            ),
            (
                Evidence::Local(Elsewhere),
                Marker::Says(false),
                Step::AskUpstream(Remember::Records),
            ),
            (
                Evidence::Local(Elsewhere),
                Marker::CannotSay,
                Step::AskUpstream(Remember::Records),
            ),
            // A copy in the bucket: no local records; the marker, then the upstream, whose yes
            // is marked in the bucket. A bucket that cannot say stops here unless told to ask.
            (BUCKET_ASKS, Marker::NotAsked, Step::AskBucket),
            (BUCKET_ASKS, Marker::Says(true), Step::Marked(None)),
            (
                BUCKET_ASKS,
                Marker::Says(false),
                Step::AskUpstream(Remember::Bucket),
            ),
            (
                BUCKET_ASKS,
                Marker::CannotSay,
                Step::AskUpstream(Remember::Bucket),
            ),
            (BUCKET_STOPS, Marker::NotAsked, Step::AskBucket),
            (BUCKET_STOPS, Marker::Says(true), Step::Marked(None)),
            (
                BUCKET_STOPS,
                Marker::Says(false),
                Step::AskUpstream(Remember::Bucket),
            ),
            (BUCKET_STOPS, Marker::CannotSay, Step::Unknown),
        ];
        // Exhaustive: every evidence with every marker, once.
        let mut seen = std::collections::HashSet::new();
        for (evidence, marker, want) in table {
            assert!(
                seen.insert(format!("{evidence:?} {marker:?}")),
                "row twice: {evidence:?} {marker:?}"
            );
            assert_eq!(decide(evidence, marker), want, "{evidence:?}, {marker:?}");
        }
        assert_eq!(seen.len(), 5 * MARKERS.len());
    }

    /// The properties the table exists for, checked over every input.
    #[test]
    fn the_rules_behind_the_table() {
        let all = [
            Evidence::Local(Recorded),
            Evidence::Local(Unrecorded),
            Evidence::Local(Elsewhere),
            BUCKET_ASKS,
            BUCKET_STOPS,
        ];
        for evidence in all {
            for marker in MARKERS {
                let step = decide(evidence, marker);
                // Once the marker is in hand, the table decides: it never asks for it again.
                if marker != Marker::NotAsked {
                    assert_ne!(step, Step::AskBucket, "{evidence:?} {marker:?}");
                }
                // Only the records serve without a marker or the upstream's word.
                if step == Step::Recorded {
                    assert!(
                        matches!(evidence, Evidence::Local(Recorded | Unrecorded)),
                        "{evidence:?} {marker:?}"
                    );
                }
                // A marker that says no never serves: the upstream is asked.
                if marker == Marker::Says(false) && evidence == Evidence::Local(Elsewhere) {
                    assert!(matches!(step, Step::AskUpstream(_)));
                }
                // A yes is remembered where the copy lives: a local copy's in the records, a
                // bucket copy's in the bucket (whose marker, when it said yes, is already there).
                match (evidence, step) {
                    (Evidence::Local(_), Step::AskUpstream(r) | Step::Marked(Some(r))) => {
                        assert_eq!(r, Remember::Records)
                    }
                    (Evidence::Bucket { .. }, Step::AskUpstream(r)) => {
                        assert_eq!(r, Remember::Bucket)
                    }
                    (Evidence::Local(_), Step::Marked(None)) => {
                        panic!("a local copy's marked yes not recorded: {marker:?}")
                    }
                    (Evidence::Bucket { .. }, Step::Marked(r)) => assert_eq!(r, None),
                    _ => {}
                }
                // Unknown only for a bucket copy told not to ask, whose bucket could not say.
                if step == Step::Unknown {
                    assert_eq!((evidence, marker), (BUCKET_STOPS, Marker::CannotSay));
                }
            }
        }
    }
}
