//! Putting a blob into the bucket with nothing unverified ever under its digest's key
//! ([`Bucket::put_blob`]).
//!
//! A blob goes up as a multipart upload that hashes every byte on the way and is completed only
//! when the sha256 (and the size, when known) matched; otherwise it is aborted, and so on any
//! error, and when the future is dropped (a guard spawns the abort). A file that berth verified a
//! moment ago (a fill's, just committed: `tier::Recheck::JustVerified`) goes up vouched instead
//! ([`Bucket::put_blob_vouched`]): the upload takes its source's verdict rather than hashing the
//! same bytes a second time, and aborts unless it is "verified". S3 makes a multipart object
//! visible only at completion, so a reader never sees a part of it. A blob that ends within its
//! first part is held in memory and goes up in one PUT, after it was verified.
//! Correctness does not rest on conditional PUT (some servers ignore `If-None-Match`): two
//! replicas uploading one digest both complete the same verified bytes, the last one wins, and
//! both are right. A HEAD first skips the upload when the object is already there. (A manifest is
//! small: [`Bucket::put_manifest`] verifies it in memory and puts it whole.)
//!
//! Memory: an upload holds up to `part_size * (parts_in_flight + 1)` bytes (16 MiB parts, 2 in
//! flight: 48 MiB); S3 needs parts of at least 5 MiB, and one blob may have at most 10,000 parts,
//! so 16 MiB parts carry blobs up to about 156 GiB. An upload left open by a killed process is
//! the sweep's (`sweep`).
//!
//! Rule of dependency: part of `store::s3`; adds `put_blob` to [`Bucket`] (it reads the client's
//! store, part size and metrics) and uses its parent's vocabulary and `oci`; nothing imports it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, MultipartUpload, PutMultipartOptions, PutOptions, PutPayloadMut,
};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use super::{Bucket, BucketError, Stored};
use crate::oci::Digest;

/// Who checks an upload's bytes against the digest before it is completed.
enum Check {
    /// The upload hashes them itself.
    Hash(Sha256),
    /// The caller hashes the very same bytes, in the same order, and says so: `true` when they
    /// matched the digest, `false` aborts.
    Vouched(Pin<Box<dyn Future<Output = bool> + Send>>),
}

impl Bucket {
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
        self.put_checked(digest, expected_size, body, Check::Hash(Sha256::new()))
            .await
    }

    /// [`put_blob`](Self::put_blob) for bytes that their source has hashed or hashes anyway (a
    /// file a fill committed a moment ago, `tier::Recheck`). The upload does not hash;
    /// after the body's last byte it waits for `verdict`, and completes only on `true` (and the
    /// expected size); `false` aborts it ([`BucketError::Unverified`]). Sound only when `body`
    /// carries exactly the bytes the verdict is about, in order: the caller's promise.
    pub async fn put_blob_vouched<E: fmt::Display>(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        body: impl Stream<Item = Result<Bytes, E>>,
        verdict: impl Future<Output = bool> + Send + 'static,
    ) -> Result<Stored, BucketError> {
        self.put_checked(
            digest,
            expected_size,
            body,
            Check::Vouched(Box::pin(verdict)),
        )
        .await
    }

    async fn put_checked<E: fmt::Display>(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        body: impl Stream<Item = Result<Bytes, E>>,
        check: Check,
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
        let result = self.upload(digest, expected_size, body, check).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(BucketError::Digest { .. } | BucketError::Size { .. }) => "mismatch",
            Err(BucketError::Unverified) => "unverified",
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
        mut check: Check,
    ) -> Result<Stored, BucketError> {
        let mut up = Upload {
            bucket: self,
            key: self.blob_key(digest),
            upload: None,
            parts: JoinSet::new(),
            buffer: PutPayloadMut::new(),
        };
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
            if let Check::Hash(h) = &mut check {
                h.update(&chunk);
            }
            if let Err(e) = up.put(chunk).await {
                up.abort("error").await;
                return Err(e);
            }
        }
        // A vouched body may have ended early because its source failed or called it off: its
        // verdict says which, before the size does.
        if let Check::Vouched(verdict) = &mut check
            && !verdict.await
        {
            up.abort("unverified").await;
            return Err(BucketError::Unverified);
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
        if let Check::Hash(h) = check {
            let actual = Digest::from_sha256(&h.finalize());
            if actual != *digest {
                up.abort("digest").await;
                return Err(BucketError::Digest {
                    expected: digest.clone(),
                    actual,
                });
            }
        }
        if let Err(e) = up.complete().await {
            up.abort("error").await;
            return Err(e);
        }
        Ok(Stored::Uploaded)
    }
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
