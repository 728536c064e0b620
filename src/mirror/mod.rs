//! Orchestration: hit or miss, fetch once, verify, cache, answer.
//!
//! The mirror speaks in typed requests (a [`Target`], a [`Reference`], a [`Digest`]) and typed
//! replies; it never sees a client's HTTP request or response.
//!
//! Blobs: a hit streams the cached file. A miss joins a fill already running for that digest that
//! it may share (same upstream; another repository's only once the upstream answered it with
//! content, so that nobody's failing request can fail another's pull: see `fill`), or starts one: a task, detached from any client, that streams the upstream body into the store
//! while hashing it. Every client asking for that digest, the first included, reads the growing
//! file (`store::read_range`), which releases the last byte only after the digest checked out. So
//! the first bytes leave at once, a slow client never slows the fill, a client that goes away does
//! not stop it, and a wrong body never completes.
//!
//! A fill whose upstream body breaks off (closed, reset, stalled) resumes instead of failing: it
//! asks again with `Range: bytes=<received>-` (at most `resume_attempts` times per fill, with the
//! same backoff as the upstream's own retries) and goes on appending to the same temp file, with
//! the same running hash, so readers never notice. A 206 must start exactly at `received` and end
//! at the known end of the blob; a 200 means the upstream ignores `Range`, so its first `received`
//! bytes are skipped, never hashed or written twice; anything else (416, another 4xx, a
//! Content-Range that does not continue the blob) fails the fill as before. The range request goes
//! through `Upstream::send`, so it carries the same auth and follows the same redirects (a CDN
//! gets the `Range` header and never the credentials). The final digest check still guards every
//! byte, whichever way it arrived.
//!
//! A write that finds the disk full does not fail the fill either: the fill passes through from
//! memory (`store::PendingBlob::pass_through`: clients following it get every byte, nothing is
//! cached), the store is told (`Store::disk_full`, where eviction makes room), and the fill leaves
//! the `fills` map at once, so that the next request for the digest starts a fresh fill that may
//! find room again instead of joining one that can only end uncached.
//!
//! With a bucket (`[storage.s3]`, see [`crate::tier`]) the read order is local disk, then the
//! bucket, then the upstream: a fill's source is the bucket when it has the blob and may answer it
//! through the request's upstream (the bucket's origin marker for it, else that upstream's yes to
//! a HEAD), with the same pending file, digest check and resume (from the upstream) as an
//! upstream body; a fill from an upstream that committed locally is uploaded. A bucket that fails
//! is skipped, never the reason a pull fails.
//!
//! With `[cluster]` ([`crate::cluster`]), a miss the bucket cannot answer is handed to the digest's
//! owner among the live replicas before the upstream: the owner fills it once (for every replica)
//! and this fill streams the owner's body, verified here like any other source and resumed from
//! the upstream if it breaks off. A peer's own request ([`Mirror::peer_blob`]) is never handed on.
//!
//! Manifests: small (at most 4 MiB), so they are read whole, verified, cached, then answered. A tag
//! answer is trusted for the upstream's `tag_ttl`, then revalidated with a HEAD (which Docker Hub
//! does not count against its pull limit); if the upstream is down or failing, the last known
//! answer is served stale. Upstreams are always asked for the manifest as they store it (one
//! `Accept` list, [`oci::media::UPSTREAM_ACCEPT`]), so lookups and the tag cache are keyed by
//! upstream, repository and reference alone; a client's `Accept` only decides what is answered from
//! that (see [`Mirror::manifest`]). Trade-off: a tag whose type a client does not read costs that
//! client a 404 rather than a conversion berth would have to sign, cache and keep apart.
//!
//! Rule of dependency: uses `store`, `tier`, `cluster`, `manifests`, `upstream`, `upstreams` (the set it fetches
//! through, by slot, swapped whole on reload), `oci`, `error`, `metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::error::{Error, Origin};
use crate::fill::job::{FillJob, blob_request, content_length, header_str};
use crate::fill::{FillSource, Fills, Share};
use crate::flight::{Flights, Role};
use crate::manifests::{MAX_MANIFEST_BYTES, Manifest, Manifests, TagEntry, TagKey};
use crate::metrics::Metrics;
use crate::oci::{self, Digest, Reference, RepoName, Tag};
use crate::origins::{Origins, Provenance};
use crate::store::{self, FillState, Source, Store};
use crate::tier::Tier;
use crate::upstream::{NotFoundKind, Upstream, UpstreamRequest};
use crate::upstreams::UpstreamSet;

