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
//! Rule of dependency: the top of the house, beside `main`; uses `oci` (names, digests, media
//! types) and `config` (only for the server's own address). Nothing in the server uses it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt as _};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde::Deserialize;
use tokio::sync::Semaphore;
use url::Url;

use crate::config::{Secret, ServerConfig};
use crate::oci::{Digest, Reference, RepoName, Tag, media};

/// Host names that mean Docker Hub; a reference naming one goes to berth's default upstream, the
/// way Docker sends `docker.io` pulls to its `registry-mirrors`.
pub const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "registry-1.docker.io", "index.docker.io"];

/// Every manifest and index media type berth serves: warm takes whatever the image is.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json";

/// A response head or a body that sends nothing for this long fails the transfer. berth bounds
/// its own upstream waits (`stall_timeout`, `response_timeout`), so this only catches a berth that
/// hangs; it is long so that a slow upstream behind berth is never cut off by warm first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Manifests larger than this are refused (registries cap them at 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// Indexes inside indexes are followed this deep.
const MAX_DEPTH: usize = 4;
/// How long connecting to berth (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---- references ----

/// An image reference as people write it: `nginx`, `nginx:1.25`, `library/nginx@sha256:<hex>`,
/// `quay.io/coreos/flannel:v0.11.0`, `registry.local:5000/team/app:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The registry host, lowercased; `None` for none written or Docker Hub (berth's default
    /// upstream).
    pub registry: Option<String>,
    /// The repository as written (berth adds `library/` itself where its upstream wants it).
    pub name: RepoName,
    /// The tag (`latest` when none is written) or the digest, which wins when both are written.
    pub reference: Reference,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an image reference: {reason}")]
pub struct BadRef {
    pub input: String,
    pub reason: String,
}

/// Docker's rule: the first component of a name with more than one is a registry host if it has a
/// `.` or a `:`, or is `localhost`.
fn looks_like_host(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

/// `host` or `host:port` (IPv6 in brackets), as registries are named.
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(']') || host.ends_with(']') => (host, Some(port)),
        _ => (h, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

impl FromStr for ImageRef {
    type Err = BadRef;

    fn from_str(input: &str) -> Result<Self, BadRef> {
        let bad = |reason: String| BadRef {
            input: input.to_owned(),
            reason,
        };
        // The OCI types say what is wrong in their detail; their message is generic.
        let why = |e: crate::error::Error| e.detail.unwrap_or(e.message);
        let s = input.trim();
        if s.is_empty() {
            return Err(bad("empty".into()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|e| bad(why(e)))?)),
            None => (s, None),
        };
        // A tag follows the last `:` after the last `/` (an earlier `:` is a registry's port).
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last..].rfind(':') {
            Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
            None => (rest, None),
        };
        let (registry, name) = match path.split_once('/') {
            Some((first, name)) if looks_like_host(first) => {
                if !valid_host(first) {
                    return Err(bad(format!("{first:?} is not a registry host")));
                }
                let host = first.to_ascii_lowercase();
                let hub = DOCKER_HUB_HOSTS.contains(&host.as_str());
                ((!hub).then_some(host), name)
            }
            _ => (None, path),
        };
        let name: RepoName = name.parse().map_err(|e| bad(why(e)))?;
        let tag: Option<Tag> = tag.map(str::parse).transpose().map_err(|e| bad(why(e)))?;
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d),
            (None, Some(t)) => Reference::Tag(t),
            (None, None) => Reference::Tag("latest".parse().expect("a valid tag")),
        };
        Ok(ImageRef {
            registry,
            name,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

impl ImageRef {
    /// berth's path for a manifest of this repository: the default upstream, or containerd's
    /// `?ns=<host>` for a named registry.
    pub fn manifest_path(&self, reference: &Reference) -> String {
        format!("/v2/{}/manifests/{reference}{}", self.name, self.ns_query())
    }

    /// berth's path for a blob of this repository.
    pub fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{digest}{}", self.name, self.ns_query())
    }

    fn ns_query(&self) -> String {
        match &self.registry {
            Some(host) => format!(
                "?ns={}",
                url::form_urlencoded::byte_serialize(host.as_bytes()).collect::<String>()
            ),
            None => String::new(),
        }
    }
}

/// The references in a list file with their line numbers: one per line, `#` starts a comment,
/// blank lines are skipped.
pub fn refs_in_file(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then_some((i + 1, line))
    })
}

/// `os/arch[/variant]`, as `docker pull --platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                arch: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                arch: arch.to_ascii_lowercase(),
                variant: Some(variant.to_ascii_lowercase()),
            }),
            _ => Err(format!(
                "{s:?} is not a platform (os/arch or os/arch/variant)"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Does an index entry's platform match? A variant is only compared when one was asked for.
    fn matches(&self, p: &PlatformDoc) -> bool {
        p.os.eq_ignore_ascii_case(&self.os)
            && p.architecture.eq_ignore_ascii_case(&self.arch)
            && self.variant.as_ref().is_none_or(|v| {
                p.variant
                    .as_deref()
                    .is_some_and(|pv| pv.eq_ignore_ascii_case(v))
            })
    }
}

// ---- the server's address ----

/// Where a berth configured with `cfg` answers on this host: its listen address, with an
/// unspecified address (`0.0.0.0`, `::`) replaced by loopback, `https` when it has TLS.
pub fn server_url(cfg: &ServerConfig) -> Url {
    let scheme = if cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let ip = match cfg.listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, cfg.listen.port());
    Url::parse(&format!("{scheme}://{addr}/")).expect("a socket address makes a valid URL")
}

