//! The object-store tier: an S3-compatible bucket (`[storage.s3]`) holding what the local disk
//! holds, so that replicas share one cache. This file is the bucket's client and its key layout;
//! choosing when to read or fill it is the caller's job.
//!
//! # Layout
//! Under the configured `prefix` (none: the bucket's root):
//! - `blobs/sha256/<hex>`: exactly the bytes whose sha256 is `<hex>`.
//! - `manifests/sha256/<hex>`: a manifest; its media type is the object's `Content-Type`, which S3,
//!   Ceph RGW and `object_store`'s in-memory store all keep and give back on GET (checked against
//!   RGW in `tests/s3.rs`), so no sidecar object is needed.
//! - `tags/<upstream>/<repo>/<tag>`: a [`TagRecord`] as JSON (`digest`, `media_type`,
//!   `resolved_at` in Unix seconds): what a replica resolved the tag to, and when.
//! - `origins/<upstream>/sha256/<hex>`: an empty marker: the blob `<hex>` came through (or was
//!   confirmed by) the upstream named `<upstream>` (lowercased, as `origins` names it). The
//!   bucket's counterpart of the local `origins` records: a replica that finds a blob in the
//!   bucket answers it through upstream U only when U's marker is there (else it asks U first),
//!   so content fetched with one upstream's credentials is not read through another. Written
//!   after the blob's upload completed (or was found there), so a marker never names a blob that
//!   is not (yet) in the bucket; a marker whose blob was deleted is harmless (the blob's HEAD
//!   comes first).
//!
//! # Nothing unverified under a digest's key
//! A blob goes up as a multipart upload ([`Bucket::put_blob`]) that hashes every byte on the way
//! and is completed only when the sha256 (and the size, when known) matched; otherwise it is
//! aborted, and so on any error, and when the future is dropped (a guard spawns the abort). S3
//! makes a multipart object visible only at completion, so a reader never sees a part of it. A
//! blob that ends within its first part is held in memory and goes up in one PUT, after it was
//! verified.
//! Correctness does not rest on conditional PUT (some servers ignore `If-None-Match`): two
//! replicas uploading one digest both complete the same verified bytes, the last one wins, and
//! both are right. A HEAD first skips the upload when the object is already there. A manifest is
//! small: it is verified in memory and put whole.
//!
//! # Stale uploads
//! A berth killed mid-upload leaves an open multipart upload (its parts cost storage, never
//! correctness: nothing is visible). `object_store` cannot list them, so
//! [`Bucket::abort_stale_uploads`] presigns `ListMultipartUploads` and `AbortMultipartUpload`
//! with `rusty-s3` (no hand-made SigV4) and sends them with `reqwest`. A bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) does the same on servers that support it.
//!
//! # Trade-offs
//! - Memory: an upload holds up to `part_size * (parts_in_flight + 1)` bytes (16 MiB parts, 2 in
//!   flight: 48 MiB); S3 needs parts of at least 5 MiB, and one blob may have at most 10,000 parts,
//!   so 16 MiB parts carry blobs up to about 156 GiB.
//! - Timeouts: object_store's defaults end any request after 30 s in all (a large blob streamed to
//!   a slow client would be cut) and retry for up to 3 minutes (an unreachable bucket would stall
//!   a pull that long). The tier has no whole-request limit, fails a connection that delivers
//!   nothing for [`READ_TIMEOUT`], and retries [`MAX_RETRIES`] times within [`RETRY_TIMEOUT`].
//! - Dependencies: `object_store` with `aws-base` + `ring` and reqwest on the crate's one rustls
//!   (ring provider, installed as the process default by [`Bucket::connect`]); its `aws` feature
//!   would have brought `aws-lc-rs`, a second crypto stack with a C build. It pulls in reqwest,
//!   chrono, quick-xml, md-5, crc-fast and rustls-platform-verifier (system roots).
//!
//! Rule of dependency: part of `store`; uses `config` (its own table) and `oci`, and registers its
//! own metric families ([`BucketMetrics`]) in the registry it is handed; nothing above it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutPayloadMut,
};
use object_store::{ClientOptions, RetryConfig};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::config::{S3Config, S3Credentials};
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

