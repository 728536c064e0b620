//! Content-addressed blob files on local disk.
//!
//! Layout under the cache root:
//! - `blobs/sha256/<hex>`: exactly the bytes whose sha256 is `<hex>`. Only verified files are ever
//!   renamed here, so a file at a final path is always right, even after a crash.
//! - `tmp/`: fills in progress (`<hex>.<n>.part`); emptied on start.
//!
//! A fill is a [`PendingBlob`]: it hashes while it writes, publishes its progress on a `watch`
//! channel ([`FillState`]), and on [`PendingBlob::commit`] checks size and digest, fsyncs the file and
//! its directory, and renames it into place. Readers hold the temp file open, so they read the
//! growing file while it is written and keep reading the same inode after the rename. Dropping a
//! `PendingBlob` without committing deletes the temp file and tells every reader the fill failed.
//!
//! Readers ([`read_range`]) never hand out the last byte of a fill before it is committed: a client
//! can only ever see a complete body whose digest was checked.
//!
//! Every committed blob has an entry in the access [`Index`] (size, last access, readers, pins),
//! rebuilt from the files on start. Room is made when a fill starts, not when it commits: a blob's
//! size is known before its first byte (the upstream's `Content-Length`), so [`Store::begin`]
//! reserves it, first evicting the least recently used blobs if it would pass the high watermark.
//! Disk use then stays within `max_size` plus the fills of unknown size (and those refused room
//! because everything else is in use: they are written all the same, and ask again at commit,
//! where one that still does not fit is served but not kept). A fill that fails gives its
//! reservation back; one that commits turns it into the blob's entry. The price: a miss that has
//! to make room waits for those unlinks before its first byte, and a burst of concurrent fills
//! holds room for all of them at once, so under `max_size` pressure more of them end served but
//! not kept than when room was counted only at commit.
//!
//! A full disk does not fail a fill: when a write hits ENOSPC (or a quota), the caller switches the
//! fill to [`PendingBlob::pass_through`]. The temp file is deleted (its bytes so far stay readable
//! through the open handle until the fill's readers are done, then the space is free), hashing goes
//! on in memory, and the bytes from the last one written on reach readers from the spool only.
//! Nothing is cached, and the last byte still waits for the digest. Memory stays bounded by
//! back-pressure, not by dropping bytes: after each batch the fill waits until its slowest reader
//! is less than [`PassThrough::window`] behind (the spool keeps nothing older than that), so a
//! slow client gets every byte at its own pace. A reader that takes nothing for
//! [`PassThrough::lag_limit`] while the fill waits for it is cut off: no longer waited for, and its
//! body ends in an error once the bytes it needs are gone, never in a short success. The trade-off:
//! a degraded fill (and every client following it) goes as fast as its slowest live client, in
//! exchange for no client of a moving connection ever failing for being slow; a stuck client
//! costs the others at most `lag_limit`. The memory bound per degraded fill is `window` plus
//! what the caller reads ahead of hashing.
//!
//! The interface is narrow on purpose (begin/commit, open, stat, remove, and the access index for
//! listings) so that another tier (object storage) can sit behind it later. Rule of dependency:
//! uses `index`, `oci` and `error`.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};

use crate::error::Error;
use crate::index::{self, Index, Lease, Limits, Reason};
use crate::oci::Digest;
use crate::zerocopy::Mappings;

/// Size of one read from a blob file. Large reads keep syscalls and wakeups few.
const READ_CHUNK: usize = 256 * 1024;

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

/// Where a fill is; readers watch this.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Pending,
    /// Bytes are arriving and landing in the temp file.
    Writing(Progress),
    /// Every byte is written and the digest matched: readers may have it all. The file is being
    /// made durable and renamed into place (the slow part, with a large blob, is the fsync; no
    /// client waits for it).
    Verified(BlobFile),
    /// Verified, durable and in place.
    Committed(BlobFile),
    /// The fill failed; nothing was cached.
    Failed(Error),
}

/// How far a fill has got.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The temp file; readers keep it open across the rename.
    pub file: Arc<File>,
    /// Bytes in the file (hashed and written).
    pub written: u64,
    /// Bytes received so far (`>= written`); the ones not yet in the file are in the spool.
    pub received: u64,
    /// The size announced by the upstream, if any.
    pub total: Option<u64>,
    /// The most recent chunks, kept in memory so that readers at the head of a fill take them
    /// without waiting for the disk or copying them back out of it.
    pub spool: Arc<Spool>,
    /// The disk was full: bytes from `written` on are only in the spool (see
    /// [`PendingBlob::pass_through`]); a reader that finds its bytes gone there has fallen behind.
    pub pass_through: bool,
    /// Pass-through only: every byte arrived and the digest matched, so readers may have all
    /// `received` bytes (there is no file to switch to).
    pub verified: bool,
    /// Where mapped windows of the file are registered.
    pub maps: Option<Arc<Mappings>>,
}

/// Whether an I/O error means the disk (or the quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// How a fill whose disk is full keeps its readers fed from memory; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct PassThrough {
    /// Most bytes the slowest reader may be behind the hashed head before the fill waits for it.
    pub window: u64,
    /// How long the fill waits for a reader that takes nothing before cutting it off.
    pub lag_limit: Duration,
}

/// Recently received chunks of a fill, by offset: everything not yet written, plus up to
/// [`SPOOL_KEEP`] bytes already written (so a reader slightly behind still reads from memory).
#[derive(Debug, Default)]
pub struct Spool {
    chunks: std::sync::Mutex<std::collections::VecDeque<(u64, Bytes)>>,
    /// Where each reader of the fill is (the next byte it needs), so that a fill in pass-through
    /// knows what it may drop. Readers register on their first look at the fill and go away
    /// (the `Weak` dies) when their body is dropped.
    readers: std::sync::Mutex<Vec<Weak<AtomicU64>>>,
    /// Woken when a reader moves on.
    advanced: Notify,
}

