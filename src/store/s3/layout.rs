//! Where each thing lives in the bucket: the key of every object berth writes, under the
//! configured `prefix` (none: the bucket's root).
//!
//! - `blobs/sha256/<hex>`: exactly the bytes whose sha256 is `<hex>`.
//! - `manifests/sha256/<hex>`: a manifest; its media type is the object's `Content-Type`, which S3,
//!   Ceph RGW and `object_store`'s in-memory store all keep and give back on GET (checked against
//!   RGW in `tests/it/s3.rs`), so no sidecar object is needed.
//! - `tags/<upstream>/<repo>/<tag>`: a [`TagRecord`](super::TagRecord) as JSON (`digest`,
//!   `media_type`, `resolved_at` in Unix seconds): what a replica resolved the tag to, and when.
//!   [`Bucket::list_tags`] reads `(upstream, repo, tag)` back from these keys.
//! - `origins/<upstream>/sha256/<hex>`: an empty marker: the blob `<hex>` came through (or was
//!   confirmed by) the upstream named `<upstream>` (lowercased, as `origins` names it). The
//!   bucket's counterpart of the local `origins` records: a replica that finds a blob in the
//!   bucket answers it through upstream U only when U's marker is there (else it asks U first),
//!   so content fetched with one upstream's credentials is not read through another. Written
//!   after the blob's upload completed (or was found there), so a marker never names a blob that
//!   is not (yet) in the bucket; a marker whose blob was deleted is harmless (the blob's HEAD
//!   comes first).
//! - `access/sha256/<hex>`: an empty marker whose `Last-Modified` is the last recorded pull of
//!   the blob or manifest `<hex>` by any replica: what the share's eviction orders by (its key,
//!   `access_key`, lives with that eviction in [`evict`](super::evict)).
//!
//! Rule of dependency: part of `store::s3`; adds the key methods to [`Bucket`] (the client holds
//! the prefix and calls them, importing nothing from here); uses `oci` and `object_store`'s `Path`.

use object_store::path::Path;

use super::Bucket;
use crate::oci::Digest;

impl Bucket {
    /// `<prefix>/<rest>`.
    pub(super) fn key(&self, rest: &str) -> Path {
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

    /// What every blob key starts with, `<prefix>/blobs/sha256/`: the multipart uploads the sweep
    /// looks at.
    pub(super) fn blob_prefix(&self) -> String {
        self.key("blobs/sha256/").to_string() + "/"
    }
}
