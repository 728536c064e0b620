//! Manifests by digest and tag -> digest answers.
//!
//! - A manifest by digest is immutable: once verified it lives in the blob store (its bytes at
//!   `blobs/sha256/<hex>`) with its media type beside it at `manifests/sha256/<hex>`, and in a
//!   bounded in-memory cache (moka, weighed by bytes) so hot manifests never touch the disk.
//! - A tag answer (digest + media type + when it was last checked) lives in memory. It is kept after
//!   its TTL expires: the mirror revalidates it, and serves it stale if the upstream is down.
//!
//! Rule of dependency: uses `store`, `oci`, `error`; knows nothing of upstreams or HTTP.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Error;
use crate::oci::{Digest, RepoName, Tag};
use crate::store::Store;

/// Largest manifest berth accepts (the spec suggests registries take at least 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A verified manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Which tag: upstream index, repository, tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: usize,
    pub repo: RepoName,
    pub tag: Tag,
}

/// What a tag pointed at when it was last checked with the upstream.
#[derive(Debug, Clone)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    pub checked: Instant,
}

pub struct Manifests {
    store: Arc<Store>,
    types_dir: PathBuf,
    by_digest: moka::future::Cache<Digest, Arc<Manifest>>,
    tags: moka::future::Cache<TagKey, TagEntry>,
}

impl Manifests {
    /// `memory_bytes` bounds the in-memory manifest cache.
    pub fn new(
        store: Arc<Store>,
        root: &std::path::Path,
        memory_bytes: u64,
    ) -> io::Result<Manifests> {
        let types_dir = root.join("manifests").join("sha256");
        std::fs::create_dir_all(&types_dir)?;
        Ok(Manifests {
            store,
            types_dir,
            by_digest: moka::future::Cache::builder()
                .max_capacity(memory_bytes)
                .weigher(|_, m: &Arc<Manifest>| {
                    u32::try_from(m.bytes.len() + 256).unwrap_or(u32::MAX)
                })
                .build(),
            // Tag entries are small; a generous count bound keeps memory flat under a scan of
            // many tags.
            tags: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .build(),
        })
    }

    /// A manifest by digest, from memory or disk.
    pub async fn get(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, Error> {
        if let Some(m) = self.by_digest.get(digest).await {
            return Ok(Some(m));
        }
        let type_path = self.types_dir.join(digest.hex());
        let media_type = match tokio::fs::read_to_string(&type_path).await {
            Ok(t) => t.trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading manifest media type", &e)),
        };
        let Some(bytes) = self
            .store
            .read_small(digest, MAX_MANIFEST_BYTES as u64)
            .await
            .map_err(|e| Error::io("reading cached manifest", &e))?
        else {
            return Ok(None);
        };
        let m = Arc::new(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        });
        self.by_digest.insert(digest.clone(), m.clone()).await;
        Ok(Some(m))
    }

    /// Caches a manifest whose digest the caller has verified. Bytes first, media type second:
    /// a crash between the two leaves a blob without a type, which reads as a miss.
    pub async fn put(&self, m: Arc<Manifest>) -> Result<(), Error> {
        debug_assert_eq!(Digest::of(&m.bytes), m.digest);
        self.by_digest.insert(m.digest.clone(), m.clone()).await;
        self.store
            .put(&m.digest, m.bytes.clone())
            .await
            .map_err(|e| Error::internal(format!("caching manifest {}: {e}", m.digest)))?;
        let path = self.types_dir.join(m.digest.hex());
        let tmp = self.types_dir.join(format!(".{}.tmp", m.digest.hex()));
        let media_type = m.media_type.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::write(&tmp, media_type.as_bytes())?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(|e| Error::internal(format!("manifest type task: {e}")))?
        .map_err(|e| Error::io("writing manifest media type", &e))
    }

    pub async fn tag(&self, key: &TagKey) -> Option<TagEntry> {
        self.tags.get(key).await
    }

    pub async fn set_tag(&self, key: TagKey, entry: TagEntry) {
        self.tags.insert(key, entry).await;
    }

    pub async fn forget_tag(&self, key: &TagKey) {
        self.tags.invalidate(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_survives_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let ms = Manifests::new(store.clone(), dir.path(), 1 << 20).unwrap();
        let bytes = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let d = Digest::of(&bytes);
        assert!(ms.get(&d).await.unwrap().is_none());
        ms.put(Arc::new(Manifest {
            digest: d.clone(),
            media_type: "application/x".into(),
            bytes: bytes.clone(),
        }))
        .await
        .unwrap();
        // A fresh instance (a restart) reads it from disk.
        let ms2 = Manifests::new(store, dir.path(), 1 << 20).unwrap();
        let m = ms2.get(&d).await.unwrap().unwrap();
        assert_eq!((m.media_type.as_str(), &m.bytes), ("application/x", &bytes));
    }
}
