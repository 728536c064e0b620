//! What readers of a fill take from memory ([`Spool`], fed ahead of the disk through a [`Feed`]),
//! and the degraded pass-through when the disk is full.
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
//! Rule of dependency: part of `store`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use sha2::Digest as _;
use tokio::sync::{Notify, watch};

use super::pending::{FillState, PendingBlob};

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
pub(super) struct Cursor {
    spool: Arc<Spool>,
    at: Arc<AtomicU64>,
}

impl Cursor {
    pub(super) fn advance(&self, pos: u64) {
        self.at.store(pos, Ordering::Release);
        self.spool.advanced.notify_waiters();
    }
}

/// Bytes of already-written chunks a spool keeps.
pub(super) const SPOOL_KEEP: u64 = 2 * 1024 * 1024;

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

    pub(super) fn push(&self, offset: u64, chunk: Bytes) {
        self.chunks.lock().unwrap().push_back((offset, chunk));
    }

    /// Forgets chunks that ended more than SPOOL_KEEP bytes before `written`.
    pub(super) fn trim(&self, written: u64) {
        self.trim_below(written.saturating_sub(SPOOL_KEEP));
    }

    /// Forgets chunks that end at or before `pos`.
    pub(super) fn trim_below(&self, pos: u64) {
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

    pub(super) fn register(self: &Arc<Self>, pos: u64) -> Cursor {
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
    pub(super) fn slowest(&self) -> Option<u64> {
        self.readers
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r.upgrade())
            .map(|at| at.load(Ordering::Acquire))
            .min()
    }

    /// Stops waiting for readers before `pos`; returns how many there were.
    pub(super) fn cut_off(&self, pos: u64) -> usize {
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

    /// Pass-through: hashes a batch, tells readers, then waits until the slowest of them is within
    /// the window (cutting off one that does not move for `lag_limit`) and drops what none needs.
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
}
