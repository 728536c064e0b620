//! The referrers of a subject (OCI distribution 1.1): the signatures, SBOMs and attestations that
//! name a manifest as their `subject`, as an image index of descriptors.
//!
//! Where it comes from, per upstream:
//! - the upstream's referrers API, with the client's `artifactType` filter passed on and every
//!   page of a paged answer (`Link`, kept on that same list) joined into one index;
//! - an upstream without the API (404, 405, 501 or `UNSUPPORTED` for the route, as the
//!   Distribution registry 2.8 and Docker Hub answer): the referrers tag schema's index, tag
//!   `sha256-<hex>` in the same repository, looked up as any tag is (so cached, revalidated and
//!   verified as a manifest);
//! - neither has anything: an empty index, as the spec requires; never a 404.
//!
//! A filter is always applied here too, whatever the upstream did, so a client asking for one
//! always gets `OCI-Filters-Applied: artifactType` and only that type.
//!
//! The answer is cached per (upstream, repository, subject, filter), trusted for the upstream's
//! `tag_ttl`, then fetched again; while the upstream fails it is served stale (the reply says
//! why), and a filter never asked before is answered from the last whole list, filtered here
//! (stale too); N clients asking at once make one upstream request (a flight per key). Isolation comes
//! with the key: a list is only ever answered through the upstream that gave it.
//!
//! Trade-off: there is no cheap revalidation (no digest to compare in a HEAD), so an expired list
//! is fetched whole again; lists are small.
//!
//! Rule of dependency: uses `manifests` (the list cache), `flight`, `upstream`, `oci`, `error`,
//! `metrics`, its parent's `Mirror` and the siblings `manifest` (the tag lookup) and `tag_list`
//! (the `Link` reader).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};

use super::manifest::Form;
use super::tag_list::next_path;
use super::{Mirror, Target};
use crate::error::Error;
use crate::manifests::{MAX_MANIFEST_BYTES, ReferrersEntry, ReferrersKey};
use crate::oci::referrers::{self, Descriptor};
use crate::oci::{Digest, Reference, media};
use crate::upstream::{NotFoundKind, Upstream, UpstreamRequest};

/// Most pages of one paged answer followed.
const MAX_PAGES: usize = 64;
/// Most referrers in one answer.
const MAX_REFERRERS: usize = 10_000;

/// A referrers answer.
#[derive(Debug, Clone)]
pub struct ReferrersReply {
    /// The image index a client gets.
    pub body: Bytes,
    /// The descriptors it lists.
    pub list: Arc<[Descriptor]>,
    /// The list is filtered by `artifactType` (`OCI-Filters-Applied`).
    pub filtered: bool,
    /// Served from an expired answer because the upstream failed; the reason.
    pub stale: Option<String>,
    /// `hit`, `miss`, `tagschema`, `stale`, `coalesced`: for logs.
    pub outcome: &'static str,
}

impl ReferrersReply {
    fn of(entry: ReferrersEntry, outcome: &'static str) -> ReferrersReply {
        ReferrersReply {
            body: entry.body,
            list: entry.list,
            filtered: entry.filtered,
            stale: None,
            outcome,
        }
    }
}

