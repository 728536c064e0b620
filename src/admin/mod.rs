//! What is cached, removing it, and the totals: `berth cache ls|rm|stats` and the admin API.
//!
//! One set of operations ([`Cache`]) over the store and the manifest cache, used two ways: by the
//! admin API of a running berth ([`api`], on the metrics listener or `[admin] socket`), so its
//! in-memory manifests and tags stay in step with the disk, and by the `berth cache` command on the storage directory
//! directly ([`cli`]) when no API is configured. Both answer with the same types, so the command
//! prints the same whichever way it went.
//!
//! # Semantics
//! - An *image* is what a tag points at: its manifest, and everything the manifest references
//!   (an image manifest: config and layers; an index: its child manifests and theirs), counted once.
//!   `ls` shows per upstream/repository/tag the digest, media type, the bytes of that closure that
//!   are cached, how many cached files it has and how many referenced ones are not cached (other
//!   platforms of an index, layers never pulled), and when it was last pulled: the newest mtime of
//!   its cached files (berth sets a blob file's mtime to its last access). Below that: cached
//!   manifests no tag reaches (pulled by digest, or left behind when a tag moved) and orphan blobs
//!   (no cached manifest references them).
//! - `rm <[upstream/]repo:tag>` forgets the tag and removes the manifests of its closure and the
//!   blobs they reference, except what another remaining tag or cached manifest still reaches (a
//!   layer shared with another image stays). `rm <[upstream/]repo>` does so for every tag of the
//!   repository. Without an upstream (a first component naming one, or `--upstream`), every
//!   upstream's tags match; a one-component name also matches `library/<name>` (Docker Hub).
//!   `rm sha256:<hex>` removes that one manifest or blob, whatever references it (a tag pointing at
//!   a removed manifest is fetched again on its next pull). Nothing matching is a 404.
//! - `stats`: files, bytes, manifests, tags; temp files and bytes of fills in progress (or left by
//!   a crash); quarantined files; oldest and newest access.
//!
//! # With the bucket (`[storage.s3]`)
//! - `ls`: each image also says how many of its files are in the bucket (`IN BUCKET`), and a
//!   `bucket:` line gives the bucket's blobs, manifests and bytes, and how many of its objects
//!   this disk does not hold. Images are still those whose tags this berth resolved; a tag only
//!   another replica resolved is not listed (its record holds no sizes, and reading every
//!   manifest of a shared bucket for an `ls` would cost too much).
//! - `rm` removes from both tiers: the tag records, and each manifest and blob of the removal
//!   from the bucket too, with their origin and access markers (`LOCATION` says where each
//!   was). A tag known only to the bucket is removed with its manifest. What stays is decided
//!   from what this berth knows: a layer that only another replica's image shares may go from
//!   the bucket; that replica fetches it again (a miss, never a wrong byte).
//!   `rm sha256:<hex>` removes the object from the bucket even when the disk lacks it.
//! - `stats`: a `bucket` section: blobs, manifests, bytes, tag records, oldest and newest pull,
//!   the bucket's `max_size`.
//!
//! Removal always goes through [`Manifests::remove`] / [`Store::remove`], never to the files
//! behind them, so any index they keep stays right. Fills write under `tmp/` and are renamed into
//! place only when complete, so a fill in progress is never removed. A pull racing an `rm` of the
//! same image may have to fetch again; it never gets wrong bytes (every cached file is verified).
//!
//! Rule of dependency: uses `store`, `manifests`, `oci`, `error` ([`api`] also `http` for the one
//! error body and `mirror` to reach the running cache).

pub mod api;
pub mod cli;

/// One operator request, from the command line or the API (parsed there before anything is done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    List {
        repo: Option<String>,
        upstream: Option<String>,
    },
    Remove {
        reference: String,
        upstream: Option<String>,
    },
    Stats,
}

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::index;
use crate::manifests::{MAX_MANIFEST_BYTES, Manifests, TagRecord};
use crate::oci::{Digest, RepoName, Tag};
use crate::store::s3::Bucket;
use crate::store::s3::evict::Kind;
use crate::store::{self, Store};

/// What `ls --repo` or `rm` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheRef {
    /// One cached blob or manifest.
    Digest(Digest),
    /// A tag, or (no tag) every tag of a repository; in one upstream, or (`None`) in every one.
    Repo {
        upstream: Option<String>,
        repo: RepoName,
        tag: Option<Tag>,
    },
}

