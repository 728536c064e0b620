//! Orchestration: hit or miss, fetch once, verify, cache, answer. The mirror speaks in typed
//! requests (a [`Target`], a [`Reference`](crate::oci::Reference), a [`Digest`]) and typed
//! replies; it never sees a client's HTTP request or response.
//!
//! One file per kind of answer:
//! - `target`: what a request means in the mirror's words ([`Target`], [`Via`]); `http::route`
//!   builds it.
//! - `manifest`: manifests and tags: the tag cache and its TTL, revalidation with a HEAD, stale
//!   answers while the upstream fails, the digest check, schema 1 passed through, and which form a
//!   client's `Accept` admits ([`Mirror::manifest`]).
//! - `bucket`: the manifests' and tags' side of the bucket tier (`[storage.s3]`).
//! - `blob`: blobs: a hit streamed from the store, a miss joined to or started as a fill
//!   ([`crate::fill`]), a HEAD answered without one, a peer's request never handed on
//!   ([`Mirror::peer_blob`]).
//! - `follow`: a blob as this berth has it now (its file, a running fill followed, or the
//!   bucket's object read and checked), for a reader that starts nothing: the fleet parent's piece tables ([`Mirror::follow_blob`]).
//! - `range`: a client's `Range` header ([`ByteRange`]) and the span it selects.
//! - `tag_list`: tag lists passed through, re-encoded, their next-page link kept on the registry
//!   API.
//! - `policy`: the signature policy's verdict before a manifest is answered (`[[policy]]`),
//!   from signature material the mirror fetches as content.
//! - `referrers`: the referrers of a subject (OCI 1.1), from the upstream's API or the referrers
//!   tag schema, cached per upstream like a tag ([`Mirror::referrers`]).
//! - this file: the [`Mirror`] (its construction, the upstream set swapped on reload) and the
//!   origin check both manifests and blobs make before a cached digest is answered through an
//!   upstream (`may_serve`, asked of [`crate::origins::check`]).
//!
//! A GET answered is noted for the bucket's last-pull order (`tier`) where it is answered
//! (`manifest`, `blob`), so `http` only routes and responds.
//!
//! Rule of dependency: uses `fill` (blob fills and who shares them), `flight` (manifest lookups),
//! `manifests`, `origins`, `store`, `tier`, `cluster`, `upstream`, `upstreams` (the set it fetches
//! through, by slot, swapped whole on reload), `oci`, `error`, `metrics`. `http` uses it; nothing
//! below it (`fill`, `cluster`, `store`, `upstream`, ...) imports it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;
use http::Method;

use crate::cluster::Cluster;
use crate::error::Error;
use crate::fill::Fills;
use crate::flight::{Flights, Joined, Role};
use crate::manifests::{Manifests, ReferrersKey};
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference};
use crate::origins::Origins;
use crate::origins::check::{self, Place};
use crate::policy::{Policies, Verdict, Verdicts};
use crate::store::Store;
use crate::tier::Tier;
use crate::upstream::{NotFoundKind, Upstream, blob_request};
use crate::upstreams::UpstreamSet;

mod blob;
mod bucket;
mod follow;
mod manifest;
mod policy;
mod range;
mod referrers;
mod tag_list;
mod target;

pub use blob::{BlobReply, BlobStream};
pub use manifest::ManifestReply;
pub use range::ByteRange;
pub use referrers::ReferrersReply;
pub use tag_list::TagsReply;
pub use target::{Target, Via};

