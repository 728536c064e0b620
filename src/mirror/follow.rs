//! A blob as this berth has it *now*, for a reader that must never start a fill: its committed
//! file, or a fill already running for the digest (through any upstream) once that fill has its
//! upstream's answer and size. The fleet's parent reads blobs so to make their piece tables
//! (`fleet::tables`, wired in `assemble`): it reads exactly what a client of this berth would
//! (`store::read_range`, which releases a fill's last byte only after the digest checked out),
//! so a table never completes over a wrong body.
//!
//! Neither, and a bucket (`[storage.s3]`): the bucket's object, read whole and checked
//! ([`Tier::read_blob`](crate::tier::Tier::read_blob): its last chunk only once the digest matched;
//! a wrong object deleted), keeping nothing. With replicas over one bucket, a replica that finds a
//! blob there serves it without asking the digest's owner, so the owner, which makes the fleet's
//! piece table for every replica, may hold neither the blob nor a fill of it; without this read the
//! nodes behind other replicas got no table and took the whole blob from their parent. The cost:
//! the owner reads the object once more from the bucket (bucket to replica, not out of the central
//! berth to a node), once per table it makes; where the bucket's link is as narrow as a node's, the
//! two reads (the owner's and the filling replica's) share it and the parent-fed node gets the blob
//! at half the rate (BENCHMARKS.md, "The central berth as replicas, and over a bucket": p99 1.98x
//! the single pull with the bucket at 50 Mbit/s, 1.39x at 400 Mbit/s, for 16 nodes at 50 Mbit/s).
//! Why not a fill into the owner's store instead: a fill is keyed by its upstream and repository,
//! which a table call does not name (the node's may be on another replica), it would pass the
//! origin check that a table, holding only hashes of the digest the node named, does not need, and
//! it would take the owner's disk for a blob no client asked it for.
//!
//! A running fill is found through any upstream with
//! [`Fills::with_content`](crate::fill::Fills::with_content), which hands out its channel without
//! joining it as a request would: nothing is registered or started. The fills are looked at
//! before the store, so a fill that commits and leaves them in between is found in the store.
//!
//! Rule of dependency: part of `mirror`; uses `fill` (`Fills`' public calls), `store` (the file
//! and the reader, the bucket's errors), `tier` (the bucket's checked read), `oci`, `error` and
//! its parent's [`Mirror`] and `BlobStream`.

use futures_util::TryStreamExt;

use super::{BlobStream, Mirror};
use crate::error::Error;
use crate::oci::Digest;
use crate::store::s3::BucketError;
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

    /// The whole of `digest` as a client would read it, with its size: the committed file, a
    /// running fill of known size followed as it grows, or the bucket's object read and checked.
    /// `None`: none of them (nothing is started).
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
        if let Some(blob) = cached {
            let len = blob.len;
            let body: BlobStream = Box::pin(store::read_range(Source::File(blob), 0, None));
            return Ok(Some((len, body)));
        }
        let Some(tier) = &self.tier else {
            return Ok(None);
        };
        Ok(tier.read_blob(digest).await.map(|(size, body)| {
            let body: BlobStream = Box::pin(body.map_err(|e| match e {
                BucketError::Digest { .. } => Error::digest_mismatch("bucket", e.to_string()),
                e => Error::upstream_unavailable("bucket", e.to_string()),
            }));
            (size, body)
        }))
    }
}
