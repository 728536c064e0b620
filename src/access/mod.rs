//! Client login: who is asking, and whether they may pull through an upstream.
//!
//! Besides the clients, one more principal: [`Principal::Admin`], the admin API's warm, which
//! pulls through this berth in process after its bearer token was checked, and may use every
//! upstream (an operator who holds the token can empty the cache too).
//!
//! With `[auth]`, `http` hands the request's `Authorization` header to [`Access::authenticate`]
//! and gets a [`Principal`]: anonymous, a user, or refused (a wrong or malformed login, or too
//! many checks waiting); once the route names its upstream, [`Access::authorize`] says whether
//! that principal may pull through it (or a 401/403/429).
//! Both answers come before any cache lookup or upstream request, so a refused client learns
//! nothing about what is cached, and a 403 reads the same whether the content exists or not.
//!
//! - Users come from an htpasswd file with bcrypt entries only ([`htpasswd`]). The file is
//!   re-read when it changes: at most once a second, a request that carries credentials
//!   compares the file's size, mtime and inode with what was loaded (one `stat`). A broken new
//!   file keeps the users loaded before and logs an error; so does a missing one.
//! - bcrypt is meant to be slow (tens of milliseconds at cost 10), and a client sends its
//!   credentials with every request. Verdicts are therefore cached for [`VERDICT_TTL`], keyed by
//!   an HMAC (with a per-process random key) of the file's generation, the user and the password:
//!   the plain password is never kept, and a changed file starts afresh. Concurrent requests with
//!   the same credentials wait for one check (moka's `try_get_with`), so a pull of 50 blobs costs
//!   one bcrypt run.
//! - Checks run on the blocking pool, at most half the cores at once (at least one;
//!   `check_concurrency` sets another number). A check
//!   that finds them busy waits, up to [`MAX_WAITING`] waiting; beyond that the request gets
//!   `429 TOOMANYREQUESTS` with `Retry-After` at once. A flood of wrong passwords thus takes at
//!   most half the CPU and a bounded queue, while cached logins (every other request of a pull)
//!   are answered without waiting. The permit travels into the blocking task, so a client that
//!   hangs up mid-check does not free a slot while its bcrypt still runs.
//! - An unknown user is checked against the costliest hash in the file, so a wrong name takes as
//!   long as a wrong password, and both get the same answer. (With entries of mixed costs, a
//!   user whose hash is cheaper than the costliest answers faster: keep one cost in a file.)
//! - The policy (anonymous upstreams, each upstream's `users`) is by upstream slot, and a reload
//!   replaces it whole (`reload` swaps it before the upstream set); a slot it was not told of
//!   is refused to everyone.
//! - Empty Basic credentials (`Basic Og==`) are an anonymous client: containers/image (podman,
//!   skopeo) answers a Basic challenge it holds no credentials for with them.
//! - A refused login pulls through an anonymous upstream as an anonymous client would (it may
//!   anyway): a client may hold credentials for berth's host that berth does not know (dockerd
//!   sends Docker Hub's to a mirror, moby/moby#42022). Everywhere else, `/v2/`
//!   included, the refusal stands (401, or 429 when throttled).
//!
//! Trade-off: Basic, not Docker's token flow. docker, podman, skopeo and containerd all answer a
//! `Basic` challenge with the stored credentials on every request, which is one round trip fewer
//! than a token flow and needs no signing keys; the verdict cache makes repeated Basic logins
//! cheap. Over plain HTTP the password crosses the network on every request, as a token would:
//! serve berth with TLS (`[server] tls_cert`) or on a trusted network.
//!
//! Rule of dependency: uses `config` (settings, `Secret`) and `error`; knows nothing of HTTP
//! routing or the mirror (upstreams are the slots of `upstreams`, plain numbers here).

pub mod htpasswd;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use ring::hmac;
use tokio::sync::Semaphore;

use crate::config::{AuthConfig, Secret, UpstreamConfig};
use crate::error::Error;
use htpasswd::Users;

