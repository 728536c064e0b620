//! Content-addressed blob files on local disk: the layout, and the `Store` facade the rest of the
//! crate talks to; and, in [`s3`], the bucket tier that holds the same content for replicas.
//!
//! Layout under the cache root:
//! - `blobs/sha256/<hex>`: exactly the bytes whose sha256 is `<hex>`. Only verified files are ever
//!   renamed here, so a file at a final path is always right, even after a crash.
//! - `tmp/`: fills in progress (`<hex>.<pid>.<n>.part`); emptied on start.
//!
//! One file per concern:
//! - this file: [`Store`] (open/attach, rebuild the index, stat/open/remove, touch and pin) and the
//!   paths of the layout;
//! - [`pending`]: a fill in progress ([`PendingBlob`]), its room reservation, verify and commit,
//!   the [`Feed`] that hands readers chunks ahead of the disk, and the degraded pass-through of a
//!   full disk;
//! - [`spool`]: the chunks readers take from memory, and the limits of that pass-through;
//! - [`read`]: [`read_range`], which follows a committed file or a growing fill (mapped reads,
//!   through `zerocopy::map`);
//! - `evict`: making room (`max_size`, `max_age`, a full disk);
//! - [`lock`]: one serving berth per directory (`berth.lock`, held for the server's life);
//! - [`s3`]: the object-store tier (`[storage.s3]`): a bucket holding blobs, manifests and tag
//!   records by digest, uploads completed only once verified.
//!
//! Every committed blob has an entry in the access [`Index`] (size, last access, readers, pins),
//! rebuilt from the files on start.
//!
//! The interface is narrow on purpose (begin/commit, open, stat, remove, and the access index for
//! listings) so that another tier (object storage) can sit behind it.
//!
//! Rule of dependency: uses `index`, `oci`, `error` and `zerocopy` (mapped reads and their
//! registration); `s3` also its own `config` table and registers its own metric families. `store`
//! knows nothing of `upstream`, `mirror`, `fill`, `tier`, `http` or `server`: they call it, never
//! the reverse. Within it the arrows run one way: `read` uses `pending` and `spool`, `pending` uses
//! `spool` and `evict`, and each may use this file's types; no sibling imports one that imports it
//! back.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::index::{self, Index, Lease, Limits};
use crate::oci::Digest;
use crate::zerocopy::Mappings;

mod evict;
pub mod lock;
pub mod pending;
pub mod read;
pub mod s3;
pub mod spool;

pub use pending::{CommitError, Feed, FillState, PendingBlob, Progress, is_disk_full};
pub use read::{Source, read_range};
pub use spool::{PassThrough, Spool};

/// The blob store rooted at one directory.
#[derive(Debug)]
pub struct Store {
    blobs: PathBuf,
    tmp: PathBuf,
    /// Makes temp names unique when two fills of one digest overlap (a retry after a failure).
    seq: AtomicU64,
    /// Sizes and last accesses of the committed blobs.
    index: Arc<Index>,
    /// Set while a disk-full eviction pass runs, so that passes do not pile up.
    evicting: Arc<std::sync::atomic::AtomicBool>,
    /// The cache's bytes after the last disk-full pass (see [`Store::disk_full`]).
    after_full_pass: Arc<AtomicU64>,
    /// How often a write found the disk full (see [`Store::disk_full`]).
    full: AtomicU64,
    /// The live mappings of this store's files, for plain-TCP connections to send with
    /// `sendfile` (see `zerocopy`).
    maps: Arc<Mappings>,
}

/// A blob file opened for reading, with its length.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub file: Arc<File>,
    pub len: u64,
    /// Keeps the blob from being evicted while it is read (cached blobs only).
    pub lease: Option<Arc<Lease>>,
    /// Where its mapped windows are registered (`None`: not registered, always copied).
    pub maps: Option<Arc<Mappings>>,
}

/// Where the blob files of the store rooted at `root` live.
pub fn blobs_dir(root: &Path) -> PathBuf {
    root.join("blobs").join("sha256")
}

/// Where the fills in progress of the store rooted at `root` live.
pub fn tmp_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}

/// The process id in a temp file's name (`<hex>.<pid>.<n>.part`, see [`Store::begin`]): the berth
/// that is (or was) writing it. `None` for a name berth did not make.
pub fn temp_file_owner(name: &str) -> Option<u32> {
    let rest = name.strip_suffix(".part")?;
    let mut parts = rest.split('.');
    let (hex, pid, n) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || Digest::from_hex(hex).is_none() || n.parse::<u64>().is_err() {
        return None;
    }
    pid.parse().ok()
}

impl Store {
    /// Opens (creating) the store under `root` without size limits; see [`open_with`](Self::open_with).
    pub fn open(root: &Path) -> io::Result<Store> {
        Store::open_with(root, Limits::default())
    }

    /// Opens (creating) the store under `root`, removes temp files left by a crash, and builds the
    /// access index from the blob files (length = size, mtime = last access).
    pub fn open_with(root: &Path, limits: Limits) -> io::Result<Store> {
        let store = Store::open_unindexed(root, limits)?;
        store.rebuild_index(|_| {})?;
        Ok(store)
    }

