//! What readers of a fill take from memory: the [`Spool`] of recently received chunks (fed ahead
//! of the disk, so a reader at the head never waits for a write), each reader's place in it
//! (`Cursor`), and the limits ([`PassThrough`]) that bound it when the disk is full.
//!
//! Normally the spool keeps what is not yet written plus `SPOOL_KEEP` bytes behind the file's
//! end. In the degraded pass-through of a full disk (its rules are in `pending`, which runs it) it
//! is the only copy of the bytes: it keeps nothing older than the slowest reader still waited for,
//! at most [`PassThrough::window`] behind the head, and a reader cut off after
//! [`PassThrough::lag_limit`] is no longer waited for (its body ends in an error once the bytes it
//! needs are gone, never in a short success).
//!
//! Rule of dependency: part of `store`; a leaf of it (std, `bytes`, tokio): `pending` and `read`
//! use it, it imports neither.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

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
    pub(super) advanced: Notify,
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