mod bucket;
mod target;

pub use target::{Target, Via};

/// Largest tag list passed through.
const MAX_TAGS_BYTES: usize = 8 * 1024 * 1024;

/// The mirror: upstreams, the store, the manifest cache and the fills running now.
pub struct Mirror {
    /// The upstreams configured now, by slot; a reload swaps in a new set (see `upstreams`).
    upstreams: ArcSwap<UpstreamSet>,
    store: Arc<Store>,
    manifests: Manifests,
    /// Fills in progress, and who may share them ([`crate::fill`]).
    fills: Arc<Fills>,
    /// Which upstreams each cached digest came through ([`crate::origins`]).
    origins: Arc<Origins>,
    /// Manifest and tag lookups in progress: N clients pulling one tag make one upstream request.
    manifest_flights: Flights<ManifestKey, Result<ManifestReply, Error>>,
    metrics: Metrics,
    /// Fills running from memory because the disk is full (at most [`crate::fill::job::MAX_PASS_THROUGH`]).
    pass_throughs: Arc<AtomicUsize>,
    /// The bucket tier (`[storage.s3]`), between the local disk and the upstreams ([`crate::tier`]).
    tier: Option<Arc<Tier>>,
    /// The other replicas (`[cluster]`): a blob miss is handed to the digest's owner.
    cluster: Option<Arc<Cluster>>,
}

/// What a manifest flight is for: everything that decides its answer, and nothing a client can
/// vary to multiply upstream requests. The client's `Accept` is not part of it: berth always asks
/// upstream for the manifest as stored ([`oci::media::UPSTREAM_ACCEPT`]), and `Accept` only
/// decides what berth answers from that. The upstream and repository are: the same digest under
/// another repository or upstream may not exist, or not be readable, and one client's failing
/// lookup must not become another's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ManifestKey {
    upstream: usize,
    repo: RepoName,
    reference: Reference,
    form: Form,
}

/// Which form of a manifest a lookup asks the upstream for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Form {
    /// As stored upstream, with its true digest: what berth caches and nearly every client gets.
    Stored,
    /// Docker schema 1, for a client that reads nothing newer: passed through, never cached.
    Schema1,
}

/// How long a request waits for a manifest lookup another request started.
const MANIFEST_FLIGHT_WAIT: Duration = Duration::from_secs(120);

/// A manifest answer.
#[derive(Debug, Clone)]
pub struct ManifestReply {
    pub manifest: Arc<Manifest>,
    /// Served from an expired tag answer because the upstream failed; the reason.
    pub stale: Option<String>,
    /// `hit`, `miss`, `revalidated`, `stale`, `coalesced`, `bucket`: for logs.
    pub outcome: &'static str,
}

/// A byte range a client asked for, not yet checked against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-` or `bytes=a-b` (b inclusive).
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header; `None` for anything but one well-formed byte range (which is then
    /// ignored, as HTTP allows).
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return b.parse().ok().map(ByteRange::Suffix);
        }
        let a: u64 = a.parse().ok()?;
        if b.is_empty() {
            return Some(ByteRange::From(a, None));
        }
        let b: u64 = b.parse().ok()?;
        (b >= a).then_some(ByteRange::From(a, Some(b)))
    }

    /// The half-open span `start..end` within a blob of `total` bytes, or 416.
    pub fn resolve(self, total: u64) -> Result<(u64, u64), Error> {
        let span = match self {
            ByteRange::From(a, _) if a >= total => None,
            ByteRange::From(a, b) => Some((a, b.map_or(total, |b| b.saturating_add(1).min(total)))),
            // RFC 9110: a suffix of nothing, or of an empty blob, selects no byte.
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if total == 0 => None,
            ByteRange::Suffix(n) => Some((total.saturating_sub(n), total)),
        };
        span.ok_or_else(|| {
            Error::range_invalid(format!("range not satisfiable for a blob of {total} bytes"))
                .with_total(total)
        })
    }
}

