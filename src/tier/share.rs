//! The bucket's share as the running berth keeps it: pulls noted in memory and flushed as access
//! markers, blobs and manifests pulled here but missing from the bucket put back (what makes
//! `berth warm` reach the bucket through a berth that had them on disk already), and the
//! periodic eviction pass. The policy and the markers are `store::s3::evict`'s; this file only
//! decides when.
//!
//! # Costs
//! A pull costs a map insert. A flush (every [`FLUSH_EVERY`]) writes one marker per digest
//! pulled since, at most once per [`TOUCH_EVERY`] per digest, and HEADs the object with it (the
//! backfill check): a replica serving 10,000 distinct digests an hour sends at most 20,000 small
//! requests an hour, whatever the number of pulls. A pull served from the bucket writes its
//! marker at once (at most once per [`READ_TOUCH_EVERY`]), so other replicas' passes see the
//! reader within the grace.
//!
//! Trade-off: a replica that stops loses the pulls noted since its last flush (at most
//! [`FLUSH_EVERY`]); they only order eviction, and the objects were uploaded or read recently
//! enough to sit near the young end of it anyway.
//!
//! Rule of dependency: part of `tier`; uses `store` (`s3::evict`, committed files to upload).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{Recheck, Tier};
use crate::oci::Digest;
use crate::store::Store;
use crate::store::s3::evict::{Limits, Pass};

/// The touch table is flushed this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// A digest's access marker is written at most this often by one replica (pulls from its disk).
pub const TOUCH_EVERY: Duration = Duration::from_secs(3600);
/// ... and at most this often for pulls served from the bucket (readers eviction must see).
pub const READ_TOUCH_EVERY: Duration = Duration::from_secs(60);
/// An eviction pass runs this often (with `max_size` or `max_age`).
pub const EVICT_EVERY: Duration = Duration::from_secs(600);
/// Requests a flush sends at once.
const FLUSH_CONCURRENCY: usize = 8;

/// Where the bytes of a blob pull came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullSource {
    /// The local disk: put back into the bucket when it lacks the blob.
    Local,
    /// The bucket: its marker is written at once (a reader eviction must see).
    Bucket,
    /// A fill from the upstream (or a peer): its own upload takes it to the bucket.
    Fill,
}

/// What a pull was of: a manifest carries what it takes to put it back.
#[derive(Debug, Clone)]
enum What {
    Blob { backfill: bool },
    Manifest { media_type: String, body: Bytes },
}

#[derive(Debug, Clone)]
struct Pulled {
    at: SystemTime,
    upstream: String,
    what: What,
}

/// This replica's pulls (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Touches {
    /// Pulled since the last flush.
    pending: HashMap<Digest, Pulled>,
    /// Digests whose marker this replica wrote within [`TOUCH_EVERY`]: when, and the last pull
    /// seen since (for this replica's own passes).
    written: HashMap<Digest, (SystemTime, SystemTime)>,
}

/// The share as the last pass saw it (for `/healthz?verbose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareInfo {
    /// Blobs and manifests left after the pass, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    pub max_bytes: Option<u64>,
    pub at: SystemTime,
}

/// Shared with `health`.
pub type ShareState = Arc<std::sync::Mutex<Option<ShareInfo>>>;

impl Tier {
    /// Notes a blob GET answered through `upstream` from `source`.
    pub fn touch_blob(self: &Arc<Self>, digest: &Digest, upstream: &str, source: PullSource) {
        let what = What::Blob {
            backfill: source == PullSource::Local,
        };
        self.touch(digest, upstream, what, source == PullSource::Bucket);
    }

    /// Notes a manifest answered through `upstream` (with what it takes to put it back).
    pub fn touch_manifest(
        self: &Arc<Self>,
        digest: &Digest,
        upstream: &str,
        media_type: &str,
        body: &Bytes,
    ) {
        let what = What::Manifest {
            media_type: media_type.to_owned(),
            body: body.clone(),
        };
        self.touch(digest, upstream, what, false);
    }

