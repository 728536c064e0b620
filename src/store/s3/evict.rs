//! Eviction of the bucket's share (`[storage.s3] max_size`, `max_age`): which objects go (a pure
//! policy, [`plan`]) and the pass that lists, decides and deletes ([`Bucket::evict`]).
//!
//! # Last pull without a write per hit
//! S3 has no access time, and a write per pull would cost more than the pull of a cached blob.
//! A pull is recorded in two steps:
//! - in memory, per replica (`tier`'s touch table): every blob GET and manifest answer notes the
//!   digest and the time, no I/O;
//! - in the bucket, as an empty marker `access/sha256/<hex>` whose `Last-Modified` is the time
//!   of the write. A replica writes a digest's marker when it flushes its table (every minute),
//!   at most once per [`TOUCH_EVERY`](crate::tier::TOUCH_EVERY) per digest; a pull served
//!   *from the bucket* writes it at once (at most once a minute per digest), because that is the
//!   pull eviction must see soon (below).
//!
//! An object's last pull is the newest of: its own `Last-Modified` (an upload follows a pull), its
//! access marker's, and the evicting replica's own in-memory touches. One listing of
//! `access/sha256/` gives every marker's time (1,000 per request), so a pass costs a few listings,
//! not a request per object. The precision is [`TOUCH_EVERY`](crate::tier::TOUCH_EVERY) (an
//! hour) for content pulled from replicas' local disks, which is what least-recent ordering over
//! days needs.
//!
//! # Never under a reader
//! Readers of a bucket object are fills on any replica streaming it. Within one replica they are
//! in its touch table. Across replicas a [`Limits::grace`] protects them: an object whose last
//! pull is within the grace (15 minutes by default, like the local `keep_referenced`) is never a
//! victim, and a replica that starts reading an object writes its marker at once. Just before
//! deleting a victim the pass reads its marker again and keeps the object when a pull was recorded
//! since the listing. What remains is a read that outlasts the grace, or one that starts in the
//! milliseconds between that check and the delete: the reader's body breaks off (or its GET
//! answers 404) and its fill goes on from the upstream through the resume path, as with any
//! broken bucket body. A short body is the worst a client sees, never a wrong byte.
//!
//! # One replica or all
//! Every replica runs the pass (every [`EVICT_EVERY`](crate::tier::EVICT_EVERY)); no lock is
//! needed. Replicas that run it at once see the same listing and pick the same least-recent
//! victims, so the deletes overlap and S3's DELETE is idempotent. A pass that starts while
//! another is deleting may see a smaller share and evict a little less, never more than the
//! goal. Trade-off: a lease object would save the duplicate listings, but some S3 servers ignore
//! conditional PUT, so a lease could not be trusted either way.
//!
//! # What is deleted
//! The object (a blob or a manifest), then every upstream's origin marker of its digest (so a
//! marker never outlives its object for long), then its access marker. Tag records are left:
//! a record naming an evicted manifest resolves to a miss by digest, fetched from the upstream.
//! The share counts blobs and manifests; markers and tag records are a few hundred bytes. An
//! access marker whose object is not there (an upload that failed after the pull was recorded)
//! is deleted by a pass once it is [`ORPHAN_MARKER_AGE`] old.
//! The share is a goal checked every pass, not a hard limit: uploads between passes may take the
//! bucket past `max_size` for up to [`EVICT_EVERY`](crate::tier::EVICT_EVERY).
//!
//! Rule of dependency: part of `store::s3`; uses `oci`, and `config` for the `[storage]` settings
//! its [`Limits`] are built from; nothing above it.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::{Bucket, BucketError};
use crate::config::StorageConfig;
use crate::oci::Digest;

/// Objects pulled within this long are never evicted (see the module docs).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(15 * 60);
/// An access marker without its object is deleted by a pass once it is this old.
pub const ORPHAN_MARKER_AGE: Duration = Duration::from_secs(24 * 3600);

/// What an object in the share is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        }
    }
}

/// Why an object was evicted (`berth_bucket_evictions_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The share passed its high watermark.
    Size,
    /// Nobody pulled it for `max_age`.
    Age,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Age => "age",
        }
    }
}

/// One object of the share and its last pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub digest: Digest,
    pub size: u64,
    pub last_pull: SystemTime,
}

