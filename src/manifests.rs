//! Manifests by digest and tag -> digest answers.
//!
//! - A manifest by digest is immutable: once verified it lives in the blob store (its bytes at
//!   `blobs/sha256/<hex>`) with its media type beside it at `manifests/sha256/<hex>`, and in a
//!   bounded in-memory cache (moka, weighed by bytes) so hot manifests never touch the disk.
//! - A tag answer (digest + media type + when it was last checked) lives in memory and on disk at
//!   `tags/<upstream name>/<repository>/_tags/<tag>` (`_` cannot start a repository component, so
//!   the directory never collides with a repository). It is kept after its TTL expires: the mirror
//!   revalidates it, and serves it stale if the upstream is down. A tag read back from disk after a
//!   restart counts as never checked, so it is revalidated before it is trusted, but it can still
//!   stand in while the upstream is unreachable. Tag files are replaced atomically but not fsynced:
//!   losing the latest answer in a crash only costs a revalidation.
//!
//! Rule of dependency: uses `store`, `oci`, `error`; knows nothing of upstreams or HTTP.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Error;
use crate::oci::{Digest, RepoName, Tag};
use crate::store::{CommitError, Store};

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
    /// When this process last confirmed it with the upstream; `None` for an answer read back
    /// from disk.
    pub checked: Option<Instant>,
}

impl TagEntry {
    /// Whether the answer is younger than `ttl`.
    pub fn is_fresh(&self, ttl: std::time::Duration) -> bool {
        self.checked.is_some_and(|c| c.elapsed() < ttl)
    }
}

pub struct Manifests {
    store: Arc<Store>,
    types_dir: PathBuf,
    tags_dir: PathBuf,
    /// Upstream names by index: tags are kept on disk under the name, which survives a reordering
    /// of the config.
    upstream_names: Vec<String>,
    by_digest: moka::future::Cache<Digest, Arc<Manifest>>,
    tags: moka::future::Cache<TagKey, TagEntry>,
}

impl Manifests {
    /// `memory_bytes` bounds the in-memory manifest cache; `upstream_names` are the configured
    /// upstreams' names in config order (a [`TagKey`]'s `upstream` indexes them).
    pub fn new(
        store: Arc<Store>,
        root: &std::path::Path,
        memory_bytes: u64,
        upstream_names: Vec<String>,
    ) -> io::Result<Manifests> {
        let types_dir = root.join("manifests").join("sha256");
        std::fs::create_dir_all(&types_dir)?;
        Ok(Manifests {
            store,
            types_dir,
            tags_dir: root.join("tags"),
            upstream_names,
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
        let context = format!("caching manifest {}", m.digest);
        self.store
            .put(&m.digest, m.bytes.clone())
            .await
            .map_err(|e| match e {
                CommitError::Io(e) | CommitError::Persist(e) => self.io_error(&context, &e),
                e => Error::internal(format!("{context}: {e}")),
            })?;
        let path = self.types_dir.join(m.digest.hex());
        let tmp = self.types_dir.join(format!(".{}.tmp", m.digest.hex()));
        let media_type = m.media_type.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::write(&tmp, media_type.as_bytes())?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(|e| Error::internal(format!("manifest type task: {e}")))?
        .map_err(|e| self.io_error("writing manifest media type", &e))
    }

    /// An I/O error of the store; tells the store when it means the disk is full.
    fn io_error(&self, context: &str, e: &io::Error) -> Error {
        if crate::store::is_disk_full(e) {
            self.store.disk_full();
        }
        Error::io(context, e)
    }

    /// The last known answer for a tag: from memory, or from disk after a restart.
    pub async fn tag(&self, key: &TagKey) -> Option<TagEntry> {
        if let Some(e) = self.tags.get(key).await {
            return Some(e);
        }
        let path = self.tag_path(key)?;
        let text = tokio::fs::read_to_string(&path).await.ok()?;
        let (digest, media_type) = text.trim_end().split_once(' ')?;
        let entry = TagEntry {
            digest: digest.parse().ok()?,
            media_type: media_type.to_owned(),
            checked: None,
        };
        self.tags.insert(key.clone(), entry.clone()).await;
        Some(entry)
    }

    /// Records a tag answer in memory and on disk. A failure to write the file is logged: the
    /// answer still serves from memory.
    pub async fn set_tag(&self, key: TagKey, entry: TagEntry) {
        if let Some(path) = self.tag_path(&key) {
            let line = format!("{} {}\n", entry.digest, entry.media_type);
            let written =
                tokio::task::spawn_blocking(move || write_replacing(&path, line.as_bytes())).await;
            if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
                tracing::warn!(error = %e, "could not record a tag answer on disk");
            }
        }
        self.tags.insert(key, entry).await;
    }

    pub async fn forget_tag(&self, key: &TagKey) {
        self.tags.invalidate(key).await;
        if let Some(path) = self.tag_path(key) {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    fn tag_path(&self, key: &TagKey) -> Option<PathBuf> {
        let upstream = self.upstream_names.get(key.upstream)?;
        Some(
            self.tags_dir
                .join(upstream)
                .join(key.repo.as_str())
                .join("_tags")
                .join(key.tag.as_str()),
        )
    }
}

/// Replaces `path` with `data` atomically (temp file beside it, then rename).
fn write_replacing(path: &std::path::Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tag");
    // Tags cannot start with '.', so the temp name never collides with a tag.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_survives_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let ms = Manifests::new(store.clone(), dir.path(), 1 << 20, vec!["up".into()]).unwrap();
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
        let ms2 = Manifests::new(store, dir.path(), 1 << 20, vec!["up".into()]).unwrap();
        let m = ms2.get(&d).await.unwrap().unwrap();
        assert_eq!((m.media_type.as_str(), &m.bytes), ("application/x", &bytes));
    }

    #[tokio::test]
    async fn tags_survive_a_restart_as_unchecked_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let names = vec!["registry.test:5000".to_owned()];
        let ms = Manifests::new(store.clone(), dir.path(), 1 << 20, names.clone()).unwrap();
        let key = TagKey {
            upstream: 0,
            repo: "library/app".parse().unwrap(),
            tag: "v1.0".parse().unwrap(),
        };
        let d = Digest::of(b"m");
        ms.set_tag(
            key.clone(),
            TagEntry {
                digest: d.clone(),
                media_type: "application/x".into(),
                checked: Some(Instant::now()),
            },
        )
        .await;
        assert!(
            ms.tag(&key)
                .await
                .unwrap()
                .is_fresh(std::time::Duration::from_secs(30))
        );
        assert!(
            dir.path()
                .join("tags/registry.test:5000/library/app/_tags/v1.0")
                .is_file()
        );

        let ms2 = Manifests::new(store.clone(), dir.path(), 1 << 20, names.clone()).unwrap();
        let e = ms2.tag(&key).await.unwrap();
        assert_eq!((&e.digest, e.media_type.as_str()), (&d, "application/x"));
        assert!(e.checked.is_none() && !e.is_fresh(std::time::Duration::from_secs(3600)));

        ms2.forget_tag(&key).await;
        let ms3 = Manifests::new(store, dir.path(), 1 << 20, names).unwrap();
        assert!(ms3.tag(&key).await.is_none());
    }
}
