//! Manifests and tags: a manifest is small (at most 4 MiB), so it is read whole, verified, cached,
//! then answered. A tag answer is trusted for the upstream's `tag_ttl`, then revalidated with a
//! HEAD (which Docker Hub does not count against its pull limit); if the upstream is down or
//! failing, the last known answer is served stale. Upstreams are always asked for the manifest as
//! they store it (one `Accept` list, [`oci::media::UPSTREAM_ACCEPT`]), so lookups and the tag cache
//! are keyed by upstream, repository and reference alone; a client's `Accept` only decides what is
//! answered from that (see [`Mirror::manifest`]). Trade-off: a tag whose type a client does not
//! read costs that client a 404 rather than a conversion berth would have to sign, cache and keep
//! apart. N clients asking for one tag make one upstream request (a `flight` per [`ManifestKey`]);
//! on a local miss the bucket is read first (`bucket`).
//!
//! A GET answered is noted for the bucket's last-pull order (`tier`).
//!
//! Rule of dependency: uses `manifests`, `flight`, `tier`, `upstream` (and `fill::job`'s
//! `header_str`, an upstream response helper), `oci`, `error`, `metrics` and its parent's
//! `Mirror` (with its origin check); the sibling `bucket` uses its upstream request builder
//! ([`manifest_request`]) and nothing here imports `bucket`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, header};
use tokio::time::Instant;

use super::{Mirror, Target};
use crate::error::Error;
use crate::manifests::{MAX_MANIFEST_BYTES, Manifest, TagEntry, TagKey};
use crate::oci::{self, Digest, Reference, RepoName, Tag};
use crate::upstream::{NotFoundKind, Upstream, UpstreamRequest, header_str};

/// What a manifest flight is for: everything that decides its answer, and nothing a client can
/// vary to multiply upstream requests. The client's `Accept` is not part of it: berth always asks
/// upstream for the manifest as stored ([`oci::media::UPSTREAM_ACCEPT`]), and `Accept` only
/// decides what berth answers from that. The upstream and repository are: the same digest under
/// another repository or upstream may not exist, or not be readable, and one client's failing
/// lookup must not become another's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ManifestKey {
    upstream: usize,
    repo: RepoName,
    reference: Reference,
    form: Form,
}

/// Which form of a manifest a lookup asks the upstream for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Form {
    /// As stored upstream, with its true digest: what berth caches and nearly every client gets.
    Stored,
    /// Docker schema 1, for a client that reads nothing newer: passed through, never cached.
    Schema1,
}

/// How long a request waits for a manifest lookup another request started.
pub(super) const MANIFEST_FLIGHT_WAIT: Duration = Duration::from_secs(120);

/// A manifest answer.
#[derive(Debug, Clone)]
pub struct ManifestReply {
    pub manifest: Arc<Manifest>,
    /// Served from an expired tag answer because the upstream failed; the reason.
    pub stale: Option<String>,
    /// `hit`, `miss`, `revalidated`, `stale`, `coalesced`, `bucket`: for logs.
    pub outcome: &'static str,
}

impl Mirror {
    /// A manifest by tag or digest. `accept` is the client's `Accept` (all values joined); `head`:
    /// a HEAD, which is no pull.
    ///
    /// The manifest is looked up as stored upstream, whatever the client accepts; then:
    /// - by digest, it is answered as it is (the digest fixes the bytes; registries do the same);
    /// - by tag, it is answered if the client accepts its media type (no `Accept`, `*/*` and
    ///   `application/*` accept everything);
    /// - a client that reads only schema 1 gets the upstream's schema 1 form passed through,
    ///   checked the schema 1 way ([`oci::schema1`]);
    /// - any other client gets `404 MANIFEST_UNKNOWN` naming the media type, as Docker Hub and
    ///   the Distribution registry answer: the tag exists, but not in a form that client reads.
    pub async fn manifest(
        self: &Arc<Self>,
        target: &Target,
        reference: &Reference,
        accept: Option<&str>,
        head: bool,
    ) -> Result<ManifestReply, Error> {
        let mut reply = self
            .lookup_manifest(target, reference, Form::Stored)
            .await?;
        if let Reference::Tag(tag) = reference {
            if !oci::accepts(accept, &reply.manifest.media_type)
                && !oci::media::is_schema1(&reply.manifest.media_type)
                && wants_schema1(accept)
            {
                reply = self
                    .lookup_manifest(target, reference, Form::Schema1)
                    .await?;
            }
            if !oci::accepts(accept, &reply.manifest.media_type) {
                return Err(not_acceptable(target, tag, &reply.manifest, accept));
            }
        }
        self.check_policy(target, &reply.manifest).await?;
        if !reply.manifest.is_schema1() {
            self.manifests.referenced(&reply.manifest);
        }
        // With a bucket, a GET is noted for the share's last-pull order (memory only; see
        // `tier`). Schema 1 passes through uncached: not the bucket's either.
        if let Some(tier) = &self.tier
            && !head
            && reply.outcome != "passthrough"
        {
            let m = &reply.manifest;
            let upstream = self.upstream_name(target.upstream);
            tier.touch_manifest(&m.digest, &upstream, &m.media_type, &m.bytes);
        }
        Ok(reply)
    }