/// A `--server` value: `http(s)://host[:port]`, or `host:port` meaning `http://`. berth serves
/// the API at the root, so a path is refused rather than silently dropped.
pub fn parse_server(s: &str) -> Result<Url, String> {
    let full = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&full).map_err(|e| format!("--server {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("--server {s:?}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("--server {s:?}: no host"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "--server {s:?}: give only scheme, host and port (berth serves /v2/ at the root)"
        ));
    }
    Ok(url)
}

// ---- the run ----

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

/// Why one image (or one of its parts) could not be warmed; shared by every image that needs the
/// same blob, hence `Clone`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

impl Failure {
    fn new(s: impl Into<String>) -> Failure {
        Failure(s.into())
    }
    fn context(self, what: impl fmt::Display) -> Failure {
        Failure(format!("{what}: {}", self.0))
    }
}

/// What a run did; printed at the end.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub images: usize,
    pub images_warmed: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Each failed reference with its reason, in the order given.
    pub failures: Vec<(String, Failure)>,
}

impl Summary {
    /// 0: every image warmed; 1: some failed.
    pub fn exit_code(&self) -> u8 {
        if self.failures.is_empty() { 0 } else { 1 }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warmed {}/{} images: {}, {}, {} in {:.1}s",
            self.images_warmed,
            self.images,
            counted(self.manifests, "manifest"),
            counted(self.blobs, "blob"),
            HumanBytes(self.bytes),
            self.elapsed.as_secs_f64()
        )?;
        if !self.failures.is_empty() {
            let names: Vec<&str> = self.failures.iter().map(|(r, _)| r.as_str()).collect();
            write!(f, "; {} failed: {}", self.failures.len(), names.join(", "))?;
        }
        Ok(())
    }
}

use crate::upstream::connect::{DirectClient, TimeoutConnector};

/// One run's client, limits and display.
pub struct Warmer {
    client: DirectClient,
    /// `scheme://host:port`, no trailing slash.
    base: String,
    jobs: usize,
    platforms: Vec<Platform>,
    /// `Basic ...` for a berth with `[auth]`; marked sensitive so no log shows it.
    authorization: Option<HeaderValue>,
    /// Bounds manifest requests while references resolve side by side.
    limit: Arc<Semaphore>,
    progress: Progress,
}

/// A blob an image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlobRef {
    digest: Digest,
    /// From the descriptor; schema 1 manifests give none.
    size: Option<u64>,
}

/// A reference resolved to every manifest it takes.
#[derive(Debug, Default)]
struct Resolved {
    manifests: usize,
    /// Without repeats, in manifest order.
    blobs: Vec<BlobRef>,
}

impl Warmer {
    /// Builds the client; fails only on a bad `ca_file`.
    pub fn new(opts: &Options) -> Result<Warmer, String> {
        Ok(Warmer {
            client: build_client(opts.ca_file.as_deref())?,
            base: opts.server.origin().ascii_serialization(),
            authorization: match &opts.credentials {
                Some((user, password)) => {
                    let mut v = HeaderValue::from_str(&crate::access::basic_header(user, password))
                        .map_err(|_| {
                            "the user name or password holds a character HTTP headers cannot carry"
                                .to_owned()
                        })?;
                    v.set_sensitive(true);
                    Some(v)
                }
                None => None,
            },
            jobs: opts.jobs.max(1),
            platforms: opts.platforms.clone(),
            limit: Arc::new(Semaphore::new(opts.jobs.max(1))),
            progress: Progress::new(opts.live),
        })
    }

