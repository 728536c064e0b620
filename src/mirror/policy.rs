//! The signature policy at the mirror: before a manifest is answered through a scope a
//! `[[policy]]` covers, its verdict ([`crate::policy`]). The mirror fetches the material the
//! verdict is decided from, as content like any other: cosign's `sha256-<hex>.sig` manifest by tag
//! (cached, revalidated, served stale like any tag) and each signature's payload blob, and the
//! Sigstore bundles among the digest's referrers (the referrers list, each referrer manifest, its
//! bundle blob and the simple-signing payload blob beside a message signature), all verified by
//! digest and cached, so an image verified once verifies again with every upstream down.
//!
//! One verification per (policy revision, upstream, repository, digest) runs at a time; requests
//! arriving meanwhile share its verdict (a flight). Blobs are answered only when a manifest served
//! under the policy names them ([`Mirror::check_blob_policy`]). A verified verdict is kept (`Verdicts`); a
//! denial is decided again on the next request. An upstream that fails while the material is
//! fetched gives its own error, not a denial (nothing was decided), unless what failed was one
//! payload among several, which then counts as that signature unreadable.
//!
//! Rule of dependency: uses `policy`, `flight`, `oci`, `error`, `metrics` and its parent's
//! `Mirror`, with the siblings `manifest` (the tag lookup), `referrers` and `blob` (the payload
//! reads).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::manifest::Form;
use super::{Mirror, Target};
use crate::config::PolicyMode;
use crate::error::Error;
use crate::manifests::Manifest;
use crate::oci::{Digest, Reference, RepoName};
use crate::policy::{self, BundleFound, Found, Material, Policy, Verdict, bundle, cosign};

/// What a verification in flight is for: everything that decides its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct VerdictKey {
    revision: u64,
    upstream: usize,
    repo: RepoName,
    digest: Digest,
}

impl Mirror {
    /// Whether `m`, looked up for `target`, may be answered under the policies; the denial
    /// (403 `DENIED`, the policy and the reason) if not.
    pub(super) async fn check_policy(
        self: &Arc<Self>,
        target: &Target,
        m: &Manifest,
    ) -> Result<(), Error> {
        let policies = self.policies.load();
        if policies.is_empty() {
            return Ok(());
        }
        let upstream = self.upstream_name(target.upstream);
        let Some(policy) = policies.scope(&upstream, &target.name).cloned() else {
            return Ok(());
        };
        let (children, blobs) = policy::named(&m.bytes);
        if !policy::is_runnable(&m.media_type, &m.bytes) {
            // Signatures, SBOMs, attestations, referrers lists: the material clients verify
            // with. Their blobs are served; what they name never lets a manifest through.
            self.verdicts.allow_blobs(&policy, blobs);
            return Ok(());
        }
        let verdict = if self.verdicts.is_child(&policy, &m.digest) {
            Verdict::Verified {
                key: "a verified index".into(),
            }
        } else if let Some(key) = self.verdicts.verified(&policy, &m.digest) {
            Verdict::Verified { key }
        } else {
            self.verify(target, &policy, &m.digest).await?
        };
        let reason = match verdict {
            Verdict::Verified { .. } => None,
            Verdict::Denied { reason } => Some(reason),
        };
        self.judge(&policy, target, &m.digest, reason)?;
        self.verdicts.allow_children(&policy, children);
        self.verdicts.allow_blobs(&policy, blobs);
        Ok(())
    }

    /// Whether a blob may be answered under the policies: one that a manifest served under the
    /// policy covering its scope names (see `policy`).
    pub(super) fn check_blob_policy(&self, target: &Target, digest: &Digest) -> Result<(), Error> {
        let policies = self.policies.load();
        if policies.is_empty() {
            return Ok(());
        }
        let upstream = self.upstream_name(target.upstream);
        let Some(policy) = policies.scope(&upstream, &target.name) else {
            return Ok(());
        };
        if self.verdicts.is_named_blob(policy, digest) {
            return self.judge(policy, target, digest, None);
        }
        let reason = format!(
            "policy {:?}: blob {digest} is named by no manifest served under this policy (pull it through an image whose signature verifies)",
            policy.name
        );
        self.judge(policy, target, digest, Some(reason))
    }

    /// Counts and logs a verdict; the denial (`reason`) as an error in `enforce` mode.
    fn judge(
        &self,
        policy: &Policy,
        target: &Target,
        digest: &Digest,
        reason: Option<String>,
    ) -> Result<(), Error> {
        let count = |v: &str| {
            self.metrics
                .policy_verdicts
                .with_label_values(&[&policy.name, v])
                .inc();
        };
        let Some(reason) = reason else {
            count("verified");
            return Ok(());
        };
        let upstream = self.upstream_name(target.upstream);
        match policy.mode {
            PolicyMode::Enforce => {
                count("denied");
                tracing::warn!(policy = %policy.name, upstream, repo = %target.name, %digest, %reason, "denied by the signature policy");
                Err(Error::policy_denied(reason))
            }
            PolicyMode::Warn => {
                count("warned");
                tracing::warn!(policy = %policy.name, upstream, repo = %target.name, %digest, %reason, "served without a good signature (policy in warn mode)");
                Ok(())
            }
        }
    }