    /// Counts a manifest (`kind = "manifest"`) or tag hit.
    fn count_hit(&self, upstream: usize, kind: &'static str) {
        let i = usize::from(kind == "tag");
        let set = self.upstreams.load();
        if let Some(slot) = set.get(upstream) {
            slot.hits[i]
                .get_or_init(|| {
                    self.metrics
                        .cache
                        .with_label_values(&[kind, slot.upstream.name(), "hit"])
                })
                .inc();
        }
    }

    pub(super) async fn lookup_manifest(
        self: &Arc<Self>,
        target: &Target,
        reference: &Reference,
        form: Form,
    ) -> Result<ManifestReply, Error> {
        let up = &self.upstream(target.upstream)?;
        match reference {
            _ if form == Form::Schema1 => {}
            Reference::Digest(d) => {
                if let Some(m) = self.manifests.get(d).await? {
                    self.may_serve(target, up, d, NotFoundKind::Manifest)
                        .await?;
                    self.count_hit(target.upstream, "manifest");
                    return Ok(ManifestReply {
                        manifest: m,
                        stale: None,
                        outcome: "hit",
                    });
                }
            }
            Reference::Tag(tag) => {
                let key = TagKey {
                    upstream: target.upstream,
                    repo: target.name.clone(),
                    tag: tag.clone(),
                };
                if let Some(entry) = self.manifests.tag(&key).await
                    && entry.is_fresh(up.config().tag_ttl)
                    && let Some(m) = self.manifests.get(&entry.digest).await?
                {
                    self.count_hit(target.upstream, "tag");
                    return Ok(ManifestReply {
                        manifest: m,
                        stale: None,
                        outcome: "hit",
                    });
                }
            }
        }
        let flight_key = ManifestKey {
            upstream: target.upstream,
            repo: target.name.clone(),
            reference: reference.clone(),
            form,
        };
        let this = self.clone();
        let (target, reference) = (target.clone(), reference.clone());
        let joined = self.manifest_flights.join(flight_key, move || async move {
            let up = &this.upstream(target.upstream)?;
            match (&reference, form) {
                (_, Form::Schema1) => {
                    let m = this
                        .fetch_manifest(target.upstream, up, &target.name, &reference, form, None)
                        .await?;
                    Ok(ManifestReply {
                        manifest: m,
                        stale: None,
                        outcome: "passthrough",
                    })
                }
                (Reference::Digest(d), Form::Stored) => {
                    this.metrics.cache("manifest", up.name(), "miss");
                    if let Some(m) = this.bucket_manifest(&target, up, d).await? {
                        return Ok(ManifestReply {
                            manifest: m,
                            stale: None,
                            outcome: "bucket",
                        });
                    }
                    let m = this
                        .fetch_manifest(
                            target.upstream,
                            up,
                            &target.name,
                            &reference,
                            form,
                            Some(d),
                        )
                        .await?;
                    Ok(ManifestReply {
                        manifest: m,
                        stale: None,
                        outcome: "miss",
                    })
                }
                (Reference::Tag(tag), Form::Stored) => this.resolve_tag(&target, tag).await,
            }
        });
        let (mut reply, followed) = self.flight_result(joined, "manifest", up.name()).await?;
        if followed {
            reply.outcome = "coalesced";
        }
        Ok(reply)
    }

