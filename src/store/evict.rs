//! Making room in the local tier: eviction by age and size (the maintenance sweep), the background
//! pass after a write found the disk full, and the unlinking shared with fills that reserve room.
//! A blob under a reader is never a victim: the index only hands out entries without a lease.
//! Rule of dependency: part of `store`; uses `index`.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Store;
use crate::index::{self, Index, Reason};

impl Store {
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
}

/// Removes the files of entries taken out of the index (blocking). A file that cannot be removed
/// goes back in the index, oldest of all, so it is tried again next time and stays counted.
pub(super) fn evict_files(
    index: &Index,
    blobs: &Path,
    victims: Vec<(index::Key, u64)>,
    reason: Reason,
) {
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