/// A reader's place in a fill, registered with its spool.
struct Cursor {
    spool: Arc<Spool>,
    at: Arc<AtomicU64>,
}

impl Cursor {
    fn advance(&self, pos: u64) {
        self.at.store(pos, Ordering::Release);
        self.spool.advanced.notify_waiters();
    }
}

/// Bytes of already-written chunks a spool keeps.
const SPOOL_KEEP: u64 = 2 * 1024 * 1024;

impl Spool {
    /// The bytes at `pos` up to (not including) `stop`, if they are in the spool: a cheap slice of
    /// the received chunk, no copy.
    pub fn get(&self, pos: u64, stop: u64) -> Option<Bytes> {
        let chunks = self.chunks.lock().unwrap();
        // Chunks are contiguous and ascending; the newest are searched first (readers are mostly
        // at the head).
        let (off, chunk) = chunks
            .iter()
            .rev()
            .find(|(off, c)| *off <= pos && pos < off + c.len() as u64)?;
        let from = (pos - off) as usize;
        let to = (stop.min(off + chunk.len() as u64) - off) as usize;
        (to > from).then(|| chunk.slice(from..to))
    }

    fn push(&self, offset: u64, chunk: Bytes) {
        self.chunks.lock().unwrap().push_back((offset, chunk));
    }

    /// Forgets chunks that ended more than SPOOL_KEEP bytes before `written`.
    fn trim(&self, written: u64) {
        self.trim_below(written.saturating_sub(SPOOL_KEEP));
    }

    /// Forgets chunks that end at or before `pos`.
    fn trim_below(&self, pos: u64) {
        let mut chunks = self.chunks.lock().unwrap();
        while chunks
            .front()
            .is_some_and(|(off, c)| off + c.len() as u64 <= pos)
        {
            chunks.pop_front();
        }
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        self.chunks
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.len() as u64)
            .sum()
    }

    fn register(self: &Arc<Self>, pos: u64) -> Cursor {
        let at = Arc::new(AtomicU64::new(pos));
        let mut readers = self.readers.lock().unwrap();
        readers.retain(|r| r.strong_count() > 0);
        readers.push(Arc::downgrade(&at));
        Cursor {
            spool: self.clone(),
            at,
        }
    }

    /// The position of the slowest reader still waited for, if any.
    fn slowest(&self) -> Option<u64> {
        self.readers
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r.upgrade())
            .map(|at| at.load(Ordering::Acquire))
            .min()
    }

    /// Stops waiting for readers before `pos`; returns how many there were.
    fn cut_off(&self, pos: u64) -> usize {
        let mut readers = self.readers.lock().unwrap();
        let before = readers.len();
        readers.retain(|r| {
            r.upgrade()
                .is_some_and(|at| at.load(Ordering::Acquire) >= pos)
        });
        before - readers.len()
    }
}

/// Feeds received chunks to a fill's readers before they are written; see [`PendingBlob::feed`].
#[derive(Clone)]
pub struct Feed {
    spool: Arc<Spool>,
    progress: watch::Sender<FillState>,
}

