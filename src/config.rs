//! Configuration: the TOML file, its defaults, and its validation.
//!
//! Only `main`/`server` read the whole [`Config`]; every other module is handed its own small piece
//! (an [`UpstreamConfig`], a storage path). A bad file fails here, before any port is bound, with
//! the file, the key and the reason. Secrets are read once at load time and carried in [`Secret`],
//! whose `Debug` and `Serialize` never show them.
//!
//! Rule of dependency: a leaf.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    /// The admin API on the metrics listener (`berth cache ...` talks to it). Off by default.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Log level and line format.
    #[serde(default)]
    pub log: LogConfig,
    /// Client login (`access`). Without it, anyone who reaches the listener may pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Replicas that share the work of filling blobs (`cluster`). Absent: a single berth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// The registries berth mirrors; the only hosts it ever connects to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the registry listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// A client must send its whole request head within this time (slowloris guard).
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// Most request headers accepted; more get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// On SIGTERM/SIGINT, running transfers get this long to finish.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Most client connections served at once on the registry listener; beyond it new connections
    /// wait in the kernel's accept backlog until one closes (transfers under way go on).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2: a PING goes out after this long without a frame from the client...
    #[serde(default = "default_http2_keepalive_interval", with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// ...and a client that does not answer it within this long is disconnected.
    #[serde(default = "default_http2_keepalive_timeout", with = "duration")]
    pub http2_keepalive_timeout: Duration,
    /// HTTP/2: most requests (streams) in flight on one connection.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// A registry connection (HTTP/1 keep-alive or HTTP/2) with no request in flight for this
    /// long is closed gracefully (HTTP/2: GOAWAY); a transfer in flight keeps it open however
    /// long it takes. `"0s"`: never.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the metrics listener (`/metrics`, `/healthz`). Remove the `[metrics]` table's
    /// `listen` with `enabled = false` to run without it.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// PEM certificate chain; with `tls_key`, the metrics listener (and the admin API on it)
    /// speaks HTTPS. Re-read on reload and when the files change, like `[server] tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Cache root: blobs live at `<path>/blobs/sha256/<hex>`.
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
    /// Most bytes of cached blobs and manifests kept on disk (`"50GiB"`, `"500 MB"`, or a number of
    /// bytes). Unset: no limit.
    #[serde(default, with = "opt_size", skip_serializing_if = "Option::is_none")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Eviction starts when the cache passes this share of `max_size` ...
    #[serde(default = "default_high_watermark", with = "percent")]
    pub high_watermark: f64,
    /// ... and stops when it is back under this one.
    #[serde(default = "default_low_watermark", with = "percent")]
    pub low_watermark: f64,
    /// Evict what nobody pulled for this long (`"30d"`). Unset: content is kept while there is room.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// A blob that a manifest served within this window names is never evicted: a client that
    /// just read the manifest is about to ask for it.
    #[serde(default = "default_keep_referenced", with = "duration")]
    pub keep_referenced: Duration,
    /// The object-store tier (`[storage.s3]`): a bucket shared by replicas. Absent: local disk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

/// `[storage.s3]`: an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, Garage) holding blobs,
/// manifests and tag records by digest (see `store::s3`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// The S3 endpoint (`http://127.0.0.1:9103`), addressed path-style. Absent: AWS S3 for `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Url>,
    /// The region requests are signed for (S3-compatible servers mostly take any, `us-east-1` by
    /// convention).
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// A key prefix inside the bucket (`"mirror/"`), so that one bucket can hold other things.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// With `secret_access_key_file`; both absent: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN`, if set) from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// The bucket's share, evicted by least recent pull. Unset: no limit.
    #[serde(default, with = "opt_size", skip_serializing_if = "Option::is_none")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Evict from the bucket what nobody pulled for this long. Unset: kept while there is room.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// An object pulled (by any replica) within this long is never evicted from the bucket: a
    /// replica may be streaming it. Longer than the slowest blob read takes.
    #[serde(default = "default_keep_pulled", with = "duration")]
    pub keep_pulled: Duration,
    /// The credentials, resolved at load from the file or the environment.
    #[serde(skip)]
    pub credentials: Option<S3Credentials>,
}