    /// Warms every reference; never fails as a whole: what failed is in the summary.
    pub async fn run(&self, refs: &[ImageRef]) -> Summary {
        let started = Instant::now();
        let mut summary = Summary {
            images: refs.len(),
            ..Summary::default()
        };
        if let Err(e) = self.probe().await {
            eprintln!("berth warm: {e}");
            summary.failures = refs.iter().map(|r| (r.to_string(), e.clone())).collect();
            summary.elapsed = started.elapsed();
            return summary;
        }

        // Phase 1: every reference to its manifests and blobs.
        self.progress.resolving(refs.len());
        let resolved: Vec<Result<Resolved, Failure>> = join_all(refs.iter().map(|r| async move {
            let res = self.resolve(r).await;
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
                    self.progress.failed(&format!("failed {r}: {e}"));
                    summary.failures.push((r.to_string(), e));
                    pending.push(None);
                }
                Ok(res) => {
                    summary.manifests += res.manifests;
                    for b in &res.blobs {
                        let users = needed_by.entry(b.digest.clone()).or_default();
                        if users.is_empty() {
                            order.push((i, b.clone()));
                        }
                        users.push(i);
                    }
                    pending.push(Some(Pending {
                        manifests: res.manifests,
                        blobs: res.blobs.len(),
                        left: res.blobs.len(),
                        bytes: res.blobs.iter().filter_map(|b| b.size).sum(),
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
                .fetch_blob(&refs[i], &b)
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
                    p.failure.get_or_insert_with(|| e.clone());
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
                self.progress.warmed(&format!(
                    "warmed {r} ({}, {}, {})",
                    counted(p.manifests, "manifest"),
                    counted(p.blobs, "blob"),
                    HumanBytes(p.bytes)
                ));
            }
            Some(e) => {
                self.progress.failed(&format!("failed {r}: {e}"));
                summary.failures.push((r.to_string(), e));
            }
        }
    }

    /// Is berth there? One clear line instead of the same connection error for every image.
    async fn probe(&self) -> Result<(), Failure> {
        let resp = self
            .get("/v2/", None)
            .await
            .map_err(|e| e.context(format!("cannot reach berth at {}", self.base)))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Failure::new(match self.authorization {
                None => format!(
                    "{} asks for a login: give --user (password from --password-stdin or \
                     BERTH_PASSWORD)",
                    self.base
                ),
                Some(_) => format!("{} refused the login: wrong user or password", self.base),
            }));
        }
        if resp.status() != StatusCode::OK {
            return Err(Failure::new(format!(
                "{}/v2/ answered {}: is this berth?",
                self.base,
                resp.status()
            )));
        }
        Ok(())
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> Result<Response<Incoming>, Failure> {
        let mut req = Request::get(format!("{}{path}", self.base));
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(auth) = &self.authorization {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| Failure::new(format!("bad request {path}: {e}")))?;
        match tokio::time::timeout(IDLE_TIMEOUT, self.client.request(req)).await {
            Err(_) => Err(Failure::new(format!(
                "no answer within {}s",
                IDLE_TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(Failure::new(crate::error::chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    async fn resolve(&self, r: &ImageRef) -> Result<Resolved, Failure> {
        let mut out = Resolved::default();
        let mut seen = HashSet::new();
        self.walk(r, r.reference.clone(), 0, &mut out, &mut seen)
            .await?;
        Ok(out)
    }

    /// Fetches one manifest; for an index, every (matching) child, depth first.
    fn walk<'a>(
        &'a self,
        r: &'a ImageRef,
        reference: Reference,
        depth: usize,
        out: &'a mut Resolved,
        seen: &'a mut HashSet<Digest>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            // The image's own manifest needs no label in "failed <ref>: ..."; a child does.
            let what = match (&reference, depth) {
                (_, 0) => None,
                (reference, _) => Some(format!("platform manifest {reference}")),
            };
            let label = |e: Failure| match &what {
                Some(w) => e.context(w),
                None => e,
            };
            let parsed = {
                let _permit = self.limit.acquire().await.expect("never closed");
                self.fetch_manifest(r, &reference).await.map_err(label)?
            };
            out.manifests += 1;
            match parsed {
                Parsed::Image(blobs) => {
                    for b in blobs {
                        if seen.insert(b.digest.clone()) {
                            out.blobs.push(b);
                        }
                    }
                    Ok(())
                }
                Parsed::Index(children) => {
                    if depth >= MAX_DEPTH {
                        return Err(label(Failure::new(format!(
                            "indexes nested deeper than {MAX_DEPTH}"
                        ))));
                    }
                    let mut picked = pick_children(&children, &self.platforms).map_err(label)?;
                    // An index naming one child twice costs one fetch.
                    let mut once = HashSet::new();
                    picked.retain(|d| once.insert(d.clone()));
                    // Children side by side (the semaphore bounds them), merged in index order.
                    let fetched = join_all(picked.into_iter().map(|d| async move {
                        let mut sub = Resolved::default();
                        let mut sub_seen = HashSet::new();
                        let res = self
                            .walk(r, Reference::Digest(d), depth + 1, &mut sub, &mut sub_seen)
                            .await;
                        res.map(|()| sub)
                    }))
                    .await;
                    for sub in fetched {
                        let sub = sub?;
                        out.manifests += sub.manifests;
                        for b in sub.blobs {
                            if seen.insert(b.digest.clone()) {
                                out.blobs.push(b);
                            }
                        }
                    }
                    Ok(())
                }
            }
        })
    }

    async fn fetch_manifest(&self, r: &ImageRef, reference: &Reference) -> Result<Parsed, Failure> {
        let resp = self.get(&r.manifest_path(reference), Some(ACCEPT)).await?;
        let resp = self.ok(resp, r).await?;
        let header_digest = header_str(&resp, "docker-content-digest").map(str::to_owned);
        let content_type = header_str(&resp, header::CONTENT_TYPE.as_str()).map(str::to_owned);
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = next_chunk(&mut body).await? {
            if bytes.len() + chunk.len() > MAX_MANIFEST {
                return Err(Failure::new(format!("larger than {} bytes", MAX_MANIFEST)));
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        if let Reference::Digest(want) = reference
            && *want != digest
        {
            return Err(Failure::new(format!(
                "the body's digest is {digest}, not the one asked for"
            )));
        }
        check_digest_header(header_digest.as_deref(), &digest)?;
        parse_manifest(&bytes, content_type.as_deref())
    }

    /// Reads a blob to its end; the bytes received.
    async fn fetch_blob(&self, r: &ImageRef, b: &BlobRef) -> Result<u64, Failure> {
        let resp = self.get(&r.blob_path(&b.digest), None).await?;
        let resp = self.ok(resp, r).await?;
        check_digest_header(header_str(&resp, "docker-content-digest"), &b.digest)?;
        let announced =
            header_str(&resp, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
        check_size(b.size, announced, None)?;
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(chunk) = next_chunk(&mut body)
            .await
            .map_err(|e| e.context(format!("transfer broken after {got} bytes")))?
        {
            got += chunk.len() as u64;
            self.progress.bytes(chunk.len() as u64);
        }
        check_size(b.size, announced, Some(got))?;
        Ok(got)
    }

    /// A 200, or a failure that says what berth said.
    async fn ok(
        &self,
        resp: Response<Incoming>,
        r: &ImageRef,
    ) -> Result<Response<Incoming>, Failure> {
        let status = resp.status();
        if status == StatusCode::OK {
            return Ok(resp);
        }
        // An error body is a few hundred bytes of JSON; read no more than that much of it.
        let limited = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
        let body = tokio::time::timeout(IDLE_TIMEOUT, limited.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Err(Failure::new(describe_error(status, &body, r)))
    }
}

/// An image's progress through phase 2.
struct Pending {
    manifests: usize,
    blobs: usize,
    left: usize,
    bytes: u64,
    failure: Option<Failure>,
}

fn header_str<'a>(resp: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The next data chunk, `None` at the end; a body error or a long silence is a failure.
async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, Failure> {
    loop {
        match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(Failure::new(format!(
                    "no data for {}s",
                    IDLE_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(Failure::new(crate::error::chain(&e))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// A `Docker-Content-Digest`, where berth sent one, must name the content expected.
fn check_digest_header(header: Option<&str>, want: &Digest) -> Result<(), Failure> {
    match header {
        Some(h) if h.trim() != want.to_string() => Err(Failure::new(format!(
            "Docker-Content-Digest is {h}, expected {want}"
        ))),
        _ => Ok(()),
    }
}

/// Compares a blob's descriptor size, the announced `Content-Length` and (at the end) the bytes
/// received; any two that are known must agree.
fn check_size(
    descriptor: Option<u64>,
    announced: Option<u64>,
    got: Option<u64>,
) -> Result<(), Failure> {
    if let (Some(d), Some(a)) = (descriptor, announced)
        && d != a
    {
        return Err(Failure::new(format!(
            "the manifest says {d} bytes, berth announced {a}"
        )));
    }
    if let Some(g) = got
        && let Some(want) = descriptor.or(announced)
        && g != want
    {
        return Err(Failure::new(format!("received {g} bytes, expected {want}")));
    }
    Ok(())
}

/// `1 blob`, `2 blobs`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// berth's OCI error body as one line, with a hint where the cause is usually the setup.
fn describe_error(status: StatusCode, body: &[u8], r: &ImageRef) -> String {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let first = v.as_ref().and_then(|v| v.get("errors")?.get(0));
    let code = first
        .and_then(|e| e.get("code")?.as_str())
        .unwrap_or("")
        .to_owned();
    let text = first
        .and_then(|e| {
            e.get("detail")
                .and_then(|d| d.as_str())
                .or_else(|| e.get("message")?.as_str())
        })
        .unwrap_or("")
        .to_owned();
    let mut line = match (code.is_empty(), text.is_empty()) {
        (true, _) => format!("berth answered {status}"),
        (false, true) => format!("{code} (HTTP {})", status.as_u16()),
        (false, false) => format!("{code}: {text} (HTTP {})", status.as_u16()),
    };
    if code == "NAME_UNKNOWN"
        && let Some(reg) = &r.registry
    {
        line.push_str(&format!(
            "; is {reg:?} configured as an [[upstream]] name or alias in berth?"
        ));
    }
    line
}

fn build_client(ca_file: Option<&Path>) -> Result<DirectClient, String> {
    let https = crate::upstream::connect::https_connector(ca_file).map_err(|e| {
        if ca_file.is_some() {
            format!("--ca-file: {e}")
        } else {
            e
        }
    })?;
    // A dead or unreachable server is reported in seconds, not after the OS's connect timeout.
    Ok(Client::builder(TokioExecutor::new()).build(TimeoutConnector::new(https, CONNECT_TIMEOUT)))
}

// ---- manifests ----

#[derive(Debug, Deserialize)]
struct ManifestDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<Vec<FsLayer>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: Option<u64>,
    platform: Option<PlatformDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct PlatformDoc {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

impl fmt::Display for PlatformDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// What a manifest asks for next.
#[derive(Debug)]
enum Parsed {
    /// An image: its config (schema 2 / OCI) and layers.
    Image(Vec<BlobRef>),
    /// An index or manifest list: its entries.
    Index(Vec<Descriptor>),
}

fn parse_manifest(body: &[u8], content_type: Option<&str>) -> Result<Parsed, Failure> {
    let doc: ManifestDoc =
        serde_json::from_slice(body).map_err(|e| Failure::new(format!("not a manifest: {e}")))?;
    let media_type = doc
        .media_type
        .as_deref()
        .or(content_type)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let digest = |s: &str| {
        s.parse::<Digest>()
            .map_err(|e| Failure::new(e.detail.unwrap_or(e.message)))
    };
    if let Some(entries) = doc.manifests {
        return Ok(Parsed::Index(entries));
    }
    if media_type == media::OCI_INDEX || media_type == media::DOCKER_MANIFEST_LIST {
        return Err(Failure::new("an index without a manifests list"));
    }
    if let Some(layers) = doc.layers {
        let config = doc
            .config
            .ok_or_else(|| Failure::new("an image manifest without a config"))?;
        let mut blobs = Vec::with_capacity(layers.len() + 1);
        for d in std::iter::once(config).chain(layers) {
            // Foreign (non-distributable) layers come from elsewhere, never from a registry.
            if d.media_type
                .as_deref()
                .is_some_and(|m| m.contains("foreign") || m.contains("nondistributable"))
            {
                continue;
            }
            blobs.push(BlobRef {
                digest: digest(&d.digest)?,
                size: d.size,
            });
        }
        return Ok(Parsed::Image(blobs));
    }
    if let Some(fs) = doc.fs_layers
        && doc.schema_version == Some(1)
    {
        let mut blobs: Vec<BlobRef> = Vec::new();
        for l in fs {
            let d = digest(&l.blob_sum)?;
            if !blobs.iter().any(|b| b.digest == d) {
                blobs.push(BlobRef {
                    digest: d,
                    size: None,
                });
            }
        }
        return Ok(Parsed::Image(blobs));
    }
    Err(Failure::new(format!(
        "neither an image manifest nor an index (media type {:?})",
        media_type
    )))
}

/// The index entries to fetch: every manifest, or those matching one of `platforms`.
fn pick_children(entries: &[Descriptor], platforms: &[Platform]) -> Result<Vec<Digest>, Failure> {
    let manifest_types = [
        media::OCI_MANIFEST,
        media::OCI_INDEX,
        media::DOCKER_MANIFEST,
        media::DOCKER_MANIFEST_LIST,
        media::DOCKER_MANIFEST_V1,
        media::DOCKER_MANIFEST_V1_SIGNED,
    ];
    let mut picked = Vec::new();
    for e in entries {
        if e.media_type
            .as_deref()
            .is_some_and(|m| !manifest_types.contains(&m))
        {
            continue; // an artifact berth would not serve as a manifest
        }
        let wanted = platforms.is_empty()
            || e.platform
                .as_ref()
                .is_some_and(|p| platforms.iter().any(|w| w.matches(p)));
        if wanted {
            let d = e
                .digest
                .parse::<Digest>()
                .map_err(|err| Failure::new(err.detail.unwrap_or(err.message)))?;
            if !picked.contains(&d) {
                picked.push(d);
            }
        }
    }
    if picked.is_empty() && !platforms.is_empty() {
        let has: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
            .collect();
        let want: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        return Err(Failure::new(format!(
            "no manifest for {} in the index (it has {})",
            want.join(", "),
            if has.is_empty() {
                "none with a platform".into()
            } else {
                has.join(", ")
            }
        )));
    }
    Ok(picked)
}

// ---- progress ----

/// A live bar on a terminal; plain lines otherwise (one per image, on stdout; failures on
/// stderr).
struct Progress {
    bar: Option<ProgressBar>,
    counts: std::sync::Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    images: usize,
    images_done: usize,
    refs_resolved: usize,
    blobs: usize,
    blobs_done: usize,
    blobs_failed: usize,
    /// Phase 2 has begun: the bar counts bytes and its message counts images and blobs.
    fetching: bool,
}

impl Progress {
    fn new(live: bool) -> Progress {
        Progress {
            bar: live.then(ProgressBar::new_spinner),
            counts: std::sync::Mutex::new(Counts::default()),
        }
    }

    fn resolving(&self, refs: usize) {
        self.counts.lock().unwrap().images = refs;
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] resolving manifests {msg}")
                    .expect("a valid template"),
            );
            bar.set_message(format!("0/{refs}"));
            bar.enable_steady_tick(Duration::from_millis(120));
        }
    }

    fn resolved(&self) {
        let mut c = self.counts.lock().unwrap();
        c.refs_resolved += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}/{}", c.refs_resolved, c.images));
        }
    }

    fn fetching(&self, images: usize, blobs: usize, bytes: u64) {
        let mut c = self.counts.lock().unwrap();
        c.images = images;
        c.blobs = blobs;
        c.fetching = true;
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_length(bytes);
            bar.set_message(c.line());
        }
    }

    fn bytes(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn blob_done(&self) {
        let mut c = self.counts.lock().unwrap();
        c.blobs_done += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(c.line());
        }
    }

    fn blob_failed(&self) {
        self.counts.lock().unwrap().blobs_failed += 1;
    }

    fn warmed(&self, line: &str) {
        self.image_done();
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    fn failed(&self, line: &str) {
        self.image_done();
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn image_done(&self) {
        let mut c = self.counts.lock().unwrap();
        c.images_done = (c.images_done + 1).min(c.images);
        if let Some(bar) = &self.bar
            && c.fetching
        {
            bar.set_message(c.line());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Counts {
    fn line(&self) -> String {
        let mut s = format!(
            "images {}/{} · blobs {}/{}",
            self.images_done, self.images, self.blobs_done, self.blobs
        );
        if self.blobs_failed > 0 {
            s.push_str(&format!(" ({} failed)", self.blobs_failed));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn references_as_people_write_them() {
        let cases = [
            ("nginx", None, "nginx", "latest"),
            ("nginx:1.25", None, "nginx", "1.25"),
            ("library/nginx", None, "library/nginx", "latest"),
            ("docker.io/library/nginx", None, "library/nginx", "latest"),
            ("docker.io/nginx:1", None, "nginx", "1"),
            (
                "registry-1.docker.io/bitnami/redis:7",
                None,
                "bitnami/redis",
                "7",
            ),
            ("index.docker.io/nginx", None, "nginx", "latest"),
            (
                "quay.io/coreos/flannel:v0.11.0",
                Some("quay.io"),
                "coreos/flannel",
                "v0.11.0",
            ),
            (
                "registry.local:5000/team/app:tag",
                Some("registry.local:5000"),
                "team/app",
                "tag",
            ),
            (
                "registry.local:5000/team/app",
                Some("registry.local:5000"),
                "team/app",
                "latest",
            ),
            ("localhost/app", Some("localhost"), "app", "latest"),
            (
                "localhost:5000/a/b/c:v1",
                Some("localhost:5000"),
                "a/b/c",
                "v1",
            ),
            (
                "Quay.IO/coreos/flannel",
                Some("quay.io"),
                "coreos/flannel",
                "latest",
            ),
            ("[::1]:5000/app:1", Some("[::1]:5000"), "app", "1"),
            ("  nginx  ", None, "nginx", "latest"),
            // Not hosts: no dot, no colon, not localhost.
            ("team/app", None, "team/app", "latest"),
            ("localhostx/app", None, "localhostx/app", "latest"),
        ];
        for (input, registry, name, reference) in cases {
            let got = r(input);
            assert_eq!(got.registry.as_deref(), registry, "{input}");
            assert_eq!(got.name.as_str(), name, "{input}");
            assert_eq!(got.reference.to_string(), reference, "{input}");
        }
    }

    #[test]
    fn digests_win_over_tags() {
        let d = format!("sha256:{}", hex('a'));
        let got = r(&format!("library/nginx@{d}"));
        assert_eq!(got.reference.to_string(), d);
        assert_eq!(got.to_string(), format!("library/nginx@{d}"));
        let got = r(&format!("quay.io/x/y:1.0@{d}"));
        assert_eq!(
            (got.registry.as_deref(), got.reference.to_string()),
            (Some("quay.io"), d.clone())
        );
        let got = r(&format!("registry.local:5000/app@{d}"));
        assert_eq!(got.registry.as_deref(), Some("registry.local:5000"));
        assert_eq!(got.name.as_str(), "app");
    }

    #[test]
    fn malformed_references_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("Nginx", "not a valid repository name"),
            ("nginx:", "not a valid tag"),
            ("nginx:-x", "not a valid tag"),
            ("nginx@sha256:abc", "sha256 digest"),
            ("nginx@md5:abc", "not supported"),
            ("nginx@abc", "not a digest"),
            ("nginx@sha512:{}", "not supported"),
            ("quay.io/", "repository name"),
            ("a b", "repository name"),
            ("quay.io:x/app", "registry host"),
            ("ex_ample.com/app", "registry host"),
            ("//app", "repository name"),
        ] {
            let bad = bad.replace("{}", &"a".repeat(128));
            let e = bad.parse::<ImageRef>().unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert_eq!(e.input, bad);
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "nginx:latest",
            "library/nginx:1.25",
            "quay.io/coreos/flannel:v0.11.0",
            "registry.local:5000/team/app:tag",
        ] {
            assert_eq!(r(s).to_string(), s);
            assert_eq!(r(&r(s).to_string()), r(s));
        }
        assert_eq!(r("docker.io/nginx").to_string(), "nginx:latest");
    }

    #[test]
    fn berth_paths() {
        let d: Digest = format!("sha256:{}", hex('b')).parse().unwrap();
        assert_eq!(
            r("nginx").manifest_path(&r("nginx").reference),
            "/v2/nginx/manifests/latest"
        );
        assert_eq!(
            r("docker.io/library/nginx:1").manifest_path(&Reference::Digest(d.clone())),
            format!("/v2/library/nginx/manifests/{d}")
        );
        let q = r("quay.io/coreos/flannel:v0.11.0");
        assert_eq!(
            q.manifest_path(&q.reference),
            "/v2/coreos/flannel/manifests/v0.11.0?ns=quay.io"
        );
        assert_eq!(
            q.blob_path(&d),
            format!("/v2/coreos/flannel/blobs/{d}?ns=quay.io")
        );
        let l = r("registry.local:5000/team/app:tag");
        assert_eq!(
            l.manifest_path(&l.reference),
            "/v2/team/app/manifests/tag?ns=registry.local%3A5000"
        );
    }

    #[test]
    fn the_paths_are_what_berth_routes() {
        // The mapping agrees with the server's own parser.
        use crate::http::route::{Hosts, Route, Via, parse};
        let cfg = crate::config::Config::parse(
            r#"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            [[upstream]]
            name = "registry.local:5000"
            url = "http://registry.local:5000"
            "#,
            "t",
        )
        .unwrap();
        let hosts = Hosts::new(&cfg.upstreams);
        for (input, upstream, name) in [
            ("nginx:1.25", 0, "library/nginx"),
            ("docker.io/library/nginx", 0, "library/nginx"),
            ("registry.local:5000/team/app:tag", 1, "team/app"),
        ] {
            let img = r(input);
            let path = img.manifest_path(&img.reference);
            let (p, q) = path
                .split_once('?')
                .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
            let route = parse(&http::Method::GET, p, q, &hosts).unwrap();
            let t = route.target().unwrap();
            assert_eq!((t.upstream, t.name.as_str()), (upstream, name), "{input}");
            assert!(matches!(route, Route::Manifest { .. }));
            assert_eq!(t.via == Via::Default, img.registry.is_none(), "{input}");
        }
        let img = r("ghcr.io/a/b");
        let path = img.manifest_path(&img.reference);
        let (p, q) = path.split_once('?').unwrap();
        let e = parse(&http::Method::GET, p, Some(q), &hosts).unwrap_err();
        assert_eq!(
            e.kind,
            crate::error::Kind::NotFound(crate::error::Missing::Repository)
        );
    }

    #[test]
    fn list_files() {
        let text = "# images for the rollout\n\nnginx:1.25\n  quay.io/coreos/flannel:v0.11.0   # cni\n\t\n#alpine\nredis\n";
        let got: Vec<(usize, &str)> = refs_in_file(text).collect();
        assert_eq!(
            got,
            vec![
                (3, "nginx:1.25"),
                (4, "quay.io/coreos/flannel:v0.11.0"),
                (7, "redis")
            ]
        );
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        let doc = |os: &str, arch: &str, v: Option<&str>| PlatformDoc {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        };
        assert!(p.matches(&doc("linux", "arm64", Some("v8"))));
        assert!(!p.matches(&doc("linux", "arm64", None)));
        let p: Platform = "linux/amd64".parse().unwrap();
        assert!(p.matches(&doc("linux", "amd64", None)));
        assert!(p.matches(&doc("linux", "amd64", Some("v3"))));
        assert!(!p.matches(&doc("windows", "amd64", None)));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn server_address_from_config() {
        let mut s = ServerConfig::default();
        assert_eq!(server_url(&s).as_str(), "http://127.0.0.1:5000/");
        s.listen = "0.0.0.0:5001".parse().unwrap();
        assert_eq!(server_url(&s).as_str(), "http://127.0.0.1:5001/");
        s.listen = "[::]:5002".parse().unwrap();
        assert_eq!(server_url(&s).as_str(), "http://[::1]:5002/");
        s.listen = "10.1.2.3:443".parse().unwrap();
        s.tls_cert = Some("/x".into());
        assert_eq!(server_url(&s).as_str(), "https://10.1.2.3/");
    }

    #[test]
    fn server_flag() {
        assert_eq!(
            parse_server("127.0.0.1:5000").unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            parse_server("https://mirror.internal")
                .unwrap()
                .origin()
                .ascii_serialization(),
            "https://mirror.internal"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://x/v2/",
            "http://x?a=1",
            "http://u:p@x",
            "::",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_and_indexes() {
        let (c, l1, l2) = (hex('c'), hex('1'), hex('2'));
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"sha256:{c}","size":3}},"layers":[{{"digest":"sha256:{l1}","size":10}},{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"sha256:{l2}","size":5}}]}}"#,
            media::DOCKER_MANIFEST
        );
        let Parsed::Image(blobs) = parse_manifest(image.as_bytes(), None).unwrap() else {
            panic!("an image")
        };
        assert_eq!(blobs.len(), 2, "foreign layer skipped");
        assert_eq!(
            (blobs[0].digest.hex(), blobs[0].size),
            (c.as_str(), Some(3))
        );

        let v1 = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"sha256:{l1}"}},{{"blobSum":"sha256:{l1}"}},{{"blobSum":"sha256:{l2}"}}]}}"#
        );
        let Parsed::Image(blobs) =
            parse_manifest(v1.as_bytes(), Some(media::DOCKER_MANIFEST_V1_SIGNED)).unwrap()
        else {
            panic!("an image")
        };
        assert_eq!(
            blobs.iter().map(|b| b.size).collect::<Vec<_>>(),
            vec![None, None]
        );

        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{m}","digest":"sha256:{l1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{m}","digest":"sha256:{l2}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},{{"mediaType":"application/vnd.example.sbom","digest":"sha256:{c}","size":1}}]}}"#,
            m = media::OCI_MANIFEST
        );
        let Parsed::Index(entries) =
            parse_manifest(index.as_bytes(), Some(media::OCI_INDEX)).unwrap()
        else {
            panic!("an index")
        };
        let all = pick_children(&entries, &[]).unwrap();
        assert_eq!(all.len(), 2, "the artifact is skipped");
        let arm = pick_children(&entries, &["linux/arm64".parse().unwrap()]).unwrap();
        assert_eq!(arm.len(), 1);
        assert_eq!(arm[0].hex(), l2);
        let e = pick_children(&entries, &["linux/s390x".parse().unwrap()]).unwrap_err();
        assert!(
            e.0.contains("linux/s390x") && e.0.contains("linux/arm64/v8"),
            "{e}"
        );
    }

    #[test]
    fn bad_manifests() {
        for (body, why) in [
            ("not json".to_owned(), "not a manifest"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#
                    .to_owned(),
                "without a manifests list",
            ),
            (
                r#"{"schemaVersion":2,"layers":[]}"#.to_owned(),
                "without a config",
            ),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:x","size":1},"layers":[]}"#
                    .to_owned(),
                "sha256 digest",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.example"}"#.to_owned(),
                "neither",
            ),
        ] {
            let e = parse_manifest(body.as_bytes(), None).unwrap_err();
            assert!(e.0.contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn sizes_must_agree() {
        assert!(check_size(Some(5), Some(5), Some(5)).is_ok());
        assert!(check_size(None, None, Some(5)).is_ok());
        assert!(check_size(None, Some(5), Some(5)).is_ok());
        assert!(
            check_size(Some(5), Some(6), None)
                .unwrap_err()
                .0
                .contains("berth announced 6")
        );
        assert!(
            check_size(Some(5), None, Some(4))
                .unwrap_err()
                .0
                .contains("received 4 bytes, expected 5")
        );
        assert!(check_size(None, Some(5), Some(6)).is_err());
    }

    #[test]
    fn digest_headers_must_agree() {
        let d: Digest = format!("sha256:{}", hex('d')).parse().unwrap();
        assert!(check_digest_header(None, &d).is_ok());
        assert!(check_digest_header(Some(&d.to_string()), &d).is_ok());
        let other = format!("sha256:{}", hex('e'));
        let e = check_digest_header(Some(&other), &d).unwrap_err();
        assert_eq!(
            e.0,
            format!("Docker-Content-Digest is {other}, expected {d}")
        );
    }

    #[test]
    fn berth_errors_read_as_one_line() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":"registry \"ghcr.io\" is not mirrored here"}]}"#;
        let line = describe_error(StatusCode::NOT_FOUND, body, &r("ghcr.io/a/b"));
        assert!(
            line.starts_with("NAME_UNKNOWN: registry \"ghcr.io\" is not mirrored here (HTTP 404)"),
            "{line}"
        );
        assert!(line.contains("[[upstream]]"), "{line}");
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":null}]}"#;
        assert_eq!(
            describe_error(StatusCode::NOT_FOUND, body, &r("a")),
            "MANIFEST_UNKNOWN: manifest unknown (HTTP 404)"
        );
        assert_eq!(
            describe_error(StatusCode::BAD_GATEWAY, b"<html>", &r("a")),
            "berth answered 502 Bad Gateway"
        );
    }

    #[test]
    fn summary_and_exit_code() {
        let mut s = Summary {
            images: 2,
            images_warmed: 2,
            manifests: 3,
            blobs: 4,
            bytes: 2048,
            elapsed: Duration::from_millis(1500),
            failures: vec![],
        };
        assert_eq!(s.exit_code(), 0);
        assert_eq!(
            s.to_string(),
            "warmed 2/2 images: 3 manifests, 4 blobs, 2.00 KiB in 1.5s"
        );
        s.images_warmed = 1;
        s.failures
            .push(("ghcr.io/a/b:latest".into(), Failure::new("x")));
        assert_eq!(s.exit_code(), 1);
        assert!(
            s.to_string().ends_with("; 1 failed: ghcr.io/a/b:latest"),
            "{s}"
        );
    }
}