/// A blob answer: headers now, bytes as they come.
pub struct BlobReply {
    pub digest: Digest,
    /// The blob's full size, when known (it is unknown only for a fill whose upstream sent no length).
    pub total: Option<u64>,
    /// The span served, when the client asked for a range.
    pub range: Option<(u64, u64)>,
    /// `None` for HEAD.
    pub body: Option<BlobStream>,
    /// `hit`, `miss`, `joined`, `bucket`, `bucket_joined` (a fill from the bucket, started or
    /// joined): for logs and the served-bytes metric.
    pub outcome: &'static str,
}

pub type BlobStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// A tag list answer, passed through.
pub struct TagsReply {
    pub content_type: Option<HeaderValue>,
    pub link: Option<HeaderValue>,
    pub body: Bytes,
}

impl Error {
    /// Remembers the blob size for the `Content-Range: bytes */<total>` of a 416.
    fn with_total(mut self, total: u64) -> Self {
        self.range_size = Some(total);
        self.with_detail(format!("blob size {total}"))
    }

    /// Whether a cached answer may stand in for this failure (upstream down, failing, limiting).
    fn allows_stale(&self) -> bool {
        self.origin == Origin::Upstream
            && (self.status.is_server_error() || self.status == StatusCode::TOO_MANY_REQUESTS)
    }
}

impl Mirror {
    pub fn new(
        upstreams: UpstreamSet,
        store: Arc<Store>,
        manifests: Manifests,
        origins: Origins,
        metrics: Metrics,
    ) -> Mirror {
        Mirror {
            origins: Arc::new(origins),
            upstreams: ArcSwap::from_pointee(upstreams),
            store,
            manifests,
            fills: Arc::default(),
            manifest_flights: Flights::new(MANIFEST_FLIGHT_WAIT),
            metrics,
            pass_throughs: Arc::default(),
            tier: None,
            cluster: None,
        }
    }

    /// Reads blobs from the bucket on a local miss and uploads what the upstreams fill.
    pub fn with_tier(mut self, tier: Option<Arc<Tier>>) -> Mirror {
        self.tier = tier;
        self
    }