    /// [`open_with`](Self::open_with) without building the index: the server binds and answers
    /// `/healthz` first, then calls [`rebuild_index`](Self::rebuild_index) (which takes a while on
    /// a large cache) before it serves any pull.
    pub fn open_unindexed(root: &Path, limits: Limits) -> io::Result<Store> {
        let store = Store::create(root, limits)?;
        for entry in std::fs::read_dir(&store.tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(store)
    }

    /// Opens (creating) the store under `root` and leaves `tmp/` alone: for a tool (`berth cache`)
    /// that may run beside a berth serving the same directory, whose fills live there.
    pub fn attach(root: &Path) -> io::Result<Store> {
        Store::attach_with(root, Limits::default())
    }

    /// [`attach`](Self::attach) with limits: builds the access index, leaves `tmp/` alone.
    pub fn attach_with(root: &Path, limits: Limits) -> io::Result<Store> {
        let store = Store::create(root, limits)?;
        store.rebuild_index(|_| {})?;
        Ok(store)
    }

    fn create(root: &Path, limits: Limits) -> io::Result<Store> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&tmp)?;
        Ok(Store {
            blobs,
            tmp,
            seq: AtomicU64::new(0),
            index: Arc::new(Index::new(limits)),
            evicting: Arc::default(),
            after_full_pass: Arc::default(),
            full: AtomicU64::new(0),
            maps: Arc::default(),
        })
    }

    /// Adds every blob file to the access index (one directory scan, then a `stat` each);
    /// `listed` hears how many entries the directory holds before the `stat`s begin. Returns the
    /// number of blobs indexed.
    pub fn rebuild_index(&self, listed: impl FnOnce(usize)) -> io::Result<usize> {
        let entries = std::fs::read_dir(&self.blobs)?.collect::<io::Result<Vec<_>>>()?;
        listed(entries.len());
        let mut n = 0;
        for entry in entries {
            let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) else {
                continue; // not berth's: `berth verify` quarantines it
            };
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // Gone since the listing (another process removed it): nothing to index.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let last = meta.modified().map_or(0, index::secs);
            self.index.insert(index::key(&digest), meta.len(), last);
            n += 1;
        }
        Ok(n)
    }

    /// The access index (sizes, last accesses, limits, metrics).
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The live mappings of blob files being served, for `zerocopy::SendfileStream`.
    pub fn mappings(&self) -> &Arc<Mappings> {
        &self.maps
    }

    /// How many times [`disk_full`](Self::disk_full) was recorded since the store was opened.
    pub fn disk_full_count(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    /// The final path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The size of a cached blob, or `None` when it is not cached.
    pub async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory of fills in progress (a fleet node spools a holder's bytes there, in
    /// unnamed files, until their digest checks).
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Opens a cached blob for reading: records the access, and holds a lease that keeps the blob
    /// from eviction while the returned file (or a clone) lives.
    pub async fn open_blob(&self, digest: &Digest) -> io::Result<Option<BlobFile>> {
        let path = self.blob_path(digest);
        let key = index::key(digest);
        let index = self.index.clone();
        let maps = self.maps.clone();
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<BlobFile>> {
            match File::open(&path) {
                Ok(f) => {
                    let meta = f.metadata()?;
                    if !meta.is_file() {
                        return Err(io::Error::other(format!(
                            "{} is not a regular file",
                            path.display()
                        )));
                    }
                    let len = meta.len();
                    let lease = Some(Arc::new(index.lease(key)));
                    if index.touch(&key, index::now()) {
                        record_access(&f, &path);
                    }
                    Ok(Some(BlobFile {
                        file: Arc::new(f),
                        len,
                        lease,
                        maps: Some(maps),
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        });
        opened.await.map_err(io::Error::other)?
    }

    /// Reads a whole small blob (a manifest) into memory.
    pub async fn read_small(&self, digest: &Digest, limit: u64) -> io::Result<Option<Bytes>> {
        let Some(blob) = self.open_blob(digest).await? else {
            return Ok(None);
        };
        if blob.len > limit {
            return Err(io::Error::other(format!(
                "{digest} is {} bytes, more than {limit}",
                blob.len
            )));
        }
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; blob.len as usize];
            blob.file
                .read_exact_at(&mut buf, 0)
                .map(|_| Bytes::from(buf))
        });
        data.await.map_err(io::Error::other)?.map(Some)
    }

    /// Removes a cached blob; true if it was there.
    pub async fn remove(&self, digest: &Digest) -> io::Result<bool> {
        // The entry goes once the file is gone (a file that stays stays counted).
        let removed = match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        self.index.remove(&index::key(digest));
        Ok(removed)
    }

    /// Total bytes of cached blobs, as the index counts them.
    pub fn bytes_on_disk(&self) -> u64 {
        self.index.bytes()
    }

    /// Records an access to a cached blob that was not opened (a manifest served from memory).
    pub fn touch(&self, digest: &Digest) {
        if self.index.touch(&index::key(digest), index::now()) {
            let path = self.blob_path(digest);
            tokio::task::spawn_blocking(move || {
                if let Ok(f) = File::open(&path) {
                    record_access(&f, &path);
                }
            });
        }
    }

    /// Keeps `digests` (the blobs a manifest just served names) from eviction for the
    /// configured `keep_referenced`, and counts it as an access.
    pub fn pin<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        self.index
            .pin(digests.into_iter().map(index::key), index::now());
    }
}

/// Records an access on disk: the blob file's mtime (see `index`). A failure costs only recency
/// after a restart, so it is logged at debug.
fn record_access(f: &File, path: &Path) {
    if let Err(e) = f.set_modified(std::time::SystemTime::now()) {
        tracing::debug!(path = %path.display(), error = %e, "could not record a blob's last access");
    }
}

#[cfg(test)]
mod tests;