impl CacheRef {
    /// Parses `sha256:<hex>` or `[upstream/]repo[:tag]`. The first component is an upstream when
    /// it is one of `upstreams` (lowercase names); `upstream` (a `--upstream` flag) qualifies too,
    /// and must agree.
    pub fn parse(s: &str, upstream: Option<&str>, upstreams: &[String]) -> Result<CacheRef, Error> {
        if s.starts_with("sha256:") {
            return s.parse().map(CacheRef::Digest);
        }
        let flag = upstream.map(str::to_ascii_lowercase);
        let (named, path) = match s.split_once('/') {
            Some((first, rest)) if upstreams.contains(&first.to_ascii_lowercase()) => {
                (Some(first.to_ascii_lowercase()), rest)
            }
            _ => (None, s),
        };
        let upstream = match (named, flag) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::bad_request(format!(
                    "{s:?} names upstream {a}, --upstream says {b}"
                )));
            }
            (a, b) => a.or(b),
        };
        let (repo, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.parse::<Tag>()?)),
            _ => (path, None),
        };
        Ok(CacheRef::Repo {
            upstream,
            repo: repo.parse()?,
            tag,
        })
    }

    /// Whether a tag on disk is one this names.
    fn matches(&self, t: &TagRecord) -> bool {
        self.matches_names(&t.upstream, &t.repo, &t.tag)
    }

    /// Whether `upstream`'s `repo:tag` is one this names.
    fn matches_names(&self, t_upstream: &str, t_repo: &RepoName, t_tag: &Tag) -> bool {
        let CacheRef::Repo {
            upstream,
            repo,
            tag,
        } = self
        else {
            return false;
        };
        upstream.as_ref().is_none_or(|u| u == t_upstream)
            && (t_repo == repo
                || (repo.components() == 1
                    && t_repo.as_str().strip_prefix("library/") == Some(repo.as_str())))
            && tag.as_ref().is_none_or(|tag| tag == t_tag)
    }

    /// The 404 for a reference that matched nothing.
    fn unknown(&self, shown: &str) -> Error {
        match self {
            CacheRef::Digest(_) => Error::blob_unknown(format!("{shown} is not cached")),
            CacheRef::Repo { tag: Some(_), .. } => {
                Error::manifest_unknown(format!("no cached tag matches {shown}"))
            }
            CacheRef::Repo { tag: None, .. } => {
                Error::name_unknown(format!("no cached repository matches {shown}"))
            }
        }
    }
}

/// `ls`: the cached images and what no tag reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    pub images: Vec<Image>,
    /// Cached manifests no tag reaches (whatever `--repo` says: they belong to no repository).
    pub untagged_manifests: u64,
    /// Cached blobs that are not manifests and that no cached manifest references.
    pub orphan_blobs: u64,
    pub orphan_bytes: u64,
    /// The bucket's totals, with `[storage.s3]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketTotals>,
}

/// What the bucket holds (`ls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketTotals {
    pub blobs: u64,
    pub manifests: u64,
    pub bytes: u64,
    /// Objects of the bucket that this disk does not hold.
    pub not_local: u64,
}

/// One tag and the image it points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// Bytes of the cached files of the image (manifests, configs, layers; each counted once).
    pub bytes: u64,
    /// How many of its files are cached.
    pub cached: u64,
    /// How many files it references that are not cached (other platforms, layers never pulled).
    pub not_cached: u64,
    /// The newest mtime (last access) among its cached files.
    #[serde(with = "rfc3339")]
    pub last_pulled: Option<SystemTime>,
    /// How many of its files (known from the cached manifests) the bucket holds, with
    /// `[storage.s3]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_bucket: Option<u64>,
}

/// `rm`: what went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// Tags forgotten, as `upstream/repo:tag`.
    pub tags: Vec<String>,
    /// Files removed.
    pub removed: Vec<Removed>,
    /// Bytes of the files removed.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub digest: String,
    /// `manifest` or `blob`.
    pub kind: String,
    pub bytes: u64,
    /// With `[storage.s3]`: where it was removed from (`local`, `bucket`, `local+bucket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// `stats`: the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The storage directory.
    pub root: String,
    /// Files under `blobs/sha256/` (layers, configs and manifest bytes).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Cached manifests (of the blobs).
    pub manifests: u64,
    /// Tag answers on disk.
    pub tags: u64,
    /// Temp files of fills in progress (or left by a crash) and their bytes.
    pub tmp_files: u64,
    pub tmp_bytes: u64,
    /// Files `berth verify` moved to `quarantine/`.
    pub quarantined: u64,
    #[serde(with = "rfc3339")]
    pub oldest_access: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    pub newest_access: Option<SystemTime>,
    /// The configured cache size limit, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// The bucket, with `[storage.s3]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketStats>,
}