    /// The bucket tier, if configured.
    /// Hands blob misses to their owners among `cluster`'s replicas.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Mirror {
        self.cluster = cluster;
        self
    }

    pub fn tier(&self) -> Option<&Arc<Tier>> {
        self.tier.as_ref()
    }

    /// The upstream in `slot`; 503 when a reload removed it after the request was routed.
    pub fn upstream(&self, slot: usize) -> Result<Arc<Upstream>, Error> {
        match self.upstreams.load().get(slot) {
            Some(s) => Ok(s.upstream.clone()),
            None => Err(Error::upstream_unavailable(
                &self.upstream_name(slot),
                "this upstream was removed from the configuration",
            )),
        }
    }

    /// The name of the upstream in `slot` (also of one a reload removed).
    pub fn upstream_name(&self, slot: usize) -> String {
        if let Some(s) = self.upstreams.load().get(slot) {
            return s.upstream.name().to_owned();
        }
        self.manifests
            .upstream_names()
            .get(slot)
            .cloned()
            .unwrap_or_else(|| "-".into())
    }

    /// The upstreams configured now and their routing table.
    pub fn upstreams(&self) -> Arc<UpstreamSet> {
        self.upstreams.load_full()
    }

    /// Replaces the upstream set (a reload). Requests and fills already running keep the
    /// upstreams they hold.
    pub fn set_upstreams(&self, set: UpstreamSet) {
        self.upstreams.store(Arc::new(set));
    }

    /// The configured upstreams' names, in slot order.
    pub fn upstream_names(&self) -> Vec<String> {
        self.upstreams.load().names()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The manifest and tag cache (the admin API removes through it, so memory and disk agree).
    pub fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    // ---- manifests ----

    /// A manifest by tag or digest. `accept` is the client's `Accept` (all values joined).
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
        if !reply.manifest.is_schema1() {
            self.manifests.referenced(&reply.manifest);
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

    async fn lookup_manifest(
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
                        .fetch_manifest(up, &target.name, &reference, form, None)
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
                        .fetch_manifest(up, &target.name, &reference, form, Some(d))
                        .await?;
                    this.record_origin(target.upstream, up, d);
                    Ok(ManifestReply {
                        manifest: m,
                        stale: None,
                        outcome: "miss",
                    })
                }
                (Reference::Tag(tag), Form::Stored) => this.resolve_tag(&target, tag).await,
            }
        });
        let role = joined.role;
        if role == Role::Follower {
            self.metrics
                .coalesced
                .with_label_values(&["manifest"])
                .inc();
        }
        let mut reply = joined
            .result()
            .await
            .map_err(|a| Error::upstream_unavailable(up.name(), a.to_string()))??;
        if role == Role::Follower {
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
                        if e.status == StatusCode::NOT_FOUND {
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
                self.record_origin(target.upstream, up, &m.digest);
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
        if up.config().offline {
            // Expected, every time: not worth a warning per request.
            tracing::debug!(upstream = up.name(), digest = %entry.digest, "offline; serving the last known tag answer");
        } else {
            tracing::warn!(upstream = up.name(), digest = %entry.digest, error = %cause, "upstream failed; serving the last known tag answer");
        }
        self.metrics
            .stale_serves
            .with_label_values(&[up.name()])
            .inc();
        self.metrics.cache("tag", up.name(), "stale");
        Ok(ManifestReply {
            manifest: m,
            stale: Some(cause.to_string()),
            outcome: "stale",
        })
    }

    /// Records that the upstream in `slot` served `digest` ([`crate::origins`]).
    fn record_origin(&self, slot: usize, up: &Upstream, digest: &Digest) {
        self.origins
            .record(slot, &up.name().to_ascii_lowercase(), digest);
    }

    /// Whether a cached digest may be answered through the target's upstream: recorded for it
    /// (here, or in the bucket by another replica), cached before records were kept, or confirmed now with a HEAD to that upstream (then
    /// recorded). Otherwise that upstream's own answer (404, 403, 503), exactly what a miss would
    /// have got, so the client learns nothing about what is cached.
    async fn may_serve(
        &self,
        target: &Target,
        up: &Upstream,
        digest: &Digest,
        kind: NotFoundKind,
    ) -> Result<(), Error> {
        if self.origins.check(target.upstream, digest) != Provenance::Elsewhere {
            return Ok(());
        }
        // Another replica may have recorded this upstream in the bucket.
        if let Some(tier) = &self.tier
            && tier
                .lookup(
                    "head origin",
                    tier.bucket()
                        .has_origin(&up.name().to_ascii_lowercase(), digest),
                )
                .await
                == Some(true)
        {
            self.record_origin(target.upstream, up, digest);
            return Ok(());
        }
        let req = match kind {
            NotFoundKind::Manifest => manifest_request(
                Method::HEAD,
                &target.name,
                &Reference::Digest(digest.clone()),
                Form::Stored,
            ),
            _ => blob_request(Method::HEAD, &target.name, digest),
        };
        up.send(req).await?.error_for_status(kind).await?;
        self.metrics.origin_confirmations.inc();
        self.record_origin(target.upstream, up, digest);
        Ok(())
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
    /// own `Docker-Content-Digest`), and caches it. A signed schema 1 manifest's digest is its
    /// payload's ([`oci::schema1`]); schema 1 is checked but never cached (the store keeps only
    /// files that hash to their name, and a converted schema 1 manifest has new bytes every time).
    async fn fetch_manifest(
        &self,
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

    // ---- blobs ----

    /// A blob, or part of it. `head` answers the size without a body (and starts no fill).
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, Error> {
        self.blob_for(target, digest, range, head, self.cluster.as_ref())
            .await
    }

    /// A blob for a peer that handed its miss to this berth: as [`Mirror::blob`], but a miss
    /// is filled here, never handed on to another peer (two replicas that disagree on the owner
    /// for a moment must not send the request back and forth).
    pub async fn peer_blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<BlobReply, Error> {
        self.blob_for(target, digest, range, head, None).await
    }

    async fn blob_for(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<BlobReply, Error> {
        let up = self.upstream(target.upstream)?;
        let started = Instant::now();
        // A cached file that cannot be opened is a miss, not an error: the fill fetches the blob
        // again (and replaces the file if it can).
        let cached = self.store.open_blob(digest).await.unwrap_or_else(|e| {
            tracing::error!(%digest, error = %e, "cached blob cannot be read; fetching it again");
            None
        });
        if let Some(blob) = cached {
            self.may_serve(target, &up, digest, NotFoundKind::Blob)
                .await?;
            self.metrics.cache("blob", up.name(), "hit");
            self.metrics.answer("local");
            let span = range.map(|r| r.resolve(blob.len)).transpose()?;
            let (start, end) = span.unwrap_or((0, blob.len));
            let body = (!head).then(|| {
                Box::pin(store::read_range(
                    Source::File(blob.clone()),
                    start,
                    Some(end),
                )) as BlobStream
            });
            return Ok(BlobReply {
                digest: digest.clone(),
                total: Some(blob.len),
                range: span,
                body,
                outcome: "hit",
            });
        }
        if head {
            return self.head_blob(&up, target, digest).await;
        }
        let (mut rx, source, joined) = self
            .fill(target.upstream, &up, &target.name, digest, cluster)
            .await;
        self.metrics
            .cache("blob", up.name(), if joined { "joined" } else { "miss" });
        // Wait for the upstream's answer (size known), or the end when a range needs a size the
        // upstream did not announce.
        let total = loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Failed(e) => return Err(e),
                FillState::Verified(b) | FillState::Committed(b) => break Some(b.len),
                FillState::Writing(p) => match p.total {
                    Some(t) => break Some(t),
                    None if range.is_none() => break None,
                    None => {}
                },
                FillState::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err(Error::internal("blob fill ended without a result"));
            }
        };
        self.metrics
            .first_byte
            .observe(started.elapsed().as_secs_f64());
        // Set by the fill before its first byte, so before any state this loop stops at.
        let source = source.get().copied().unwrap_or("upstream");
        self.metrics.answer(source);
        let span = match (range, total) {
            (Some(r), Some(t)) => Some(r.resolve(t)?),
            _ => None,
        };
        let (start, end) = span.map_or((0, None), |(s, e)| (s, Some(e)));
        let body = Box::pin(store::read_range(Source::Fill(rx), start, end)) as BlobStream;
        Ok(BlobReply {
            digest: digest.clone(),
            total,
            range: span,
            body: Some(body),
            outcome: match (joined, source) {
                (false, "bucket") => "bucket",
                (true, "bucket") => "bucket_joined",
                (false, "peer") => "peer",
                (true, "peer") => "peer_joined",
                (false, _) => "miss",
                (true, _) => "joined",
            },
        })
    }

    async fn head_blob(
        &self,
        up: &Upstream,
        target: &Target,
        digest: &Digest,
    ) -> Result<BlobReply, Error> {
        // A fill already running (with content, through this upstream) knows the size.
        if let Some(t) = self.fills.known_size(target.upstream, digest) {
            return Ok(BlobReply {
                digest: digest.clone(),
                total: Some(t),
                range: None,
                body: None,
                outcome: "joined",
            });
        }
        self.metrics.cache("blob", up.name(), "miss");
        let origin = up.name().to_ascii_lowercase();
        let mut in_bucket = false;
        if let Some(tier) = &self.tier
            && let Some(Some(info)) = tier.lookup("head", tier.bucket().head_blob(digest)).await
        {
            in_bucket = true;
            // Through this upstream only when the bucket records it; else the upstream's HEAD
            // below is the confirmation.
            if tier
                .lookup("head origin", tier.bucket().has_origin(&origin, digest))
                .await
                == Some(true)
            {
                self.metrics.answer("bucket");
                return Ok(BlobReply {
                    digest: digest.clone(),
                    total: Some(info.size),
                    range: None,
                    body: None,
                    outcome: "bucket",
                });
            }
        }
        let resp = up
            .send(blob_request(Method::HEAD, &target.name, digest))
            .await?;
        let resp = resp.error_for_status(NotFoundKind::Blob).await?;
        if in_bucket && let Some(tier) = &self.tier {
            self.metrics.origin_confirmations.inc();
            tier.mark_origin(origin, digest.clone());
        }
        self.metrics.answer("upstream");
        let total = content_length(&resp.headers);
        Ok(BlobReply {
            digest: digest.clone(),
            total,
            range: None,
            body: None,
            outcome: "miss",
        })
    }

    /// Joins a fill for `digest` this request may share, or starts one ([`crate::fill`]).
    /// Returns its progress and whether it was joined.
    async fn fill(
        &self,
        upstream: usize,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
        cluster: Option<&Arc<Cluster>>,
    ) -> (watch::Receiver<FillState>, FillSource, bool) {
        let mut may_wait = true;
        let (tx, rx, source) = loop {
            match self.fills.share(upstream, name, digest, may_wait) {
                Share::Join(rx, source) => {
                    self.metrics.coalesced.with_label_values(&["blob"]).inc();
                    return (rx, source, true);
                }
                Share::Start(tx, rx, source) => break (tx, rx, source),
                Share::Wait(mut other) => {
                    // Another repository's fill, not yet answered: its content, or our own fill.
                    may_wait = false;
                    self.metrics.fill_waits.inc();
                    let _ = other.wait_for(|s| !matches!(s, FillState::Pending)).await;
                }
            }
        };
        let job = FillJob {
            origin: (upstream, self.origins.clone()),
            up: up.clone(),
            name: name.clone(),
            digest: digest.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            fills: self.fills.clone(),
            this_fill: rx.clone(),
            pass_throughs: self.pass_throughs.clone(),
            passing: AtomicBool::new(false),
            tier: self.tier.clone(),
            cluster: cluster.cloned(),
            source: source.clone(),
        };
        self.metrics.fills_in_flight.inc();
        // The task, not any client, owns the fill: it runs to the end even if every client leaves.
        // The job ends in its Drop (counted out, taken out of the map), so that even a panic in it
        // cannot leave a dead entry that every later request for the digest would join.
        tokio::spawn(async move {
            job.run(tx).await;
        });
        (rx, source, false)
    }

    // ---- tags ----

    /// A tag list, passed through from the upstream.
    pub async fn tags(
        &self,
        target: &Target,
        n: Option<u32>,
        last: Option<&Tag>,
    ) -> Result<TagsReply, Error> {
        if n == Some(0) {
            // The spec's answer to a page of none: an empty list and no next page. Upstreams
            // disagree (some treat 0 as "no limit" and send tags), so it is not asked.
            let body = serde_json::json!({ "name": target.name.as_str(), "tags": [] });
            return Ok(TagsReply {
                content_type: Some(HeaderValue::from_static("application/json")),
                link: None,
                body: Bytes::from(body.to_string()),
            });
        }
        let up = &self.upstream(target.upstream)?;
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(last) = last {
                q.append_pair("last", last.as_str());
            }
            q.finish()
        };
        let mut path = format!("/v2/{}/tags/list", target.name);
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let resp = up
            .send(UpstreamRequest {
                method: Method::GET,
                path_and_query: path,
                headers: HeaderMap::new(),
                repository: Some(target.name.clone()),
            })
            .await?;
        let resp = resp.error_for_status(NotFoundKind::Repository).await?;
        let link = resp
            .headers
            .get(header::LINK)
            .and_then(|v| next_page(v, &up.config().url));
        let body = resp.bytes(MAX_TAGS_BYTES).await?;
        let body = tag_list(&body, &target.name).ok_or_else(|| {
            Error::upstream_bad(
                up.name(),
                "tag list is not a JSON object with a name and a list of tags",
            )
        })?;
        Ok(TagsReply {
            content_type: Some(HeaderValue::from_static("application/json")),
            link,
            body,
        })
    }
}

