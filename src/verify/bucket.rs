//! `berth verify --bucket`: re-hash every blob and manifest in the bucket (`[storage.s3]`) and
//! delete the ones that do not hash to their names, with their origin and access markers.
//!
//! The bucket is never supposed to hold such an object (uploads complete only verified bytes),
//! so one is a sign of a server fault, an operator's mistake or another writer; deleting it is
//! safe because every replica then misses and fetches the content from its upstream again
//! (nothing like the local `quarantine/` exists in a bucket, and keeping a bad object under a
//! digest's key would be the one thing worse). The report names each deleted key and what its
//! content was.
//!
//! It may run while replicas serve the bucket: an object is read (streamed and hashed, never
//! held in memory) and deleted only when it did not match; a replica reading the same object
//! meanwhile verifies it anyway (and deletes it itself). A good upload of the same digest that
//! completes between the read and the delete is deleted too: a miss later, never a wrong byte.
//! Objects are checked one at a time: the pass is bound by the bucket's bandwidth, and it should
//! not take it all from the replicas serving pulls.
//!
//! Rule of dependency: part of `verify`; uses `store::s3` and `oci`.

use std::fmt;

use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};

use crate::oci::Digest;
use crate::store::s3::evict::Kind;
use crate::store::s3::{Bucket, BucketError};

/// Largest manifest read back: the mirror's limit (`manifests::MAX_MANIFEST_BYTES`), so an
/// object the mirror would refuse is reported too.
const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;

/// What a pass over the bucket found and did.
#[derive(Debug, Default)]
pub struct BucketReport {
    /// Blobs and manifests read, and their bytes.
    pub checked: u64,
    pub bytes: u64,
    pub ok: u64,
    /// Objects deleted, with why.
    pub deleted: Vec<Deleted>,
    /// Objects that could not be read or deleted; the pass went on without them.
    pub errors: Vec<(String, String)>,
}

/// One object deleted from the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub key: String,
    pub kind: Kind,
    pub reason: String,
}

impl BucketReport {
    /// 0: all fine; 1: something was deleted; 2: errors.
    pub fn exit_code(&self) -> u8 {
        super::exit_code(!self.errors.is_empty(), !self.deleted.is_empty())
    }
}

impl fmt::Display for BucketReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "bucket objects checked: {}", self.checked)?;
        writeln!(f, "bucket bytes: {}", self.bytes)?;
        writeln!(f, "bucket ok: {}", self.ok)?;
        writeln!(f, "bucket deleted: {}", self.deleted.len())?;
        for d in &self.deleted {
            writeln!(f, "  {} ({}: {})", d.key, d.kind.as_str(), d.reason)?;
        }
        if !self.errors.is_empty() {
            writeln!(f, "bucket errors: {}", self.errors.len())?;
            for (k, e) in &self.errors {
                writeln!(f, "  {k}: {e}")?;
            }
        }
        Ok(())
    }
}

/// Verifies every blob and manifest in `bucket`. `Err` only when the bucket cannot be listed;
/// trouble with single objects lands in [`BucketReport::errors`].
pub async fn run(bucket: &Bucket) -> Result<BucketReport, BucketError> {
    let mut report = BucketReport::default();
    let blobs: Vec<_> = bucket.list_blobs().try_collect().await?;
    let manifests: Vec<_> = bucket.list_manifests().try_collect().await?;
    let upstreams = bucket.origin_upstreams().await?;
    for o in blobs {
        let key = bucket.blob_key(&o.digest).to_string();
        let verdict = match hash_blob(bucket, &o.digest).await {
            Ok(None) => continue, // deleted meanwhile (evicted, or a replica found it bad)
            Ok(Some((actual, size))) => {
                report.bytes += size;
                (actual != o.digest).then(|| format!("content is {actual}"))
            }
            Err(e) => {
                report.errors.push((key, e.to_string()));
                continue;
            }
        };
        report.checked += 1;
        report
            .settle(bucket, Kind::Blob, &o.digest, key, verdict, &upstreams)
            .await;
    }
    for o in manifests {
        let key = bucket.manifest_key(&o.digest).to_string();
        let verdict = match bucket.get_manifest(&o.digest, MANIFEST_LIMIT).await {
            Ok(None) => continue,
            Ok(Some(_)) => None,
            // Not what berth writes: wrong bytes, no media type, too large.
            Err(BucketError::Invalid(why)) => Some(why),
            Err(e) => {
                report.errors.push((key, e.to_string()));
                continue;
            }
        };
        report.checked += 1;
        report.bytes += o.size;
        report
            .settle(bucket, Kind::Manifest, &o.digest, key, verdict, &upstreams)
            .await;
    }
    Ok(report)
}