/// How long a bcrypt verdict (right or wrong) is trusted for the same user and password.
pub const VERDICT_TTL: Duration = Duration::from_secs(120);
/// Most checks waiting for a free slot; more are answered 429 at once.
pub const MAX_WAITING: usize = 32;
/// How often, at most, the htpasswd file is looked at for changes.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Most cached verdicts (each about 100 bytes).
const MAX_VERDICTS: u64 = 10_000;
/// What a throttled client is told to wait.
const THROTTLE_RETRY: Duration = Duration::from_secs(1);
/// Stands in for an unknown user's hash when the file has no user at all (`htpasswd -nbB -C 10`
/// of a random password), so every check costs a bcrypt run.
const DECOY_HASH: &str = "$2y$10$AumV7ft8qMOicWnalyZuSOzWoqXo9vQ41ShidQoou6XeAuFNET1um";

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No `Authorization` header.
    Anonymous,
    /// A user whose password checked out.
    User(Arc<str>),
    /// Credentials that did not check out (401), or could not be checked now (429): the answer
    /// wherever an anonymous client would not be let in.
    Refused(Error),
    /// The admin API's own warm (`POST /admin/warm`), whose bearer token was checked there: it
    /// may pull through every upstream. Never made from a header: only a request built in this
    /// process (`http::warm`) is one.
    Admin,
}

impl Principal {
    /// The name for the request log (`-` unless a login checked out).
    pub fn name(&self) -> &str {
        match self {
            Principal::User(u) => u,
            // No htpasswd user can be called so: `:` separates the name from the hash there.
            Principal::Admin => "admin:warm",
            Principal::Anonymous | Principal::Refused(_) => "-",
        }
    }
}

/// The pieces of the config that decide access, by upstream index.
#[derive(Debug, Clone)]
pub struct Settings {
    pub htpasswd: PathBuf,
    /// Anyone may pull through upstream `i` without a login.
    pub anonymous: Vec<bool>,
    /// Only these users may pull through upstream `i` (`None`: every user).
    pub users: Vec<Option<HashSet<String>>>,
    /// Most bcrypt checks at once; `None`: half the cores, at least one.
    pub check_concurrency: Option<usize>,
}

impl Settings {
    /// From `[auth]` and the upstreams in slots 0, 1, ... (config order): how berth starts.
    pub fn new(auth: &AuthConfig, upstreams: &[UpstreamConfig]) -> Settings {
        Settings::with_slots(auth, upstreams.iter().enumerate())
    }

    /// From `[auth]` and the upstreams in the slots the router names them by (`upstreams`);
    /// a slot not given is refused to everyone. Names in `anonymous_upstreams` match an
    /// upstream's name or alias, any case.
    pub fn with_slots<'a>(
        auth: &AuthConfig,
        upstreams: impl IntoIterator<Item = (usize, &'a UpstreamConfig)>,
    ) -> Settings {
        let open: HashSet<String> = auth
            .anonymous_upstreams
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let mut anonymous = Vec::new();
        let mut users = Vec::new();
        for (slot, u) in upstreams {
            if anonymous.len() <= slot {
                anonymous.resize(slot + 1, false);
                users.resize(slot + 1, Some(HashSet::new()));
            }
            anonymous[slot] = u.hosts().any(|h| open.contains(&h));
            users[slot] = u.users.as_ref().map(|v| v.iter().cloned().collect());
        }
        Settings {
            htpasswd: auth.htpasswd.clone(),
            anonymous,
            users,
            check_concurrency: auth.check_concurrency,
        }
    }
}

/// What one check found; cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    BadPassword,
    UnknownUser,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::BadPassword => "bad_password",
            Verdict::UnknownUser => "unknown_user",
        }
    }
}

/// Every slot busy and the queue full.
#[derive(Debug)]
struct Throttled;

/// The users of one version of the file.
struct Loaded {
    /// Goes up with each successful reload; part of the verdict cache key.
    generation: u64,
    users: Users,
    /// The hash an unknown user is checked against: the costliest in the file.
    decoy: String,
}

impl Loaded {
    fn new(generation: u64, users: Users) -> Arc<Loaded> {
        let decoy = users.costliest().unwrap_or(DECOY_HASH).to_owned();
        Arc::new(Loaded {
            generation,
            users,
            decoy,
        })
    }
}

/// What identifies a version of the htpasswd file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    inode: (u64, u64),
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            inode: (m.dev(), m.ino()),
        })
    }
}