/// The share's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_size: Option<u64>,
    pub max_age: Option<Duration>,
    /// Eviction by size starts past this share of `max_size` ...
    pub high_watermark: f64,
    /// ... and stops under this one (the local tier's watermarks).
    pub low_watermark: f64,
    /// Pulled within this long: never a victim.
    pub grace: Duration,
}

impl Limits {
    /// The share's limits from `[storage.s3] max_size`, `max_age` and `keep_pulled` (the grace),
    /// with the local tier's watermarks (`[storage]`).
    pub fn from_config(st: &StorageConfig) -> Limits {
        let s3 = st.s3.as_ref();
        Limits {
            max_size: s3.and_then(|s| s.max_size).map(|m| m.as_u64()),
            max_age: s3.and_then(|s| s.max_age),
            high_watermark: st.high_watermark,
            low_watermark: st.low_watermark,
            grace: s3.map_or(DEFAULT_GRACE, |s| s.keep_pulled),
        }
    }

    /// Whether a pass has anything to do.
    pub fn any(&self) -> bool {
        self.max_size.is_some() || self.max_age.is_some()
    }
}

/// Chooses the victims among `entries` at `now`: first what nobody pulled for `max_age`, then,
/// while the share is over its high watermark, the least recently pulled down to the low one.
/// Nothing pulled within the grace is chosen. Pure.
pub fn plan(entries: &[Entry], limits: &Limits, now: SystemTime) -> Vec<(Entry, Reason)> {
    let age = |e: &Entry| now.duration_since(e.last_pull).unwrap_or(Duration::ZERO);
    let mut order: Vec<&Entry> = entries.iter().filter(|e| age(e) >= limits.grace).collect();
    // Least recent first; the digest breaks ties so every replica picks the same victims.
    order.sort_by(|a, b| {
        (a.last_pull, &a.digest, a.kind.as_str()).cmp(&(b.last_pull, &b.digest, b.kind.as_str()))
    });
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for e in order {
        match limits.max_age {
            Some(max) if age(e) > max => {
                total -= e.size;
                out.push((e.clone(), Reason::Age));
            }
            _ => rest.push(e),
        }
    }
    if let Some(max) = limits.max_size {
        let high = (max as f64 * limits.high_watermark) as u64;
        let low = (max as f64 * limits.low_watermark) as u64;
        if total > high {
            for e in rest {
                if total <= low {
                    break;
                }
                total -= e.size;
                out.push((e.clone(), Reason::Size));
            }
        }
    }
    out
}

/// What one pass found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pass {
    /// Blobs and manifests in the share when it was listed, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// What was deleted, and why.
    pub evicted: Vec<(Entry, Reason)>,
    /// Victims kept because a pull was recorded after the listing.
    pub kept: u64,
}

impl Pass {
    pub fn evicted_bytes(&self) -> u64 {
        self.evicted.iter().map(|(e, _)| e.size).sum()
    }
}

impl Bucket {
    /// `<prefix>/access/sha256/<hex>`
    pub fn access_key(&self, digest: &Digest) -> Path {
        self.key(&format!("access/sha256/{}", digest.hex()))
    }

    /// Records a pull of `digest` now (an empty marker; its `Last-Modified` is the time).
    pub async fn put_access(&self, digest: &Digest) -> Result<(), BucketError> {
        let key = self.access_key(digest);
        self.timed(
            "touch",
            self.store.put(&key, object_store::PutPayload::new()),
        )
        .await
        .map(|_| ())
    }

    /// When a pull of `digest` was last recorded in the bucket, if ever.
    pub async fn access_time(&self, digest: &Digest) -> Result<Option<SystemTime>, BucketError> {
        let meta = self
            .timed("head", self.store.head(&self.access_key(digest)))
            .await?;
        Ok(meta.map(|m| m.last_modified.into()))
    }

    /// The blobs and manifests in the bucket, each with its last pull: the newest of its own
    /// `Last-Modified`, its access marker and `touches` (this replica's pulls not yet in the
    /// bucket).
    pub async fn share(
        &self,
        touches: &HashMap<Digest, SystemTime>,
    ) -> Result<Vec<Entry>, BucketError> {
        Ok(self.inventory(touches).await?.0)
    }

