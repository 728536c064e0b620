//! The mirror's side of the bucket tier (`[storage.s3]`, [`crate::tier`]) for manifests and tags
//! (a blob fill's bucket source is `fill::job`'s): manifests and tag records read on a local miss
//! and written when an upstream answered. Every read goes through `Tier::lookup` (bounded,
//! skipped after an error), and content is answered through an upstream only with that
//! upstream's origin marker in the bucket, or its confirmation now ([`crate::origins::check`]).
//!
//! Rule of dependency: uses `tier`, `origins`, `manifests`, `upstream`, `oci`, `error`, its
//! parent's `Mirror` and its sibling `manifest`'s upstream request builder.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use super::manifest::{Form, manifest_request};
use super::{Mirror, Target};
use crate::error::Error;
use crate::manifests::{MAX_MANIFEST_BYTES, Manifest, TagEntry, TagKey};
use crate::oci::{Digest, Reference};
use crate::origins::check::{self, Place, Verdict};
use crate::upstream::{NotFoundKind, Upstream};

impl Mirror {
    /// A manifest from the local cache, else from the bucket ([`Self::bucket_manifest`]).
    pub(super) async fn cached_manifest(
        &self,
        target: &Target,
        up: &Upstream,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        if let Some(m) = self.manifests.get(digest).await? {
            return Ok(Some(m));
        }
        self.bucket_manifest(target, up, digest).await
    }

    /// A manifest the bucket holds (its digest checked by the bucket client), when it may be
    /// answered through the target's upstream: the bucket records that upstream, or the upstream
    /// confirms it has the digest now (an error: its own answer). Cached locally on the way.
    /// `None`: no bucket, not there, or the bucket failed.
    pub(super) async fn bucket_manifest(
        &self,
        target: &Target,
        up: &Upstream,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        let Some(tier) = &self.tier else {
            return Ok(None);
        };
        let bucket = tier.bucket();
        let Some(Some((media_type, body))) = tier
            .lookup(
                "get manifest",
                bucket.get_manifest(digest, MAX_MANIFEST_BYTES as u64),
            )
            .await
        else {
            return Ok(None);
        };
        let place = Place::Bucket {
            ask_if_unknown: false,
        };
        let head = || {
            manifest_request(
                Method::HEAD,
                &target.name,
                &Reference::Digest(digest.clone()),
                Form::Stored,
            )
        };
        let verdict = check::may_serve(
            up,
            digest,
            place,
            Some(tier),
            &self.metrics,
            NotFoundKind::Manifest,
            head,
        )
        .await?;
        if let Verdict::Unknown = verdict {
            return Ok(None);
        }
        let m = Arc::new(Manifest::new(digest.clone(), media_type, body));
        if let Err(e) = self.manifests.put(m.clone()).await {
            tracing::warn!(%digest, error = %e, "could not cache a manifest from the bucket; served it from memory");
        }
        self.record_origin(target.upstream, up, digest);
        Ok(Some(m))
    }

    /// The bucket's record of a tag another replica resolved, as a local tag answer (its age
    /// kept: fresh for `tag_ttl` from when it was resolved).
    pub(super) async fn bucket_tag(&self, up: &Upstream, key: &TagKey) -> Option<TagEntry> {
        let tier = self.tier.as_ref()?;
        let record = tier
            .lookup(
                "get tag",
                tier.bucket().get_tag(
                    &up.name().to_ascii_lowercase(),
                    key.repo.as_str(),
                    key.tag.as_str(),
                ),
            )
            .await??;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let age = Duration::from_secs(now.saturating_sub(record.resolved_at));
        Some(TagEntry {
            digest: record.digest.parse().ok()?,
            media_type: record.media_type,
            checked: Instant::now().checked_sub(age),
        })
    }

    /// Records in the bucket what a tag resolved to now (with a bucket).
    pub(super) fn bucket_put_tag(&self, up: &Upstream, key: &TagKey, m: &Manifest) {
        if let Some(tier) = &self.tier {
            tier.put_tag(
                up.name().to_ascii_lowercase(),
                key.repo.as_str().to_owned(),
                key.tag.as_str().to_owned(),
                &m.digest,
                &m.media_type,
            );
        }
    }
}
