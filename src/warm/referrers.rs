//! `--referrers`: an image's referrers (OCI 1.1: the signatures, SBOMs and attestations that name
//! one of its manifests as their `subject`) and theirs, one level, added to what the image takes.
//!
//! For every manifest the image's walk fetched (its own, and each platform's of an index, so
//! per-platform signatures come too) berth's referrers endpoint is asked for the unfiltered list:
//! asking through berth is what caches the list there for offline use. Each referrer listed is
//! walked like an image, by digest in the image's repository, with every platform (a referrer
//! that is an index is one artifact, not a choice of platforms), and its blobs join the image's,
//! so phase 2 fetches them with the rest, each digest once. Then the referrers of those referrers
//! are listed and walked the same way (a signature of an SBOM), and no further. Trade-off: chains
//! deeper than two are rare, and the bound keeps a looping or hostile list from growing a run
//! without end; a digest already walked is never walked again.
//!
//! A referrer that cannot be listed or fetched fails its image, named by its digest; a blob that
//! only a referrer needs is recorded with that referrer, so a failure in phase 2 names it too.
//!
//! Rule of dependency: uses `manifest` (the walk), `client`, `reference` and `failure` from
//! `warm`; from the crate only `oci` (digests, references). `manifest` knows nothing of it.

use std::collections::HashSet;

use futures_util::future::join_all;

use super::failure::Failure;
use super::manifest::{Resolved, Walker};
use super::reference::ImageRef;
use crate::oci::{Digest, Reference};

/// Referrers of the image, then referrers of those: two levels of lists.
const LEVELS: usize = 2;

/// Adds to `res` (the image `r`, resolved) its referrers and theirs, with their manifests and
/// blobs; counts them in `res.referrers`.
pub async fn add(walker: &Walker<'_>, r: &ImageRef, res: &mut Resolved) -> Result<(), Failure> {
    let walker = Walker {
        berth: walker.berth,
        limit: walker.limit,
        platforms: &[],
    };
    let walker = &walker;
    let mut known: HashSet<Digest> = res.digests.iter().cloned().collect();
    let mut blobs: HashSet<Digest> = res.blobs.iter().map(|b| b.digest.clone()).collect();
    let mut subjects = res.digests.clone();
    for _ in 0..LEVELS {
        if subjects.is_empty() {
            break;
        }
        let lists = join_all(subjects.iter().map(|s| async move {
            let _permit = walker.limit.acquire().await.expect("never closed");
            walker
                .berth
                .list_referrers(r, s)
                .await
                .map_err(|e| e.context(format!("referrers of {s}")))
        }))
        .await;
        let mut listed = Vec::new();
        for list in lists {
            for d in list? {
                // The list's parser admits sha256 digests only: this never skips a referrer.
                if let Ok(d) = d.digest.parse::<Digest>()
                    && known.insert(d.clone())
                {
                    listed.push(d);
                }
            }
        }
        let walked = join_all(listed.iter().map(|d| async move {
            walker
                .resolve_at(r, Reference::Digest(d.clone()))
                .await
                .map_err(|e| e.context(format!("referrer {d}")))
        }))
        .await;
        for (d, sub) in listed.iter().zip(walked) {
            let sub = sub?;
            res.referrers += 1;
            res.manifests += sub.manifests;
            known.extend(sub.digests);
            for b in sub.blobs {
                if blobs.insert(b.digest.clone()) {
                    res.via.insert(b.digest.clone(), d.clone());
                    res.blobs.push(b);
                }
            }
        }
        subjects = listed;
    }
    Ok(())
}