    fn touch(self: &Arc<Self>, digest: &Digest, upstream: &str, what: What, from_bucket: bool) {
        let now = SystemTime::now();
        let mut t = self.touches.lock().unwrap();
        if from_bucket {
            let recent = t
                .written
                .get(digest)
                .is_some_and(|(w, _)| age(*w, now) < READ_TOUCH_EVERY);
            if !recent {
                t.written.insert(digest.clone(), (now, now));
                let (tier, digest) = (self.clone(), digest.clone());
                tokio::spawn(async move {
                    if let Err(e) = tier.bucket.put_access(&digest).await {
                        tier.failed(&format!("recording a pull of {digest}"), &e);
                    }
                });
                return;
            }
        }
        t.pending.insert(
            digest.clone(),
            Pulled {
                at: now,
                upstream: upstream.to_ascii_lowercase(),
                what,
            },
        );
    }

    /// This replica's pulls that the bucket may not show yet: the last one per digest.
    pub fn recent_pulls(&self) -> HashMap<Digest, SystemTime> {
        let t = self.touches.lock().unwrap();
        let mut out: HashMap<Digest, SystemTime> = t
            .written
            .iter()
            .map(|(d, (_, p))| (d.clone(), *p))
            .collect();
        for (d, p) in &t.pending {
            let e = out.entry(d.clone()).or_insert(p.at);
            *e = (*e).max(p.at);
        }
        out
    }

    /// Writes the markers of the pulls noted since the last flush (those not written within
    /// [`TOUCH_EVERY`]) and puts back what the bucket lacks: a blob from `store`'s verified
    /// file (through [`upload`](Self::upload)), a manifest from memory. Returns how many markers
    /// were written. A failed request ends the flush (the rest is noted again by its next pull).
    pub async fn flush_touches(self: &Arc<Self>, store: &Arc<Store>) -> usize {
        let now = SystemTime::now();
        let batch: Vec<(Digest, Pulled)> = {
            let mut t = self.touches.lock().unwrap();
            t.written.retain(|_, (w, _)| age(*w, now) < TOUCH_EVERY);
            let pending = std::mem::take(&mut t.pending);
            let mut due = Vec::new();
            for (d, p) in pending {
                match t.written.get_mut(&d) {
                    Some((_, last)) => *last = (*last).max(p.at),
                    None => {
                        t.written.insert(d.clone(), (now, p.at));
                        due.push((d, p));
                    }
                }
            }
            due
        };
        let failed = std::sync::atomic::AtomicBool::new(false);
        let written = std::sync::atomic::AtomicUsize::new(0);
        futures_util::stream::iter(batch)
            .for_each_concurrent(FLUSH_CONCURRENCY, |(digest, p)| {
                let (failed, written) = (&failed, &written);
                async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    if failed.load(Relaxed) {
                        self.touches.lock().unwrap().written.remove(&digest);
                        return;
                    }
                    if let Err(e) = self.backfill(store, &digest, &p).await {
                        failed.store(true, Relaxed);
                        self.touches.lock().unwrap().written.remove(&digest);
                        self.failed(&format!("recording a pull of {digest}"), &e);
                        return;
                    }
                    written.fetch_add(1, Relaxed);
                }
            })
            .await;
        written.into_inner()
    }

    /// The marker of one pull, and the object put back when the bucket lacks it.
    async fn backfill(
        self: &Arc<Self>,
        store: &Arc<Store>,
        digest: &Digest,
        p: &Pulled,
    ) -> Result<(), crate::store::s3::BucketError> {
        let bucket = &self.bucket;
        match &p.what {
            What::Blob { backfill: false } => {}
            What::Blob { backfill: true } => {
                if bucket.head_blob(digest).await?.is_none() {
                    tracing::debug!(%digest, "pulled here, missing from the bucket: uploading it");
                    self.upload(
                        store.clone(),
                        digest.clone(),
                        p.upstream.clone(),
                        Recheck::Hash,
                    );
                }
            }
            What::Manifest { media_type, body } => {
                if bucket.head_manifest(digest).await?.is_none() {
                    bucket
                        .put_manifest(digest, media_type, body.clone())
                        .await?;
                    bucket.put_origin(&p.upstream, digest).await?;
                }
            }
        }
        bucket.put_access(digest).await
    }

    /// One eviction pass with this replica's pulls merged in; the share it leaves is what
    /// `/healthz?verbose` shows. `None`: the pass failed (recorded like any bucket error).
    pub async fn evict_once(&self, limits: &Limits) -> Option<Pass> {
        let touches = self.recent_pulls();
        match self.bucket.evict(limits, &touches).await {
            Ok(pass) => {
                *self.share.lock().unwrap() = Some(ShareInfo {
                    objects: pass.objects - pass.evicted.len() as u64,
                    bytes: pass.bytes - pass.evicted_bytes(),
                    max_bytes: limits.max_size,
                    at: SystemTime::now(),
                });
                Some(pass)
            }
            Err(e) => {
                self.failed("evicting from the bucket", &e);
                None
            }
        }
    }

    /// Flushes the touch table every [`FLUSH_EVERY`] and, with `max_size` or `max_age`, runs an
    /// eviction pass every [`EVICT_EVERY`] (the first one at once). Runs until dropped (the
    /// server aborts it on shutdown).
    pub async fn keep_share(self: Arc<Self>, store: Arc<Store>, limits: Limits) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut evict = tokio::time::interval(EVICT_EVERY);
        evict.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.tick().await;
        loop {
            tokio::select! {
                _ = flush.tick() => {
                    self.flush_touches(&store).await;
                }
                _ = evict.tick(), if limits.any() => {
                    self.evict_once(&limits).await;
                }
            }
        }
    }

    /// The share as the last eviction pass left it.
    pub fn share(&self) -> &ShareState {
        &self.share
    }
}