/// Why a bucket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The bucket's server (or the way to it) failed.
    #[error("bucket: {0}")]
    Store(#[from] object_store::Error),
    /// The bytes handed to an upload did not hash to the digest: aborted, nothing stored.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: Digest, actual: Digest },
    /// The bytes handed to an upload were not the announced size: aborted, nothing stored.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    /// The body being uploaded failed (the upstream broke off): aborted, nothing stored.
    #[error("upload source failed: {0}")]
    Source(String),
    /// An object under berth's keys that berth did not write as it is (a tag record that is not
    /// JSON, a listing that is not XML).
    #[error("bucket: unexpected content: {0}")]
    Invalid(String),
    /// `[storage.s3]` cannot make a client.
    #[error("bucket configuration: {0}")]
    Config(String),
    /// A request sent outside `object_store` (the multipart listing) failed.
    #[error("bucket request: {0}")]
    Http(String),
}

/// What [`Bucket::put_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Uploaded, verified and completed.
    Uploaded,
    /// Already in the bucket: the body was not read.
    AlreadyThere,
}

/// An object under a digest key, as HEAD and listings see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub digest: Digest,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// A blob being read from the bucket: its whole size, the range the stream carries, the bytes.
pub struct BlobRead {
    pub size: u64,
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, BucketError>>,
}

impl fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRead")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// What a tag resolved to, and when (`tags/<upstream>/<repo>/<tag>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    /// Unix seconds.
    pub resolved_at: u64,
}

/// A multipart upload still open on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// The bucket tier's metric families.
#[derive(Clone)]
pub struct BucketMetrics {
    /// `berth_bucket_requests_total{op,outcome}`
    pub requests: IntCounterVec,
    /// `berth_bucket_request_seconds{op}`: to the answer's headers (a GET), or to completion.
    pub seconds: HistogramVec,
    /// `berth_bucket_multipart_aborts_total{reason}`: reason = digest | size | source | error |
    /// dropped | stale.
    pub aborts: IntCounterVec,
}

