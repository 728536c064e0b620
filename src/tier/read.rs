//! A blob read whole from the bucket by a reader that keeps nothing: the fleet parent's piece
//! tables (`fleet::tables`, through the mirror's `follow_blob`), for a blob that a replica found
//! in the bucket and served without asking the digest's owner, so that the owner holds neither
//! the blob nor a fill of it. Not a fill: nothing is written to the local disk, no upstream is
//! asked, no origin is checked (a piece table names only hashes of the digest the node asked
//! for; the bytes themselves reach nodes only through a replica's ordinary, checked routes).
//!
//! Checked as every bucket read is: the bytes are hashed as they pass and the chunk that holds
//! the blob's last byte is released only once the whole digest matched, so a reader never has
//! the whole of a wrong object. A wrong object is counted and deleted as a fill's is
//! ([`Tier::delete_bad`]) and the read ends in [`BucketError::Digest`]; a body that breaks off,
//! stalls for [`BODY_STALL`] or is longer or shorter than its object ends in an error reported
//! as a failed bucket request ([`Tier::failed`]: the bucket is skipped for a while).
//!
//! Rule of dependency: part of `tier`; uses `store::s3` (the bucket's read and errors) and `oci`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use sha2::{Digest as _, Sha256};

use super::Tier;
use crate::oci::Digest;
use crate::store::s3::BucketError;

/// A bucket body that sends nothing for this long is given up (the reader is a background task:
/// nobody waits on it but the nodes, which take the blob from the parent after a few seconds
/// without hashes anyway).
pub const BODY_STALL: Duration = Duration::from_secs(30);

/// A checked body: its bytes, in order, the last chunk only after the digest matched.
pub type CheckedBody = BoxStream<'static, Result<Bytes, BucketError>>;

impl Tier {
    /// `digest`'s object read whole and checked (module docs), with its size; `None` when the
    /// bucket is being skipped, failed, was too slow ([`Tier::lookup`]) or has no such object.
    pub async fn read_blob(self: &Arc<Self>, digest: &Digest) -> Option<(u64, CheckedBody)> {
        let read = self
            .lookup("get", self.bucket.get_blob(digest, None))
            .await
            .flatten()?;
        let checked = Checked {
            tier: self.clone(),
            digest: digest.clone(),
            size: read.size,
            seen: 0,
            hasher: Some(Sha256::new()),
            body: read.body,
        };
        Some((read.size, stream::unfold(checked, Checked::next).boxed()))
    }
}

/// The state of one checked read.
struct Checked {
    tier: Arc<Tier>,
    digest: Digest,
    size: u64,
    seen: u64,
    /// `None` once the read ended (well or not).
    hasher: Option<Sha256>,
    body: BoxStream<'static, Result<Bytes, BucketError>>,
}

impl Checked {
    async fn next(mut self) -> Option<(Result<Bytes, BucketError>, Checked)> {
        let mut hasher = self.hasher.take()?;
        let chunk = loop {
            match tokio::time::timeout(BODY_STALL, self.body.next()).await {
                Ok(Some(Ok(c))) if c.is_empty() => continue,
                Ok(Some(Ok(c))) => break c,
                // Ended: only an empty blob ends before its last byte was checked below.
                Ok(None) if self.seen == self.size => {
                    return match verdict(&self.tier, &self.digest, hasher).await {
                        Ok(()) => None,
                        Err(e) => Some((Err(e), self)),
                    };
                }
                Ok(None) => {
                    let e = BucketError::Size {
                        expected: self.size,
                        actual: self.seen,
                    };
                    return Some((Err(self.failed(e)), self));
                }
                Ok(Some(Err(e))) => return Some((Err(self.failed(e)), self)),
                Err(_) => {
                    let e = BucketError::Http(format!("body stalled: no data for {BODY_STALL:?}"));
                    return Some((Err(self.failed(e)), self));
                }
            }
        };
        self.seen += chunk.len() as u64;
        if self.seen > self.size {
            let e = BucketError::Size {
                expected: self.size,
                actual: self.seen,
            };
            return Some((Err(self.failed(e)), self));
        }
        hasher.update(&chunk);
        if self.seen < self.size {
            self.hasher = Some(hasher);
            return Some((Ok(chunk), self));
        }
        // The last byte: released only if the whole digest matched.
        let got = verdict(&self.tier, &self.digest, hasher)
            .await
            .map(|()| chunk);
        Some((got, self))
    }

    fn failed(&self, e: BucketError) -> BucketError {
        self.tier.failed(&format!("reading {}", self.digest), &e);
        e
    }
}

