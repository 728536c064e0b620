//! berth: a pull-through caching mirror for container registries.
//!
//! # Map
//! A request flows one way, top to bottom; no module imports one above it:
//!
//! ```text
//! main (CLI) -> server (bind, accept, drain) over assemble (the object graph from the Config)
//!   -> http (route, admit, respond: the one table from error kind to status and OCI code)
//!     -> mirror (manifests + tags, blobs, tag lists, referrers; the request's meaning in its
//!        own words)
//!       -> { fill (single-flight blob fills, stream-while-verify), cluster (owners, peers),
//!            fleet (node mode: the parent's upstreams, the fleet proof; the parent's tracker),
//!            swarm (pieces, the tracker, a node's transfer: sharing blobs between nodes),
//!            flight (generic single-flight), manifests (tag/digest and referrers cache),
//!            origins (which upstream may serve a digest), policy (signature verdicts) }
//!         -> { store (layout, pending, spool, read, evict, lock, s3 { layout, client, upload,
//!              sweep }), tier (the bucket on the request path), upstreams -> upstream (request,
//!              response, status, retry, redirect, auth, guard) }
//!           -> { oci (names, references, digests, media types), error (kinds, no HTTP),
//!                config (a file per section), index, metrics, zerocopy, trim }
//! ```
//!
//! Where a change goes:
//! - [`config`]: the TOML file; `config/mod.rs` the whole (load, parse, the order of the checks,
//!   checks that span sections), a file per section (server, metrics, storage with s3,
//!   upstreams, auth, cluster, admin, log, policy with `keys` and `trusted_root`) with its defaults
//!   and checks beside its type, `value` the durations, sizes, `Secret` and the URL/CA/TLS checks
//!   they share.
//! - [`assemble`]: builds the running berth from the `Config` (store, upstreams, mirror, tier,
//!   cluster, access, admin API, health, metrics registry, TLS acceptors); binds nothing.
//! - [`server`]: binds the registry and metrics listeners (and the admin socket), accepts and
//!   drains, and runs the tasks tied to its life (sweeps, trimmer, prober, watchdog);
//!   `server/conn` holds a new connection until its first whole request head (header floods),
//!   `server/idle` closes quiet ones.
//! - [`access`]: client login (`[auth]`): the `Authorization` header becomes a principal, and the
//!   policy of who may pull through which upstream; `http` asks it before the mirror.
//! - [`http`]: `route` (method + path + query into a typed route, pure and fuzzed), `error` (the
//!   one table from an error's kind to its answer), `metrics` (the metrics listener's router),
//!   `admin` (the admin API's face), `warm` (the admin API's warm, run through the registry
//!   service in process); `mod.rs` admits, dispatches and logs each request.
//! - [`mirror`]: `manifest` (tags, revalidation, stale serving), `blob` (hit, miss, fills, HEAD),
//!   `tag_list`, `referrers` (OCI 1.1, from the API or the tag schema), `policy` (the verdict
//!   before a manifest is answered), `range`, `target` (the request's meaning, built by
//!   `http::route`), `bucket` (the manifest side of the bucket tier).
//! - [`fill`]: which running blob download a request may share; `fill/job` the fill task and the
//!   source it reads (bucket, the owner peer, a fleet node's swarm, upstream), resume,
//!   pass-through on a full disk, commit, upload; `fill/source` the bodies with their stall
//!   timeouts; `fill/swarm` a fleet node's fills from the swarm (the driver of `swarm::select`,
//!   verified bytes only) and its serving of other nodes.
//! - [`cluster`]: replicas (`[cluster]`): the owner of each digest by rendezvous hashing over the
//!   live peers, peer health probes, and the signed peer protocol under `/_berth/peer/v1/`.
//! - [`fleet`]: node mode (`[fleet]`): a berth on every node whose upstreams are its parent's
//!   (`listing`, asked for by `node` at start and on reload, kept on disk), the fleet proof and
//!   its routes under `/_berth/fleet/v1/`; on the parent, the swarm's tracker (`parent`) and
//!   piece tables (`tables`).
//! - [`swarm`]: nodes sharing blobs (pure; `fill/swarm` drives it on a node): `pieces` (piece size,
//!   table, incremental hasher), `tracker` (each digest's swarm on its owner: who feeds whom),
//!   `select` (one node's transfer as a state machine), `directory` (holders found without the
//!   parent), `protocol` (the strict JSON bodies, fuzzed), `transfer` (serving and fetching
//!   verified pieces).
//! - [`origins`]: which upstreams each cached digest came through; `origins/check` the one answer
//!   to "may this upstream serve this digest?" (records, the bucket's marker, an upstream HEAD).
//! - [`flight`]: generic single-flight: one computation per key, its result shared.
//! - [`manifests`]: tag -> digest answers with their TTL, manifests by digest (memory + disk);
//!   `referrers` the referrers lists kept the same way.
//! - [`policy`]: `[[policy]]`: which scopes need signatures, `keys` (verification with ring),
//!   `cosign` (the tag scheme's format), `bundle` (Sigstore bundles), `keyless` (Fulcio
//!   certificates and Rekor entries against a pinned trust root: `root`, `cert`, `rekor`, `sct`),
//!   the pure `decide` and the verdicts kept.
//! - [`store`]: content-addressed blob files: `pending` (a fill: reserve, verify, commit),
//!   `spool` (chunks in memory), `read` (ranges of a file or a growing fill), `evict`, `lock` (one
//!   server per directory), `s3` (the bucket: key `layout`, `client`, verified multipart
//!   `upload`, stale-upload `sweep`, `evict` of the share).
//! - [`tier`]: the bucket as the request path uses it (bounded lookups, uploads beside the pull);
//!   `tier/share` notes pulls and runs the share's eviction pass.
//! - [`upstreams`]: the upstream set by slot and the host table routing to it, swapped whole by a
//!   reload.
//! - [`upstream`]: the registry client: `request`, `response`, `status` (an error answer mapped
//!   to a kind), `retry` (what is sent again, `Retry-After`), `redirect`, `auth` (the token flow,
//!   challenges, the token cache), `guard` (no private addresses), `connect`, `metrics`.
//! - [`index`]: sizes and last accesses of the cached blobs, and the eviction limits.
//! - [`oci`]: repository names, tags, digests, references, media types, `Accept` matching;
//!   `referrers` the referrers index re-encoded.
//! - [`error`]: one `Clone` error: its [`error::Kind`], its origin, its words; no HTTP.
//! - [`metrics`]: the mirror's Prometheus families, registered in a registry handed in.
//! - [`health`]: starting, serving or draining, and the `/healthz` answer (`?verbose`: why).
//! - [`reload`]: `SIGHUP`: re-read and validate the config, apply what can change live, name what
//!   needs a restart.
//! - [`tls`]: a listener's certificate, re-read on reload and when its files change.
//! - [`sdnotify`]: systemd's notify protocol over `NOTIFY_SOCKET`.
//! - [`logwriter`]: the log sink: lines batched in memory, written to stderr by one thread.
//! - [`admin`]: `berth cache ls|rm|stats`: `cache` (the operations over both tiers),
//!   `inventory`, `reference`, `answer` (the types), `render` (text or JSON); `cli` runs them
//!   directly or through the admin API (`http::admin`); `warm` (the admin API's warm request
//!   and answer).
//! - [`verify`]: `berth verify`: re-hash cached blobs, quarantine bad ones; `verify/bucket` the
//!   bucket's objects.
//! - [`warm`]: the `berth warm` client beside `main`, talking to berth over HTTP like any client:
//!   `reference`, `client`, `transport` (over the network, or in process for the admin API's
//!   `POST /admin/warm`), `manifest` (the walk, every platform), `referrers`, `progress`.
//! - [`zerocopy`]: every mapping of a blob file and the `sendfile` sends of mapped windows on
//!   plain-TCP connections (the hit path without the copy).
//! - [`trim`]: hands the heap's free pages back after a burst of connections (`malloc_trim`).
//!
//! # How a pull travels
//! `GET /v2/library/nginx/manifests/latest` is parsed into a `Route` whose `Target` names the
//! default upstream. The mirror asks `manifests` for a fresh tag answer; on a miss it asks
//! `upstream` (HEAD to revalidate, GET when the digest is new), verifies the body against its
//! digest, records where it came from, and caches it. The client then asks for each blob: a hit
//! streams the file from `store`; a miss starts one fill that streams the bucket's object (with
//! `[storage.s3]`, when it has the blob), the owner replica's answer (with `[cluster]`) or else
//! the upstream body into a temp file while hashing it, and every client asking for that digest
//! reads the growing file. The last byte is only released after the digest matched, so a client
//! never gets a complete response with wrong bytes. A body that breaks off is resumed with a range
//! request; a full disk turns the fill into a pass-through from memory that caches nothing. Any
//! failure is an `error::Error` of some kind until `http::error` answers it.
//!
//! # `unsafe`
//! Two blocks, each measured and each alone in its file: `zerocopy::map` (a read-only `mmap` of a
//! committed blob file, so hits go out with `sendfile`; why it is sound is written there) and
//! `trim::malloc_trim` (a foreign call that only returns free pages). Everything else is
//! `deny(unsafe_code)`.
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod assemble;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fill;
pub mod fleet;
pub mod flight;
pub mod health;
pub mod http;
pub mod index;
pub mod logwriter;
pub mod manifests;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod origins;
pub mod policy;
pub mod reload;
pub mod sdnotify;
pub mod server;
pub mod store;
pub mod swarm;
pub mod tier;
pub mod tls;
pub mod trim;
pub mod upstream;
pub mod upstreams;
pub mod verify;
pub mod warm;
pub mod zerocopy;