impl BucketMetrics {
    pub fn new() -> BucketMetrics {
        BucketMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "berth_bucket_requests_total",
                    "Requests to the bucket tier, by operation and outcome.",
                ),
                &["op", "outcome"],
            )
            .expect("valid metric"),
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "berth_bucket_request_seconds",
                    "Time of bucket requests, by operation (a GET: to its headers; an upload: to completion).",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["op"],
            )
            .expect("valid metric"),
            aborts: IntCounterVec::new(
                Opts::new(
                    "berth_bucket_multipart_aborts_total",
                    "Multipart uploads aborted, by reason (digest, size, source, error, dropped, stale).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        }
    }

    /// Registers every family in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.seconds.clone()))?;
        registry.register(Box::new(self.aborts.clone()))
    }

    fn record(&self, op: &str, outcome: &str, started: Instant) {
        self.requests.with_label_values(&[op, outcome]).inc();
        self.seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for BucketMetrics {
    fn default() -> Self {
        BucketMetrics::new()
    }
}

/// The pieces needed to presign requests `object_store` does not make (see the module docs).
#[derive(Clone)]
struct Signer {
    bucket: rusty_s3::Bucket,
    credentials: rusty_s3::Credentials,
    http: reqwest::Client,
}

/// The bucket tier. Cheap to clone.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// The configured prefix, without surrounding slashes (`""`: none).
    prefix: String,
    part_size: usize,
    parts_in_flight: usize,
    metrics: BucketMetrics,
    signer: Option<Signer>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .field("part_size", &self.part_size)
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
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key.expose());
        if let Some(t) = &creds.session_token {
            b = b.with_token(t.expose());
        }
        let (endpoint, style) = match &cfg.endpoint {
            Some(e) => {
                let e = e.as_str().trim_end_matches('/').to_owned();
                b = b
                    .with_endpoint(&e)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(e.starts_with("http://"));
                (e, rusty_s3::UrlStyle::Path)
            }
            None => (
                format!("https://s3.{}.amazonaws.com", cfg.region),
                rusty_s3::UrlStyle::VirtualHost,
            ),
        };
        let store = b.build()?;
        let url = endpoint
            .parse()
            .map_err(|e| BucketError::Config(format!("endpoint {endpoint}: {e}")))?;
        let signer = Signer {
            bucket: rusty_s3::Bucket::new(url, style, cfg.bucket.clone(), cfg.region.clone())
                .map_err(|e| BucketError::Config(e.to_string()))?,
            credentials: match &creds.session_token {
                Some(t) => rusty_s3::Credentials::new_with_token(
                    creds.access_key_id.clone(),
                    creds.secret_access_key.expose().to_owned(),
                    t.expose().to_owned(),
                ),
                None => rusty_s3::Credentials::new(
                    creds.access_key_id.clone(),
                    creds.secret_access_key.expose().to_owned(),
                ),
            },
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| BucketError::Config(e.to_string()))?,
        };
        let mut bucket = Bucket::with_store(Arc::new(store), cfg.key_prefix(), metrics);
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
            metrics,
            signer: None,
        }
    }

    /// Uploads blobs in parts of `bytes` (S3 wants at least 5 MiB but for the last part).
    pub fn with_part_size(mut self, bytes: usize) -> Bucket {
        self.part_size = bytes.max(1);
        self
    }

    /// The client underneath (tests reach past the tier with it).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn metrics(&self) -> &BucketMetrics {
        &self.metrics
    }

    fn key(&self, rest: &str) -> Path {
        match self.prefix.is_empty() {
            true => Path::from(rest),
            false => Path::from(format!("{}/{rest}", self.prefix)),
        }
    }

    /// `<prefix>/blobs/sha256/<hex>`
    pub fn blob_key(&self, digest: &Digest) -> Path {
        self.key(&format!("blobs/sha256/{}", digest.hex()))
    }

    /// `<prefix>/manifests/sha256/<hex>`
    pub fn manifest_key(&self, digest: &Digest) -> Path {
        self.key(&format!("manifests/sha256/{}", digest.hex()))
    }

    /// `<prefix>/tags/<upstream>/<repo>/<tag>`
    pub fn tag_key(&self, upstream: &str, repo: &str, tag: &str) -> Path {
        self.key(&format!("tags/{upstream}/{repo}/{tag}"))
    }

    /// `<prefix>/origins/<upstream>/sha256/<hex>`
    pub fn origin_key(&self, upstream: &str, digest: &Digest) -> Path {
        self.key(&format!("origins/{upstream}/sha256/{}", digest.hex()))
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
    async fn timed<T>(
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
    /// does not have it. Nothing is buffered beyond what the connection delivers.
    pub async fn get_blob(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, BucketError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let key = self.blob_key(digest);
        let Some(got) = self
            .timed("get", self.store.get_opts(&key, options))
            .await?
        else {
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
    fn list(&self, dir: &str) -> impl Stream<Item = Result<ObjectInfo, BucketError>> + use<> {
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

    /// Uploads a blob from `body`, verifying it on the way (see the module docs): completed only
    /// when the sha256 is `digest` and, with `expected_size`, the size matched; aborted on a
    /// mismatch, an error of the body or the bucket, or when this future is dropped. When the
    /// bucket already holds the blob (at the expected size), `body` is not read.
    pub async fn put_blob<E: fmt::Display>(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        body: impl Stream<Item = Result<Bytes, E>>,
    ) -> Result<Stored, BucketError> {
        if let Some(have) = self.head_blob(digest).await?
            && expected_size.is_none_or(|s| s == have.size)
        {
            self.metrics
                .requests
                .with_label_values(&["upload", "exists"])
                .inc();
            return Ok(Stored::AlreadyThere);
        }
        let started = Instant::now();
        let result = self.upload(digest, expected_size, body).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(BucketError::Digest { .. } | BucketError::Size { .. }) => "mismatch",
            Err(BucketError::Source(_)) => "source_error",
            Err(_) => "error",
        };
        self.metrics.record("upload", outcome, started);
        result
    }

    async fn upload<E: fmt::Display>(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        body: impl Stream<Item = Result<Bytes, E>>,
    ) -> Result<Stored, BucketError> {
        let mut up = Upload {
            bucket: self,
            key: self.blob_key(digest),
            upload: None,
            parts: JoinSet::new(),
            buffer: PutPayloadMut::new(),
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    up.abort("source").await;
                    return Err(BucketError::Source(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if let Some(expected) = expected_size
                && size > expected
            {
                up.abort("size").await;
                return Err(BucketError::Size {
                    expected,
                    actual: size,
                });
            }
            hasher.update(&chunk);
            if let Err(e) = up.put(chunk).await {
                up.abort("error").await;
                return Err(e);
            }
        }
        if let Some(expected) = expected_size
            && size != expected
        {
            up.abort("size").await;
            return Err(BucketError::Size {
                expected,
                actual: size,
            });
        }
        let actual = Digest::from_sha256(&hasher.finalize());
        if actual != *digest {
            up.abort("digest").await;
            return Err(BucketError::Digest {
                expected: digest.clone(),
                actual,
            });
        }
        if let Err(e) = up.complete().await {
            up.abort("error").await;
            return Err(e);
        }
        Ok(Stored::Uploaded)
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

    /// The multipart uploads open under this bucket's blob keys (all pages).
    pub async fn open_uploads(&self) -> Result<Vec<OpenUpload>, BucketError> {
        let signer = self.signer()?;
        let prefix = self.key("blobs/sha256/").to_string() + "/";
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let started = Instant::now();
            let page = self
                .list_uploads_page(signer, &prefix, &key_marker, &id_marker)
                .await;
            self.metrics.record(
                "list_uploads",
                if page.is_ok() { "ok" } else { "error" },
                started,
            );
            let page = page?;
            for u in page.uploads {
                let initiated = u.initiated.parse::<jiff::Timestamp>().map_err(|e| {
                    BucketError::Invalid(format!("Initiated {:?}: {e}", u.initiated))
                })?;
                out.push(OpenUpload {
                    key: u.key,
                    upload_id: u.upload_id,
                    initiated: SystemTime::from(initiated),
                });
            }
            if !page.is_truncated {
                return Ok(out);
            }
            key_marker = page.next_key_marker.unwrap_or_default();
            id_marker = page.next_upload_id_marker.unwrap_or_default();
            if key_marker.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Aborts the multipart uploads under the blob keys that were started more than `older_than`
    /// ago (left by a berth that was killed mid-upload); returns how many. Uploads younger than
    /// that may belong to a live replica and are left alone.
    pub async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, BucketError> {
        let signer = self.signer()?;
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut aborted = 0;
        for u in self.open_uploads().await? {
            if u.initiated > cutoff {
                continue;
            }
            let action = rusty_s3::actions::AbortMultipartUpload::new(
                &signer.bucket,
                Some(&signer.credentials),
                &u.key,
                &u.upload_id,
            );
            let url = rusty_s3::S3Action::sign(&action, Duration::from_secs(300));
            let started = Instant::now();
            let res = signer.http.delete(url).send().await;
            match res {
                // 404 NoSuchUpload: completed or aborted since the listing.
                Ok(r)
                    if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND =>
                {
                    self.metrics.record("abort", "ok", started);
                    self.metrics.aborts.with_label_values(&["stale"]).inc();
                    tracing::info!(key = %u.key, upload_id = %u.upload_id, "aborted a stale multipart upload");
                    aborted += 1;
                }
                Ok(r) => {
                    self.metrics.record("abort", "error", started);
                    return Err(BucketError::Http(format!(
                        "aborting {}: {}",
                        u.key,
                        r.status()
                    )));
                }
                Err(e) => {
                    self.metrics.record("abort", "error", started);
                    return Err(BucketError::Http(format!("aborting {}: {e}", u.key)));
                }
            }
        }
        Ok(aborted)
    }

    fn signer(&self) -> Result<&Signer, BucketError> {
        self.signer.as_ref().ok_or_else(|| {
            BucketError::Config("listing multipart uploads needs an S3 bucket".into())
        })
    }

    async fn list_uploads_page(
        &self,
        signer: &Signer,
        prefix: &str,
        key_marker: &str,
        id_marker: &str,
    ) -> Result<ListUploads, BucketError> {
        // `?uploads` has no rusty-s3 action: presign it with the crate's own signer. The query
        // must be sorted by name.
        let mut query = vec![("prefix", prefix), ("uploads", "")];
        if !key_marker.is_empty() {
            query.push(("key-marker", key_marker));
            query.push(("upload-id-marker", id_marker));
            query.sort();
        }
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            signer.bucket.base_url().clone(),
            signer.credentials.key(),
            signer.credentials.secret(),
            signer.credentials.token(),
            signer.bucket.region(),
            300,
            query.iter().copied(),
            std::iter::empty(),
        );
        let res = signer
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| BucketError::Http(e.to_string()))?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| BucketError::Http(e.to_string()))?;
        if !status.is_success() {
            return Err(BucketError::Http(format!(
                "ListMultipartUploads: {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        quick_xml::de::from_str(&text)
            .map_err(|e| BucketError::Invalid(format!("ListMultipartUploads answer: {e}")))
    }
}

/// One page of `ListMultipartUploads`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploads {
    #[serde(default, rename = "Upload")]
    uploads: Vec<ListedUpload>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
    initiated: String,
}

/// A blob on its way into the bucket, verified by the caller before [`complete`](Self::complete).
///
/// The first `part_size` bytes are held in memory: a blob that ends within them goes up in one
/// PUT after it was verified (most config blobs and small layers: one request, no multipart
/// upload). Past them, a multipart upload starts and parts go up as they fill, at most
/// `parts_in_flight` at once. Until it is completed the upload belongs to this guard: every way
/// out other than a successful completion aborts it, dropping included (the abort is spawned).
/// A drop while the upload is being created can leave one open on the server: the stale-upload
/// pass is for those (and for a killed process).
struct Upload<'a> {
    bucket: &'a Bucket,
    key: Path,
    upload: Option<Box<dyn MultipartUpload>>,
    /// The parts being uploaded; dropping the set cancels them.
    parts: JoinSet<object_store::Result<()>>,
    /// Bytes not yet sent: less than one part.
    buffer: PutPayloadMut,
}

impl Upload<'_> {
    /// Takes the next bytes; sends each part as it fills (starting the multipart upload with the
    /// first), after waiting for room among the parts in flight.
    async fn put(&mut self, mut bytes: Bytes) -> Result<(), BucketError> {
        let part_size = self.bucket.part_size;
        while !bytes.is_empty() {
            let take = (part_size - self.buffer.content_length()).min(bytes.len());
            self.buffer.push(bytes.split_to(take));
            if self.buffer.content_length() == part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<(), BucketError> {
        while self.parts.len() >= self.bucket.parts_in_flight {
            self.join_part().await?;
        }
        let upload = match &mut self.upload {
            Some(u) => u,
            None => {
                let opts = PutMultipartOptions {
                    attributes: octet_stream(),
                    ..PutMultipartOptions::default()
                };
                let started = self
                    .bucket
                    .store
                    .put_multipart_opts(&self.key, opts)
                    .await?;
                self.upload.insert(started)
            }
        };
        let payload = std::mem::take(&mut self.buffer).freeze();
        self.parts.spawn(upload.put_part(payload));
        Ok(())
    }

    async fn join_part(&mut self) -> Result<(), BucketError> {
        match self.parts.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(e.into()),
            Some(Err(e)) => Err(BucketError::Http(format!("part upload task: {e}"))),
        }
    }

    /// Sends what is left and makes the object visible: one PUT when no multipart upload was
    /// needed, else the last part and the completion. On error the caller aborts.
    async fn complete(&mut self) -> Result<(), BucketError> {
        if self.upload.is_none() {
            let payload = std::mem::take(&mut self.buffer).freeze();
            let opts = PutOptions {
                attributes: octet_stream(),
                ..PutOptions::default()
            };
            self.bucket.store.put_opts(&self.key, payload, opts).await?;
            return Ok(());
        }
        if self.buffer.content_length() > 0 {
            self.send_part().await?;
        }
        while !self.parts.is_empty() {
            self.join_part().await?;
        }
        let upload = self
            .upload
            .as_mut()
            .expect("a multipart upload was started");
        upload.complete().await?;
        self.upload = None;
        Ok(())
    }

    /// Cancels the parts in flight and aborts the multipart upload, if one was started.
    async fn abort(&mut self, reason: &str) {
        self.parts.abort_all();
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        self.bucket
            .metrics
            .aborts
            .with_label_values(&[reason])
            .inc();
        if let Err(e) = upload.abort().await {
            tracing::warn!(key = %self.key, error = %e,
                "could not abort a multipart upload; it stays open until a stale-upload pass");
        }
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        self.parts.abort_all();
        self.bucket
            .metrics
            .aborts
            .with_label_values(&["dropped"])
            .inc();
        let key = self.key.to_string();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(%key, error = %e, "could not abort a dropped multipart upload");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%key, "multipart upload dropped outside a runtime; left open")
            }
        }
    }
}

fn octet_stream() -> Attributes {
    Attributes::from_iter([(Attribute::ContentType, "application/octet-stream")])
}

#[doc(hidden)]
pub mod testing;

#[cfg(test)]
mod tests;