/// Whether the bytes hashed match `digest`; a wrong object is reported and deleted.
async fn verdict(tier: &Tier, digest: &Digest, hasher: Sha256) -> Result<(), BucketError> {
    let actual = Digest::from_sha256(hasher.finalize().as_slice());
    if actual == *digest {
        return Ok(());
    }
    let e = BucketError::Digest {
        expected: digest.clone(),
        actual,
    };
    tracing::error!(%digest, error = %e, "a blob read from the bucket failed verification; deleted from the bucket");
    tier.bad_content(&format!("reading {digest}"), &e);
    tier.delete_bad(digest).await;
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::testing::Faulty;
    use crate::store::s3::{Bucket, BucketMetrics};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};
    use std::sync::atomic::Ordering;

    fn key(d: &Digest) -> Path {
        Path::from(format!("blobs/sha256/{}", d.hex()))
    }

    /// A tier over a bucket holding `body` under `named`'s key.
    async fn holding(named: &Digest, body: &[u8]) -> (Arc<Tier>, Arc<InMemory>) {
        let inner = Arc::new(InMemory::new());
        inner
            .put(&key(named), PutPayload::from(body.to_vec()))
            .await
            .unwrap();
        let (store, _) = Faulty::new(inner.clone());
        let bucket = Bucket::with_store(Arc::new(store), "", BucketMetrics::new());
        (Arc::new(Tier::new(Arc::new(bucket))), inner)
    }

    async fn collect(body: CheckedBody) -> (Vec<u8>, Option<BucketError>) {
        let mut got = Vec::new();
        let mut body = body;
        while let Some(c) = body.next().await {
            match c {
                Ok(c) => got.extend_from_slice(&c),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    fn mismatches(t: &Tier) -> u64 {
        let requests = &t.bucket().metrics().requests;
        requests.with_label_values(&["get_body", "mismatch"]).get()
    }

    #[tokio::test]
    async fn a_right_object_is_read_whole() {
        let body = vec![7u8; 300_000];
        let d = Digest::of(&body);
        let (t, _) = holding(&d, &body).await;
        let (size, read) = t.read_blob(&d).await.unwrap();
        assert_eq!(size, body.len() as u64);
        let (got, err) = collect(read).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, body);
        assert!(t.readable());
        // An empty blob is one too.
        let d = Digest::of(b"");
        let (t, _) = holding(&d, b"").await;
        let (got, err) = collect(t.read_blob(&d).await.unwrap().1).await;
        assert!(got.is_empty() && err.is_none(), "{err:?}");
    }

    /// An object that does not hash to its name: its last byte never comes, the read ends in a
    /// digest error, the object is deleted and counted (the bucket is not skipped: it answered).
    #[tokio::test]
    async fn a_wrong_object_never_ends_whole_and_is_deleted() {
        let right = vec![1u8; 200_000];
        let mut wrong = right.clone();
        wrong[100] ^= 1;
        let d = Digest::of(&right);
        let (t, inner) = holding(&d, &wrong).await;
        let (_, read) = t.read_blob(&d).await.unwrap();
        let (got, err) = collect(read).await;
        assert!(matches!(err, Some(BucketError::Digest { .. })), "{err:?}");
        assert!(got.len() < wrong.len(), "the last chunk was held back");
        assert_eq!(mismatches(&t), 1);
        assert!(inner.head(&key(&d)).await.is_err(), "deleted");
        assert!(t.readable());
        let (_, text) = t.last_error().lock().unwrap().clone().unwrap();
        assert!(text.contains("digest mismatch"), "{text}");
        // Gone now: nothing to read.
        assert!(t.read_blob(&d).await.is_none());
        // An empty object under another digest's name too.
        let (t, _) = holding(&d, b"").await;
        let (got, err) = collect(t.read_blob(&d).await.unwrap().1).await;
        assert!(got.is_empty());
        assert!(matches!(err, Some(BucketError::Digest { .. })), "{err:?}");
    }

    /// A body that breaks off is an error, reported (the bucket skipped for a while), with only
    /// the bytes before the break handed out.
    #[tokio::test]
    async fn a_body_that_breaks_off_is_a_failed_read() {
        let body = vec![3u8; 100_000];
        let d = Digest::of(&body);
        let inner = Arc::new(InMemory::new());
        inner
            .put(&key(&d), PutPayload::from(body.clone()))
            .await
            .unwrap();
        let (store, faults) = Faulty::new(inner);
        faults.break_get_after.store(4096, Ordering::SeqCst);
        let bucket = Bucket::with_store(Arc::new(store), "", BucketMetrics::new());
        let t = Arc::new(Tier::new(Arc::new(bucket)));
        let (_, read) = t.read_blob(&d).await.unwrap();
        let (got, err) = collect(read).await;
        assert!(err.is_some());
        assert!(got.len() <= 4096, "{}", got.len());
        assert!(!t.readable(), "a failed read skips the bucket for a while");
        assert_eq!(mismatches(&t), 0, "not a wrong object");
    }

    /// A body longer or shorter than its object's size is an error before its end is released.
    #[tokio::test]
    async fn a_body_of_another_length_is_refused() {
        let body = Bytes::from(vec![5u8; 1000]);
        let d = Digest::of(&body);
        let (t, _) = holding(&d, &body).await;
        for (size, parts) in [
            (
                1000,
                vec![
                    body.slice(..600),
                    [&body[600..], &[0u8][..]].concat().into(),
                ],
            ),
            (1000, vec![body.slice(..999)]),
        ] {
            let parts: Vec<Result<Bytes, BucketError>> = parts.into_iter().map(Ok).collect();
            let checked = Checked {
                tier: t.clone(),
                digest: d.clone(),
                size,
                seen: 0,
                hasher: Some(Sha256::new()),
                body: stream::iter(parts).boxed(),
            };
            let (got, err) = collect(stream::unfold(checked, Checked::next).boxed()).await;
            assert!(matches!(err, Some(BucketError::Size { .. })), "{err:?}");
            assert!(got.len() < 1000);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_given_up() {
        let d = Digest::of(b"x");
        let (t, _) = holding(&d, b"x").await;
        let checked = Checked {
            tier: t.clone(),
            digest: d,
            size: 1,
            seen: 0,
            hasher: Some(Sha256::new()),
            body: stream::pending().boxed(),
        };
        let (got, err) = collect(stream::unfold(checked, Checked::next).boxed()).await;
        assert!(got.is_empty());
        let err = err.unwrap().to_string();
        assert!(err.contains("stalled"), "{err}");
    }
}