/// Credentials for `[storage.s3]`, read once at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl S3Config {
    /// The prefix as the bucket's keys use it: without surrounding slashes, `""` for none.
    pub fn key_prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("").trim_matches('/')
    }

    /// Checks the table and resolves the credentials; `env` looks up an environment variable (the
    /// process environment outside tests). On error, the key under `[storage.s3]` and the reason.
    pub fn validate(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), (String, String)> {
        let key = |k: &str| format!("storage.s3.{k}");
        if !valid_bucket_name(&self.bucket) {
            return Err((
                key("bucket"),
                format!(
                    "{:?} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-', starting and ending \
                     with a letter or digit)",
                    self.bucket
                ),
            ));
        }
        if let Some(e) = &self.endpoint {
            if !matches!(e.scheme(), "http" | "https") || e.host_str().is_none() {
                return Err((key("endpoint"), format!("{e} is not an http(s) URL")));
            }
            if e.query().is_some() || e.path() != "/" {
                return Err((
                    key("endpoint"),
                    format!("{e}: no path or query (the bucket is named by `bucket`)"),
                ));
            }
        }
        if self.region.trim().is_empty() {
            return Err((key("region"), "must not be empty".into()));
        }
        if let Some(p) = &self.prefix {
            let inner = p.trim_matches('/');
            if inner.is_empty()
                || inner
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == ".." || s.contains(char::is_control))
            {
                return Err((
                    key("prefix"),
                    format!(
                        "{p:?} is not a key prefix like \"mirror/\" (no empty, '.' or '..' parts)"
                    ),
                ));
            }
        }
        if self.max_size.is_some_and(|m| m.as_u64() == 0) {
            return Err((
                key("max_size"),
                "must be more than 0 (leave it out for no limit)".into(),
            ));
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            return Err((
                key("max_age"),
                "must be more than 0 (leave it out to keep content while there is room)".into(),
            ));
        }
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        self.credentials = Some(match (&self.access_key_id, &self.secret_access_key_file) {
            (Some(_), None) => {
                return Err((
                    key("secret_access_key_file"),
                    "access_key_id is set, secret_access_key_file is missing".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    key("access_key_id"),
                    "secret_access_key_file is set, access_key_id is missing".into(),
                ));
            }
            (Some(id), Some(f)) => {
                let secret = std::fs::read_to_string(f).map_err(|e| {
                    (
                        key("secret_access_key_file"),
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                let secret = secret.trim();
                if id.trim().is_empty() || secret.is_empty() {
                    let k = if secret.is_empty() {
                        "secret_access_key_file"
                    } else {
                        "access_key_id"
                    };
                    return Err((key(k), "is empty".into()));
                }
                S3Credentials {
                    access_key_id: id.trim().to_owned(),
                    secret_access_key: Secret::new(secret),
                    session_token: None,
                }
            }
            (None, None) => match (
                nonempty(env("AWS_ACCESS_KEY_ID")),
                nonempty(env("AWS_SECRET_ACCESS_KEY")),
            ) {
                (Some(id), Some(secret)) => S3Credentials {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                    session_token: nonempty(env("AWS_SESSION_TOKEN")).map(Secret::new),
                },
                _ => {
                    return Err((
                        key("access_key_id"),
                        "no credentials: set access_key_id and secret_access_key_file, or the \
                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables"
                            .into(),
                    ));
                }
            },
        });
        Ok(())
    }
}

/// An S3 bucket name as every S3 server accepts it (the DNS-compatible rules).
fn valid_bucket_name(b: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(b.chars().next())
        && edge(b.chars().last())
        && !b.contains("..")
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

fn default_keep_pulled() -> Duration {
    Duration::from_secs(15 * 60)
}

/// `[cluster]`: the replicas of one berth (see `cluster`). Each blob has one owner among the
/// live peers; peers prove themselves to each other with the shared secret.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// How the other replicas reach this one: its registry listener's URL, `http://10.0.0.1:5000`
    /// (the peer protocol is served there, under `/_berth/peer/v1/`). One of `peers`.
    #[serde(rename = "self")]
    pub self_url: Url,
    /// Every replica, this one included, by the same URLs each of them gives as `self`: the
    /// owner of a digest is computed from these, so every replica must list the same set.
    pub peers: Vec<Url>,
    /// The shared secret (at least 32 bytes; surrounding white space ignored).
    pub secret_file: PathBuf,
    /// Each other peer's health route is probed this often.
    #[serde(default = "default_health_interval", with = "duration")]
    pub health_interval: Duration,
    /// A probe, or a peer request's connect plus response headers, gets this long.
    #[serde(default = "default_peer_timeout", with = "duration")]
    pub peer_timeout: Duration,
    /// A peer that fails this many probes in a row is marked down (a peer request that cannot
    /// connect marks it down at once); one good probe brings it back.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// PEM bundle trusted for `https://` peers, on top of the web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The secret, read from `secret_file` at load time.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
}

/// Shortest cluster secret accepted, as for the admin token.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 32;

impl ClusterConfig {
    /// A peer's identity: its origin (`http://10.0.0.1:5000`, the scheme's default port left
    /// out), what ownership is hashed over. Two spellings of one origin are one peer.
    pub fn peer_id(u: &Url) -> String {
        u.origin().ascii_serialization()
    }

    /// Checks the table and reads the secret. On error, the key under `[cluster]` and the reason.
    pub fn validate(&mut self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("cluster.{k}");
        let check = |u: &Url| -> Result<(), String> {
            check_registry_url(u)?;
            if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
                return Err(format!(
                    "{u}: no path or query (the peer protocol lives at the root of the registry listener)"
                ));
            }
            Ok(())
        };
        check(&self.self_url).map_err(|r| (key("self"), r))?;
        if self.peers.is_empty() {
            return Err((
                key("peers"),
                "must list every replica, this one included".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            check(p).map_err(|r| (format!("cluster.peers[{i}]"), r))?;
            if !seen.insert(Self::peer_id(p)) {
                return Err((
                    format!("cluster.peers[{i}]"),
                    format!("{} is listed more than once", Self::peer_id(p)),
                ));
            }
        }
        if !seen.contains(&Self::peer_id(&self.self_url)) {
            return Err((
                key("self"),
                format!(
                    "{} is not one of cluster.peers (list this replica there too)",
                    Self::peer_id(&self.self_url)
                ),
            ));
        }
        for (k, d) in [
            ("health_interval", self.health_interval),
            ("peer_timeout", self.peer_timeout),
        ] {
            if d.is_zero() {
                return Err((key(k), "must be more than 0s".into()));
            }
        }
        if self.down_after == 0 || self.down_after > 100 {
            return Err((key("down_after"), "must be between 1 and 100".into()));
        }
        if let Some(f) = &self.ca_file {
            check_ca_file(f).map_err(|r| (key("ca_file"), r))?;
        }
        let f = &self.secret_file;
        let secret = std::fs::read_to_string(f).map_err(|e| {
            (
                key("secret_file"),
                format!("cannot read {}: {e}", f.display()),
            )
        })?;
        let secret = secret.trim();
        if secret.len() < MIN_CLUSTER_SECRET_BYTES {
            return Err((
                key("secret_file"),
                format!(
                    "the secret has {} bytes; at least {MIN_CLUSTER_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)",
                    secret.len()
                ),
            ));
        }
        self.secret = Some(Secret::new(secret));
        Ok(())
    }
}

fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_peer_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_down_after() -> u32 {
    3
}

/// What is logged, and how lines look.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `"info"`, `"debug"`, `"info,berth::upstream=debug"`. `RUST_LOG`, when
    /// set, wins over it. Changes on reload.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `"text"` (the default) or `"json"`: one JSON object per line, for Loki, Elasticsearch and
    /// journald pipelines. Needs a restart to change.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// The token-protected admin API (`/admin/...` on the metrics listener).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/admin/...` on the metrics listener. Needs a token and the metrics listener.
    #[serde(default)]
    pub enabled: bool,
    /// File holding the bearer token (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Serve the admin API on this Unix socket (mode 0600) instead of the metrics listener,
    /// which then answers `/admin/...` with 404. The token is still required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The token, read from `token_file` or `token_env` at load time when `enabled`.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// Client login: with it, every request needs a user from `htpasswd`, except pulls through the
/// `anonymous_upstreams`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// htpasswd file with bcrypt entries (`htpasswd -B`); re-read when it changes.
    pub htpasswd: PathBuf,
    /// Upstreams (name or alias) anyone may pull through without logging in.
    #[serde(default)]
    pub anonymous_upstreams: Vec<String>,
    /// Most bcrypt checks running at once (each takes a core for its duration). Unset: half the
    /// cores, at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_concurrency: Option<usize>,
}

/// One upstream registry. `PartialEq`: a reload keeps the client (connection pool, tokens) of an
/// upstream whose settings are all unchanged.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry host clients name (containerd's `?ns=`, a path prefix), e.g. `docker.io`.
    pub name: String,
    /// Where berth fetches from: `https://registry-1.docker.io`, or `http://` for a local registry.
    pub url: Url,
    /// Serves requests that name no registry (Docker's `registry-mirrors`).
    #[serde(default)]
    pub default: bool,
    /// Never contact this upstream: serve only what is cached (tags whatever their age); anything
    /// else gets 503 UNAVAILABLE.
    #[serde(default)]
    pub offline: bool,
    /// Other host names that mean this upstream.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// How long a tag->digest answer is trusted before it is revalidated (`"0s"` = always).
    #[serde(default = "default_tag_ttl", with = "duration")]
    pub tag_ttl: Duration,
    /// Put `library/` before one-part names (Docker Hub's official images). Defaults to true when
    /// the upstream's name or an alias is `docker.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library_prefix: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Token realms (besides the upstream's own origin) that may receive the credentials.
    #[serde(default)]
    pub auth_realms: Vec<Url>,
    /// TCP + TLS connect timeout.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for response headers after a request is sent.
    #[serde(default = "default_response_timeout", with = "duration")]
    pub response_timeout: Duration,
    /// A body that sends nothing for this long fails the transfer. Also how long a fill passing
    /// through memory (the disk was full) waits for a client that takes nothing before cutting it off.
    #[serde(default = "default_stall_timeout", with = "duration")]
    pub stall_timeout: Duration,
    /// Most redirects followed for one request.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u8,
    /// Whether a redirect target or token realm named by this upstream may be on a loopback,
    /// private or link-local address (`upstream::guard`). Unset: only when the upstream itself is
    /// on such an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_private_redirects: Option<bool>,
    /// Extra attempts after a connection failure or a 5xx before any response reaches the caller
    /// (0: no retries). Only GET and HEAD are ever sent, so a retry cannot repeat a change.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Base of the exponential backoff: retry k waits a random time up to
    /// `retry_backoff * 2^k` (full jitter), so that many mirrors do not retry in step.
    #[serde(default = "default_retry_backoff", with = "duration")]
    pub retry_backoff: Duration,
    /// Cap on one backoff wait; also the longest `Retry-After` berth waits out itself. A longer
    /// `Retry-After` goes back to the client with the 429/503 instead.
    #[serde(default = "default_retry_backoff_max", with = "duration")]
    pub retry_backoff_max: Duration,
    /// How many times one blob fill asks again, with `Range: bytes=<received>-`, after its body
    /// broke off (closed, reset, stalled), backing off as `retries` do (0: a broken body fails the
    /// fill). Counted per fill, not per stretch of progress, so an upstream that always breaks
    /// cannot keep a fill alive forever. A resume that breaks off again without a byte is not
    /// resumed again (so about two `stall_timeout`s without a byte, at most).
    #[serde(default = "default_resume_attempts")]
    pub resume_attempts: u32,
    /// PEM bundle of extra root certificates trusted for this upstream (a private registry's CA),
    /// on top of the built-in web PKI roots. Its redirect targets and token realms trust them too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// With `[auth]`: only these users may pull through this upstream (unset: every user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// The password, read from `password_file` or `password_env` at load time.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

impl UpstreamConfig {
    /// Every host name that selects this upstream (lowercased `name` then `aliases`).
    pub fn hosts(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(&self.name)
            .chain(&self.aliases)
            .map(|h| h.to_ascii_lowercase())
    }

    /// Whether one-part names get `library/` in front.
    pub fn uses_library_prefix(&self) -> bool {
        self.library_prefix
            .unwrap_or_else(|| self.hosts().any(|h| h == "docker.io"))
    }

    /// The credentials, if both a user name and a password are configured.
    pub fn credentials(&self) -> Option<(&str, &Secret)> {
        Some((self.username.as_deref()?, self.password.as_ref()?))
    }
}

/// A secret string: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A configuration problem: which file, which key, why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            header_read_timeout: default_header_read_timeout(),
            max_headers: default_max_headers(),
            shutdown_grace: default_shutdown_grace(),
            max_connections: default_max_connections(),
            http2_keepalive_interval: default_http2_keepalive_interval(),
            http2_keepalive_timeout: default_http2_keepalive_timeout(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
            enabled: true,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: default_storage_path(),
            max_size: None,
            high_watermark: default_high_watermark(),
            low_watermark: default_low_watermark(),
            max_age: None,
            keep_referenced: default_keep_referenced(),
            s3: None,
        }
    }
}

