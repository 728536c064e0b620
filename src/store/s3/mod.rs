//! The object-store tier: an S3-compatible bucket (`[storage.s3]`) holding what the local disk
//! holds, so that replicas share one cache. This module is the bucket's client, its key layout
//! and its housekeeping; choosing when to read or fill it is the caller's job (`tier`, `fill`).
//!
//! One room per concern:
//! - this file: the tier's vocabulary ([`BucketError`], [`Stored`], [`ObjectInfo`], [`BlobRead`],
//!   [`TagRecord`]) and the map;
//! - `layout`: where each thing lives in the bucket (blobs, manifests, tag records, origin and
//!   access markers), under the configured prefix;
//! - `client`: [`Bucket`]: `object_store`'s S3 client set up for the tier (timeouts, retries, one
//!   crypto stack) and every request made through it;
//! - `metrics`: [`BucketMetrics`], the tier's metric families;
//! - `upload`: [`Bucket::put_blob`]: nothing unverified under a digest's key (a multipart upload
//!   hashed on the way, completed only when it matched, aborted on every other way out);
//! - `sweep`: [`Bucket::abort_stale_uploads`]: multipart uploads left open by a killed berth, on a
//!   second HTTP client (why is written there);
//! - [`evict`]: the share's eviction (`max_size`, `max_age`) and the access markers it orders by;
//! - [`testing`] (hidden): a fault-injecting in-memory store for the tests.
//!
//! Rule of dependency: part of `store`; uses `config` (its own table) and `oci`, and registers its
//! own metric families ([`BucketMetrics`]) in the registry it is handed; nothing above it (it
//! knows nothing of `upstream`, `fill`, `tier` or `mirror`: they call it). Within it: `client`
//! uses `metrics` and `sweep`, `sweep` uses `metrics`; `layout`, `upload` and `evict` add methods
//! to [`Bucket`], so they use `client` (through this file's re-export) and nothing imports them;
//! no two rooms import each other.

use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::oci::Digest;

mod client;
pub mod evict;
mod layout;
mod metrics;
mod ranged;
mod sweep;
#[doc(hidden)]
pub mod testing;
mod upload;

pub use client::{
    Bucket, CONNECT_TIMEOUT, DEFAULT_PART_SIZE, DEFAULT_PARTS_IN_FLIGHT, MAX_RETRIES, READ_TIMEOUT,
    RETRY_TIMEOUT,
};
pub use metrics::BucketMetrics;
pub use ranged::{PART_RETRIES, READ_PART};
pub use sweep::OpenUpload;

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
    /// The source of a vouched upload ([`Bucket::put_blob_vouched`]) did not verify its bytes
    /// (a wrong digest, or it failed first): aborted, nothing stored.
    #[error("upload not verified by its source")]
    Unverified,
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
    /// A ranged read of a blob (`ranged`) did not deliver its bytes: the object is gone, or an
    /// answer was short, long or of another range.
    #[error("bucket: bytes {start}..{end} of the blob: {reason}")]
    Range {
        start: u64,
        end: u64,
        reason: String,
    },
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

#[cfg(test)]
mod tests;
