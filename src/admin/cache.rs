//! The operations: `ls`, `rm` and `stats` over the store, the manifest cache and (with
//! `[storage.s3]`) the bucket, as the module docs of `admin` describe them. Each reads an
//! `Inventory` once and answers with the types of `answer`; it prints nothing.
//!
//! Rule of dependency: uses `answer`, `inventory` and `reference` from `admin`; from the crate
//! `store` (the store, its access index and tmp dir, the bucket), `manifests`, `index` (its key
//! and time helpers), `oci` and `error`. The API and the command call it; it calls neither.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::answer::{Artifact, BucketStats, BucketTotals, Image, Listing, Removal, Removed, Stats};
use super::inventory::{BucketInventory, FileInfo, Inventory, read};
use super::reference::CacheRef;
use crate::error::Error;
use crate::index;
use crate::manifests::{MAX_MANIFEST_BYTES, Manifests, TagRecord};
use crate::oci::Digest;
use crate::store::s3::Bucket;
use crate::store::s3::evict::Kind;
use crate::store::{self, Store};

/// The operations, over one store and its manifest cache.
pub struct Cache<'a> {
    store: &'a Arc<Store>,
    manifests: &'a Manifests,
    root: &'a Path,
    /// The bucket (`[storage.s3]`) and its `max_size`.
    bucket: Option<(&'a Bucket, Option<u64>)>,
}

