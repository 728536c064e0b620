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
//! - The referrers lists of OCI 1.1 (`referrers`) are kept beside the tags, the same way, at
//!   `tags/<upstream name>/<repository>/_referrers/`.
//!
//! - `berth cache` (the `admin` module) lists what is on disk ([`Manifests::list`],
//!   [`Manifests::list_tags`]) and removes through [`Manifests::remove`] and
//!   [`Manifests::forget_tag_named`], which drop the in-memory copies too.
//!
//! Rule of dependency: uses `store`, `index` (access times), `oci`, `error`; knows nothing of
//! upstreams or HTTP.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Error;
use crate::index::{self, TOUCH_EVERY};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::{CommitError, Store};

mod referrers;

pub use referrers::{ReferrersEntry, ReferrersKey};

/// Largest manifest berth accepts (the spec suggests registries take at least 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Memory the referrers lists may take (their encoded size, twice: the body and the parsed list);
/// a list evicted from memory is read back from disk.
const REFERRERS_MEMORY_BYTES: u64 = 32 * 1024 * 1024;

/// A verified manifest.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    /// When this manifest last protected what it names (see [`Manifests::referenced`]), in index
    /// seconds: a hot manifest re-pins at most once a [`TOUCH_EVERY`].
    pinned_at: AtomicU32,
    /// When a hit from memory last recorded an access to its file ([`Store::touch`]), in index
    /// seconds: the index keeps accesses to [`TOUCH_EVERY`] anyway, and this spares a hot
    /// manifest the index's lock on every other hit.
    touched_at: AtomicU32,
}

impl Manifest {
    pub fn new(digest: Digest, media_type: String, bytes: Bytes) -> Manifest {
        Manifest {
            digest,
            media_type,
            bytes,
            pinned_at: AtomicU32::new(0),
            touched_at: AtomicU32::new(0),
        }
    }

    /// Docker schema 1: checked, passed through, never cached.
    pub fn is_schema1(&self) -> bool {
        crate::oci::media::is_schema1(&self.media_type)
    }

    /// The digests this manifest names: its config and layers, or an index's manifests (and an
    /// artifact's blobs). Unparsable JSON names nothing.
    pub fn references(&self) -> Vec<Digest> {
        let n = crate::oci::Named::of(&self.bytes);
        n.config
            .into_iter()
            .chain(n.layers)
            .chain(n.manifests)
            .chain(n.blobs)
            .collect()
    }
}

/// Whether `last` (index seconds) is a [`TOUCH_EVERY`] or more before `now`; if so, moves it to
/// `now`. Two hits racing past it both act, which is harmless.
fn due(last: &AtomicU32, now: index::Secs) -> bool {
    if now.saturating_sub(last.load(Ordering::Relaxed)) < TOUCH_EVERY.as_secs() as index::Secs {
        return false;
    }
    last.store(now, Ordering::Relaxed);
    true
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

/// A tag answer as recorded on disk (see [`Manifests::list_tags`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The upstream's name: the directory under `tags/`, which may name an upstream no longer
    /// configured.
    pub upstream: String,
    pub repo: RepoName,
    pub tag: Tag,
    pub digest: Digest,
    pub media_type: String,
}