/// When the file was last looked at, and what it was then (`None`: unreadable).
struct Check {
    at: Instant,
    stamp: Option<Stamp>,
}

/// Who may pull through which upstream slot.
#[derive(Debug)]
struct Policy {
    anonymous: Vec<bool>,
    /// `None`: every user; an empty set for a slot nobody may use.
    users: Vec<Option<HashSet<String>>>,
}

/// Why `[auth]` cannot start.
#[derive(Debug, thiserror::Error)]
#[error("htpasswd file {file}: {reason}")]
pub struct LoadError {
    pub file: String,
    pub reason: String,
}

/// The login checker and the access policy; one per server.
pub struct Access {
    file: PathBuf,
    loaded: RwLock<Arc<Loaded>>,
    check: Mutex<Check>,
    /// Who may use which upstream slot; a reload replaces it whole.
    policy: RwLock<Arc<Policy>>,
    verdicts: moka::future::Cache<[u8; 32], Verdict>,
    /// Keys the verdict cache: without it, a memory dump would hold fast-to-test password hashes.
    key: hmac::Key,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("file", &self.file)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Loads the htpasswd file; fails (naming the file and the line) when it cannot be read or
    /// holds anything but bcrypt entries.
    pub fn new(settings: Settings, registry: &Registry) -> Result<Access, LoadError> {
        let file = settings.htpasswd;
        let load_err = |reason: String| LoadError {
            file: file.display().to_string(),
            reason,
        };
        let stamp = Stamp::of(&file).map_err(|e| load_err(e.to_string()))?;
        let users = read(&file).map_err(load_err)?;
        for name in settings.users.iter().flatten().flatten() {
            if users.hash(name).is_none() {
                // Not an error: the file may gain the user later (it is re-read).
                tracing::warn!(file = %file.display(), user = %name,
                    "an upstream's users names someone the htpasswd file does not hold");
            }
        }
        let metrics = AuthMetrics::register(registry).map_err(|e| load_err(e.to_string()))?;
        metrics.users.set(users.len() as i64);
        let slots = settings.check_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| load_err("no randomness for the verdict cache key".into()))?;
        Ok(Access {
            loaded: RwLock::new(Loaded::new(0, users)),
            check: Mutex::new(Check {
                at: Instant::now(),
                stamp: Some(stamp),
            }),
            file,
            policy: RwLock::new(Arc::new(Policy {
                anonymous: settings.anonymous,
                users: settings.users,
            })),
            verdicts: moka::future::Cache::builder()
                .max_capacity(MAX_VERDICTS)
                .time_to_live(VERDICT_TTL)
                .build(),
            key,
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Who sent this `Authorization` header: anonymous without one, the user when the password
    /// checks out; else refused with 401 (wrong or malformed credentials) or 429 (too many
    /// checks waiting).
    pub async fn authenticate(&self, header: Option<&HeaderValue>) -> Principal {
        let Some(header) = header else {
            return Principal::Anonymous;
        };
        // containers/image (podman, skopeo) answers a Basic challenge it holds no credentials
        // for with empty ones: that is an anonymous client, not a failed login.
        if is_empty_basic(header) {
            return Principal::Anonymous;
        }
        let Some((user, password)) = basic_credentials(header) else {
            self.metrics
                .attempts
                .with_label_values(&["malformed"])
                .inc();
            return Principal::Refused(Error::login_required(
                "the Authorization header does not hold Basic credentials",
            ));
        };
        self.refresh();
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let key = self.cache_key(loaded.generation, &user, &password);
        let verdict = self
            .verdicts
            .try_get_with(key, self.verify(loaded, user.clone(), password))
            .await;
        match verdict {
            Ok(v) => {
                self.metrics.attempts.with_label_values(&[v.label()]).inc();
                match v {
                    Verdict::Ok => Principal::User(user.into()),
                    // One answer for both, so a client cannot tell which names exist.
                    _ => Principal::Refused(Error::login_required("wrong user name or password")),
                }
            }
            Err(_) => {
                self.metrics
                    .attempts
                    .with_label_values(&["throttled"])
                    .inc();
                Principal::Refused(Error::login_throttled(THROTTLE_RETRY))
            }
        }
    }

    /// Whether `who` may pull through upstream `upstream` (`None`: no upstream, i.e. `/v2/`
    /// itself or a path that names none). Anonymous clients and refused logins may use the
    /// anonymous upstreams and nothing else, not even `/v2/` (that is how `docker login` checks
    /// a password, and Docker Hub answers anonymous clients the same); a user may use every
    /// upstream whose `users` lists them or that has no list.
    pub fn authorize(&self, who: &Principal, upstream: Option<usize>) -> Result<(), Error> {
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let open = upstream.and_then(|i| policy.anonymous.get(i).copied()) == Some(true);
        let allowed = match (who, upstream) {
            // Every upstream there is; a slot the policy was not told of, as for anyone, not.
            (Principal::Admin, None) => true,
            (Principal::Admin, Some(i)) => i < policy.anonymous.len(),
            (Principal::Anonymous | Principal::Refused(_), _) if open => true,
            // The login's own answer: 401, or 429 when it could not be checked.
            (Principal::Refused(e), _) => return Err(e.clone()),
            (Principal::Anonymous, _) => false,
            (Principal::User(_), None) => true,
            // An upstream this policy does not know (a slot it was not told of) is refused.
            (Principal::User(name), Some(i)) => match policy.users.get(i) {
                Some(Some(list)) => list.contains(&**name),
                Some(None) => true,
                None => false,
            },
        };
        match (allowed, who) {
            (true, _) => Ok(()),
            (false, Principal::User(_) | Principal::Admin) => {
                self.metrics.denials.with_label_values(&["forbidden"]).inc();
                Err(Error::access_denied())
            }
            (false, _) => {
                self.metrics
                    .denials
                    .with_label_values(&["login_required"])
                    .inc();
                Err(Error::login_required(
                    "log in to pull through this registry",
                ))
            }
        }
    }

    /// Takes the policy of a reloaded configuration (`anonymous_upstreams`, the upstreams'
    /// `users`, new slots); the htpasswd path is not changed here (a restart setting).
    pub fn set_policy(&self, settings: Settings) {
        let policy = Arc::new(Policy {
            anonymous: settings.anonymous,
            users: settings.users,
        });
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn cache_key(&self, generation: u64, user: &str, password: &Secret) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&generation.to_le_bytes());
        // The length first, so that ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(user.len() as u64).to_le_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.expose().as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// One bcrypt check, in a slot on the blocking pool.
    async fn verify(
        &self,
        loaded: Arc<Loaded>,
        user: String,
        password: Secret,
    ) -> Result<Verdict, Throttled> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let _queued = Queued::enter(self).ok_or(Throttled)?;
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Throttled)?
            }
        };
        self.metrics.bcrypt_runs.inc();
        let ran = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let (hash, known) = match loaded.users.hash(&user) {
                Some(h) => (h, true),
                None => (loaded.decoy.as_str(), false),
            };
            let matched = bcrypt::verify(password.expose(), hash).unwrap_or(false);
            match (known, matched) {
                (true, true) => Verdict::Ok,
                (true, false) => Verdict::BadPassword,
                (false, _) => Verdict::UnknownUser,
            }
        })
        .await;
        // A panicked check counts as a failed login, never as a passed one.
        Ok(ran.unwrap_or(Verdict::BadPassword))
    }

    /// Re-reads the htpasswd file if it changed (looked at no more than once a second, by one
    /// request at a time; the others go on with the users they have).
    fn refresh(&self) {
        let Ok(mut check) = self.check.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(check.at) < CHECK_INTERVAL {
            return;
        }
        check.at = now;
        let stamp = match Stamp::of(&self.file) {
            Ok(s) => s,
            Err(e) => {
                if check.stamp.take().is_some() {
                    self.metrics.reloads.with_label_values(&["error"]).inc();
                    tracing::error!(file = %self.file.display(), error = %e,
                        "cannot read the htpasswd file; keeping the users loaded before");
                }
                return;
            }
        };
        if check.stamp == Some(stamp) {
            return;
        }
        check.stamp = Some(stamp);
        match read(&self.file) {
            Ok(users) => {
                let mut slot = self.loaded.write().unwrap_or_else(|p| p.into_inner());
                let generation = slot.generation + 1;
                self.metrics.users.set(users.len() as i64);
                *slot = Loaded::new(generation, users);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(file = %self.file.display(), users = slot.users.len(), "htpasswd file re-read");
            }
            Err(reason) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(file = %self.file.display(), error = %reason,
                    "the changed htpasswd file is not valid; keeping the users loaded before");
            }
        }
    }
}

