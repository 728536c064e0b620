//! `berth warm`: pull images through a running berth before they are needed, so that a rollout
//! finds every platform's manifests and layers already cached.
//!
//! warm is a client of berth's registry API, not of its store: it asks what a pulling client asks
//! (the manifest by tag, each platform's manifest by digest, the config and the layers), so it
//! leaves behind exactly what a pull needs, works against a berth on another host, and needs no
//! access to the cache directory. berth verifies every digest itself; warm checks what is cheap
//! (sizes against the descriptors, `Docker-Content-Digest`, manifest digests) and does not hash
//! layers a second time.
//!
//! A run has two phases: resolve every reference to its manifests (at most `jobs` requests at a
//! time), then fetch the union of their blobs, each digest once, `jobs` at a time. Knowing every
//! blob before the first transfer gives the progress display real totals and makes blobs shared
//! between images a set lookup rather than a coordination problem; the price is that the first
//! layer waits for the last manifest, which is small next to the layers.
//!
//! With `--referrers` ([`Warmer::with_referrers`]), phase 1 also lists the referrers (OCI 1.1) of
//! every manifest an image takes, and theirs, one level, through berth (which caches the lists
//! for offline use), and walks them like the image: their manifests and blobs are the image's
//! too, and a referrer that fails fails the image. They are phase 1's, like the platform
//! manifests: the first layer also waits for the lists and the referrers' manifests, which are
//! small, and in exchange their blobs join the run's totals and its each-digest-once set.
//!
//! This file is the run, which ties its parts together:
//! - `reference`: image references as people write them, and berth's paths for them;
//! - `client`: the client to a running berth (`--server` or the config's address, or this
//!   process's own registry service for the admin API);
//! - `transport`: how its requests go: over the network, or in process ([`Local`]);
//! - `manifest`: the manifest walk (every platform, or those asked for) to the blobs;
//! - `referrers`: an image's referrers and theirs, added to its walk;
//! - `progress`: the live bar or plain lines, and the summary;
//! - `failure`: why an image was not warmed.
//!
//! Rule of dependency: the top of the house, beside `main`: it talks to berth over HTTP, never
//! to its store or its mirror. From the crate it uses `oci` (names, digests, media types),
//! `config` (the server's own address, `Secret`), `upstream::connect` (the TLS connector berth
//! uses for its upstreams), `access` (the Basic header) and `error` (reasons, `chain`). In the
//! server, only the admin API uses it (`admin` to read a warm's request and answer it,
//! `http::warm` to run one through [`Local`]), never the reverse; `main` and the tests use what
//! this file re-exports.

mod client;
mod failure;
mod manifest;
mod progress;
mod reference;
mod referrers;
mod transport;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt as _};
use tokio::sync::Semaphore;
use url::Url;

use crate::config::Secret;
use crate::oci::Digest;

pub use client::{ACCEPT, MAX_MANIFEST, parse_server, server_url};
pub use failure::Failure;
pub use manifest::Platform;
pub use progress::Summary;
pub use reference::{BadRef, DOCKER_HUB_HOSTS, ImageRef, refs_in_file};
pub use transport::{IDLE_TIMEOUT, Local, Reply, ReplyBody};

use client::Berth;
use manifest::{BlobRef, Resolved, Walker};
use progress::Progress;

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// berth's base URL.
    pub server: Url,
    /// Extra PEM roots to trust for an `https` server (on top of the web PKI).
    pub ca_file: Option<std::path::PathBuf>,
    /// Transfers (and manifest requests) at once.
    pub jobs: usize,
    /// Only these platforms of an index; empty: every platform.
    pub platforms: Vec<Platform>,
    /// A live progress display (on a terminal) instead of one line per image.
    pub live: bool,
    /// User and password for a berth with `[auth]`, sent as Basic on every request.
    pub credentials: Option<(String, Secret)>,
}

impl Options {
    /// Whether stdout and stderr are both a terminal: the live display would garble a log file.
    pub fn on_terminal() -> bool {
        std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
    }
}

/// One run's client, limits and display.
pub struct Warmer {
    berth: Berth,
    jobs: usize,
    platforms: Vec<Platform>,
    /// Bounds manifest requests while references resolve side by side.
    limit: Arc<Semaphore>,
    progress: Progress,
    /// `--referrers`: each image's referrers and theirs come with it.
    referrers: bool,
}

impl Warmer {
    /// Builds the client; fails only on a bad `ca_file`.
    pub fn new(opts: &Options) -> Result<Warmer, String> {
        Ok(Warmer {
            berth: Berth::new(
                &opts.server,
                opts.ca_file.as_deref(),
                opts.credentials.as_ref(),
            )?,
            jobs: opts.jobs.max(1),
            platforms: opts.platforms.clone(),
            limit: Arc::new(Semaphore::new(opts.jobs.max(1))),
            progress: Progress::new(opts.live),
            referrers: false,
        })
    }

    /// A run through the registry service of this process (the admin API's warm, see
    /// [`Local`]): `jobs` transfers at once, only `platforms` (empty: every one), a log line
    /// per image instead of printed ones.
    pub fn local(local: Arc<dyn Local>, jobs: usize, platforms: Vec<Platform>) -> Warmer {
        Warmer {
            berth: Berth::local(local),
            jobs: jobs.max(1),
            platforms,
            limit: Arc::new(Semaphore::new(jobs.max(1))),
            progress: Progress::logged(),
            referrers: false,
        }
    }