impl BucketReport {
    /// Counts a good object, or deletes a bad one (`verdict`: why) and records it.
    async fn settle(
        &mut self,
        bucket: &Bucket,
        kind: Kind,
        digest: &Digest,
        key: String,
        verdict: Option<String>,
        upstreams: &[String],
    ) {
        let Some(reason) = verdict else {
            self.ok += 1;
            return;
        };
        match bucket.remove_object(kind, digest, upstreams).await {
            Ok(()) => {
                tracing::warn!(%key, %reason, "deleted an object that does not hash to its name");
                self.deleted.push(Deleted { key, kind, reason });
            }
            Err(e) => self
                .errors
                .push((key, format!("{reason}; deleting it: {e}"))),
        }
    }
}

/// The sha256 and size of a blob object, streamed; `None` when it is gone.
async fn hash_blob(bucket: &Bucket, digest: &Digest) -> Result<Option<(Digest, u64)>, BucketError> {
    let Some(read) = bucket.get_blob(digest, None).await? else {
        return Ok(None);
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = read.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Some((Digest::from_sha256(&hasher.finalize()), size)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use object_store::memory::InMemory;
    use object_store::{Attribute, Attributes, ObjectStoreExt, PutOptions, PutPayload};

    use super::*;
    use crate::store::s3::BucketMetrics;

    fn bucket() -> Bucket {
        Bucket::with_store(Arc::new(InMemory::new()), "mirror", BucketMetrics::new())
    }

    async fn exists(b: &Bucket, key: &object_store::path::Path) -> bool {
        b.object_store().head(key).await.is_ok()
    }

    #[tokio::test]
    async fn bad_objects_are_deleted_with_their_markers_and_reported() {
        let b = bucket();
        let good = Bytes::from_static(b"good layer");
        let gd = Digest::of(&good);
        let s = futures_util::stream::iter([Ok::<_, std::io::Error>(good.clone())]);
        b.put_blob(&gd, Some(good.len() as u64), s).await.unwrap();
        // Wrong bytes put under a blob's key behind berth's back, with a marker.
        let bd = Digest::of(b"what the name says");
        b.object_store()
            .put(&b.blob_key(&bd), PutPayload::from_static(b"something else"))
            .await
            .unwrap();
        b.put_origin("docker.io", &bd).await.unwrap();
        b.put_access(&bd).await.unwrap();
        // A manifest that does not hash to its name, and a good one.
        let md = Digest::of(b"{}");
        let opts = PutOptions {
            attributes: Attributes::from_iter([(Attribute::ContentType, "application/json")]),
            ..PutOptions::default()
        };
        b.object_store()
            .put_opts(&b.manifest_key(&md), PutPayload::from_static(b"{ }"), opts)
            .await
            .unwrap();
        let ok_m = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let ok_md = Digest::of(&ok_m);
        b.put_manifest(&ok_md, "application/json", ok_m)
            .await
            .unwrap();

        let r = run(&b).await.unwrap();
        assert_eq!((r.checked, r.ok), (4, 2));
        assert_eq!(r.exit_code(), 1);
        let keys: Vec<_> = r.deleted.iter().map(|d| d.key.clone()).collect();
        assert_eq!(
            keys,
            vec![b.blob_key(&bd).to_string(), b.manifest_key(&md).to_string()]
        );
        assert_eq!(
            r.deleted[0].reason,
            format!("content is {}", Digest::of(b"something else"))
        );
        assert!(!exists(&b, &b.blob_key(&bd)).await);
        assert!(!exists(&b, &b.origin_key("docker.io", &bd)).await);
        assert!(!exists(&b, &b.access_key(&bd)).await);
        assert!(!exists(&b, &b.manifest_key(&md)).await);
        assert!(exists(&b, &b.blob_key(&gd)).await);
        assert!(exists(&b, &b.manifest_key(&ok_md)).await);
        let text = r.to_string();
        assert!(text.contains("bucket deleted: 2"), "{text}");
        assert!(
            text.contains(&format!("{} (blob: content is", b.blob_key(&bd))),
            "{text}"
        );
        // Clean now.
        let again = run(&b).await.unwrap();
        assert_eq!((again.checked, again.ok, again.exit_code()), (2, 2, 0));
    }

    #[test]
    fn errors_win_the_exit_code() {
        let mut r = BucketReport::default();
        assert_eq!(r.exit_code(), 0);
        r.deleted.push(Deleted {
            key: "k".into(),
            kind: Kind::Blob,
            reason: "r".into(),
        });
        assert_eq!(r.exit_code(), 1);
        r.errors.push(("k".into(), "e".into()));
        assert_eq!(r.exit_code(), 2);
        assert!(r.to_string().contains("bucket errors: 1\n  k: e"));
    }
}