    /// Decides a verdict, sharing one verification among concurrent requests.
    async fn verify(
        self: &Arc<Self>,
        target: &Target,
        policy: &Arc<Policy>,
        digest: &Digest,
    ) -> Result<Verdict, Error> {
        let key = VerdictKey {
            revision: policy.revision,
            upstream: target.upstream,
            repo: target.name.clone(),
            digest: digest.clone(),
        };
        let upstream = self.upstream_name(target.upstream);
        let (this, target, policy, digest) =
            (self.clone(), target.clone(), policy.clone(), digest.clone());
        let joined = self.verdict_flights.join(key, move || async move {
            let verdict = this.gather_and_decide(&target, &policy, &digest).await?;
            if let Verdict::Verified { key } = &verdict {
                // Kept before the flight ends, so a request arriving then finds it.
                this.verdicts.set_verified(&policy, &digest, key.clone());
            }
            Ok(verdict)
        });
        let (verdict, _) = self.flight_result(joined, "verdict", &upstream).await?;
        Ok(verdict)
    }

    /// Fetches the signatures of `digest` (cosign's tag scheme, and Sigstore bundles among its
    /// referrers) and decides. An upstream failure is the answer only when nothing was found.
    async fn gather_and_decide(
        self: &Arc<Self>,
        target: &Target,
        policy: &Policy,
        digest: &Digest,
    ) -> Result<Verdict, Error> {
        let mut material = Material::default();
        let mut failed = None;
        let tag = Reference::Tag(cosign::signature_tag(digest));
        match self.lookup_manifest(target, &tag, Form::Stored).await {
            Ok(reply) => {
                let layers = cosign::signature_layers(&reply.manifest.bytes).unwrap_or_default();
                let mut found = Vec::with_capacity(layers.len());
                for layer in layers {
                    let payload = self
                        .read_small(target, &layer.payload, layer.size, cosign::MAX_PAYLOAD)
                        .await;
                    found.push(Found { layer, payload });
                }
                material.signatures = Some(found);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => failed = Some(e),
        }
        match self
            .referrers(target, digest, Some(bundle::BUNDLE_V03))
            .await
        {
            Ok(list) => {
                for d in list.list.iter().take(cosign::MAX_SIGNATURES) {
                    let Ok(referrer) = d.digest.parse::<Digest>() else {
                        continue;
                    };
                    let (bundle, payload) = self.read_bundle(target, &referrer).await;
                    material.bundles.push(BundleFound {
                        referrer,
                        bundle,
                        payload,
                    });
                }
            }
            Err(e) => failed = failed.or(Some(e)),
        }
        let nothing =
            material.signatures.as_ref().is_none_or(Vec::is_empty) && material.bundles.is_empty();
        match failed {
            Some(e) if nothing => Err(e),
            _ => Ok(policy::decide(policy, digest, &material)),
        }
    }

    /// The bundle a referrer manifest carries (its first layer of the bundle type), and the
    /// simple-signing payload beside it (its first layer of that type, if any: what a message
    /// signature is over; see `policy::bundle`).
    async fn read_bundle(
        self: &Arc<Self>,
        target: &Target,
        referrer: &Digest,
    ) -> (Result<Bytes, String>, Option<Result<Bytes, String>>) {
        let layers = match self
            .lookup_manifest(target, &Reference::Digest(referrer.clone()), Form::Stored)
            .await
        {
            Ok(reply) => match serde_json::from_slice::<serde_json::Value>(&reply.manifest.bytes) {
                Ok(v) => v.get("layers").cloned().unwrap_or_default(),
                Err(_) => return (Err("its manifest is not JSON".to_owned()), None),
            },
            Err(e) => return (Err(format!("its manifest could not be read: {e}")), None),
        };
        let layer = |media_type: &str| {
            layers.as_array().and_then(|l| {
                l.iter()
                    .find(|l| l.get("mediaType").and_then(|t| t.as_str()) == Some(media_type))
            })
        };
        let bundle = match layer(bundle::BUNDLE_V03) {
            Some(l) => {
                self.read_layer(target, l, "bundle", bundle::MAX_BUNDLE)
                    .await
            }
            None => Err("its manifest has no bundle layer".to_owned()),
        };
        let payload = match layer(cosign::SIMPLE_SIGNING) {
            Some(l) => Some(
                self.read_layer(target, l, "payload", cosign::MAX_PAYLOAD)
                    .await,
            ),
            None => None,
        };
        (bundle, payload)
    }

    /// The blob a layer descriptor names (`what` it is, for a denial), at most `limit` bytes.
    async fn read_layer(
        &self,
        target: &Target,
        layer: &serde_json::Value,
        what: &str,
        limit: usize,
    ) -> Result<Bytes, String> {
        let digest: Digest = layer
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("its {what} layer has no sha256 digest"))?;
        let size = layer
            .get("size")
            .and_then(|s| s.as_u64())
            .unwrap_or(u64::MAX);
        self.read_small(target, &digest, size, limit).await
    }

    /// A small blob (a signature's payload, a bundle), read whole through the blob path (so
    /// verified by digest and cached), without the blob policy (this is the policy reading).
    async fn read_small(
        &self,
        target: &Target,
        digest: &Digest,
        size: u64,
        limit: usize,
    ) -> Result<Bytes, String> {
        if size > limit as u64 {
            return Err(format!(
                "its blob {digest} of {size} bytes is over the limit of {limit}"
            ));
        }
        let unreadable = |e: Error| format!("its blob {digest} could not be read: {e}");
        let reply = self
            .blob_for(target, digest, None, false, self.cluster.as_ref())
            .await
            .map_err(unreadable)?;
        let mut body = reply.body.ok_or("its blob came without a body")?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(unreadable)?;
            if buf.len() + chunk.len() > limit {
                return Err(format!(
                    "its blob {digest} is larger than its descriptor says"
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}