    /// A tag the cache cannot answer fresh: revalidate, fetch, or fall back to the stale answer.
    async fn resolve_tag(&self, target: &Target, tag: &Tag) -> Result<ManifestReply, Error> {
        let up = &self.upstream(target.upstream)?;
        let key = TagKey {
            upstream: target.upstream,
            repo: target.name.clone(),
            tag: tag.clone(),
        };
        let mut cached = self.manifests.tag(&key).await;
        let mut from_bucket = false;
        if cached.is_none() {
            cached = self.bucket_tag(up, &key).await;
            from_bucket = cached.is_some();
        }
        if let Some(entry) = &cached {
            if entry.is_fresh(up.config().tag_ttl) {
                // Refreshed by a flight that ended just before this one started, or resolved by
                // another replica (the bucket's record).
                if let Some(m) = self.cached_manifest(target, up, &entry.digest).await? {
                    if from_bucket {
                        self.manifests.set_tag(key, entry.clone()).await;
                    }
                    self.metrics.cache("tag", up.name(), "hit");
                    return Ok(ManifestReply {
                        manifest: m,
                        stale: None,
                        outcome: "hit",
                    });
                }
            } else {
                match self.head_manifest(up, &target.name, tag).await {
                    Ok(Some(d)) if d == entry.digest => {
                        if let Some(m) = self.cached_manifest(target, up, &d).await? {
                            self.record_origin(target.upstream, up, &d);
                            self.bucket_put_tag(up, &key, &m);
                            self.manifests
                                .set_tag(
                                    key,
                                    TagEntry {
                                        checked: Some(Instant::now()),
                                        ..entry.clone()
                                    },
                                )
                                .await;
                            self.metrics.cache("tag", up.name(), "revalidated");
                            return Ok(ManifestReply {
                                manifest: m,
                                stale: None,
                                outcome: "revalidated",
                            });
                        }
                    }
                    Ok(_) => {} // changed, or no digest in the answer: fetch below
                    Err(e) if e.allows_stale() => {
                        return self.serve_stale(target, up, entry, e).await;
                    }
                    Err(e) => {
                        if e.is_not_found() {
                            self.manifests.forget_tag(&key).await;
                        }
                        return Err(e);
                    }
                }
            }
        }
        self.metrics.cache("tag", up.name(), "miss");
        match self
            .fetch_manifest(
                target.upstream,
                up,
                &target.name,
                &Reference::Tag(tag.clone()),
                Form::Stored,
                None,
            )
            .await
        {
            // Schema 1 is never cached, so neither is a tag that points at it.
            Ok(m) if m.is_schema1() => Ok(ManifestReply {
                manifest: m,
                stale: None,
                outcome: "passthrough",
            }),
            Ok(m) => {
                let entry = TagEntry {
                    digest: m.digest.clone(),
                    media_type: m.media_type.clone(),
                    checked: Some(Instant::now()),
                };
                self.bucket_put_tag(up, &key, &m);
                self.manifests.set_tag(key, entry).await;
                Ok(ManifestReply {
                    manifest: m,
                    stale: None,
                    outcome: "miss",
                })
            }
            Err(e) if e.allows_stale() && cached.is_some() => {
                self.serve_stale(target, up, cached.as_ref().unwrap(), e)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    async fn serve_stale(
        &self,
        target: &Target,
        up: &Upstream,
        entry: &TagEntry,
        cause: Error,
    ) -> Result<ManifestReply, Error> {
        let Ok(Some(m)) = self.cached_manifest(target, up, &entry.digest).await else {
            return Err(cause);
        };
        self.note_stale(up, "tag", &entry.digest, &cause);
        Ok(ManifestReply {
            manifest: m,
            stale: Some(cause.to_string()),
            outcome: "stale",
        })
    }

    /// HEAD a tag upstream: the digest it points at now, if the upstream says.
    async fn head_manifest(
        &self,
        up: &Upstream,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, Error> {
        let resp = up
            .send(manifest_request(
                Method::HEAD,
                name,
                &Reference::Tag(tag.clone()),
                Form::Stored,
            ))
            .await?;
        let resp = resp.error_for_status(NotFoundKind::Manifest).await?;
        Ok(header_str(&resp.headers, "docker-content-digest").and_then(|v| v.parse().ok()))
    }

    /// GETs a manifest in `form`, checks its digest (against `expect`, and against the upstream's
    /// own `Docker-Content-Digest`), records that the upstream in `slot` served it, and caches it.
    /// The record comes first: a manifest cached before its record would, for that moment, look
    /// cached before records were kept and be answered through any upstream ([`crate::origins`]). A signed schema 1 manifest's digest is its
    /// payload's ([`oci::schema1`]); schema 1 is checked but never cached (the store keeps only
    /// files that hash to their name, and a converted schema 1 manifest has new bytes every time).
    async fn fetch_manifest(
        &self,
        slot: usize,
        up: &Upstream,
        name: &RepoName,
        reference: &Reference,
        form: Form,
        expect: Option<&Digest>,
    ) -> Result<Arc<Manifest>, Error> {
        let resp = up
            .send(manifest_request(Method::GET, name, reference, form))
            .await?;
        let resp = resp.error_for_status(NotFoundKind::Manifest).await?;
        let announced: Option<Digest> =
            header_str(&resp.headers, "docker-content-digest").and_then(|v| v.parse().ok());
        let content_type = header_str(&resp.headers, "content-type")
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let bytes = resp.bytes(MAX_MANIFEST_BYTES).await?;
        let media_type = match content_type
            .filter(|t| !t.is_empty() && t != "application/json" && t != "text/plain")
        {
            Some(t) => t,
            None => {
                media_type_from_json(&bytes).unwrap_or_else(|| oci::media::OCI_MANIFEST.to_owned())
            }
        };
        let digest = manifest_digest(&bytes, &media_type, expect.or(announced.as_ref()));
        for wanted in expect.into_iter().chain(announced.as_ref()) {
            if *wanted != digest {
                self.metrics
                    .digest_mismatches
                    .with_label_values(&[up.name(), "manifest"])
                    .inc();
                tracing::error!(upstream = up.name(), repo = %name, %reference, expected = %wanted, actual = %digest, "manifest digest mismatch; not cached");
                return Err(Error::digest_mismatch(
                    up.name(),
                    format!("expected {wanted}, got {digest}"),
                ));
            }
        }
        let m = Arc::new(Manifest::new(digest, media_type, bytes));
        if m.is_schema1() {
            return Ok(m);
        }
        self.record_origin(slot, up, &m.digest);
        if let Some(tier) = &self.tier {
            tier.put_manifest(
                m.digest.clone(),
                m.media_type.clone(),
                m.bytes.clone(),
                up.name().to_ascii_lowercase(),
            );
        }
        if let Err(e) = self.manifests.put(m.clone()).await {
            // The content is verified; failing to cache it must not fail the pull.
            let kind = if e.is_disk_full() { "enospc" } else { "io" };
            self.metrics
                .store_write_errors
                .with_label_values(&[kind])
                .inc();
            tracing::warn!(digest = %m.digest, error = %e, kind, "could not cache manifest; served it from memory");
        }
        Ok(m)
    }
}

pub(super) fn manifest_request(
    method: Method,
    name: &RepoName,
    reference: &Reference,
    form: Form,
) -> UpstreamRequest {
    let mut headers = HeaderMap::new();
    let accept = match form {
        Form::Stored => oci::media::UPSTREAM_ACCEPT,
        Form::Schema1 => oci::media::SCHEMA1_ACCEPT,
    };
    headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
    UpstreamRequest {
        method,
        path_and_query: format!("/v2/{name}/manifests/{reference}"),
        headers,
        repository: Some(name.clone()),
    }
}

/// The media type a manifest names in its JSON, for upstreams that send a generic `Content-Type`;
/// schema 1 names none, but has `schemaVersion: 1` (and `signatures` when signed).
fn media_type_from_json(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        signatures: Option<serde::de::IgnoredAny>,
    }
    let p = serde_json::from_slice::<Probe>(bytes).ok()?;
    match (p.media_type, p.schema_version, p.signatures) {
        (Some(t), _, _) => Some(t),
        (None, Some(1), Some(_)) => Some(oci::media::DOCKER_MANIFEST_V1_SIGNED.to_owned()),
        (None, Some(1), None) => Some(oci::media::DOCKER_MANIFEST_V1.to_owned()),
        _ => None,
    }
}

/// The digest a manifest's bytes stand for: their hash, except for a signed schema 1 manifest,
/// whose digest is its payload's (unless the upstream names the bytes' own hash, which it may for
/// one it stores signed). `claimed` is what the request or the upstream says it should be.
fn manifest_digest(bytes: &[u8], media_type: &str, claimed: Option<&Digest>) -> Digest {
    let own = Digest::of(bytes);
    if media_type != oci::media::DOCKER_MANIFEST_V1_SIGNED || claimed == Some(&own) {
        return own;
    }
    oci::schema1::payload_digest(bytes).unwrap_or(own)
}

/// Whether a client names schema 1 in its `Accept` (one that reads anything newer never gets it).
fn wants_schema1(accept: Option<&str>) -> bool {
    oci::names(accept, oci::media::DOCKER_MANIFEST_V1_SIGNED)
        || oci::names(accept, oci::media::DOCKER_MANIFEST_V1)
}

/// The answer for a tag whose manifest the client's `Accept` does not admit: Docker Hub's and the
/// Distribution registry's `404 MANIFEST_UNKNOWN`, naming the media type, so the client (and the
/// person behind it) can tell "no such tag" from "not in a form you read".
fn not_acceptable(target: &Target, tag: &Tag, m: &Manifest, accept: Option<&str>) -> Error {
    let accept = accept.unwrap_or_default();
    let shown: String = accept.chars().take(200).collect();
    let more = if shown.len() < accept.len() {
        "..."
    } else {
        ""
    };
    Error::manifest_unknown(format!(
        "{}:{tag} is a {} manifest ({}), which the request's Accept header does not admit (Accept: {shown}{more})",
        target.name, m.media_type, m.digest
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_types_and_digests() {
        use oci::media::*;
        assert_eq!(
            media_type_from_json(br#"{"mediaType":"x/y","schemaVersion":2}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(
            media_type_from_json(br#"{"schemaVersion":1,"signatures":[]}"#).as_deref(),
            Some(DOCKER_MANIFEST_V1_SIGNED)
        );
        assert_eq!(
            media_type_from_json(br#"{"schemaVersion":1}"#).as_deref(),
            Some(DOCKER_MANIFEST_V1)
        );
        assert_eq!(media_type_from_json(br#"{"schemaVersion":2}"#), None);
        assert_eq!(media_type_from_json(b"[]"), None);

        // Anything but signed schema 1 is its bytes' hash, whatever is claimed.
        let other = Digest::of(b"other");
        assert_eq!(
            manifest_digest(b"{}", OCI_MANIFEST, Some(&other)),
            Digest::of(b"{}")
        );
        // Signed schema 1 is its payload's, unless the bytes' own hash is what was claimed;
        // bytes that are no signed manifest are their hash (and then fail any other claim).
        let payload = "{\n \"schemaVersion\": 1\n}";
        let signed = crate::oci::tests::sign_schema1(payload, "eA");
        assert_eq!(
            manifest_digest(&signed, DOCKER_MANIFEST_V1_SIGNED, None),
            Digest::of(payload.as_bytes())
        );
        let own = Digest::of(&signed);
        assert_eq!(
            manifest_digest(&signed, DOCKER_MANIFEST_V1_SIGNED, Some(&own)),
            own
        );
        assert_eq!(
            manifest_digest(b"{}", DOCKER_MANIFEST_V1_SIGNED, Some(&other)),
            Digest::of(b"{}")
        );
    }

    #[test]
    fn who_wants_schema1() {
        use oci::media::*;
        assert!(wants_schema1(Some(DOCKER_MANIFEST_V1_SIGNED)));
        assert!(wants_schema1(Some(&format!(
            "{OCI_INDEX}, {DOCKER_MANIFEST_V1}"
        ))));
        // Wildcards accept whatever is stored, so they never ask for a conversion.
        for no in [
            None,
            Some(""),
            Some(OCI_MANIFEST),
            Some(&*format!("{DOCKER_MANIFEST_V1};q=0")),
        ] {
            assert!(!wants_schema1(no), "{no:?}");
        }
    }

    #[test]
    fn json_media_type() {
        assert_eq!(
            media_type_from_json(br#"{"mediaType":"a/b","x":1}"#).as_deref(),
            Some("a/b")
        );
        assert_eq!(media_type_from_json(b"{}"), None);
        assert_eq!(media_type_from_json(b"nope"), None);
    }
}