/// `stats` of the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketStats {
    pub blobs: u64,
    pub manifests: u64,
    /// Bytes of its blobs and manifests.
    pub bytes: u64,
    /// Tag records.
    pub tags: u64,
    /// The oldest and newest last pull (access markers, else upload time).
    #[serde(with = "rfc3339")]
    pub oldest_pull: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    pub newest_pull: Option<SystemTime>,
    /// `[storage.s3] max_size`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
}

/// The operations, over one store and its manifest cache.
pub struct Cache<'a> {
    store: &'a Arc<Store>,
    manifests: &'a Manifests,
    root: &'a Path,
    /// The bucket (`[storage.s3]`) and its `max_size`.
    bucket: Option<(&'a Bucket, Option<u64>)>,
}

/// A cached file.
#[derive(Debug, Clone, Copy)]
struct FileInfo {
    size: u64,
    mtime: Option<SystemTime>,
}

/// Everything on disk, read once per operation.
#[derive(Debug, Default)]
struct Inventory {
    blobs: HashMap<Digest, FileInfo>,
    /// Manifests with a recorded media type (their bytes may be missing), and what they reference.
    manifests: HashMap<Digest, Vec<Digest>>,
    tags: Vec<TagRecord>,
    /// What the bucket holds, with `[storage.s3]`.
    bucket: Option<BucketInventory>,
}

/// The bucket's objects: size and last pull of each blob and manifest.
#[derive(Debug, Default)]
struct BucketInventory {
    blobs: HashMap<Digest, (u64, SystemTime)>,
    manifests: HashMap<Digest, (u64, SystemTime)>,
}

impl BucketInventory {
    fn has(&self, d: &Digest) -> bool {
        self.blobs.contains_key(d) || self.manifests.contains_key(d)
    }
}

/// Totals over a set of digests.
#[derive(Debug, Default)]
struct Measure {
    cached: u64,
    bytes: u64,
    not_cached: u64,
    newest: Option<SystemTime>,
}