impl<'a> Cache<'a> {
    /// `root` is the storage directory `store` and `manifests` live in.
    pub fn new(store: &'a Arc<Store>, manifests: &'a Manifests, root: &'a Path) -> Cache<'a> {
        Cache {
            store,
            manifests,
            root,
            bucket: None,
        }
    }

    /// Includes the bucket (`[storage.s3]`, its `max_size`): see the module docs.
    pub fn with_bucket(mut self, bucket: Option<&'a Bucket>, max_size: Option<u64>) -> Cache<'a> {
        self.bucket = bucket.map(|b| (b, max_size));
        self
    }

    /// The bucket's blobs and manifests (none without a bucket).
    async fn scan_bucket(&self) -> Result<Option<BucketInventory>, Error> {
        let Some((bucket, _)) = self.bucket else {
            return Ok(None);
        };
        let share = bucket
            .share(&HashMap::new())
            .await
            .map_err(|e| Error::internal(format!("listing the bucket: {e}")))?;
        let mut inv = BucketInventory::default();
        for e in share {
            let map = match e.kind {
                Kind::Blob => &mut inv.blobs,
                Kind::Manifest => &mut inv.manifests,
            };
            map.insert(e.digest, (e.size, e.last_pull));
        }
        Ok(Some(inv))
    }

    /// Upstream names a reference may start with: the configured ones and those found on disk.
    async fn known_upstreams(&self) -> Result<Vec<String>, Error> {
        let mut names = self.manifests.upstream_names().to_vec();
        names.extend(self.scan_tags().await?.into_iter().map(|t| t.upstream));
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Parses a reference given to `ls --repo` or `rm`.
    pub async fn parse_ref(&self, s: &str, upstream: Option<&str>) -> Result<CacheRef, Error> {
        CacheRef::parse(s, upstream, &self.known_upstreams().await?)
    }

    async fn scan_tags(&self) -> Result<Vec<TagRecord>, Error> {
        self.manifests
            .list_tags()
            .await
            .map_err(|e| Error::io("listing tags", &e))
    }

    /// Reads the blob list, the manifests (and their references) and the tags.
    async fn scan(&self) -> Result<Inventory, Error> {
        let tags = self.scan_tags().await?;
        let types = self
            .manifests
            .list()
            .await
            .map_err(|e| Error::io("listing manifests", &e))?;
        let store = self.store.clone();
        let scanned = tokio::task::spawn_blocking(move || -> io::Result<Inventory> {
            let mut inv = Inventory {
                tags,
                ..Inventory::default()
            };
            // The store's access index has every blob's size and last access already (read
            // from the files when the store was opened, kept up since).
            for (key, size, last) in store.index().snapshot() {
                let mtime = Some(index::time(last));
                inv.blobs
                    .insert(index::digest(&key), FileInfo { size, mtime });
            }
            for (d, _media_type) in types {
                // One read and one parse a manifest: what it references, whether an artifact.
                let seen = match inv.blobs.get(&d) {
                    Some(f) if f.size <= MAX_MANIFEST_BYTES as u64 => {
                        match std::fs::read(store.blob_path(&d)) {
                            Ok(bytes) => read(&bytes),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
                            Err(e) => return Err(e),
                        }
                    }
                    _ => Default::default(),
                };
                if let Some(a) = seen.artifact {
                    inv.artifacts.insert(d.clone(), a);
                }
                inv.manifests.insert(d, seen.references);
            }
            Ok(inv)
        });
        let mut inv = scanned
            .await
            .map_err(|e| Error::internal(format!("scan task: {e}")))?
            .map_err(|e| Error::io("reading the cache", &e))?;
        inv.bucket = self.scan_bucket().await?;
        Ok(inv)
    }

    /// `ls`: every cached tag (or those `filter` names) with its image, then the untagged
    /// artifacts (those about a listed image, with a filter).
    pub async fn list(&self, filter: Option<&CacheRef>) -> Result<Listing, Error> {
        let inv = self.scan().await?;
        let chosen: Vec<&TagRecord> = inv
            .tags
            .iter()
            .filter(|t| filter.is_none_or(|f| f.matches(t)))
            .collect();
        let mut images: Vec<Image> = chosen
            .iter()
            .map(|t| {
                let closure = inv.closure([&t.digest]);
                let m = inv.measure(&closure);
                let in_bucket = inv
                    .bucket
                    .as_ref()
                    .map(|b| closure.iter().filter(|d| b.has(d)).count() as u64);
                let artifact = inv.artifacts.get(&t.digest);
                Image {
                    in_bucket,
                    artifact_type: artifact.map(|a| a.artifact_type.clone()),
                    subject: artifact.and_then(|a| Some(a.subject.as_ref()?.to_string())),
                    upstream: t.upstream.clone(),
                    repo: t.repo.to_string(),
                    tag: t.tag.to_string(),
                    digest: t.digest.to_string(),
                    media_type: t.media_type.clone(),
                    bytes: m.bytes,
                    cached: m.cached,
                    not_cached: m.not_cached,
                    last_pulled: m.newest,
                }
            })
            .collect();
        images.sort_by(|a, b| (&a.upstream, &a.repo, &a.tag).cmp(&(&b.upstream, &b.repo, &b.tag)));
        let tagged = inv.closure(inv.tags.iter().map(|t| &t.digest));
        let artifacts = untagged_artifacts(
            &inv,
            filter.map(|_| inv.closure(chosen.iter().map(|t| &t.digest))),
        );
        let untagged_manifests = inv
            .manifests
            .keys()
            .filter(|d| inv.blobs.contains_key(*d) && !tagged.contains(*d))
            .count() as u64;
        let referenced = inv.closure(inv.manifests.keys());
        let orphans: Vec<_> = inv
            .blobs
            .iter()
            .filter(|(d, _)| !referenced.contains(*d))
            .collect();
        let bucket = inv.bucket.as_ref().map(|b| {
            let all = b.blobs.iter().chain(&b.manifests);
            BucketTotals {
                blobs: b.blobs.len() as u64,
                manifests: b.manifests.len() as u64,
                bytes: all.clone().map(|(_, (n, _))| n).sum(),
                not_local: all.filter(|(d, _)| !inv.blobs.contains_key(*d)).count() as u64,
            }
        });
        Ok(Listing {
            images,
            artifacts,
            untagged_manifests,
            orphan_blobs: orphans.len() as u64,
            orphan_bytes: orphans.iter().map(|(_, f)| f.size).sum(),
            bucket,
        })
    }

    /// `rm`: see the module docs. `shown` is the reference as the operator wrote it (for errors).
    pub async fn remove(&self, r: &CacheRef, shown: &str) -> Result<Removal, Error> {
        let inv = self.scan().await?;
        let mut out = Removal {
            tags: Vec::new(),
            removed: Vec::new(),
            bytes: 0,
        };
        // Tag records in the bucket that `r` names: (upstream, repo, tag).
        let bucket_tags = match (self.bucket, r) {
            (Some((bucket, _)), CacheRef::Repo { .. }) => bucket
                .list_tags()
                .await
                .map_err(|e| Error::internal(format!("listing the bucket's tags: {e}")))?
                .into_iter()
                .filter(|(u, repo, tag)| match (repo.parse(), tag.parse()) {
                    (Ok(repo), Ok(tag)) => r.matches_names(u, &repo, &tag),
                    _ => false,
                })
                .collect(),
            _ => Vec::new(),
        };
        let in_bucket = |d: &Digest| inv.bucket.as_ref().is_some_and(|b| b.has(d));
        // What goes: local manifests, local blobs, and every digest to remove from the bucket.
        let (doomed_manifests, doomed_blobs, mut bucket_doomed) = match r {
            CacheRef::Digest(d) if inv.manifests.contains_key(d) => {
                (vec![d.clone()], vec![], vec![d.clone()])
            }
            CacheRef::Digest(d) if inv.blobs.contains_key(d) || in_bucket(d) => {
                let local = inv.blobs.contains_key(d).then(|| d.clone());
                (vec![], local.into_iter().collect(), vec![d.clone()])
            }
            CacheRef::Digest(_) => return Err(r.unknown(shown)),
            CacheRef::Repo { .. } => {
                let (chosen, rest): (Vec<&TagRecord>, Vec<&TagRecord>) =
                    inv.tags.iter().partition(|t| r.matches(t));
                if chosen.is_empty() && bucket_tags.is_empty() {
                    return Err(r.unknown(shown));
                }
                let candidates = inv.closure(chosen.iter().map(|t| &t.digest));
                let mut manifests: HashSet<Digest> = candidates
                    .iter()
                    .filter(|d| inv.manifests.contains_key(*d))
                    .cloned()
                    .collect();
                // A manifest stays when anything that stays reaches it; keeping one keeps what
                // it references, so repeat until nothing changes.
                let keep = loop {
                    let staying = inv
                        .manifests
                        .keys()
                        .filter(|d| !manifests.contains(*d))
                        .chain(rest.iter().map(|t| &t.digest));
                    let keep = inv.closure(staying);
                    let before = manifests.len();
                    manifests.retain(|d| !keep.contains(d));
                    if manifests.len() == before {
                        break keep;
                    }
                };
                for t in &chosen {
                    self.manifests
                        .forget_tag_named(&t.upstream, &t.repo, &t.tag)
                        .await
                        .map_err(|e| Error::io("removing a tag", &e))?;
                    out.tags
                        .push(format!("{}/{}:{}", t.upstream, t.repo, t.tag));
                }
                let bucket_doomed = candidates
                    .iter()
                    .filter(|d| !keep.contains(*d) && in_bucket(d))
                    .cloned()
                    .collect();
                let blobs = candidates
                    .into_iter()
                    .filter(|d| {
                        inv.blobs.contains_key(d) && !keep.contains(d) && !manifests.contains(d)
                    })
                    .collect();
                (manifests.into_iter().collect(), blobs, bucket_doomed)
            }
        };
        // Where each removed digest was: (kind, bytes, local, bucket).
        let mut gone: HashMap<Digest, (&str, u64, bool, bool)> = HashMap::new();
        for d in doomed_manifests {
            if self.manifests.remove(&d).await? {
                let bytes = inv.blobs.get(&d).map_or(0, |f| f.size);
                gone.insert(d, ("manifest", bytes, true, false));
            }
        }
        for d in doomed_blobs {
            let removed = self
                .store
                .remove(&d)
                .await
                .map_err(|e| Error::io("removing a blob", &e))?;
            if removed {
                gone.insert(d.clone(), ("blob", inv.blobs[&d].size, true, false));
            }
        }
        if let (Some((bucket, _)), Some(b)) = (self.bucket, &inv.bucket) {
            let failed = |e: crate::store::s3::BucketError| {
                Error::internal(format!("removing from the bucket: {e}"))
            };
            for (upstream, repo, tag) in &bucket_tags {
                // A tag only the bucket knows: its manifest goes with it.
                let named = format!("{upstream}/{repo}:{tag}");
                if !out.tags.contains(&named) {
                    if let Ok(Some(rec)) = bucket.get_tag(upstream, repo, tag).await
                        && let Ok(d) = rec.digest.parse::<Digest>()
                        && b.has(&d)
                    {
                        bucket_doomed.push(d);
                    }
                    out.tags.push(named);
                }
                bucket
                    .delete_tag(upstream, repo, tag)
                    .await
                    .map_err(failed)?;
            }
            let upstreams = bucket.origin_upstreams().await.map_err(failed)?;
            bucket_doomed.sort();
            bucket_doomed.dedup();
            for d in bucket_doomed {
                for (kind, map, name) in [
                    (Kind::Manifest, &b.manifests, "manifest"),
                    (Kind::Blob, &b.blobs, "blob"),
                ] {
                    let Some((size, _)) = map.get(&d) else {
                        continue;
                    };
                    bucket
                        .remove_object(kind, &d, &upstreams)
                        .await
                        .map_err(failed)?;
                    let e = gone.entry(d.clone()).or_insert((name, *size, false, false));
                    e.3 = true;
                }
            }
        }
        for (d, (kind, bytes, local, in_bucket)) in gone {
            let location = self.bucket.map(|_| {
                match (local, in_bucket) {
                    (true, true) => "local+bucket",
                    (false, true) => "bucket",
                    _ => "local",
                }
                .to_owned()
            });
            out.bytes += bytes;
            out.removed.push(Removed {
                digest: d.to_string(),
                kind: kind.to_owned(),
                bytes,
                location,
            });
        }
        out.removed
            .sort_by(|a, b| (&a.kind, &a.digest).cmp(&(&b.kind, &b.digest)));
        Ok(out)
    }

    /// `stats`. `max_size` is the configured cache size limit, if any.
    pub async fn stats(&self, max_size: Option<u64>) -> Result<Stats, Error> {
        let tags = self.scan_tags().await?.len() as u64;
        let types = self
            .manifests
            .list()
            .await
            .map_err(|e| Error::io("listing manifests", &e))?;
        let store = self.store.clone();
        let root = self.root.to_owned();
        let stats = tokio::task::spawn_blocking(move || -> io::Result<Stats> {
            // Sizes and last accesses from the store's access index, not another scan.
            let blobs: Vec<(Digest, u64, SystemTime)> = store
                .index()
                .snapshot()
                .into_iter()
                .map(|(k, size, last)| (index::digest(&k), size, index::time(last)))
                .collect();
            let present: HashSet<&Digest> = blobs.iter().map(|(d, _, _)| d).collect();
            let mut s = Stats {
                root: root.display().to_string(),
                blobs: blobs.len() as u64,
                bytes: blobs.iter().map(|(_, n, _)| n).sum(),
                manifests: types.iter().filter(|(d, _)| present.contains(d)).count() as u64,
                tags,
                tmp_files: 0,
                tmp_bytes: 0,
                quarantined: 0,
                oldest_access: None,
                newest_access: None,
                max_size,
                bucket: None,
            };
            for &(_, _, t) in &blobs {
                s.oldest_access = Some(s.oldest_access.map_or(t, |o| o.min(t)));
                s.newest_access = Some(s.newest_access.map_or(t, |n| n.max(t)));
            }
            for f in files_in(&store::tmp_dir(&root))? {
                s.tmp_files += 1;
                s.tmp_bytes += f;
            }
            s.quarantined = files_in(&root.join("quarantine"))?.len() as u64;
            Ok(s)
        });
        let mut stats = stats
            .await
            .map_err(|e| Error::internal(format!("stats task: {e}")))?
            .map_err(|e| Error::io("reading the cache", &e))?;
        if let (Some((bucket, max_size)), Some(inv)) = (self.bucket, self.scan_bucket().await?) {
            let tags = bucket
                .list_tags()
                .await
                .map_err(|e| Error::internal(format!("listing the bucket's tags: {e}")))?;
            let all = || inv.blobs.values().chain(inv.manifests.values());
            stats.bucket = Some(BucketStats {
                blobs: inv.blobs.len() as u64,
                manifests: inv.manifests.len() as u64,
                bytes: all().map(|(n, _)| n).sum(),
                tags: tags.len() as u64,
                oldest_pull: all().map(|(_, t)| *t).min(),
                newest_pull: all().map(|(_, t)| *t).max(),
                max_size,
            });
        }
        Ok(stats)
    }
}

/// Subjects followed from an artifact towards a listed image (a signature of an SBOM of an image
/// is two); a longer or looping chain is not about one.
const SUBJECT_CHAIN: usize = 8;

/// The cached artifacts no tag points at, by subject then type; with `listed` (the closure of the
/// images a filter chose), only those whose subject, or subject's subject, is in it.
///
/// "Points at", not "reaches": a referrers list kept under the referrers tag schema's
/// `sha256-<hex>` tag (an upstream without the referrers API) is an index whose entries are the
/// referrers, so every such signature is reached by a tag; they are listed here all the same.
fn untagged_artifacts(inv: &Inventory, listed: Option<HashSet<Digest>>) -> Vec<Artifact> {
    let pointed: HashSet<&Digest> = inv.tags.iter().map(|t| &t.digest).collect();
    let about_listed = |d: &Digest| {
        let Some(listed) = &listed else {
            return true;
        };
        let mut at = d;
        for _ in 0..SUBJECT_CHAIN {
            match inv.artifacts.get(at).and_then(|a| a.subject.as_ref()) {
                Some(s) if listed.contains(s) => return true,
                Some(s) => at = s,
                None => return false,
            }
        }
        false
    };
    let mut out: Vec<Artifact> = inv
        .artifacts
        .iter()
        .filter(|(d, _)| inv.blobs.contains_key(*d) && !pointed.contains(d) && about_listed(d))
        .map(|(d, a)| {
            let m = inv.measure(&inv.closure([d]));
            Artifact {
                digest: d.to_string(),
                artifact_type: a.artifact_type.clone(),
                subject: a.subject.as_ref().map(ToString::to_string),
                bytes: m.bytes,
                cached: m.cached,
                not_cached: m.not_cached,
                last_pulled: m.newest,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.subject, &a.artifact_type, &a.digest).cmp(&(&b.subject, &b.artifact_type, &b.digest))
    });
    out
}

/// The sizes of the regular files in `dir` (none when it does not exist).
fn files_in(dir: &Path) -> io::Result<Vec<u64>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry?;
        match entry.metadata() {
            Ok(m) if m.is_file() => out.push(m.len()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // a fill committed meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::inventory::ArtifactInfo;
    use super::*;

    #[test]
    fn untagged_artifacts_follow_subjects_a_bounded_way() {
        let d = |s: &str| Digest::of(s.as_bytes());
        let mut inv = Inventory::default();
        let file = FileInfo {
            size: 1,
            mtime: None,
        };
        let artifact = |subject: &str| ArtifactInfo {
            artifact_type: "a/b".into(),
            subject: Some(d(subject)),
        };
        // sig -> sbom -> image; two artifacts that name each other; one whose file is gone.
        for (name, subject) in [("sig", "sbom"), ("sbom", "image"), ("x", "y"), ("y", "x")] {
            inv.blobs.insert(d(name), file);
            inv.manifests.insert(d(name), vec![]);
            inv.artifacts.insert(d(name), artifact(subject));
        }
        inv.manifests.insert(d("gone"), vec![]);
        inv.artifacts.insert(d("gone"), artifact("image"));
        let names = |list: Vec<Artifact>| {
            let mut n: Vec<String> = list.into_iter().map(|a| a.digest).collect();
            n.sort();
            n
        };
        let want = |names: &[&str]| {
            let mut n: Vec<String> = names.iter().map(|s| d(s).to_string()).collect();
            n.sort();
            n
        };
        assert_eq!(
            names(untagged_artifacts(&inv, None)),
            want(&["sig", "sbom", "x", "y"])
        );
        // About the image: the SBOM and, through it, its signature; the loop ends.
        let listed: HashSet<Digest> = [d("image")].into();
        assert_eq!(
            names(untagged_artifacts(&inv, Some(listed))),
            want(&["sig", "sbom"])
        );
    }
}