use manifest::{Form, MANIFEST_FLIGHT_WAIT, ManifestKey, manifest_request};

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
    /// Referrers lookups in progress: N clients asking for one list make one upstream request.
    referrer_flights: Flights<ReferrersKey, Result<ReferrersReply, Error>>,
    /// The signature policies configured now (`[[policy]]`); a reload swaps them whole.
    policies: ArcSwap<Policies>,
    /// Verdicts reached, and what verified indexes allow (`policy`).
    verdicts: Verdicts,
    /// Verifications in progress: concurrent requests for one digest share one.
    verdict_flights: Flights<policy::VerdictKey, Result<Verdict, Error>>,
    metrics: Metrics,
    /// Fills running from memory because the disk is full (at most [`crate::fill::job::MAX_PASS_THROUGH`]).
    pass_throughs: Arc<AtomicUsize>,
    /// The bucket tier (`[storage.s3]`), between the local disk and the upstreams ([`crate::tier`]).
    tier: Option<Arc<Tier>>,
    /// The other replicas (`[cluster]`): a blob miss is handed to the digest's owner.
    cluster: Option<Arc<Cluster>>,
    /// A fleet node's swarm (`[fleet] parent`): its blob fills' source before the upstream.
    swarm: Option<Arc<crate::fill::swarm::Swarm>>,
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
            referrer_flights: Flights::new(MANIFEST_FLIGHT_WAIT),
            policies: ArcSwap::from_pointee(Policies::default()),
            verdicts: Verdicts::default(),
            verdict_flights: Flights::new(MANIFEST_FLIGHT_WAIT),
            metrics,
            pass_throughs: Arc::default(),
            tier: None,
            cluster: None,
            swarm: None,
        }
    }

    /// Reads blobs from the bucket on a local miss and uploads what the upstreams fill.
    pub fn with_tier(mut self, tier: Option<Arc<Tier>>) -> Mirror {
        self.tier = tier;
        self
    }

    /// Checks manifests against these signature policies.
    pub fn with_policies(self, policies: Policies) -> Mirror {
        self.set_policies(policies);
        self
    }

    /// Replaces the signature policies (a reload): a changed policy has a new revision, so its
    /// verdicts are decided again.
    pub fn set_policies(&self, policies: Policies) {
        self.verdicts.keep_only(&policies.revisions());
        self.policies.store(Arc::new(policies));
    }

    /// Keeps verified verdicts under `dir` too, so a restart finds them (`<storage>/policy`).
    pub fn with_verdicts_in(mut self, dir: std::path::PathBuf) -> Mirror {
        self.verdicts = Verdicts::on_disk(dir);
        let revisions = self.policies.load().revisions();
        self.verdicts.keep_only(&revisions);
        self
    }

    /// Hands blob misses to their owners among `cluster`'s replicas.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Mirror {
        self.cluster = cluster;
        self
    }

    /// On a fleet node: blob fills take their bytes from the swarm ([`crate::fill::swarm`]).
    pub fn with_swarm(mut self, swarm: Option<Arc<crate::fill::swarm::Swarm>>) -> Mirror {
        self.swarm = swarm;
        self
    }

    /// A fleet node's swarm, which also answers other nodes' blob requests.
    pub fn swarm(&self) -> Option<&Arc<crate::fill::swarm::Swarm>> {
        self.swarm.as_ref()
    }

    /// The bucket tier, if configured.
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

    /// A flight's result: counted as coalesced (under `kind`) for a follower, a follower that
    /// gave up waiting answered as the upstream being unavailable. Also says whether this request
    /// followed.
    async fn flight_result<V: Clone>(
        &self,
        joined: Joined<Result<V, Error>>,
        kind: &str,
        upstream: &str,
    ) -> Result<(V, bool), Error> {
        let followed = joined.role == Role::Follower;
        if followed {
            self.metrics.coalesced.with_label_values(&[kind]).inc();
        }
        let v = joined
            .result()
            .await
            .map_err(|a| Error::upstream_unavailable(upstream, a.to_string()))??;
        Ok((v, followed))
    }

    /// An answer of `kind` (`tag`, `referrers`) about `what` served stale because the upstream
    /// failed with `cause`: logged (a warning, or a debug line for an upstream marked `offline`,
    /// where it is expected every time) and counted.
    fn note_stale(&self, up: &Upstream, kind: &str, what: &dyn std::fmt::Display, cause: &Error) {
        if up.config().offline {
            tracing::debug!(upstream = up.name(), kind, %what, "offline; serving the last known answer");
        } else {
            tracing::warn!(upstream = up.name(), kind, %what, error = %cause, "upstream failed; serving the last known answer");
        }
        self.metrics
            .stale_serves
            .with_label_values(&[up.name()])
            .inc();
        self.metrics.cache(kind, up.name(), "stale");
    }

    /// Records that the upstream in `slot` served `digest` ([`crate::origins`]).
    fn record_origin(&self, slot: usize, up: &Upstream, digest: &Digest) {
        self.origins
            .record(slot, &up.name().to_ascii_lowercase(), digest);
    }

    /// Whether a cached digest may be answered through the target's upstream, asked of
    /// [`crate::origins::check`]: recorded for it (here, or in the bucket by another replica),
    /// cached before records were kept, or confirmed now with a HEAD to that upstream (then
    /// recorded). Otherwise that upstream's own answer (404, 403, 503), exactly what a miss would
    /// have got, so the client learns nothing about what is cached.
    async fn may_serve(
        &self,
        target: &Target,
        up: &Upstream,
        digest: &Digest,
        kind: NotFoundKind,
    ) -> Result<(), Error> {
        let copy = Place::Local {
            origins: &self.origins,
            slot: target.upstream,
        };
        check::may_serve(
            up,
            digest,
            copy,
            self.tier.as_ref(),
            &self.metrics,
            kind,
            || match kind {
                NotFoundKind::Manifest => manifest_request(
                    Method::HEAD,
                    &target.name,
                    &Reference::Digest(digest.clone()),
                    Form::Stored,
                ),
                _ => blob_request(Method::HEAD, &target.name, digest),
            },
        )
        .await?;
        Ok(())
    }
}
