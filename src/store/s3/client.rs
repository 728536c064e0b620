//! The bucket's client: [`Bucket`], `object_store`'s S3 client set up for the tier, and every
//! request berth makes through it (blobs read, listed and deleted; manifests, tag records and
//! origin markers put, got and deleted), each one counted in [`BucketMetrics`].
//!
//! Timeouts: object_store's defaults end any request after 30 s in all (a large blob streamed to
//! a slow client would be cut) and retry for up to 3 minutes (an unreachable bucket would stall a
//! pull that long). The tier has no whole-request limit, fails a connection that delivers nothing
//! for [`READ_TIMEOUT`], and retries [`MAX_RETRIES`] times within [`RETRY_TIMEOUT`].
//!
//! Dependencies: `object_store` with `aws-base` + `ring` and reqwest on the crate's one rustls
//! (ring provider, installed as the process default by [`Bucket::connect`]); its `aws` feature
//! would have brought `aws-lc-rs`, a second crypto stack with a C build. It pulls in reqwest,
//! chrono, quick-xml, md-5, crc-fast and rustls-platform-verifier (system roots).
//!
//! The other rooms add to [`Bucket`]: `layout` its keys, `upload` [`put_blob`](Bucket::put_blob),
//! `evict` the share's eviction; the stale-upload sweep is `sweep`'s [`Signer`], which this file
//! holds and calls.
//!
//! Rule of dependency: part of `store::s3`; uses `config` (its own table), `oci`, its parent's
//! vocabulary and its siblings `metrics` and `sweep` (neither imports it back); nothing above it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions,
    PutPayload,
};
use object_store::{ClientOptions, RetryConfig};

use super::metrics::BucketMetrics;
use super::ranged::READ_PART;
use super::sweep::{OpenUpload, Signer};
use super::{BlobRead, BucketError, ObjectInfo, TagRecord};
use crate::config::{MAX_READ_STREAMS, S3Config, S3Credentials};
use crate::oci::Digest;

/// Default size of one uploaded part (S3's minimum is 5 MiB for all but the last).
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// Default number of parts uploading at once per blob.
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 2;

