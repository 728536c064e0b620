//! `[[upstream]]`: the registries berth mirrors, each one's defaults and checks (host names,
//! URLs, retry and timeout bounds, the password read at load), and the checks of the set (at
//! least one, one default, no host name twice).
//!
//! Rule of dependency: uses `config::value` only.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::value::{Secret, check_ca_file, check_registry_url, duration};

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
    /// Sent as `?ns=<namespace>` on every request to this upstream: it is another berth that
    /// serves several registries on one address (a fleet node's parent). Set by `fleet` from the
    /// parent's list, never by the file.
    #[serde(skip)]
    pub namespace: Option<String>,
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

/// The set as a whole: at least one upstream, at most one default. On error, the key and the
/// reason. (Host names are checked for clashes with each upstream, in [`validate`].)
pub(super) fn check_set(upstreams: &[UpstreamConfig]) -> Result<(), (String, String)> {
    if upstreams.is_empty() {
        return Err((
            "upstream".into(),
            "at least one [[upstream]] is needed".into(),
        ));
    }
    if upstreams.iter().filter(|u| u.default).count() > 1 {
        return Err((
            "upstream.default".into(),
            "only one upstream may be the default".into(),
        ));
    }
    Ok(())
}

/// Each upstream in order: its host names (valid, and naming no other upstream), its URLs, CA
/// bundle and bounds; reads its password. On error, the key (`upstream[i].<key>`) and the reason.
pub(super) fn validate(upstreams: &mut [UpstreamConfig]) -> Result<(), (String, String)> {
    let mut seen = HashSet::new();
    for (i, u) in upstreams.iter_mut().enumerate() {
        let key = |k: &str| format!("upstream[{i}].{k}");
        for host in u.hosts().collect::<Vec<_>>() {
            if !valid_host(&host) {
                return Err((
                    key("name"),
                    format!("{host:?} is not a registry host name (host or host:port)"),
                ));
            }
            if !seen.insert(host.clone()) {
                return Err((
                    key("name"),
                    format!("{host:?} names more than one upstream"),
                ));
            }
        }
        check_registry_url(&u.url).map_err(|r| (key("url"), r))?;
        for realm in &u.auth_realms {
            check_registry_url(realm).map_err(|r| (key("auth_realms"), r))?;
        }
        if let Some(f) = &u.ca_file {
            check_ca_file(f).map_err(|r| (key("ca_file"), r))?;
        }
        if u.max_redirects > 10 {
            return Err((key("max_redirects"), "at most 10".into()));
        }
        if u.retries > 10 {
            return Err((key("retries"), "at most 10".into()));
        }
        if u.resume_attempts > 10 {
            return Err((key("resume_attempts"), "at most 10".into()));
        }
        if u.retry_backoff > u.retry_backoff_max {
            return Err((
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
                return Err((key(k), "must be more than 0s".into()));
            }
        }
        u.password = match (&u.password_file, &u.password_env) {
            (Some(_), Some(_)) => {
                return Err((
                    key("password_file"),
                    "set password_file or password_env, not both".into(),
                ));
            }
            (Some(f), None) => {
                let s = std::fs::read_to_string(f).map_err(|e| {
                    (
                        key("password_file"),
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                Some(Secret::new(s.trim_end_matches(['\r', '\n'])))
            }
            (None, Some(v)) => {
                let s = std::env::var(v).map_err(|_| {
                    (
                        key("password_env"),
                        format!("environment variable {v} is not set"),
                    )
                })?;
                Some(Secret::new(s))
            }
            (None, None) => None,
        };
        if u.password.is_some() != u.username.is_some() {
            return Err((
                key("username"),
                "username and a password (password_file or password_env) go together".into(),
            ));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
            ("".to_owned(), "upstream"),
            (
                format!("{base}ca_file = \"/surely/not/here.pem\"\n"),
                "upstream[0].ca_file",
            ),
            (format!("{base}retries = 11\n"), "upstream[0].retries"),
            (
                format!("{base}resume_attempts = 11\n"),
                "upstream[0].resume_attempts",
            ),
            (
                format!("{base}retry_backoff = \"10s\"\n"),
                "upstream[0].retry_backoff",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
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