/// The configuration berth runs on without `--config`.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
listen = "127.0.0.1:5000"

[metrics]
listen = "127.0.0.1:9090"

[storage]
path = "./berth-data"

[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
default = true
aliases = ["registry-1.docker.io", "index.docker.io"]
auth_realms = ["https://auth.docker.io/token"]
tag_ttl = "30s"
"#;

impl Config {
    /// The embedded default: local disk cache, Docker Hub as the default upstream.
    pub fn embedded_default() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>")
            .expect("the embedded default config is valid")
    }

    /// Reads, parses and validates a config file (and reads the secrets it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            key: toml_error_place(text, &e),
            reason: e.message().to_owned(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&mut self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: file.to_owned(),
            key,
            reason,
        };

        for (table, cert, key) in [
            ("server", &self.server.tls_cert, &self.server.tls_key),
            ("metrics", &self.metrics.tls_cert, &self.metrics.tls_key),
        ] {
            match (cert, key) {
                (Some(_), None) => {
                    return Err(err(
                        format!("{table}.tls_key"),
                        "tls_cert is set, tls_key is missing".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(err(
                        format!("{table}.tls_cert"),
                        "tls_key is set, tls_cert is missing".into(),
                    ));
                }
                _ => {}
            }
        }
        let st = &self.storage;
        if st.low_watermark >= st.high_watermark {
            return Err(err(
                "storage.low_watermark".into(),
                format!(
                    "must be below high_watermark ({}%)",
                    st.high_watermark * 100.0
                ),
            ));
        }
        if st.max_size.is_some_and(|m| m.as_u64() == 0) {
            return Err(err(
                "storage.max_size".into(),
                "must be more than 0 (leave it out for no limit)".into(),
            ));
        }
        if st.max_age.is_some_and(|a| a.is_zero()) {
            return Err(err(
                "storage.max_age".into(),
                "must be more than 0 (leave it out to keep content while there is room)".into(),
            ));
        }
        if let Some(s3) = &mut self.storage.s3 {
            s3.validate(|v| std::env::var(v).ok())
                .map_err(|(k, r)| err(k, r))?;
        }
        for (key, p) in [
            ("server.tls_cert", &self.server.tls_cert),
            ("server.tls_key", &self.server.tls_key),
            ("metrics.tls_cert", &self.metrics.tls_cert),
            ("metrics.tls_key", &self.metrics.tls_key),
        ] {
            if let Some(p) = p
                && let Err(e) = std::fs::metadata(p)
            {
                return Err(err(key.into(), format!("cannot read {}: {e}", p.display())));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(err(
                "log.level".into(),
                format!(
                    "{:?} is not a log filter like \"info\" or \"info,berth::upstream=debug\": {e}",
                    self.log.level
                ),
            ));
        }
        for (key, n) in [
            ("server.max_headers", self.server.max_headers),
            ("server.max_connections", self.server.max_connections),
            (
                "server.http2_max_concurrent_streams",
                self.server.http2_max_concurrent_streams as usize,
            ),
        ] {
            if n == 0 {
                return Err(err(key.into(), "must be at least 1".into()));
            }
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        if self.server.max_connections > 1 << 24 {
            return Err(err(
                "server.max_connections".into(),
                "must be at most 16777216".into(),
            ));
        }
        self.admin.token = match self.admin.enabled {
            false => None,
            true => Some(read_admin_token(&self.admin).map_err(|(k, r)| err(k.into(), r))?),
        };
        // Like the token, the socket only matters when the API is on.
        if let Some(sock) = self.admin.socket.as_ref().filter(|_| self.admin.enabled) {
            // `parent()` of a bare file name is "": the working directory.
            let dir = sock.parent().filter(|d| !d.as_os_str().is_empty());
            if sock.file_name().is_none() || dir.is_some_and(|d| !d.is_dir()) {
                return Err(err(
                    "admin.socket".into(),
                    format!(
                        "{}: the directory it goes in does not exist (systemd: RuntimeDirectory=berth makes /run/berth)",
                        sock.display()
                    ),
                ));
            }
        }
        if self.admin.enabled && self.admin.socket.is_none() && !self.metrics.enabled {
            return Err(err(
                "admin.enabled".into(),
                "the admin API is served on the metrics listener: set [metrics] enabled = true"
                    .into(),
            ));
        }
        if self.upstreams.is_empty() {
            return Err(err(
                "upstream".into(),
                "at least one [[upstream]] is needed".into(),
            ));
        }
        if self.upstreams.iter().filter(|u| u.default).count() > 1 {
            return Err(err(
                "upstream.default".into(),
                "only one upstream may be the default".into(),
            ));
        }
        self.validate_auth().map_err(|(k, r)| err(k, r))?;
        if let Some(c) = &mut self.cluster {
            c.validate().map_err(|(k, r)| err(k, r))?;
        }
        let mut seen = HashSet::new();
        for (i, u) in self.upstreams.iter_mut().enumerate() {
            let key = |k: &str| format!("upstream[{i}].{k}");
            for host in u.hosts().collect::<Vec<_>>() {
                if !valid_host(&host) {
                    return Err(err(
                        key("name"),
                        format!("{host:?} is not a registry host name (host or host:port)"),
                    ));
                }
                if !seen.insert(host.clone()) {
                    return Err(err(
                        key("name"),
                        format!("{host:?} names more than one upstream"),
                    ));
                }
            }
            check_registry_url(&u.url).map_err(|r| err(key("url"), r))?;
            for realm in &u.auth_realms {
                check_registry_url(realm).map_err(|r| err(key("auth_realms"), r))?;
            }
            if let Some(f) = &u.ca_file {
                check_ca_file(f).map_err(|r| err(key("ca_file"), r))?;
            }
            if u.max_redirects > 10 {
                return Err(err(key("max_redirects"), "at most 10".into()));
            }
            if u.retries > 10 {
                return Err(err(key("retries"), "at most 10".into()));
            }
            if u.resume_attempts > 10 {
                return Err(err(key("resume_attempts"), "at most 10".into()));
            }
            if u.retry_backoff > u.retry_backoff_max {
                return Err(err(
                    key("retry_backoff"),
                    "must not be more than retry_backoff_max".into(),
                ));
            }
            for (k, d) in [
                ("connect_timeout", u.connect_timeout),
                ("response_timeout", u.response_timeout),
                ("stall_timeout", u.stall_timeout),
            ] {
                if d.is_zero() {
                    return Err(err(key(k), "must be more than 0s".into()));
                }
            }
            u.password = match (&u.password_file, &u.password_env) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        key("password_file"),
                        "set password_file or password_env, not both".into(),
                    ));
                }
                (Some(f), None) => {
                    let s = std::fs::read_to_string(f).map_err(|e| {
                        err(
                            key("password_file"),
                            format!("cannot read {}: {e}", f.display()),
                        )
                    })?;
                    Some(Secret::new(s.trim_end_matches(['\r', '\n'])))
                }
                (None, Some(v)) => {
                    let s = std::env::var(v).map_err(|_| {
                        err(
                            key("password_env"),
                            format!("environment variable {v} is not set"),
                        )
                    })?;
                    Some(Secret::new(s))
                }
                (None, None) => None,
            };
            if u.password.is_some() != u.username.is_some() {
                return Err(err(
                    key("username"),
                    "username and a password (password_file or password_env) go together".into(),
                ));
            }
        }
        Ok(())
    }

    /// `[auth]` and the upstreams' `users`: names that exist, lists that can be met. On error,
    /// the key and the reason. (The htpasswd file itself is parsed when the server starts.)
    fn validate_auth(&self) -> Result<(), (String, String)> {
        let Some(auth) = &self.auth else {
            return match self.upstreams.iter().position(|u| u.users.is_some()) {
                Some(i) => Err((
                    format!("upstream[{i}].users"),
                    "users needs client login: add [auth] with an htpasswd file".into(),
                )),
                None => Ok(()),
            };
        };
        if auth.check_concurrency.is_some_and(|n| n == 0 || n > 1024) {
            return Err((
                "auth.check_concurrency".into(),
                "must be between 1 and 1024 (leave it out for half the cores)".into(),
            ));
        }
        if let Err(e) = std::fs::metadata(&auth.htpasswd) {
            return Err((
                "auth.htpasswd".into(),
                format!("cannot read {}: {e}", auth.htpasswd.display()),
            ));
        }
        let mut anonymous = vec![false; self.upstreams.len()];
        for name in &auth.anonymous_upstreams {
            let name = name.to_ascii_lowercase();
            match self
                .upstreams
                .iter()
                .position(|u| u.hosts().any(|h| h == name))
            {
                Some(i) => anonymous[i] = true,
                None => {
                    return Err((
                        "auth.anonymous_upstreams".into(),
                        format!("{name:?} is not the name or alias of an [[upstream]]"),
                    ));
                }
            }
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            match &u.users {
                Some(_) if anonymous[i] => {
                    return Err((
                        format!("upstream[{i}].users"),
                        format!(
                            "{} is in auth.anonymous_upstreams: anyone may pull through it, \
                             so a users list would mean nothing",
                            u.name
                        ),
                    ));
                }
                Some(list) if list.iter().any(|n| n.is_empty() || n.contains(':')) => {
                    return Err((
                        format!("upstream[{i}].users"),
                        "a user name is empty or holds ':'".into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What is allowed but probably a mistake, one sentence each (logged at start, printed by
    /// `berth check-config`).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let m = &self.metrics;
        if self.admin.enabled
            && self.admin.socket.is_none()
            && m.enabled
            && m.tls_cert.is_none()
            && !m.listen.ip().is_loopback()
        {
            w.push(format!(
                "the admin API is served on {} over plain HTTP: its bearer token crosses the network in clear text (set [metrics] tls_cert/tls_key, or [admin] socket)",
                m.listen
            ));
        }
        w
    }

    /// The effective configuration as TOML, secrets redacted (for `berth check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Shortest admin token accepted: 32 bytes (`openssl rand -hex 32` gives 64) put guessing it out of
/// reach; a shorter one is refused at startup rather than guarded by a rate limit.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// The admin token from `token_file` or `token_env`: exactly one of them, at least
/// [`MIN_ADMIN_TOKEN_BYTES`] long. On error, the key and the reason.
fn read_admin_token(a: &AdminConfig) -> Result<Secret, (&'static str, String)> {
    let token = match (&a.token_file, &a.token_env) {
        (Some(_), Some(_)) => {
            return Err((
                "admin.token_file",
                "set token_file or token_env, not both".into(),
            ));
        }
        (None, None) => {
            return Err((
                "admin.token_file",
                "enabled = true needs a token: set token_file or token_env".into(),
            ));
        }
        (Some(f), None) => std::fs::read_to_string(f)
            .map_err(|e| {
                (
                    "admin.token_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, Some(v)) => std::env::var(v).map_err(|_| {
            (
                "admin.token_env",
                format!("environment variable {v} is not set"),
            )
        })?,
    };
    let key = if a.token_file.is_some() {
        "admin.token_file"
    } else {
        "admin.token_env"
    };
    if token.trim().is_empty() {
        return Err((key, "the token is empty".into()));
    }
    let len = token.trim().len();
    if len < MIN_ADMIN_TOKEN_BYTES {
        return Err((
            key,
            format!(
                "the token has {len} bytes; at least {MIN_ADMIN_TOKEN_BYTES} are needed (e.g. `openssl rand -hex 32`)"
            ),
        ));
    }
    // Surrounding white space never counts, from a file or the environment, as in the request's
    // `Authorization` header.
    Ok(Secret::new(token.trim()))
}

/// `host` or `host:port`, as clients name a registry.
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(']') || host.ends_with(']') => (host, Some(port)),
        _ => (h, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

fn check_registry_url(u: &Url) -> Result<(), String> {
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{u}: scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{u}: no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "{}: put credentials in username/password_file, not in the URL",
            u.host_str().unwrap_or("")
        ));
    }
    Ok(())
}

/// A CA bundle must be readable and hold at least one PEM certificate; the upstream client parses
/// it again when it is built, so a bad file fails here, before any port is bound.
fn check_ca_file(f: &Path) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let certs = CertificateDer::pem_file_iter(f)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", f.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", f.display()));
    }
    Ok(())
}

/// Where in the file a TOML error is (`line L, column C`); toml's message names the key.
fn toml_error_place(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => "-".into(),
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}
fn default_metrics_listen() -> SocketAddr {
    "127.0.0.1:9090".parse().unwrap()
}
fn default_storage_path() -> PathBuf {
    PathBuf::from("./berth-data")
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    4096
}
fn default_http2_keepalive_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_http2_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_http2_max_concurrent_streams() -> u32 {
    256
}
fn default_max_headers() -> usize {
    100
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_tag_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_redirects() -> u8 {
    5
}
fn default_retries() -> u32 {
    2
}
fn default_resume_attempts() -> u32 {
    3
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_retry_backoff_max() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}
fn default_high_watermark() -> f64 {
    0.95
}
fn default_low_watermark() -> f64 {
    0.85
}
fn default_keep_referenced() -> Duration {
    Duration::from_secs(15 * 60)
}

/// Durations as humantime strings: `"30s"`, `"5m"`, `"1h 30m"`.
mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"30s\" or \"5m\": {e}"
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// An optional humantime duration.
mod opt_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// Sizes as `"50GiB"`, `"500 MB"` or a number of bytes.
mod opt_size {
    use super::*;
    use bytesize::ByteSize;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Some(ByteSize::b(n))),
            Raw::Text(s) => s.parse::<ByteSize>().map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a size like \"50GiB\", \"500MB\" or a number of bytes"
                ))
            }),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<ByteSize>, s: S) -> Result<S::Ok, S::Error> {
        // Exact, and readable where a binary unit divides it.
        let Some(n) = v.map(|b| b.as_u64()) else {
            return s.serialize_none();
        };
        let unit = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ]
        .into_iter()
        .find(|(_, u)| n % u == 0);
        match unit {
            Some((name, u)) => s.serialize_str(&format!("{}{name}", n / u)),
            None => s.serialize_u64(n),
        }
    }
}

