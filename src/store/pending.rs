//! A fill in progress: a [`PendingBlob`] hashes while it writes, publishes its progress on a
//! `watch` channel ([`FillState`]), and on [`PendingBlob::commit`] checks size and digest, fsyncs
//! the file and its directory, and renames it into place. Readers hold the temp file open, so they
//! read the growing file while it is written and keep reading the same inode after the rename.
//! Dropping a `PendingBlob` without committing deletes the temp file and tells every reader the
//! fill failed.
//!
//! Room is made when a fill starts, not when it commits: a blob's size is known before its first
//! byte (the upstream's `Content-Length`), so [`Store::begin`] reserves it, first evicting the
//! least recently used blobs if it would pass the high watermark. Disk use then stays within
//! `max_size` plus the fills of unknown size (and those refused room because everything else is in
//! use: they are written all the same, and ask again at commit, where one that still does not fit
//! is served but not kept). A fill that fails gives its reservation back; one that commits turns it
//! into the blob's entry. The price: a miss that has to make room waits for those unlinks before
//! its first byte, and a burst of concurrent fills holds room for all of them at once, so under
//! `max_size` pressure more of them end served but not kept than when room was counted only at
//! commit.
//!
//! # A full disk
//! A full disk does not fail a fill: when a write hits ENOSPC (or a quota) ([`is_disk_full`]), the
//! caller switches the fill to [`PendingBlob::pass_through`]. The temp file is deleted (its bytes
//! so far stay readable through the open handle until the fill's readers are done, then the space
//! is free), hashing goes on in memory, and the bytes from the last one written on reach readers
//! from the spool only. Nothing is cached, and the last byte still waits for the digest. Memory
//! stays bounded by back-pressure, not by dropping bytes: after each batch the fill waits until its
//! slowest reader is less than [`PassThrough::window`] behind (the spool keeps nothing older than
//! that), so a slow client gets every byte at its own pace. A reader that takes nothing for
//! [`PassThrough::lag_limit`] while the fill waits for it is cut off: no longer waited for, and its
//! body ends in an error once the bytes it needs are gone, never in a short success. The
//! trade-off: a degraded fill (and every client following it) goes as fast as its slowest live
//! client, in exchange for no client of a moving connection ever failing for being slow; a stuck
//! client costs the others at most `lag_limit`. The memory bound per degraded fill is `window`
//! plus what the caller reads ahead of hashing.
//!
//! Rule of dependency: part of `store`; uses `index`, `oci`, `error`, `zerocopy` (the mappings a
//! committed blob is read through), its parent ([`Store`], [`BlobFile`]) and its siblings `evict`
//! (making room) and `spool` (the chunks readers take from memory); neither imports it.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::evict::evict_files;
use super::spool::{PassThrough, Spool};
use super::{BlobFile, Store};
use crate::error::Error;
use crate::index::{self, Index, Reason};
use crate::oci::Digest;
use crate::zerocopy::Mappings;

/// Whether an I/O error means the disk (or the quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
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

impl Store {
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
    pub(super) file: Option<Arc<File>>,
    pub(super) index: Arc<Index>,
    pub(super) tmp_path: PathBuf,
    pub(super) final_path: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) hasher: Option<Sha256>,
    /// Bytes in the file. Frozen once the fill passes through.
    pub(super) written: u64,
    /// Bytes hashed (`>= written`: a batch whose write failed was hashed all the same).
    pub(super) hashed: u64,
    pub(super) total: Option<u64>,
    pub(super) digest: Digest,
    pub(super) progress: watch::Sender<FillState>,
    pub(super) spool: Arc<Spool>,
    pub(super) done: bool,
    /// Set once the disk was full: the fill goes on in memory.
    pub(super) pass_through: Option<PassThrough>,
    pub(super) maps: Arc<Mappings>,
    /// The room reserved in the index at [`Store::begin`]: given back on failure (by its Drop),
    /// turned into the blob's entry at commit.
    pub(super) reservation: Reservation,
}

/// Bytes reserved in the index for a fill; released when dropped unless taken.
pub(super) struct Reservation {
    pub(super) index: Arc<Index>,
    bytes: u64,
}

impl Reservation {
    /// Hands the reserved bytes to the caller, who ends the reservation itself.
    pub(super) fn take(&mut self) -> u64 {
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

    /// Whether the fill goes on in memory only (see [`pass_through`](Self::pass_through)).
    pub fn is_pass_through(&self) -> bool {
        self.pass_through.is_some()
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

    /// Verifies size and digest, releases the bytes to readers, makes the file durable and renames
    /// it into place.
    ///
    /// On a size or digest error the fill is still open: the caller ends it with
    /// [`fail`](Self::fail) (or drop). On [`CommitError::Persist`] the readers got verified bytes,
    /// but nothing was cached.
    pub async fn commit(&mut self) -> Result<BlobFile, CommitError> {
        self.commit_with(|| {}).await
    }

    /// As [`commit`](Self::commit), calling `verified` once size and digest checked out, before any
    /// reader gets the last byte and before the file is at its final path: what must be true of
    /// a verified blob before anyone can see it (where it came from) is done there.
    pub async fn commit_with(&mut self, verified: impl FnOnce()) -> Result<BlobFile, CommitError> {
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
        verified();
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

impl PendingBlob {
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

    /// Pass-through: hashes a batch (readers had it from the feed), then waits until the slowest
    /// of them is within the window (cutting off one that does not move for `lag_limit`) and
    /// drops what none needs.
    pub(super) async fn hash_only(
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
        // Readers were told of these bytes by the feed, which alone holds them now (there is no
        // file to read them from): a count raised here without them would promise bytes that
        // no one can read.
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
}
