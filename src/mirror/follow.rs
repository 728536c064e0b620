//! A blob as this berth has it *now*, for a reader that must never start a fill: its committed
//! file, or a fill already running for the digest (through any upstream) once that fill has its
//! upstream's answer and size. The fleet's parent reads blobs so to make their piece tables
//! (`fleet::tables`, wired in `assemble`): it reads exactly what a client of this berth would
//! (`store::read_range`, which releases a fill's last byte only after the digest checked out),
//! so a table never completes over a wrong body.
//!
//! How a running fill is found without a reader's own request (no upstream or repository is
//! known here): [`Fills::known_size`](crate::fill::Fills::known_size) says which upstream has a
//! fill with content, and [`Fills::share`](crate::fill::Fills::share) (not waiting) joins it, as
//! a request through that upstream may join any repository's fill that has content. If the fill
//! ended between the two looks, `share` registers a new (never started) fill under
//! [`FOLLOW_REPO`]: it is taken out at once and its sender dropped, and the store is looked at
//! again (the fill most likely committed). The cost of that race, rare and a few microseconds
//! wide: a client request for that very upstream, digest and repository name arriving inside it
//! would join the dropped fill and get a 500 it can retry; one for another repository waits on it
//! and then starts its own fill. A read-only accessor of running fills in `fill` would remove it
//! (left for when `fill` is not being changed by other work).
//!
//! Rule of dependency: part of `mirror`; uses `fill` (`Fills`' public calls), `store` (the file
//! and the reader), `oci`, `error` and its parent's [`Mirror`] and `BlobStream`.

use super::{BlobStream, Mirror};
use crate::error::Error;
use crate::fill::Share;
use crate::oci::{Digest, RepoName};
use crate::store::{self, FillState, Source};

/// The repository name under which a follow that lost the race registers its never-started fill
/// (see the module docs).
pub const FOLLOW_REPO: &str = "berth-fleet/follow";

impl Mirror {
    /// The size of `digest` as this berth knows it now: a committed blob's, or a running fill's
    /// once its upstream announced it. Starts nothing.
    pub async fn blob_size(&self, digest: &Digest) -> Option<u64> {
        if let Ok(Some(n)) = self.store.stat(digest).await {
            return Some(n);
        }
        let upstreams = self.upstreams();
        upstreams
            .iter()
            .find_map(|(slot, _)| self.fills.known_size(slot, digest))
    }

    /// The whole of `digest` as a client would read it, with its size: the committed file, or a
    /// running fill of known size followed as it grows. `None`: neither (nothing is started).
    pub async fn follow_blob(&self, digest: &Digest) -> Result<Option<(u64, BlobStream)>, Error> {
        let repo: RepoName = FOLLOW_REPO.parse().expect("a valid repository name");
        // Twice at most: a fill that ended between the looks is committed (or failed) by then.
        for _ in 0..2 {
            let cached = self
                .store
                .open_blob(digest)
                .await
                .map_err(|e| Error::io("opening a cached blob", &e))?;
            if let Some(blob) = cached {
                let len = blob.len;
                let body = store::read_range(Source::File(blob), 0, None);
                return Ok(Some((len, Box::pin(body))));
            }
            let upstreams = self.upstreams();
            let Some(slot) = upstreams
                .iter()
                .map(|(slot, _)| slot)
                .find(|&slot| self.fills.known_size(slot, digest).is_some())
            else {
                return Ok(None);
            };
            match self.fills.share(slot, &repo, digest, false) {
                Share::Join(rx, _) => {
                    let size = match &*rx.borrow() {
                        FillState::Writing(p) => p.total,
                        FillState::Verified(b) | FillState::Committed(b) => Some(b.len),
                        FillState::Pending | FillState::Failed(_) => None,
                    };
                    let Some(size) = size else {
                        return Ok(None);
                    };
                    let body = store::read_range(Source::Fill(rx), 0, None);
                    return Ok(Some((size, Box::pin(body))));
                }
                Share::Start(tx, rx, _) => {
                    // The fill ended between the looks: nothing is started; look again.
                    self.fills.remove(digest, &rx);
                    drop(tx);
                }
                Share::Wait(_) => {}
            }
        }
        Ok(None)
    }
}