impl Mirror {
    /// The referrers of `subject` in the target's repository, filtered by `artifact_type` if
    /// given.
    pub async fn referrers(
        self: &Arc<Self>,
        target: &Target,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersReply, Error> {
        let up = self.upstream(target.upstream)?;
        let key = ReferrersKey {
            upstream: target.upstream,
            repo: target.name.clone(),
            subject: subject.clone(),
            artifact_type: artifact_type.map(str::to_owned),
        };
        if let Some(entry) = self.manifests.referrers(&key).await
            && entry.is_fresh(up.config().tag_ttl)
        {
            self.metrics.cache("referrers", up.name(), "hit");
            return Ok(ReferrersReply::of(entry, "hit"));
        }
        let this = self.clone();
        let target = target.clone();
        let joined = self.referrer_flights.join(key.clone(), move || async move {
            this.refresh_referrers(&target, &key).await
        });
        let (mut reply, followed) = self.flight_result(joined, "referrers", up.name()).await?;
        if followed {
            reply.outcome = "coalesced";
        }
        Ok(reply)
    }

    /// A list the cache cannot answer fresh: fetch it, or fall back to the stale one.
    async fn refresh_referrers(
        self: &Arc<Self>,
        target: &Target,
        key: &ReferrersKey,
    ) -> Result<ReferrersReply, Error> {
        let up = &self.upstream(target.upstream)?;
        let cached = self.manifests.referrers(key).await;
        if let Some(entry) = &cached
            && entry.is_fresh(up.config().tag_ttl)
        {
            // Refreshed by a flight that ended just before this one started.
            self.metrics.cache("referrers", up.name(), "hit");
            return Ok(ReferrersReply::of(entry.clone(), "hit"));
        }
        let fetched = self.fetch_referrers(target, up, key).await;
        match fetched {
            Ok((mut list, outcome, stale)) => {
                if let Some(t) = &key.artifact_type {
                    referrers::filter(&mut list, t);
                }
                let entry = ReferrersEntry::new(list, key.artifact_type.is_some());
                self.metrics.cache("referrers", up.name(), "miss");
                if stale.is_none() {
                    self.manifests
                        .set_referrers(key.clone(), entry.clone())
                        .await;
                }
                Ok(ReferrersReply {
                    stale,
                    ..ReferrersReply::of(entry, outcome)
                })
            }
            Err(e) if e.allows_stale() => {
                let stand_in = match cached {
                    Some(entry) => Some(entry),
                    None => self.whole_list_filtered(key).await,
                };
                let Some(entry) = stand_in else {
                    return Err(e);
                };
                self.note_stale(up, "referrers", &key.subject, &e);
                Ok(ReferrersReply {
                    stale: Some(e.to_string()),
                    ..ReferrersReply::of(entry, "stale")
                })
            }
            Err(e) => Err(e),
        }
    }

    /// For a filter never answered before: the last known whole list of the subject, filtered
    /// here. (`berth warm --referrers` and most clients ask for the whole list; cosign and
    /// notation ask with a filter, and offline they must get what the whole list holds.)
    async fn whole_list_filtered(&self, key: &ReferrersKey) -> Option<ReferrersEntry> {
        let t = key.artifact_type.as_deref()?;
        let whole = ReferrersKey {
            artifact_type: None,
            ..key.clone()
        };
        let entry = self.manifests.referrers(&whole).await?;
        let mut list = entry.list.to_vec();
        referrers::filter(&mut list, t);
        Some(ReferrersEntry::new(list, true))
    }

    /// The whole list from the upstream (unfiltered by berth yet): from its referrers API, or
    /// from the tag schema where it has none. The outcome for logs, and why the list is stale if
    /// the tag schema's index was.
    async fn fetch_referrers(
        self: &Arc<Self>,
        target: &Target,
        up: &Upstream,
        key: &ReferrersKey,
    ) -> Result<(Vec<Descriptor>, &'static str, Option<String>), Error> {
        let own = format!("/v2/{}/referrers/{}", target.name, key.subject);
        let mut path = own.clone();
        if let Some(t) = &key.artifact_type {
            path = url::form_urlencoded::Serializer::new(format!("{path}?"))
                .append_pair("artifactType", t)
                .finish();
        }
        let mut list = Vec::new();
        for page in 0..MAX_PAGES {
            let resp = up.send(referrers_request(&target.name, path)).await?;
            let resp = if page == 0 {
                match resp.unless_route_missing(NotFoundKind::Manifest).await? {
                    Some(resp) => resp,
                    None => return self.referrers_from_tag(target, &key.subject).await,
                }
            } else {
                resp.error_for_status(NotFoundKind::Manifest).await?
            };
            // Only a next page of this same list: a link elsewhere would leave the repository
            // the request was authorised for.
            let next = resp
                .headers
                .get(header::LINK)
                .and_then(|l| next_path(l, &up.config().url))
                .filter(|p| p == &own || p.starts_with(&format!("{own}?")));
            let body = resp.bytes(MAX_MANIFEST_BYTES).await?;
            let got = referrers::parse(&body).ok_or_else(|| {
                Error::upstream_bad(up.name(), "referrers answer is not an image index")
            })?;
            list.extend(got);
            if list.len() > MAX_REFERRERS {
                return Err(Error::upstream_bad(
                    up.name(),
                    format!("more than {MAX_REFERRERS} referrers"),
                ));
            }
            match next {
                Some(p) => path = p,
                None => return Ok((list, "miss", None)),
            }
        }
        Err(Error::upstream_bad(
            up.name(),
            format!("referrers answer of more than {MAX_PAGES} pages"),
        ))
    }

    /// The referrers tag schema: the index under tag `sha256-<hex>`, or none.
    async fn referrers_from_tag(
        self: &Arc<Self>,
        target: &Target,
        subject: &Digest,
    ) -> Result<(Vec<Descriptor>, &'static str, Option<String>), Error> {
        let tag = Reference::Tag(referrers::fallback_tag(subject));
        let reply = match self.lookup_manifest(target, &tag, Form::Stored).await {
            Ok(reply) => reply,
            Err(e) if e.is_not_found() => return Ok((Vec::new(), "tagschema", None)),
            Err(e) => return Err(e),
        };
        let m = &reply.manifest;
        let list = (m.media_type == media::OCI_INDEX)
            .then(|| referrers::parse(&m.bytes))
            .flatten()
            .ok_or_else(|| {
                Error::upstream_bad(
                    &self.upstream_name(target.upstream),
                    format!(
                        "the referrers tag {tag} is a {} ({}), not an image index",
                        m.media_type, m.digest
                    ),
                )
            })?;
        Ok((list, "tagschema", reply.stale))
    }
}

fn referrers_request(name: &crate::oci::RepoName, path_and_query: String) -> UpstreamRequest {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(media::OCI_INDEX));
    UpstreamRequest {
        method: Method::GET,
        path_and_query,
        headers,
        repository: Some(name.clone()),
    }
}
