//! What is cached, removing it, and the totals: `berth cache ls|rm|stats` and the admin API; and
//! what the admin API's warm (`POST /admin/warm`) reads and answers.
//!
//! One set of operations ([`Cache`]) over the store and the manifest cache, used two ways: by the
//! admin API of a running berth (`http::admin`, on the metrics listener or `[admin] socket`), so its
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
//! - Artifacts (OCI 1.1): a manifest with an `artifactType`, or with a config that is not an
//!   image's (the empty config `application/vnd.oci.empty.v1+json`, a Helm chart's), is an
//!   artifact, of that type. A tag pointing at one is listed with its type and its `subject`;
//!   the artifacts no tag points at (signatures and SBOMs pulled as referrers by digest, or
//!   listed in a referrers tag schema index `sha256-<hex>`, whose closure reaches them) are listed
//!   apart, each with its type, subject and size. Manifests are stored by digest, not by
//!   repository, so with `--repo` an untagged artifact is shown when it is about a listed image
//!   (its subject, or its subject's subject, is part of one). Learnt from the manifest bytes
//!   the scan reads anyway for the closures: no extra I/O.
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
//! Removal always goes through [`Manifests::remove`](crate::manifests::Manifests::remove) /
//! [`Store::remove`](crate::store::Store::remove), never to the files
//! behind them, so any index they keep stays right. Fills write under `tmp/` and are renamed into
//! place only when complete, so a fill in progress is never removed. A pull racing an `rm` of the
//! same image may have to fetch again; it never gets wrong bytes (every cached file is verified).
//!
//! # The rooms
//! The operations and their presentation are apart: this file holds only [`Op`] and the paths
//! the rest of the crate uses.
//! - `cache`: the operations ([`Cache`]: `ls`, `rm`, `stats` over both tiers);
//! - `inventory`: what an operation reads first, and the closure it decides by;
//! - `reference`: what `ls --repo` and `rm` name ([`CacheRef`]);
//! - `answer`: the answer types, whichever way the command went (their serde shape is the API's);
//! - `render`: the text tables, or JSON;
//! - [`cli`]: `berth cache`, direct or through the admin API (whose HTTP face is `http::admin`);
//! - `warm`: the admin API's warm, its request and its answer ([`WarmRequest`], [`Warmed`]);
//!   `http::warm` runs it through the running berth (a warm is a pull, not a cache operation).
//!
//! Rule of dependency: the operations use `store`, `manifests`, `index`, `oci`, `error`; [`cli`]
//! also `config` and `upstream::connect` (its client's TLS); `warm` uses `warm` (references,
//! platforms, the summary). `http::admin` (the API) and `main`
//! (the command) use `admin`; `admin` uses nothing of `http`, `server` or `mirror`.

pub mod cli;

mod answer;
mod cache;
mod inventory;
mod reference;
mod render;
mod warm;

pub use answer::{Artifact, BucketStats, BucketTotals, Image, Listing, Removal, Removed, Stats};
pub use cache::Cache;
pub use inventory::references;
pub use reference::CacheRef;
pub use render::human_bytes;
pub use warm::{MAX_BODY, MAX_IMAGES, WarmFailure, WarmRequest, Warmed};

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