impl Inventory {
    /// `roots` and everything they reference, transitively through cached manifests.
    fn closure<'d>(&self, roots: impl IntoIterator<Item = &'d Digest>) -> HashSet<Digest> {
        let mut seen = HashSet::new();
        let mut todo: Vec<Digest> = roots.into_iter().cloned().collect();
        while let Some(d) = todo.pop() {
            if let Some(refs) = self.manifests.get(&d) {
                todo.extend(refs.iter().filter(|r| !seen.contains(*r)).cloned());
            }
            seen.insert(d);
        }
        seen
    }

    fn measure(&self, set: &HashSet<Digest>) -> Measure {
        let mut m = Measure::default();
        for d in set {
            match self.blobs.get(d) {
                Some(f) => {
                    m.cached += 1;
                    m.bytes += f.size;
                    m.newest = m.newest.max(f.mtime);
                }
                None => m.not_cached += 1,
            }
        }
        m
    }
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
                let refs = match inv.blobs.get(&d) {
                    Some(f) if f.size <= MAX_MANIFEST_BYTES as u64 => {
                        match std::fs::read(store.blob_path(&d)) {
                            Ok(bytes) => references(&bytes),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                            Err(e) => return Err(e),
                        }
                    }
                    _ => Vec::new(),
                };
                inv.manifests.insert(d, refs);
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

    /// `ls`: every cached tag (or those `filter` names) with its image.
    pub async fn list(&self, filter: Option<&CacheRef>) -> Result<Listing, Error> {
        let inv = self.scan().await?;
        let mut images: Vec<Image> = inv
            .tags
            .iter()
            .filter(|t| filter.is_none_or(|f| f.matches(t)))
            .map(|t| {
                let closure = inv.closure([&t.digest]);
                let m = inv.measure(&closure);
                let in_bucket = inv
                    .bucket
                    .as_ref()
                    .map(|b| closure.iter().filter(|d| b.has(d)).count() as u64);
                Image {
                    in_bucket,
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

/// The digests a manifest references: config, layers, child manifests (an index), `blobs`
/// (artifacts), `fsLayers` (schema 1). `subject` is not followed: the subject is another image,
/// not part of this one. Anything that does not parse references nothing.
pub fn references(bytes: &[u8]) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let digest = |x: &serde_json::Value, key: &str| x.get(key)?.as_str()?.parse::<Digest>().ok();
    let mut out: Vec<Digest> = v
        .get("config")
        .and_then(|c| digest(c, "digest"))
        .into_iter()
        .collect();
    for key in ["layers", "manifests", "blobs"] {
        if let Some(list) = v.get(key).and_then(|l| l.as_array()) {
            out.extend(list.iter().filter_map(|x| digest(x, "digest")));
        }
    }
    if let Some(list) = v.get("fsLayers").and_then(|l| l.as_array()) {
        out.extend(list.iter().filter_map(|x| digest(x, "blobSum")));
    }
    out
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn time(t: Option<SystemTime>) -> String {
    t.map_or("-".into(), |t| {
        humantime::format_rfc3339_seconds(t).to_string()
    })
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_bucket = self.bucket.is_some();
        let mut header = vec![
            "UPSTREAM",
            "REPOSITORY",
            "TAG",
            "DIGEST",
            "SIZE",
            "FILES",
            "LAST PULLED",
        ];
        if with_bucket {
            header.insert(6, "IN BUCKET");
        }
        let rows: Vec<Vec<String>> = self
            .images
            .iter()
            .map(|i| {
                let short = i.digest.strip_prefix("sha256:").unwrap_or(&i.digest);
                let mut row = vec![
                    i.upstream.clone(),
                    i.repo.clone(),
                    i.tag.clone(),
                    format!("sha256:{}", &short[..short.len().min(12)]),
                    human_bytes(i.bytes),
                    match i.not_cached {
                        0 => i.cached.to_string(),
                        n => format!("{} (+{n} not cached)", i.cached),
                    },
                    time(i.last_pulled),
                ];
                if with_bucket {
                    row.insert(6, i.in_bucket.unwrap_or(0).to_string());
                }
                row
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  ", w = *w));
                }
            }
            writeln!(f, "{}", s.trim_end())
        };
        line(f, &header)?;
        for r in &rows {
            line(f, &r.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        writeln!(
            f,
            "untagged manifests: {}; orphan blobs: {} ({})",
            self.untagged_manifests,
            self.orphan_blobs,
            human_bytes(self.orphan_bytes)
        )?;
        if let Some(b) = &self.bucket {
            writeln!(
                f,
                "bucket: {} blobs, {} manifests ({}); {} not on this disk",
                b.blobs,
                b.manifests,
                human_bytes(b.bytes),
                b.not_local
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tags {
            writeln!(f, "tag       {t}")?;
        }
        for r in &self.removed {
            match &r.location {
                None => writeln!(f, "{:<8}  {}  {}", r.kind, r.digest, human_bytes(r.bytes))?,
                Some(at) => writeln!(
                    f,
                    "{:<8}  {}  {:<10}  {at}",
                    r.kind,
                    r.digest,
                    human_bytes(r.bytes)
                )?,
            }
        }
        let manifests = self.removed.iter().filter(|r| r.kind == "manifest").count();
        writeln!(
            f,
            "removed {} tags, {manifests} manifests, {} blobs: {} entries, {}",
            self.tags.len(),
            self.removed.len() - manifests,
            self.tags.len() + self.removed.len(),
            human_bytes(self.bytes)
        )
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "storage:        {}", self.root)?;
        writeln!(
            f,
            "blobs:          {} ({})",
            self.blobs,
            human_bytes(self.bytes)
        )?;
        if let Some(max) = self.max_size {
            writeln!(f, "max size:       {}", human_bytes(max))?;
        }
        writeln!(f, "manifests:      {}", self.manifests)?;
        writeln!(f, "tags:           {}", self.tags)?;
        writeln!(
            f,
            "temp files:     {} ({})",
            self.tmp_files,
            human_bytes(self.tmp_bytes)
        )?;
        writeln!(f, "quarantined:    {}", self.quarantined)?;
        writeln!(f, "oldest access:  {}", time(self.oldest_access))?;
        writeln!(f, "newest access:  {}", time(self.newest_access))?;
        if let Some(b) = &self.bucket {
            writeln!(
                f,
                "bucket:         {} blobs, {} manifests ({})",
                b.blobs,
                b.manifests,
                human_bytes(b.bytes)
            )?;
            if let Some(max) = b.max_size {
                writeln!(f, "bucket max size: {}", human_bytes(max))?;
            }
            writeln!(f, "bucket tags:    {}", b.tags)?;
            writeln!(f, "bucket oldest pull: {}", time(b.oldest_pull))?;
            writeln!(f, "bucket newest pull: {}", time(b.newest_pull))?;
        }
        Ok(())
    }
}

/// Optional times as RFC 3339 strings (`null` when absent).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["docker.io".into(), "registry.test:5000".into()]
    }

    #[test]
    fn refs_parse_with_and_without_upstream() {
        let hex = "a".repeat(64);
        assert_eq!(
            CacheRef::parse(&format!("sha256:{hex}"), None, &names()).unwrap(),
            CacheRef::Digest(format!("sha256:{hex}").parse().unwrap())
        );
        let repo = |u: Option<&str>, r: &str, t: Option<&str>| CacheRef::Repo {
            upstream: u.map(str::to_owned),
            repo: r.parse().unwrap(),
            tag: t.map(|t| t.parse().unwrap()),
        };
        let cases = [
            ("library/app:1", None, repo(None, "library/app", Some("1"))),
            ("app", None, repo(None, "app", None)),
            (
                "Docker.io/library/app:1",
                None,
                repo(Some("docker.io"), "library/app", Some("1")),
            ),
            (
                "registry.test:5000/a/b",
                None,
                repo(Some("registry.test:5000"), "a/b", None),
            ),
            // Not a configured upstream: an ordinary first component.
            ("quay.io/a:v", None, repo(None, "quay.io/a", Some("v"))),
            (
                "a:v",
                Some("docker.io"),
                repo(Some("docker.io"), "a", Some("v")),
            ),
            (
                "docker.io/a",
                Some("DOCKER.IO"),
                repo(Some("docker.io"), "a", None),
            ),
        ];
        for (s, flag, want) in cases {
            assert_eq!(CacheRef::parse(s, flag, &names()).unwrap(), want, "{s}");
        }
        for bad in ["Bad/Name", "a:-x", "sha256:zz", "a@sha256:00", ""] {
            assert!(CacheRef::parse(bad, None, &names()).is_err(), "{bad}");
        }
        let e = CacheRef::parse("docker.io/a", Some("registry.test:5000"), &names()).unwrap_err();
        assert!(matches!(e.kind, crate::error::Kind::Invalid(_)), "{e}");
    }

    #[test]
    fn one_component_names_match_library() {
        let r = CacheRef::parse("app", None, &names()).unwrap();
        let rec = |repo: &str| TagRecord {
            upstream: "docker.io".into(),
            repo: repo.parse().unwrap(),
            tag: "1".parse().unwrap(),
            digest: Digest::of(b"x"),
            media_type: "m".into(),
        };
        assert!(r.matches(&rec("app")) && r.matches(&rec("library/app")));
        assert!(!r.matches(&rec("team/app")) && !r.matches(&rec("library/app2")));
    }

    #[test]
    fn references_of_images_and_indexes() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let image = format!(
            r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"bad"}}],"subject":{{"digest":"{c}"}}}}"#
        );
        assert_eq!(references(image.as_bytes()), vec![a.clone(), b.clone()]);
        let index = format!(r#"{{"manifests":[{{"digest":"{c}"}}]}}"#);
        assert_eq!(references(index.as_bytes()), vec![c]);
        let v1 = format!(r#"{{"fsLayers":[{{"blobSum":"{a}"}}]}}"#);
        assert_eq!(references(v1.as_bytes()), vec![a]);
        assert!(references(b"not json").is_empty());
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn answers_round_trip_through_json() {
        let s = Stats {
            root: "/x".into(),
            blobs: 1,
            bytes: 2,
            manifests: 3,
            tags: 4,
            tmp_files: 5,
            tmp_bytes: 6,
            quarantined: 7,
            oldest_access: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)),
            newest_access: None,
            max_size: None,
            bucket: None,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"oldest_access\":\"1970-01-01T00:00:01Z\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), s);
    }
}