fn age(t: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::{Bucket, BucketMetrics};
    use object_store::ObjectStoreExt;

    fn tier() -> Arc<Tier> {
        let store = Arc::new(object_store::memory::InMemory::new());
        Arc::new(Tier::new(Arc::new(Bucket::with_store(
            store,
            "",
            BucketMetrics::new(),
        ))))
    }

    fn touches_written(t: &Tier) -> u64 {
        t.bucket
            .metrics()
            .requests
            .with_label_values(&["touch", "ok"])
            .get()
    }

    /// Waits (bounded) until `n` markers were written.
    async fn until_written(t: &Tier, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while touches_written(t) < n {
            assert!(tokio::time::Instant::now() < deadline, "no marker written");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_pull_from_disk_is_flushed_once_and_put_back_into_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let data = Bytes::from_static(b"a layer on the local disk only");
        let d = Digest::of(&data);
        store.put(&d, data.clone()).await.unwrap();
        let t = tier();
        for _ in 0..3 {
            t.touch_blob(&d, "Docker.io", PullSource::Local);
        }
        assert_eq!(touches_written(&t), 0, "a pull costs no request");
        assert!(t.recent_pulls().contains_key(&d));
        assert_eq!(t.flush_touches(&store).await, 1);
        assert!(t.bucket.access_time(&d).await.unwrap().is_some());
        // The bucket lacked the blob: uploaded from the verified file, with its origin.
        let origin = t.bucket.origin_key("docker.io", &d);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while t.bucket.object_store().head(&origin).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "never uploaded");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            t.bucket.head_blob(&d).await.unwrap().unwrap().size,
            data.len() as u64
        );
        // Pulled again within TOUCH_EVERY: remembered, not written again.
        t.touch_blob(&d, "docker.io", PullSource::Local);
        assert_eq!(t.flush_touches(&store).await, 0);
        assert_eq!(touches_written(&t), 1);
        assert!(t.recent_pulls()[&d] >= t.touches.lock().unwrap().written[&d].0);
    }

    /// The backfill reads a file committed who knows when: it is hashed again on the way, and a
    /// file that rotted on disk since never reaches the bucket, which every replica shares.
    #[tokio::test]
    async fn a_file_that_no_longer_matches_its_digest_is_not_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let data = Bytes::from_static(b"a layer that rots on the local disk");
        let d = Digest::of(&data);
        store.put(&d, data.clone()).await.unwrap();
        let path = crate::store::blobs_dir(dir.path()).join(d.hex());
        let mut rotten = data.to_vec();
        rotten[3] ^= 0x20;
        std::fs::write(&path, &rotten).unwrap();
        let t = tier();
        t.touch_blob(&d, "docker.io", PullSource::Local);
        assert_eq!(t.flush_touches(&store).await, 1);
        let m = t.bucket.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while m.requests.with_label_values(&["upload", "mismatch"]).get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never refused");
            tokio::task::yield_now().await;
        }
        assert!(t.bucket.head_blob(&d).await.unwrap().is_none());
        let origin = t.bucket.origin_key("docker.io", &d);
        assert!(t.bucket.object_store().head(&origin).await.is_err());
    }

    #[tokio::test]
    async fn a_pull_from_the_bucket_is_recorded_at_once() {
        let t = tier();
        let d = Digest::of(b"read from the bucket");
        t.touch_blob(&d, "docker.io", PullSource::Bucket);
        until_written(&t, 1).await;
        // Within READ_TOUCH_EVERY a second reader costs nothing more now; the flush skips it too.
        t.touch_blob(&d, "docker.io", PullSource::Bucket);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        assert_eq!(t.flush_touches(&store).await, 0);
        assert_eq!(touches_written(&t), 1);
    }

    #[tokio::test]
    async fn a_manifest_missing_from_the_bucket_is_put_back_with_its_type() {
        let t = tier();
        let body = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let d = Digest::of(&body);
        let mt = "application/vnd.oci.image.manifest.v1+json";
        t.touch_manifest(&d, "docker.io", mt, &body);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        assert_eq!(t.flush_touches(&store).await, 1);
        let (got_type, got) = t.bucket.get_manifest(&d, 1 << 20).await.unwrap().unwrap();
        assert_eq!((got_type.as_str(), got), (mt, body));
        assert!(t.bucket.has_origin("docker.io", &d).await.unwrap());
    }

    #[tokio::test]
    async fn a_failed_flush_is_reported_and_the_pull_noted_again_next_time() {
        let t = tier();
        let d = Digest::of(b"x");
        // A flush over a store that refuses: the pass reports the bucket's error.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        t.touch_manifest(&d, "docker.io", "text/plain", &Bytes::from_static(b"not x"));
        assert_eq!(t.flush_touches(&store).await, 0);
        let (_, text) = t.last_error().lock().unwrap().clone().unwrap();
        assert!(text.contains("recording a pull"), "{text}");
        assert!(!t.readable(), "the bucket is skipped for a while");
        // Forgotten as written: the next pull of it is flushed again.
        assert!(!t.touches.lock().unwrap().written.contains_key(&d));
    }

    #[tokio::test]
    async fn an_eviction_pass_counts_the_share_for_health() {
        let t = tier();
        let data = Bytes::from(vec![7u8; 500]);
        let d = Digest::of(&data);
        t.bucket
            .put_blob(
                &d,
                Some(500),
                futures_util::stream::iter([Ok::<_, std::io::Error>(data)]),
            )
            .await
            .unwrap();
        let limits = Limits {
            max_size: Some(10_000),
            max_age: None,
            high_watermark: 0.95,
            low_watermark: 0.85,
            grace: Duration::ZERO,
        };
        let pass = t.evict_once(&limits).await.unwrap();
        assert!(pass.evicted.is_empty());
        let share = t.share().lock().unwrap().unwrap();
        assert_eq!(
            (share.objects, share.bytes, share.max_bytes),
            (1, 500, Some(10_000))
        );
    }
}