pub struct Manifests {
    store: Arc<Store>,
    types_dir: PathBuf,
    tags_dir: PathBuf,
    /// Upstream names by slot (see `upstreams`): tags are kept on disk under the name, which
    /// survives a reordering of the config. Append-only: a reload that adds an upstream gives it
    /// the next slot; a slot never changes its name.
    upstream_names: std::sync::RwLock<Vec<String>>,
    by_digest: moka::future::Cache<Digest, Arc<Manifest>>,
    tags: moka::future::Cache<TagKey, TagEntry>,
    /// Referrers lists (`referrers`), weighed by their encoded size.
    referrers: moka::future::Cache<ReferrersKey, ReferrersEntry>,
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
            upstream_names: std::sync::RwLock::new(upstream_names),
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
            referrers: moka::future::Cache::builder()
                .max_capacity(REFERRERS_MEMORY_BYTES)
                .weigher(|_, e: &ReferrersEntry| {
                    u32::try_from(e.body.len() * 2 + 256).unwrap_or(u32::MAX)
                })
                .build(),
        })
    }

    /// A manifest by digest, from memory or disk.
    pub async fn get(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, Error> {
        if let Some(m) = self.by_digest.get(digest).await {
            // Served from memory, but its file's recency still counts for eviction.
            if due(&m.touched_at, index::now()) {
                self.store.touch(digest);
            }
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
            // Evicted: the media type alone is no manifest.
            let _ = tokio::fs::remove_file(&type_path).await;
            return Ok(None);
        };
        let m = Arc::new(Manifest::new(digest.clone(), media_type, bytes));
        self.by_digest.insert(digest.clone(), m.clone()).await;
        Ok(Some(m))
    }

    /// Caches a manifest whose digest the caller has verified. Bytes first, media type second:
    /// a crash between the two leaves a blob without a type, which reads as a miss.
    pub async fn put(&self, m: Arc<Manifest>) -> Result<(), Error> {
        debug_assert_eq!(Digest::of(&m.bytes), m.digest);
        self.by_digest.insert(m.digest.clone(), m.clone()).await;
        let context = format!("caching manifest {}", m.digest);
        match self.store.put(&m.digest, m.bytes.clone()).await {
            Ok(()) => {}
            // The cache is full of content in use; counted by the store (not_stored). The
            // manifest serves from memory, and no media type is written for bytes not kept.
            Err(CommitError::NoRoom { .. }) => {
                tracing::info!(digest = %m.digest, "manifest not cached: no room that eviction could free");
                return Ok(());
            }
            Err(CommitError::Io(e) | CommitError::Persist(e)) => {
                return Err(self.io_error(&context, &e));
            }
            Err(e) => return Err(Error::internal(format!("{context}: {e}"))),
        }
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

    /// A manifest is being served: keep it and what it names from eviction for a while (its
    /// client is about to ask for them).
    pub fn referenced(&self, m: &Manifest) {
        if !due(&m.pinned_at, index::now()) {
            return;
        }
        let names = m.references();
        self.store
            .pin(std::iter::once(&m.digest).chain(names.iter()));
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
        let names = self.upstream_names.read().unwrap();
        let upstream = names.get(key.upstream)?;
        Some(self.tag_path_named(upstream, &key.repo, &key.tag))
    }

    fn tag_path_named(&self, upstream: &str, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.tags_dir
            .join(upstream)
            .join(repo.as_str())
            .join("_tags")
            .join(tag.as_str())
    }

    /// Every upstream name this process has configured (at start, in config order, then those
    /// reloads added), by slot.
    pub fn upstream_names(&self) -> Vec<String> {
        self.upstream_names.read().unwrap().clone()
    }

    /// The slot of upstream `name` (lowercased): its existing one, or the next free one.
    pub fn upstream_slot(&self, name: &str) -> usize {
        let mut names = self.upstream_names.write().unwrap();
        match names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                names.push(name.to_owned());
                names.len() - 1
            }
        }
    }

    /// Forgets a tag named by its upstream's name (as [`list_tags`](Self::list_tags) gives it), in
    /// memory and on disk; true if its file was there.
    pub async fn forget_tag_named(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> io::Result<bool> {
        let slot = self
            .upstream_names
            .read()
            .unwrap()
            .iter()
            .position(|n| n == upstream);
        if let Some(i) = slot {
            let key = TagKey {
                upstream: i,
                repo: repo.clone(),
                tag: tag.clone(),
            };
            self.tags.invalidate(&key).await;
        }
        match tokio::fs::remove_file(self.tag_path_named(upstream, repo, tag)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a cached manifest: its media type, its bytes (through [`Store::remove`]) and its
    /// in-memory copy; true if it was there. The files go first: a lookup racing the removal can
    /// at worst put the (verified, immutable) manifest back in memory, never serve wrong bytes.
    pub async fn remove(&self, digest: &Digest) -> Result<bool, Error> {
        let typed = match tokio::fs::remove_file(self.types_dir.join(digest.hex())).await {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("removing manifest media type", &e)),
        };
        let stored = self
            .store
            .remove(digest)
            .await
            .map_err(|e| Error::io("removing manifest", &e))?;
        self.by_digest.invalidate(digest).await;
        Ok(typed || stored)
    }

    /// Every manifest whose media type is recorded on disk, with that type. Its bytes may be gone
    /// (a crash between the two writes, a removal in progress): ask the store.
    pub async fn list(&self) -> io::Result<Vec<(Digest, String)>> {
        let dir = self.types_dir.clone();
        blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let Some(d) = entry.file_name().to_str().and_then(Digest::from_hex) else {
                    continue; // a `.<hex>.tmp` being written
                };
                match std::fs::read_to_string(entry.path()) {
                    Ok(t) => out.push((d, t.trim().to_owned())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Every tag answer on disk, under every upstream directory (configured or not). Files that
    /// do not parse are skipped.
    pub async fn list_tags(&self) -> io::Result<Vec<TagRecord>> {
        let dir = self.tags_dir.clone();
        blocking(move || {
            let mut out = Vec::new();
            let upstreams = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            };
            for up in upstreams {
                let up = up?;
                if !up.file_type()?.is_dir() {
                    continue;
                }
                let Some(name) = up.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                collect_tags(&up.path(), &name, "", &mut out)?;
            }
            Ok(out)
        })
        .await
    }
}

/// Walks `dir` (the directory of repository `repo` under upstream `upstream`), adding the tags in
/// every `_tags` directory below it.
fn collect_tags(
    dir: &Path,
    upstream: &str,
    repo: &str,
    out: &mut Vec<TagRecord>,
) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('_') && name != "_tags" {
            // `_referrers` (see `referrers`); `_` starts no repository component.
            continue;
        }
        if name == "_tags" {
            let Ok(repo) = repo.parse::<RepoName>() else {
                continue;
            };
            for t in std::fs::read_dir(entry.path())? {
                let t = t?;
                let Some(tag) = t.file_name().to_str().and_then(|n| n.parse::<Tag>().ok()) else {
                    continue; // `.<tag>.tmp`
                };
                let text = match std::fs::read_to_string(t.path()) {
                    Ok(text) => text,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if let Some((d, media_type)) = text.trim_end().split_once(' ')
                    && let Ok(digest) = d.parse::<Digest>()
                {
                    out.push(TagRecord {
                        upstream: upstream.to_owned(),
                        repo: repo.clone(),
                        tag,
                        digest,
                        media_type: media_type.to_owned(),
                    });
                }
            }
        } else {
            let sub = if repo.is_empty() {
                name
            } else {
                format!("{repo}/{name}")
            };
            collect_tags(&entry.path(), upstream, &sub, out)?;
        }
    }
    Ok(())
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
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
        ms.put(Arc::new(Manifest::new(
            d.clone(),
            "application/x".into(),
            bytes.clone(),
        )))
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