    /// `--referrers`: also warm each image's referrers (OCI 1.1) and theirs, one level, and
    /// count them in the summary.
    pub fn with_referrers(mut self, on: bool) -> Warmer {
        self.referrers = on;
        self
    }

    /// Warms every reference; never fails as a whole: what failed is in the summary.
    pub async fn run(&self, refs: &[ImageRef]) -> Summary {
        let started = Instant::now();
        let mut summary = Summary {
            images: refs.len(),
            referrers: self.referrers.then_some(0),
            ..Summary::default()
        };
        if let Err(e) = self.berth.probe().await {
            self.progress.unreachable(&e);
            summary.failures = refs.iter().map(|r| (r.to_string(), e.clone())).collect();
            summary.elapsed = started.elapsed();
            return summary;
        }

        // Phase 1: every reference to its manifests and blobs.
        self.progress.resolving(refs.len());
        let walker = Walker {
            berth: &self.berth,
            limit: &self.limit,
            platforms: &self.platforms,
        };
        let walker = &walker;
        let resolved: Vec<Result<Resolved, Failure>> = join_all(refs.iter().map(|r| async move {
            let res = match walker.resolve(r).await {
                Ok(mut res) if self.referrers => {
                    referrers::add(walker, r, &mut res).await.map(|()| res)
                }
                res => res,
            };
            self.progress.resolved();
            res
        }))
        .await;

        // Which images wait on which blob; each digest fetched once, through the first image
        // that needs it (berth stores blobs by digest, whatever the repository).
        let mut pending: Vec<Option<Pending>> = Vec::with_capacity(refs.len());
        let mut needed_by: HashMap<Digest, Vec<usize>> = HashMap::new();
        let mut order: Vec<(usize, BlobRef)> = Vec::new();
        for (i, (r, res)) in refs.iter().zip(resolved).enumerate() {
            match res {
                Err(e) => {
                    self.progress.failed(r, &e);
                    summary.failures.push((r.to_string(), e));
                    pending.push(None);
                }
                Ok(res) => {
                    summary.manifests += res.manifests;
                    if let Some(n) = summary.referrers.as_mut() {
                        *n += res.referrers;
                    }
                    for b in &res.blobs {
                        let users = needed_by.entry(b.digest.clone()).or_default();
                        if users.is_empty() {
                            order.push((i, b.clone()));
                        }
                        users.push(i);
                    }
                    pending.push(Some(Pending {
                        manifests: res.manifests,
                        referrers: self.referrers.then_some(res.referrers),
                        blobs: res.blobs.len(),
                        left: res.blobs.len(),
                        bytes: res.blobs.iter().filter_map(|b| b.size).sum(),
                        via: res.via,
                        failure: None,
                    }));
                }
            }
        }
        let total_bytes = order.iter().filter_map(|(_, b)| b.size).sum();
        self.progress.fetching(refs.len(), order.len(), total_bytes);
        for (i, p) in pending.iter_mut().enumerate() {
            if p.as_ref().is_some_and(|p| p.left == 0) {
                self.finish_image(&refs[i], p.take(), &mut summary);
            }
        }

        // Phase 2: the blobs, `jobs` at a time, in the order images need them.
        let mut results = stream::iter(order.into_iter().map(|(i, b)| async move {
            let res = self
                .berth
                .fetch_blob(&refs[i], &b.digest, b.size, |n| self.progress.bytes(n))
                .await
                .map_err(|e| e.context(format!("blob {}", b.digest)));
            (b.digest, res)
        }))
        .buffer_unordered(self.jobs);
        while let Some((digest, res)) = results.next().await {
            match &res {
                Ok(n) => {
                    summary.blobs += 1;
                    summary.bytes += n;
                }
                Err(_) => self.progress.blob_failed(),
            }
            self.progress.blob_done();
            for &i in needed_by.get(&digest).into_iter().flatten() {
                let Some(p) = pending[i].as_mut() else {
                    continue;
                };
                p.left -= 1;
                if let Err(e) = &res {
                    // A blob only a referrer needs: the failure names the referrer.
                    p.failure.get_or_insert_with(|| match p.via.get(&digest) {
                        Some(referrer) => e.clone().context(format!("referrer {referrer}")),
                        None => e.clone(),
                    });
                }
                if p.left == 0 {
                    self.finish_image(&refs[i], pending[i].take(), &mut summary);
                }
            }
        }
        // Failures in the order the references were given.
        let position: HashMap<String, usize> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| (r.to_string(), i))
            .collect();
        summary
            .failures
            .sort_by_key(|(r, _)| position.get(r).copied());
        summary.elapsed = started.elapsed();
        self.progress.finish();
        summary
    }

    fn finish_image(&self, r: &ImageRef, p: Option<Pending>, summary: &mut Summary) {
        let Some(p) = p else { return };
        match p.failure {
            None => {
                summary.images_warmed += 1;
                self.progress
                    .warmed(r, p.manifests, p.referrers, p.blobs, p.bytes);
            }
            Some(e) => {
                self.progress.failed(r, &e);
                summary.failures.push((r.to_string(), e));
            }
        }
    }
}

/// An image's progress through phase 2.
struct Pending {
    manifests: usize,
    /// With `--referrers`: how many.
    referrers: Option<usize>,
    blobs: usize,
    left: usize,
    bytes: u64,
    /// Blobs only a referrer needs, with that referrer.
    via: HashMap<Digest, Digest>,
    failure: Option<Failure>,
}