/// Shares as percent strings: `"95%"` is 0.95.
mod percent {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let s = String::deserialize(d)?;
        s.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| *p > 0.0 && *p <= 100.0)
            .map(|p| p / 100.0)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a percentage between 0% and 100%, like \"90%\""
                ))
            })
    }

    pub fn serialize<S: Serializer>(p: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", p * 100.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_docker_hub() {
        let c = Config::embedded_default();
        assert_eq!(c.server.listen, default_listen());
        assert_eq!(c.metrics.listen, default_metrics_listen());
        assert_eq!(c.storage.path, PathBuf::from("./berth-data"));
        let u = &c.upstreams[0];
        assert!(u.default && u.uses_library_prefix());
        assert_eq!(u.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(u.tag_ttl, Duration::from_secs(30));
        assert_eq!(u.retries, 2);
        assert_eq!(u.resume_attempts, 3);
        assert_eq!(u.retry_backoff, Duration::from_millis(200));
        assert_eq!(u.retry_backoff_max, Duration::from_secs(5));
    }

    #[test]
    fn the_example_file_is_valid() {
        // Keeps config.example.toml honest: every key it shows must parse.
        // SAFETY-free: set the variable the example's Aliyun upstream reads.
        let text = include_str!("../config.example.toml");
        let text = text.replace(
            "password_file = \"/etc/berth/aliyun.password\"",
            "password_env = \"PATH\"",
        );
        let c = Config::parse(&text, "config.example.toml").unwrap();
        assert!(c.upstreams.len() >= 5);
    }

    #[test]
    fn storage_limits_parse_and_are_checked() {
        let up = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let c = Config::parse(
            &format!("[storage]\nmax_size = \"50 GiB\"\nhigh_watermark = \"90%\"\nlow_watermark = \"70.5%\"\nmax_age = \"30d\"\n{up}"),
            "f.toml",
        )
        .unwrap();
        let st = &c.storage;
        assert_eq!(st.max_size.unwrap().as_u64(), 50 << 30);
        assert_eq!((st.high_watermark, st.low_watermark), (0.9, 0.705));
        assert_eq!(st.max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(st.keep_referenced, Duration::from_secs(900));
        // Round trip through check-config's output.
        let again = Config::parse(&c.to_toml(), "again").unwrap();
        assert_eq!(again.storage.max_size, st.max_size);
        assert_eq!(again.storage.low_watermark, st.low_watermark);

        for (storage, needle) in [
            ("low_watermark = \"95%\"", "storage.low_watermark"),
            ("high_watermark = \"120%\"", "percentage"),
            ("high_watermark = \"0.9\"", "percentage"),
            ("max_size = \"lots\"", "not a size"),
            ("max_size = 0", "storage.max_size"),
            ("max_age = \"0s\"", "storage.max_age"),
        ] {
            let e = Config::parse(&format!("[storage]\n{storage}\n{up}"), "f.toml").unwrap_err();
            assert!(e.to_string().contains(needle), "{storage}: {e}");
        }
    }

    /// `[storage.s3]` with the credentials from a file, and every check naming its key.
    #[test]
    fn s3_table_parses_and_is_checked() {
        let up = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, "testsecret\n").unwrap();
        let creds = format!(
            "access_key_id = \"testkey\"\nsecret_access_key_file = \"{}\"\n",
            secret.display()
        );
        let c = Config::parse(
            &format!(
                "[storage.s3]\nbucket = \"berth\"\nendpoint = \"http://127.0.0.1:9103\"\n\
                 prefix = \"mirror/\"\nmax_size = \"2TiB\"\nmax_age = \"30d\"\n{creds}{up}"
            ),
            "f.toml",
        )
        .unwrap();
        let s3 = c.storage.s3.as_ref().unwrap();
        assert_eq!(s3.bucket, "berth");
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.key_prefix(), "mirror");
        assert_eq!(s3.max_size, Some(bytesize::ByteSize::tib(2)));
        assert_eq!(s3.keep_pulled, Duration::from_secs(15 * 60), "the default");
        let c2 = Config::parse(
            &format!("[storage.s3]\nbucket = \"berth\"\nkeep_pulled = \"1h\"\n{creds}{up}"),
            "f.toml",
        )
        .unwrap();
        assert_eq!(
            c2.storage.s3.unwrap().keep_pulled,
            Duration::from_secs(3600)
        );
        assert_eq!(s3.max_age, Some(Duration::from_secs(30 * 86400)));
        let creds_read = s3.credentials.as_ref().unwrap();
        assert_eq!(creds_read.access_key_id, "testkey");
        assert_eq!(creds_read.secret_access_key.expose(), "testsecret");
        assert!(!c.to_toml().contains("testsecret"), "{}", c.to_toml());
        assert!(Config::parse(up, "f.toml").unwrap().storage.s3.is_none());

        let missing = dir.path().join("nope");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for (table, needle) in [
            (format!("bucket = \"\"\n{creds}"), "storage.s3.bucket"),
            (format!("bucket = \"Up_Per\"\n{creds}"), "storage.s3.bucket"),
            (format!("bucket = \"b\"\n{creds}"), "storage.s3.bucket"),
            (creds.clone(), "bucket"),
            (
                format!("bucket = \"berth\"\nendpoint = \"ftp://x\"\n{creds}"),
                "storage.s3.endpoint",
            ),
            (
                format!("bucket = \"berth\"\nendpoint = \"http://x/berth\"\n{creds}"),
                "storage.s3.endpoint",
            ),
            (
                format!("bucket = \"berth\"\nregion = \"\"\n{creds}"),
                "storage.s3.region",
            ),
            (
                format!("bucket = \"berth\"\nprefix = \"a//b\"\n{creds}"),
                "storage.s3.prefix",
            ),
            (
                format!("bucket = \"berth\"\nprefix = \"../x\"\n{creds}"),
                "storage.s3.prefix",
            ),
            (
                format!("bucket = \"berth\"\nmax_size = 0\n{creds}"),
                "storage.s3.max_size",
            ),
            (
                format!("bucket = \"berth\"\nmax_age = \"0s\"\n{creds}"),
                "storage.s3.max_age",
            ),
            (format!("bucket = \"berth\"\n{creds}colour = 1\n"), "colour"),
            (
                "bucket = \"berth\"\naccess_key_id = \"k\"\n".into(),
                "storage.s3.secret_access_key_file",
            ),
            (
                format!(
                    "bucket = \"berth\"\nsecret_access_key_file = \"{}\"\n",
                    secret.display()
                ),
                "storage.s3.access_key_id",
            ),
            (
                format!(
                    "bucket = \"berth\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\n",
                    missing.display()
                ),
                "storage.s3.secret_access_key_file: cannot read",
            ),
            (
                format!(
                    "bucket = \"berth\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\n",
                    empty.display()
                ),
                "storage.s3.secret_access_key_file: is empty",
            ),
        ] {
            let e = Config::parse(&format!("[storage.s3]\n{table}{up}"), "f.toml").unwrap_err();
            assert!(e.to_string().contains(needle), "{table}: {e}");
        }
    }

    /// Without keys in the file, the standard AWS variables (looked up through `env`, so the test
    /// does not touch the process environment); neither: an error naming the key.
    #[test]
    fn s3_credentials_come_from_the_environment() {
        let table = "bucket = \"berth\"\n";
        let mut s3: S3Config = toml::from_str(table).unwrap();
        let env = |v: &str| match v {
            "AWS_ACCESS_KEY_ID" => Some("envkey".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_owned()),
            _ => None,
        };
        s3.validate(env).unwrap();
        let c = s3.credentials.as_ref().unwrap();
        assert_eq!(c.access_key_id, "envkey");
        assert_eq!(c.secret_access_key.expose(), "envsecret");
        assert!(c.session_token.is_none());

        let mut s3: S3Config = toml::from_str(table).unwrap();
        let only_id = |v: &str| (v == "AWS_ACCESS_KEY_ID").then(|| "envkey".to_owned());
        let (key, reason) = s3.validate(only_id).unwrap_err();
        assert_eq!(key, "storage.s3.access_key_id");
        assert!(reason.contains("AWS_SECRET_ACCESS_KEY"), "{reason}");
    }

    /// `[cluster]` with its defaults, the secret read and redacted, and every check naming its key.
    #[test]
    fn cluster_table_parses_and_is_checked() {
        let up = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "0123456789abcdef0123456789abcde\n").unwrap();
        let table = |body: &str, file: &Path| {
            format!(
                "[cluster]\n{body}secret_file = {:?}\n{up}",
                file.display().to_string()
            )
        };
        let three = "self = \"http://10.0.0.1:5000\"\npeers = [\"http://10.0.0.1:5000\", \
                     \"http://10.0.0.2:5000/\", \"https://berth-2.berth:443\"]\n";
        let c = Config::parse(&table(three, &secret), "f.toml").unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.peers.len(), 3);
        assert_eq!(cl.health_interval, Duration::from_secs(2));
        assert_eq!(cl.peer_timeout, Duration::from_secs(2));
        assert_eq!(cl.down_after, 3);
        assert_eq!(
            cl.secret.as_ref().unwrap().expose(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            ClusterConfig::peer_id(&cl.peers[2]),
            "https://berth-2.berth",
            "the default port is not part of a peer's identity"
        );
        assert!(!c.to_toml().contains("0123456789abcdef"), "{}", c.to_toml());
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        assert!(Config::parse(up, "f.toml").unwrap().cluster.is_none());

        let missing = dir.path().join("nope");
        for (text, want) in [
            (
                table(
                    "self = \"http://10.0.0.9:5000\"\npeers = [\"http://10.0.0.1:5000\"]\n",
                    &secret,
                ),
                "cluster.self: http://10.0.0.9:5000 is not one of cluster.peers",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\", \"http://A:5000/\"]\n",
                    &secret,
                ),
                "cluster.peers[1]: http://a:5000 is listed more than once",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\", \"ftp://b:21\"]\n",
                    &secret,
                ),
                "cluster.peers[1]: ftp://b/: scheme must be http or https",
            ),
            (
                table(
                    "self = \"unix://a\"\npeers = [\"http://a:5000\"]\n",
                    &secret,
                ),
                "cluster.self",
            ),
            (
                table(
                    "self = \"http://a:5000/x\"\npeers = [\"http://a:5000/x\"]\n",
                    &secret,
                ),
                "cluster.self: http://a:5000/x: no path",
            ),
            (
                table("self = \"http://a:5000\"\npeers = []\n", &secret),
                "cluster.peers: must list every replica",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\n",
                    &missing,
                ),
                "cluster.secret_file: cannot read",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\n",
                    &short,
                ),
                "cluster.secret_file: the secret has 31 bytes; at least 32",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\nhealth_interval = \"0s\"\n",
                    &secret,
                ),
                "cluster.health_interval",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\npeer_timeout = \"0s\"\n",
                    &secret,
                ),
                "cluster.peer_timeout",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\ndown_after = 0\n",
                    &secret,
                ),
                "cluster.down_after",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\nca_file = \"/surely/not/here.pem\"\n",
                    &secret,
                ),
                "cluster.ca_file",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\nmembers = 3\n",
                    &secret,
                ),
                "members",
            ),
            (
                format!("[cluster]\nself = \"http://a:5000\"\npeers = [\"http://a:5000\"]\n{up}"),
                "secret_file",
            ),
        ] {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e =
            Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        assert!(e.to_string().starts_with("f.toml: "), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let cases = [
            (
                format!(
                    "{base}default = true\n[[upstream]]\nname = \"b.io\"\nurl = \"https://b.io\"\ndefault = true\n"
                ),
                "upstream.default",
            ),
            (
                format!("{base}[[upstream]]\nname = \"A.io\"\nurl = \"https://b.io\"\n"),
                "upstream[1].name",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nurl = \"ftp://a.io\"\n".to_owned(),
                "upstream[0].url",
            ),
            (format!("{base}username = \"u\"\n"), "upstream[0].username"),
            (
                format!("{base}password_env = \"BERTH_TEST_SURELY_UNSET\"\n"),
                "upstream[0].password_env",
            ),
            (format!("{base}tag_ttl = \"soon\"\n"), "line 4, column 11"),
            (
                "[server]\ntls_cert = \"/x\"\n".to_owned() + base,
                "server.tls_key",
            ),
            ("".to_owned(), "upstream"),
            (
                format!("{base}ca_file = \"/surely/not/here.pem\"\n"),
                "upstream[0].ca_file",
            ),
            (format!("{base}retries = 11\n"), "upstream[0].retries"),
            (format!("[log]\nlevel = \"info,=x=y\"\n{base}"), "log.level"),
            (
                format!("[log]\nformat = \"xml\"\n{base}"),
                "expected `text` or `json`",
            ),
            (
                format!("{base}resume_attempts = 11\n"),
                "upstream[0].resume_attempts",
            ),
            (
                format!("{base}retry_backoff = \"10s\"\n"),
                "upstream[0].retry_backoff",
            ),
            (
                "[server]\nmax_connections = 0\n".to_owned() + base,
                "server.max_connections: must be at least 1",
            ),
            (
                "[server]\nmax_connections = 16777217\n".to_owned() + base,
                "server.max_connections: must be at most",
            ),
            (
                "[server]\nhttp2_max_concurrent_streams = 0\n".to_owned() + base,
                "server.http2_max_concurrent_streams",
            ),
            (
                "[server]\nmax_headers = 0\n".to_owned() + base,
                "server.max_headers",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn metrics_tls_admin_socket_and_idle_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let admin = format!("[admin]\nenabled = true\ntoken_file = {:?}\n", token);
        let cases = [
            (
                format!("[metrics]\ntls_cert = \"/x\"\n{base}"),
                "metrics.tls_key: tls_cert is set, tls_key is missing",
            ),
            (
                format!("[metrics]\ntls_key = \"/x\"\n{base}"),
                "metrics.tls_cert: tls_key is set, tls_cert is missing",
            ),
            (
                format!(
                    "[metrics]\ntls_cert = \"/surely/not/here.crt\"\ntls_key = \"/surely/not/here.key\"\n{base}"
                ),
                "metrics.tls_cert: cannot read",
            ),
            (
                format!("{admin}socket = \"/surely/not/here/admin.sock\"\n{base}"),
                "admin.socket: /surely/not/here/admin.sock: the directory it goes in does not exist",
            ),
            (
                format!("[server]\nidle_timeout = \"soon\"\n{base}"),
                "line 2",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }

        // With the API off, its socket is not looked at (as its token is not read).
        Config::parse(
            &format!("[admin]\nsocket = \"/surely/not/here/admin.sock\"\n{base}"),
            "f",
        )
        .unwrap();
        let plain = Config::parse(base, "f").unwrap();
        assert_eq!(plain.server.idle_timeout, Duration::from_secs(300));
        let off = Config::parse(&format!("[server]\nidle_timeout = \"0s\"\n{base}"), "f").unwrap();
        assert!(off.server.idle_timeout.is_zero());
        let sock = dir.path().join("admin.sock");
        let c = Config::parse(
            &format!("[metrics]\nenabled = false\n{admin}socket = {sock:?}\n{base}"),
            "f",
        )
        .unwrap();
        assert_eq!(c.admin.socket.as_deref(), Some(sock.as_path()));

        // The admin token in clear text over a network: a warning, not an error.
        let exposed = Config::parse(
            &format!("[metrics]\nlisten = \"0.0.0.0:9090\"\n{admin}{base}"),
            "f",
        )
        .unwrap();
        let w = exposed.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("0.0.0.0:9090") && w[0].contains("plain HTTP"),
            "{w:?}"
        );
        for quiet in [
            format!("{admin}{base}"),
            format!("[metrics]\nlisten = \"0.0.0.0:9090\"\n{admin}socket = {sock:?}\n{base}"),
            format!("[metrics]\nlisten = \"0.0.0.0:9090\"\n{base}"),
            // Only the files' presence is checked at load: any file stands in for a pair here.
            format!(
                "[metrics]\nlisten = \"0.0.0.0:9090\"\ntls_cert = {token:?}\ntls_key = {token:?}\n{admin}{base}"
            ),
        ] {
            let c = Config::parse(&quiet, "f").unwrap();
            assert!(c.warnings().is_empty(), "{quiet}: {:?}", c.warnings());
        }
    }

    #[test]
    fn auth_is_checked_against_the_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, "").unwrap();
        let ups = "[[upstream]]\nname = \"docker.io\"\nurl = \"https://d.io\"\naliases = [\"hub.test\"]\n\
                   [[upstream]]\nname = \"b.io\"\nurl = \"https://b.io\"\n";
        let auth = |extra: &str| {
            format!(
                "[auth]\nhtpasswd = {:?}\n{extra}\n{ups}",
                file.display().to_string()
            )
        };
        let ok = Config::parse(
            &(auth("anonymous_upstreams = [\"HUB.test\"]") + "users = [\"ci\"]\n"),
            "f.toml",
        )
        .unwrap();
        let a = ok.auth.as_ref().unwrap();
        assert_eq!(a.anonymous_upstreams, ["HUB.test"]);
        assert_eq!(
            ok.upstreams[1].users.as_deref(),
            Some(&["ci".to_owned()][..])
        );
        let cases = [
            (ups.to_owned() + "users = [\"ci\"]\n", "upstream[1].users"),
            (
                auth("anonymous_upstreams = [\"nope.io\"]"),
                "auth.anonymous_upstreams",
            ),
            (
                auth("anonymous_upstreams = [\"b.io\"]") + "users = [\"ci\"]\n",
                "upstream[1].users",
            ),
            (auth("") + "users = [\"a:b\"]\n", "upstream[1].users"),
            (
                format!("[auth]\nhtpasswd = \"/surely/not/here\"\n{ups}"),
                "auth.htpasswd",
            ),
            (auth("nope = 1"), "unknown field"),
            (auth("check_concurrency = 0"), "auth.check_concurrency"),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let text = format!(
            "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\nusername = \"me\"\npassword_file = \"{}\"\n",
            pw.display()
        );
        let c = Config::parse(&text, "f.toml").unwrap();
        assert_eq!(c.upstreams[0].credentials().unwrap().1.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_toml().contains("hunter2"));
        assert!(c.to_toml().contains("<redacted>"));
    }

    #[test]
    fn hosts() {
        assert!(valid_host("docker.io"));
        assert!(valid_host("127.0.0.1:5001"));
        assert!(valid_host("[::1]:5001"));
        assert!(!valid_host("a.io:0"));
        assert!(!valid_host("a/b"));
        assert!(!valid_host(""));
    }
}
