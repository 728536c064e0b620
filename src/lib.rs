//! berth: a pull-through caching mirror for container registries.
//!
//! # Map
//! A request flows one way, top to bottom:
//!
//! ```text
//! main (CLI) -> server (listeners, TLS, shutdown) -> http (login, route, respond) -> mirror (orchestration)
//!     -> { flight (single-flight), fill (who shares a download, the fill task and its sources),
//!          manifests (tag/digest cache),
//!          cluster (owners, peer health, peer protocol),
//!          origins (which upstream a digest came through), tier (the bucket on the request
//!          path) -> store (blob files + fills, the s3 bucket),
//!          upstreams -> upstream (registry client, auth, address guard) }
//!     -> { oci (names, references, digests, media types), error }
//! config and metrics are leaves, handed in; nothing reaches for a global.
//! ```
//!
//! - [`config`]: the TOML file, defaults, validation, secrets.
//! - [`server`]: binds the registry and metrics listeners (and the admin socket), TLS on either,
//!   connection limits, the idle timeout, graceful shutdown; `server/conn` holds a new connection
//!   in a buffer of what it sent until its first whole request head arrived (header floods).
//! - [`access`]: client login (`[auth]`): the `Authorization` header becomes a principal
//!   (htpasswd, bcrypt verdicts cached, checks bounded), and the policy of who may pull through
//!   which upstream; `http` asks it before routing reaches the mirror.
//! - [`http`]: parses method + path + query into a typed `http::route::Route`, calls the mirror, writes
//!   responses and the one OCI error body.
//! - [`mirror`]: decides hit or miss, coalesces fetches, verifies, caches; `mirror/bucket` is its
//!   side of the bucket tier for manifests and tag records.
//! - [`cluster`]: replicas (`[cluster]`): the owner of each digest by rendezvous hashing over
//!   the live peers, peer health probes, and the signed peer protocol under `/_berth/peer/v1/`
//!   on the registry listener (health and blob routes); a fill hands its miss to the owner.
//! - [`flight`]: generic single-flight: one computation per key, its result shared.
//! - [`fill`]: which running blob download a request may share (same upstream; another
//!   repository's only once the upstream answered it with content); `fill/job` the fill task
//!   (stream into the store while hashing, resume, pass-through on a full disk, commit, upload);
//!   `fill/source` where its bytes come from (bucket, the owner peer, upstream).
//! - [`manifests`]: tag -> digest answers with their TTL, manifests by digest (memory + disk).
//! - [`store`]: content-addressed blob files; a fill writes a temp file that readers can follow while it
//!   grows, and is renamed into place only after its size and sha256 check out. One file per
//!   concern: `store/mod.rs` (layout, the `Store` facade), `pending` (a fill: reserve, verify,
//!   commit), `spool` (chunks in memory, the full-disk pass-through), `read` (ranges, mapped
//!   reads), `evict` (making room), `s3` (the object-store tier, `[storage.s3]`: blobs,
//!   manifests and tag records in a bucket, uploads completed only once verified).
//! - [`tier`]: the bucket as the request path uses it: bounded lookups skipped for a while after
//!   an error, uploads of verified blobs beside the pull, the bucket's last error for `/healthz`;
//!   `tier/share` notes pulls (access markers), puts back what the bucket lacks and runs the
//!   share's eviction pass (its policy in `store/s3/evict`).
//! - [`upstream`]: the registry client: pooled HTTPS, auth challenges and tokens, redirects, timeouts.
//! - [`origins`]: which upstreams each cached digest came through, so content cached from one
//!   upstream is answered through another only once that one confirms it has it.
//! - [`oci`]: repository names, tags, digests, references, media types, `Accept` matching.
//! - [`error`]: one `Clone` error type that knows its origin and its OCI code.
//! - [`metrics`]: Prometheus families, registered in a registry that is handed in.
//! - [`verify`]: the `berth verify` pass: re-hash cached blobs, quarantine bad ones, clear leftovers;
//!   `verify/bucket` (`--bucket`): re-hash the bucket's objects, delete bad ones.
//! - [`warm`]: the `berth warm` client: pulls images (every platform) through a running berth so
//!   they are cached before a rollout; beside `main`, it talks to berth over HTTP like any client.
//! - [`zerocopy`]: sends mapped blob windows with `sendfile` on plain-TCP connections (the hit
//!   path without the copy); `store` registers its mappings there, `server` wraps connections.
//! - [`health`]: starting, serving or draining, and the `/healthz` answer (`?verbose`: why).
//! - [`sdnotify`]: systemd's notify protocol (`READY=1`, `STATUS=`, `WATCHDOG=1`) over
//!   `NOTIFY_SOCKET`, path or abstract.
//! - [`upstreams`]: the upstream set by slot and the host table routing to it: one snapshot,
//!   swapped whole by a reload.
//! - [`reload`]: `SIGHUP`: re-read and validate the config, apply what can change live, name what
//!   needs a restart.
//! - [`tls`]: a listener's certificate (registry, metrics), re-read on reload and when its files
//!   change.
//! - [`logwriter`]: the log sink: lines batched in memory, written to stderr by one thread.
//! - [`admin`]: `berth cache ls|rm|stats` and the token-protected admin API on the metrics listener
//!   (or only on `[admin] socket`):
//!   what is cached, removing it through `manifests`/`store`, the totals.
//!
//! # How a pull travels
//! `GET /v2/library/nginx/manifests/latest` is parsed into a `Route` naming the default upstream. The
//! mirror asks `manifests` for a fresh tag answer; on a miss it asks `upstream` (HEAD to revalidate,
//! GET when the digest is new), verifies the body against its digest and caches it. The client then
//! asks for each blob: a hit streams the file from `store`; a miss starts one fill that streams the
//! bucket's object (with `[storage.s3]`, when it has the blob) or else the upstream body into a
//! temp file while hashing it, and every client asking for that digest reads the
//! growing file. The last byte is only released after the digest matched, so a client never gets a
//! complete response with wrong bytes. A body that breaks off is resumed with a range request; a
//! full disk turns the fill into a pass-through from memory that caches nothing.
// `deny`, not `forbid`: store::read::map (mapping immutable blob files for the hit path) is the one
// measured exception, allowed where it stands and explained there.
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod assemble;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fill;
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
pub mod reload;
pub mod sdnotify;
pub mod server;
pub mod store;
pub mod tier;
pub mod tls;
pub mod trim;
pub mod upstream;
pub mod upstreams;
pub mod verify;
pub mod warm;
pub mod zerocopy;