fn manifest_request(
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

/// An upstream's tag list, passed on only as what it should be: `{"name": ..., "tags": [...]}`,
/// re-encoded by berth, with the strings that are no valid tag left out (a client never parses
/// what a hostile upstream chose to send). `None` if it is not such an object.
fn tag_list(body: &[u8], asked: &RepoName) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Upstream {
        name: String,
        tags: Option<Vec<String>>,
    }
    #[derive(serde::Serialize)]
    struct List<'a> {
        name: &'a str,
        tags: Vec<&'a str>,
    }
    let got: Upstream = serde_json::from_slice(body).ok()?;
    let name = match got.name.parse::<RepoName>() {
        Ok(_) => got.name.as_str(),
        Err(_) => asked.as_str(),
    };
    let tags = got
        .tags
        .iter()
        .flatten()
        .filter(|t| t.parse::<Tag>().is_ok())
        .map(String::as_str)
        .collect();
    serde_json::to_vec(&List { name, tags })
        .ok()
        .map(Bytes::from)
}

/// The next page of a tag list, as a `Link` header berth passes on: only a link back into the
/// registry API (`</v2/...>; rel="next"`, or the same with the upstream's own origin, made
/// relative), so an upstream cannot send clients anywhere else.
fn next_page(link: &HeaderValue, upstream: &url::Url) -> Option<HeaderValue> {
    let text = link.to_str().ok()?.trim();
    let (target, params) = text.strip_prefix('<')?.split_once('>')?;
    if !params
        .split(';')
        .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
    {
        return None;
    }
    let path = match target.strip_prefix('/') {
        Some(_) => target.to_owned(),
        None => {
            let abs = url::Url::parse(target).ok()?;
            if abs.origin() != upstream.origin() {
                return None;
            }
            match abs.query() {
                Some(q) => format!("{}?{q}", abs.path()),
                None => abs.path().to_owned(),
            }
        }
    };
    // `//host/...` is a network-path reference: another host after all.
    if !path.starts_with("/v2/") || path.contains("//") || path.contains(['<', '>', '\\']) {
        return None;
    }
    HeaderValue::from_str(&format!("<{path}>; rel=\"next\"")).ok()
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
    fn tag_lists_are_re_encoded() {
        let asked: RepoName = "library/app".parse().unwrap();
        let got = tag_list(
            br#"{"name":"library/app","tags":["1.0","latest","bad tag","<script>",""],"extra":1}"#,
            &asked,
        )
        .unwrap();
        assert_eq!(
            &got[..],
            br#"{"name":"library/app","tags":["1.0","latest"]}"#
        );
        // A null list (Distribution, for a repository without tags) is an empty one; a name that
        // is no repository name is replaced by the one asked for.
        let got = tag_list(br#"{"name":"Not A Name","tags":null}"#, &asked).unwrap();
        assert_eq!(&got[..], br#"{"name":"library/app","tags":[]}"#);
        for bad in [
            &b"<html>"[..],
            b"[]",
            br#"{"tags":[]}"#,
            br#"{"name":"a","tags":"x"}"#,
        ] {
            assert_eq!(
                tag_list(bad, &asked),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn next_page_links_stay_on_the_registry_api() {
        let up: url::Url = "https://registry.example:5000".parse().unwrap();
        let link = |s: &str| next_page(&HeaderValue::from_str(s).unwrap(), &up);
        let want = r#"</v2/app/tags/list?last=b&n=2>; rel="next""#;
        assert_eq!(
            link(r#"</v2/app/tags/list?last=b&n=2>; rel="next""#).unwrap(),
            want
        );
        assert_eq!(
            link(r#"<https://registry.example:5000/v2/app/tags/list?last=b&n=2>;rel="next""#)
                .unwrap(),
            want
        );
        for bad in [
            r#"<https://evil.example/v2/app/tags/list>; rel="next""#,
            r#"<//evil.example/v2/app/tags/list>; rel="next""#,
            r#"</v2/app/tags/list>; rel="prev""#,
            r#"</elsewhere>; rel="next""#,
            r#"</v2//evil>; rel="next""#,
            "garbage",
        ] {
            assert_eq!(link(bad), None, "{bad}");
        }
    }

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
    fn ranges() {
        assert_eq!(
            ByteRange::parse("bytes=0-9"),
            Some(ByteRange::From(0, Some(9)))
        );
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From(5, None)));
        assert_eq!(ByteRange::parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        for bad in [
            "bytes=9-0",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "0-1",
        ] {
            assert_eq!(ByteRange::parse(bad), None, "{bad}");
        }
        assert_eq!(ByteRange::From(0, Some(9)).resolve(100).unwrap(), (0, 10));
        assert_eq!(
            ByteRange::From(90, Some(200)).resolve(100).unwrap(),
            (90, 100)
        );
        assert_eq!(ByteRange::From(5, None).resolve(10).unwrap(), (5, 10));
        // The largest end a client can write does not overflow.
        let huge = ByteRange::parse(&format!("bytes=3-{}", u64::MAX)).unwrap();
        assert_eq!(huge.resolve(10).unwrap(), (3, 10));
        assert_eq!(ByteRange::Suffix(3).resolve(10).unwrap(), (7, 10));
        assert_eq!(ByteRange::Suffix(30).resolve(10).unwrap(), (0, 10));
        assert_eq!(
            ByteRange::From(10, None).resolve(10).unwrap_err().status,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(
            ByteRange::Suffix(0).resolve(10).unwrap_err().status,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn byte_range() -> impl Strategy<Value = ByteRange> {
            prop_oneof![
                (any::<u64>(), proptest::option::of(any::<u64>()))
                    .prop_map(|(a, b)| { ByteRange::From(a, b.map(|b| b.max(a))) }),
                (0u64..1000, proptest::option::of(0u64..1000))
                    .prop_map(|(a, b)| ByteRange::From(a, b.map(|b| b.max(a)))),
                any::<u64>().prop_map(ByteRange::Suffix),
                (0u64..1000).prop_map(ByteRange::Suffix),
            ]
        }

        fn header(r: ByteRange) -> String {
            match r {
                ByteRange::From(a, Some(b)) => format!("bytes={a}-{b}"),
                ByteRange::From(a, None) => format!("bytes={a}-"),
                ByteRange::Suffix(n) => format!("bytes=-{n}"),
            }
        }

        proptest! {
            #[test]
            fn a_resolved_span_is_inside_the_blob_and_not_empty_or_a_416(
                r in byte_range(),
                total in prop_oneof![Just(0u64), 0u64..1000, any::<u64>()],
            ) {
                prop_assert_eq!(ByteRange::parse(&header(r)), Some(r));
                match r.resolve(total) {
                    Ok((start, end)) => {
                        prop_assert!(start < end && end <= total, "{:?} of {} -> {}..{}", r, total, start, end);
                        if let ByteRange::From(a, _) = r {
                            prop_assert_eq!(start, a);
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE);
                        prop_assert_eq!(e.range_size, Some(total));
                        // Only a start past the end or an empty suffix is unsatisfiable.
                        prop_assert!(
                            matches!(r, ByteRange::From(a, _) if a >= total)
                                || matches!(r, ByteRange::Suffix(0))
                                || total == 0
                        );
                    }
                }
            }

            #[test]
            fn range_headers_never_panic(value in "[ -~]{0,40}", total in any::<u64>()) {
                if let Some(r) = ByteRange::parse(&value) {
                    let _ = r.resolve(total);
                }
                if let Some(c) = crate::fill::job::ContentRange::parse(&value) {
                    prop_assert!(c.first <= c.last && c.size.is_none_or(|s| c.last < s));
                }
            }

        }
    }

    #[test]
    fn a_suffix_of_an_empty_blob_is_unsatisfiable() {
        // Found by the range property: `bytes=-5` of 0 bytes was the empty span 0..0, sent as
        // `206` with `Content-Range: bytes 0--1/0`.
        let e = ByteRange::Suffix(5).resolve(0).unwrap_err();
        assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(e.range_size, Some(0));
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