/// Reads and parses the file; the error names the line.
fn read(path: &Path) -> Result<Users, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    htpasswd::parse(&text).map_err(|e| e.to_string())
}

/// A place in the queue for a slot; leaving it (done or cancelled) frees the place.
struct Queued<'a>(&'a Access);

impl<'a> Queued<'a> {
    fn enter(access: &'a Access) -> Option<Queued<'a>> {
        access
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WAITING).then_some(n + 1)
            })
            .ok()?;
        access.metrics.waiting.inc();
        Some(Queued(access))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.waiting.dec();
    }
}

/// `Basic base64(user:password)`, the scheme in any case; `None` for anything else.
pub fn basic_credentials(header: &HeaderValue) -> Option<(String, Secret)> {
    let v = header.to_str().ok()?.trim();
    let (scheme, encoded) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_owned(), Secret::new(password)))
}

/// `Basic` with an empty user and password (`Basic Og==`).
fn is_empty_basic(header: &HeaderValue) -> bool {
    let Some((scheme, encoded)) = header.to_str().ok().and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("basic")
        && base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .is_ok_and(|d| d == b":")
}

/// The `Authorization` value for `user` and `password` (for `berth warm`).
pub fn basic_header(user: &str, password: &Secret) -> String {
    let raw = format!("{user}:{}", password.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The login families.
#[derive(Clone)]
struct AuthMetrics {
    /// `berth_auth_attempts_total{outcome}`: requests carrying credentials, outcome = ok |
    /// bad_password | unknown_user | throttled | malformed (cached verdicts count too).
    attempts: IntCounterVec,
    /// `berth_auth_bcrypt_runs_total`: password checks that ran bcrypt (the rest came from the
    /// verdict cache).
    bcrypt_runs: IntCounter,
    /// `berth_auth_checks_waiting`: checks queued for a free slot.
    waiting: IntGauge,
    /// `berth_auth_denials_total{reason}`: requests refused by the policy, reason =
    /// login_required (anonymous, not an anonymous upstream) | forbidden (user not listed).
    denials: IntCounterVec,
    /// `berth_auth_reloads_total{outcome}`: htpasswd re-reads, outcome = ok | error.
    reloads: IntCounterVec,
    /// `berth_auth_users`: users in the htpasswd file in use.
    users: IntGauge,
}

impl AuthMetrics {
    fn register(registry: &Registry) -> prometheus::Result<AuthMetrics> {
        let m = AuthMetrics {
            attempts: IntCounterVec::new(
                Opts::new(
                    "berth_auth_attempts_total",
                    "Client logins checked, by outcome.",
                ),
                &["outcome"],
            )?,
            bcrypt_runs: IntCounter::new(
                "berth_auth_bcrypt_runs_total",
                "Password checks that ran bcrypt (not answered from the verdict cache).",
            )?,
            waiting: IntGauge::new(
                "berth_auth_checks_waiting",
                "Password checks waiting for a free slot.",
            )?,
            denials: IntCounterVec::new(
                Opts::new(
                    "berth_auth_denials_total",
                    "Requests refused by the access policy, by reason.",
                ),
                &["reason"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "berth_auth_reloads_total",
                    "Re-reads of the changed htpasswd file, by outcome.",
                ),
                &["outcome"],
            )?,
            users: IntGauge::new("berth_auth_users", "Users in the htpasswd file in use.")?,
        };
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.bcrypt_runs.clone()))?;
        registry.register(Box::new(m.waiting.clone()))?;
        registry.register(Box::new(m.denials.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.users.clone()))?;
        // Every outcome shows from the start, so a rate over it exists before the first login.
        for o in [
            "ok",
            "bad_password",
            "unknown_user",
            "throttled",
            "malformed",
        ] {
            m.attempts.with_label_values(&[o]);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests;
