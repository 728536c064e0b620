//! A blob as this berth has it *now*, for a reader that must never start a fill: its committed
//! file, or a fill already running for the digest (through any upstream) once that fill has its
//! upstream's answer and size. The fleet's parent reads blobs so to make their piece tables
//! (`fleet::tables`, wired in `assemble`): it reads exactly what a client of this berth would
//! (`store::read_range`, which releases a fill's last byte only after the digest checked out),
//! so a table never completes over a wrong body.
//!
//! A running fill is found through any upstream with
//! [`Fills::with_content`](crate::fill::Fills::with_content), which hands out its channel without
//! joining it as a request would: nothing is registered or started. The fills are looked at
//! before the store, so a fill that commits and leaves them in between is found in the store.
//!
//! Rule of dependency: part of `mirror`; uses `fill` (`Fills`' public calls), `store` (the file
//! and the reader), `oci`, `error` and its parent's [`Mirror`] and `BlobStream`.

use super::{BlobStream, Mirror};
use crate::error::Error;
use crate::oci::Digest;
use crate::store::{self, Source};

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

    /// The bytes a fill of `digest` running now (through any upstream) has received, 0 while it
    /// waits for its upstream's answer; `None` when none runs. Starts nothing.
    pub fn blob_filling(&self, digest: &Digest) -> Option<u64> {
        self.fills.received(digest)
    }

    /// The whole of `digest` as a client would read it, with its size: the committed file, or a
    /// running fill of known size followed as it grows. `None`: neither (nothing is started).
    pub async fn follow_blob(&self, digest: &Digest) -> Result<Option<(u64, BlobStream)>, Error> {
        // The running fills first: one that commits and leaves them before the store is looked
        // at is in the store by then.
        let upstreams = self.upstreams();
        if let Some((rx, size)) = upstreams
            .iter()
            .find_map(|(slot, _)| self.fills.with_content(slot, digest))
        {
            return Ok(Some((
                size,
                Box::pin(store::read_range(Source::Fill(rx), 0, None)),
            )));
        }
        let cached = self
            .store
            .open_blob(digest)
            .await
            .map_err(|e| Error::io("opening a cached blob", &e))?;
        Ok(cached.map(|blob| {
            let len = blob.len;
            let body: BlobStream = Box::pin(store::read_range(Source::File(blob), 0, None));
            (len, body)
        }))
    }
}