/// Connecting to the bucket's server takes at most this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request whose connection delivers nothing for this long fails (a stalled read or upload).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of a failed request (object_store retries 5xx, 429 and connection errors with backoff).
pub const MAX_RETRIES: usize = 3;
/// Retrying stops after this long, so an unreachable bucket fails in seconds, not minutes.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// The bucket tier. Cheap to clone.
#[derive(Clone)]
pub struct Bucket {
    pub(super) store: Arc<dyn ObjectStore>,
    /// The configured prefix, without surrounding slashes (`""`: none); keys are `layout`'s.
    pub(super) prefix: String,
    /// Bytes of one uploaded part (`upload`).
    pub(super) part_size: usize,
    /// Parts uploading at once per blob (`upload`).
    pub(super) parts_in_flight: usize,
    /// Ranged GETs at once when reading a whole blob (`ranged`; 1: one stream).
    pub(super) read_streams: usize,
    pub(super) metrics: BucketMetrics,
    /// Presigns what `object_store` cannot send (`sweep`); only a bucket made by `connect`.
    pub(super) signer: Option<Signer>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .field("part_size", &self.part_size)
            .field("read_streams", &self.read_streams)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// The bucket `cfg` names (its credentials resolved by config validation). Makes no request.
    pub fn connect(cfg: &S3Config, metrics: BucketMetrics) -> Result<Bucket, BucketError> {
        // reqwest is built without a bundled crypto provider: use the ring one the rest of berth
        // uses. Already installed (by an earlier bucket, or a test) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let creds: &S3Credentials = cfg
            .credentials
            .as_ref()
            .ok_or_else(|| BucketError::Config("credentials were not resolved".into()))?;
        let mut b = AmazonS3Builder::new()
            .with_client_options(
                // No limit on a whole request: a blob streams to a slow client for as long as it
                // moves; a connection that stalls for READ_TIMEOUT is the failure instead.
                ClientOptions::new()
                    .with_timeout_disabled()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_read_timeout(READ_TIMEOUT),
            )
            .with_retry(RetryConfig {
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            })
            // SigV4 over a hash of every payload would be a third sha256 of each uploaded
            // byte (the fill's, and `put_blob`'s own when it reads a file, already vouch for
            // them). Unsigned payloads are what S3's own SDKs send over TLS; over plain HTTP an
            // on-path writer could swap an object's bytes, which every read catches anyway: a
            // bucket object is verified against its digest before it is ever served.
            .with_unsigned_payload(true)
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key.expose());
        if let Some(t) = &creds.session_token {
            b = b.with_token(t.expose());
        }
        let endpoint = cfg
            .endpoint
            .as_ref()
            .map(|e| e.as_str().trim_end_matches('/').to_owned());
        if let Some(e) = &endpoint {
            b = b
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(e.starts_with("http://"));
        }
        let store = b.build()?;
        let signer = Signer::new(cfg, creds, endpoint.as_deref())?;
        let mut bucket = Bucket::with_store(Arc::new(store), cfg.key_prefix(), metrics)
            .with_read_streams(cfg.read_streams);
        bucket.signer = Some(signer);
        Ok(bucket)
    }

    /// A bucket over any `ObjectStore` (tests wrap `object_store::memory::InMemory`). Without a
    /// signer, [`abort_stale_uploads`](Self::abort_stale_uploads) is unavailable.
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str, metrics: BucketMetrics) -> Bucket {
        Bucket {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            part_size: DEFAULT_PART_SIZE,
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
            read_streams: 1,
            metrics,
            signer: None,
        }
    }

    /// Uploads blobs in parts of `bytes` (S3 wants at least 5 MiB but for the last part).
    pub fn with_part_size(mut self, bytes: usize) -> Bucket {
        self.part_size = bytes.max(1);
        self
    }

    /// Reads a whole blob as up to `streams` ranged GETs at once (`[storage.s3] read_streams`;
    /// 1: one stream), at most [`MAX_READ_STREAMS`].
    pub fn with_read_streams(mut self, streams: usize) -> Bucket {
        self.read_streams = streams.clamp(1, MAX_READ_STREAMS);
        self
    }

    /// The client underneath (tests reach past the tier with it).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn metrics(&self) -> &BucketMetrics {
        &self.metrics
    }

    /// Records that `digest` came through `upstream` (an empty marker object).
    pub async fn put_origin(&self, upstream: &str, digest: &Digest) -> Result<(), BucketError> {
        let key = self.origin_key(upstream, digest);
        self.timed("put", self.store.put(&key, PutPayload::new()))
            .await
            .map(|_| ())
    }

    /// Whether `digest` is recorded as having come through `upstream`.
    pub async fn has_origin(&self, upstream: &str, digest: &Digest) -> Result<bool, BucketError> {
        let key = self.origin_key(upstream, digest);
        Ok(self.timed("head", self.store.head(&key)).await?.is_some())
    }

    /// Whether [`abort_stale_uploads`](Self::abort_stale_uploads) can run (a bucket made by
    /// [`connect`](Self::connect), not [`with_store`](Self::with_store)).
    pub fn lists_uploads(&self) -> bool {
        self.signer.is_some()
    }

    /// Runs one request, recording it: `outcome` names a success (`not_found` is one).
    pub(super) async fn timed<T>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, object_store::Error>>,
    ) -> Result<Option<T>, BucketError> {
        let started = Instant::now();
        match fut.await {
            Ok(v) => {
                self.metrics.record(op, "ok", started);
                Ok(Some(v))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.metrics.record(op, "not_found", started);
                Ok(None)
            }
            Err(e) => {
                self.metrics.record(op, "error", started);
                Err(e.into())
            }
        }
    }

    async fn head(&self, key: &Path, digest: &Digest) -> Result<Option<ObjectInfo>, BucketError> {
        let meta = self.timed("head", self.store.head(key)).await?;
        Ok(meta.map(|m| ObjectInfo {
            digest: digest.clone(),
            size: m.size,
            last_modified: m.last_modified.into(),
        }))
    }

    /// The blob's size and last change, or `None` when the bucket does not have it.
    pub async fn head_blob(&self, digest: &Digest) -> Result<Option<ObjectInfo>, BucketError> {
        self.head(&self.blob_key(digest), digest).await
    }

    /// Streams the blob (`range`: those bytes only, end exclusive), or `None` when the bucket
    /// does not have it. Nothing is buffered beyond what the connection delivers, but for the
    /// whole blob with `read_streams` above 1: then it is read as parallel ranges, handed on in
    /// order (`ranged`, which says what that holds in memory).
    pub async fn get_blob(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, BucketError> {
        let key = self.blob_key(digest);
        if range.is_none() && self.read_streams > 1 {
            match self.get_object(&key, Some(0..READ_PART)).await {
                Ok(Some(first)) => return Ok(Some(self.read_in_parts(key, first))),
                Ok(None) => return Ok(None),
                // An empty object has no first byte to range over (S3 answers 416): read it
                // whole, as any other failure is then answered.
                Err(_) => {}
            }
        }
        self.get_object(&key, range).await
    }

    /// One GET of `key` (`range` of it, end exclusive), streamed.
    pub(super) async fn get_object(
        &self,
        key: &Path,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, BucketError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let Some(got) = self.timed("get", self.store.get_opts(key, options)).await? else {
            return Ok(None);
        };
        let (size, range) = (got.meta.size, got.range.clone());
        let metrics = self.metrics.clone();
        let body = got
            .into_stream()
            .map_err(move |e| {
                metrics
                    .requests
                    .with_label_values(&["get_body", "error"])
                    .inc();
                BucketError::from(e)
            })
            .boxed();
        Ok(Some(BlobRead { size, range, body }))
    }

    /// Removes the blob (no error when it was not there: S3's DELETE says nothing either way).
    pub async fn delete_blob(&self, digest: &Digest) -> Result<(), BucketError> {
        self.timed("delete", self.store.delete(&self.blob_key(digest)))
            .await
            .map(|_| ())
    }

    /// Every blob in the bucket (keys that are not a digest are skipped).
    pub fn list_blobs(&self) -> impl Stream<Item = Result<ObjectInfo, BucketError>> + use<> {
        self.list("blobs/sha256")
    }

    /// Every manifest in the bucket.
    pub fn list_manifests(&self) -> impl Stream<Item = Result<ObjectInfo, BucketError>> + use<> {
        self.list("manifests/sha256")
    }

    /// The objects under `dir` named by a digest, recorded as one `list` request (`ok` when the
    /// listing ran to its end, `error` at its first failure).
    pub(super) fn list(
        &self,
        dir: &str,
    ) -> impl Stream<Item = Result<ObjectInfo, BucketError>> + use<> {
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let failed = Arc::new(AtomicBool::new(false));
        let on_error = failed.clone();
        let listing = self
            .store
            .list(Some(&self.key(dir)))
            .map(Some)
            .chain(futures_util::stream::once(async { None }));
        listing.filter_map(move |item| {
            let out = match item {
                Some(Ok(m)) => m
                    .location
                    .filename()
                    .and_then(Digest::from_hex)
                    .map(|digest| {
                        Ok(ObjectInfo {
                            digest,
                            size: m.size,
                            last_modified: m.last_modified.into(),
                        })
                    }),
                Some(Err(e)) => {
                    if !on_error.swap(true, Ordering::Relaxed) {
                        metrics.record("list", "error", started);
                    }
                    Some(Err(BucketError::from(e)))
                }
                None => {
                    if !failed.load(Ordering::Relaxed) {
                        metrics.record("list", "ok", started);
                    }
                    None
                }
            };
            std::future::ready(out)
        })
    }

    /// Stores a manifest after checking that `body` hashes to `digest`; `media_type` becomes the
    /// object's `Content-Type`.
    pub async fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), BucketError> {
        let actual = Digest::of(&body);
        if actual != *digest {
            self.metrics
                .requests
                .with_label_values(&["put", "mismatch"])
                .inc();
            return Err(BucketError::Digest {
                expected: digest.clone(),
                actual,
            });
        }
        let opts = PutOptions {
            attributes: Attributes::from_iter([(Attribute::ContentType, media_type.to_owned())]),
            ..PutOptions::default()
        };
        let key = self.manifest_key(digest);
        self.timed(
            "put",
            self.store.put_opts(&key, PutPayload::from(body), opts),
        )
        .await
        .map(|_| ())
    }

    /// A manifest and its media type, or `None`. The body is checked against `digest` (a manifest
    /// is small): an object that does not match is an error, never an answer.
    pub async fn get_manifest(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Option<(String, Bytes)>, BucketError> {
        let key = self.manifest_key(digest);
        let Some(got) = self
            .timed("get", self.store.get_opts(&key, GetOptions::default()))
            .await?
        else {
            return Ok(None);
        };
        if got.meta.size > limit {
            return Err(BucketError::Invalid(format!(
                "{key} is {} bytes, more than {limit}",
                got.meta.size
            )));
        }
        let media_type = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string())
            .ok_or_else(|| BucketError::Invalid(format!("{key} has no Content-Type")))?;
        let body = got.bytes().await?;
        if Digest::of(&body) != *digest {
            return Err(BucketError::Invalid(format!(
                "{key} does not hash to its name"
            )));
        }
        Ok(Some((media_type, body)))
    }

    /// The manifest's size and last change, or `None`.
    pub async fn head_manifest(&self, digest: &Digest) -> Result<Option<ObjectInfo>, BucketError> {
        self.head(&self.manifest_key(digest), digest).await
    }

    pub async fn delete_manifest(&self, digest: &Digest) -> Result<(), BucketError> {
        self.timed("delete", self.store.delete(&self.manifest_key(digest)))
            .await
            .map(|_| ())
    }

    /// Records what `upstream`'s `repo:tag` resolved to.
    pub async fn put_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        record: &TagRecord,
    ) -> Result<(), BucketError> {
        let json = serde_json::to_vec(record).map_err(|e| BucketError::Invalid(e.to_string()))?;
        let opts = PutOptions {
            attributes: Attributes::from_iter([(Attribute::ContentType, "application/json")]),
            ..PutOptions::default()
        };
        let key = self.tag_key(upstream, repo, tag);
        self.timed("put", self.store.put_opts(&key, json.into(), opts))
            .await
            .map(|_| ())
    }

    /// The last record of `upstream`'s `repo:tag`, or `None`.
    pub async fn get_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, BucketError> {
        let key = self.tag_key(upstream, repo, tag);
        let Some(got) = self.timed("get", self.store.get(&key)).await? else {
            return Ok(None);
        };
        let body = got.bytes().await?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| BucketError::Invalid(format!("{key}: {e}")))
    }

    /// Forgets the record of `upstream`'s `repo:tag` (no error when there was none).
    pub async fn delete_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<(), BucketError> {
        let key = self.tag_key(upstream, repo, tag);
        self.timed("delete", self.store.delete(&key))
            .await
            .map(|_| ())
    }

    /// Every tag record's `(upstream, repo, tag)`, from its key (`tags/<upstream>/<repo>/<tag>`;
    /// keys of another shape are skipped).
    pub async fn list_tags(&self) -> Result<Vec<(String, String, String)>, BucketError> {
        let dir = self.key("tags");
        let started = Instant::now();
        let listed: Result<Vec<_>, _> = self.store.list(Some(&dir)).try_collect().await;
        let outcome = if listed.is_ok() { "ok" } else { "error" };
        self.metrics.record("list", outcome, started);
        let skip = dir.parts().count();
        Ok(listed?
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<String> = m
                    .location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                match parts.as_slice() {
                    [upstream, repo @ .., tag] if !repo.is_empty() => {
                        Some((upstream.clone(), repo.join("/"), tag.clone()))
                    }
                    _ => None,
                }
            })
            .collect())
    }

    /// The multipart uploads open under this bucket's blob keys (all pages).
    pub async fn open_uploads(&self) -> Result<Vec<OpenUpload>, BucketError> {
        self.signer()?
            .open_uploads(&self.blob_prefix(), &self.metrics)
            .await
    }

    /// Aborts the multipart uploads under the blob keys that were started more than `older_than`
    /// ago (left by a berth that was killed mid-upload); returns how many. Uploads younger than
    /// that may belong to a live replica and are left alone.
    pub async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, BucketError> {
        self.signer()?
            .abort_stale_uploads(&self.blob_prefix(), &self.metrics, older_than)
            .await
    }

    fn signer(&self) -> Result<&Signer, BucketError> {
        self.signer.as_ref().ok_or_else(|| {
            BucketError::Config("listing multipart uploads needs an S3 bucket".into())
        })
    }
}