impl Feed {
    /// Makes `chunk`, the next bytes of the blob, available to readers now.
    pub fn push(&self, chunk: Bytes) {
        self.progress.send_if_modified(|s| match s {
            FillState::Writing(p) => {
                let len = chunk.len() as u64;
                self.spool.push(p.received, chunk);
                p.received += len;
                true
            }
            _ => false,
        });
    }
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: Digest, actual: Digest },
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The bytes were right (readers have them) but could not be made durable or renamed.
    #[error("verified but not stored: {0}")]
    Persist(io::Error),
    /// The bytes were right but do not fit under `max_size`, even after evicting everything that
    /// may go.
    #[error("verified but not stored: {size} bytes do not fit in the cache's max_size")]
    NoRoom { size: u64 },
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

    /// One maintenance pass (blocking): evicts what is older than `max_age`, then what is over the
    /// high watermark (entries whose pins ran out since the last commit).
    pub fn sweep(&self) {
        let now = index::now();
        let expired = self.index.take_expired(now);
        self.evict(expired, Reason::Age);
        if self.index.over_high() {
            let victims = self.index.take_for_room(now);
            self.evict(victims, Reason::Size);
        }
    }

    /// A write found the disk full (the fill went on from memory, or a manifest was served without
    /// being cached): evict in the background, down to the low watermark (or, with no `max_size`,
    /// by a tenth of the cache), unless a pass is already running.
    ///
    /// Only when the cache grew since the last such pass: if something else (a runaway log) keeps
    /// the disk full, one pass is all it costs the cache, not a tenth per write that fails.
    pub fn disk_full(&self) {
        self.full.fetch_add(1, Ordering::Relaxed);
        if self.index.bytes() <= self.after_full_pass.load(Ordering::Acquire)
            || self.evicting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (index, blobs, evicting, after) = (
            self.index.clone(),
            self.blobs.clone(),
            self.evicting.clone(),
            self.after_full_pass.clone(),
        );
        tokio::task::spawn_blocking(move || {
            /// Lets the next pass run however this one ends.
            struct Done(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(evicting);
            let bytes = index.bytes();
            let tenth_less = bytes - bytes / 10;
            let goal = match index.limits().watermarks() {
                Some((_, low)) => low.min(tenth_less),
                None => tenth_less,
            };
            let victims = index.take_lru(goal, index::now());
            evict_files(&index, &blobs, victims, Reason::DiskFull);
            after.store(index.bytes(), Ordering::Release);
        });
    }

    fn evict(&self, victims: Vec<(index::Key, u64)>, reason: Reason) {
        evict_files(&self.index, &self.blobs, victims, reason);
    }

    /// Starts a fill for `digest`. `total` is the announced size, checked at commit; when known,
    /// its room is reserved now (see the module docs). Progress goes to `progress` (readers
    /// subscribe to its receiver).
    pub async fn begin(
        &self,
        digest: &Digest,
        total: Option<u64>,
        progress: watch::Sender<FillState>,
    ) -> io::Result<PendingBlob> {
        let reserved = match total {
            Some(size) => {
                let (index, blobs) = (self.index.clone(), self.blobs.clone());
                let admitted = tokio::task::spawn_blocking(move || {
                    let admission = index.admit(size, index::now());
                    evict_files(&index, &blobs, admission.victims, Reason::Size);
                    admission.admitted
                })
                .await
                .map_err(io::Error::other)?;
                admitted.then_some(size)
            }
            None => None,
        };
        // From here on the reservation belongs to the guard, so an early return gives it back.
        let reservation = Reservation {
            index: self.index.clone(),
            bytes: reserved.unwrap_or(0),
        };
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .tmp
            .join(format!("{}.{}.{n}.part", digest.hex(), std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        let file = Arc::new(file);
        let spool = Arc::new(Spool::default());
        progress.send_replace(FillState::Writing(Progress {
            file: file.clone(),
            written: 0,
            received: 0,
            total,
            spool: spool.clone(),
            pass_through: false,
            verified: false,
            maps: Some(self.maps.clone()),
        }));
        Ok(PendingBlob {
            maps: self.maps.clone(),
            file: Some(file),
            index: self.index.clone(),
            tmp_path,
            final_path: self.blob_path(digest),
            dir: self.blobs.clone(),
            hasher: Some(Sha256::new()),
            written: 0,
            hashed: 0,
            total,
            digest: digest.clone(),
            progress,
            spool,
            done: false,
            pass_through: None,
            reservation,
        })
    }

    /// Stores small content (a manifest) in one step: write, verify, commit.
    pub async fn put(&self, digest: &Digest, data: Bytes) -> Result<(), CommitError> {
        if self.stat(digest).await?.is_some() {
            return Ok(());
        }
        let (tx, _rx) = watch::channel(FillState::Pending);
        let mut pending = self.begin(digest, Some(data.len() as u64), tx).await?;
        pending.write(data).await?;
        pending.commit().await.map(|_| ())
    }
}

/// A blob being written. Drop without [`commit`](Self::commit) = failure: the temp file goes away
/// and readers see [`FillState::Failed`].
pub struct PendingBlob {
    /// `None` only while a blocking write holds it.
    file: Option<Arc<File>>,
    index: Arc<Index>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    hasher: Option<Sha256>,
    /// Bytes in the file. Frozen once the fill passes through.
    written: u64,
    /// Bytes hashed (`>= written`: a batch whose write failed was hashed all the same).
    hashed: u64,
    total: Option<u64>,
    digest: Digest,
    progress: watch::Sender<FillState>,
    spool: Arc<Spool>,
    done: bool,
    /// Set once the disk was full: the fill goes on in memory.
    pass_through: Option<PassThrough>,
    maps: Arc<Mappings>,
    /// The room reserved in the index at [`Store::begin`]: given back on failure (by its Drop),
    /// turned into the blob's entry at commit.
    reservation: Reservation,
}

/// Bytes reserved in the index for a fill; released when dropped unless taken.
struct Reservation {
    index: Arc<Index>,
    bytes: u64,
}

impl Reservation {
    /// Hands the reserved bytes to the caller, who ends the reservation itself.
    fn take(&mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.index.release(self.bytes);
        }
    }
}

impl PendingBlob {
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Whether the fill goes on in memory only (see [`pass_through`](Self::pass_through)).
    pub fn is_pass_through(&self) -> bool {
        self.pass_through.is_some()
    }

    /// After a write found the disk full: deletes the temp file and goes on in memory. Later
    /// [`write_all`](Self::write_all) calls only hash (the batch whose write failed was hashed
    /// already) and wait for slow readers; [`commit`](Self::commit) verifies, releases the last
    /// byte and returns [`CommitError::Persist`]: served, not stored. See the module docs.
    pub fn pass_through(&mut self, limits: PassThrough) {
        self.pass_through = Some(limits);
        // Nothing of this fill will be kept: its room is free for others.
        let reserved = self.reservation.take();
        self.index.release(reserved);
        // Readers hold the file open: the bytes already written stay readable until they are done.
        let _ = std::fs::remove_file(&self.tmp_path);
        let hashed = self.hashed;
        self.progress.send_if_modified(|s| match s {
            FillState::Writing(p) => {
                p.pass_through = true;
                p.received = p.received.max(hashed);
                true
            }
            _ => false,
        });
    }

    /// A handle to give readers chunks as they arrive, ahead of [`write_all`](Self::write_all),
    /// which must then be called with the same chunks in the same order.
    pub fn feed(&self) -> Feed {
        Feed {
            spool: self.spool.clone(),
            progress: self.progress.clone(),
        }
    }

    /// Appends `data`, hashing it on the way, and tells readers.
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.write_all(vec![data]).await
    }

    /// Appends several chunks in one blocking call (fewer thread hand-offs than one call each).
    pub async fn write_all(&mut self, chunks: Vec<Bytes>) -> io::Result<()> {
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if let Some(total) = self.total
            && self.hashed + len > total
        {
            return Err(io::Error::other(format!(
                "more than the announced {total} bytes"
            )));
        }
        if let Some(limits) = self.pass_through {
            return self.hash_only(chunks, len, limits).await;
        }
        let file = self.file.take().expect("file present between writes");
        let mut hasher = self.hasher.take().expect("hasher present between writes");
        // Hashing and writing are independent: they run side by side on two blocking threads
        // (the chunks are shared, not copied), so a batch costs the slower of the two, not both.
        let to_hash = chunks.clone();
        let hashing = tokio::task::spawn_blocking(move || {
            for c in &to_hash {
                hasher.update(c);
            }
            hasher
        });
        let writing = tokio::task::spawn_blocking(move || {
            let res = chunks.iter().try_for_each(|c| (&*file).write_all(c));
            (file, res)
        });
        let (hashed, written) = tokio::join!(hashing, writing);
        let (file, res) = written.map_err(io::Error::other)?;
        self.file = Some(file);
        self.hasher = Some(hashed.map_err(io::Error::other)?);
        self.hashed += len;
        res?;
        self.written += len;
        let written = self.written;
        self.progress.send_if_modified(|s| match s {
            FillState::Writing(p) => {
                p.written = written;
                // Chunks written without the feed (a plain `write`) arrive here.
                p.received = p.received.max(written);
                true
            }
            _ => false,
        });
        self.spool.trim(written);
        Ok(())
    }

    /// Pass-through: hashes a batch, tells readers, then waits until the slowest of them is within
    /// the window (cutting off one that does not move for `lag_limit`) and drops what none needs.
    async fn hash_only(
        &mut self,
        chunks: Vec<Bytes>,
        len: u64,
        limits: PassThrough,
    ) -> io::Result<()> {
        let mut hasher = self.hasher.take().expect("hasher present between writes");
        let hasher = tokio::task::spawn_blocking(move || {
            for c in &chunks {
                hasher.update(c);
            }
            hasher
        })
        .await
        .map_err(io::Error::other)?;
        self.hasher = Some(hasher);
        self.hashed += len;
        let hashed = self.hashed;
        self.progress.send_if_modified(|s| match s {
            FillState::Writing(p) => {
                let grew = hashed > p.received;
                p.received = p.received.max(hashed);
                grew
            }
            _ => false,
        });
        loop {
            let moved = self.spool.advanced.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let slowest = self.spool.slowest().unwrap_or(hashed).min(hashed);
            // Bytes below `written` are read from the file, so only the slowest reader's place
            // (or the file's end) decides what the spool must keep.
            self.spool.trim_below(slowest.max(self.written).min(hashed));
            if hashed - slowest <= limits.window {
                return Ok(());
            }
            if tokio::time::timeout(limits.lag_limit, moved).await.is_err() {
                let n = self.spool.cut_off(hashed - limits.window);
                tracing::warn!(digest = %self.digest, readers = n, lag_limit = ?limits.lag_limit,
                    "readers of a fill passing through memory took nothing for too long; cut off");
            }
        }
    }

    /// Verifies size and digest, releases the bytes to readers, makes the file durable and renames
    /// it into place.
    ///
    /// On a size or digest error the fill is still open: the caller ends it with
    /// [`fail`](Self::fail) (or drop). On [`CommitError::Persist`] the readers got verified bytes,
    /// but nothing was cached.
    pub async fn commit(&mut self) -> Result<BlobFile, CommitError> {
        let hasher = self.hasher.take().expect("commit is called once");
        let actual = Digest::from_sha256(&hasher.finalize());
        if let Some(expected) = self.total
            && expected != self.hashed
        {
            return Err(CommitError::Size {
                expected,
                actual: self.hashed,
            });
        }
        if actual != self.digest {
            return Err(CommitError::Digest {
                expected: self.digest.clone(),
                actual,
            });
        }
        if self.pass_through.is_some() {
            // Verified: readers may have the last byte, from memory. Nothing to keep.
            self.done = true;
            self.progress.send_if_modified(|s| match s {
                FillState::Writing(p) => {
                    p.verified = true;
                    true
                }
                _ => false,
            });
            return Err(CommitError::Persist(io::Error::new(
                io::ErrorKind::StorageFull,
                "the disk was full: served from memory, not stored",
            )));
        }
        let file = self.file.clone().expect("file present");
        let blob = BlobFile {
            file: file.clone(),
            len: self.written,
            lease: None,
            maps: Some(self.maps.clone()),
        };
        self.progress
            .send_replace(FillState::Verified(blob.clone()));
        let (tmp, fin, dir) = (
            self.tmp_path.clone(),
            self.final_path.clone(),
            self.dir.clone(),
        );
        let (index, size, key) = (self.index.clone(), self.written, index::key(&self.digest));
        let reserved = self.reservation.take();
        let persisted = tokio::task::spawn_blocking(move || -> Result<(), CommitError> {
            // Room reserved at the start (the usual case) is the blob's; otherwise (size unknown
            // then, or no room then) it is asked for now.
            if reserved != size {
                index.release(reserved);
                let admission = index.admit(size, index::now());
                evict_files(&index, &dir, admission.victims, Reason::Size);
                if !admission.admitted {
                    index.metrics().not_stored.inc();
                    return Err(CommitError::NoRoom { size });
                }
            }
            let io = || -> io::Result<()> {
                file.sync_all()?;
                std::fs::rename(&tmp, &fin)?;
                File::open(&dir)?.sync_all()
            };
            match io() {
                Ok(()) => {
                    index.insert_reserved(key, size, index::now());
                    Ok(())
                }
                Err(e) => {
                    index.release(size);
                    Err(CommitError::Persist(e))
                }
            }
        })
        .await
        .map_err(|e| CommitError::Persist(io::Error::other(e)))
        .and_then(|r| r);
        // From here on the fill is over either way; readers keep the verified state if the bytes
        // could not be kept.
        self.done = true;
        if let Err(e) = persisted {
            let _ = std::fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        self.progress
            .send_replace(FillState::Committed(blob.clone()));
        Ok(blob)
    }

    /// Ends the fill with `err`, which every reader receives.
    pub fn fail(mut self, err: Error) {
        self.progress.send_replace(FillState::Failed(err));
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if !self.done {
            self.done = true;
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        if !self.done {
            self.progress.send_if_modified(|s| {
                if matches!(s, FillState::Failed(_)) {
                    false
                } else {
                    *s = FillState::Failed(Error::internal("blob fill abandoned"));
                    true
                }
            });
            self.cleanup();
        }
    }
}

/// Records an access on disk: the blob file's mtime (see `index`). A failure costs only recency
/// after a restart, so it is logged at debug.
fn record_access(f: &File, path: &Path) {
    if let Err(e) = f.set_modified(std::time::SystemTime::now()) {
        tracing::debug!(path = %path.display(), error = %e, "could not record a blob's last access");
    }
}

/// Removes the files of entries taken out of the index (blocking). A file that cannot be removed
/// goes back in the index, oldest of all, so it is tried again next time and stays counted.
fn evict_files(index: &Index, blobs: &Path, victims: Vec<(index::Key, u64)>, reason: Reason) {
    let (mut count, mut bytes) = (0u64, 0u64);
    for (key, size) in victims {
        let digest = index::digest(&key);
        match std::fs::remove_file(blobs.join(digest.hex())) {
            Ok(()) => {
                count += 1;
                bytes += size;
                tracing::debug!(%digest, size, reason = reason.as_str(), "evicted");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(%digest, error = %e, "could not evict a cached blob");
                index.insert(key, size, 0);
            }
        }
    }
    index.evicted(reason, count, bytes);
    if count > 0 {
        tracing::info!(
            reason = reason.as_str(),
            evicted = count,
            bytes,
            cache_bytes = index.bytes(),
            "evicted cached blobs"
        );
    }
}

/// Where the bytes of a read come from.
pub enum Source {
    /// A committed file: everything up to its length is final.
    File(BlobFile),
    /// A fill in progress: follow it.
    Fill(watch::Receiver<FillState>),
}

/// Streams bytes `start..end` (end exclusive; `None` = to the end of the blob) of a blob.
///
/// From a fill, it reads what has been written so far and waits for more, but holds back the final
/// byte until the fill is committed, so a failed verification always leaves the reader short.
pub fn read_range(
    source: Source,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = Result<Bytes, Error>> + Send {
    struct St {
        source: Source,
        pos: u64,
        end: u64,
        done: bool,
        cursor: Option<Cursor>,
    }
    let st = St {
        source,
        pos: start,
        end: end.unwrap_or(u64::MAX),
        done: false,
        cursor: None,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done || st.pos >= st.end {
            return None;
        }
        match next_chunk(&mut st.source, st.pos, st.end, &mut st.cursor).await {
            Ok(Some(bytes)) => {
                st.pos += bytes.len() as u64;
                if let Some(c) = &st.cursor {
                    c.advance(st.pos);
                }
                Some((Ok(bytes), st))
            }
            Ok(None) => None,
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    })
}

/// Bytes handed out per frame from a mapped file. Each frame is its own small mapping, unmapped
/// when the frame has been sent, so the mapped (resident) part of a blob stays a few frames per
/// connection rather than the whole file.
const MAP_CHUNK: u64 = 1024 * 1024;

/// Maps `len` bytes at `offset` of a blob file (verified, or the written part of a fill) read-only, so that hits go from the page
/// cache to the socket with one copy and no buffer to allocate or fill.
///
/// This is berth's one `unsafe`. A mapping is only sound while nobody truncates or rewrites the
/// file under it, and berth never does either: blob files are only ever appended to (under a temp
/// name, and only bytes already written are mapped), then renamed or unlinked, both of which leave
/// a mapping intact.
///
/// With `maps`, the mapping is registered there while it lives, so that a plain-TCP connection
/// can send it from the file (`zerocopy`) without ever touching its pages.
#[allow(unsafe_code)]
fn map(file: &Arc<File>, offset: u64, len: u64, maps: Option<&Arc<Mappings>>) -> io::Result<Bytes> {
    const PAGE: u64 = 4096;
    let start = offset - offset % PAGE;
    let span = usize::try_from(offset + len - start).map_err(io::Error::other)?;
    // SAFETY: see above: the mapped bytes never change while berth runs.
    let m = unsafe {
        memmap2::MmapOptions::new()
            .offset(start)
            .len(span)
            .map(&**file)?
    };
    let skip = (offset - start) as usize;
    let bytes = match maps {
        Some(maps) => {
            let registration = maps.register(m.as_ptr() as usize, m.len(), file.clone(), start);
            Bytes::from_owner(Mapped {
                _registration: registration,
                map: m,
            })
        }
        None => Bytes::from_owner(m),
    };
    Ok(bytes.slice(skip..))
}

/// A registered mapping. Fields drop in order: unregistered first, then unmapped.
struct Mapped {
    _registration: crate::zerocopy::Registration,
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// The next chunk at `pos` (before `end`), waiting on a fill if needed; `None` at the end of the blob.
/// `cursor` is this reader's place in the fill, registered on its first look at it.
async fn next_chunk(
    source: &mut Source,
    pos: u64,
    end: u64,
    cursor: &mut Option<Cursor>,
) -> Result<Option<Bytes>, Error> {
    // How far we may read now.
    let (file, limit, maps) = loop {
        match source {
            Source::File(b) => break (b.file.clone(), b.len, b.maps.clone()),
            Source::Fill(rx) => {
                let state = rx.borrow_and_update().clone();
                match state {
                    FillState::Verified(b) | FillState::Committed(b) => {
                        *source = Source::File(b);
                        continue;
                    }
                    FillState::Failed(e) => return Err(e),
                    FillState::Writing(p) => {
                        if cursor.is_none() {
                            *cursor = Some(p.spool.register(pos));
                        }
                        // Hold back the last byte until the digest is verified: the blob's, and
                        // the requested range's, so that no response (a 206 included) completes
                        // with bytes that might turn out wrong.
                        let readable = match p.total {
                            _ if p.verified => p.received,
                            Some(t) => p.received.min(t.saturating_sub(1)),
                            None => p.received.saturating_sub(1),
                        };
                        let readable = match p.verified {
                            true => readable,
                            false => readable.min(end.saturating_sub(1)),
                        };
                        if p.verified && pos >= readable {
                            return Ok(None);
                        }
                        if readable > pos {
                            if let Some(bytes) = p.spool.get(pos, end.min(readable)) {
                                return Ok(Some(bytes));
                            }
                            if pos < p.written {
                                break (p.file, p.written.min(readable), p.maps);
                            }
                            if p.pass_through {
                                // Past the file's end and gone from memory: this reader was cut
                                // off for taking nothing while the fill waited for it.
                                return Err(Error::internal(
                                    "fell behind a blob fill that the full disk kept in memory only",
                                ));
                            }
                        }
                    }
                    FillState::Pending => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::internal("blob fill ended without a result"));
                }
            }
        }
    };
    let stop = end.min(limit);
    if pos >= stop {
        return Ok(None);
    }
    // Bytes below `limit` are final (verified, or already written and never rewritten): map them.
    match map(&file, pos, (stop - pos).min(MAP_CHUNK), maps.as_ref()) {
        Ok(bytes) => return Ok(Some(bytes)),
        // Mapping is an optimisation; a plain read works without it.
        Err(e) => tracing::debug!(error = %e, "cannot map blob file; reading it instead"),
    }
    let n = (stop - pos).min(READ_CHUNK as u64) as usize;
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::zeroed(n);
        let mut filled = 0;
        while filled < n {
            match file.read_at(&mut buf[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf.freeze())
    })
    .await
    .map_err(|e| Error::internal(format!("blob read task: {e}")))?;
    match read {
        Ok(bytes) if bytes.is_empty() => Err(Error::internal(
            "blob file is shorter than its recorded length",
        )),
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) => Err(Error::io("reading blob", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn digest_of(data: &[u8]) -> Digest {
        Digest::of(data)
    }

    async fn collect(s: impl Stream<Item = Result<Bytes, Error>>) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn put_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = Bytes::from_static(b"hello blob");
        let d = digest_of(&data);
        assert_eq!(store.stat(&d).await.unwrap(), None);
        store.put(&d, data.clone()).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(10));
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"hello blob");
        let blob = store.open_blob(&d).await.unwrap().unwrap();
        assert_eq!(
            collect(read_range(Source::File(blob.clone()), 0, None))
                .await
                .unwrap(),
            b"hello blob"
        );
        assert_eq!(
            collect(read_range(Source::File(blob), 6, Some(8)))
                .await
                .unwrap(),
            b"bl"
        );
        let indexed: Vec<_> = store
            .index()
            .snapshot()
            .iter()
            .map(|e| (e.0, e.1))
            .collect();
        assert_eq!(indexed, vec![(index::key(&d), 10)]);
        assert!(store.remove(&d).await.unwrap());
        assert!(!store.remove(&d).await.unwrap());
        assert!(store.index().is_empty());
    }

    #[tokio::test]
    async fn wrong_bytes_are_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest_of(b"right");
        let err = store
            .put(&d, Bytes::from_static(b"wrong"))
            .await
            .unwrap_err();
        assert!(matches!(err, CommitError::Digest { .. }), "{err}");
        assert_eq!(store.stat(&d).await.unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "temp file removed"
        );
    }

    #[tokio::test]
    async fn short_fill_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest_of(b"abcdef");
        let (tx, _rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&d, Some(6), tx).await.unwrap();
        p.write(Bytes::from_static(b"abc")).await.unwrap();
        assert!(matches!(
            p.commit().await.unwrap_err(),
            CommitError::Size {
                expected: 6,
                actual: 3
            }
        ));
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn reader_follows_a_growing_fill_and_gets_the_last_byte_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let d = digest_of(&data);
        let (tx, rx) = watch::channel(FillState::Pending);
        let reader = tokio::spawn(collect(read_range(Source::Fill(rx.clone()), 0, None)));
        let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
        for chunk in data.chunks(100_000) {
            p.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        // Everything is written, but not committed: a second reader can't have the final byte yet.
        let mut probe = std::pin::pin!(read_range(
            Source::Fill(rx.clone()),
            data.len() as u64 - 1,
            None
        ));
        assert!(
            futures_util::FutureExt::now_or_never(probe.next()).is_none(),
            "last byte held back"
        );
        p.commit().await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), data);
        assert_eq!(
            probe.next().await.unwrap().unwrap().as_ref(),
            &data[data.len() - 1..]
        );
    }

    #[tokio::test]
    async fn reader_of_a_failed_fill_gets_an_error_not_a_short_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest_of(b"expected content");
        let (tx, rx) = watch::channel(FillState::Pending);
        let reader = tokio::spawn(collect(read_range(Source::Fill(rx), 0, None)));
        let mut p = store.begin(&d, Some(16), tx).await.unwrap();
        p.write(Bytes::from_static(b"unexpected conte"))
            .await
            .unwrap();
        let err = match p.commit().await {
            Err(e) => e,
            Ok(_) => panic!("wrong bytes committed"),
        };
        assert!(matches!(err, CommitError::Digest { .. }));
        p.fail(Error::internal(err.to_string()));
        // Readers are told.
        assert!(reader.await.unwrap().is_err());
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn temp_file_owner_reads_the_pid_from_names_berth_makes() {
        let hex = "a".repeat(64);
        assert_eq!(temp_file_owner(&format!("{hex}.4242.7.part")), Some(4242));
        assert_eq!(temp_file_owner(&format!("{hex}.4242.part")), None);
        assert_eq!(temp_file_owner(&format!("{hex}.x.7.part")), None);
        assert_eq!(temp_file_owner("abc.4242.7.part"), None);
        assert_eq!(temp_file_owner(&format!("{hex}.4242.7")), None);
        // And it reads the names `begin` makes.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (tx, _rx) = watch::channel(FillState::Pending);
        let _pending = store.begin(&digest_of(b"x"), Some(1), tx).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(tmp_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(temp_file_owner(&names[0]), Some(std::process::id()));
    }

    #[tokio::test]
    async fn open_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/abc.1.0.part"), b"junk").unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn fed_chunks_reach_readers_before_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = Bytes::from_static(b"0123456789");
        let d = digest_of(&data);
        let (tx, rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&d, Some(10), tx).await.unwrap();
        let feed = p.feed();
        feed.push(data.slice(..6));
        // Nothing written yet, but the first six bytes are readable from memory.
        let mut reader = std::pin::pin!(read_range(Source::Fill(rx.clone()), 0, None));
        assert_eq!(reader.next().await.unwrap().unwrap().as_ref(), b"012345");
        feed.push(data.slice(6..));
        // All ten received: nine come out, the last waits for the verdict.
        assert_eq!(reader.next().await.unwrap().unwrap().as_ref(), b"678");
        assert!(futures_util::FutureExt::now_or_never(reader.next()).is_none());
        p.write_all(vec![data.slice(..6), data.slice(6..)])
            .await
            .unwrap();
        p.commit().await.unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap().as_ref(), b"9");
        assert!(reader.next().await.is_none());
    }

    /// Makes every later write of `p` fail as on a full disk.
    fn fill_the_disk(p: &mut PendingBlob) {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        p.file = Some(Arc::new(full));
    }

    const ROOMY: PassThrough = PassThrough {
        window: 1 << 20,
        lag_limit: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn a_fill_of_known_size_reserves_its_room_until_it_commits_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_size: Some(100),
            ..Limits::default()
        };
        let store = Store::open_with(dir.path(), limits).unwrap();
        let (old, new) = (Bytes::from(vec![1u8; 60]), Bytes::from(vec![2u8; 60]));
        store.put(&digest_of(&old), old.clone()).await.unwrap();
        assert_eq!((store.index().bytes(), store.index().reserved()), (60, 0));

        // Room for the newcomer is made before its first byte: the old blob goes now.
        let (tx, _rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&digest_of(&new), Some(60), tx).await.unwrap();
        assert_eq!((store.index().bytes(), store.index().reserved()), (0, 60));
        assert_eq!(store.stat(&digest_of(&old)).await.unwrap(), None);
        p.write(new.clone()).await.unwrap();
        p.commit().await.unwrap();
        assert_eq!((store.index().bytes(), store.index().reserved()), (60, 0));

        // A fill that fails (dropped, or wrong bytes) gives its room back.
        let (tx, _rx) = watch::channel(FillState::Pending);
        let p = store.begin(&digest_of(b"x"), Some(30), tx).await.unwrap();
        assert_eq!(store.index().reserved(), 30);
        drop(p);
        assert_eq!(store.index().reserved(), 0);
        let (tx, _rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&digest_of(b"y"), Some(1), tx).await.unwrap();
        p.write(Bytes::from_static(b"z")).await.unwrap();
        assert!(matches!(p.commit().await, Err(CommitError::Digest { .. })));
        drop(p);
        assert_eq!(store.index().reserved(), 0);

        // One too big to ever fit reserves nothing and evicts nothing in vain.
        let (tx, _rx) = watch::channel(FillState::Pending);
        let _p = store
            .begin(&digest_of(b"big"), Some(101), tx)
            .await
            .unwrap();
        assert_eq!((store.index().bytes(), store.index().reserved()), (60, 0));
    }

    #[tokio::test]
    async fn a_full_disk_turns_the_fill_into_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Bytes = (0..600_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let d = digest_of(&data);
        let (tx, rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
        let feed = p.feed();
        let (a, b, c) = (
            data.slice(..200_000),
            data.slice(200_000..400_000),
            data.slice(400_000..),
        );
        feed.push(a.clone());
        p.write_all(vec![a]).await.unwrap();
        let reader = tokio::spawn(collect(read_range(Source::Fill(rx.clone()), 0, None)));

        fill_the_disk(&mut p);
        feed.push(b.clone());
        let e = p.write_all(vec![b]).await.unwrap_err();
        assert!(is_disk_full(&e), "{e}");
        assert!(Error::io("writing", &e).is_disk_full());
        assert_eq!(store.index().reserved(), data.len() as u64);
        p.pass_through(ROOMY);
        assert_eq!(
            store.index().reserved(),
            0,
            "nothing will be kept: room given back"
        );
        assert_eq!(
            std::fs::read_dir(tmp_dir(dir.path())).unwrap().count(),
            0,
            "temp file deleted at once"
        );
        feed.push(c.clone());
        p.write_all(vec![c]).await.unwrap();
        assert_eq!(p.written(), 200_000, "nothing more went to the disk");

        // Every byte arrived, but the last one waits for the digest.
        let mut probe = std::pin::pin!(read_range(
            Source::Fill(rx.clone()),
            data.len() as u64 - 1,
            None
        ));
        assert!(futures_util::FutureExt::now_or_never(probe.next()).is_none());
        assert!(matches!(
            p.commit().await,
            Err(CommitError::Persist(e)) if is_disk_full(&e)
        ));
        assert!(
            reader.await.unwrap().unwrap() == data,
            "reader got every byte"
        );
        assert_eq!(
            probe.next().await.unwrap().unwrap().as_ref(),
            &data[data.len() - 1..]
        );
        assert!(probe.next().await.is_none(), "and then the end, not a wait");
        drop(p);
        assert_eq!(store.stat(&d).await.unwrap(), None, "nothing cached");
        assert_eq!(std::fs::read_dir(tmp_dir(dir.path())).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn wrong_bytes_passing_through_never_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest_of(b"expected content");
        let (tx, rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&d, Some(16), tx).await.unwrap();
        let reader = tokio::spawn(collect(read_range(Source::Fill(rx), 0, None)));
        fill_the_disk(&mut p);
        assert!(p.write(Bytes::from_static(b"unexpected")).await.is_err());
        p.pass_through(ROOMY);
        p.write(Bytes::from_static(b" conte")).await.unwrap();
        let err = match p.commit().await {
            Err(e @ CommitError::Digest { .. }) => e,
            other => panic!("wrong bytes passed: {:?}", other.map(|b| b.len)),
        };
        p.fail(Error::internal(err.to_string()));
        assert!(reader.await.unwrap().is_err());
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn pass_through_waits_for_slow_readers_and_cuts_off_a_stuck_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let chunk = 16 * 1024;
        let data: Bytes = (0..(32 * chunk))
            .map(|i| (i * 13 % 241) as u8)
            .collect::<Vec<_>>()
            .into();
        let d = digest_of(&data);
        let limits = PassThrough {
            window: 4 * chunk as u64,
            lag_limit: Duration::from_secs(10),
        };
        let (tx, rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&d, Some(data.len() as u64), tx).await.unwrap();
        p.pass_through(limits);
        // One reader looks once and then takes nothing; another reads on, one frame at a time.
        let mut stuck = Box::pin(read_range(Source::Fill(rx.clone()), 0, None));
        assert!(futures_util::FutureExt::now_or_never(stuck.next()).is_none());
        let moving = tokio::spawn(collect(read_range(Source::Fill(rx.clone()), 0, None)));
        let started = tokio::time::Instant::now();
        let feed = p.feed();
        let spool = p.spool.clone();
        for c in data.chunks(chunk) {
            let c = Bytes::copy_from_slice(c);
            feed.push(c.clone());
            p.write_all(vec![c]).await.unwrap();
            assert!(
                spool.held() <= limits.window + chunk as u64,
                "memory bounded: {} bytes held",
                spool.held()
            );
        }
        // The fill waited for the stuck reader once, for lag_limit, then went on without it.
        let waited = started.elapsed();
        assert!(
            waited >= limits.lag_limit && waited < 2 * limits.lag_limit,
            "{waited:?}"
        );
        assert!(matches!(p.commit().await, Err(CommitError::Persist(_))));
        assert!(
            moving.await.unwrap().unwrap() == data,
            "the moving reader got every byte"
        );
        let r = stuck.next().await.unwrap();
        assert!(r.is_err(), "a cut-off reader fails, never ends short");
    }

    #[test]
    fn spool_slices_and_trims() {
        let spool = Spool::default();
        spool.push(0, Bytes::from(vec![1u8; 1 << 20]));
        spool.push(1 << 20, Bytes::from(vec![2u8; 1 << 20]));
        assert_eq!(spool.get(10, 20).unwrap().len(), 10);
        assert_eq!(spool.get((1 << 20) - 2, 4 << 20).unwrap().as_ref(), &[1, 1]);
        assert_eq!(
            spool.get((1 << 20) + 5, 4 << 20).unwrap().len(),
            (1 << 20) - 5
        );
        assert!(spool.get(2 << 20, 4 << 20).is_none());
        spool.trim((1 << 20) + SPOOL_KEEP);
        assert!(
            spool.get(0, 10).is_none(),
            "written long ago: read from the file"
        );
        assert!(spool.get(1 << 20, (1 << 20) + 1).is_some());
    }

    #[tokio::test]
    async fn mapped_reads_cross_window_and_page_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Bytes = (0..(3 * MAP_CHUNK as usize + 12345))
            .map(|i| (i * 7 % 253) as u8)
            .collect::<Vec<_>>()
            .into();
        let d = digest_of(&data);
        store.put(&d, data.clone()).await.unwrap();
        let blob = store.open_blob(&d).await.unwrap().unwrap();
        for (start, end) in [
            (0, None),
            (4095, Some(4097)),
            (MAP_CHUNK - 1, Some(2 * MAP_CHUNK + 3)),
            (3 * MAP_CHUNK + 1, None),
        ] {
            let got = collect(read_range(Source::File(blob.clone()), start, end))
                .await
                .unwrap();
            let want = &data[start as usize..end.map_or(data.len(), |e| e as usize)];
            assert!(got == want, "range {start}..{end:?}");
        }
    }
}