    /// [`share`](Self::share), and the access markers whose object is gone (with their times).
    async fn inventory(
        &self,
        touches: &HashMap<Digest, SystemTime>,
    ) -> Result<(Vec<Entry>, Vec<(Digest, SystemTime)>), BucketError> {
        let mut access: HashMap<Digest, SystemTime> = self
            .list("access/sha256")
            .map_ok(|o| (o.digest, o.last_modified))
            .try_collect()
            .await?;
        let blobs: Vec<_> = self.list_blobs().try_collect().await?;
        let manifests: Vec<_> = self.list_manifests().try_collect().await?;
        let mut out = Vec::with_capacity(blobs.len() + manifests.len());
        let mut seen = std::collections::HashSet::new();
        for (kind, objects) in [(Kind::Blob, blobs), (Kind::Manifest, manifests)] {
            out.extend(objects.into_iter().map(|o| {
                let last_pull = [access.get(&o.digest), touches.get(&o.digest)]
                    .into_iter()
                    .flatten()
                    .fold(o.last_modified, |a, b| a.max(*b));
                seen.insert(o.digest.clone());
                Entry {
                    kind,
                    digest: o.digest,
                    size: o.size,
                    last_pull,
                }
            }));
        }
        access.retain(|d, _| !seen.contains(d));
        Ok((out, access.into_iter().collect()))
    }

    /// The upstreams that have origin markers (the names under `origins/`).
    pub async fn origin_upstreams(&self) -> Result<Vec<String>, BucketError> {
        let dir = self.key("origins");
        let listed = self
            .timed("list", self.store.list_with_delimiter(Some(&dir)))
            .await?;
        Ok(listed
            .map(|l| {
                l.common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Deletes an object, then its origin markers (of `upstreams`), then its access marker.
    pub async fn remove_object(
        &self,
        kind: Kind,
        digest: &Digest,
        upstreams: &[String],
    ) -> Result<(), BucketError> {
        match kind {
            Kind::Blob => self.delete_blob(digest).await?,
            Kind::Manifest => self.delete_manifest(digest).await?,
        }
        for u in upstreams {
            self.timed("delete", self.store.delete(&self.origin_key(u, digest)))
                .await?;
        }
        self.timed("delete", self.store.delete(&self.access_key(digest)))
            .await?;
        Ok(())
    }

    /// One eviction pass (see the module docs): lists the share, chooses the victims with
    /// [`plan`], and deletes each one unless a pull was recorded for it since the listing.
    /// Stops at the first failed request; what was deleted before it stays counted.
    pub async fn evict(
        &self,
        limits: &Limits,
        touches: &HashMap<Digest, SystemTime>,
    ) -> Result<Pass, BucketError> {
        self.evict_at(limits, touches, SystemTime::now()).await
    }

    /// [`evict`](Self::evict) as if it were `now` (tests move the clock).
    pub async fn evict_at(
        &self,
        limits: &Limits,
        touches: &HashMap<Digest, SystemTime>,
        now: SystemTime,
    ) -> Result<Pass, BucketError> {
        let started = Instant::now();
        let (entries, orphans) = self.inventory(touches).await?;
        // Markers of objects that never arrived (an upload that failed) or went another way:
        // dropped once nothing could still be uploading under them.
        for (d, at) in orphans {
            if now.duration_since(at).unwrap_or(Duration::ZERO) > ORPHAN_MARKER_AGE {
                self.timed("delete", self.store.delete(&self.access_key(&d)))
                    .await?;
            }
        }
        let mut pass = Pass {
            objects: entries.len() as u64,
            bytes: entries.iter().map(|e| e.size).sum(),
            ..Pass::default()
        };
        self.metrics.share_bytes.set(pass.bytes as i64);
        self.metrics.share_objects.set(pass.objects as i64);
        let victims = plan(&entries, limits, now);
        if victims.is_empty() {
            return Ok(pass);
        }
        let upstreams = self.origin_upstreams().await?;
        let mut result = Ok(());
        for (e, reason) in victims {
            match self.access_time(&e.digest).await {
                Ok(Some(t)) if t > e.last_pull => {
                    pass.kept += 1;
                    continue;
                }
                Ok(_) => {}
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
            if let Err(err) = self.remove_object(e.kind, &e.digest, &upstreams).await {
                result = Err(err);
                break;
            }
            let r = reason.as_str();
            self.metrics.evictions.with_label_values(&[r]).inc();
            self.metrics
                .evicted_bytes
                .with_label_values(&[r])
                .inc_by(e.size);
            self.metrics.share_bytes.sub(e.size as i64);
            self.metrics.share_objects.dec();
            tracing::debug!(digest = %e.digest, kind = e.kind.as_str(), size = e.size,
                reason = r, "evicted from the bucket");
            pass.evicted.push((e, reason));
        }
        if !pass.evicted.is_empty() {
            tracing::info!(
                evicted = pass.evicted.len(),
                bytes = pass.evicted_bytes(),
                share_bytes = pass.bytes - pass.evicted_bytes(),
                kept = pass.kept,
                ms = started.elapsed().as_millis() as u64,
                "evicted from the bucket"
            );
        }
        result.map(|()| pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn entry(name: &str, size: u64, last: u64) -> Entry {
        Entry {
            kind: Kind::Blob,
            digest: Digest::of(name.as_bytes()),
            size,
            last_pull: at(last),
        }
    }

    fn limits(max_size: Option<u64>, max_age: Option<u64>) -> Limits {
        Limits {
            max_size,
            max_age: max_age.map(Duration::from_secs),
            high_watermark: 0.95,
            low_watermark: 0.85,
            grace: Duration::from_secs(60),
        }
    }

    fn names(v: &[(Entry, Reason)]) -> Vec<(Digest, Reason)> {
        v.iter().map(|(e, r)| (e.digest.clone(), *r)).collect()
    }

    #[test]
    fn under_the_high_watermark_nothing_goes() {
        let e = [entry("a", 50, 0), entry("b", 45, 10)];
        assert!(plan(&e, &limits(Some(100), None), at(1000)).is_empty());
    }

    #[test]
    fn over_the_high_watermark_the_least_recent_go_down_to_the_low_one() {
        let e = [
            entry("new", 40, 900),
            entry("old", 30, 100),
            entry("mid", 30, 500),
        ];
        // 100 > 95: evict "old" (70 left <= 85): done.
        let got = plan(&e, &limits(Some(100), None), at(1000));
        assert_eq!(names(&got), vec![(e[1].digest.clone(), Reason::Size)]);
        // A share of 60: 100 > 57; down to 51: "old", then "mid" (40 left).
        let got = plan(&e, &limits(Some(60), None), at(1000));
        assert_eq!(
            names(&got),
            vec![
                (e[1].digest.clone(), Reason::Size),
                (e[2].digest.clone(), Reason::Size)
            ]
        );
    }

    #[test]
    fn nothing_pulled_within_the_grace_is_a_victim() {
        let e = [entry("reading", 90, 980), entry("old", 20, 0)];
        // Over the limit, but the big one was pulled 20 s ago: only "old" can go.
        let got = plan(&e, &limits(Some(50), Some(10)), at(1000));
        assert_eq!(names(&got), vec![(e[1].digest.clone(), Reason::Age)]);
    }

    #[test]
    fn age_goes_first_and_counts_toward_the_size() {
        let e = [
            entry("stale", 30, 0),
            entry("a", 40, 800),
            entry("b", 40, 900),
        ];
        // 110 > 95; "stale" goes for age (80 left <= 85): nothing for size.
        let got = plan(&e, &limits(Some(100), Some(500)), at(1000));
        assert_eq!(names(&got), vec![(e[0].digest.clone(), Reason::Age)]);
    }

    #[test]
    fn ties_break_by_digest_so_replicas_agree() {
        let e = [entry("x", 10, 5), entry("y", 10, 5), entry("z", 10, 5)];
        let mut rev = e.clone();
        rev.reverse();
        let l = limits(Some(20), None);
        assert_eq!(plan(&e, &l, at(1000)), plan(&rev, &l, at(1000)));
        assert_eq!(plan(&e, &l, at(1000)).len(), 2);
    }

    #[test]
    fn without_limits_nothing_goes() {
        let e = [entry("a", u64::MAX / 2, 0)];
        let l = limits(None, None);
        assert!(!l.any());
        assert!(plan(&e, &l, at(1_000_000)).is_empty());
    }

    #[test]
    fn a_clock_behind_the_bucket_counts_as_just_pulled() {
        // Last-Modified comes from the server's clock; one ahead of ours is "now", not an error.
        let e = [entry("future", 100, 2000)];
        assert!(plan(&e, &limits(Some(10), Some(1)), at(1000)).is_empty());
    }
}
